import ArgumentParser
import CofferAPI
import CofferClient
import CofferCore
import Foundation

struct TokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Mint, inspect and revoke scoped tokens for build jobs.",
        subcommands: [Create.self, List.self, Lookup.self, Revoke.self]
    )
}

func describe(_ t: TokenInfo) -> String {
    var lines = [
        "accessor:   \(t.accessor)\(t.name.map { " (\($0))" } ?? "")",
        "state:      \(t.state)",
        "roles:      \(t.roles.joined(separator: ", "))",
        "paths:      \(t.paths.isEmpty ? "(all the roles allow)" : t.paths.joined(separator: ", "))",
        "expires:    \(t.expiresAt) (in \(DurationText.format(t.ttlRemainingSeconds)))",
        "uses:       \(t.uses) made, " + (t.usesLeft.map { "\($0) left" } ?? "no limit"),
    ]
    if let b = t.boundUID { lines.append("bound uid:  \(b)") }
    if let p = t.parent { lines.append("parent:     \(p)") }
    lines.append("created by: uid \(t.createdBy.uid)\(t.createdBy.user.map { " (\($0))" } ?? "") at \(t.createdAt)")
    return lines.joined(separator: "\n")
}

extension TokenCommand {
    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "create",
            abstract: "Create a token (printed once, to stdout or a 0600 --output file).",
            discussion: "A token can only narrow: its roles must be yours, its TTL within the roles' max_ttl.")

        @OptionGroup var global: GlobalOptions
        @Option(name: .customLong("role"), help: "A role for the token (repeatable).") var roles: [String] = []
        @Option(help: "Lifetime, e.g. 30m, 1h (default: 1h or the roles' max_ttl).") var ttl: String?
        @Option(help: "Number of requests the token may make.") var uses: Int?
        @Option(help: "Only this peer uid may use the token.") var bindUid: UInt32?
        @Option(parsing: .upToNextOption, help: "Path patterns the token is limited to (several after one --paths, or comma-separated as --versions 1,2).") var paths: [String] = []
        @Option(help: "A label shown in token list.") var name: String?
        @Option(help: "Write the token to this new file (mode 0600) instead of stdout.") var output: String?

        func validate() throws {
            guard !roles.isEmpty else { throw ValidationError("give at least one --role") }
        }

        func run() throws {
            try runReporting {
                let ttl = self.ttl.map(DurationText.fromCommandLine)
                if let ttl, DurationText.seconds(ttl) == nil {
                    throw CofferError(.invalidParameter, "--ttl must be a duration like 30m, 1h or 90 (seconds)")
                }
                // Claim the output file first (new, 0600), so no token is minted that cannot be written.
                var fd: Int32 = -1
                if let output {
                    fd = open(output, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
                    guard fd >= 0 else {
                        throw CofferError(.invalidParameter, "cannot create \(output): \(String(cString: strerror(errno)))",
                                          hint: "the file must not exist yet")
                    }
                }
                defer { if fd >= 0 { close(fd) } }
                let r: CreateTokenResponse
                do {
                    r = try global.client().createToken(CreateTokenRequest(
                        roles: roles, ttl: ttl, uses: uses, bindUID: bindUid, paths: paths.isEmpty ? nil : paths.flatMap { $0.split(separator: ",").map(String.init) }, name: name))
                } catch {
                    if let output { unlink(output) }
                    throw error
                }
                if let output {
                    let bytes = Array((r.token + "\n").utf8)
                    let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                    guard n == bytes.count, fsync(fd) == 0 else {
                        unlink(output)
                        throw CofferError(.invalidParameter, "cannot write \(output)", hint: "revoke the token: coffer token revoke \(r.info.accessor)")
                    }
                    // the same shape as without --output, the file named where the token was
                    if global.format == .json { return try printJSON(WrittenToken(info: r.info, output: output)) }
                    return try printLine("token written to \(output)\n" + describe(r.info))
                }
                if global.format == .json { return try printJSON(r) }
                try printLine(r.token)
                writeStderr(describe(r.info) + "\n")
            }
        }
    }

    struct WrittenToken: Encodable {
        let info: TokenInfo
        let output: String
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List tokens (needs admin).")
        @OptionGroup var global: GlobalOptions
        func run() throws {
            try runReporting {
                let r = try global.client().listTokens()
                if global.format == .json { return try printJSON(r) }
                var lines = ["ACCESSOR                      STATE      ROLES                EXPIRES                   NAME"]
                for t in r.tokens {
                    lines.append(pad(t.accessor, 30) + pad(t.state, 11) + pad(t.roles.joined(separator: ","), 21) + pad(t.expiresAt, 26) + (t.name ?? ""))
                }
                try printLine(lines.joined(separator: "\n"))
            }
        }
    }

    struct Lookup: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "lookup",
            abstract: "Show what you may do with your token (or identity); with an accessor, that token.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "A token accessor (default: yourself).") var accessor: String?
        func run() throws {
            try runReporting {
                let client = try global.client()
                if let accessor, accessor != "self" {
                    let t = try client.lookupToken(accessor)
                    if global.format == .json { return try printJSON(t) }
                    return try printLine(describe(t))
                }
                let s = try client.lookupSelf()
                if global.format == .json { return try printJSON(s) }
                var lines = ["you:        uid \(s.uid)\(s.user.map { " (\($0))" } ?? "")\(s.groups.isEmpty ? "" : ", groups \(s.groups.joined(separator: ","))")"]
                if let t = s.token { lines.append(describe(t)) } else { lines.append("token:      none (access from your uid and groups)") }
                if s.roles.isEmpty { lines.append("roles:      none: every request is denied") }
                for r in s.roles {
                    lines.append("role \(r.name)\(r.maxTTL.map { " (max ttl \($0))" } ?? ""):")
                    lines += r.rules.map { "  \($0)" }
                }
                try printLine(lines.joined(separator: "\n"))
            }
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "revoke", abstract: "Revoke a token and every token created from it.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The token's accessor.") var accessor: String?
        @Flag(name: .customLong("self"), help: "Revoke the token you are using.") var revokeSelf = false
        func validate() throws {
            guard (accessor == nil) == revokeSelf else { throw ValidationError("give an accessor or --self") }
        }
        func run() throws {
            try runReporting {
                let r = try global.client().revokeToken(accessor ?? "self")
                if global.format == .json { return try printJSON(r) }
                try printLine("revoked \(r.revoked.count) token(s): \(r.revoked.joined(separator: ", "))")
            }
        }
    }
}

struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "Check, reload and explain the access policy.",
        subcommands: [Check.self, Reload.self, Explain.self]
    )

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "check", abstract: "Validate a policy file offline (no daemon needed).")
        @Argument(help: "The policy file.") var file: String
        @Option(name: .long, help: "Output format: text or json.") var format: OutputFormat = .text

        struct Failure: Encodable {
            let file: String
            let ok: Bool
            let error: String
        }

        struct Summary: Encodable {
            let file: String
            let ok: Bool
            let roles: [String]
            let rules: Int
            let bindings: Int
            let elevationRules: Int
            enum CodingKeys: String, CodingKey { case file, ok, roles, rules, bindings, elevationRules = "elevation_rules" }
        }

        func run() throws {
            try runReporting {
                guard let data = FileManager.default.contents(atPath: file), let text = String(data: data, encoding: .utf8) else {
                    throw CofferError(.invalidParameter, "cannot read \(file)")
                }
                let p: Policy
                do throws(CofferError) { p = try Policy.parse(text, file: file) } catch {
                    // JSON readers get the verdict on stdout too (the error stays on stderr)
                    if format == .json { try printJSON(Failure(file: file, ok: false, error: error.message)) }
                    throw error
                }
                let rules = p.roles.values.reduce(0) { $0 + $1.rules.count }
                if format == .json {
                    return try printJSON(Summary(file: file, ok: true, roles: p.roles.keys.sorted(), rules: rules, bindings: p.bindings.count,
                                                 elevationRules: p.elevations.count))
                }
                try printLine("\(file): OK (\(p.roles.count) roles, \(rules) rules, \(p.bindings.count) bindings, \(p.elevations.count) elevation rules)")
            }
        }
    }

    struct Reload: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "reload", abstract: "Make cofferd re-read its policy file (needs admin).")
        @OptionGroup var global: GlobalOptions
        func run() throws {
            try runReporting {
                let r = try global.client().reloadPolicy()
                if global.format == .json { return try printJSON(r) }
                try printLine("policy reloaded from \(r.source): roles \(r.roles.joined(separator: ", ")); \(r.bindings) bindings")
            }
        }
    }

    struct Explain: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "explain",
            abstract: "Show the decision and the deciding rule for a subject, touching no secret (needs admin).",
            discussion: "Example: coffer policy explain --as user:alice read ci/app/db")
        @OptionGroup var global: GlobalOptions
        @Option(name: .customLong("as"), help: "user:NAME, uid:N, group:NAME or container:ID (an injection for that container by a rootful runtime).") var subject: String
        @Argument(help: "Capability: read, list, write, delete, destroy, admin, audit.") var capability: String
        @Argument(help: "Secret path (or prefix for list).") var path: String = ""
        func run() throws {
            try runReporting {
                let r = try global.client().explain(ExplainRequest(subject: subject, capability: capability, path: path))
                if global.format == .json { return try printJSON(r) }
                try printLine("""
                    \(r.allowed ? "ALLOW" : "DENY") \(capability) \(path.isEmpty ? "(root)" : path) as \(r.subject)\(r.uid.map { " (uid \($0))" } ?? "")
                    roles: \(r.roles.isEmpty ? "none" : r.roles.joined(separator: ", "))
                    decided by: \(r.rule)
                    """ + (r.elevation.map { "\n" + $0.map { "elevation: " + $0 }.joined(separator: "\n") } ?? ""))
            }
        }
    }
}
