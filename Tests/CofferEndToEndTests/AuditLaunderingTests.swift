import CofferAudit
import Foundation
import Testing

/// Finding 5 of the security issue: someone who can write the database but does
/// not hold the daemon's keys rewrites, appends, truncates, prunes or empties the
/// audit trail. The daemon must never sign such a trail, and verify (online and
/// offline) must never say OK for it.
@Suite(.serialized) struct AuditLaunderingTests {
    static let columns = "seq, time, request_id, peer_pid, peer_uid, peer_user, token_accessor, method, action, path, decision, rule, outcome, status, error_code, format, hex(details) AS d, hex(prev_hash) AS p, hex(hash) AS h"

    /// The attacker's tool: rows as events, edited, the public chain recomputed from
    /// `from` onwards, written back (MACs cannot be recomputed without the daemon's key).
    static func rewriteChain(_ db: String, from: Int64, edit: (inout AuditEvent) -> Void) throws {
        let rows = try sqliteJSON(db, "SELECT \(columns) FROM audit_event WHERE seq >= \(from - 1) ORDER BY seq")
        var events = rows.map(event)
        guard events.count >= 2 else { throw TestError.failed("not enough events") }
        var prev = events[0].hash
        var sql = "BEGIN;"
        for i in 1..<events.count {
            edit(&events[i])
            events[i].prevHash = prev
            events[i].hash = events[i].computedHash()
            prev = events[i].hash
            let e = events[i]
            sql += "UPDATE audit_event SET peer_uid = \(e.peerUID), decision = '\(e.decision.rawValue)', prev_hash = X'\(hex(e.prevHash))', hash = X'\(hex(e.hash))' WHERE seq = \(e.seq);"
        }
        _ = try sqlite(db, sql + "COMMIT;")
    }

    /// Appends one event chained to the head, as the daemon would but without its MAC.
    static func appendForged(_ db: String) throws {
        let head = try sqliteJSON(db, "SELECT \(columns) FROM audit_event ORDER BY seq DESC LIMIT 1").map(event)[0]
        var e = head
        e.seq = head.seq + 1
        e.action = "read"
        e.decision = .allow
        e.peerUID = 4242
        e.prevHash = head.hash
        e.hash = e.computedHash()
        _ = try sqlite(db, """
            INSERT INTO audit_event (seq, time, request_id, peer_pid, peer_uid, method, action, decision, outcome, status, format, prev_hash, hash)
            VALUES (\(e.seq), \(e.time), '\(e.requestID)', \(e.peerPID), \(e.peerUID), '\(e.method)', '\(e.action)', '\(e.decision.rawValue)',
                    '\(e.outcome.rawValue)', \(e.status), \(e.format), X'\(hex(e.prevHash))', X'\(hex(e.hash))');
            """)
    }

    static func sqliteJSON(_ db: String, _ sql: String) throws -> [[String: Any]] {
        let r = try run("/usr/bin/sqlite3", ["-json", "-cmd", ".timeout 5000", db, sql])
        guard r.status == 0 else { throw TestError.failed("sqlite3: \(r.stderr)") }
        return (try? JSONSerialization.jsonObject(with: Data(r.stdout))) as? [[String: Any]] ?? []
    }

    static func event(_ r: [String: Any]) -> AuditEvent {
        func s(_ k: String) -> String? { r[k] as? String }
        func i(_ k: String) -> Int64 { (r[k] as? NSNumber)?.int64Value ?? 0 }
        return AuditEvent(format: Int(i("format")), seq: i("seq"), time: i("time"), requestID: s("request_id") ?? "", peerPID: Int32(i("peer_pid")),
                          peerUID: UInt32(i("peer_uid")), peerUser: s("peer_user"), tokenAccessor: s("token_accessor"),
                          method: s("method") ?? "", action: s("action") ?? "", path: s("path"), decision: AuditDecision(rawValue: s("decision") ?? ""),
                          rule: s("rule"), outcome: AuditOutcome(rawValue: s("outcome") ?? "") ?? .error, status: Int(i("status")),
                          errorCode: s("error_code"), details: AuditDetails(canonical: unhex(s("d") ?? "")) ?? AuditDetails(),
                          prevHash: unhex(s("p") ?? ""), hash: unhex(s("h") ?? ""))
    }

    static func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02X", $0) }.joined() }
    static func unhex(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        var it = s.makeIterator()
        while let a = it.next(), let b = it.next() { out.append(UInt8(String([a, b]), radix: 16) ?? 0) }
        return out
    }

    static func offlineVerify(_ d: Daemon, db: String? = nil) throws -> RunResult {
        try run(Bins.coffer, ["audit", "verify", "--db", db ?? d.dbPath, "--pubkey", d.dir + "/state/audit.pub",
                              "--anchor", d.dir + "/state/audit.anchor"])
    }

