import ArgumentParser
import CofferAPI
import CofferAudit
import CofferClient
import CofferCore
import Foundation

struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Verify, read, export and prune the tamper-evident audit trail (needs the audit capability).",
        subcommands: [Verify.self, Tail.self, Search.self, Export.self, Prune.self]
    )
}

func eventLine(_ e: AuditEvent) -> String {
    let who = e.peerUser.map { "\($0)(\(e.peerUID))" } ?? "uid:\(e.peerUID)"
    var s = "\(e.chain.isEmpty ? "" : e.chain + ":")\(e.seq)  \(Timestamp.string(millis: e.time))  \(who)  \(e.method) \(e.action)"
    if let p = e.path { s += " \(p)" }
    s += "  \(e.decision.rawValue) \(e.outcome.rawValue) \(e.status)"
    if let c = e.errorCode { s += " \(c)" }
    if let t = e.tokenAccessor { s += "  token \(t)" }
    if let r = e.rule { s += "  [\(r)]" }
    return s
}

func printEvents(_ events: [AuditEvent], _ format: OutputFormat) throws {
    if events.isEmpty { return }
    if format == .json {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var out: [UInt8] = []
        for ev in events { out += Array(try e.encode(ev)) + [0x0A] }  // JSON lines
        return try writeStdout(out)
    }
    try printLine(events.map(eventLine).joined(separator: "\n"))
}

