public import Foundation

// Wire types of /v1/sys/unseal and /v1/sys/keys.

/// `POST /v1/sys/unseal`: at most one of a key file's text, a passphrase, one Shamir
/// share, or `reset` (discard a partial round of shares); an empty body makes the
/// daemon read its configured key file.
public struct UnsealRequest: Codable, Sendable {
    public var key: String?
    public var passphrase: String?
    public var share: String?
    public var reset: Bool?
    enum CodingKeys: String, CodingKey, CaseIterable { case key, passphrase, share, reset }
    public init(key: String? = nil, passphrase: String? = nil, share: String? = nil, reset: Bool? = nil) {
        self.key = key
        self.passphrase = passphrase
        self.share = share
        self.reset = reset
    }
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        key = try c.decodeIfPresent(String.self, forKey: .key)
        passphrase = try c.decodeIfPresent(String.self, forKey: .passphrase)
        share = try c.decodeIfPresent(String.self, forKey: .share)
        reset = try c.decodeIfPresent(Bool.self, forKey: .reset)
    }
}

public struct UnsealResponse: Codable, Sendable {
    public var sealed: Bool
    /// false when the daemon was already unsealed.
    public var unsealedNow: Bool
    /// The root key's id (nil while still sealed).
    public var keyID: String?
    /// How the root key is held: keyfile, passphrase or shares.
    public var mode: String?
    /// Shares: how many this round holds, and how many open the database.
    public var sharesGiven: Int?
    public var threshold: Int?
    enum CodingKeys: String, CodingKey {
        case sealed, unsealedNow = "unsealed_now", keyID = "key_id", mode, sharesGiven = "shares_given", threshold
    }
    public init(sealed: Bool, unsealedNow: Bool, keyID: String?, mode: String? = nil, sharesGiven: Int? = nil, threshold: Int? = nil) {
        self.sealed = sealed
        self.unsealedNow = unsealedNow
        self.keyID = keyID
        self.mode = mode
        self.sharesGiven = sharesGiven
        self.threshold = threshold
    }
}

/// `POST /v1/sys/seal`: the daemon drops every key (nothing to send).
public struct SealResponse: Codable, Sendable {
    public var sealed: Bool
    public init(sealed: Bool) { self.sealed = sealed }
}

/// `POST /v1/sys/rekey`: how the root key is to be held from now on, proven by the
/// current material (a key file's text, the passphrase, or threshold shares).
public struct RekeyRequest: Codable, Sendable {
    public struct Current: Codable, Sendable {
        public var key: String?
        public var passphrase: String?
        public var shares: [String]?
        enum CodingKeys: String, CodingKey, CaseIterable { case key, passphrase, shares }
        public init(key: String? = nil, passphrase: String? = nil, shares: [String]? = nil) {
            self.key = key
            self.passphrase = passphrase
            self.shares = shares
        }
        public init(from decoder: any Decoder) throws {
            try StrictKeys.check(decoder, CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            key = try c.decodeIfPresent(String.self, forKey: .key)
            passphrase = try c.decodeIfPresent(String.self, forKey: .passphrase)
            shares = try c.decodeIfPresent([String].self, forKey: .shares)
        }
    }
    /// keyfile, passphrase or shares.
    public var mode: String
    public var current: Current
    public var passphrase: String?
    /// Argon2id limits for a new passphrase: interactive, moderate (default) or sensitive.
    public var kdf: String?
    public var shares: Int?
    public var threshold: Int?
    enum CodingKeys: String, CodingKey, CaseIterable { case mode, current, passphrase, kdf, shares, threshold }
    public init(mode: String, current: Current, passphrase: String? = nil, kdf: String? = nil, shares: Int? = nil, threshold: Int? = nil) {
        self.mode = mode
        self.current = current
        self.passphrase = passphrase
        self.kdf = kdf
        self.shares = shares
        self.threshold = threshold
    }
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        mode = try c.decode(String.self, forKey: .mode)
        current = try c.decode(Current.self, forKey: .current)
        passphrase = try c.decodeIfPresent(String.self, forKey: .passphrase)
        kdf = try c.decodeIfPresent(String.self, forKey: .kdf)
        shares = try c.decodeIfPresent(Int.self, forKey: .shares)
        threshold = try c.decodeIfPresent(Int.self, forKey: .threshold)
    }
}

/// The new holder; for shares their texts and for a key file its text, shown once.
public struct RekeyResponse: Codable, Sendable {
    public var mode: String
    public var unsealKeyID: String
    public var shares: [String]?
    public var threshold: Int?
    public var key: String?
    enum CodingKeys: String, CodingKey { case mode, unsealKeyID = "unseal_key_id", shares, threshold, key }
    public init(mode: String, unsealKeyID: String, shares: [String]? = nil, threshold: Int? = nil, key: String? = nil) {
        self.mode = mode
        self.unsealKeyID = unsealKeyID
        self.shares = shares
        self.threshold = threshold
        self.key = key
    }
}

/// `POST /v1/sys/rotate` and the `rotation` of status: a new root key version and a
/// new data key; every version re-wrapped under it in the background.
public struct RotationInfo: Codable, Sendable {
    public var rootKeyID: String
    public var targetKeyID: String
    public var done: Int
    public var total: Int
    public var finished: Bool
    enum CodingKeys: String, CodingKey { case rootKeyID = "root_key_id", targetKeyID = "target_key_id", done, total, finished }
    public init(rootKeyID: String, targetKeyID: String, done: Int, total: Int, finished: Bool) {
        self.rootKeyID = rootKeyID
        self.targetKeyID = targetKeyID
        self.done = done
        self.total = total
        self.finished = finished
    }
}

/// One key of the keyring (never its material).
public struct KeyInfo: Codable, Sendable {
    public var id: String
    /// data, token-hash or audit-mac
    public var purpose: String
    /// active, decrypt-only or retired
    public var state: String
    public var createdAt: String
    /// Secret versions wrapped under it (data keys).
    public var versions: Int
    enum CodingKeys: String, CodingKey { case id, purpose, state, createdAt = "created_at", versions }
    public init(id: String, purpose: String, state: String, createdAt: String, versions: Int) {
        self.id = id
        self.purpose = purpose
        self.state = state
        self.createdAt = createdAt
        self.versions = versions
    }
}

public struct KeysResponse: Codable, Sendable {
    public var rootKeyID: String
    public var keys: [KeyInfo]
    enum CodingKeys: String, CodingKey { case rootKeyID = "root_key_id", keys }
    public init(rootKeyID: String, keys: [KeyInfo]) {
        self.rootKeyID = rootKeyID
        self.keys = keys
    }
}

/// GET /v1/sys/integrity: every record that failed its MAC, named (never a value).
public struct IntegrityResponse: Codable, Sendable {
    public var ok: Bool
    public var checked: Int
    public var bad: [String]
    public init(ok: Bool, checked: Int, bad: [String]) {
        self.ok = ok
        self.checked = checked
        self.bad = bad
    }
}

/// `POST /v1/sys/integrity/accept`: how many records the new record digest covers.
public struct IntegrityAcceptResponse: Codable, Sendable {
    public var accepted: Int
    public init(accepted: Int) { self.accepted = accepted }
}
