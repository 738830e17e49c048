import ArgumentParser
import CofferAPI
import CofferClient
import CofferCore
import Foundation

/// Elevate commands carry the sign-in session (`coffer login`) unless --token-file
/// (or COFFER_TOKEN_FILE / COFFER_TOKEN) names another token: reviews and requests
/// may need a recent sign-in.
extension GlobalOptions {
    func sessionClient() throws -> CofferClient {
        let env = ProcessInfo.processInfo.environment
        if tokenFile != nil || env["COFFER_TOKEN_FILE"].map({ !$0.isEmpty }) == true || env["COFFER_TOKEN"].map({ !$0.isEmpty }) == true {
            return try client()
        }
        let session = defaultSessionFile()
        guard FileManager.default.fileExists(atPath: session) else { return try client() }
        var copy = self
        copy.tokenFile = session
        return try copy.client()
    }
}

func elevationLine(_ e: ElevationInfo) -> String {
    var s = "\(e.id)  \(e.state)  \(e.role)  by \(e.requester.user ?? "uid:\(e.requester.uid)")  \(DurationText.format(e.durationSeconds))"
    s += "  approvals \(e.approvals)/\(e.approvalsNeeded)"
    if let end = e.endsAt, e.state == "active" { s += "  until \(end)" }
    if let r = e.reason { s += "  \"\(r)\"" }
    if let t = e.ticket { s += "  [\(t)]" }
    return s
}

func printElevation(_ e: ElevationInfo, _ format: OutputFormat) throws {
    if format == .json { return try printJSON(e) }
    var lines = [elevationLine(e)]
    lines.append("  requested \(e.createdAt); answer by \(e.pendingUntil)")
    for g in e.grants { lines.append("  grants: \(g.effect) \(g.capabilities.joined(separator: ",")) on \(g.path)") }
    for r in e.reviews {
        lines.append("  \(r.verdict) by \(r.reviewer.user ?? "uid:\(r.reviewer.uid)") at \(r.at)" + (r.comment.map { ": \($0)" } ?? ""))
    }
    if let c = e.closedAt { lines.append("  closed \(c) by \(e.closedBy ?? "-")" + (e.closeReason.map { ": \($0)" } ?? "")) }
    try printLine(lines.joined(separator: "\n"))
}

