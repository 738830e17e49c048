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
        let d = try Daemon(sqlite: true, config: "[audit]\ncheckpoint_seconds = 3600\ncheckpoint_events = 100000\n")
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
        // a misspelt action is named, with the ones there are; a known one not yet seen is no error
        r = try d.coffer(["audit", "search", "--action", "reed"])
        #expect(r.status == 7 && r.stderr.contains("unknown action 'reed'") && r.stderr.contains("read, read_metadata"), "\(r.stderr)")
        r = try d.coffer(["audit", "search", "--action", "destroy"])
        #expect(r.status == 0 && r.out.isEmpty, "\(r.stderr)")
        r = try d.coffer(["audit", "search", "--action", "write"])
        #expect(r.status == 0 && r.out.contains("ops/empty"), "\(r.stderr)")
        // checkpoints are named where a prune needs them
        r = try d.coffer(["audit", "verify"])
        #expect(r.status == 0 && r.out.contains("checkpoints at seq ") && r.out.contains("audit prune --through"), "\(r.out)")
        r = try d.coffer(["audit", "verify", "--format", "json"])
        #expect(r.out.contains("\"latest_checkpoints\" : ["), "\(r.out)")
        // --ttl in bare seconds; --paths takes commas as --versions does; uses say their limit
        r = try d.coffer(["token", "create", "--role", "admin", "--ttl", "90", "--paths", "ops/*,ci/*", "--format", "json"])
        #expect(r.status == 0, "\(r.stderr)")
        let created = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any]
        let info = created?["info"] as? [String: Any]
        #expect(info?["paths"] as? [String] == ["ops/*", "ci/*"] && (info?["ttl_remaining_seconds"] as? Int ?? 0) <= 90, "\(r.out)")
        r = try d.coffer(["token", "create", "--role", "admin", "--ttl", "30"])
        #expect(r.status == 0 && r.stderr.contains("uses:       0 made, no limit"), "\(r.stderr)")
        r = try d.coffer(["token", "create", "--role", "admin", "--uses", "3"])
        #expect(r.status == 0 && r.stderr.contains("uses:       0 made, 3 left"), "\(r.stderr)")
        // token create --output keeps the shape of stdout's JSON (info), naming the file
        let tokenFile = d.dir + "/t.token"
        r = try d.coffer(["token", "create", "--role", "admin", "--output", tokenFile, "--format", "json"])
        let written = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any]
        #expect(r.status == 0 && (written?["info"] as? [String: Any])?["accessor"] != nil && written?["output"] as? String == tokenFile
                && written?["token"] == nil, "\(r.out)")
        // a folder with nothing in it is not found; the root always exists
        r = try d.coffer(["secret", "list", "nope"])
        #expect(r.status == 4 && r.stderr.contains("nothing under 'nope'"), "\(r.status) \(r.stderr)")
        #expect(try d.coffer(["secret", "list", "ops"]).out.split(separator: "\n") == ["empty"])
        // the offline policy check speaks JSON too
        let policy = d.dir + "/check.toml"
        try "[role.admin]\n[[role.admin.rule]]\npath = \"**\"\ncapabilities = [\"read\"]\n".write(toFile: policy, atomically: true, encoding: .utf8)
        r = try run(Bins.coffer, ["policy", "check", "--format", "json", policy])
        let check = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any]
        #expect(r.status == 0 && check?["ok"] as? Bool == true && (check?["roles"] as? [String])?.contains("admin") == true, "\(r.out) \(r.stderr)")
        try "[role.admin]\nbogus = 1\n".write(toFile: policy, atomically: true, encoding: .utf8)
        r = try run(Bins.coffer, ["policy", "check", "--format", "json", policy])
        let failed = try? JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any]
        #expect(r.status == 7 && failed?["ok"] as? Bool == false && (failed?["error"] as? String)?.contains("check.toml:2") == true,
                "\(r.out) \(r.stderr)")
        // global options before the subcommand
        r = try run(Bins.coffer, ["--socket", d.socket, "secret", "get", "ops/empty"])
        #expect(r.status == 0, "\(r.stderr)")
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
                  "/opt/coffer/share/zsh/site-functions/_coffer", "/opt/coffer/share/fish/vendor_completions.d/coffer.fish",
                  "/lib/systemd/system/cofferd.socket", "/opt/coffer/share/coffer/systemd/no-daemon-mounts.conf",
                  "/opt/coffer/share/man/man1/coffer.1", "/opt/coffer/share/man/man1/coffer.secret.get.1", "/opt/coffer/share/man/man8/cofferd.8",
                  "/opt/coffer/share/man/man8/cofferd.serve.8"] {
            #expect(FileManager.default.fileExists(atPath: dest + f), "\(f) missing")
        }
        let unit = try String(contentsOfFile: dest + "/lib/systemd/system/cofferd.service", encoding: .utf8)
        #expect(unit.contains("ExecStart=/opt/coffer/sbin/cofferd serve"))
        #expect(try String(contentsOfFile: dest + "/opt/coffer/share/coffer/pam.d/sshd-coffer", encoding: .utf8).contains("/opt/coffer/bin/coffer ssh pam-session"))
        r = try run("/bin/bash", ["-c", "source \(dest)/opt/coffer/share/bash-completion/completions/coffer && complete -p coffer"])
        #expect(r.status == 0 && r.out.contains("coffer"), "\(r.out) \(r.stderr)")
        // the pages render (man-db's man, as a reader would)
        r = try run("/usr/bin/man", ["-l", "-P", "cat", dest + "/opt/coffer/share/man/man1/coffer.secret.get.1"], env: ["MANWIDTH": "100"])
        #expect(r.status == 0 && r.out.contains("coffer secret get") && r.out.contains("--version"), "\(r.out) \(r.stderr)")
        r = try run("/usr/bin/man", ["-l", "-P", "cat", dest + "/opt/coffer/share/man/man8/cofferd.8"], env: ["MANWIDTH": "100"])
        #expect(r.status == 0 && r.out.contains("cofferd") && r.out.contains("serve"), "\(r.out) \(r.stderr)")
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

    /// The installer runs as root over trees others may have touched: a link another
    /// user planted in DESTDIR is refused before anything is written, an edited
    /// manifest makes --uninstall remove nothing but Coffer's own files, PREFIX is a
    /// plain path, and relative paths are the caller's.
    @Test func theInstallerCannotBeTurnedAgainstRoot() throws {
        var template = Array("/tmp/cfinsx.XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestError.failed("mkdtemp") }
        let base = String(cString: p)
        defer { try? FileManager.default.removeItem(atPath: base) }
        chmod(base, 0o755)
        let script = Bins.packageRoot + "/contrib/install"
        let victim = base + "/victim"
        try "SECRET\n".write(toFile: victim, atomically: true, encoding: .utf8)
        chmod(victim, 0o600)
        // another user's staging tree, with a link to the victim where the unit goes
        let user = TestUser.nonAdmin
        let stage = base + "/stage"
        let (e1, a1) = user.wrap("/bin/sh", ["-c", "mkdir -p \(stage)/lib/systemd/system && ln -s \(victim) \(stage)/lib/systemd/system/cofferd.service"])
        chown(base, user.uid, user.gid)
        #expect(try run(e1, a1).status == 0)
        chown(base, 0, 0)
        var r = try run("/bin/bash", [script, "--destdir", stage, "--bin", Bins.dir])
        #expect(r.status != 0 && r.stderr.contains("refusing to write through") && r.stderr.contains("belongs to uid \(user.uid)"), "\(r.stderr)")
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "SECRET\n")
        var st = stat()
        #expect(stat(victim, &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(!FileManager.default.fileExists(atPath: stage + "/usr/local/bin/coffer"), "nothing was written")
        // a root-owned tree: installs; then an edited manifest removes only Coffer's files
        let own = base + "/own"
        r = try run("/bin/bash", [script, "--destdir", own, "--bin", Bins.dir])
        #expect(r.status == 0, "\(r.stderr)")
        let manifest = own + "/usr/local/share/coffer/installed-files"
        let keep = base + "/keep-me"
        try "keep\n".write(toFile: keep, atomically: true, encoding: .utf8)
        try (try String(contentsOfFile: manifest, encoding: .utf8) + "/../keep-me\n/etc/coffer/cofferd.toml\n").write(toFile: manifest, atomically: true, encoding: .utf8)
        r = try run("/bin/bash", [script, "--destdir", own, "--uninstall"])
        #expect(r.status == 0 && r.stderr.contains("skipping /../keep-me"), "\(r.stderr)")
        #expect(FileManager.default.fileExists(atPath: keep) && FileManager.default.fileExists(atPath: own + "/etc/coffer/cofferd.toml"))
        #expect(!FileManager.default.fileExists(atPath: own + "/usr/local/bin/coffer"))
        // PREFIX: a plain absolute path only
        for bad in ["/opt/R&D", "/../escape", "relative", "/x;id|e"] {
            r = try run("/bin/bash", [script, "--destdir", base + "/p", "--prefix", bad, "--bin", Bins.dir])
            #expect(r.status == 2 && r.stderr.contains("--prefix"), "\(bad): \(r.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: base + "/p"))
        // relative --destdir is the caller's, not the checkout's
        try FileManager.default.createDirectory(atPath: base + "/cwd", withIntermediateDirectories: true)
        r = try run("/bin/bash", [script, "--destdir", "rel", "--bin", Bins.dir], cwd: base + "/cwd")
        #expect(r.status == 0 && FileManager.default.fileExists(atPath: base + "/cwd/rel/usr/local/bin/coffer"), "\(r.stderr)")
    }

    /// contrib/man is current: every command of coffer and cofferd has its page, and
    /// every option of a command appears in it (contrib/dev/man regenerates them).
    @Test func manPagesCoverEveryCommandAndOption() throws {
        let man = Bins.packageRoot + "/contrib/man"
        func walk(_ command: [String: Any], _ prefix: [String], section: String, missing: inout [String]) throws {
            let name = prefix.joined(separator: ".")
            let page = man + "/" + name + "." + section
            guard let text = try? String(contentsOfFile: page, encoding: .utf8) else {
                missing.append("no page \(name).\(section)")
                return
            }
            for argument in command["arguments"] as? [[String: Any]] ?? [] {
                guard let names = argument["names"] as? [[String: Any]], (argument["shouldDisplay"] as? Bool ?? true) else { continue }
                for n in names where n["kind"] as? String == "long" {
                    let option = "--" + (n["name"] as? String ?? "")
                    // mdoc writes options as "Fl -name" (the dash of the flag macro added)
                    if !text.contains("Fl -" + (n["name"] as? String ?? "")) && !text.contains(option) {
                        missing.append("\(name).\(section) lacks \(option)")
                    }
                }
            }
            for sub in command["subcommands"] as? [[String: Any]] ?? [] {
                try walk(sub, prefix + [sub["commandName"] as? String ?? "?"], section: section, missing: &missing)
            }
        }
        var missing: [String] = []
        for (bin, root, section) in [(Bins.dir + "/coffer-cli", "coffer", "1"), (Bins.cofferd, "cofferd", "8")] {
            let dump = try run(bin, ["--experimental-dump-help"])
            let json = try JSONSerialization.jsonObject(with: Data(dump.out.utf8)) as? [String: Any]
            let command = try #require(json?["command"] as? [String: Any])
            try walk(command, [root], section: section, missing: &missing)
        }
        #expect(missing.isEmpty, "stale man pages (run contrib/dev/man): \(missing)")
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
        let listener = try NotifyListener(path: path)
        func listen(until: Double, _ done: ([String]) -> Bool) { listener.listen(until: until, done) }
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
        #expect(listener.heard.contains { $0.hasPrefix("READY=1") && $0.contains("STATUS=serving on \(d.socket)") && $0.contains("MAINPID=\(p.processIdentifier)") },
                "\(listener.heard)")
        #expect(listener.heard.contains("WATCHDOG=1"), "\(listener.heard)")
        try "[role.admin]\n".write(toFile: d.policyPath, atomically: true, encoding: .utf8)
        listener.heard = []
        kill(p.processIdentifier, SIGHUP)
        listen(until: 10) { h in h.contains { $0.hasPrefix("READY=1") } }
        let reload = listener.heard.filter { $0 != "WATCHDOG=1" }
        #expect(reload.count >= 2 && reload[0].hasPrefix("RELOADING=1\nMONOTONIC_USEC=") && reload[1].hasPrefix("READY=1"), "\(listener.heard)")
        listener.heard = []
        kill(p.processIdentifier, SIGTERM)
        listen(until: 10) { h in h.contains("STOPPING=1") }
        #expect(listener.heard.contains("STOPPING=1"), "\(listener.heard)")
        p.waitUntilExit()
    }

    /// A policy file nested a hundred thousand deep is refused on reload (the daemon
    /// once died of it, in the parser's recursion); the old policy stays.
    @Test func aHostilePolicyFileIsRefusedNotFatal() throws {
        let d = try Daemon()
        try d.start()
        #expect(try d.coffer(["secret", "put", "ops/p"], stdin: Array("kept".utf8)).status == 0)
        let deep = "[role.admin]\nx = " + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "\n"
        try deep.write(toFile: d.policyPath, atomically: true, encoding: .utf8)
        let r = try d.coffer(["policy", "reload"])
        #expect(r.status != 0 && r.stderr.contains("nest deeper than 32"), "\(r.status) \(r.stderr)")
        #expect(try d.coffer(["secret", "get", "ops/p"]).out == "kept", "the daemon and its policy are still there")
        let check = try run(Bins.coffer, ["policy", "check", d.policyPath])
        #expect(check.status == 7 && check.stderr.contains("nest deeper"), "\(check.status) \(check.stderr)")
    }

    /// `cofferd init` names why it cannot read the config.
    /// An invalid policy stops `cofferd init` before the key file exists: fixing the
    /// policy and running init again works (no key left without a database).
    @Test func initChecksThePolicyBeforeMakingTheKey() throws {
        let d = try Daemon(initialise: false, policy: "[role.x]\n[[role.x.rule]]\npath = \"a/**\"\ncapabilities = [\"metrics\"]\n")
        var r = try run(Bins.cofferd, ["init", "--config", d.configPath])
        #expect(r.status != 0 && r.stderr.contains("global"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: d.keyPath), "a key was made for a database that was not")
        try "[role.x]\n[[role.x.rule]]\npath = \"**\"\ncapabilities = [\"metrics\"]\n".write(toFile: d.policyPath, atomically: true, encoding: .utf8)
        r = try run(Bins.cofferd, ["init", "--config", d.configPath])
        #expect(r.status == 0, "\(r.stderr)")
    }

    @Test func aConfigThatCannotBeReadSaysWhy() throws {
        let r = try run(Bins.cofferd, ["init", "--config", "/nonexistent/cofferd.toml"])
        #expect(r.status != 0 && r.stderr.contains("cannot read the config file /nonexistent/cofferd.toml: it does not exist"), "\(r.stderr)")
    }

    /// Socket activation as systemd does it (`systemd-socket-activate`, no systemd as
    /// PID 1 needed): cofferd serves the inherited socket, says so with READY=1, leaves
    /// the socket file to its owner at exit and never binds its configured path;
    /// two sockets are refused.
    @Test func socketActivationServesTheInheritedSocket() throws {
        let d = try Daemon()
        let listener = try NotifyListener(path: d.dir + "/notify.sock")
        let activated = d.dir + "/activated.sock"
        // posix_spawn, not Process: Foundation stops reaping the test's other children
        // while a Process it started is exec'd into another program
        let p = try Spawned("/usr/bin/systemd-socket-activate",
                            ["-l", activated, "-E", "NOTIFY_SOCKET=" + listener.path, Bins.cofferd, "serve", "--config", d.configPath])
        var waited = 0
        while !FileManager.default.fileExists(atPath: activated) && waited < 100 { usleep(50_000); waited += 1 }
        // the first connection starts cofferd (systemd-socket-activate execs it then)
        let health = try run("/usr/bin/curl", ["-s", "--max-time", "20", "--unix-socket", activated, "http://coffer/v1/sys/health"])
        #expect(health.status == 0 && health.out.contains("\"status\":\"ok\""), "\(health.out) \(health.stderr)")
        listener.listen(until: 10) { h in h.contains { $0.hasPrefix("READY=1") } }
        #expect(listener.heard.contains { $0.hasPrefix("READY=1") && $0.contains("STATUS=serving on \(activated) (socket-activated)") }, "\(listener.heard)")
        var r = try run(Bins.coffer, ["--socket", activated, "secret", "put", "ops/activated"], stdin: Array("via fd 3".utf8))
        #expect(r.status == 0, "\(r.stderr)")
        r = try run(Bins.coffer, ["--socket", activated, "secret", "get", "ops/activated"])
        #expect(r.status == 0 && r.out == "via fd 3", "\(r.out) \(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: d.socket), "the configured path is not bound when a socket is inherited")
        kill(p.pid, SIGTERM)
        waited = 0
        while p.isRunning && waited < 200 { usleep(50_000); waited += 1 }
        #expect(!p.isRunning, "cofferd stops on SIGTERM")
        #expect(FileManager.default.fileExists(atPath: activated), "the socket belongs to whoever bound it")
        let refused = try run("/bin/sh", ["-c", "LISTEN_PID=$$ LISTEN_FDS=2 exec \(Bins.cofferd) serve --config \(d.configPath) 3</dev/null 4</dev/null"])
        #expect(refused.status != 0 && refused.stderr.contains("cofferd serves exactly one"), "\(refused.stderr)")
        let notSocket = try run("/bin/sh", ["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \(Bins.cofferd) serve --config \(d.configPath) 3</dev/null"])
        #expect(notSocket.status != 0 && notSocket.stderr.contains("not a listening Unix stream socket"), "\(notSocket.stderr)")
        // an abstract socket has no mode or group: refused
        let abstract = try run("/usr/bin/python3", ["-c", """
            import os, socket
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind('\\0coffer-test-abstract-%d' % os.getpid()); s.listen(4)
            os.dup2(s.fileno(), 3) if s.fileno() != 3 else None; os.set_inheritable(3, True); os.environ['LISTEN_PID'] = str(os.getpid()); os.environ['LISTEN_FDS'] = '1'
            os.execv('\(Bins.cofferd)', ['cofferd', 'serve', '--config', '\(d.configPath)'])
            """])
        #expect(abstract.status != 0 && abstract.stderr.contains("has no path (abstract or unnamed)"), "\(abstract.status) \(abstract.stderr)")
    }
}