extension AuditCommand {
    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "verify",
            abstract: "Walk the hash chain and checkpoint signatures: OK with count and head, or the first bad sequence number.",
            discussion: """
                Through the daemon (it signs its current head first), or offline: --db FILE --pubkey FILE, checked against \
                the signed head anchor (audit.anchor beside the database, or --anchor FILE) so that a trail truncated or \
                emptied together with its checkpoints is reported. Exit 0 when OK, 9 when the trail is broken, 10 (offline \
                only) when all is well up to the last checkpoint and newer events are not yet signed (a live daemon's \
                newest events, signed within audit.checkpoint_seconds; not a sign of tampering, but not yet proof either).
                """)
        @OptionGroup var global: GlobalOptions
        @Option(help: "Verify this database file offline (read-only).") var db: String?
        @Option(help: "The audit public key file (audit.pub beside the database).") var pubkey: String?
        @Option(help: "The head anchor file (default: audit.anchor beside the database).") var anchor: String?

        /// Whether a cofferd holds the state directory's lock (it then signs its newest
        /// events within checkpoint_seconds).
        static func daemonRunning(stateDir: String) -> Bool {
            let fd = open(stateDir + "/.cofferd.lock", O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else { return false }
            defer { close(fd) }
            if flock(fd, LOCK_SH | LOCK_NB) == 0 { flock(fd, LOCK_UN); return false }
            return errno == EWOULDBLOCK
        }

        func run() throws {
            try runReporting {
                let r: AuditVerifyResponse
                if let db {
                    guard let pubkey else { throw CofferError(.invalidParameter, "offline verification needs --pubkey FILE", hint: "audit.pub beside the database") }
                    guard let text = try? String(contentsOfFile: pubkey, encoding: .utf8), let key = AuditKeyFile.decode(text) else {
                        throw CofferError(.invalidParameter, "\(pubkey) is not a Coffer audit public key")
                    }
                    let chain: (events: [AuditEvent], checkpoints: [AuditCheckpoint])
                    do { chain = try AuditDatabase.readChain(path: db) } catch {
                        throw CofferError(.invalidParameter, "cannot read the audit trail in \(db): \(error)")
                    }
                    let anchorPath = anchor ?? URL(fileURLWithPath: db).deletingLastPathComponent().appendingPathComponent(AuditAnchor.fileName).path
                    guard let anchorText = try? String(contentsOfFile: anchorPath, encoding: .utf8) else {
                        throw CofferError(.invalidParameter, "cannot read the head anchor \(anchorPath): without it a truncated trail cannot be told from a whole one",
                                          hint: "pass --anchor FILE (a copy of audit.anchor from the state directory)")
                    }
                    guard let headAnchor = AuditAnchor(text: anchorText) else {
                        throw CofferError(.invalidParameter, "\(anchorPath) is not a Coffer audit head anchor")
                    }
                    switch AuditVerifier.verify(events: chain.events, checkpoints: chain.checkpoints, publicKey: key, anchor: headAnchor,
                                                allowUnsignedTail: true) {
                    case .ok(let count, let head, let hash, let cps):
                        r = AuditVerifyResponse(ok: true, count: count, headSeq: head, headHash: Hex.encode(hash), checkpoints: cps, badSeq: nil, problem: nil,
                                                latestCheckpoints: chain.checkpoints.suffix(10).map(\.seq))
                    case .bad(let seq, let problem):
                        r = AuditVerifyResponse(ok: false, count: nil, headSeq: nil, headHash: nil, checkpoints: nil, badSeq: seq, problem: problem)
                    case .unsignedTail(_, let signed, let head, _) where !Self.daemonRunning(stateDir: URL(fileURLWithPath: db).deletingLastPathComponent().path):
                        // no daemon will sign them: a stopped daemon signed its head, so they were added since (or it crashed)
                        r = AuditVerifyResponse(ok: false, count: nil, headSeq: nil, headHash: nil, checkpoints: nil, badSeq: signed + 1,
                                                problem: "events \(signed + 1)...\(head) after the last checkpoint are not signed and no cofferd runs on this database (added behind its back, or it crashed: a start refuses a tail it did not write)")
                    case .unsignedTail(let count, let signed, let head, let cps):
                        // a running daemon has not signed its newest events yet: not tampering, not yet proof
                        if global.format == .json {
                            try printJSON(AuditVerifyResponse(ok: false, count: count, headSeq: head, headHash: nil, checkpoints: cps, badSeq: signed + 1,
                                                              problem: "unsigned tail: events \(signed + 1)...\(head) are not yet covered by a checkpoint"))
                        } else {
                            try printLine("""
                                UNSIGNED TAIL: events 1...\(signed) verify (\(cps) signed checkpoints); events \(signed + 1)...\(head) are chained \
                                but not yet signed (a running cofferd signs them within audit.checkpoint_seconds): verify again, or through the daemon
                                """)
                        }
                        throw ExitCode(10)
                    }
                } else {
                    r = try global.client().auditVerify()
                }
                if global.format == .json { try printJSON(r) } else if r.ok {
                    var line = "OK: \(r.count ?? 0) events, head seq \(r.headSeq ?? 0) \(r.headHash ?? ""), \(r.checkpoints ?? 0) signed checkpoints"
                    if let latest = r.latestCheckpoints, !latest.isEmpty {
                        line += "\ncheckpoints at seq \(latest.map(String.init).joined(separator: ", "))\((r.checkpoints ?? 0) > latest.count ? " (the newest)" : "")"
                        line += "; `coffer audit prune --through SEQ` takes one"
                    }
                    try printLine(line)
                } else {
                    let who = r.instance.map { "instance '\($0)' " } ?? ""
                    try printLine("BAD \(who)at seq \(r.badSeq ?? 0): \(r.problem ?? "")")
                }
                if !r.ok { throw ExitCode(9) }
            }
        }
    }

    struct Tail: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "tail", abstract: "Show the latest events; -f follows new ones.")
        @OptionGroup var global: GlobalOptions
        @Option(name: .short, help: "How many of the latest events to show first.") var n: Int = 20
        @Flag(name: .short, help: "Follow: keep printing new events (Ctrl-C stops).") var follow = false

        func run() throws {
            try runReporting {
                let client = try global.client()
                // find the head by paging (events are numbered 1...)
                var after: Int64 = 0
                var last: [AuditEvent] = []
                while true {
                    let page = try client.auditEvents(query: [("after", String(after)), ("limit", "10000")])
                    if page.events.isEmpty { break }
                    last = Array((last + page.events).suffix(max(n, 0)))
                    after = page.events.last!.cursor
                    if page.nextAfter == nil { break }
                }
                try printEvents(last, global.format)
                guard follow else { return }
                while true {
                    usleep(500_000)
                    let page = try client.auditEvents(query: [("after", String(after)), ("limit", "1000")])
                    // our own polling is audited too: leave those reads out of the stream
                    let shown = page.events.filter { !($0.action == "audit_read" && $0.peerPID == getpid()) }
                    try printEvents(shown, global.format)
                    if let l = page.events.last { after = l.cursor }
                }
            }
        }
    }

    struct Search: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "search", abstract: "Find events by time, user, path, action and decision.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "From this time: RFC 3339, unix seconds, or a duration ago (30m, 1h, 7d).") var since: String?
        @Option(help: "Before this time (same forms).") var until: String?

        /// "1h" (a duration ago) as unix seconds; other forms go to the daemon as given.
        static func absolute(_ t: String) throws -> String {
            guard let first = t.first, first.isNumber, let last = t.last, !last.isNumber else { return t }
            guard let secs = DurationText.seconds(t) else {
                throw CofferError(.invalidParameter, "cannot read the time '\(t.prefix(40))'", hint: "RFC 3339, unix seconds, or a duration ago like 1h")
            }
            return String(Int(Date().timeIntervalSince1970) - secs)
        }
        @Option(help: "User name of the caller.") var user: String?
        @Option(help: "Path, or a folder and everything under it.") var path: String?
        @Option(help: "Action: read, write, delete, list, token_create, …") var action: String?
        @Option(help: "allow, deny or none.") var decision: String?
        @Option(help: "At most this many events.") var limit: Int = 1000

        func run() throws {
            try runReporting {
                var q: [(String, String)] = [("limit", String(min(max(limit, 1), 10000)))]
                if let since { q.append(("since", try Self.absolute(since))) }
                if let until { q.append(("until", try Self.absolute(until))) }
                if let user { q.append(("user", user)) }
                if let path { q.append(("path", path)) }
                if let action { q.append(("action", action)) }
                if let decision { q.append(("decision", decision)) }
                try printEvents(try global.client().auditEvents(query: q).events, global.format)
            }
        }
    }

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "export", abstract: "Write every event and checkpoint as JSON lines, for archiving.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Write to this new file instead of stdout.") var output: String?
        func run() throws {
            try runReporting {
                let body = try global.client().auditExport()
                if let output {
                    // a new file, as the help says: an archive is never overwritten
                    return try writeAndClose(try createNewFile(output, mode: 0o600), body, path: output)
                }
                try writeStdout(body)
            }
        }
    }

    struct Prune: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "prune",
            abstract: "Delete events up to a signed checkpoint; the rest still verifies from it (needs audit and admin).",
            discussion: "Export first: coffer audit export --output archive.jsonl")
        @OptionGroup var global: GlobalOptions
        @Option(help: "The sequence number of a checkpoint.") var through: Int64
        func run() throws {
            try runReporting {
                let r = try global.client().auditPrune(through: through)
                if global.format == .json { return try printJSON(r) }
                try printLine("pruned \(r.removed) events through seq \(through)")
            }
        }
    }
}