struct ElevateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "elevate",
        abstract: "Time-boxed elevation: ask for a role for a while, review others' requests, activate, end.",
        discussion: "Uses the session `coffer login` keeps (a recent sign-in may be required). See the README, \"Time-boxed elevation\".",
        subcommands: [Request.self, List.self, Show.self, Approve.self, Deny.self, Cancel.self, Activate.self, End.self, Revoke.self,
                      History.self, Report.self, Ack.self, JWT.self]
    )

    struct Request: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "request", abstract: "Ask for a role for a while; prints the request id.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The role.") var role: String
        @Option(name: .customLong("for"), help: "How long, e.g. 30m, 1h.") var duration: String
        @Option(help: "Why (required unless the rule says optional).") var reason: String?
        @Option(help: "A ticket reference (when the rule asks for one).") var ticket: String?
        @Flag(help: "Wait until the request is decided; activate it when approved.") var wait = false
        @Flag(help: "Break-glass: approve it yourself (the rule must allow it; a reason is needed; reviewed afterwards).") var breakGlass = false
        @Option(help: "With --wait: write the activated token to this new file (0600) instead of stdout.") var output: String?

        func run() throws {
            try runReporting {
                let client = try global.sessionClient()
                var e = try client.elevationRequest(ElevationRequestBody(role: role, duration: DurationText.fromCommandLine(duration), reason: reason, ticket: ticket,
                                                                         breakGlass: breakGlass ? true : nil))
                if !wait {
                    if global.format == .json { return try printJSON(e) }
                    return try printLine("\(e.id) \(e.state): needs \(e.approvalsNeeded) approval\(e.approvalsNeeded == 1 ? "" : "s")")
                }
                while e.state == "pending" {
                    usleep(500_000)
                    e = try client.elevation(e.id)
                }
                guard e.state == "approved" else { throw CofferError(.permissionDenied, "the request was \(e.state)") }
                let fd = try Activate.claim(output)
                try Activate.finish(try client.activateElevation(e.id), output: output, fd: fd, format: global.format)
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "Open requests you made or may review (--all: also closed ones).")
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Only your own requests.") var mine = false
        @Flag(help: "Also closed requests (history).") var all = false
        @Flag(help: "Only pending ones.") var pending = false
        func run() throws {
            try runReporting {
                var list = try global.sessionClient().elevations(all: all, mine: mine).requests
                if pending { list = list.filter { $0.state == "pending" } }
                if global.format == .json { return try printJSON(ElevationListResponse(requests: list)) }
                if !list.isEmpty { try printLine(list.map(elevationLine).joined(separator: "\n")) }
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "One request: who asks, the role and what it grants, reviews.")
        @OptionGroup var global: GlobalOptions
        @Argument var id: String
        func run() throws { try runReporting { try printElevation(try global.sessionClient().elevation(id), global.format) } }
    }

    struct Approve: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "approve", abstract: "Approve a request you may review (not your own).")
        @OptionGroup var global: GlobalOptions
        @Argument var id: String
        @Option var comment: String?
        func run() throws {
            try runReporting { try printElevation(try global.sessionClient().elevation(id, "approve", body: ElevationActionBody(comment: comment)), global.format) }
        }
    }

    struct Deny: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "deny", abstract: "Deny a request you may review.")
        @OptionGroup var global: GlobalOptions
        @Argument var id: String
        @Option var comment: String?
        func run() throws {
            try runReporting { try printElevation(try global.sessionClient().elevation(id, "deny", body: ElevationActionBody(comment: comment)), global.format) }
        }
    }

    struct Cancel: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "cancel", abstract: "Withdraw your own pending or approved request.")
        @OptionGroup var global: GlobalOptions
        @Argument var id: String
        func run() throws { try runReporting { try printElevation(try global.sessionClient().elevation(id, "cancel", body: nil), global.format) } }
    }

    struct Activate: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "activate", abstract: "Start your approved elevation: a token carrying the role until the window ends (shown once).")
        @OptionGroup var global: GlobalOptions
        @Argument var id: String
        @Option(help: "Write the token to this new file (0600) instead of stdout.") var output: String?
        func run() throws {
            try runReporting {
                let fd = try Self.claim(output)  // before the token exists: a token is never minted that cannot be kept
                try Self.finish(try global.sessionClient().activateElevation(id), output: output, fd: fd, format: global.format)
            }
        }

        /// Creates the output file (new, 0600, no symlink) or says why not.
        static func claim(_ output: String?) throws -> Int32 {
            guard let output else { return -1 }
            return try createNewFile(output, mode: 0o600)
        }

        static func finish(_ r: ElevationActivateResponse, output: String?, fd: Int32, format: OutputFormat) throws {
            if let output {
                try writeAndClose(fd, Array((r.token + "\n").utf8), path: output)
                return try printLine("\(r.request.id) active until \(r.request.endsAt ?? "-"); token in \(output)")
            }
            if format == .json { return try printJSON(r) }
            try printLine(r.token)
        }
    }

    struct JWT: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "jwt", abstract: "A signed JWT (EdDSA) for your active elevation, for a service that trusts Coffer's JWKS.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The elevation request id (el_…).") var id: String
        @Option(help: "The service it is for (the rule's jwt.audiences list the allowed ones).") var audience: String
        @Option(help: "How long it is valid, e.g. 5m (default: the rule's max_ttl, never past the window's end).") var ttl: String?
        @Option(help: "Write it to this new file (0600) instead of stdout.") var output: String?
        func run() throws {
            try runReporting {
                let fd = try Activate.claim(output)
                let r: JWTResponse
                do { r = try global.sessionClient().jwtSign(id, audience: audience, ttl: ttl.map(DurationText.fromCommandLine)) } catch {
                    if let output, fd >= 0 { close(fd); unlink(output) }
                    throw error
                }
                if let output {
                    try writeAndClose(fd, Array((r.token + "\n").utf8), path: output)
                    return try printLine("JWT \(r.jti) for \(audience) until \(r.expiresAt): \(output)")
                }
                if global.format == .json { return try printJSON(r) }
                try printLine(r.token)
            }
        }
    }

    struct End: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "end", abstract: "End your active elevation now: its token stops at once.")
        @OptionGroup var global: GlobalOptions
        @Argument var id: String
        func run() throws { try runReporting { try printElevation(try global.sessionClient().elevation(id, "end", body: nil), global.format) } }
    }

    struct History: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "history", abstract: "Every request you may see, kept after it ends (newest first).")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Only requests made since (unix seconds or RFC 3339 UTC).") var since: String?
        @Option(help: "Only this requester (user name).") var user: String?
        @Option(help: "Only this role.") var role: String?
        func run() throws {
            try runReporting {
                let list = try global.sessionClient().elevationHistory(since: since, user: user, role: role)
                if global.format == .json { return try printJSON(list) }
                if !list.requests.isEmpty { try printLine(list.requests.map(elevationLine).joined(separator: "\n")) }
            }
        }
    }

    struct Report: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "report",
            abstract: "Access review: who held which role, how often, how long, approved by whom; unreviewed break-glass (needs audit).")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Only requests made since (unix seconds or RFC 3339 UTC).") var since: String?
        func run() throws {
            try runReporting {
                let r = try global.sessionClient().elevationReport(since: since)
                if global.format == .json { return try printJSON(r) }
                var lines = r.held.map {
                    "\($0.role)  \($0.user)  \($0.activations)×  \(DurationText.format(max(1, $0.heldSeconds)))  approved by \($0.approvers.joined(separator: ", "))"
                }
                for e in r.unreviewedBreakGlass { lines.append("UNREVIEWED break-glass: " + elevationLine(e) + "  (coffer elevate ack \(e.id))") }
                if !lines.isEmpty { try printLine(lines.joined(separator: "\n")) }
            }
        }
    }

    struct Ack: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ack", abstract: "Mark a break-glass elevation as reviewed (an approver of its role, or an admin; not its requester).")
        @OptionGroup var global: GlobalOptions
        @Argument var id: String
        func run() throws { try runReporting { try printElevation(try global.sessionClient().elevation(id, "ack", body: nil), global.format) } }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "revoke", abstract: "Revoke anyone's open request or elevation (needs admin).")
        @OptionGroup var global: GlobalOptions
        @Argument var id: String
        @Option var reason: String
        func run() throws {
            try runReporting { try printElevation(try global.sessionClient().elevation(id, "revoke", body: ElevationActionBody(reason: reason)), global.format) }
        }
    }
}
