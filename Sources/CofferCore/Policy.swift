/// What a rule can grant. `admin` (tokens of others, policy) and `audit` (the audit
/// trail) are global and only appear in rules whose path is `**`; `inject`
/// releases a value only into a `coffer run` tmpfs, never to `secret get`.
public enum Capability: String, Sendable, CaseIterable, Codable, Comparable {
    case read, list, write, delete, destroy, admin, audit, inject
    /// Reading the daemon's metrics (GET /v1/sys/metrics): counts and timings, no
    /// secret, no path, no name; for a Prometheus scraper's token or uid.
    case metrics

    public static func < (a: Capability, b: Capability) -> Bool { a.rawValue < b.rawValue }

    public var isGlobal: Bool { self == .admin || self == .audit || self == .metrics }

    /// The capability an action needs (nil: the action has its own rule, e.g. status).
    public init?(action: Action) {
        switch action {
        case .read, .readMetadata: self = .read
        case .list: self = .list
        case .write: self = .write
        case .delete, .undelete: self = .delete
        case .destroy: self = .destroy
        case .admin: self = .admin
        case .audit: self = .audit
        case .metrics: self = .metrics
        case .inject: self = .inject
        case .status, .signIn, .ownToken, .elevate: return nil
        }
    }
}

/// A fact about the process a value is released into, verified by cofferd itself
/// (never taken from the client's word), that a rule may require.
public enum Condition: String, Sendable, CaseIterable, Codable, Comparable {
    /// The process is in a network namespace of its own with only loopback, and holds
    /// no socket of the host's network (`coffer run --network none`).
    case networkNone = "network:none"

    public static func < (a: Condition, b: Condition) -> Bool { a.rawValue < b.rawValue }

    /// How a denial tells the caller to meet it.
    public var howToMeet: String {
        switch self {
        case .networkNone: "only into a run without network (coffer run --network none)"
        }
    }
}

/// Who a binding names.
public enum Subject: Hashable, Sendable, CustomStringConvertible {
    case user(String)
    case uid(UInt32)
    case group(String)
    /// A container by its OCI id (runc's container name; podman's 64-hex id), `*` and
    /// `?` as wildcards: matches only an injection cofferd verified was requested by
    /// root for a process in namespaces of its own (see RunService).
    case container(String)

    public init(_ text: String) throws(CofferError) {
        let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
        guard parts.count == 2, !parts[1].isEmpty else {
            throw CofferError(.invalidParameter, "subject '\(text.prefix(64))' must be user:NAME, uid:N or group:NAME")
        }
        switch parts[0] {
        case "user": self = .user(parts[1])
        case "group": self = .group(parts[1])
        case "uid":
            guard let n = UInt32(parts[1]) else { throw CofferError(.invalidParameter, "subject '\(text.prefix(64))': uid must be a number") }
            self = .uid(n)
        case "container":
            guard parts[1].utf8.count <= 128, parts[1].utf8.allSatisfy({ SecretPath.isAllowed($0) || $0 == UInt8(ascii: "*") || $0 == UInt8(ascii: "?") }) else {
                throw CofferError(.invalidParameter, "subject '\(text.prefix(64))': a container pattern is 1-128 of [A-Za-z0-9._-] with * and ?")
            }
            self = .container(parts[1])
        default:
            throw CofferError(.invalidParameter, "subject '\(text.prefix(64))' must be user:NAME, uid:N, group:NAME or container:PATTERN")
        }
    }

    public var description: String {
        switch self {
        case .user(let n): "user:\(n)"
        case .uid(let n): "uid:\(n)"
        case .group(let n): "group:\(n)"
        case .container(let n): "container:\(n)"
        }
    }

    public func matches(_ p: Principal) -> Bool {
        switch self {
        case .user(let n): p.userName == n
        case .uid(let n): p.uid == n
        case .group(let n): p.groupNames.contains(n)
        case .container(let pattern): p.container.map { Self.glob(Array(pattern.utf8)[...], Array($0.utf8)[...]) } ?? false
        }
    }