    /// A daemon with a trail of denials and writes, stopped cleanly (head signed).
    static func trail(_ audit: String = "checkpoint_events = 5\ncheckpoint_seconds = 1") throws -> Daemon {
        let d = try Daemon(sqlite: true, config: "[audit]\n\(audit)\n")
        try d.start()
        for i in 0..<6 { _ = try d.coffer(["secret", "put", "l/s\(i)"], stdin: Array("v\(i)".utf8)) }
        for _ in 0..<4 { _ = try d.curl("GET", "/v1/secrets/data/l/s1", as: TestUser.nonAdmin) }  // denials
        for i in 0..<4 { _ = try d.coffer(["secret", "get", "l/s\(i)"]) }
        return d
    }

    /// Rewrite from a denial on, recompute the chain, delete the checkpoints from
    /// there: the running daemon refuses to sign it (timer and online verify), verify
    /// names it, and a restart refuses to start on it.
    @Test func aRecomputedChainIsNeverSigned() throws {
        let d = try Self.trail()
        let denial = Int64(try sqlite(d.dbPath, "SELECT min(seq) FROM audit_event WHERE decision = 'deny';")) ?? 0
        #expect(denial > 1)
        // give the daemon time to sign everything so far
        Thread.sleep(forTimeInterval: 1.5)
        try Self.rewriteChain(d.dbPath, from: denial) { e in
            e.decision = .allow
            e.peerUID = 0
        }
        _ = try sqlite(d.dbPath, "DELETE FROM audit_checkpoint WHERE seq >= \(denial);")
        let forgedHead = try sqlite(d.dbPath, "SELECT hex(hash) FROM audit_event ORDER BY seq DESC LIMIT 1;")
        // the timer runs, and an online verify asks the daemon to sign its head
        Thread.sleep(forTimeInterval: 2.5)
        // the daemon noticed (its head is not where it left it): fail closed, say why
        let online = try d.coffer(["audit", "verify"])
        #expect(online.status == 8 && online.stderr.contains("audit trail"), "online verify: \(online.out) \(online.stderr)")
        #expect(try sqlite(d.dbPath, "SELECT count(*) FROM audit_checkpoint WHERE hex(hash) = '\(forgedHead)';") == "0",
                "the daemon signed the forged head")
        let health = json(try d.curl("GET", "/v1/sys/health").1)
        #expect(health["status"] as? String == "degraded", "\(health)")
        #expect((health["audit"] as? String)?.contains("changed behind cofferd") == true, "\(health)")
        #expect(try d.coffer(["secret", "get", "l/s1"]).status == 8, "served while its trail cannot be trusted")
        d.stop()
        #expect(try sqlite(d.dbPath, "SELECT count(*) FROM audit_checkpoint WHERE hex(hash) = '\(forgedHead)';") == "0",
                "the daemon signed the forged head at shutdown")
        let offline = try Self.offlineVerify(d)
        #expect(offline.status == 9 && offline.out.hasPrefix("BAD"), "offline: \(offline.out)")
        // a restart refuses the trail instead of signing it
        let p = try d.launch()
        #expect(try d.waitForExit() != 0)
        #expect(!p.isRunning)
        #expect(d.log.contains("audit"), "\(d.log)")
        #expect(try sqlite(d.dbPath, "SELECT count(*) FROM audit_checkpoint WHERE hex(hash) = '\(forgedHead)';") == "0")
    }

    /// A forged event appended under a running daemon is named, never signed.
    @Test func aForgedAppendedEventIsNeverSigned() throws {
        let d = try Self.trail()
        Thread.sleep(forTimeInterval: 1.5)
        d.stop()
        try Self.appendForged(d.dbPath)
        let forged = try sqlite(d.dbPath, "SELECT max(seq) FROM audit_event;")
        // a start would sign the unsigned tail after a crash: it must refuse this one
        _ = try d.launch()
        #expect(try d.waitForExit() != 0, "\(d.log)")
        #expect(try sqlite(d.dbPath, "SELECT count(*) FROM audit_checkpoint WHERE seq >= \(forged);") == "0")
        let offline = try Self.offlineVerify(d)
        #expect(offline.status == 9 && offline.out.contains("BAD at seq \(forged)"), "\(offline.out)")
    }

    /// The same append, or a deletion of the unsigned tail, while the daemon runs:
    /// nothing more is appended or signed (the head is not where the daemon left it),
    /// requests fail closed, and a restart refuses the trail too.
    @Test func aForgedOrDeletedTailUnderARunningDaemon() throws {
        for attack in ["append", "delete"] {
            let d = try Self.trail("checkpoint_seconds = 3600\ncheckpoint_events = 1000")
            let before = try sqlite(d.dbPath, "SELECT max(seq) FROM audit_event;")
            let signed = try sqlite(d.dbPath, "SELECT count(*) FROM audit_checkpoint;")
            if attack == "append" {
                try Self.appendForged(d.dbPath)
            } else {
                // the denials were written after the last checkpoint (none yet): delete them
                _ = try sqlite(d.dbPath, "DELETE FROM audit_event WHERE decision = 'deny' OR seq > (SELECT min(seq) FROM audit_event WHERE decision = 'deny');")
            }
            let r = try d.coffer(["secret", "get", "l/s0"])
            #expect(r.status == 8, "\(attack): served after the trail changed: \(r.stderr)")
            for _ in 0..<3 { _ = try d.coffer(["secret", "get", "l/s1"]) }
            let health = json(try d.curl("GET", "/v1/sys/health").1)
            #expect((health["audit"] as? String)?.contains("changed behind cofferd") == true, "\(attack): \(health)")
            d.stop()
            #expect(try sqlite(d.dbPath, "SELECT count(*) FROM audit_checkpoint;") == signed, "\(attack): the changed trail was signed")
            if attack == "append" {
                #expect(try sqlite(d.dbPath, "SELECT max(seq) FROM audit_event;") == String((Int(before) ?? 0) + 1), "appended after the forgery")
            }
            _ = try d.launch()
            #expect(try d.waitForExit() != 0, "\(attack): a restart accepted the trail")
            #expect(d.log.contains("changed behind cofferd"), "\(d.log)")
        }
    }

    /// Truncation back to an earlier checkpoint, deletion up to a checkpoint without
    /// prune, and emptied tables: each BAD offline, and each refuses a start.
    @Test func truncationSilentPruningAndEmptyingAreDetected() throws {
        let d = try Self.trail()
        d.stop()
        let cps = try sqlite(d.dbPath, "SELECT group_concat(seq) FROM audit_checkpoint;").split(separator: ",").compactMap { Int($0) }
        #expect(cps.count >= 3, "\(cps)")
        let early = cps[1]
        let ok = try Self.offlineVerify(d)
        #expect(ok.status == 0, "before: \(ok.out)")
        let cases: [(String, String, String)] = [
            ("truncate to an earlier checkpoint", "DELETE FROM audit_event WHERE seq > \(early); DELETE FROM audit_checkpoint WHERE seq > \(early);", "truncated"),
            ("delete up to a checkpoint without prune", "DELETE FROM audit_event WHERE seq <= \(early); DELETE FROM audit_checkpoint WHERE seq < \(early);", "without prune"),
            ("empty both tables", "DELETE FROM audit_event; DELETE FROM audit_checkpoint;", "truncated"),
        ]
        let original = d.dir + "/original.db"
        try FileManager.default.copyItem(atPath: d.dbPath, toPath: original)
        for (name, sql, problem) in cases {
            try? FileManager.default.removeItem(atPath: d.dbPath)
            for suffix in ["-wal", "-shm"] { try? FileManager.default.removeItem(atPath: d.dbPath + suffix) }
            try FileManager.default.copyItem(atPath: original, toPath: d.dbPath)
            _ = try sqlite(d.dbPath, sql)
            let r = try Self.offlineVerify(d)
            #expect(r.status == 9 && r.out.hasPrefix("BAD"), "\(name): \(r.out)")
            #expect(r.out.contains(problem), "\(name): \(r.out)")
            _ = try d.launch()
            #expect(try d.waitForExit() != 0, "\(name): the daemon started on it")
        }
    }

    /// The legitimate prune still verifies, online and offline, and survives a restart.
    @Test func aRealPruneStillVerifies() throws {
        let d = try Self.trail()
        Thread.sleep(forTimeInterval: 1.5)
        let cp = Int(try sqlite(d.dbPath, "SELECT min(seq) FROM audit_checkpoint WHERE seq > 5;")) ?? 0
        #expect(cp > 0)
        #expect(try d.coffer(["audit", "prune", "--through", "\(cp)"]).status == 0)
        #expect(try d.coffer(["audit", "verify"]).status == 0)
        d.stop()
        let offline = try Self.offlineVerify(d)
        #expect(offline.status == 0, "\(offline.out)")
        try d.start()
        #expect(try d.coffer(["audit", "verify"]).status == 0)
        // a missing anchor is refused at start (truncation could not be told)
        d.stop()
        try FileManager.default.removeItem(atPath: d.dir + "/state/audit.anchor")
        #expect(try Self.offlineVerify(d).status != 0)
        _ = try d.launch()
        #expect(try d.waitForExit() != 0)
        #expect(d.log.contains("--reanchor-audit"), "\(d.log)")
    }
}
