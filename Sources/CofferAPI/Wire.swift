public import CofferCore
public import Foundation

// Wire types of API v1 (JSON, snake_case). No logic here beyond strict decoding:
// unknown fields are errors (invariant 6), so a typo never silently does nothing.

/// `{"error": {"code": "...", "message": "...", "hint": "..."}}`
public struct ErrorBody: Codable, Sendable {
    public struct Detail: Codable, Sendable {
        public var code: String
        public var message: String
        public var hint: String?
    }
    public var error: Detail

    public init(_ e: CofferError) {
        error = Detail(code: e.code.rawValue, message: e.message, hint: e.hint)
    }
}

/// Body of `PUT /v1/secrets/data/{path}`: exactly one of `value` (UTF-8 text) or
/// `value_base64` (any bytes); `cas` makes the write conditional on the current version.
public struct PutSecretRequest: Decodable, Sendable {
    public var value: String?
    public var valueBase64: String?
    public var cas: Int?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case value, valueBase64 = "value_base64", cas
    }

    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        value = try c.decodeIfPresent(String.self, forKey: .value)
        valueBase64 = try c.decodeIfPresent(String.self, forKey: .valueBase64)
        cas = try c.decodeIfPresent(Int.self, forKey: .cas)
    }
}

/// Body of `POST /v1/secrets/{delete,undelete,destroy}/{path}`.
public struct VersionsRequest: Codable, Sendable {
    public var versions: [Int]?

    enum CodingKeys: String, CodingKey, CaseIterable { case versions }

    public init(versions: [Int]?) { self.versions = versions }

    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        versions = try c.decodeIfPresent([Int].self, forKey: .versions)
    }
}

public struct CreatedBy: Codable, Sendable, Equatable {
    public var uid: UInt32
    public var user: String?
    public init(uid: UInt32, user: String?) {
        self.uid = uid
        self.user = user
    }
}

public struct VersionMetadata: Codable, Sendable, Equatable {
    public var version: Int
    public var createdAt: String
    public var createdBy: CreatedBy
    public var size: Int
    public var state: String
    public var deletedAt: String?

    enum CodingKeys: String, CodingKey {
        case version, createdAt = "created_at", createdBy = "created_by", size, state, deletedAt = "deleted_at"
    }

    public init(version: Int, createdAt: String, createdBy: CreatedBy, size: Int, state: String, deletedAt: String?) {
        self.version = version
        self.createdAt = createdAt
        self.createdBy = createdBy
        self.size = size
        self.state = state
        self.deletedAt = deletedAt
    }
}

/// `GET /v1/secrets/data/{path}` (JSON form).
public struct SecretResponse: Codable, Sendable {
    public var path: String
    /// The value as text, present only when it is valid UTF-8.
    public var value: String?
    public var valueBase64: String
    public var currentVersion: Int
    public var metadata: VersionMetadata

    enum CodingKeys: String, CodingKey {
        case path, value, valueBase64 = "value_base64", currentVersion = "current_version", metadata
    }

    public init(path: String, value: String?, valueBase64: String, currentVersion: Int, metadata: VersionMetadata) {
        self.path = path
        self.value = value
        self.valueBase64 = valueBase64
        self.currentVersion = currentVersion
        self.metadata = metadata
    }
}

/// Answer to a write: the new version's metadata.
/// `version` and `metadata` are left out for a caller who may write but not read
/// metadata: the new version number would tell whether the secret existed.
public struct WriteResponse: Codable, Sendable {
    public var path: String
    public var version: Int?
    public var metadata: VersionMetadata?

    public init(path: String, version: Int?, metadata: VersionMetadata?) {
        self.path = path
        self.version = version
        self.metadata = metadata
    }
}

/// `GET /v1/secrets/metadata/{path}` and the answer to delete/undelete/destroy.
public struct SecretMetadataResponse: Codable, Sendable {
    public var path: String
    public var currentVersion: Int
    public var maxVersions: Int
    public var createdAt: String
    public var updatedAt: String
    public var versions: [VersionMetadata]

    enum CodingKeys: String, CodingKey {
        case path, currentVersion = "current_version", maxVersions = "max_versions",
             createdAt = "created_at", updatedAt = "updated_at", versions
    }

    public init(path: String, currentVersion: Int, maxVersions: Int, createdAt: String, updatedAt: String, versions: [VersionMetadata]) {
        self.path = path
        self.currentVersion = currentVersion
        self.maxVersions = maxVersions
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.versions = versions
    }
}

/// `GET /v1/secrets/list/{prefix}?after=&limit=`
public struct ListResponse: Codable, Sendable {
    public var prefix: String
    public var keys: [String]
    public var nextAfter: String?

