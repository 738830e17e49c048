/// Who is calling: the kernel's answer (SO_PEERCRED) plus what the host's user
/// database says about that uid. Nothing here is taken from the request itself.
public struct Principal: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
    public var userName: String?
    /// Primary and supplementary groups of the uid.
    public var groups: [UInt32]
    /// Names of those groups (for `group:NAME` bindings).
    public var groupNames: [String]
    /// Set when the request presented a valid token: its roles replace the peer's.
    public var token: TokenGrant?

    public init(pid: Int32, uid: UInt32, gid: UInt32, userName: String?, groups: [UInt32], groupNames: [String] = [], token: TokenGrant? = nil) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.userName = userName
        self.groups = groups
        self.groupNames = groupNames
        self.token = token
    }

    /// For logs and audit: `uid:1000(alice)`.
    public var displayName: String {
        if let userName { return "uid:\(uid)(\(userName))" }
        return "uid:\(uid)"
    }
}

/// What a token carries: the only roles (and, optionally, paths) it grants.
public struct TokenGrant: Sendable, Equatable {
    public var accessor: String
    public var roles: [String]
    /// Empty: no restriction beyond the roles.
    public var paths: [PathPattern]
    public var expiresAt: Int64
    public var boundUID: UInt32?

    public init(accessor: String, roles: [String], paths: [PathPattern], expiresAt: Int64, boundUID: UInt32?) {
        self.accessor = accessor
        self.roles = roles
        self.paths = paths
        self.expiresAt = expiresAt
        self.boundUID = boundUID
    }
}

/// What a request wants to do.
public enum Action: String, Sendable, CaseIterable, Codable {
    case read, list, write, delete, undelete, destroy
    case readMetadata = "read_metadata"
    case status
    /// Policy reload and explain, other callers' tokens.
    case admin
    /// Reading the audit trail.
    case audit
}

/// An authorization decision names what decided it, so a denial can be explained
/// without being an oracle for which paths exist.
public struct Decision: Sendable, Equatable {
    public var allowed: Bool
    /// The rule or reason that decided, e.g. "admin: uid 0" or "default deny".
    public var rule: String

    public static func allow(_ rule: String) -> Decision { Decision(allowed: true, rule: rule) }
    public static func deny(_ rule: String) -> Decision { Decision(allowed: false, rule: rule) }
}

/// The one authorization call (issue 3 slots its policy engine in here).
public protocol Authorizer: Sendable {
    func authorize(_ principal: Principal, _ action: Action, _ path: SecretPath?) -> Decision
}

/// Evaluates a policy for a principal: a token's roles replace the peer's, and a
/// token's paths (if any) further restrict; then default deny, deny wins.
public struct PolicyEvaluator {
    public static func decide(_ policy: Policy, _ p: Principal, _ action: Action, _ path: SecretPath?) -> Decision {
        let roles = p.token?.roles ?? policy.roleNames(for: p)
        guard let capability = Capability(action: action) else {
            // status: any caller holding at least one role (or a valid token)
            return roles.isEmpty ? .deny("no rule matched (no role is bound to this caller)") : .allow("status: holds role \(roles[0])")
        }
        let target = path?.rawValue ?? ""
        if let token = p.token, !token.paths.isEmpty, !capability.isGlobal,
           !token.paths.contains(where: { $0.matches(target) }) {
            return .deny("token \(token.accessor): \(target.isEmpty ? "the root" : target) is outside the token's paths")
        }
        return policy.decide(roles: roles, capability: capability, path: target)
    }
}
