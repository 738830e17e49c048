// Wire types of /v1/tokens and /v1/sys/policy.

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
    /// A sign-in session's time of authentication (nil for other tokens).
    public var authenticatedAt: String?

    enum CodingKeys: String, CodingKey {
        case accessor, name, roles, paths, parent, createdAt = "created_at", createdBy = "created_by",
             expiresAt = "expires_at", ttlRemainingSeconds = "ttl_remaining_seconds", usesLeft = "uses_left",
             uses, boundUID = "bound_uid", state, authenticatedAt = "authenticated_at"
    }

    public init(accessor: String, name: String?, roles: [String], paths: [String], parent: String?, createdAt: String,
                createdBy: CreatedBy, expiresAt: String, ttlRemainingSeconds: Int, usesLeft: Int?, uses: Int,
                boundUID: UInt32?, state: String, authenticatedAt: String? = nil) {
        self.authenticatedAt = authenticatedAt
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
    /// What the subject may ask for or review through time-boxed elevation, e.g.
    /// "prod-db-admin: eligible via group:oncall, needs 2 approvals, at most 2h".
    public var elevation: [String]?
    public init(subject: String, uid: UInt32?, roles: [String], allowed: Bool, rule: String, elevation: [String]? = nil) {
        self.subject = subject
        self.uid = uid
        self.roles = roles
        self.allowed = allowed
        self.rule = rule
        self.elevation = elevation
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
