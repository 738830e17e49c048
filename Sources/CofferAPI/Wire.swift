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
public struct WriteResponse: Codable, Sendable {
    public var path: String
    public var version: Int
    public var metadata: VersionMetadata

    public init(path: String, version: Int, metadata: VersionMetadata) {
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
    public var version: String
    /// "ok", "disabled", or "unavailable: REASON".
    public var audit: String?
    /// "off", "ok", or "failing: REASON" (a failing mirror never blocks requests).
    public var auditMirror: String?

    enum CodingKeys: String, CodingKey { case status, unlocked, version, audit, auditMirror = "audit_mirror" }

    public init(status: String, unlocked: Bool, version: String, audit: String? = nil, auditMirror: String? = nil) {
        self.status = status
        self.unlocked = unlocked
        self.version = version
        self.audit = audit
        self.auditMirror = auditMirror
    }
}

/// One audit event on the wire.
public struct AuditEventWire: Codable, Sendable {
    public var seq: Int64
    public var time: String
    public var requestID: String
    public var peer: Peer
    public var tokenAccessor: String?
    public var method: String
    public var action: String
    public var path: String?
    public var decision: String
    public var rule: String?
    public var outcome: String
    public var status: Int
    public var errorCode: String?
    public var prevHash: String
    public var hash: String

    public struct Peer: Codable, Sendable {
        public var pid: Int32
        public var uid: UInt32
        public var user: String?
        public init(pid: Int32, uid: UInt32, user: String?) {
            self.pid = pid
            self.uid = uid
            self.user = user
        }
    }

    enum CodingKeys: String, CodingKey {
        case seq, time, requestID = "request_id", peer, tokenAccessor = "token_accessor", method, action, path, decision, rule,
             outcome, status, errorCode = "error_code", prevHash = "prev_hash", hash
    }

    public init(seq: Int64, time: String, requestID: String, peer: Peer, tokenAccessor: String?, method: String, action: String,
                path: String?, decision: String, rule: String?, outcome: String, status: Int, errorCode: String?, prevHash: String, hash: String) {
        self.seq = seq
        self.time = time
        self.requestID = requestID
        self.peer = peer
        self.tokenAccessor = tokenAccessor
        self.method = method
        self.action = action
        self.path = path
        self.decision = decision
        self.rule = rule
        self.outcome = outcome
        self.status = status
        self.errorCode = errorCode
        self.prevHash = prevHash
        self.hash = hash
    }
}

public struct AuditEventsResponse: Codable, Sendable {
    public var events: [AuditEventWire]
    public var nextAfter: Int64?
    enum CodingKeys: String, CodingKey { case events, nextAfter = "next_after" }
    public init(events: [AuditEventWire], nextAfter: Int64?) {
        self.events = events
        self.nextAfter = nextAfter
    }
}

public struct AuditVerifyResponse: Codable, Sendable {
    public var ok: Bool
    public var count: Int?
    public var headSeq: Int64?
    public var headHash: String?
    public var checkpoints: Int?
    public var badSeq: Int64?
    public var problem: String?
    enum CodingKeys: String, CodingKey {
        case ok, count, headSeq = "head_seq", headHash = "head_hash", checkpoints, badSeq = "bad_seq", problem
    }
    public init(ok: Bool, count: Int?, headSeq: Int64?, headHash: String?, checkpoints: Int?, badSeq: Int64?, problem: String?) {
        self.ok = ok
        self.count = count
        self.headSeq = headSeq
        self.headHash = headHash
        self.checkpoints = checkpoints
        self.badSeq = badSeq
        self.problem = problem
    }
}

public struct AuditPruneRequest: Codable, Sendable {
    public var throughSeq: Int64
    enum CodingKeys: String, CodingKey, CaseIterable { case throughSeq = "through_seq" }
    public init(throughSeq: Int64) { self.throughSeq = throughSeq }
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        throughSeq = try decoder.container(keyedBy: CodingKeys.self).decode(Int64.self, forKey: .throughSeq)
    }
}

public struct AuditPruneResponse: Codable, Sendable {
    public var removed: Int
    public init(removed: Int) { self.removed = removed }
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
    public var devMode: Bool
    public var uptimeSeconds: Int
    public var secrets: Int
    public var keyID: String
    public var durability: String
    public var maxValueBytes: Int
    public var maxVersions: Int
    public var caller: Caller
    public var decision: String

    enum CodingKeys: String, CodingKey {
        case version, unlocked, devMode = "dev_mode", uptimeSeconds = "uptime_seconds", secrets,
             keyID = "key_id", durability, maxValueBytes = "max_value_bytes", maxVersions = "max_versions", caller, decision
    }

    public init(version: String, unlocked: Bool, devMode: Bool, uptimeSeconds: Int, secrets: Int, keyID: String,
                durability: String, maxValueBytes: Int, maxVersions: Int, caller: Caller, decision: String) {
        self.version = version
        self.unlocked = unlocked
        self.devMode = devMode
        self.uptimeSeconds = uptimeSeconds
        self.secrets = secrets
        self.keyID = keyID
        self.durability = durability
        self.maxValueBytes = maxValueBytes
        self.maxVersions = maxVersions
        self.caller = caller
        self.decision = decision
    }
}

