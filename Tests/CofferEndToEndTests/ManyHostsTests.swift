import CofferClient
import Foundation
import Testing

/// Many hosts on one PostgreSQL database (issue 17): moving a SQLite store there.
@Suite(.serialized) struct MigrateTests {
    /// `cofferd migrate` copies a live SQLite store into an empty PostgreSQL database,
    /// verified; a daemon on PostgreSQL with the same key then serves every value,
    /// version and token, and its trail verifies. A second migrate into the same
    /// database, and bad arguments, are refused and change nothing.
    @Test func aSQLiteStoreMovesToPostgresVerifiedAndServes() throws {
        let src = try Daemon(sqlite: true)
        try src.start()
        #expect(try src.coffer(["secret", "put", "m/a"], stdin: Array("a1".utf8)).status == 0)
        #expect(try src.coffer(["secret", "put", "m/a"], stdin: Array("a2".utf8)).status == 0)
        #expect(try src.coffer(["secret", "put", "m/b/c"], stdin: Array("bc".utf8)).status == 0)
        #expect(try src.coffer(["secret", "destroy", "m/a", "--versions", "1"]).status == 0)
        let minted = try src.coffer(["--format", "json", "token", "create", "--role", "admin", "--ttl", "1h"])
        let token = json(minted.out)["token"] as? String ?? ""
        #expect(!token.isEmpty, "\(minted.stderr)")

        let database = try PostgresServer.createDatabase()
        defer { PostgresServer.dropDatabase(database) }
        let c = try PostgresServer.cluster()
        let url = "postgresql://coffer@:\(PostgresServer.port)/\(database)?host=\(c.socketDir)"
        let dst = try Daemon(initialise: false, postgres: database)
        // online: the source goes on serving while it is copied
        let r = try run(Bins.cofferd, ["migrate", "--from", "sqlite:" + src.dbPath, "--to", url, "--state", dst.dir + "/state"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.out.contains("verified: every row reads back as the source"), "\(r.out)")
        #expect(r.out.contains("secret 2") && r.out.contains("token 1"), "\(r.out)")
        #expect(try src.coffer(["secret", "get", "m/b/c"]).stdout == Array("bc".utf8))

        // the same key material on the new host
        try FileManager.default.createDirectory(atPath: (dst.keyPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: src.keyPath, toPath: dst.keyPath)
        try dst.start()
        #expect(try dst.coffer(["secret", "get", "m/a"]).stdout == Array("a2".utf8))
        #expect(try dst.coffer(["secret", "get", "m/b/c"]).stdout == Array("bc".utf8))
        let versions = try dst.coffer(["secret", "versions", "m/a"]).out
        #expect(versions.contains("destroyed") && versions.contains("current version 2"), "\(versions)")
        let (code, _) = try dst.curl("GET", "/v1/secrets/data/m/a", headers: ["X-Coffer-Token: \(token)"])
        #expect(code == 200, "the token minted on SQLite works on PostgreSQL")
        #expect(try dst.coffer(["secret", "put", "m/new"], stdin: Array("n".utf8)).status == 0, "new ids continue after the copied ones")
        let verify = try dst.coffer(["audit", "verify"])
        #expect(verify.status == 0 && verify.out.hasPrefix("OK"), "\(verify.out) \(verify.stderr)")
        #expect(json(try dst.curl("GET", "/v1/sys/status").1)["records"] as? String == "verified")

        // into a database that holds a store: refused, nothing changed
        let count = try PostgresServer.psql("SELECT count(*) FROM secret;", database: database)
        let again = try run(Bins.cofferd, ["migrate", "--from", "sqlite:" + src.dbPath, "--to", url])
        #expect(again.status != 0 && again.stderr.contains("already holds a Coffer store"), "\(again.stderr)")
        #expect(try PostgresServer.psql("SELECT count(*) FROM secret;", database: database) == count)
        for (args, needle) in [
            (["--from", src.dbPath, "--to", url], "sqlite:PATH"),
            (["--from", "sqlite:" + dst.dir + "/none.db", "--to", url], "no SQLite database"),
            (["--from", "sqlite:" + src.dbPath, "--to", "mysql://coffer@h/d"], "postgresql://"),
            (["--from", "sqlite:" + src.dbPath, "--to", "postgresql://coffer:pw@h/d"], "password"),
        ] {
            let bad = try run(Bins.cofferd, ["migrate"] + args)
            #expect(bad.status != 0 && bad.stderr.contains("cofferd: error:") && bad.stderr.contains(needle), "\(args): \(bad.stderr)")
        }
    }
}

/// Several hosts' daemons on one PostgreSQL database: each its own state directory,
/// socket and instance id (its own audit chain), all sharing one state.
@Suite(.serialized) struct ManyInstancesTests {
    /// A second instance beside `a`: a state directory of its own, the same key material.
    static func another(_ a: Daemon, options: String = "", policy: String? = nil) throws -> Daemon {
        let b = try joining(a, options: options, policy: policy)
        try b.start()
        return b
    }

    /// A daemon on `a`'s database with `a`'s key, not started.
    static func joining(_ a: Daemon, options: String = "", policy: String? = nil) throws -> Daemon {
        let b = try Daemon(initialise: false, policy: policy, postgres: a.postgresDatabase!, postgresOptions: options)
        try FileManager.default.createDirectory(atPath: (b.keyPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: a.keyPath, toPath: b.keyPath)
        return b
    }

    /// A daemon started with a copy of `of`'s state directory (its instance id): refused.
    static func expectCopyRefused(_ a: Daemon, of: Daemon, saying needle: String) throws {
        let c = try joining(a)
        try FileManager.default.createDirectory(atPath: c.dir + "/state", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        for f in ["instance", "audit.pub", "audit.anchor"] { try FileManager.default.copyItem(atPath: of.dir + "/state/" + f, toPath: c.dir + "/state/" + f) }
        _ = try c.launch()
        #expect(try c.waitForExit() != 0)
        #expect(c.log.contains(needle), "\(c.log.suffix(400))")
    }

    static func instance(_ d: Daemon) -> String {
        ((try? String(contentsOfFile: d.dir + "/state/instance", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func token(_ d: Daemon) throws -> (token: String, accessor: String) {
        let j = json(try d.coffer(["--format", "json", "token", "create", "--role", "admin", "--ttl", "1h"]).out)
        return (j["token"] as? String ?? "", (j["info"] as? [String: Any])?["accessor"] as? String ?? "")
    }

    /// What one host writes, every host reads at once (B's cached copy included); a
    /// token revoked on A is refused by B on the next request; a data key rotated on
    /// A seals B's next write; every instance appends to its own chain, and verify on
    /// either host checks both and names the instance of an edited event.
    @Test func twoInstancesShareOneStateEachWithItsOwnAuditChain() throws {
        let database = try PostgresServer.createDatabase()
        defer { PostgresServer.dropDatabase(database) }
        let a = try Daemon(postgres: database)
        try a.start()
        let b = try Self.another(a)
        let (ia, ib) = (Self.instance(a), Self.instance(b))
        #expect(!ia.isEmpty && !ib.isEmpty && ia != ib, "instance ids: '\(ia)' '\(ib)'")

        // read-after-write across hosts, both ways, with the reader's cache warm
        for i in 0..<20 {
            let (w, r) = i % 2 == 0 ? (a, b) : (b, a)
            _ = try r.coffer(["secret", "get", "shared/p"])
            #expect(try w.coffer(["secret", "put", "shared/p"], stdin: Array("v\(i)".utf8)).status == 0)
            #expect(try r.coffer(["secret", "get", "shared/p"]).stdout == Array("v\(i)".utf8), "round \(i)")
        }

        // a token made on A works on B (now in B's cache); revoked on A, refused by B at once
        let t = try Self.token(a)
        #expect(try b.curl("GET", "/v1/secrets/data/shared/p", headers: ["X-Coffer-Token: \(t.token)"]).0 == 200)
        #expect(try b.curl("GET", "/v1/secrets/data/shared/p", headers: ["X-Coffer-Token: \(t.token)"]).0 == 200)
        #expect(try a.coffer(["token", "revoke", t.accessor]).status == 0)
        #expect(try b.curl("GET", "/v1/secrets/data/shared/p", headers: ["X-Coffer-Token: \(t.token)"]).0 == 401)
        // the same with the token table's trigger switched off around the revoke (by a
        // database insider, for less than the periodic check's interval): B still
        // refuses, since what it checks per request is the record digest Coffer writes
        let t2 = try Self.token(a)
        #expect(try b.curl("GET", "/v1/secrets/data/shared/p", headers: ["X-Coffer-Token: \(t2.token)"]).0 == 200)
        try PostgresServer.psql("ALTER TABLE token DISABLE TRIGGER coffer_generation_token", database: database)
        #expect(try a.coffer(["token", "revoke", t2.accessor]).status == 0)
        try PostgresServer.psql("ALTER TABLE token ENABLE TRIGGER coffer_generation_token", database: database)
        #expect(try b.curl("GET", "/v1/secrets/data/shared/p", headers: ["X-Coffer-Token: \(t2.token)"]).0 == 401)

        // a data key rotated on A: B's next write is sealed under it; each reads the other's
        let rotated = try a.coffer(["keys", "rotate", "--format", "json"])
        let newKey = try #require(json(rotated.out)["id"] as? String, "\(rotated.stderr)")
        #expect(try b.coffer(["secret", "put", "rot/b"], stdin: Array("from b".utf8)).status == 0)
        let keyOfB = try PostgresServer.psql("SELECT v.key_id FROM secret_version v JOIN secret s ON s.id = v.secret_id WHERE s.path = 'rot/b'", database: database)
        #expect(keyOfB == newKey, "B sealed under \(keyOfB), the active key is \(newKey)")
        #expect(try a.coffer(["secret", "get", "rot/b"]).stdout == Array("from b".utf8))
        #expect(try a.coffer(["secret", "put", "rot/a"], stdin: Array("from a".utf8)).status == 0)
        #expect(try b.coffer(["secret", "get", "rot/a"]).stdout == Array("from a".utf8))

        // one chain each, both verified on either host
        let chains = try PostgresServer.psql("SELECT DISTINCT chain FROM audit_event ORDER BY 1", database: database)
        #expect(Set(chains.split(separator: "\n").map(String.init)) == [ia, ib], "\(chains)")
        for d in [a, b] {
            let v = try d.coffer(["audit", "verify"])
            #expect(v.status == 0 && v.out.hasPrefix("OK"), "\(v.out) \(v.stderr)")
        }
        // search and export: every instance's events, in one global order
        let found = json(try b.curl("GET", "/v1/audit/events?path=shared/p&limit=1000").1)["events"] as? [[String: Any]] ?? []
        #expect(Set(found.compactMap { $0["instance"] as? String }) == [ia, ib])
        let positions = found.map { ($0["position"] as? Int) ?? ($0["seq"] as? Int ?? 0) }
        #expect(positions == positions.sorted() && Set(positions).count == positions.count, "\(positions)")
        let export = try a.curl("GET", "/v1/audit/export").1
        #expect(export.contains("\"instance\":\"\(ia)\"") && export.contains("\"instance\":\"\(ib)\""))

        // the same instance id twice (a copied state directory) is refused; the first serves on
        try Self.expectCopyRefused(a, of: b, saying: "as instance '\(ib)'")
        #expect(try b.coffer(["secret", "get", "rot/a"]).stdout == Array("from a".utf8))

        // an event of B's chain edited in the database: A's verify names B's instance and the seq
        _ = try PostgresServer.psql("UPDATE audit_event SET action = 'edited' WHERE chain = '\(ib)' AND seq = 2", database: database)
        let bad = try a.coffer(["audit", "verify"])
        #expect(bad.status == 9 && bad.out.contains("BAD instance '\(ib)' at seq 2"), "\(bad.out) \(bad.stderr)")
        let badJSON = json(try a.curl("GET", "/v1/audit/verify").1)
        #expect(badJSON["instance"] as? String == ib && badJSON["bad_seq"] as? Int == 2, "\(badJSON)")
        // a NUL in a search filter is a 422, not a database error
        for q in ["user=%00", "path=a%00", "action=%00"] {
            #expect(try a.curl("GET", "/v1/audit/events?" + q).0 == 422, "\(q)")
        }
        // an instance file emptied (or holding what no id looks like) refuses the start
        b.stop()
        for text in ["", "  \n", "-x", "a b"] {
            try text.write(toFile: b.dir + "/state/instance", atomically: true, encoding: .utf8)
            _ = try b.launch()
            #expect(try b.waitForExit() != 0)
            #expect(b.log.contains("does not hold an instance id"), "'\(text)': \(b.log.suffix(300))")
        }
    }

    /// What a database insider could do to another host's chain, named by verify on
    /// any host: an event moved in the global order (out of search's reach), a chain
    /// deleted whole, its start deleted without a prune, its registry row removed.
    @Test func anotherHostsChainCannotBeHiddenOrDeleted() throws {
        let database = try PostgresServer.createDatabase()
        defer { PostgresServer.dropDatabase(database) }
        let a = try Daemon(postgres: database)
        try a.start()
        let b = try Self.another(a)
        let ib = Self.instance(b)
        for i in 0..<5 { #expect(try b.coffer(["secret", "put", "h/b\(i)"], stdin: Array("b".utf8)).status == 0) }
        #expect(try b.coffer(["audit", "verify"]).status == 0)
        b.stop()
        func named(_ sql: String, _ needle: String, undo: String) throws {
            try PostgresServer.psql(sql, database: database)
            let v = try a.coffer(["audit", "verify"])
            #expect(v.status == 9 && v.out.contains("BAD instance '\(ib)'") && v.out.contains(needle), "\(sql): \(v.out) \(v.stderr)")
            try PostgresServer.psql(undo, database: database)
            #expect(try a.coffer(["audit", "verify"]).status == 0, "after undoing \(sql)")
        }
        let events = "CREATE TABLE saved_e AS SELECT * FROM audit_event WHERE chain = '\(ib)'; CREATE TABLE saved_c AS SELECT * FROM audit_checkpoint WHERE chain = '\(ib)'"
        let restore = "INSERT INTO audit_event SELECT * FROM saved_e; INSERT INTO audit_checkpoint SELECT * FROM saved_c; DROP TABLE saved_e; DROP TABLE saved_c"
        try named("UPDATE audit_event SET pos = pos + 1000000 WHERE chain = '\(ib)' AND seq = 3", "seq 3",
                  undo: "UPDATE audit_event SET pos = pos - 1000000 WHERE chain = '\(ib)' AND seq = 3")
        try named(events + "; DELETE FROM audit_event WHERE chain = '\(ib)'; DELETE FROM audit_checkpoint WHERE chain = '\(ib)'",
                  "the whole chain was deleted", undo: restore)
        try named(events + "; DELETE FROM audit_event WHERE chain = '\(ib)' AND seq <= 2; DELETE FROM audit_checkpoint WHERE chain = '\(ib)' AND seq < 2",
                  "deleted without prune", undo: "DELETE FROM audit_event WHERE chain = '\(ib)'; DELETE FROM audit_checkpoint WHERE chain = '\(ib)'; " + restore)
        try named("CREATE TABLE saved_i AS SELECT * FROM audit_instance WHERE chain = '\(ib)'; DELETE FROM audit_instance WHERE chain = '\(ib)'",
                  "not registered", undo: "INSERT INTO audit_instance SELECT * FROM saved_i; DROP TABLE saved_i")
        // the registry row is a record: its removal also shows in the record digest
        try PostgresServer.psql("DELETE FROM audit_instance WHERE chain = '\(ib)'", database: database)
        let check = try a.coffer(["operator", "check"])
        #expect(check.status != 0, "\(check.out) \(check.stderr)")
    }

    /// The instance lock's session ended (a terminated backend, an idle timeout): the
    /// daemon takes it again within seconds, so a copy of its state directory is
    /// still refused.
    @Test func theInstanceLockIsTakenAgainWhenItsSessionEnds() throws {
        let database = try PostgresServer.createDatabase()
        defer { PostgresServer.dropDatabase(database) }
        let a = try Daemon(postgres: database)
        try a.start()
        let holder = """
            SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = 6516582 AND objsubid = 2 AND granted
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            """
        let first = try PostgresServer.psql(holder, database: database)
        #expect(!first.isEmpty)
        _ = try PostgresServer.psql("SELECT pg_terminate_backend(\(first))", database: database)
        #expect(waitUntil(15) {
            _ = try? a.coffer(["secret", "get", "nothing/here"])
            let now = (try? PostgresServer.psql(holder, database: database)) ?? ""
            return !now.isEmpty && now != first
        }, "the lock was not taken again")
        try Self.expectCopyRefused(a, of: a, saying: "as instance")
        #expect(try a.coffer(["secret", "put", "l/x"], stdin: Array("x".utf8)).status == 0)
    }

    /// With max_staleness_ms high, only LISTEN/NOTIFY can tell B in time: a token
    /// revoked on A is refused on B within 100 ms of A's answer.
    @Test func aRevokeOnOneHostIsRefusedOnAnotherWithin100msByNotification() throws {
        let database = try PostgresServer.createDatabase()
        defer { PostgresServer.dropDatabase(database) }
        let a = try Daemon(postgres: database)
        try a.start()
        let b = try Self.another(a, options: "max_staleness_ms = 60000")
        #expect(try a.coffer(["secret", "put", "n/x"], stdin: Array("x".utf8)).status == 0)
        var worst = 0.0
        for _ in 0..<5 {
            let t = try Self.token(a)
            for _ in 0..<3 { #expect(try b.curl("GET", "/v1/secrets/data/n/x", headers: ["X-Coffer-Token: \(t.token)"]).0 == 200) }
            #expect(try a.coffer(["token", "revoke", t.accessor]).status == 0)
            let revoked = Date()
            var refusedAfter: Double?
            let http = UnixHTTPClient(socketPath: b.socket)
            while Date().timeIntervalSince(revoked) < 2 {
                let s = (try? http.request("GET", "/v1/secrets/data/n/x", headers: [("X-Coffer-Token", t.token)]))?.status ?? -1
                if s == 401 { refusedAfter = Date().timeIntervalSince(revoked); break }
                #expect(s == 200)
                usleep(2_000)
            }
            let after = try #require(refusedAfter, "B still accepted the revoked token 2 s later")
            worst = max(worst, after)
        }
        #expect(worst < 0.1, "slowest refusal on B after the revoke on A: \(Int(worst * 1000)) ms")
        // B's cached read also follows A's write without waiting for the bound
        _ = try b.coffer(["secret", "get", "n/x"])
        #expect(try a.coffer(["secret", "put", "n/x"], stdin: Array("y".utf8)).status == 0)
        #expect(waitUntil(0.1) { (try? b.coffer(["secret", "get", "n/x"]).stdout) == Array("y".utf8) })
    }

    /// A key rotation started on one host is taken up by every host (a new root key
    /// and data key: each opens them with the key material it already holds, and
    /// seals its next write under them); its re-wrap runs on one instance only (a lock
    /// in the database), and afterwards every value opens on both.
    @Test func aRotationStartedOnOneHostIsSeenByAllAndReWrappedOnce() throws {
        let database = try PostgresServer.createDatabase()
        defer { PostgresServer.dropDatabase(database) }
        let a = try Daemon(postgres: database)
        try a.start()
        let b = try Self.another(a)
        let http = UnixHTTPClient(socketPath: a.socket)
        for i in 0..<300 {
            #expect(try http.request("PUT", "/v1/secrets/data/rw/k\(i)", body: Array("{\"value\":\"v\(i)\"}".utf8)).status == 200)
        }
        let before = try PostgresServer.psql("SELECT key_id FROM keyring WHERE purpose = 'data' AND state = 'active'", database: database)
        let r = try b.coffer(["operator", "rotate", "--wait"])
        #expect(r.status == 0, "\(r.stderr)")
        let after = try PostgresServer.psql("SELECT key_id FROM keyring WHERE purpose = 'data' AND state = 'active'", database: database)
        #expect(after != before)
        #expect(try PostgresServer.psql("SELECT count(*) FROM secret_version WHERE key_id != '\(after)'", database: database) == "0")
        #expect(try PostgresServer.psql("SELECT sealed IS NULL FROM keyring WHERE key_id = '\(before)'", database: database) == "t",
                "the old data key was erased")
        let runners = [a, b].filter { $0.log.contains("rotation: this instance re-wraps") }
        #expect(runners.count == 1, "instances that ran the re-wrap: \(runners.count)")
        // both hosts: the new root key, every value, and new writes under the new key
        let roots = try [a, b].map { json(try $0.coffer(["--format", "json", "keys", "list"]).out)["root_key_id"] as? String ?? "?" }
        #expect(roots[0] == roots[1] && roots[0] != "?", "\(roots)")
        for d in [a, b] {
            for i in stride(from: 0, to: 300, by: 37) { #expect(try d.coffer(["secret", "get", "rw/k\(i)"]).out == "v\(i)") }
        }
        #expect(try b.coffer(["secret", "put", "rw/after-b"], stdin: Array("b".utf8)).status == 0)
        #expect(try a.coffer(["secret", "put", "rw/after-a"], stdin: Array("a".utf8)).status == 0)
        #expect(try PostgresServer.psql("SELECT count(DISTINCT v.key_id) FROM secret_version v JOIN secret s ON s.id = v.secret_id WHERE s.path LIKE 'rw/after-%'",
                                        database: database) == "1")
        #expect(try a.coffer(["secret", "get", "rw/after-b"]).out == "b")
        #expect(try b.coffer(["secret", "get", "rw/after-a"]).out == "a")
        // a data key A rotates with the keyring's trigger switched off around it: B is
        // not told, yet its next write is not sealed under the retired key (checked in
        // the writing transaction: it reloads the keyring and seals again), and it
        // opens what A sealed under the new key
        // (A looks at its schema every 5 s while requests come: the window is placed
        // right after one of those looks, as an insider's would be)
        _ = try a.coffer(["secret", "get", "rw/k1"])
        usleep(5_300_000)
        _ = try a.coffer(["secret", "get", "rw/k1"])
        try PostgresServer.psql("ALTER TABLE keyring DISABLE TRIGGER coffer_generation_keyring", database: database)
        #expect(try a.coffer(["keys", "rotate"]).status == 0)
        try PostgresServer.psql("ALTER TABLE keyring ENABLE TRIGGER coffer_generation_keyring", database: database)
        let third = try PostgresServer.psql("SELECT key_id FROM keyring WHERE purpose = 'data' AND state = 'active'", database: database)
        #expect(third != after)
        #expect(try b.coffer(["secret", "put", "rw/unannounced"], stdin: Array("u".utf8)).status == 0)
        #expect(try PostgresServer.psql("SELECT v.key_id FROM secret_version v JOIN secret s ON s.id = v.secret_id WHERE s.path = 'rw/unannounced'",
                                        database: database) == third)
        #expect(try a.coffer(["secret", "get", "rw/unannounced"]).out == "u")
        #expect(try a.coffer(["secret", "put", "rw/from-a-3"], stdin: Array("a3".utf8)).status == 0)
        #expect(try b.coffer(["secret", "get", "rw/from-a-3"]).out == "a3")
        // a restart on either host opens the new root with the same key file
        b.stop()
        try b.start()
        #expect(try b.coffer(["secret", "get", "rw/k5"]).out == "v5")
        for d in [a, b] { #expect(try d.coffer(["audit", "verify"]).status == 0) }
    }

    static let elevationPolicy = """
        [role.admin]
        [[role.admin.rule]]
        path = "**"
        capabilities = ["read", "list", "write", "delete", "destroy", "admin", "audit"]
        [[bind]]
        subjects = ["uid:0"]
        roles = ["admin"]

        [role.deploy]
        [[role.deploy.rule]]
        path = "deploy/**"
        capabilities = ["read"]
        [[elevation]]
        role = "deploy"
        eligible = ["uid:0"]
        approvals = 0
        max_duration = "2h"
        reason = "optional"
        jwt = { audiences = ["deploy-api"], max_ttl = "1h" }
        """

    /// The JWT key rotated on A: B's next JWT is signed with the new key (its kid),
    /// and the JWKS either host publishes verifies it.
    @Test func aJWTKeyRotatedOnOneHostSignsOnEvery() throws {
        let database = try PostgresServer.createDatabase()
        defer { PostgresServer.dropDatabase(database) }
        let a = try Daemon(policy: Self.elevationPolicy, postgres: database)
        try a.start()
        let b = try Self.another(a, policy: Self.elevationPolicy)
        func jwt(_ d: Daemon) throws -> String {
            let r = try d.coffer(["elevate", "request", "deploy", "--for", "1h", "--format", "json"])
            let id = try #require(json(r.out)["id"] as? String, "\(r.stderr)")
            #expect(try d.coffer(["elevate", "activate", id, "--output", d.dir + "/tok-" + id]).status == 0)
            let j = try d.coffer(["elevate", "jwt", id, "--audience", "deploy-api", "--format", "json"])
            return try #require(json(j.out)["token"] as? String, "\(j.stderr)")
        }
        func kid(_ token: String) -> String? {
            var b64 = String(token.split(separator: ".")[0]).replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
            while b64.count % 4 != 0 { b64 += "=" }
            return Data(base64Encoded: b64).flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] }?["kid"] as? String
        }
        let before = kid(try jwt(b))
        let rot = try a.coffer(["jwks", "rotate", "--format", "json"])
        let newKid = try #require(json(rot.out)["kid"] as? String, "\(rot.stderr)")
        #expect(before != nil && before != newKid)
        #expect(kid(try jwt(b)) == newKid, "B still signs with the key before the rotation on A")
        #expect(kid(try jwt(a)) == newKid)
        let published = json(try b.curl("GET", "/v1/jwks").1)["keys"] as? [[String: Any]] ?? []
        #expect(Set(published.compactMap { $0["kid"] as? String }).contains(newKid))
    }

    /// kill -9 of one instance during a write storm on both: the other serves on
    /// without a failed request, no acknowledged write is lost, every chain verifies,
    /// and the killed instance, restarted, signs its tail and serves again.
    @Test func killingOneInstanceDuringAWriteStormLosesNoAcknowledgedWrite() throws {
        let database = try PostgresServer.createDatabase()
        defer { PostgresServer.dropDatabase(database) }
        let a = try Daemon(postgres: database)
        try a.start()
        let b = try Self.another(a)
        let acknowledged = Atomic([String: String]())
        let failuresOnB = Atomic(0)
        let writesOnBAfterKill = Atomic(0)
        let killed = Atomic(false)
        let stop = Atomic(false)
        var threads: [Thread] = []
        for w in 0..<4 {
            let target = w % 2 == 0 ? a : b
            let socket = target.socket
            let onB = target === b
            let th = Thread {
                var i = 0
                while !stop.load() {
                    i += 1
                    let path = "storm/w\(w)/k\(i)", value = "v\(w)-\(i)"
                    let http = UnixHTTPClient(socketPath: socket)
                    let s = (try? http.request("PUT", "/v1/secrets/data/" + path, body: Array("{\"value\":\"\(value)\"}".utf8)))?.status ?? -1
                    if s == 200 {
                        acknowledged.update { $0[path] = value }
                        if onB && killed.load() { writesOnBAfterKill.add(1) }
                    } else if onB {
                        failuresOnB.add(1)
                    }
                }
            }
            threads.append(th)
            th.start()
        }
        usleep(1_500_000)
        a.kill9()
        killed.store(true)
        usleep(1_500_000)
        stop.store(true)
        usleep(300_000)
        #expect(failuresOnB.load() == 0, "B failed \(failuresOnB.load()) writes")
        #expect(writesOnBAfterKill.load() > 10, "B wrote \(writesOnBAfterKill.load()) after A was killed")
        let acked = acknowledged.load()
        #expect(acked.count > 50)
        let stored = try PostgresServer.psql("SELECT count(*) FROM secret WHERE path LIKE 'storm/%'", database: database)
        #expect(Int(stored) ?? 0 >= acked.count)
        // every acknowledged write reads back on B, value for value
        var lost: [String] = []
        for (path, value) in acked.sorted(by: { $0.key < $1.key }) where path.hasSuffix("0") || acked.count < 400 {
            if try b.coffer(["secret", "get", path]).stdout != Array(value.utf8) { lost.append(path) }
        }
        #expect(lost.isEmpty, "acknowledged but not read back: \(lost.prefix(10))")
        let vb = try b.coffer(["audit", "verify"])
        #expect(vb.status == 0 && vb.out.hasPrefix("OK"), "\(vb.out) \(vb.stderr)")
        // A comes back on its own state directory: its chain's tail is signed, it serves
        try a.start()
        #expect(try a.coffer(["secret", "get", "storm/w1/k1"]).stdout == Array("v1-1".utf8))
        let va = try a.coffer(["audit", "verify"])
        #expect(va.status == 0 && va.out.hasPrefix("OK"), "\(va.out) \(va.stderr)")
    }
}

@Suite(.serialized) struct PostgresOutageTests {
    /// PostgreSQL restarted under load: while it is down requests fail closed (503,
    /// health degraded), no answer is ever a wrong value, and once it is back cofferd
    /// (the same process) serves reads and writes again and its trail verifies.
    @Test func postgresRestartedUnderLoadIs503ThenRecoversWithoutRestartingCofferd() throws {
        let pg = try OwnPostgres(port: 5447)
        try pg.psql("CREATE DATABASE outage")
        let d = try Daemon(config: pg.daemonConfig("outage"))
        try d.start()
        #expect(try d.coffer(["secret", "put", "o/x"], stdin: Array("steady".utf8)).status == 0)
        let pid = d.pid
        let stop = Atomic(false)
        let seen = Atomic([String: Int]())
        let wrong = Atomic(0)
        let socket = d.socket
        let load = Thread {
            var i = 0
            while !stop.load() {
                let http = UnixHTTPClient(socketPath: socket)
                i += 1
                if i % 4 == 0 {
                    let s = (try? http.request("PUT", "/v1/secrets/data/o/w\(i % 50)", body: Array(#"{"value":"w"}"#.utf8)))?.status ?? -1
                    seen.update { $0["PUT \(s)", default: 0] += 1 }
                } else {
                    let r = try? http.request("GET", "/v1/secrets/data/o/x")
                    let s = r?.status ?? -1
                    if s == 200, !(String(decoding: r?.body ?? [], as: UTF8.self).contains("\"value\":\"steady\"")) { wrong.add(1) }
                    seen.update { $0["GET \(s)", default: 0] += 1 }
                }
                usleep(5_000)
            }
        }
        load.start()
        usleep(500_000)
        try pg.stop()
        usleep(1_500_000)
        let (hc, hb) = try d.curl("GET", "/v1/sys/health")
        #expect(hc == 503 || json(hb)["status"] as? String == "degraded", "health while PostgreSQL is down: \(hc) \(hb)")
        let (code, body) = try d.curl("GET", "/v1/secrets/data/o/x")
        // (the probe counts with the load: on a loaded machine the load's few requests
        // may all have been in flight across the outage, answered once it was over)
        seen.update { $0["GET \(code)", default: 0] += 1 }
        #expect(code == 503, "a read while PostgreSQL is down: \(code) \(body)")
        try pg.start()
        let back = waitUntil(20) { (try? d.coffer(["secret", "get", "o/x"]).stdout) == Array("steady".utf8) }
        #expect(back, "cofferd did not recover: \(d.log.suffix(2000))")
        #expect(waitUntil(10) { (try? d.coffer(["secret", "put", "o/after"], stdin: Array("a".utf8)).status) == 0 })
        stop.store(true)
        usleep(200_000)
        #expect(d.pid == pid && kill(pid!, 0) == 0, "cofferd was restarted or died")
        #expect(wrong.load() == 0, "a wrong value was served")
        let counts = seen.load()
        #expect(counts.keys.contains { $0.hasSuffix(" 503") }, "no request failed while PostgreSQL was down: \(counts)")
        #expect(counts.keys.allSatisfy { $0.hasSuffix(" 200") || $0.hasSuffix(" 503") }, "only served or 503: \(counts)")
        #expect(waitUntil(10) { json((try? d.curl("GET", "/v1/sys/health").1) ?? "")["status"] as? String == "ok" })
        let v = try d.coffer(["audit", "verify"])
        #expect(v.status == 0, "\(v.out) \(v.stderr)")
    }
}

@Suite(.serialized) struct PostgresPlantedObjectsTests {
    /// An event trigger planted in the database (it would run inside Coffer's own
    /// statements) makes serve refuse to start and migrate refuse the target.
    @Test func anEventTriggerIsRefusedByServeAndMigrate() throws {
        let database = try PostgresServer.createDatabase()
        defer { PostgresServer.dropDatabase(database) }
        let d = try Daemon(postgres: database)
        try PostgresServer.psql("""
            CREATE FUNCTION planted() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;
            CREATE EVENT TRIGGER planted ON ddl_command_end EXECUTE FUNCTION planted();
            """, database: database)
        _ = try d.launch()
        #expect(try d.waitForExit() != 0)
        #expect(d.log.contains("event trigger planted"), "\(d.log)")
        let src = try Daemon(sqlite: true)
        let target = try PostgresServer.createDatabase()
        defer { PostgresServer.dropDatabase(target) }
        try PostgresServer.psql("""
            CREATE FUNCTION planted() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;
            CREATE EVENT TRIGGER planted2 ON ddl_command_end EXECUTE FUNCTION planted();
            """, database: target)
        let c = try PostgresServer.cluster()
        let r = try run(Bins.cofferd, ["migrate", "--from", "sqlite:" + src.dbPath, "--to",
                                       "postgresql://coffer@:\(PostgresServer.port)/\(target)?host=\(c.socketDir)"])
        #expect(r.status != 0 && r.stderr.contains("event trigger"), "\(r.stderr)")
    }

    static let generationBody = "BEGIN IF TG_TABLE_NAME IN ('keyring', 'signing_key') THEN UPDATE coffer_generation SET key_gen = key_gen + 1 WHERE id = 1; END IF; "
        + "PERFORM pg_catalog.pg_notify('coffer_generation'::text, TG_TABLE_NAME::text); RETURN NULL; END"

    /// Ways a database insider could silence the generation, each refused at start:
    /// the function given a search_path of its own (its statements sent to a planted
    /// table and a planted pg_notify), a trigger recreated to fire on fewer statements,
    /// session_replication_role = replica set on the database (no trigger would fire).
    /// A search_path set on the database does not move Coffer to another schema.
    @Test func theGenerationCannotBeSilencedFromTheDatabase() throws {
        let database = try PostgresServer.createDatabase()
        defer { PostgresServer.dropDatabase(database) }
        let d = try Daemon(postgres: database)
        try d.start()
        #expect(try d.coffer(["secret", "put", "g/x"], stdin: Array("x".utf8)).status == 0)
        d.stop()
        func refused(_ sql: String, _ needle: String, undo: String) throws {
            try PostgresServer.psql(sql, database: database)
            _ = try d.launch()
            #expect(try d.waitForExit() != 0, "started despite: \(sql)")
            #expect(d.log.contains(needle), "\(sql): \(d.log.suffix(600))")
            try PostgresServer.psql(undo, database: database)
        }
        try refused("""
            CREATE SCHEMA evil; CREATE TABLE evil.coffer_generation (id bigint primary key, gen bigint, key_gen bigint);
            CREATE FUNCTION evil.pg_notify(text, text) RETURNS void LANGUAGE sql AS 'SELECT NULL::void';
            ALTER FUNCTION public.coffer_bump_generation() SET search_path = evil, pg_catalog
            """, "function coffer_bump_generation (changed)",
            undo: "ALTER FUNCTION public.coffer_bump_generation() RESET search_path; DROP SCHEMA evil CASCADE")
        try refused("""
            DROP TRIGGER coffer_generation_token ON token;
            CREATE TRIGGER coffer_generation_token AFTER DELETE ON token FOR EACH STATEMENT EXECUTE FUNCTION coffer_bump_generation()
            """, "trigger coffer_generation_token (changed)",
            undo: """
            DROP TRIGGER coffer_generation_token ON token;
            CREATE TRIGGER coffer_generation_token AFTER UPDATE OR DELETE OR TRUNCATE ON token FOR EACH STATEMENT EXECUTE FUNCTION coffer_bump_generation()
            """)
        try refused("DROP TRIGGER coffer_generation_secret ON secret", "trigger coffer_generation_secret (missing)",
                    undo: "CREATE TRIGGER coffer_generation_secret AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON secret FOR EACH STATEMENT EXECUTE FUNCTION coffer_bump_generation()")
        // an object added to pg_catalog (searched first) to stand in for Coffer's own
        try refused("SET allow_system_table_mods = on; CREATE TABLE pg_catalog.coffer_generation (id bigint, gen bigint, key_gen bigint)",
                    "catalog object coffer_generation", undo: "SET allow_system_table_mods = on; DROP TABLE pg_catalog.coffer_generation")
        try refused("ALTER TABLE token ENABLE ROW LEVEL SECURITY; CREATE POLICY hide ON token USING (revoked_at IS NULL)", "policy hide",
                    undo: "DROP POLICY hide ON token; ALTER TABLE token DISABLE ROW LEVEL SECURITY")
        try refused("ALTER TABLE secret FORCE ROW LEVEL SECURITY", "row security on secret",
                    undo: "ALTER TABLE secret NO FORCE ROW LEVEL SECURITY")
        try refused("ALTER DATABASE \(database) SET session_replication_role = replica", "session_replication_role",
                    undo: "ALTER DATABASE \(database) RESET session_replication_role")
        // a search_path on the database pointing at an empty schema: Coffer stays in public
        try PostgresServer.psql("CREATE SCHEMA decoy; ALTER DATABASE \(database) SET search_path = decoy, public", database: database)
        try d.start()
        #expect(try d.coffer(["secret", "get", "g/x"]).stdout == Array("x".utf8))
        #expect(try PostgresServer.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'decoy'", database: database) == "0")
        // and while it serves: a trigger disabled is found within seconds, and every request refused
        try PostgresServer.psql("ALTER TABLE token DISABLE TRIGGER coffer_generation_token", database: database)
        #expect(waitUntil(15) { (try? d.coffer(["secret", "get", "g/x"]).status) != 0 }, "still serving with a disabled trigger")
        let r = try d.coffer(["secret", "get", "g/x"])
        #expect(r.stderr.contains("trigger coffer_generation_token (disabled)"), "\(r.stderr)")
    }

    /// The trigger function that announces changes to other instances, replaced by
    /// one that stays silent (so a revoke would go unseen elsewhere): serve refuses.
    @Test func aReplacedGenerationFunctionIsRefused() throws {
        let database = try PostgresServer.createDatabase()
        defer { PostgresServer.dropDatabase(database) }
        let d = try Daemon(postgres: database)
        try d.start()
        d.stop()
        try PostgresServer.psql("CREATE OR REPLACE FUNCTION coffer_bump_generation() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
                                database: database)
        _ = try d.launch()
        #expect(try d.waitForExit() != 0)
        #expect(d.log.contains("function coffer_bump_generation (changed)"), "\(d.log)")
        // put back, then one of its triggers disabled: refused too
        try PostgresServer.psql("CREATE OR REPLACE FUNCTION coffer_bump_generation() RETURNS trigger LANGUAGE plpgsql AS $$\(Self.generationBody)$$; "
                                + "ALTER TABLE token DISABLE TRIGGER coffer_generation_token", database: database)
        _ = try d.launch()
        #expect(try d.waitForExit() != 0)
        #expect(d.log.contains("trigger coffer_generation_token (disabled)"), "\(d.log)")
        try PostgresServer.psql("ALTER TABLE token ENABLE TRIGGER coffer_generation_token", database: database)
        try d.start()
    }
}
