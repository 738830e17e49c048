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
    /// Set only for the daemon's own background jobs (`system:NAME`), never from a
    /// request: the gate decides for them, not the policy.
    public private(set) var systemJob: String?
    /// What cofferd verified of the requesting process for this request (e.g. that
    /// it has no network): set by the daemon from the kernel's facts, never from a
    /// request's word. Rules may require these.
    public var conditions: Set<Condition> = []
    /// The container (OCI id) an injection is for, when cofferd verified it: root asked,
    /// for a process in mount and PID namespaces of its own. Set only by the daemon.
    public var container: String?

    public init(pid: Int32, uid: UInt32, gid: UInt32, userName: String?, groups: [UInt32], groupNames: [String] = [], token: TokenGrant? = nil) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.userName = userName
        self.groups = groups
        self.groupNames = groupNames
        self.token = token
    }

    /// A background job of the daemon, e.g. `system:reaper`.
    public static func system(_ job: String) -> Principal {
        var p = Principal(pid: 0, uid: 0, gid: 0, userName: "system:" + job, groups: [])
        p.systemJob = job
        return p
    }

    /// For logs and audit: `uid:1000(alice)`.
    public var displayName: String {
        if let userName { return "uid:\(uid)(\(userName))" }
        return "uid:\(uid)"
    }
}

/// What a token carries: the only roles (and, optionally, paths) it grants, and the
/// authority it narrows. A token can only ever narrow: a request made with it is
/// allowed only if its own roles and paths allow it, every ancestor token's roles
/// and paths allow it, and the policy as it applies to the uid that minted the
/// first token of the chain allows it (deny rules included, evaluated live).
public struct TokenGrant: Sendable, Equatable {
    /// Roles and paths of one token of the chain.
    public struct Layer: Sendable, Equatable {
        public var accessor: String
        public var roles: [String]
        /// Empty: no restriction beyond the roles.
        public var paths: [PathPattern]
        public init(accessor: String, roles: [String], paths: [PathPattern]) {
            self.accessor = accessor
            self.roles = roles
            self.paths = paths
        }
    }

    /// Who minted the chain's first token, as the host's user database says now.
    public struct Origin: Sendable, Equatable {
        public var uid: UInt32
        public var userName: String?
        public var groupNames: [String]
        /// Roles the creator holds through an active elevation (the chain's first
        /// token was issued for it, and ends with it).
        public var elevatedRoles: [String]
        public init(uid: UInt32, userName: String?, groupNames: [String], elevatedRoles: [String] = []) {
            self.uid = uid
            self.userName = userName
            self.groupNames = groupNames
            self.elevatedRoles = elevatedRoles
        }
    }

    public var accessor: String
    public var roles: [String]
    /// Empty: no restriction beyond the roles.
    public var paths: [PathPattern]
    public var expiresAt: Int64
    public var boundUID: UInt32?
    /// Parent first, then its parent, up to the chain's first token.
    public var ancestors: [Layer]
    /// nil only for grants made in tests without a creator.
    public var origin: Origin?
    /// The daemon's revocation epoch when the chain was checked: a read re-checks the
    /// chain before its value leaves if any revocation happened since.
    public var epoch: UInt64 = 0
    /// When the chain's first token was made by a PAM sign-in (nil: not a sign-in session).
    public var authenticatedAt: Int64?

    public init(accessor: String, roles: [String], paths: [PathPattern], expiresAt: Int64, boundUID: UInt32?,
                ancestors: [Layer] = [], origin: Origin? = nil) {
        self.accessor = accessor
        self.roles = roles
        self.paths = paths
        self.expiresAt = expiresAt
        self.boundUID = boundUID
        self.ancestors = ancestors
        self.origin = origin
    }

    /// This token and its ancestors, self first.
    public var layers: [Layer] { [Layer(accessor: accessor, roles: roles, paths: paths)] + ancestors }

    /// Accessors of the whole chain (checked again inside every write transaction).
    public var chain: [String] { [accessor] + ancestors.map(\.accessor) }
}

/// What a request wants to do.
public enum Action: String, Sendable, CaseIterable, Codable {
    case read, list, write, delete, undelete, destroy
    /// Releasing a value only into a run's tmpfs (`coffer run`): a rule with
    /// `inject` and no `read` lets a build use a secret it cannot print.
    case inject
    /// Signing in with one's own account (PAM): any caller with a local account.
    case signIn = "sign_in"
    /// Looking up or revoking the token the request carries: always its holder's right
    /// (a session with no role can still be ended).
    case ownToken = "own_token"
    /// Asking for, reviewing and using time-boxed elevation: the elevation rules
    /// decide who may (any local account reaches them; a token too).
    case elevate
    case readMetadata = "read_metadata"
    case status
    /// Policy reload and explain, other callers' tokens.
    case admin
    /// Reading the audit trail.
    case audit
    /// Reading the daemon's metrics.
    case metrics
}

/// An authorization decision names what decided it, so a denial can be explained
/// without being an oracle for which paths exist. More than yes and no: a rule may
/// grant only after approvals or only to a fresh sign-in (time-boxed elevation).
public struct Decision: Sendable, Equatable {
    public enum Verdict: Sendable, Equatable {
        case allow
        case deny
        /// Allowed once `approvals` distinct approvers agreed.
        case needsApproval(approvals: Int)
        /// Allowed to a caller who signed in within `withinSeconds`.
        case needsFreshLogin(withinSeconds: Int)
    }