    /// `*` any run of bytes, `?` one byte, anything else itself.
    static func glob(_ p: ArraySlice<UInt8>, _ s: ArraySlice<UInt8>) -> Bool {
        var pi = p.startIndex, si = s.startIndex
        var star: ArraySlice<UInt8>.Index? = nil, mark = s.startIndex
        while si < s.endIndex {
            if pi < p.endIndex && (p[pi] == UInt8(ascii: "?") || p[pi] == s[si]) {
                pi += 1; si += 1
            } else if pi < p.endIndex && p[pi] == UInt8(ascii: "*") {
                star = pi; mark = si; pi += 1
            } else if let st = star {
                pi = st + 1; mark += 1; si = mark
            } else {
                return false
            }
        }
        while pi < p.endIndex && p[pi] == UInt8(ascii: "*") { pi += 1 }
        return pi == p.endIndex
    }
}

/// The access policy: roles hold rules, bindings give roles to subjects. Immutable;
/// a reload swaps the whole value.
public struct Policy: Sendable, Equatable {
    public enum Effect: String, Sendable { case allow, deny }

    public struct Rule: Sendable, Equatable {
        public var role: String
        public var index: Int  // 1-based within the role
        public var pattern: PathPattern
        public var capabilities: Set<Capability>
        public var effect: Effect
        public var location: String  // file:line
        /// What must be verified of the process a value goes to for this rule to allow.
        public var requires: Set<Condition> = []

        public init(role: String, index: Int, pattern: PathPattern, capabilities: Set<Capability>, effect: Effect, location: String,
                    requires: Set<Condition> = []) {
            self.role = role
            self.index = index
            self.pattern = pattern
            self.capabilities = capabilities
            self.effect = effect
            self.location = location
            self.requires = requires
        }

        /// How a decision names this rule.
        public var name: String {
            let req = requires.isEmpty ? "" : " requires \(requires.sorted().map(\.rawValue).joined(separator: ","))"
            return "role \(role) rule \(index) (\(location): \(effect.rawValue) \(capabilities.sorted().map(\.rawValue).joined(separator: ",")) on \(pattern)\(req))"
        }
    }

    public struct Role: Sendable, Equatable {
        public var name: String
        public var maxTTL: Int?  // seconds
        public var rules: [Rule]
    }

    public struct Binding: Sendable, Equatable {
        public var subjects: [Subject]
        public var roles: [String]
        public var location: String
    }

    public var roles: [String: Role]
    public var bindings: [Binding]
    /// Time-boxed elevation: one rule per role that may be asked for.
    public var elevations: [String: ElevationRule] = [:]
    public var source: String

    public init(roles: [String: Role], bindings: [Binding], source: String, elevations: [String: ElevationRule] = [:]) {
        self.roles = roles
        self.bindings = bindings
        self.source = source
        self.elevations = elevations
    }

    /// Built-in policy when no policy file is configured: the listed uids, uid 0 and
    /// the admin group hold role `admin` (every capability on every path).
    public static func adminOnly(uids: [UInt32], group: String?) -> Policy {
        let rule = Rule(role: "admin", index: 1, pattern: .everything,
                        capabilities: Set(Capability.allCases), effect: .allow, location: "built-in")
        var subjects: [Subject] = [.uid(0)] + uids.map { .uid($0) }
        if let group { subjects.append(.group(group)) }
        return Policy(roles: ["admin": Role(name: "admin", maxTTL: nil, rules: [rule])],
                      bindings: [Binding(subjects: subjects, roles: ["admin"], location: "built-in")],
                      source: "built-in")
    }

    /// Role names bound to a principal, sorted.
    public func roleNames(for p: Principal) -> [String] {
        var out = Set<String>()
        for b in bindings where b.subjects.contains(where: { $0.matches(p) }) {
            out.formUnion(b.roles)
        }
        return out.sorted()
    }

