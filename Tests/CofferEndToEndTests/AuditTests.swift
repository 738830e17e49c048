import CofferAPI
import CofferClient
import Foundation
import Testing

/// Runs SQL on a daemon's database behind its back: the SQLite file with sqlite3, or
/// ("postgres:NAME", a daemon on PostgreSQL) that database with psql, SQLite's hex()
/// spelled as PostgreSQL's and foreign keys unchecked (as sqlite3 leaves them).
func sqlite(_ db: String, _ sql: String) throws -> String {
    if db.hasPrefix("postgres:") {
        let portable = sql.replacingOccurrences(of: #"hex\(([a-z_]+)\)"#, with: "upper(encode($1, 'hex'))", options: .regularExpression)
        // as sqlite3 by default, foreign keys unchecked (the database's owner can do so too)
        return try PostgresServer.psql("SET session_replication_role = replica; " + portable, database: String(db.dropFirst("postgres:".count)))
    }
    let r = try run("/usr/bin/sqlite3", ["-cmd", ".timeout 5000", db, sql])
    guard r.status == 0 else { throw TestError.failed("sqlite3: \(r.stderr)") }
    return r.out.trimmingCharacters(in: .whitespacesAndNewlines)
}

@Suite(.serialized) struct AuditTests {
    /// Each kind of tampering is reported by `coffer audit verify` (offline) with the
    /// exact sequence number.
    @Test func tamperingIsDetectedWithTheExactSeq() throws {
        let d = try Daemon(sqlite: true, config: "[audit]\ncheckpoint_events = 5")
        try d.start()
        for i in 0..<8 { _ = try d.coffer(["secret", "put", "t/s\(i)"], stdin: Array("v\(i)".utf8)) }
        for i in 0..<8 { _ = try d.coffer(["secret", "get", "t/s\(i)"]) }
        _ = try d.coffer(["secret", "get", "t/missing"])
        _ = try d.curl("PUT", "/v1/secrets/data/t/x", body: "{bad json")
        d.stop()  // signs a final checkpoint
        let pub = d.dir + "/state/audit.pub"
        // seq 1 is the daemon's first open marking its records authenticated (none yet)
        #expect(try sqlite(d.dbPath, "SELECT action FROM audit_event WHERE seq = 1;") == "records_authenticated")
        let head = Int(try sqlite(d.dbPath, "SELECT max(seq) FROM audit_event;")) ?? 0
        #expect(head == 19)
        func verify(_ db: String) throws -> RunResult {
            try run(Bins.coffer, ["audit", "verify", "--db", db, "--pubkey", pub, "--anchor", d.dir + "/state/audit.anchor"])
        }
        var r = try verify(d.dbPath)
        #expect(r.status == 0 && r.out.hasPrefix("OK: 19 events, head seq 19"), "\(r.out) \(r.stderr)")
        let cols = "time, request_id, peer_pid, peer_uid, peer_user, token_accessor, method, action, path, decision, rule, outcome, status, error_code, prev_hash, hash"
        let cases: [(String, String, Int, String)] = [
            ("edit a path", "UPDATE audit_event SET path = 't/other' WHERE seq = 7;", 7, "hash mismatch"),
            ("edit a status", "UPDATE audit_event SET status = 200, outcome = 'ok' WHERE seq = 18;", 18, "hash mismatch"),
            ("edit a decision", "UPDATE audit_event SET decision = 'deny' WHERE seq = 1;", 1, "hash mismatch"),
            ("delete one", "DELETE FROM audit_event WHERE seq = 9;", 9, "gap"),
            ("swap two", """
                CREATE TEMP TABLE t AS SELECT * FROM audit_event WHERE seq IN (4, 5);
                UPDATE audit_event SET (\(cols)) = (SELECT \(cols) FROM t WHERE t.seq = 9 - audit_event.seq) WHERE seq IN (4, 5);
                """, 4, "chain broken"),
            ("insert a forged one", """
                UPDATE audit_event SET seq = seq + 1000 WHERE seq > 10;
                UPDATE audit_event SET seq = seq - 999 WHERE seq > 1000;
                INSERT INTO audit_event (seq, \(cols)) SELECT 11, \(cols.replacingOccurrences(of: "request_id", with: "'forged'")) FROM audit_event WHERE seq = 10;
                """, 11, "chain broken"),
            ("truncate the tail", "DELETE FROM audit_event WHERE seq > 15;", 16, "truncated"),
            ("replace a checkpoint signature",
             "UPDATE audit_checkpoint SET signature = (SELECT signature FROM audit_checkpoint WHERE seq = 6) WHERE seq = 11;", 11, "bad signature"),
            ("drop the last checkpoints", "DELETE FROM audit_checkpoint WHERE seq > 10;", 19, "the head anchor names the checkpoint at seq 19, which is missing"),
        ]
        for (name, sql, seq, problem) in cases {
            let copy = d.dir + "/copy.db"
            try? FileManager.default.removeItem(atPath: copy)
            try FileManager.default.copyItem(atPath: d.dbPath, toPath: copy)
            _ = try sqlite(copy, sql)
            r = try verify(copy)
            #expect(r.status == 9, "\(name): \(r.out) \(r.stderr)")
            #expect(r.out.hasPrefix("BAD at seq \(seq): "), "\(name): \(r.out)")
            #expect(r.out.contains(problem), "\(name): \(r.out)")
        }
        // online: the daemon reports the same after an edit made under it
        try d.start()
        _ = try sqlite(d.dbPath, "UPDATE audit_event SET peer_uid = 4242 WHERE seq = 12;")
        r = try d.coffer(["audit", "verify"])
        #expect(r.status == 9 && r.out.hasPrefix("BAD at seq 12: hash mismatch"), "\(r.out)")
        #expect(json(try d.coffer(["--format", "json", "audit", "verify"]).out)["bad_seq"] as? Int == 12)
    }

    /// Exactly one event per request under 32 concurrent clients mixing reads,
    /// writes, denied and malformed requests; the sequence is gap-free.
    @Test func oneEventPerRequestUnderConcurrency() throws {
        let d = try AccessFixture.daemon()
        let narrow = try run(Bins.coffer, ["--format", "json", "token", "create", "--role", "ci-build", "--paths", "ci/app/**"],
                             env: ["COFFER_SOCKET": d.socket])
        let token = json(narrow.out)["token"] as? String ?? ""
        let before = Int64(try sqlite(d.dbPath, "SELECT max(seq) FROM audit_event;")) ?? 0
        let perClient = 12
        let socket = d.socket
        let counts = Atomic([String: Int]())
        DispatchQueue.concurrentPerform(iterations: 32) { i in
            var local: [String: Int] = [:]
            for j in 0..<perClient {
                let http = UnixHTTPClient(socketPath: socket)
                let status: Int
                switch (i + j) % 4 {
                case 0:
                    status = (try? http.request("GET", "/v1/secrets/data/ci/app/db"))?.status ?? -1
                case 1:
                    status = (try? http.request("PUT", "/v1/secrets/data/load/c\(i)", body: Array(#"{"value":"v\#(j)"}"#.utf8)))?.status ?? -1
                case 2:
                    http.token = token
                    status = (try? http.request("GET", "/v1/secrets/data/other/x"))?.status ?? -1
                default:
                    status = (try? http.request("PUT", "/v1/secrets/data/load/bad", body: Array("{oops".utf8)))?.status ?? -1
                }
                local[String(status), default: 0] += 1
            }
            counts.update { for (k, v) in local { $0[k, default: 0] += v } }
        }
        let total = 32 * perClient
        #expect(counts.load() == ["200": total / 2, "403": total / 4, "400": total / 4])
        let after = Int64(try sqlite(d.dbPath, "SELECT max(seq) FROM audit_event;")) ?? 0
        #expect(after - before == Int64(total))
        #expect(try sqlite(d.dbPath, "SELECT count(*) FROM audit_event WHERE seq > \(before);") == String(total))
        #expect(try sqlite(d.dbPath, "SELECT count(*) FROM audit_event WHERE seq > \(before) AND decision = 'deny';") == String(total / 4))
        #expect(try sqlite(d.dbPath, "SELECT count(*) FROM audit_event WHERE seq > \(before) AND error_code = 'invalid_json';") == String(total / 4))
        #expect(try sqlite(d.dbPath, "SELECT count(*) FROM audit_event WHERE seq > \(before) AND action = 'write' AND outcome = 'ok';") == String(total / 4))
        #expect(try sqlite(d.dbPath, "SELECT count(*) FROM audit_event WHERE seq > \(before) AND token_accessor IS NOT NULL;") == String(total / 4))
        let v = try d.coffer(["audit", "verify"])
        #expect(v.status == 0, "\(v.out)")
    }

    /// The database on a small tmpfs that fills up: requests that need audit get 503
    /// with no value, health says why, the daemon stays up, and it recovers by itself.
    @Test func failsClosedOnAFullDiskAndRecovers() throws {
        let d = try Daemon(sqlite: true, config: "[audit]\nmirror = \"file:MIRROR\"\ncheckpoint_seconds = 1", initialise: false)
        let mirror = d.dir + "/mirror.jsonl"
        var text = try String(contentsOfFile: d.configPath, encoding: .utf8)
        text = text.replacingOccurrences(of: "file:MIRROR", with: "file:\(mirror)")
        try text.write(toFile: d.configPath, atomically: true, encoding: .utf8)
        let state = d.dir + "/state"
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let m = try run("/bin/mount", ["-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", state])
        #expect(m.status == 0, "mount: \(m.stderr)")
        defer { _ = try? run("/bin/umount", ["-l", state]) }
        #expect(try run(Bins.cofferd, ["init", "--config", d.configPath]).status == 0)
        try d.start()
        var rng = SystemRandomNumberGenerator()
        let canary = (0..<24).map { _ in UInt8.random(in: 0x61...0x7a, using: &rng) }
        #expect(try d.coffer(["secret", "put", "full/canary"], stdin: canary).status == 0)
        let tok = try run(Bins.coffer, ["token", "create", "--role", "admin"], env: ["COFFER_SOCKET": d.socket]).out
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(tok.hasPrefix("cfr_"))
        #expect(try d.coffer(["secret", "get", "full/canary"]).stdout == canary)

        // fill the disk
        _ = try run("/bin/dd", ["if=/dev/zero", "of=\(state)/filler", "bs=64k"])
        var (code, body) = try d.curl("GET", "/v1/secrets/data/full/canary")
        #expect(code == 503 && errorCode(body) == "audit_unavailable", "\(code) \(body)")
        #expect(!body.contains(String(decoding: canary, as: UTF8.self)))
        let raw = try d.coffer(["secret", "get", "full/canary"])
        #expect(raw.status == 8 && raw.stdout.isEmpty, "\(raw.stderr)")
        (code, body) = try d.curl("PUT", "/v1/secrets/data/full/new", body: #"{"value":"x"}"#)
        #expect(code == 503 && errorCode(body) == "audit_unavailable")
        (code, body) = try d.curl("GET", "/v1/sys/health")
        #expect(code == 200)
        #expect(json(body)["status"] as? String == "degraded")
        #expect((json(body)["audit"] as? String)?.contains("the disk is full") == true, "\(body)")
        // status is audited (a token can be probed there), so it fails closed too
        #expect(try d.curl("GET", "/v1/sys/status").0 == 503)
        #expect(d.process?.isRunning == true)
        // a checkpoint timer with nothing to sign must not call the trail healthy again
        Thread.sleep(forTimeInterval: 2.5)
        (code, body) = try d.curl("GET", "/v1/sys/health")
        #expect(json(body)["status"] as? String == "degraded", "health says ok while requests still fail: \(body)")
        #expect(try d.curl("GET", "/v1/sys/status").0 == 503)

        // free the space: the next request succeeds, no restart
        try FileManager.default.removeItem(atPath: state + "/filler")
        #expect(try d.coffer(["secret", "get", "full/canary"]).stdout == canary)
        (code, body) = try d.curl("GET", "/v1/sys/health")
        #expect(json(body)["status"] as? String == "ok" && json(body)["audit"] as? String == "ok", "\(body)")
        #expect(try d.coffer(["secret", "put", "full/after"], stdin: Array("y".utf8)).status == 0)
        #expect(try d.coffer(["audit", "verify"]).status == 0)

        // canary scan: no value and no token in any audit row or mirror line
        let rows = try sqlite(d.dbPath, "SELECT * FROM audit_event;")
        let lines = (try? String(contentsOfFile: mirror, encoding: .utf8)) ?? ""
        #expect(lines.split(separator: "\n").count >= 5)
        #expect(lines.contains("\"action\":\"read\""))
        for hay in [rows, lines, d.log] {
            #expect(!hay.contains(String(decoding: canary, as: UTF8.self)))
            #expect(!hay.contains(String(tok.dropFirst(4))))
            #expect(!hay.contains(Data(canary).base64EncodedString()))
        }
        #expect(json(try d.curl("GET", "/v1/sys/health").1)["audit_mirror"] as? String == "ok")
    }

    /// kill -9 during a write storm: after restart every acknowledged write has its
    /// event and the chain verifies.
    @Test func everyAcknowledgedWriteHasItsEventAfterKill9() throws {
        let d = try Daemon(sqlite: true)
        try d.start()
        let acked = Atomic([String]())
        let socket = d.socket
        let stop = Atomic(false)
        let group = DispatchGroup()
        for t in 0..<8 {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                var i = 0
                while !stop.load() {
                    i += 1
                    guard let r = try? UnixHTTPClient(socketPath: socket).request(
                        "PUT", "/v1/secrets/data/storm/t\(t)/s\(i % 5)", body: Array(#"{"value":"\#(i)"}"#.utf8)) else { continue }
                    if r.status == 200, let id = r.header("Coffer-Request-Id") { acked.update { $0.append(id) } }
                }
            }
        }
        usleep(UInt32.random(in: 300_000...900_000))
        d.kill9()
        stop.store(true)
        group.wait()
        let ids = acked.load()
        #expect(ids.count > 10)
        try d.start()
        let logged = Set(try sqlite(d.dbPath, "SELECT request_id FROM audit_event WHERE action = 'write' AND outcome = 'ok';")
            .split(separator: "\n").map(String.init))
        let missing = ids.filter { !logged.contains($0) }
        #expect(missing.isEmpty, "\(missing.count) acknowledged writes without an event")
        let v = try d.coffer(["audit", "verify"])
        #expect(v.status == 0, "\(v.out)")
        #expect(d.log.contains("signed audit events written since the last checkpoint") || v.status == 0)
    }

    @Test func readingNeedsTheAuditCapabilityAndPruneKeepsTheChain() throws {
        let d = try AccessFixture.daemon()
        var r = try d.coffer(["audit", "tail", "-n", "3"], as: AccessFixture.alice)
        #expect(r.status == 5)
        r = try d.coffer(["audit", "search", "--user", AccessFixture.alice.name, "--decision", "deny", "--format", "json"])
        #expect(r.status == 0)
        let lines = r.out.split(separator: "\n")
        #expect(lines.count == 1, "\(r.out)")
        #expect(lines.first.map { json(String($0))["action"] as? String } == "audit_read")
        r = try d.coffer(["audit", "search", "--path", "ci/app", "--action", "write"])
        #expect(r.out.split(separator: "\n").count == 2, "\(r.out)")  // ci/app/db and ci/app/prod/db
        r = try d.coffer(["audit", "tail", "-n", "2"])
        #expect(r.out.split(separator: "\n").count == 2)
        let export = try d.coffer(["audit", "export"])
        #expect(export.out.contains("\"checkpoint\"") && export.out.contains("\"event\""))
        // prune through a checkpoint: the rest verifies from it
        var v = json(try d.coffer(["--format", "json", "audit", "verify"]).out)
        let head = v["head_seq"] as? Int ?? 0
        #expect(head > 5)
        _ = try d.coffer(["secret", "get", "ci/app/db"])
        r = try d.coffer(["audit", "prune", "--through", "\(head)"])
        #expect(r.status == 0 && r.out.contains("pruned \(head) events"), "\(r.out) \(r.stderr)")
        v = json(try d.coffer(["--format", "json", "audit", "verify"]).out)
        #expect(v["ok"] as? Bool == true, "\(v)")
        #expect((v["count"] as? Int ?? 0) < head)
        r = try d.coffer(["audit", "prune", "--through", "3"])
        #expect(r.status != 0)
        d.stop()
        // offline, from the SQLite file itself (a PostgreSQL trail is verified through a daemon)
        if d.postgresDatabase == nil {
            r = try run(Bins.coffer, ["audit", "verify", "--db", d.dbPath, "--pubkey", d.dir + "/state/audit.pub"])
            #expect(r.status == 0, "\(r.out)")
        }
    }
}

