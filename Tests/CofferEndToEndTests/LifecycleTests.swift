import CofferClient
import Foundation
import Testing

@Suite(.serialized) struct LifecycleTests {
    /// Every acknowledged put survives kill -9 and a restart; the stale socket left
    /// behind is replaced.
    @Test func acknowledgedPutsSurviveKill9() throws {
        let d = try Daemon(sqlite: true)
        try d.start()
        var acknowledged: [(String, [UInt8])] = []
        for i in 0..<40 {
            let value = Array("value-\(i)-\(UUID().uuidString)".utf8)
            let path = "durable/s\(i % 10)"
            let r = try d.coffer(["secret", "put", path], stdin: value)
            if r.status == 0 { acknowledged.append((path, value)) }
        }
        #expect(acknowledged.count == 40)
        d.kill9()
        var st = stat()
        #expect(lstat(d.socket, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK, "kill -9 leaves a stale socket")
        try d.start()
        // the latest value of each path, and every retained version, read back exactly
        var latest: [String: [UInt8]] = [:]
        for (p, v) in acknowledged { latest[p] = v }
        for (p, v) in latest {
            #expect(try d.coffer(["secret", "get", p]).stdout == v, "\(p)")
        }
        for (i, (p, v)) in acknowledged.enumerated() {
            #expect(try d.coffer(["secret", "get", p, "--version", "\(i / 10 + 1)"]).stdout == v)
        }
        let check = try run("/usr/bin/sqlite3", [d.dbPath, "PRAGMA integrity_check;"])
        #expect(check.out.trimmingCharacters(in: .whitespacesAndNewlines) == "ok")
    }

