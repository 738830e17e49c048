/// One `[[elevation]]` entry of the policy: who may ask for a role, who reviews,
/// how many approvals it needs and for how long it may be held.
public struct ElevationRule: Sendable, Equatable {
    public var role: String
    public var eligible: [Subject]
    public var approvers: [Subject]
    /// Distinct approvals needed (0: none; the request is approved when made).
    public var approvals: Int
    /// Denials that end a request.
    public var denials: Int
    public var maxDurationSeconds: Int
    /// Unanswered requests expire after this long.
    public var pendingTTLSeconds: Int
    public var reasonRequired: Bool
    /// A ticket reference the request must carry, matched whole (nil: none asked).
    public var ticketPattern: String?
    /// Requester and approvers must have signed in (PAM) within this long.
    public var freshLoginSeconds: Int?
    /// Eligible callers may activate it themselves, with a reason; flagged for review.
    public var breakGlass: Bool
    /// Commands run with one JSON document on stdin per state change (argv; the
    /// first an absolute path).
    public var notify: [[String]] = []
    /// OpenSSH certificates an active elevation of this rule may get (nil: none).
    public var ssh: SSHGrant?
    /// JWTs an active elevation of this rule may get (nil: none).
    public var jwt: JWTGrant?
    public var location: String

    public init(role: String, eligible: [Subject], approvers: [Subject], approvals: Int, denials: Int, maxDurationSeconds: Int,
                pendingTTLSeconds: Int, reasonRequired: Bool, ticketPattern: String?, freshLoginSeconds: Int?, breakGlass: Bool,
                location: String) {
        self.role = role
        self.eligible = eligible
        self.approvers = approvers
        self.approvals = approvals
        self.denials = denials
        self.maxDurationSeconds = maxDurationSeconds
        self.pendingTTLSeconds = pendingTTLSeconds
        self.reasonRequired = reasonRequired
        self.ticketPattern = ticketPattern
        self.freshLoginSeconds = freshLoginSeconds
        self.breakGlass = breakGlass
        self.location = location
    }

    public func isEligible(_ p: Principal) -> Subject? { eligible.first { $0.matches(p) } }
    public func isApprover(_ p: Principal) -> Subject? { approvers.first { $0.matches(p) } }

    /// Whether `text` matches the ticket pattern: a small, linear matcher (no
    /// backtracking) for the shapes tickets take: literals, `[...]` classes with
    /// ranges, `.`, and `+`, `*`, `?` after an atom; `^` and `$` are implied.
    public func ticketMatches(_ text: String) -> Bool {
        guard let pattern = ticketPattern else { return true }
        guard let atoms = TicketPattern.compile(pattern) else { return false }
        return TicketPattern.matches(atoms, Array(text.unicodeScalars))
    }

    static let keys: Set<String> = ["role", "eligible", "approvers", "approvals", "denials", "max_duration", "pending_ttl", "reason",
                                    "ticket_pattern", "fresh_login", "break_glass", "notify", "ssh", "jwt"]

    /// `notify`: one command (["/path", "arg"]) or several ([["/a"], ["/b", "x"]]),
    /// each an absolute path and its arguments.
    static func parseNotify(_ e: TOMLTable.Entry, file: String) throws(CofferError) -> [[String]] {
        func err(_ msg: String) -> CofferError { CofferError(.invalidPolicy, "\(file):\(e.line): \(msg)") }
        func argv(_ items: [TOMLValue]) throws(CofferError) -> [String] {
            var out: [String] = []
            for i in items {
                guard case .string(let s) = i, !s.isEmpty, s.utf8.count <= 1024 else { throw err("notify must list strings") }
                out.append(s)
            }
            guard let first = out.first, first.hasPrefix("/") else { throw err("notify's command must be an absolute path") }
            return out
        }
        guard case .array(let items) = e.value, !items.isEmpty else { throw err("notify must be [\"/path/to/command\", ...]") }
        var notify: [[String]] = []
        if case .array = items[0] {
            for i in items {
                guard case .array(let cmd) = i else { throw err("notify must be a list of commands") }
                notify.append(try argv(cmd))
            }
        } else {
            notify.append(try argv(items))
        }
        guard notify.count <= 8 else { throw err("at most 8 notify commands") }
        return notify
    }

