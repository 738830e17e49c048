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

@Suite(.serialized) struct OneDaemonPerDatabaseTests {
    /// Until each instance has its own audit chain, a second cofferd on the same
    /// PostgreSQL database is refused at start (it would make the first one's trail
    /// look changed behind its back); the first goes on serving, and once it is gone
    /// the second may start.
    @Test func aSecondDaemonOnTheSameDatabaseIsRefusedAndTheFirstServesOn() throws {
        let database = try PostgresServer.createDatabase()
        defer { PostgresServer.dropDatabase(database) }
        let a = try Daemon(postgres: database)
        try a.start()
        #expect(try a.coffer(["secret", "put", "one/x"], stdin: Array("x".utf8)).status == 0)
        let b = try Daemon(initialise: false, postgres: database)
        try FileManager.default.createDirectory(atPath: (b.keyPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: a.keyPath, toPath: b.keyPath)
        try FileManager.default.createDirectory(atPath: b.dir + "/state", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        for f in ["audit.pub", "audit.anchor"] { try FileManager.default.copyItem(atPath: a.dir + "/state/" + f, toPath: b.dir + "/state/" + f) }
        _ = try b.launch()
        #expect(try b.waitForExit() != 0)
        #expect(b.log.contains("another cofferd is serving the PostgreSQL database"), "\(b.log)")
        #expect(try a.coffer(["secret", "get", "one/x"]).stdout == Array("x".utf8))
        #expect(try a.coffer(["secret", "put", "one/y"], stdin: Array("y".utf8)).status == 0)
        #expect(try a.coffer(["audit", "verify"]).status == 0)
        a.stop()
        try b.start()
        #expect(try b.coffer(["secret", "get", "one/y"]).stdout == Array("y".utf8))
        #expect(try b.coffer(["audit", "verify"]).status == 0)
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