/// GET /v1/sys/metrics: Prometheus text that promtool accepts, behind its own
/// capability (admin alone is not enough), audited, with no secret, path or name in it;
/// while sealed it still says so.
@Suite struct MetricsTests {
    static let policy = """
        [role.admin]
        [[role.admin.rule]]
        path = "**"
        capabilities = ["read", "list", "write", "delete", "admin", "audit"]
        [role.metrics]
        [[role.metrics.rule]]
        path = "**"
        capabilities = ["metrics"]
        [[bind]]
        subjects = ["uid:0"]
        roles = ["admin"]
        [[bind]]
        subjects = ["user:\(TestUser.nonAdmin.name)"]
        roles = ["metrics"]
        """

    func promtool(_ text: String, _ dir: String) throws -> RunResult {
        let f = dir + "/metrics.txt"
        try text.write(toFile: f, atomically: true, encoding: .utf8)
        return try run("/bin/sh", ["-c", "promtool check metrics < \(f)"])
    }

    @Test func prometheusTextThatPromtoolAccepts() throws {
        let d = try Daemon(policy: Self.policy)
        try d.start()
        #expect(try d.coffer(["secret", "put", "team/db-password"], stdin: Array("hunter2-canary".utf8)).status == 0)
        for _ in 0..<3 { #expect(try d.coffer(["secret", "get", "team/db-password"]).status == 0) }
        #expect(try d.coffer(["secret", "get", "team/db-password"], as: TestUser.nonAdmin).status == 5)
        // admin is not metrics: the capability is its own
        var (code, body) = try d.curl("GET", "/v1/sys/metrics")
        #expect(code == 403 && errorCode(body) == "permission_denied", "\(code) \(body)")
        (code, body) = try d.curl("GET", "/v1/sys/metrics", as: TestUser.nonAdmin)
        #expect(code == 200, "\(code) \(body)")
        for line in ["coffer_requests_total{action=\"read\",status=\"200\",decision=\"allow\"} 3",
                     "coffer_requests_total{action=\"read\",status=\"403\",decision=\"deny\"} 1",
                     "coffer_requests_total{action=\"write\",status=\"200\",decision=\"allow\"} 1",
                     "coffer_requests_total{action=\"metrics\",status=\"403\",decision=\"deny\"} 1",
                     "coffer_sealed 0", "coffer_tokens_live 0", "coffer_elevations{state=\"pending\"} 0",
                     "coffer_injections_live 0", "# TYPE coffer_request_duration_seconds histogram",
                     "coffer_request_duration_seconds_bucket{action=\"read\",le=\"+Inf\"} 4",
                     "# TYPE coffer_audit_batch_events histogram", "coffer_audit_commit_duration_seconds_count ",
                     "coffer_audit_queue_depth ", "coffer_process_resident_memory_bytes ", "coffer_process_open_fds "] {
            #expect(body.contains(line), "missing \(line)")
        }
        #expect(!body.contains("hunter2") && !body.contains("team/") && !body.contains("db-password") && !body.contains(TestUser.nonAdmin.name))
        let check = try promtool(body, d.dir)
        #expect(check.status == 0, "promtool: \(check.out) \(check.stderr)")
        // a token of the metrics role scrapes too; every scrape is in the trail
        let token = try d.coffer(["token", "create", "--role", "metrics", "--ttl", "5m"], as: TestUser.nonAdmin).out
            .trimmingCharacters(in: .whitespacesAndNewlines)
        (code, _) = try d.curl("GET", "/v1/sys/metrics", headers: ["X-Coffer-Token: \(token)"])
        #expect(code == 200)
        let audit = try d.coffer(["audit", "search", "--action", "metrics"])
        #expect(audit.out.split(separator: "\n").count == 3, "\(audit.out)")
        (code, body) = try d.curl("GET", "/v1/sys/metrics?x=1", as: TestUser.nonAdmin)
        #expect(code == 422 && errorCode(body) == "invalid_parameter", "\(code) \(body)")
    }

    @Test func aSealedDaemonSaysSo() throws {
        let d = try Daemon(policy: Self.policy)
        d.startSealedForMetrics()
        let (code, body) = try d.curl("GET", "/v1/sys/metrics", as: TestUser.nonAdmin)
        #expect(code == 200 && body.contains("coffer_sealed 1") && !body.contains("coffer_tokens_live"), "\(code) \(body)")
        #expect(try promtool(body, d.dir).status == 0)
        #expect(try d.curl("GET", "/v1/sys/metrics").0 == 403, "root holds admin, not metrics")
    }
}

extension Daemon {
    func startSealedForMetrics() {
        do { try startSealed() } catch { Issue.record("\(error)") }
    }
}

/// A datagram socket standing in for systemd's NOTIFY_SOCKET.
final class NotifyListener {
    let path: String
    let fd: Int32
    var heard: [String] = []

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let bound = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else { throw TestError.failed("bind \(path)") }
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func listen(until: Double, _ done: ([String]) -> Bool) {
        let deadline = Date().addingTimeInterval(until)
        var buf = [UInt8](repeating: 0, count: 4096)
        while Date() < deadline && !done(heard) {
            let n = recv(fd, &buf, buf.count, 0)
            if n > 0 { heard.append(String(decoding: buf[0..<n], as: UTF8.self)) }
        }
    }
}
