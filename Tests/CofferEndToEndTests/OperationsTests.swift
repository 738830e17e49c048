import Foundation
import Testing

/// The newcomer's frictions (issue "Operating Coffer"), each with the command that
/// showed it.
@Suite struct OperationsTests {
    /// `--version` is the root's only: on a subcommand it is an unknown option (a
    /// destroy that printed the version and destroyed nothing was the worst surprise).
    @Test func versionIsTheRootsAloneAndUsageErrorsSpeakLikeTheRest() throws {
        let d = try Daemon()
        try d.start()
        #expect(try d.coffer(["secret", "put", "scratch/x"], stdin: Array("v1".utf8)).status == 0)
        let v = try run(Bins.coffer, ["--version"])
        #expect(v.status == 0 && v.out.split(separator: ".").count == 3, "\(v.out)")
        for verb in ["destroy", "delete", "versions"] {
            let r = try d.coffer(["secret", verb, "scratch/x", "--version", "1"])
            #expect(r.status == 64 && r.stderr.hasPrefix("coffer: error: ") && r.stderr.contains("--version") && !r.out.contains(v.out), "\(verb): \(r.status) \(r.out) \(r.stderr)")
        }
        #expect(try d.coffer(["secret", "get", "scratch/x"]).out == "v1")
        let help = try d.coffer(["secret", "get", "--help"])
        #expect(help.out.split(separator: "\n").filter { $0.trimmingCharacters(in: .whitespaces).hasPrefix("--version") }.count == 1,
                "--version listed once among the options: \(help.out)")
        let bad = try d.coffer(["token", "create", "--bogus"])
        #expect(bad.status == 64 && bad.stderr.hasPrefix("coffer: error: ") && !bad.stderr.contains("Error:"), "\(bad.stderr)")
    }

    /// A policy file created after the daemon started loads at the next reload (and
    /// at SIGHUP, which says so in the log); before it exists the reload says why.
    @Test func aPolicyFileCreatedAfterStartLoads() throws {
        let d = try Daemon()
        try d.start()
        #expect(!FileManager.default.fileExists(atPath: d.policyPath))
        var r = try d.coffer(["policy", "reload"])
        #expect(r.status != 0 && r.stderr.contains("does not exist"), "\(r.stderr)")
        try """
            [role.admin]
            [[role.admin.rule]]
            path = "**"
            capabilities = ["read", "list", "write", "admin", "audit"]
            [role.ci-build]
            [[role.ci-build.rule]]
            path = "ci/**"
            capabilities = ["read"]
            [[bind]]
            subjects = ["uid:0"]
            roles = ["admin"]
            """.write(toFile: d.policyPath, atomically: true, encoding: .utf8)
        r = try d.coffer(["policy", "reload"])
        #expect(r.status == 0, "\(r.stderr)")
        r = try d.coffer(["token", "create", "--role", "ci-build", "--ttl", "10m"])
        #expect(r.status == 0, "the new policy's role: \(r.stderr)")
        // SIGHUP reloads too, and says so
        try (try String(contentsOfFile: d.policyPath, encoding: .utf8) + "\n[role.extra]\n").write(toFile: d.policyPath, atomically: true, encoding: .utf8)
        kill(d.pid!, SIGHUP)
        #expect(CredentialTests.waitFor(5) { d.log.contains("SIGHUP: reloading the policy") && d.log.contains("policy reloaded") }, "\(d.log.suffix(600))")
    }

    /// Offline verify of a live daemon's database: its newest events are not signed
    /// yet. That is said as such (exit 10), not as tampering (exit 9); once the
    /// daemon stops (it signs its head) the same check passes.
    @Test func offlineVerifyOfALiveDatabaseIsNoFalseAlarm() throws {
        let d = try Daemon(config: "[audit]\ncheckpoint_seconds = 3600\ncheckpoint_events = 100000\n")
        try d.start()
        for i in 0..<3 { _ = try d.coffer(["secret", "put", "ops/s\(i)"], stdin: Array("v".utf8)) }
        var r = try run(Bins.coffer, ["audit", "verify", "--db", d.dbPath, "--pubkey", d.dir + "/state/audit.pub"])
        #expect(r.status == 10 && r.out.hasPrefix("UNSIGNED TAIL") && !r.out.contains("BAD"), "\(r.status) \(r.out) \(r.stderr)")
        d.stop()
        r = try run(Bins.coffer, ["audit", "verify", "--db", d.dbPath, "--pubkey", d.dir + "/state/audit.pub"])
        #expect(r.status == 0 && r.out.hasPrefix("OK"), "\(r.out)")
    }

    /// Smaller frictions: an empty value from a forgotten pipe, an export over an
    /// existing archive, `--since 1h`.
    @Test func smallFrictions() throws {
        let d = try Daemon()
        try d.start()
        var r = try d.coffer(["secret", "put", "ops/empty"])
        #expect(r.status == 7 && r.stderr.contains("the value is empty") && r.stderr.contains("--allow-empty"), "\(r.stderr)")
        #expect(try d.coffer(["secret", "get", "ops/empty"]).status == 4, "nothing was stored")
        #expect(try d.coffer(["secret", "put", "ops/empty", "--allow-empty"]).status == 0)
        let archive = d.dir + "/archive.jsonl"
        try "keep me\n".write(toFile: archive, atomically: true, encoding: .utf8)
        r = try d.coffer(["audit", "export", "--output", archive])
        #expect(r.status == 7 && r.stderr.contains("must not exist"), "\(r.stderr)")
        #expect(try String(contentsOfFile: archive, encoding: .utf8) == "keep me\n")
        r = try d.coffer(["audit", "search", "--since", "1h", "--format", "json"])
        #expect(r.status == 0 && r.out.contains("ops/empty"), "\(r.status) \(r.stderr)")
        r = try d.coffer(["audit", "search", "--since", "1x"])
        #expect(r.status != 0)
    }

    /// Another user's `.coffer/` above the working directory is passed over (anyone
    /// may plant /tmp/.coffer); in the working directory itself it is refused loudly.
    @Test func aPlantedSocketAboveIsPassedOverAndRefusedHere() throws {
        var template = Array("/tmp/cfplant.XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestError.failed("mkdtemp") }
        let dir = String(cString: p)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        chmod(dir, 0o777)
        let mallory = TestUser.nonAdmin
        let (exe, args) = mallory.wrap("/usr/bin/python3", ["-c", "import os, socket; os.mkdir('\(dir)/.coffer', 0o755); socket.socket(socket.AF_UNIX).bind('\(dir)/.coffer/coffer.sock')"])
        #expect(try run(exe, args).status == 0)
        try FileManager.default.createDirectory(atPath: dir + "/work", withIntermediateDirectories: true)
        let below = try run(Bins.coffer, ["status"], cwd: dir + "/work")
        #expect(below.status == 3 && below.stderr.contains("/run/coffer/coffer.sock") && !below.stderr.contains("refusing"), "\(below.stderr)")
        let here = try run(Bins.coffer, ["status"], cwd: dir)
        #expect(here.status == 7 && here.stderr.contains("refusing to use the socket"), "\(here.stderr)")
    }

    /// contrib/install into a DESTDIR: the tree, completions that bash takes, binaries
    /// that run, configs never overwritten, and an uninstall that leaves only them.
    @Test func installAndUninstallIntoADestdir() throws {
        var template = Array("/tmp/cfinst.XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestError.failed("mkdtemp") }
        let dest = String(cString: p)
        defer { try? FileManager.default.removeItem(atPath: dest) }
        let script = Bins.packageRoot + "/contrib/install"
        var r = try run("/bin/bash", [script, "--destdir", dest, "--prefix", "/opt/coffer", "--bin", Bins.dir])
        #expect(r.status == 0, "\(r.stderr)")
        for f in ["/opt/coffer/sbin/cofferd", "/opt/coffer/bin/coffer", "/opt/coffer/bin/coffer-cli", "/lib/systemd/system/cofferd.service",
                  "/usr/lib/tmpfiles.d/coffer.conf", "/usr/lib/sysusers.d/coffer.conf", "/etc/pam.d/coffer", "/etc/coffer/cofferd.toml",
                  "/etc/coffer/policy.toml", "/opt/coffer/share/coffer/pam.d/sshd-coffer", "/opt/coffer/share/bash-completion/completions/coffer",
                  "/opt/coffer/share/zsh/site-functions/_coffer", "/opt/coffer/share/fish/vendor_completions.d/coffer.fish"] {
            #expect(FileManager.default.fileExists(atPath: dest + f), "\(f) missing")
        }
        let unit = try String(contentsOfFile: dest + "/lib/systemd/system/cofferd.service", encoding: .utf8)
        #expect(unit.contains("ExecStart=/opt/coffer/sbin/cofferd serve"))
        #expect(try String(contentsOfFile: dest + "/opt/coffer/share/coffer/pam.d/sshd-coffer", encoding: .utf8).contains("/opt/coffer/bin/coffer ssh pam-session"))
        r = try run("/bin/bash", ["-c", "source \(dest)/opt/coffer/share/bash-completion/completions/coffer && complete -p coffer"])
        #expect(r.status == 0 && r.out.contains("coffer"), "\(r.out) \(r.stderr)")
        r = try run(dest + "/opt/coffer/bin/coffer", ["--version"])
        #expect(r.status == 0 && !r.out.isEmpty, "\(r.stderr)")
        // a second install keeps the configs in use and puts the examples beside
        try "# mine\n".write(toFile: dest + "/etc/coffer/cofferd.toml", atomically: true, encoding: .utf8)
        r = try run("/bin/bash", [script, "--destdir", dest, "--prefix", "/opt/coffer", "--bin", Bins.dir])
        let mine = try String(contentsOfFile: dest + "/etc/coffer/cofferd.toml", encoding: .utf8)
        #expect(r.status == 0 && mine == "# mine\n")
        #expect(FileManager.default.fileExists(atPath: dest + "/opt/coffer/share/coffer/examples/cofferd.toml"))
        r = try run("/bin/bash", [script, "--destdir", dest, "--prefix", "/opt/coffer", "--uninstall"])
        #expect(r.status == 0, "\(r.stderr)")
        let left = (FileManager.default.enumerator(atPath: dest)?.allObjects as? [String] ?? []).filter { path in
            var isDir: ObjCBool = false
            return FileManager.default.fileExists(atPath: dest + "/" + path, isDirectory: &isDir) && !isDir.boolValue
        }.sorted()
        #expect(left == ["etc/coffer/cofferd.toml", "etc/coffer/policy.toml", "etc/pam.d/coffer"], "\(left)")
    }

    /// Under systemd's journal (JOURNAL_STREAM) lines carry `<N>` priorities and no
    /// time of their own; `--log-format json` writes one object per line.
    @Test func logFormatsForTheJournalAndForShippers() throws {
        let d = try Daemon()
        for (format, env) in [("auto", ["JOURNAL_STREAM": "8:12345"]), ("json", [:])] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Bins.cofferd)
            p.arguments = ["serve", "--config", d.configPath, "--log-format", format]
            var e = ProcessInfo.processInfo.environment
            for (k, v) in env { e[k] = v }
            p.environment = e
            let log = d.dir + "/\(format).log"
            FileManager.default.createFile(atPath: log, contents: nil)
            let h = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            p.standardError = h
            p.standardOutput = h
            try p.run()
            d.adopt(p)
            #expect(CredentialTests.waitFor(20) { (try? d.curl("GET", "/v1/sys/health").0) == 200 })
            d.stop()
            let lines = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n")
            #expect(!lines.isEmpty)
            if format == "auto" {
                #expect(lines.allSatisfy { $0.hasPrefix("<") && $0.dropFirst().first?.isNumber == true && !$0.contains("T0") }, "\(lines.prefix(3))")
            } else {
                #expect(lines.allSatisfy { l in (try? JSONSerialization.jsonObject(with: Data(l.utf8))) is [String: Any] }, "\(lines.prefix(3))")
                #expect(lines.contains { $0.contains("\"level\":\"info\"") && $0.contains("\"message\"") })
            }
        }
    }

    /// systemd's notify protocol without systemd: a datagram socket of the test's as
    /// NOTIFY_SOCKET hears READY=1, watchdog pings, RELOADING=1/READY=1 around a
    /// SIGHUP reload, and STOPPING=1 at SIGTERM.
    @Test func notifyProtocolReachesAListener() throws {
        let d = try Daemon()
        let path = d.dir + "/notify.sock"
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let bound = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var heard: [String] = []
        func listen(until: Double, _ done: ([String]) -> Bool) {
            let deadline = Date().addingTimeInterval(until)
            var buf = [UInt8](repeating: 0, count: 4096)
            while Date() < deadline && !done(heard) {
                let n = recv(fd, &buf, buf.count, 0)
                if n > 0 { heard.append(String(decoding: buf[0..<n], as: UTF8.self)) }
            }
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Bins.cofferd)
        p.arguments = ["serve", "--config", d.configPath]
        var env = ProcessInfo.processInfo.environment
        env["NOTIFY_SOCKET"] = path
        env["WATCHDOG_USEC"] = "400000"
        p.environment = env
        p.standardError = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        d.adopt(p)
        listen(until: 20) { h in h.contains { $0.hasPrefix("READY=1") } && h.contains("WATCHDOG=1") }
        #expect(heard.contains { $0.hasPrefix("READY=1") && $0.contains("STATUS=serving on \(d.socket)") && $0.contains("MAINPID=\(p.processIdentifier)") },
                "\(heard)")
        #expect(heard.contains("WATCHDOG=1"), "\(heard)")
        try "[role.admin]\n".write(toFile: d.policyPath, atomically: true, encoding: .utf8)
        heard = []
        kill(p.processIdentifier, SIGHUP)
        listen(until: 10) { h in h.contains { $0.hasPrefix("READY=1") } }
        let reload = heard.filter { $0 != "WATCHDOG=1" }
        #expect(reload.count >= 2 && reload[0].hasPrefix("RELOADING=1\nMONOTONIC_USEC=") && reload[1].hasPrefix("READY=1"), "\(heard)")
        heard = []
        kill(p.processIdentifier, SIGTERM)
        listen(until: 10) { h in h.contains("STOPPING=1") }
        #expect(heard.contains("STOPPING=1"), "\(heard)")
        p.waitUntilExit()
    }

    /// `cofferd init` names why it cannot read the config.
    @Test func aConfigThatCannotBeReadSaysWhy() throws {
        let r = try run(Bins.cofferd, ["init", "--config", "/nonexistent/cofferd.toml"])
        #expect(r.status != 0 && r.stderr.contains("cannot read the config file /nonexistent/cofferd.toml: it does not exist"), "\(r.stderr)")
    }
}
