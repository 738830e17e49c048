/// Who is calling: the kernel's answer (SO_PEERCRED) plus what the host's user
/// database says about that uid. Nothing here is taken from the request itself.
public struct Principal: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
    public var userName: String?
    /// Primary and supplementary groups of the uid.
    public var groups: [UInt32]

    public init(pid: Int32, uid: UInt32, gid: UInt32, userName: String?, groups: [UInt32]) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.userName = userName
        self.groups = groups
    }

    /// For logs and audit: `uid:1000(alice)`.
    public var displayName: String {
        if let userName { return "uid:\(uid)(\(userName))" }
        return "uid:\(uid)"
    }
}

/// What a request wants to do.
public enum Action: String, Sendable, CaseIterable, Codable {
    case read, list, write, delete, undelete, destroy
    case readMetadata = "read_metadata"
    case status
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

/// Foundation rule: uid 0, the listed uids, and members of the admin groups may do
/// everything; anyone else is denied (default deny, invariant 3).
public struct AdminOnlyAuthorizer: Authorizer {
    public var adminUIDs: Set<UInt32>
    public var adminGIDs: Set<UInt32>

    public init(adminUIDs: Set<UInt32>, adminGIDs: Set<UInt32>) {
        self.adminUIDs = adminUIDs
        self.adminGIDs = adminGIDs
    }

    public func authorize(_ principal: Principal, _ action: Action, _ path: SecretPath?) -> Decision {
        if principal.uid == 0 { return .allow("admin: uid 0") }
        if adminUIDs.contains(principal.uid) { return .allow("admin: uid \(principal.uid)") }
        if let g = principal.groups.first(where: { adminGIDs.contains($0) }) { return .allow("admin: group \(g)") }
        return .deny("default deny: not an admin")
    }
}
