public import Foundation

// Wire types of /v1/sys/unseal and /v1/sys/keys.

/// `POST /v1/sys/unseal`: the root key file's text, or nothing (the daemon then
/// reads its configured key file).
public struct UnsealRequest: Codable, Sendable {
    public var key: String?
    enum CodingKeys: String, CodingKey, CaseIterable { case key }
    public init(key: String?) { self.key = key }
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        key = try decoder.container(keyedBy: CodingKeys.self).decodeIfPresent(String.self, forKey: .key)
    }
}

public struct UnsealResponse: Codable, Sendable {
    public var sealed: Bool
    /// false when the daemon was already unsealed.
    public var unsealedNow: Bool
    public var keyID: String
    enum CodingKeys: String, CodingKey { case sealed, unsealedNow = "unsealed_now", keyID = "key_id" }
    public init(sealed: Bool, unsealedNow: Bool, keyID: String) {
        self.sealed = sealed
        self.unsealedNow = unsealedNow
        self.keyID = keyID
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