/// `POST /v1/tokens`
public struct CreateTokenRequest: Codable, Sendable {
    public var roles: [String]
    public var ttl: String?
    public var uses: Int?
    public var bindUID: UInt32?
    public var paths: [String]?
    public var name: String?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case roles, ttl, uses, bindUID = "bind_uid", paths, name
    }

    public init(roles: [String], ttl: String?, uses: Int?, bindUID: UInt32?, paths: [String]?, name: String?) {
        self.roles = roles
        self.ttl = ttl
        self.uses = uses
        self.bindUID = bindUID
        self.paths = paths
        self.name = name
    }

    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        roles = try c.decode([String].self, forKey: .roles)
        ttl = try c.decodeIfPresent(String.self, forKey: .ttl)
        uses = try c.decodeIfPresent(Int.self, forKey: .uses)
        bindUID = try c.decodeIfPresent(UInt32.self, forKey: .bindUID)
        paths = try c.decodeIfPresent([String].self, forKey: .paths)
        name = try c.decodeIfPresent(String.self, forKey: .name)
    }
}

/// A token's public facts (never the token itself).
public struct TokenInfo: Codable, Sendable, Equatable {
    public var accessor: String
    public var name: String?
    public var roles: [String]
    public var paths: [String]
    public var parent: String?
    public var createdAt: String
    public var createdBy: CreatedBy
    public var expiresAt: String
    public var ttlRemainingSeconds: Int
    public var usesLeft: Int?
    public var uses: Int
    public var boundUID: UInt32?
    public var state: String  // active, expired, revoked, exhausted

    enum CodingKeys: String, CodingKey {
        case accessor, name, roles, paths, parent, createdAt = "created_at", createdBy = "created_by",
             expiresAt = "expires_at", ttlRemainingSeconds = "ttl_remaining_seconds", usesLeft = "uses_left",
             uses, boundUID = "bound_uid", state
    }

    public init(accessor: String, name: String?, roles: [String], paths: [String], parent: String?, createdAt: String,
                createdBy: CreatedBy, expiresAt: String, ttlRemainingSeconds: Int, usesLeft: Int?, uses: Int,
                boundUID: UInt32?, state: String) {
        self.accessor = accessor
        self.name = name
        self.roles = roles
        self.paths = paths
        self.parent = parent
        self.createdAt = createdAt
        self.createdBy = createdBy
        self.expiresAt = expiresAt
        self.ttlRemainingSeconds = ttlRemainingSeconds
        self.usesLeft = usesLeft
        self.uses = uses
        self.boundUID = boundUID
        self.state = state
    }
}

/// Answer to `POST /v1/tokens`: the token, shown this once.
public struct CreateTokenResponse: Codable, Sendable {
    public var token: String
    public var info: TokenInfo
    public init(token: String, info: TokenInfo) {
        self.token = token
        self.info = info
    }
}

public struct TokenListResponse: Codable, Sendable {
    public var tokens: [TokenInfo]
    public init(tokens: [TokenInfo]) { self.tokens = tokens }
}

public struct RevokeResponse: Codable, Sendable {
    public var revoked: [String]
    public init(revoked: [String]) { self.revoked = revoked }
}

/// `GET /v1/tokens/self`: what the caller may do, and its token if it used one.
public struct SelfResponse: Codable, Sendable {
    public struct RoleInfo: Codable, Sendable {
        public var name: String
        public var maxTTL: String?
        public var rules: [String]
        enum CodingKeys: String, CodingKey { case name, maxTTL = "max_ttl", rules }
        public init(name: String, maxTTL: String?, rules: [String]) {
            self.name = name
            self.maxTTL = maxTTL
            self.rules = rules
        }
    }
    public var uid: UInt32
    public var user: String?
    public var groups: [String]
    public var token: TokenInfo?
    public var roles: [RoleInfo]

    public init(uid: UInt32, user: String?, groups: [String], token: TokenInfo?, roles: [RoleInfo]) {
        self.uid = uid
        self.user = user
        self.groups = groups
        self.token = token
        self.roles = roles
    }
}

/// `POST /v1/sys/policy/explain`
public struct ExplainRequest: Codable, Sendable {
    public var subject: String
    public var capability: String
    public var path: String

    enum CodingKeys: String, CodingKey, CaseIterable { case subject, capability, path }

    public init(subject: String, capability: String, path: String) {
        self.subject = subject
        self.capability = capability
        self.path = path
    }

    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        subject = try c.decode(String.self, forKey: .subject)
        capability = try c.decode(String.self, forKey: .capability)
        path = try c.decode(String.self, forKey: .path)
    }
}

public struct ExplainResponse: Codable, Sendable {
    public var subject: String
    public var uid: UInt32?
    public var roles: [String]
    public var allowed: Bool
    public var rule: String
    public init(subject: String, uid: UInt32?, roles: [String], allowed: Bool, rule: String) {
        self.subject = subject
        self.uid = uid
        self.roles = roles
        self.allowed = allowed
        self.rule = rule
    }
}

public struct PolicyReloadResponse: Codable, Sendable {
    public var source: String
    public var roles: [String]
    public var bindings: Int
    public init(source: String, roles: [String], bindings: Int) {
        self.source = source
        self.roles = roles
        self.bindings = bindings
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

/// Millisecond timestamps as RFC 3339 UTC strings, e.g. 2026-11-29T02:21:40.123Z.
public enum Timestamp {
    public static func string(millis: Int64) -> String {
        var t = time_t(millis / 1000)
        var tm = tm()
        gmtime_r(&t, &tm)
        func pad(_ v: Int32, _ n: Int) -> String {
            let s = String(v)
            return s.count >= n ? s : String(repeating: "0", count: n - s.count) + s
        }
        let ms = Int32(millis % 1000)
        return "\(pad(tm.tm_year + 1900, 4))-\(pad(tm.tm_mon + 1, 2))-\(pad(tm.tm_mday, 2))T"
            + "\(pad(tm.tm_hour, 2)):\(pad(tm.tm_min, 2)):\(pad(tm.tm_sec, 2)).\(pad(ms, 3))Z"
    }
}