    static func parse(_ t: TOMLTable, file: String, roles: [String: Policy.Role]) throws(CofferError) -> ElevationRule {
        func err(_ line: Int, _ msg: String) -> CofferError { CofferError(.invalidPolicy, "\(file):\(line): \(msg)") }
        for k in t.keys where !keys.contains(k) {
            throw err(t[k]!.line, "unknown key '\(k)' in [[elevation]] (allowed: \(keys.sorted().joined(separator: ", ")))")
        }
        func string(_ k: String) throws(CofferError) -> String? {
            guard let e = t[k] else { return nil }
            guard case .string(let s) = e.value else { throw err(e.line, "\(k) must be a string") }
            return s
        }
        func integer(_ k: String, _ range: ClosedRange<Int64>) throws(CofferError) -> Int? {
            guard let e = t[k] else { return nil }
            guard case .integer(let v) = e.value, range.contains(v) else { throw err(e.line, "\(k) must be an integer in \(range.lowerBound)...\(range.upperBound)") }
            return Int(v)
        }
        func duration(_ k: String, max: Int) throws(CofferError) -> Int? {
            guard let s = try string(k) else { return nil }
            guard let v = DurationText.seconds(s), v <= max else { throw err(t[k]!.line, "\(k) must be a duration like \"30m\" (at most \(DurationText.format(max)))") }
            return v
        }
        func subjects(_ k: String) throws(CofferError) -> [Subject] {
            guard let e = t[k] else { return [] }
            guard case .array(let items) = e.value, !items.isEmpty, items.count <= 64 else { throw err(e.line, "\(k) must be a list like [\"group:oncall\"]") }
            var out: [Subject] = []
            for i in items {
                guard case .string(let s) = i else { throw err(e.line, "\(k) must be a list of strings") }
                do { out.append(try Subject(s)) } catch { throw err(e.line, error.message) }
            }
            return out
        }
        guard let role = try string("role") else { throw err(t.line, "[[elevation]] needs role = \"ROLE\"") }
        guard roles[role] != nil else { throw err(t["role"]!.line, "unknown role '\(role.prefix(64))'") }
        let eligible = try subjects("eligible")
        guard !eligible.isEmpty else { throw err(t.line, "[[elevation]] needs eligible = [\"group:NAME\", ...]") }
        let approvals = try integer("approvals", 0...16) ?? 1
        let approvers = try subjects("approvers")
        guard approvals == 0 || !approvers.isEmpty else { throw err(t.line, "approvals = \(approvals) needs approvers = [...]") }
        guard let maxDuration = try duration("max_duration", max: 7 * 86400) else { throw err(t.line, "[[elevation]] needs max_duration = \"2h\" (at most 7d)") }
        let reason = try string("reason") ?? "required"
        guard reason == "required" || reason == "optional" else { throw err(t["reason"]!.line, "reason must be \"required\" or \"optional\"") }
        let ticket = try string("ticket_pattern")
        if let ticket {
            guard ticket.unicodeScalars.count <= 128, TicketPattern.compile(ticket) != nil else {
                throw err(t["ticket_pattern"]!.line, "ticket_pattern must be a simple pattern like \"^OPS-[0-9]+$\" (literals, [classes], ., +, *, ?)")
            }
        }
        var breakGlass = false
        if let e = t["break_glass"] {
            guard case .bool(let b) = e.value else { throw err(e.line, "break_glass must be true or false") }
            breakGlass = b
        }
        let notify = try t["notify"].map { e throws(CofferError) in try parseNotify(e, file: file) } ?? []
        var rule = ElevationRule(
            role: role, eligible: eligible, approvers: approvers, approvals: approvals, denials: try integer("denials", 1...16) ?? 1,
            maxDurationSeconds: maxDuration, pendingTTLSeconds: try duration("pending_ttl", max: 7 * 86400) ?? 1800,
            reasonRequired: reason == "required", ticketPattern: ticket, freshLoginSeconds: try duration("fresh_login", max: 86400),
            breakGlass: breakGlass, location: "\(file):\(t.line)")
        rule.notify = notify
        if let e = t["ssh"] { rule.ssh = try SSHGrant.parse(e, file: file) }
        if let e = t["jwt"] { rule.jwt = try JWTGrant.parse(e, file: file) }
        return rule
    }
}