    /// A live daemon's socket is never taken over; the second daemon says why.
    @Test func liveSocketIsNotReplaced() throws {
        let d = try Daemon()
        try d.start()
        _ = try d.coffer(["secret", "put", "live/x"], stdin: Array("v".utf8))
        let second = Process()
        second.executableURL = URL(fileURLWithPath: Bins.cofferd)
        second.arguments = ["serve", "--config", d.configPath]
        let errFile = d.dir + "/second.log"
        FileManager.default.createFile(atPath: errFile, contents: nil)
        second.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errFile))
        second.standardOutput = FileHandle.nullDevice
        try second.run()
        second.waitUntilExit()
        #expect(second.terminationStatus != 0)
        let msg = (try? String(contentsOfFile: errFile, encoding: .utf8)) ?? ""
        // the state directory's lock is taken first (one daemon per state directory)
        #expect(msg.contains("cofferd: error: another cofferd is already using the state directory"), "\(msg)")
        #expect(try d.coffer(["secret", "get", "live/x"]).stdout == Array("v".utf8))
    }

    /// Socket mode and group come from config; a user outside the group cannot connect.
    @Test func socketModeAndGroupFromConfig() throws {
        let group = "coffer-e2e"
        if getgrnam(group) == nil { _ = try run("/usr/sbin/groupadd", ["--system", group]) }
        let gid = try #require(getgrnam(group)?.pointee.gr_gid)
        let d = try Daemon(config: "", socketMode: "0660", initialise: true)
        // socket_group goes into [server]: rewrite the config with it
        var text = try String(contentsOfFile: d.configPath, encoding: .utf8)
        text = text.replacingOccurrences(of: "socket_mode = \"0660\"", with: "socket_mode = \"0660\"\nsocket_group = \"\(group)\"")
        try text.write(toFile: d.configPath, atomically: true, encoding: .utf8)
        try d.start()
        var st = stat()
        #expect(stat(d.socket, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o660)
        #expect(st.st_gid == gid)
        let r = try d.coffer(["status"], as: TestUser.nonAdmin)
        #expect(r.status == 3)
        #expect(r.stderr.contains("Permission denied"))
        #expect(r.stderr.contains("coffer: hint:"))
    }

    /// The README's first command: `cofferd dev` in an empty directory creates its
    /// key and state, serves, and reuses both on the next start.
    @Test func devModeFromScratch() throws {
        var template = Array("/tmp/cfdev.XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestError.failed("mkdtemp") }
        let dir = String(cString: p)
        chmod(dir, 0o755)  // only .coffer/ itself keeps others out
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func startDev() throws -> (Process, String) {
            let proc = Process()
            proc.executableURL = URL(fileURLWithPath: Bins.cofferd)
            proc.arguments = ["dev"]
            proc.currentDirectoryURL = URL(fileURLWithPath: dir)
            let log = dir + "/dev-\(UUID().uuidString).log"
            FileManager.default.createFile(atPath: log, contents: nil)
            let h = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            proc.standardError = h
            proc.standardOutput = h
            try proc.run()
            let deadline = Date().addingTimeInterval(20)
            while Date() < deadline {
                if (try? CofferClient(socketPath: dir + "/.coffer/coffer.sock").health()) != nil { break }
                usleep(20_000)
            }
            return (proc, log)
        }
        var (proc, log) = try startDev()
        let banner = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(banner.contains("export COFFER_SOCKET=\(dir)/.coffer/coffer.sock"))
        var st = stat()
        #expect(stat(dir + "/keys/dev/root.key", &st) == 0 && st.st_mode & 0o777 == 0o400)
        #expect(stat(dir + "/.coffer", &st) == 0 && st.st_mode & 0o777 == 0o700)
        #expect(stat(dir + "/.coffer/coffer.sock", &st) == 0 && st.st_mode & 0o777 == 0o600)
        // coffer finds ./.coffer/coffer.sock by itself when run in that directory
        let put = try run(Bins.coffer, ["secret", "put", "demo/hello"], stdin: Array("s3cr3t".utf8), cwd: dir)
        #expect(put.status == 0, "\(put.stderr)")
        kill(proc.processIdentifier, SIGTERM)
        proc.waitUntilExit()
        #expect(proc.terminationStatus == 0)
        (proc, log) = try startDev()
        defer { kill(proc.processIdentifier, SIGKILL); proc.waitUntilExit() }
        let get = try run(Bins.coffer, ["secret", "get", "demo/hello"], env: ["COFFER_SOCKET": dir + "/.coffer/coffer.sock"])
        #expect(get.stdout == Array("s3cr3t".utf8), "\(get.stderr)")
        #expect(!((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("created a dev root key"))
        // the README's CI story works in dev mode: the dev policy has a ci-build role
        let tok = try run(Bins.coffer, ["token", "create", "--role", "ci-build", "--paths", "ci/app/**", "--ttl", "30m"], cwd: dir)
        #expect(tok.status == 0, "\(tok.stderr)")
        // another local user is told why the dev socket is closed to them
        let other = try run("/usr/bin/setpriv", ["--reuid=\(TestUser.nonAdmin.uid)", "--regid=\(TestUser.nonAdmin.gid)", "--clear-groups", "--",
                                              Bins.sharedCoffer, "--socket", dir + "/.coffer/coffer.sock", "status"])
        #expect(other.status == 3 && other.stderr.contains("private to its owner") && !other.stderr.contains("socket's group"), "\(other.stderr)")
        // from a subdirectory of the checkout, the nearest .coffer/ is found (not the installed socket), and status names it
        try FileManager.default.createDirectory(atPath: dir + "/sub/deeper", withIntermediateDirectories: true)
        let deep = try run(Bins.coffer, ["secret", "get", "demo/hello"], cwd: dir + "/sub/deeper")
        #expect(deep.stdout == Array("s3cr3t".utf8), "\(deep.stderr)")
        let status = try run(Bins.coffer, ["status"], cwd: dir + "/sub/deeper")
        #expect(status.out.contains("socket:        \(dir)/.coffer/coffer.sock"), "\(status.out)")
    }
}
