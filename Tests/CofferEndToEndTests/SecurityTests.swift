import Foundation
import Testing

@Suite(.serialized) struct SecurityTests {
    /// A real non-admin uid gets 403 on every route but health, through curl and the
    /// CLI, and nothing changes (compared as admin before and after).
    @Test func nonAdminIsDeniedEverywhere() throws {
        let user = TestUser.nonAdmin
        let d = try Daemon()
        try d.start()
        _ = try d.coffer(["secret", "put", "team/db"], stdin: Array("v1".utf8))
        _ = try d.coffer(["secret", "put", "team/db"], stdin: Array("v2".utf8))
        let snapshot = { () throws -> [String] in
            [try d.curl("GET", "/v1/secrets/metadata/team/db").1, try d.curl("GET", "/v1/secrets/list").1,
             try d.curl("GET", "/v1/secrets/data/team/db").1]
        }
        let before = try snapshot()

        var (code, body) = try d.curl("GET", "/v1/sys/health", as: user)
        #expect(code == 200 && json(body)["status"] as? String == "ok")

        let routes: [(String, String, String?)] = [
            ("GET", "/v1/sys/status", nil),
            ("GET", "/v1/secrets/data/team/db", nil),
            ("GET", "/v1/secrets/data/team/db?version=1", nil),
            ("GET", "/v1/secrets/data/does/not/exist", nil),
            ("PUT", "/v1/secrets/data/team/db", #"{"value":"evil"}"#),
            ("POST", "/v1/secrets/data/team/new", #"{"value":"evil"}"#),
            ("PUT", "/v1/secrets/data/team/db", "{not json"),
            ("DELETE", "/v1/secrets/data/team/db", nil),
            ("GET", "/v1/secrets/metadata/team/db", nil),
            ("GET", "/v1/secrets/list", nil),
            ("GET", "/v1/secrets/list/team", nil),
            ("POST", "/v1/secrets/delete/team/db", #"{"versions":[1]}"#),
            ("POST", "/v1/secrets/undelete/team/db", nil),
            ("POST", "/v1/secrets/destroy/team/db", nil),
        ]
        for (method, path, b) in routes {
            (code, body) = try d.curl(method, path, body: b, as: user)
            #expect(code == 403, "\(method) \(path): \(body)")
            #expect(errorCode(body) == "permission_denied", "\(method) \(path)")
            #expect(!body.contains("v1") && !body.contains("v2"))
        }
        let commands: [[String]] = [
            ["status"], ["secret", "get", "team/db"], ["secret", "get", "team/db", "--version", "1"],
            ["secret", "list"], ["secret", "list", "team"], ["secret", "versions", "team/db"],
            ["secret", "delete", "team/db"], ["secret", "undelete", "team/db"], ["secret", "destroy", "team/db"],
        ]
        for args in commands {
            let r = try d.coffer(args, as: user)
            #expect(r.status == 5, "\(args): \(r.stderr)")
            #expect(r.stderr.hasPrefix("coffer: error: permission denied"), "\(args): \(r.stderr)")
            #expect(r.stdout.isEmpty)
        }
        let put = try d.coffer(["secret", "put", "team/db"], stdin: Array("evil".utf8), as: user)
        #expect(put.status == 5)
        #expect(try snapshot() == before)
    }

    /// A random 32-byte value is in none of the database files (also after a
    /// checkpoint) nor in the daemon's log, as raw bytes, hex or base64.
    @Test func plaintextCanary() throws {
        let d = try Daemon(sqlite: true, config: "[log]\nlevel = \"trace\"")
        try d.start()
        var rng = SystemRandomNumberGenerator()
        let canary = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let file = d.dir + "/canary"
        FileManager.default.createFile(atPath: file, contents: Data(canary), attributes: [.posixPermissions: 0o600])
        #expect(try d.coffer(["secret", "put", "canary/value", "--file", file]).status == 0)
        try FileManager.default.removeItem(atPath: file)
        #expect(try d.coffer(["secret", "get", "canary/value"]).stdout == canary)
        _ = try d.coffer(["--format", "json", "secret", "get", "canary/value"])
        let forms: [(String, [UInt8])] = [
            ("raw", canary), ("hex", Array(canary.map { String(format: "%02x", $0) }.joined().utf8)),
            ("HEX", Array(canary.map { String(format: "%02X", $0) }.joined().utf8)),
            ("base64", Array(Data(canary).base64EncodedString().utf8)),
        ]
        func scan(_ stage: String) {
            for f in ["", "-wal", "-shm"] {
                for (name, needle) in forms {
                    #expect(!contains(fileBytes(d.dbPath + f), needle), "\(stage): \(name) in coffer.db\(f)")
                }
            }
            for (name, needle) in forms {
                #expect(!contains(fileBytes(d.logPath), needle), "\(stage): \(name) in the log")
            }
        }
        scan("live")
        // positive control: the scan does find what the files do hold (the path is metadata)
        #expect(contains(fileBytes(d.dbPath) + fileBytes(d.dbPath + "-wal"), Array("canary/value".utf8)))
        let ck = try run("/usr/bin/sqlite3", [d.dbPath, "PRAGMA wal_checkpoint(TRUNCATE);"])
        #expect(ck.status == 0, "\(ck.stderr)")
        scan("after checkpoint")
        d.stop()
        scan("after shutdown")
        #expect(fileBytes(d.dbPath).count > 0)
    }

    /// Copying version 1's sealed row of secret A onto secret B makes B fail its
    /// integrity check; A still reads; the daemon keeps serving.
    @Test func rowSwapIsAnIntegrityError() throws {
        let d = try Daemon(sqlite: true)
        try d.start()
        _ = try d.coffer(["secret", "put", "swap/a"], stdin: Array("alpha".utf8))
        _ = try d.coffer(["secret", "put", "swap/b"], stdin: Array("bravo".utf8))
        let sql = """
            UPDATE secret_version SET
              wrapped_key = (SELECT v.wrapped_key FROM secret_version v JOIN secret s ON s.id = v.secret_id WHERE s.path = 'swap/a' AND v.version = 1),
              ciphertext = (SELECT v.ciphertext FROM secret_version v JOIN secret s ON s.id = v.secret_id WHERE s.path = 'swap/a' AND v.version = 1)
            WHERE version = 1 AND secret_id = (SELECT id FROM secret WHERE path = 'swap/b');
            SELECT changes();
            """
        let r = try run("/usr/bin/sqlite3", ["-cmd", ".timeout 5000", d.dbPath, sql])
        #expect(r.status == 0 && r.out.trimmingCharacters(in: .whitespacesAndNewlines) == "1", "\(r.stderr)")
        let (code, body) = try d.curl("GET", "/v1/secrets/data/swap/b")
        #expect(code == 500)
        #expect(errorCode(body) == "integrity_error")
        #expect(!body.contains("alpha"))
        let cli = try d.coffer(["secret", "get", "swap/b"])
        #expect(cli.status == 1)
        #expect(cli.stderr.contains("failed its integrity check"))
        #expect(cli.stdout.isEmpty)
        #expect(try d.coffer(["secret", "get", "swap/a"]).stdout == Array("alpha".utf8))
        // moving a version's row to another version number fails the same way
        _ = try d.coffer(["secret", "put", "swap/a"], stdin: Array("alpha2".utf8))
        let r2 = try run("/usr/bin/sqlite3", ["-cmd", ".timeout 5000", d.dbPath, """
            DELETE FROM secret_version WHERE version = 1 AND secret_id = (SELECT id FROM secret WHERE path = 'swap/a');
            UPDATE secret_version SET version = 1 WHERE version = 2 AND secret_id = (SELECT id FROM secret WHERE path = 'swap/a');
            """])
        #expect(r2.status == 0, "\(r2.stderr)")
        #expect(errorCode(try d.curl("GET", "/v1/secrets/data/swap/a?version=1").1) == "integrity_error")
        #expect(try d.curl("GET", "/v1/sys/health").0 == 200)
    }

    /// A wrong, missing or loose key file: the daemon refuses to start with a clear
    /// message and the database file is byte-identical afterwards.
    @Test func wrongOrMissingKeyRefusesToStart() throws {
        let d = try Daemon(sqlite: true)
        try d.start()
        _ = try d.coffer(["secret", "put", "k/x"], stdin: Array("v".utf8))
        d.stop()
        let dbBefore = fileBytes(d.dbPath)
        #expect(!dbBefore.isEmpty)
        let saved = d.dir + "/saved.key"
        try FileManager.default.moveItem(atPath: d.keyPath, toPath: saved)

        // missing
        _ = try d.launch()
        #expect(try d.waitForExit() != 0)
        #expect(d.log.contains("cofferd: error: the key file \(d.keyPath) does not exist"))
        #expect(fileBytes(d.dbPath) == dbBefore)

        // another valid key
        let other = try Daemon(sqlite: true)  // a second installation's key
        try FileManager.default.copyItem(atPath: other.keyPath, toPath: d.keyPath)
        _ = try d.launch()
        #expect(try d.waitForExit() != 0)
        #expect(d.log.contains("does not unlock the database"))
        #expect(fileBytes(d.dbPath) == dbBefore)
        try FileManager.default.removeItem(atPath: d.keyPath)

        // the right key, but readable by others
        try FileManager.default.copyItem(atPath: saved, toPath: d.keyPath)
        chmod(d.keyPath, 0o644)
        _ = try d.launch()
        #expect(try d.waitForExit() != 0)
        #expect(d.log.contains("accessible by group or others"))
        #expect(fileBytes(d.dbPath) == dbBefore)

        // the right key again: starts and reads
        chmod(d.keyPath, 0o400)
        try d.start()
        #expect(try d.coffer(["secret", "get", "k/x"]).stdout == Array("v".utf8))
        // and init refuses to overwrite the key or the database
        d.stop()
        let again = try run(Bins.cofferd, ["init", "--config", d.configPath])
        #expect(again.status != 0)
        #expect(again.stderr.hasPrefix("cofferd: error:"))
    }

    /// The daemon is not dumpable and may not write core files (invariant 8). Run
    /// unprivileged (dev mode as the test user): a non-dumpable process's /proc
    /// entries belong to root, not to the process's own uid.
    @Test func daemonIsNotDumpable() throws {
        let user = TestUser.nonAdmin
        var template = Array("/tmp/cfdev.XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestError.failed("mkdtemp") }
        let dir = String(cString: p)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        chown(dir, user.uid, user.gid)
        chmod(dir, 0o755)
        let bin = dir + "/cofferd"
        try FileManager.default.copyItem(atPath: Bins.cofferd, toPath: bin)
        chmod(bin, 0o755)
        let proc = Process()
        proc.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        proc.arguments = ["--reuid=\(user.uid)", "--regid=\(user.gid)", "--clear-groups", "--", bin, "dev", "--dir", dir]
        proc.standardOutput = FileHandle.nullDevice
        proc.standardError = FileHandle.nullDevice
        try proc.run()
        defer { kill(proc.processIdentifier, SIGKILL); proc.waitUntilExit() }
        let socket = dir + "/.coffer/coffer.sock"
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: socket) && Date() < deadline { usleep(20_000) }
        // setpriv execs cofferd: same pid
        let pid = proc.processIdentifier
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        #expect(status.contains("Uid:\t\(user.uid)"), "cofferd runs as the test user")
        var st = stat()
        #expect(stat("/proc/\(pid)/status", &st) == 0)
        #expect(st.st_uid == 0, "non-dumpable: /proc/PID belongs to root")
        let limits = (try? String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8)) ?? ""
        let core = limits.split(separator: "\n").first { $0.hasPrefix("Max core file size") } ?? ""
        #expect(core.split(separator: " ", omittingEmptySubsequences: true).dropFirst(4).prefix(2) == ["0", "0"], "\(core)")
        // unprivileged dev mode works, and the caller is admin there
        let r = try run(user.wrap(Bins.sharedCoffer, ["--socket", socket, "status"]).0, user.wrap(Bins.sharedCoffer, ["--socket", socket, "status"]).1)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.out.contains("status: holds role admin"), "\(r.out)")
    }
}