/// `ssh = { principals = ["deploy"], extensions = ["permit-pty"], force_command = "…",
/// source_address = "10.0.0.0/8" }` on an elevation rule.
public struct SSHGrant: Sendable, Equatable {
    public var principals: [String]
    public var extensions: [String]
    public var forceCommand: String?
    public var sourceAddress: String?

    public init(principals: [String], extensions: [String], forceCommand: String? = nil, sourceAddress: String? = nil) {
        self.principals = principals
        self.extensions = extensions
        self.forceCommand = forceCommand
        self.sourceAddress = sourceAddress
    }

    /// The certificate's critical options.
    public var criticalOptions: [String: String] {
        var o: [String: String] = [:]
        if let forceCommand { o["force-command"] = forceCommand }
        if let sourceAddress { o["source-address"] = sourceAddress }
        return o
    }

    static func parse(_ e: TOMLTable.Entry, file: String) throws(CofferError) -> SSHGrant {
        func err(_ msg: String) -> CofferError { CofferError(.invalidPolicy, "\(file):\(e.line): ssh: \(msg)") }
        guard case .table(let t) = e.value else { throw err("must be a table like { principals = [\"deploy\"] }") }
        let allowed: Set<String> = ["principals", "extensions", "force_command", "source_address"]
        for k in t.keys where !allowed.contains(k) { throw err("unknown key '\(k)' (allowed: \(allowed.sorted().joined(separator: ", ")))") }
        func names(_ k: String, max: Int) throws(CofferError) -> [String]? {
            guard let v = t[k]?.value else { return nil }
            guard case .array(let items) = v, items.count <= max else { throw err("\(k) must be a list of at most \(max) strings") }
            var out: [String] = []
            for i in items {
                guard case .string(let s) = i, SSHCertificate.isValidName(s) else {
                    throw err("\(k) must list names of printable ASCII without spaces or commas")
                }
                if !out.contains(s) { out.append(s) }
            }
            return out
        }
        guard let principals = try names("principals", max: 32), !principals.isEmpty else { throw err("needs principals = [\"NAME\", ...]") }
        let extensions = try names("extensions", max: 16) ?? ["permit-pty"]
        for x in extensions where !SSHCertificate.knownExtensions.contains(x) {
            throw err("unknown extension '\(x)' (known: \(SSHCertificate.knownExtensions.sorted().joined(separator: ", ")))")
        }
        var grant = SSHGrant(principals: principals, extensions: extensions)
        if let v = t["force_command"]?.value {
            guard case .string(let s) = v, !s.isEmpty, s.utf8.count <= 1024, !s.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
                throw err("force_command must be a one-line command of at most 1024 bytes")
            }
            grant.forceCommand = s
        }
        if let v = t["source_address"]?.value {
            guard case .string(let s) = v, SSHCertificate.isValidSourceAddress(s) else {
                throw err("source_address must be addresses or CIDR blocks separated by commas, like \"10.0.0.0/8,192.0.2.7\"")
            }
            grant.sourceAddress = s
        }
        return grant
    }
}

/// `jwt = { audiences = ["deploy-api"], max_ttl = "15m" }` on an elevation rule.
public struct JWTGrant: Sendable, Equatable {
    public var audiences: [String]
    public var maxTTLSeconds: Int

    public init(audiences: [String], maxTTLSeconds: Int) {
        self.audiences = audiences
        self.maxTTLSeconds = maxTTLSeconds
    }

    static func parse(_ e: TOMLTable.Entry, file: String) throws(CofferError) -> JWTGrant {
        func err(_ msg: String) -> CofferError { CofferError(.invalidPolicy, "\(file):\(e.line): jwt: \(msg)") }
        guard case .table(let t) = e.value else { throw err("must be a table like { audiences = [\"deploy-api\"] }") }
        for k in t.keys where k != "audiences" && k != "max_ttl" { throw err("unknown key '\(k)' (allowed: audiences, max_ttl)") }
        guard case .array(let items)? = t["audiences"]?.value, !items.isEmpty, items.count <= 32 else {
            throw err("needs audiences = [\"NAME\", ...] (at most 32)")
        }
        var audiences: [String] = []
        for i in items {
            guard case .string(let s) = i, SSHCertificate.isValidName(s, max: 256) else {
                throw err("audiences must be printable ASCII without spaces or commas")
            }
            audiences.append(s)
        }
        var ttl = 900
        if let v = t["max_ttl"]?.value {
            guard case .string(let s) = v, let secs = DurationText.seconds(s), secs >= 5, secs <= 86400 else {
                throw err("max_ttl must be a duration like \"15m\" (5s...24h)")
            }
            ttl = secs
        }
        return JWTGrant(audiences: audiences, maxTTLSeconds: ttl)
    }
}