    public var verdict: Verdict
    /// The rule or reason that decided, e.g. "admin: uid 0" or "default deny".
    public var rule: String

    public init(_ verdict: Verdict, rule: String) {
        self.verdict = verdict
        self.rule = rule
    }

    public var allowed: Bool { verdict == .allow }

    public static func allow(_ rule: String) -> Decision { Decision(.allow, rule: rule) }
    public static func deny(_ rule: String) -> Decision { Decision(.deny, rule: rule) }

    /// How the audit trail records it.
    public var auditName: String {
        switch verdict {
        case .allow: "allow"
        case .deny: "deny"
        case .needsApproval: "needs_approval"
        case .needsFreshLogin: "needs_fresh_login"
        }
    }
}

/// The one authorization call (issue 3 slots its policy engine in here).
public protocol Authorizer: Sendable {
    func authorize(_ principal: Principal, _ action: Action, _ path: SecretPath?) -> Decision
}

/// Evaluates a policy for a principal: a token's roles replace the peer's, and a
/// token's paths (if any) further restrict; then default deny, deny wins. With a
/// token, every layer of its chain and its origin must allow (see TokenGrant).
public struct PolicyEvaluator {
    /// Signing in proves who one is, so it needs no role: any peer the host's user
    /// database knows, by its own uid, without a token (a token proves nothing more).
    static func signInDecision(_ p: Principal) -> Decision {
        guard p.token == nil else { return .deny("sign-in: with your own account, not with a token") }
        guard let name = p.userName else { return .deny("sign-in: uid \(p.uid) has no local account") }
        return .allow("sign-in: the local account \(name) (uid \(p.uid))")
    }

    public static func decide(_ policy: Policy, _ p: Principal, _ action: Action, _ path: SecretPath?) -> Decision {
        if action == .signIn { return signInDecision(p) }
        if action == .ownToken { return p.token.map { .allow("your own token \($0.accessor)") } ?? .deny("no token was given") }
        if action == .elevate { return p.userName != nil ? .allow("elevation: the local account \(p.userName!); its rules decide") : .deny("uid \(p.uid) has no local account") }
        guard let token = p.token else {
            let roles = policy.roleNames(for: p)
            guard let capability = Capability(action: action) else { return statusDecision(roles) }
            return policy.decide(roles: roles, capability: capability, path: path?.rawValue ?? "", conditions: p.conditions)
        }
        guard let capability = Capability(action: action) else { return statusDecision(token.roles) }
        let target = path?.rawValue ?? ""
        var decided: Decision?
        for layer in token.layers {
            let d = decide(policy, layer, capability, target, p.conditions)
            guard d.allowed else {
                return layer.accessor == token.accessor ? d : .deny("token \(token.accessor) was made from token \(layer.accessor): \(d.rule)")
            }
            if decided == nil { decided = d }
        }
        if let origin = token.origin {
            let who = Principal(pid: 0, uid: origin.uid, gid: UInt32.max, userName: origin.userName, groups: [], groupNames: origin.groupNames)
            // a role held through elevation lasts only while its rule exists and the
            // creator is still eligible (group changes reach it like any role loss)
            let elevated = origin.elevatedRoles.filter { policy.elevations[$0]?.isEligible(who) != nil }
            let d = policy.decide(roles: Array(Set(policy.roleNames(for: who) + elevated)).sorted(), capability: capability, path: target,
                                  conditions: p.conditions)
            guard d.allowed else { return .deny("token \(token.accessor) was made by \(who.displayName), whom the policy denies: \(d.rule)") }
        }
        return decided ?? .deny("default deny")
    }

    /// A decision function for many decisions about one principal under one policy
    /// (a listing): the role names it resolves are computed once.
    public static func decider(_ policy: Policy, _ p: Principal) -> (Action, SecretPath?) -> Decision {
        guard p.token == nil else { return { decide(policy, p, $0, $1) } }
        let roles = policy.roleNames(for: p)
        return { action, path in
            if action == .signIn { return signInDecision(p) }
            if action == .ownToken { return .deny("no token was given") }
            if action == .elevate { return p.userName != nil ? .allow("elevation: the local account \(p.userName!); its rules decide") : .deny("uid \(p.uid) has no local account") }
            guard let capability = Capability(action: action) else { return statusDecision(roles) }
            return policy.decide(roles: roles, capability: capability, path: path?.rawValue ?? "", conditions: p.conditions)
        }
    }

    /// One token's own grant: its paths (if any), then its roles.
    static func decide(_ policy: Policy, _ layer: TokenGrant.Layer, _ capability: Capability, _ target: String,
                       _ conditions: Set<Condition>) -> Decision {
        if !layer.paths.isEmpty {
            if capability.isGlobal {
                // admin and audit reach every path: a path-limited token never carries them
                guard layer.paths.contains(where: { $0.rawValue == "**" }) else {
                    return .deny("token \(layer.accessor): \(capability.rawValue) is global and the token is limited to paths")
                }
            } else if !layer.paths.contains(where: { $0.matches(target) }) {
                return .deny("token \(layer.accessor): \(target.isEmpty ? "the root" : target) is outside the token's paths")
            }
        }
        return policy.decide(roles: layer.roles, capability: capability, path: target, conditions: conditions)
    }

    /// status: any caller holding at least one role (or a valid token).
    static func statusDecision(_ roles: [String]) -> Decision {
        roles.isEmpty ? .deny("no rule matched (no role is bound to this caller)") : .allow("status: holds role \(roles[0])")
    }
}