    /// Default deny; any matching deny wins; then, for a release of a value (read or
    /// inject), the conditions required by any matching rule must hold — a rule's
    /// `require` binds every release of the paths it matches, whichever rule grants
    /// it (the stricter rule wins, as a deny does); otherwise the first matching allow
    /// (roles in name order, rules in file order) decides. `conditions` are what
    /// cofferd verified of the receiving process.
    public func decide(roles names: [String], capability: Capability, path: String, conditions: Set<Condition> = []) -> Decision {
        var allow: Rule?
        var demanding: Rule?
        let releases = capability == .read || capability == .inject
        for name in names {
            guard let role = roles[name] else { continue }
            for rule in role.rules {
                guard capability.isGlobal ? rule.capabilities.contains(capability) : rule.pattern.matches(path) else { continue }
                if releases && demanding == nil && !rule.requires.isSubset(of: conditions) { demanding = rule }
                guard rule.capabilities.contains(capability) else { continue }
                if rule.effect == .deny { return .deny(rule.name) }
                if allow == nil && rule.requires.isSubset(of: conditions) { allow = rule }
            }
        }
        if let demanding {
            let missing = demanding.requires.subtracting(conditions).sorted()
            return .deny("\(demanding.name) releases it \(missing.map(\.howToMeet).joined(separator: " and ")): missing \(missing.map(\.rawValue).joined(separator: ","))")
        }
        if let allow { return .allow(allow.name) }
        return .deny(names.isEmpty ? "no rule matched (no role is bound to this caller)" : "no rule matched (roles: \(names.joined(separator: ", ")))")
    }

    /// The shortest max_ttl among the roles (nil: none set).
    public func maxTTL(roles names: [String]) -> Int? {
        names.compactMap { roles[$0]?.maxTTL }.min()
    }
}

extension Policy {
    /// Parses a policy file strictly: unknown keys, capabilities, roles, effects and
    /// bad patterns or subjects are errors naming file:line.
    public static func parse(_ text: String, file: String) throws(CofferError) -> Policy {
        let root: TOMLTable
        do { root = try TOML.parse(text) } catch {
            throw CofferError(.invalidPolicy, "\(file):\(error.line): \(error.message)")
        }
        func err(_ line: Int, _ msg: String) -> CofferError { CofferError(.invalidPolicy, "\(file):\(line): \(msg)") }
        for k in root.keys where k != "role" && k != "bind" && k != "elevation" && k != "notify" {
            throw err(root[k]!.line, "unknown key '\(k)' (expected [role.NAME] tables, [[bind]] and [[elevation]] entries, notify)")
        }
        // hooks for every elevation rule, besides each rule's own
        let globalNotify = try root["notify"].map { e throws(CofferError) in try ElevationRule.parseNotify(e, file: file) } ?? []
        var roles: [String: Role] = [:]
        if let entry = root["role"] {
            guard case .table(let roleTables) = entry.value else { throw err(entry.line, "'role' must be tables like [role.NAME]") }
            for name in roleTables.keys {
                let e = roleTables[name]!
                guard case .table(let t) = e.value else { throw err(e.line, "role '\(name)' must be a table") }
                guard !name.isEmpty, name.utf8.count <= 64, name.utf8.allSatisfy({ SecretPath.isAllowed($0) && $0 != UInt8(ascii: ".") }) else {
                    throw err(e.line, "role name '\(name)' must be 1-64 of [A-Za-z0-9_-]")
                }
                var role = Role(name: name, maxTTL: nil, rules: [])
                for k in t.keys where k != "max_ttl" && k != "rule" {
                    throw err(t[k]!.line, "unknown key '\(k)' in role '\(name)' (allowed: max_ttl, rule)")
                }
                if let m = t["max_ttl"] {
                    guard case .string(let s) = m.value, let secs = DurationText.seconds(s) else {
                        throw err(m.line, "max_ttl must be a duration like \"30m\" or \"1h\"")
                    }
                    role.maxTTL = secs
                }
                if let r = t["rule"] {
                    guard case .tableArray(let rules) = r.value else { throw err(r.line, "rules are [[role.\(name).rule]] entries") }
                    for (i, rt) in rules.enumerated() {
                        role.rules.append(try parseRule(rt, role: name, index: i + 1, file: file))
                    }
                }
                roles[name] = role
            }
        }
        var bindings: [Binding] = []
        if let entry = root["bind"] {
            guard case .tableArray(let items) = entry.value else { throw err(entry.line, "bindings are [[bind]] entries") }
            for t in items {
                for k in t.keys where k != "subjects" && k != "roles" {
                    throw err(t[k]!.line, "unknown key '\(k)' in [[bind]] (allowed: subjects, roles)")
                }
                let reader = TableReader(table: t, file: file, name: "bind")
                let subjects: [String]
                let names: [String]
                do {
                    subjects = try reader.strings("subjects") ?? []
                    names = try reader.strings("roles") ?? []
                } catch { throw CofferError(.invalidPolicy, error.message) }
                guard !subjects.isEmpty else { throw err(t.line, "[[bind]] needs subjects = [\"user:NAME\", \"uid:N\", \"group:NAME\", \"container:PATTERN\"]") }
                guard !names.isEmpty else { throw err(t.line, "[[bind]] needs roles = [\"ROLE\"]") }
                var parsed: [Subject] = []
                for s in subjects {
                    do { parsed.append(try Subject(s)) } catch { throw err(t["subjects"]!.line, error.message) }
                }
                for n in names where roles[n] == nil {
                    throw err(t["roles"]!.line, "unknown role '\(n)'")
                }
                bindings.append(Binding(subjects: parsed, roles: names, location: "\(file):\(t.line)"))
            }
        }
        var elevations: [String: ElevationRule] = [:]
        if let entry = root["elevation"] {
            guard case .tableArray(let items) = entry.value else { throw err(entry.line, "elevation rules are [[elevation]] entries") }
            for t in items {
                var rule = try ElevationRule.parse(t, file: file, roles: roles)
                rule.notify = globalNotify + rule.notify
                guard elevations[rule.role] == nil else { throw err(t.line, "a second [[elevation]] for role '\(rule.role)'") }
                elevations[rule.role] = rule
            }
        }
        return Policy(roles: roles, bindings: bindings, source: file, elevations: elevations)
    }