    enum CodingKeys: String, CodingKey { case prefix, keys, nextAfter = "next_after" }

    public init(prefix: String, keys: [String], nextAfter: String?) {
        self.prefix = prefix
        self.keys = keys
        self.nextAfter = nextAfter
    }
}

/// `GET /v1/sys/health` (no authentication).
public struct HealthResponse: Codable, Sendable {
    /// "ok", or "degraded" when the audit trail cannot be written (requests that
    /// need it get 503 until it recovers by itself).
    public var status: String
    public var unlocked: Bool
    /// true while the daemon has no root key (started sealed): only health, status
    /// and unseal answer.
    public var sealed: Bool
    public var version: String
    /// "ok", "disabled", or "unavailable: REASON".
    public var audit: String?
    /// "off", "ok", or "failing: REASON" (a failing mirror never blocks requests).
    public var auditMirror: String?
    /// Elevation notification hooks: "off", "ok", or "failing: REASON" (never blocking).
    public var notify: String?

    enum CodingKeys: String, CodingKey { case status, unlocked, sealed, version, audit, auditMirror = "audit_mirror", notify }

    public init(status: String, sealed: Bool, version: String, audit: String? = nil, auditMirror: String? = nil, notify: String? = nil) {
        self.notify = notify
        self.status = status
        self.unlocked = !sealed
        self.sealed = sealed
        self.version = version
        self.audit = audit
        self.auditMirror = auditMirror
    }
}

/// `GET /v1/sys/status`
public struct StatusResponse: Codable, Sendable {
    public struct Caller: Codable, Sendable {
        public var pid: Int32
        public var uid: UInt32
        public var gid: UInt32
        public var user: String?
        public var groups: [UInt32]
        public init(pid: Int32, uid: UInt32, gid: UInt32, user: String?, groups: [UInt32]) {
            self.pid = pid
            self.uid = uid
            self.gid = gid
            self.user = user
            self.groups = groups
        }
    }
    public var version: String
    public var unlocked: Bool
    public var sealed: Bool
    public var devMode: Bool
    public var uptimeSeconds: Int
    /// nil while sealed (nothing can be read).
    public var secrets: Int?
    /// The root key's id (nil while sealed).
    public var keyID: String?
    /// The keyring's active data key (nil while sealed).
    public var activeKeyID: String?
    public var durability: String
    public var maxValueBytes: Int
    public var maxVersions: Int
    public var caller: Caller
    public var decision: String
    /// How the root key is held: keyfile, passphrase or shares.
    public var unseal: String?
    /// While sealed and held by shares: the shares given in this round, of how many.
    public var sharesGiven: Int?
    public var threshold: Int?
    /// A key rotation's progress (the last one, while it runs).
    public var rotation: RotationInfo?
    /// The records against their digest: "verified", or why every record is refused.
    public var records: String?

    enum CodingKeys: String, CodingKey {
        case version, unlocked, sealed, devMode = "dev_mode", uptimeSeconds = "uptime_seconds", secrets,
             keyID = "key_id", activeKeyID = "active_key_id", durability, maxValueBytes = "max_value_bytes", maxVersions = "max_versions",
             caller, decision, unseal, sharesGiven = "shares_given", threshold, rotation, records
    }

    public init(version: String, sealed: Bool, devMode: Bool, uptimeSeconds: Int, secrets: Int?, keyID: String?, activeKeyID: String?,
                durability: String, maxValueBytes: Int, maxVersions: Int, caller: Caller, decision: String) {
        self.version = version
        self.unlocked = !sealed
        self.sealed = sealed
        self.devMode = devMode
        self.uptimeSeconds = uptimeSeconds
        self.secrets = secrets
        self.keyID = keyID
        self.activeKeyID = activeKeyID
        self.durability = durability
        self.maxValueBytes = maxValueBytes
        self.maxVersions = maxVersions
        self.caller = caller
        self.decision = decision
    }
}

public enum CofferVersion {
    public static let string = "0.1.0"
}

/// Rejects JSON objects with keys the type does not know.
public enum StrictKeys {
    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public struct UnknownField: Error, CustomStringConvertible {
        public var name: String
        public var description: String { "unknown field '\(name)'" }
    }

    public static func check<K: CodingKey & CaseIterable>(_ decoder: any Decoder, _: K.Type) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        let known = Set(K.allCases.map(\.stringValue))
        for k in c.allKeys where !known.contains(k.stringValue) {
            // Bound the echoed name: it is caller input.
            throw UnknownField(name: String(k.stringValue.prefix(64)))
        }
    }
}