/// The ticket patterns of elevation rules: a linear-time subset of regular
/// expressions (a set of positions advanced per character: no backtracking, so no
/// pattern can make a request slow).
enum TicketPattern {
    struct Atom: Equatable {
        var ranges: [ClosedRange<UInt32>]  // empty: any character
        var negated: Bool
        var min: Int  // 0 or 1
        var many: Bool
        func accepts(_ c: Unicode.Scalar) -> Bool {
            if ranges.isEmpty { return true }
            let hit = ranges.contains { $0.contains(c.value) }
            return negated ? !hit : hit
        }
    }

    static func compile(_ pattern: String) -> [Atom]? {
        var s = Array(pattern.unicodeScalars)
        if s.first == "^" { s.removeFirst() }
        if s.last == "$" && (s.count < 2 || s[s.count - 2] != "\\") { s.removeLast() }
        var atoms: [Atom] = []
        var i = 0
        while i < s.count {
            var atom: Atom
            switch s[i] {
            case ".":
                atom = Atom(ranges: [], negated: false, min: 1, many: false)
                i += 1
            case "[":
                i += 1
                var negated = false
                if i < s.count, s[i] == "^" { negated = true; i += 1 }
                var ranges: [ClosedRange<UInt32>] = []
                while i < s.count, s[i] != "]" {
                    var lo = s[i]
                    if lo == "\\", i + 1 < s.count { i += 1; lo = s[i] }
                    if i + 2 < s.count, s[i + 1] == "-", s[i + 2] != "]" {
                        let hi = s[i + 2]
                        guard lo.value <= hi.value else { return nil }
                        ranges.append(lo.value...hi.value)
                        i += 3
                    } else {
                        ranges.append(lo.value...lo.value)
                        i += 1
                    }
                }
                guard i < s.count, !ranges.isEmpty else { return nil }
                i += 1
                atom = Atom(ranges: ranges, negated: negated, min: 1, many: false)
            case "\\":
                guard i + 1 < s.count else { return nil }
                let c = s[i + 1]
                atom = c == "d" ? Atom(ranges: [48...57], negated: false, min: 1, many: false) : Atom(ranges: [c.value...c.value], negated: false, min: 1, many: false)
                i += 2
            case "+", "*", "?", "(", ")", "|", "{", "}", "^", "$":
                return nil  // unsupported or misplaced
            default:
                atom = Atom(ranges: [s[i].value...s[i].value], negated: false, min: 1, many: false)
                i += 1
            }
            if i < s.count {
                switch s[i] {
                case "+": atom.many = true; i += 1
                case "*": atom.many = true; atom.min = 0; i += 1
                case "?": atom.min = 0; i += 1
                default: break
                }
            }
            atoms.append(atom)
        }
        return atoms.count <= 64 ? atoms : nil
    }

    /// Whole-string match by a set of positions (Thompson-style).
    static func matches(_ atoms: [Atom], _ text: [Unicode.Scalar]) -> Bool {
        guard text.count <= 256 else { return false }
        func closure(_ set: Set<Int>) -> Set<Int> {
            var out = set
            var stack = Array(set)
            while let p = stack.popLast() {
                guard p < atoms.count, atoms[p].min == 0 else { continue }
                if out.insert(p + 1).inserted { stack.append(p + 1) }
            }
            return out
        }
        var states = closure([0])
        for c in text {
            var next = Set<Int>()
            for p in states where p < atoms.count && atoms[p].accepts(c) {
                next.insert(p + 1)
                if atoms[p].many { next.insert(p) }
            }
            states = closure(next)
            if states.isEmpty { return false }
        }
        return states.contains(atoms.count)
    }
}