    static func parseRule(_ t: TOMLTable, role: String, index: Int, file: String) throws(CofferError) -> Rule {
        func err(_ line: Int, _ msg: String) -> CofferError { CofferError(.invalidPolicy, "\(file):\(line): \(msg)") }
        for k in t.keys where !["path", "capabilities", "effect", "require"].contains(k) {
            throw err(t[k]!.line, "unknown key '\(k)' in a rule of role '\(role)' (allowed: path, capabilities, effect, require)")
        }
        guard let p = t["path"], case .string(let ps) = p.value else { throw err(t.line, "a rule needs path = \"PATTERN\"") }
        let pattern: PathPattern
        do { pattern = try PathPattern(ps) } catch { throw err(p.line, error.message) }
        guard let c = t["capabilities"], case .array(let items) = c.value, !items.isEmpty else {
            throw err(t.line, "a rule needs capabilities = [\"read\", ...]")
        }
        var caps = Set<Capability>()
        for item in items {
            guard case .string(let s) = item, let cap = Capability(rawValue: s) else {
                throw err(c.line, "unknown capability (known: \(Capability.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            caps.insert(cap)
        }
        if caps.contains(where: \.isGlobal) && ps != "**" {
            throw err(c.line, "admin, audit and metrics are global: use them in a rule with path = \"**\"")
        }
        var effect = Effect.allow
        if let e = t["effect"] {
            guard case .string(let s) = e.value, let v = Effect(rawValue: s) else { throw err(e.line, "effect must be \"allow\" or \"deny\"") }
            effect = v
        }
        var requires = Set<Condition>()
        if let r = t["require"] {
            guard case .array(let items) = r.value, !items.isEmpty else { throw err(r.line, "require = [\"network:none\"] (a list of conditions)") }
            for item in items {
                guard case .string(let s) = item, let c = Condition(rawValue: s) else {
                    throw err(r.line, "unknown requirement (known: \(Condition.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                requires.insert(c)
            }
            // a condition is verified of a process a value is released into: it gates read and inject only
            guard effect == .allow else { throw err(r.line, "require belongs on allow rules (a deny applies always)") }
            guard caps.isSubset(of: [.read, .inject]) else {
                throw err(r.line, "require gates the release of values: use it in a rule whose capabilities are read and/or inject")
            }
        }
        return Rule(role: role, index: index, pattern: pattern, capabilities: caps, effect: effect, location: "\(file):\(p.line)", requires: requires)
    }
}
