import Foundation
import Testing

/// `coffer run` and `coffer build` end to end: the real CLI as root (private mount
/// and PID namespaces) and as an unprivileged user (a tmpfs cofferd mounts), checked
/// from outside through /proc/self/mountinfo; a real buildah build.
@Suite(.serialized) struct RunTests {
    static let policy = """
        [role.ci]
        [[role.ci.rule]]
        path = "ci/**"
        capabilities = ["read", "list", "write"]
        [[role.ci.rule]]
        path = "ci/signing/**"
        capabilities = ["inject"]
        [[role.ci.rule]]
        path = "ci/signing/**"
        capabilities = ["read"]
        effect = "deny"
        [[role.ci.rule]]
        path = "ci/private/**"
        capabilities = ["read"]
        effect = "deny"
        [role.ops]
        [[role.ops.rule]]
        path = "**"
        capabilities = ["read", "list", "write", "delete", "admin", "audit", "inject"]
        [[bind]]
        subjects = ["user:coffer-test"]
        roles = ["ci"]
        [[bind]]
        subjects = ["uid:0"]
        roles = ["ops"]
        """

    static func daemon(_ extra: String = "") throws -> Daemon {
        let d = try Daemon(config: extra, policy: policy)
        try d.start()
        mkdir(d.dir + "/secrets", 0o755)  // where private runs attach their tmpfs (--dir must exist)
        for (path, value) in [("ci/app/db-password", "CANARY-db-\(UUID().uuidString)"), ("ci/npm/token", "npm-tok-1"),
                              ("ci/signing/key", "SIGNING-\(UUID().uuidString)"), ("ci/private/x", "nope")] {
            let r = try d.coffer(["secret", "put", path], stdin: Array(value.utf8))
            guard r.status == 0 else { throw TestError.failed("put \(path): \(r.stderr)") }
        }
        return d
    }

    static func value(_ d: Daemon, _ path: String) throws -> String {
        try d.coffer(["secret", "get", path]).out.trimmingCharacters(in: .newlines)
    }

    /// tmpfs mounts under `prefix` in this (the host's) mount namespace.
    static func mounts(under prefix: String) -> [String] {
        let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            return f.count > 4 && f[4].hasPrefix(prefix) ? String(f[4]) : nil
        }
    }

    static func waitFor(_ seconds: Double = 10, _ condition: () -> Bool) -> Bool { waitUntil(seconds, condition) }

    /// Live processes (not zombies) whose command line contains `text`: "pid: command line".
    static func processes(naming text: String) -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { pid -> String? in
            guard Int32(pid) != nil, Int32(pid) != getpid(),
                  let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !raw.isEmpty else { return nil }
            let line = String(decoding: raw.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            return line.contains(text) ? "\(pid): \(line)" : nil
        }
    }

    /// `coffer run` in the background (as root, or as `user`).
    static func launch(_ d: Daemon, _ args: [String], as user: TestUser? = nil) throws -> Process {
        let p = Process()
        if let user {
            let (exe, a) = user.wrap(Bins.sharedCoffer, ["--socket", d.socket] + args)
            p.executableURL = URL(fileURLWithPath: exe)
            p.arguments = a
        } else {
            p.executableURL = URL(fileURLWithPath: Bins.coffer)
            p.arguments = ["--socket", d.socket] + args
        }
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        return p
    }

    static func shared(_ d: Daemon) -> String {
        let dir = d.dir + "/shared"
        mkdir(dir, 0o777)
        chmod(dir, 0o777)
        return dir
    }

    @Test func asRootTheFilesExistOnlyInTheCommandsNamespace() throws {
        let d = try Self.daemon()
        let secret = try Self.value(d, "ci/app/db-password")
        let dir = d.dir + "/secrets"
        let marks = Self.shared(d)
        let script = """
            set -e
            cat "$COFFER_SECRETS_DIR/db-password" > \(marks)/seen
            stat -c '%a %u' "$COFFER_SECRETS_DIR" "$COFFER_SECRETS_DIR/db-password" > \(marks)/modes
            grep " $COFFER_SECRETS_DIR " /proc/self/mountinfo > \(marks)/mountinfo
            echo $$ > \(marks)/pid
            touch \(marks)/ready
            while [ ! -e \(marks)/go ]; do sleep 0.05; done
            exit 7
            """
        let p = try Self.launch(d, ["run", "--dir", dir, "--secret", "ci/app/db-password", "--", "/bin/sh", "-c", script])
        #expect(Self.waitFor { FileManager.default.fileExists(atPath: marks + "/ready") })
        // from outside: no tmpfs at the directory, nothing in it
        #expect(Self.mounts(under: dir).isEmpty)
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? ["?"]).isEmpty)
        let all = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
        #expect(!all.contains("coffer-run \(dir)"))
        FileManager.default.createFile(atPath: marks + "/go", contents: nil)
        p.waitUntilExit()
        #expect(p.terminationStatus == 7)
        #expect(String(decoding: fileBytes(marks + "/seen"), as: UTF8.self) == secret)
        #expect(String(decoding: fileBytes(marks + "/modes"), as: UTF8.self) == "500 0\n400 0\n")
        let mi = String(decoding: fileBytes(marks + "/mountinfo"), as: UTF8.self)
        #expect(mi.contains(" - tmpfs "), "\(mi)")
        #expect(mi.contains("noswap") && mi.contains("nosuid") && mi.contains("nodev") && mi.contains("noexec") && mi.contains(" ro,"), "\(mi)")
        // a PID namespace: the command is not PID 1 (the reaper is) but a small number
        #expect(Int(String(decoding: fileBytes(marks + "/pid"), as: UTF8.self).trimmingCharacters(in: .newlines)) ?? 99 <= 3)
        // the run was audited with its path and version, and ended
        let events = try d.coffer(["audit", "tail", "-n", "5", "--format", "json"]).out
        #expect(events.contains("\"inject\"") && events.contains("ci/app/db-password") && events.contains("run_end"))
    }

    @Test func exitStatusSignalsAndSigkillLeaveNothingBehind() throws {
        let d = try Self.daemon()
        let dir = d.dir + "/secrets"
        // non-zero exit status passes through
        let r = try d.coffer(["run", "--dir", dir, "--secret", "ci/npm/token", "--", "/bin/sh", "-c", "exit 42"])
        #expect(r.status == 42, "\(r.stderr)")
        // SIGTERM to coffer run reaches the command (its trap runs)
        let marks = Self.shared(d)
        let trap = "trap 'echo got-term > \(marks)/term; exit 0' TERM; touch \(marks)/up; while :; do sleep 0.05; done"
        let p = try Self.launch(d, ["run", "--dir", dir, "--secret", "ci/npm/token", "--", "/bin/sh", "-c", trap])
        #expect(Self.waitFor { FileManager.default.fileExists(atPath: marks + "/up") })
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        #expect(String(decoding: fileBytes(marks + "/term"), as: UTF8.self) == "got-term\n")
        // SIGKILL of coffer run: the command and everything it started die with it
        let tag = "coffer-run-test-\(UUID().uuidString.prefix(8))"
        let sleeper = "touch \(marks)/k; (sleep 300 & exec -a \(tag) sleep 300)"
        let k = try Self.launch(d, ["run", "--dir", dir, "--secret", "ci/npm/token", "--", "/bin/bash", "-c", sleeper])
        #expect(Self.waitFor { FileManager.default.fileExists(atPath: marks + "/k") })
        #expect(Self.waitFor { (try? run("/usr/bin/pgrep", ["-f", tag]).status) == 0 })
        kill(k.processIdentifier, SIGKILL)
        k.waitUntilExit()
        #expect(Self.waitFor(2) { (try? run("/usr/bin/pgrep", ["-f", tag]).status) == 1 }, "the command outlived coffer run")
        // SIGKILL of the command itself: coffer run reports 137
        let s = try d.coffer(["run", "--dir", dir, "--secret", "ci/npm/token", "--", "/bin/sh", "-c", "kill -9 $$"])
        #expect(s.status == 137)
        #expect(Self.mounts(under: dir).isEmpty)
        // cofferd saw every run end
        #expect(Self.waitFor(2) { (try? d.coffer(["run", "list"]).out) == "no live runs\n" })
    }

    @Test func anUnprivilegedCallerGetsATmpfsFromCofferdThatGoesWithTheRunner() throws {
        let d = try Self.daemon()
        let user = TestUser.nonAdmin
        let marks = Self.shared(d)
        let runDir = d.dir + "/run/run"
        let script = """
            stat -c '%a %u' "$COFFER_SECRETS_DIR" "$COFFER_SECRETS_DIR/token" > \(marks)/modes
            grep " $COFFER_SECRETS_DIR " /proc/self/mountinfo > \(marks)/mountinfo
            cat "$COFFER_SECRETS_DIR/token" > \(marks)/seen
            exit 3
            """
        let (exe, args) = user.wrap(Bins.sharedCoffer, ["--socket", d.socket, "run", "--secret", "ci/npm/token=token", "--", "/bin/sh", "-c", script])
        let r = try run(exe, args)
        #expect(r.status == 3, "\(r.stderr)")
        #expect(String(decoding: fileBytes(marks + "/modes"), as: UTF8.self) == "500 \(user.uid)\n400 \(user.uid)\n")
        let mi = String(decoding: fileBytes(marks + "/mountinfo"), as: UTF8.self)
        #expect(mi.contains(runDir + "/run_") && mi.contains("noswap") && mi.contains("noexec") && mi.contains("uid=\(user.uid)"), "\(mi)")
        #expect(String(decoding: fileBytes(marks + "/seen"), as: UTF8.self) == "npm-tok-1")
        #expect(Self.mounts(under: runDir).isEmpty)
        // SIGKILL of the runner: cofferd removes the mount within a second
        let p = try Self.launch(d, ["run", "--secret", "ci/npm/token", "--", "/bin/sh", "-c", "touch \(marks)/u; exec sleep 300"], as: user)
        #expect(Self.waitFor { FileManager.default.fileExists(atPath: marks + "/u") })
        #expect(Self.mounts(under: runDir).count == 1)
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        let killedAt = Date()
        #expect(Self.waitFor(2) { Self.mounts(under: runDir).isEmpty })
        #expect(Date().timeIntervalSince(killedAt) < 1.0)
        // the mount point and the record go right after the unmount
        #expect(Self.waitFor(2) { ((try? FileManager.default.contentsOfDirectory(atPath: runDir)) ?? ["?"]).isEmpty })
        let events = try d.coffer(["audit", "tail", "-n", "3", "--format", "json"]).out
        #expect(events.contains("the runner exited without ending the run; cofferd emptied and removed the tmpfs"), "\(events)")
        // a private namespace is root's: asked for by others it is refused, nothing mounted
        let priv = try d.coffer(["run", "--mount", "private", "--secret", "ci/npm/token", "--", "/bin/true"], as: user)
        #expect(priv.status == 7 && priv.stderr.contains("coffer: error:"))
    }

    /// What a run leaves behind gets nothing: cofferd empties the tmpfs and makes it
    /// read-only before detaching it, even for a process whose working directory it is.
    @Test func aLeftoverProcessKeepsAnEmptyReadOnlyTmpfs() throws {
        let d = try Self.daemon()
        let user = TestUser.nonAdmin
        let marks = Self.shared(d)
        let leftover = "cd \"$COFFER_SECRETS_DIR\"; setsid sh -c 'sleep 1; ls -A > \(marks)/left-ls; (echo x > refill) 2> \(marks)/left-err; touch \(marks)/left-done' > /dev/null 2>&1 < /dev/null &"
        let r = try d.coffer(["run", "--secret", "ci/npm/token", "--", "/bin/sh", "-c", leftover], as: user)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(Self.waitFor { FileManager.default.fileExists(atPath: marks + "/left-done") })
        #expect(String(decoding: fileBytes(marks + "/left-ls"), as: UTF8.self) == "", "the token was still there")
        #expect(String(decoding: fileBytes(marks + "/left-err"), as: UTF8.self).contains("Read-only file system"))
        #expect(Self.mounts(under: d.dir + "/run/run").isEmpty)
        // one that keeps a file open for writing and writes on: after the run it can
        // create nothing (sealed read-only, or killed when sealing is refused)
        let writer = "cd \"$COFFER_SECRETS_DIR\"; chmod 700 .; setsid sh -c 'exec 3>>held; echo $$ > \(marks)/writer; i=0; while :; do i=$((i+1)); echo x >&3; (echo y > n$i) 2>/dev/null && touch \(marks)/created || touch \(marks)/refused; sleep 0.05; done' > /dev/null 2>&1 < /dev/null & sleep 0.3"
        let w = try d.coffer(["run", "--secret", "ci/npm/token", "--", "/bin/sh", "-c", writer], as: user)
        #expect(w.status == 0, "\(w.stderr)")
        let writerPID = Int32(String(decoding: fileBytes(marks + "/writer"), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        #expect(writerPID > 0)
        unlink(marks + "/created")
        #expect(Self.waitFor(3) { kill(writerPID, 0) != 0 || FileManager.default.fileExists(atPath: marks + "/refused") })
        usleep(300_000)
        #expect(!FileManager.default.fileExists(atPath: marks + "/created"), "a leftover process refilled the tmpfs")
        if kill(writerPID, 0) == 0 { kill(writerPID, SIGKILL) }
        // a tree deeper than the wipe goes leaves cofferd holding nothing
        // descriptors into the runs' directories (not the database's, whose connections
        // and files come and go with load on either backend)
        let fds = {
            ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(d.pid!)/fd")) ?? []).filter {
                (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(d.pid!)/fd/\($0)"))?.hasPrefix(d.dir + "/run/run") ?? false
            }.count
        }
        let before = fds()
        let deep = "import os; os.chmod(os.environ['COFFER_SECRETS_DIR'], 0o700); os.chdir(os.environ['COFFER_SECRETS_DIR'])\nfor _ in range(80): os.mkdir('d'); os.chdir('d')"
        for _ in 0..<3 {
            let r = try d.coffer(["run", "--secret", "ci/npm/token", "--", "/usr/bin/python3", "-c", deep], as: user)
            #expect(r.status == 0, "\(r.stderr)")
        }
        #expect(Self.waitFor(2) { fds() <= before }, "cofferd keeps \(fds() - before) more descriptors")
        #expect(Self.mounts(under: d.dir + "/run/run").isEmpty)
    }

    /// --dir: never /, never through a symbolic link, never created (but the default).
    @Test func theMountPointIsCheckedAndNeverCreated() throws {
        let d = try Self.daemon()
        let link = d.dir + "/link"
        let target = d.dir + "/elsewhere"
        mkdir(target, 0o755)
        symlink(target, link)
        for dir in ["/", "//", link, link + "/sub", d.dir + "/missing/deep", "relative", d.dir + "/../x"] {
            let r = try d.coffer(["run", "--dir", dir, "--secret", "ci/npm/token", "--", "/bin/true"])
            #expect(r.status == 7 && r.stderr.contains("--dir"), "\(dir): \(r.status) \(r.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: target + "/sub") && !FileManager.default.fileExists(atPath: d.dir + "/missing"))
        var st = stat()
        #expect(stat("/", &st) == 0 && st.st_mode & 0o777 == 0o755)
        // network none is a private namespace's; the API refuses it with a daemon mount
        let (status, body) = try d.curl("POST", "/v1/runs", body: #"{"secrets":[{"path":"ci/npm/token"}],"mount":"daemon","network":"none"}"#)
        #expect(status == 422, "\(body)")
        // what a runner reports is its own detail, printable ASCII only
        for fate in [#"a\u2028b"#, #"x\u00a0y"#, #"\u001b[2J"#] {
            let (s2, _) = try d.curl("POST", "/v1/runs/run_0123/end", body: "{\"fate\":\"\(fate)\"}")
            #expect(s2 == 422, "\(fate)")
        }
    }

    /// --ttl ends the run: as root coffer run kills the command (exit 124); for an
    /// unprivileged caller cofferd also kills the runner and removes the tmpfs.
    @Test func theTTLEndsTheRun() throws {
        let d = try Self.daemon()
        let t0 = Date()
        let r = try d.coffer(["run", "--dir", d.dir + "/secrets", "--ttl", "1s", "--secret", "ci/npm/token", "--", "/bin/sleep", "30"])
        #expect(r.status == 124 && r.stderr.contains("ttl"), "\(r.status) \(r.stderr)")
        #expect(Date().timeIntervalSince(t0) < 10)
        let user = TestUser.nonAdmin
        let runDir = d.dir + "/run/run"
        let t1 = Date()
        let u = try d.coffer(["run", "--ttl", "1s", "--secret", "ci/npm/token", "--", "/bin/sleep", "30"], as: user)
        #expect(u.status == 124, "\(u.status) \(u.stderr)")
        #expect(Date().timeIntervalSince(t1) < 10)
        #expect(Self.waitFor(2) { Self.mounts(under: runDir).isEmpty })
        #expect(Self.waitFor(2) { (try? d.coffer(["run", "list", "--all"]).out) == "no live runs\n" })
        // a runner that cannot act (stopped) is ended by cofferd shortly after its TTL
        let marks = Self.shared(d)
        let p = try Self.launch(d, ["run", "--ttl", "1s", "--secret", "ci/npm/token", "--", "/bin/sh", "-c", "touch \(marks)/s; exec sleep 60"], as: user)
        #expect(Self.waitFor { FileManager.default.fileExists(atPath: marks + "/s") })
        kill(p.processIdentifier, SIGSTOP)
        #expect(Self.mounts(under: runDir).count == 1)
        #expect(Self.waitFor(12) { Self.mounts(under: runDir).isEmpty }, "cofferd's TTL backstop")
        p.waitUntilExit()
        #expect(p.terminationReason == .uncaughtSignal && p.terminationStatus == SIGKILL)
    }

    @Test func aDaemonRestartDuringARunLeavesNoMount() throws {
        let d = try Self.daemon()
        let user = TestUser.nonAdmin
        let marks = Self.shared(d)
        let runDir = d.dir + "/run/run"
        // graceful restart: the new daemon adopts the live run and removes its mount when the runner ends
        let p = try Self.launch(d, ["run", "--secret", "ci/npm/token", "--", "/bin/sh", "-c",
                                    "touch \(marks)/a; while [ ! -e \(marks)/end-a ]; do sleep 0.05; done; cat $COFFER_SECRETS_DIR/token > \(marks)/a-seen"], as: user)
        #expect(Self.waitFor { FileManager.default.fileExists(atPath: marks + "/a") })
        d.stop()
        try d.start()
        #expect(Self.mounts(under: runDir).count == 1)
        FileManager.default.createFile(atPath: marks + "/end-a", contents: nil)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        #expect(String(decoding: fileBytes(marks + "/a-seen"), as: UTF8.self) == "npm-tok-1")
        #expect(Self.waitFor(2) { Self.mounts(under: runDir).isEmpty })
        // kill -9 of the daemon, the runner ends while it is down: the next start removes the mount
        let q = try Self.launch(d, ["run", "--secret", "ci/npm/token", "--", "/bin/sh", "-c",
                                    "touch \(marks)/b; while [ ! -e \(marks)/end-b ]; do sleep 0.05; done"], as: user)
        #expect(Self.waitFor { FileManager.default.fileExists(atPath: marks + "/b") })
        d.kill9()
        FileManager.default.createFile(atPath: marks + "/end-b", contents: nil)
        q.waitUntilExit()
        #expect(Self.mounts(under: runDir).count == 1)
        try d.start()
        #expect(Self.waitFor(2) { Self.mounts(under: runDir).isEmpty })
        let events = try d.coffer(["audit", "tail", "-n", "5", "--format", "json"]).out
        #expect(events.contains("the runner was gone when cofferd started"), "\(events)")
        // a run record edited while the daemon is down (its TTL pushed out) fails its
        // MAC: not adopted, and its mount is removed although the runner lives
        let r = try Self.launch(d, ["run", "--secret", "ci/npm/token", "--", "/bin/sh", "-c",
                                    "touch \(marks)/c; while [ ! -e \(marks)/end-c ]; do sleep 0.05; done"], as: user)
        defer { FileManager.default.createFile(atPath: marks + "/end-c", contents: nil); r.waitUntilExit() }
        #expect(Self.waitFor { FileManager.default.fileExists(atPath: marks + "/c") })
        d.stop()
        let record = try #require(try FileManager.default.contentsOfDirectory(atPath: runDir).first { $0.hasSuffix(".run") })
        let text = try String(contentsOfFile: runDir + "/" + record, encoding: .utf8)
        let edited = text.replacingOccurrences(of: #""expiresAt":(\d+)"#, with: "\"expiresAt\":4102444800000", options: .regularExpression)
        #expect(edited != text)
        try edited.write(toFile: runDir + "/" + record, atomically: true, encoding: .utf8)
        #expect(Self.mounts(under: runDir).count == 1)
        try d.start()
        #expect(Self.waitFor(2) { Self.mounts(under: runDir).isEmpty })
        #expect(d.log.contains("a run record failed its integrity check"), "\(d.log)")
        #expect(!FileManager.default.fileExists(atPath: runDir + "/" + record))
    }

    @Test func injectReleasesAValueToARunButNotToSecretGet() throws {
        let d = try Self.daemon()
        let user = TestUser.nonAdmin
        let key = try Self.value(d, "ci/signing/key")
        let get = try d.coffer(["secret", "get", "ci/signing/key"], as: user)
        #expect(get.status == 5, "\(get.stderr)")
        let marks = Self.shared(d)
        let r = try d.coffer(["run", "--secret", "ci/signing/key", "--", "/bin/sh", "-c", "cat $COFFER_SECRETS_DIR/key > \(marks)/k"], as: user)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(String(decoding: fileBytes(marks + "/k"), as: UTF8.self) == key)
        // no capability at all: nothing runs, nothing is mounted, exit code as for 403
        let denied = try d.coffer(["run", "--secret", "ci/npm/token", "--secret", "ci/private/x", "--", "/bin/sh", "-c", "touch \(marks)/ran"], as: user)
        #expect(denied.status == 5)
        #expect(denied.stderr.contains("coffer: error:") && denied.stderr.contains("ci/private/x"))
        #expect(!FileManager.default.fileExists(atPath: marks + "/ran"))
        #expect(Self.mounts(under: d.dir).isEmpty)
    }

    @Test func templatesEnvFilesAndSystemdCredentials() throws {
        let d = try Self.daemon()
        let secret = try Self.value(d, "ci/app/db-password")
        let marks = Self.shared(d)
        let tmpl = d.dir + "/app.conf.tmpl"
        try "[db]\npassword = {{ secret \"ci/app/db-password\" }}\nbraces = {{ \"{{\" }}x{{ \"}}\" }}\n".write(toFile: tmpl, atomically: true, encoding: .utf8)
        // a program written for systemd credentials, run unchanged
        let program = d.dir + "/reads-credentials.py"
        try """
            import os, sys
            d = os.environ["CREDENTIALS_DIRECTORY"]
            open(sys.argv[1], "w").write(open(os.path.join(d, "app.conf")).read() + "|" + open(os.path.join(d, "vars.env")).read())
            """.write(toFile: program, atomically: true, encoding: .utf8)
        let r = try d.coffer(["run", "--dir", d.dir + "/secrets", "--credentials", "--template", tmpl + ":app.conf", "--secret", "ci/npm/token=npm-token",
                              "--env-file", "vars.env", "--", "/usr/bin/python3", program, marks + "/out"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(String(decoding: fileBytes(marks + "/out"), as: UTF8.self) == "[db]\npassword = \(secret)\nbraces = {{x}}\n|NPM_TOKEN=npm-tok-1\n")
        // --env puts one value in one variable, when asked
        let e = try d.coffer(["run", "--dir", d.dir + "/secrets", "--env", "TOK=ci/npm/token", "--", "/bin/sh", "-c", "printf %s \"$TOK\" > \(marks)/env"])
        #expect(e.status == 0)
        #expect(String(decoding: fileBytes(marks + "/env"), as: UTF8.self) == "npm-tok-1")
    }

    @Test func aDryRunReportsWithoutValuesAndStartsNothing() throws {
        let d = try Self.daemon()
        let r = try d.coffer(["run", "--dry-run", "--secret", "ci/app/db-password", "--secret", "ci/npm/token=.npmrc:mode=0440", "--", "/bin/true"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.out.contains("db-password  <- ci/app/db-password v1  mode 0400"), "\(r.out)")
        #expect(r.out.contains("noswap") && r.out.contains("verdict: weak") && r.out.contains(".npmrc has mode 0440"), "\(r.out)")
        let secure = try d.coffer(["run", "--dry-run", "--secret", "ci/app/db-password", "--", "/bin/true"])
        #expect(secure.out.contains("verdict: secure"), "\(secure.out)")
        // the API's dry run carries no value and starts no run
        let (status, body) = try d.curl("POST", "/v1/runs", body: #"{"secrets":[{"path":"ci/app/db-password"}],"mount":"private","dry_run":true}"#)
        #expect(status == 200)
        #expect(!body.contains("value_base64") && !body.contains("CANARY"))
        #expect(try d.coffer(["run", "list"]).out == "no live runs\n")
    }

    /// `coffer` parses run/build itself (FastRun) and hands what it does not know to
    /// coffer-cli (ArgumentParser): for every input both paths must act alike — same
    /// output, same errors, same exit code. COFFER_CLI_FAST=0 forces the second.
    /// `coffer run --follow`: as root (private namespace) and as a user (cofferd's
    /// tmpfs), the command sees each new version within a second, never a part of one,
    /// and gets SIGHUP after each update; the owner and mode stay.
    @Test(arguments: [false, true]) func aFollowedRunSeesEveryNewVersionWhole(asUser: Bool) throws {
        let d = try Self.daemon()
        let out = Self.shared(d)
        func value(_ n: Int) -> String { "tok\(n)-" + String(repeating: "z", count: 2000 + 53 * n) + "-end" }
        #expect(try d.coffer(["secret", "put", "ci/npm/token"], stdin: Array(value(0).utf8)).status == 0)
        let script = """
            trap 'echo hup >> \(out)/hups' HUP
            stat -c '%a %u' "$COFFER_SECRETS_DIR/tok" > \(out)/mode
            while [ ! -e \(out)/stop ]; do
              cat "$COFFER_SECRETS_DIR/tok" > \(out)/cur.tmp && mv \(out)/cur.tmp \(out)/cur
              cat "$COFFER_SECRETS_DIR/tok" >> \(out)/all; echo >> \(out)/all; sleep 0.02
            done
            """
        let args = ["run", "--follow", "--signal", "SIGHUP"] + (asUser ? [] : ["--dir", d.dir + "/secrets"])
            + ["--secret", "ci/npm/token=tok", "--", "/bin/sh", "-c", script]
        let p = try Self.launch(d, args, as: asUser ? TestUser.nonAdmin : nil)
        defer { if p.isRunning { p.terminate(); p.waitUntilExit() } }
        func current() -> String? { try? String(contentsOfFile: out + "/cur", encoding: .utf8) }
        for _ in 0..<100 where current() != value(0) { usleep(50_000) }
        #expect(current() == value(0), "the command did not start")
        for n in 1...20 {
            #expect(try d.coffer(["secret", "put", "ci/npm/token"], stdin: Array(value(n).utf8)).status == 0)
            let t0 = Date()
            while current() != value(n) && Date().timeIntervalSince(t0) < 1.0 { usleep(2_000) }
            #expect(current() == value(n), "version \(n + 1) not seen after \(Date().timeIntervalSince(t0))s")
        }
        // coffer inject list, as the run's owner: root's private tmpfs is secure; a
        // user's, cofferd's tmpfs the runner writes into, is weak and says why
        let listed = asUser ? try d.coffer(["inject", "list", "--format", "json"], as: TestUser.nonAdmin) : try d.coffer(["inject", "list", "--format", "json"])
        let j = try JSONSerialization.jsonObject(with: Data(listed.stdout)) as? [String: Any]
        let x = (j?["injections"] as? [[String: Any]])?.first
        let files = (x?["files"] as? [[String: Any]]) ?? []
        #expect(files.count == 1 && files.first?["name"] as? String == "tok" && files.first?["mode"] as? String == "0400", "\(listed.out)")
        #expect((x?["secrets"] as? [[String: Any]])?.first?["version"] as? Int == 22, "\(listed.out)")
        if asUser {
            #expect(x?["verdict"] as? String == "weak" && ((x?["reasons"] as? [String]) ?? []).first?.hasPrefix("writable by its owner") == true, "\(listed.out)")
        } else {
            #expect(x?["verdict"] as? String == "secure" && (x?["reasons"] as? [String]) == [], "\(listed.out)")
            #expect(x?["target"] as? String == d.dir + "/secrets", "\(listed.out)")
        }
        FileManager.default.createFile(atPath: out + "/stop", contents: nil)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        #expect(try d.coffer(["inject", "list"]).out == "no live injections\n")
        let uid = asUser ? TestUser.nonAdmin.uid : 0
        #expect((try? String(contentsOfFile: out + "/mode", encoding: .utf8)) == "400 \(uid)\n")
        let lines = ((try? String(contentsOfFile: out + "/all", encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        let valid = Set((0...20).map(value))
        #expect(lines.count > 10 && lines.allSatisfy(valid.contains), "\(lines.count) reads, \(lines.filter { !valid.contains($0) }.count) torn")
        #expect(((try? String(contentsOfFile: out + "/hups", encoding: .utf8)) ?? "").contains("hup"), "no SIGHUP reached the command")
        let done = try d.coffer(["audit", "search", "--action", "inject_rotate_done", "--format", "json"]).out
        #expect(done.contains("\"versions\":[\"22\"]") && !done.contains("not written"), "\(done.suffix(600))")
        #expect(Self.mounts(under: d.dir).isEmpty)
    }

    /// cofferd writes only into a tmpfs it or coffer run made: a command that puts a
    /// mount of its own over the directory gets nothing written there.
    @Test func aFollowedRunWritesOnlyIntoItsOwnTmpfs() throws {
        let d = try Self.daemon()
        let out = Self.shared(d)
        let script = """
            umount -l "$COFFER_SECRETS_DIR" && mount -t tmpfs -o size=64k,mode=0700 elsewhere "$COFFER_SECRETS_DIR" && touch \(out)/swapped
            while [ ! -e \(out)/stop ]; do sleep 0.02; done
            ls -A "$COFFER_SECRETS_DIR" > \(out)/listing
            """
        let p = try Self.launch(d, ["run", "--follow", "--dir", d.dir + "/secrets", "--secret", "ci/npm/token=tok", "--", "/bin/sh", "-c", script])
        defer { if p.isRunning { p.terminate(); p.waitUntilExit() } }
        for _ in 0..<100 where !FileManager.default.fileExists(atPath: out + "/swapped") { usleep(50_000) }
        #expect(FileManager.default.fileExists(atPath: out + "/swapped"))
        #expect(try d.coffer(["secret", "put", "ci/npm/token"], stdin: Array("new-token".utf8)).status == 0)
        var done = ""
        for _ in 0..<50 {
            done = try d.coffer(["audit", "search", "--action", "inject_rotate_done", "--format", "json"]).out
            if !done.isEmpty { break }
            usleep(100_000)
        }
        #expect(done.contains("not written: tok: Operation not permitted"), "\(done)")
        FileManager.default.createFile(atPath: out + "/stop", contents: nil)
        p.waitUntilExit()
        #expect((try? String(contentsOfFile: out + "/listing", encoding: .utf8)) == "", "something was written into the command's own mount")
    }

    /// A process that holds its exec lock (a close-on-exec FUSE file whose flush is never
    /// answered) while cofferd examines it cannot stall cofferd: its requests are refused
    /// after a few seconds, and health and other callers are answered meanwhile (from
    /// the third attack round: two such requests used to block both pool threads).
    @Test func aProcessHeldInExecCannotStallCofferd() throws {
        guard FileManager.default.fileExists(atPath: "/dev/fuse") else { Issue.record("/dev/fuse is needed"); return }
        let d = try Self.daemon()
        let fixtures = Bins.packageRoot + "/Tests/CofferEndToEndTests/Fixtures/exec-hold"
        let mnt = d.dir + "/fuse"
        mkdir(mnt, 0o755)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        server.arguments = [fixtures + "/fuse_hang.py", mnt]
        server.standardOutput = FileHandle.nullDevice
        try server.run()
        defer {
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
            _ = try? run("/bin/umount", ["-l", mnt])
        }
        #expect(Self.waitFor(5) { FileManager.default.fileExists(atPath: mnt + "/f") })
        let user = TestUser.nonAdmin
        var holders: [Process] = []
        for _ in 0..<3 {
            let (exe, args) = user.wrap("/usr/bin/python3", [fixtures + "/exec_hold.py", mnt + "/f", d.socket])
            let h = Process()
            h.executableURL = URL(fileURLWithPath: exe)
            h.arguments = args
            h.standardOutput = FileHandle.nullDevice
            h.standardError = FileHandle.nullDevice
            try h.run()
            holders.append(h)
            usleep(500_000)
        }
        defer { for h in holders { kill(h.processIdentifier, SIGKILL) } }
        usleep(500_000)
        // answered at once while three examinations are held
        let t0 = Date()
        let health = try run("/usr/bin/curl", ["-s", "-m", "5", "--unix-socket", d.socket, "http://coffer/v1/sys/health"])
        #expect(health.out.contains("\"status\":\"ok\""), "\(health.out)")
        let r = try d.coffer(["run", "--dir", d.dir + "/secrets", "--secret", "ci/npm/token", "--", "/bin/true"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(Date().timeIntervalSince(t0) < 3, "cofferd answered only after \(Date().timeIntervalSince(t0)) s")
        // and the held requests were refused (audited), not left hanging
        var refused: [Substring] = []
        for _ in 0..<50 {
            refused = try d.coffer(["audit", "search", "--action", "inject", "--format", "json"]).out.split(separator: "\n")
                .filter { $0.contains("\"uid\":\(user.uid)") && $0.contains("\"error_code\":\"invalid_parameter\"") }
            if refused.count == 3 { break }
            usleep(200_000)
        }
        #expect(refused.count == 3, "\(refused)")
    }

    /// Root's --dir: every step root's and writable by root alone (or sticky), so no one
    /// can swap a step for a link to a directory of theirs while the run lives.
    @Test func rootsDirMustBeRootsAlone() throws {
        let d = try Self.daemon()
        let user = TestUser.nonAdmin
        let theirs = d.dir + "/theirs"
        mkdir(theirs, 0o755)
        chown(theirs, user.uid, user.gid)
        mkdir(theirs + "/d", 0o755)
        let open = d.dir + "/open"
        mkdir(open, 0o777)
        chmod(open, 0o777)
        mkdir(open + "/d", 0o755)
        for dir in [theirs + "/d", open + "/d"] {
            let r = try d.coffer(["run", "--follow", "--dir", dir, "--secret", "ci/npm/token", "--", "/bin/true"])
            #expect(r.status != 0 && r.stderr.contains("not root alone"), "\(dir): \(r.stderr)")
        }
        chmod(open, 0o1777)  // sticky, as /tmp: no one renames root's entries
        let ok = try d.coffer(["run", "--dir", open + "/d", "--secret", "ci/npm/token", "--", "/bin/true"])
        #expect(ok.status == 0, "\(ok.stderr)")
    }

    @Test func followIsRefusedWhereItCannotHold() throws {
        let d = try Self.daemon()
        let dir = d.dir + "/secrets"
        let cases: [([String], String)] = [
            (["run", "--follow", "--network", "none", "--dir", dir, "--secret", "ci/npm/token", "--", "/bin/true"], "--follow does not go with --network none"),
            (["run", "--signal", "SIGHUP", "--dir", dir, "--secret", "ci/npm/token", "--", "/bin/true"], "--signal goes with --follow"),
            (["run", "--follow", "--signal", "SIGKILL", "--dir", dir, "--secret", "ci/npm/token", "--", "/bin/true"], "--signal must be SIGHUP"),
            (["run", "--follow", "--dir", dir, "--env", "T=ci/npm/token", "--", "/bin/true"], "--follow rewrites --secret files"),
        ]
        for (args, message) in cases {
            let r = try d.coffer(args)
            #expect(r.status != 0 && r.stderr.contains("coffer: error: " + message), "\(args): \(r.stderr)")
        }
        // a token's run is not followed (its revocation could not stop the updates)
        let tokenFile = d.dir + "/t.token"
        #expect(try d.coffer(["token", "create", "--role", "ops", "--output", tokenFile]).status == 0)
        let r = try d.coffer(["--token-file", tokenFile, "run", "--follow", "--dir", dir, "--secret", "ci/npm/token", "--", "/bin/true"])
        #expect(r.status != 0 && r.stderr.contains("a run started with a token is not followed"), "\(r.stderr)")
        // the API checks what the front checks, and more
        for (body, message) in [
            (#"{"secrets":[{"path":"ci/npm/token"}],"mount":"private","follow":{"target":"/x/../etc","files":[{"path":"ci/npm/token","name":"t","mode":256,"uid":0,"gid":0}]}}"#, "follow.target must be"),
            (#"{"secrets":[{"path":"ci/npm/token"}],"mount":"private","follow":{"target":"/x","files":[{"path":"ci/app/db-password","name":"t","mode":256,"uid":0,"gid":0}]}}"#, "which the run does not ask for"),
            (#"{"secrets":[{"path":"ci/npm/token"}],"mount":"private","follow":{"target":"/x","files":[{"path":"ci/npm/token","name":"..","mode":256,"uid":0,"gid":0}]}}"#, "each name must be"),
            (#"{"secrets":[{"path":"ci/npm/token"}],"mount":"private","follow":{"target":"/x","files":[{"path":"ci/npm/token","name":"t","mode":4096,"uid":0,"gid":0}]}}"#, "mode 0...0777"),
            (#"{"secrets":[{"path":"ci/npm/token"}],"mount":"private","follow":{"target":"/x","files":[{"path":"ci/npm/token","name":"t","mode":256,"uid":-1,"gid":0}]}}"#, "uid and gid"),
            (#"{"secrets":[{"path":"ci/npm/token"}],"mount":"private","follow":{"target":"/x","files":[],"signal":"SIGHUP"}}"#, "follow.files must name"),
            (#"{"secrets":[{"path":"ci/npm/token"}],"mount":"private","follow":{"target":"/x","files":[{"path":"ci/npm/token","name":"t","mode":256,"uid":0,"gid":0}],"signal":"SIGKILL"}}"#, "follow.signal must be"),
            (#"{"secrets":[{"path":"ci/npm/token"}],"mount":"private","follow":{"target":"/x","files":[],"colour":1}}"#, "colour"),
        ] {
            let c = try run("/usr/bin/curl", ["-s", "--unix-socket", d.socket, "-X", "POST", "-H", "Content-Type: application/json", "--data", body, "http://coffer/v1/runs"])
            #expect(c.out.contains("\"error\"") && c.out.contains(message), "\(body): \(c.out)")
        }
        #expect(try d.coffer(["run", "list", "--all"]).out == "no live runs\n")
    }

    @Test func theFastFrontAndArgumentParserAgree() throws {
        let d = try Self.daemon()
        let dir = d.dir + "/secrets"
        let cases: [[String]] = [
            ["run", "--dir", dir, "--secret", "ci/npm/token", "--", "/bin/sh", "-c", "cat $COFFER_SECRETS_DIR/token; echo; exit 3"],
            ["run", "--dir=" + dir, "--secret=ci/npm/token=t:mode=0440", "--credentials", "--", "/bin/sh", "-c", "ls -l $CREDENTIALS_DIRECTORY | cut -c1-10"],
            ["--format", "json", "run", "--dry-run", "--dir", dir, "--secret", "ci/app/db-password", "--env", "TOK=ci/npm/token", "--", "/bin/true"],
            ["run", "--dry-run", "--dir", dir, "--secret", "ci/app/db-password", "--secret", "ci/npm/token=.npmrc:mode=0440", "--env-file", "app.env", "--", "/bin/true"],
            ["run", "--dir", dir, "--secret", "ci/npm/token", "--", "/no/such/program"],
            ["run", "--dir", dir, "--secret", "ci/npm/token", "--", "no-such-command-here"],
            ["run", "--dir", dir, "--secret", "ci/nope/missing", "--", "/bin/true"],
            ["run", "--dir", dir, "--secret", "ci/npm/token", "--secret", "ci/npm/token", "--", "/bin/true"],
            ["run", "--dir", dir, "--secret", "ci/npm/token=../x", "--", "/bin/true"],
            ["run", "--dir", dir, "--secret", "ci/npm/token:mode=0999", "--", "/bin/true"],
            ["run", "--dir", dir, "--size", "12q", "--secret", "ci/npm/token", "--", "/bin/true"],
            ["run", "--dir", dir, "--mount", "sideways", "--secret", "ci/npm/token", "--", "/bin/true"],
            ["run", "--dir", dir, "--network", "moon", "--secret", "ci/npm/token", "--", "/bin/true"],
            ["run", "--dir", "relative/dir", "--secret", "ci/npm/token", "--", "/bin/true"],
            ["run", "--dir", dir, "--secret", "ci/npm/token", "--"],
            ["run", "--dir", dir, "--", "/bin/true"],
            ["run", "--dir", dir, "--ttl", "1s", "--secret", "ci/npm/token", "--", "/bin/sleep", "5"],
            ["build", "--dir", dir, "--secret", "ci/npm/token", "--", "/bin/true"],
            ["run", "--dry-run", "--dir", dir, "--registry-auth", "reg.example:5000=ci/npm/token", "--registry-auth=ci/app/db-password", "--", "/bin/true"],
            ["run", "--dir", dir, "--registry-auth", "reg.example:5000=ci/npm/token", "--", "/bin/true"],
            // what the front leaves to ArgumentParser: help, a value like an option, a repeated single option
            ["run", "--help"],
            ["run", "--dir", dir, "--ttl", "-5", "--secret", "ci/npm/token", "--", "/bin/true"],
            ["run", "--dir", dir, "--size", "1m", "--size", "2m", "--secret", "ci/npm/token", "--", "/bin/true"],
            ["run", "--bogus", "--", "/bin/true"],
        ]
        for args in cases {
            let fast = try run(Bins.coffer, args, env: ["COFFER_SOCKET": d.socket])
            let slow = try run(Bins.coffer, args, env: ["COFFER_SOCKET": d.socket, "COFFER_CLI_FAST": "0"])
            #expect(fast.status == slow.status, "\(args): \(fast.status) vs \(slow.status): \(fast.stderr) | \(slow.stderr)")
            #expect(fast.stdout == slow.stdout, "\(args): \(fast.out) | \(slow.out)")
            #expect(fast.stderr == slow.stderr, "\(args)")
        }
        // an argument that is not UTF-8 reaches the command byte for byte
        let bytes = try run("/bin/sh", ["-c", "COFFER_SOCKET=\(d.socket) \(Bins.coffer) run --dir \(dir) --secret ci/npm/token -- /bin/sh -c 'printf %s \"$1\" | od -An -tx1' x \"$(printf '\\377\\376')\""])
        #expect(bytes.out.trimmingCharacters(in: .whitespacesAndNewlines) == "ff fe", "\(bytes.out) \(bytes.stderr)")
        // and what they print is what each case is about
        let ok = try run(Bins.coffer, cases[0], env: ["COFFER_SOCKET": d.socket])
        #expect(ok.status == 3 && ok.out == "npm-tok-1\n", "\(ok.out) \(ok.stderr)")
        let ttl = try run(Bins.coffer, cases[16], env: ["COFFER_SOCKET": d.socket])
        #expect(ttl.status == 124, "\(ttl.stderr)")
        #expect(try run(Bins.coffer, cases[4], env: ["COFFER_SOCKET": d.socket]).status == 127)
        #expect(try run(Bins.coffer, cases[6], env: ["COFFER_SOCKET": d.socket]).status == 4)
        #expect(Self.mounts(under: dir).isEmpty)
        #expect(try d.coffer(["run", "list"]).out == "no live runs\n")
    }

    @Test func badInputIsRefusedBeforeAnythingRuns() throws {
        let d = try Self.daemon("[run]\nmax_per_uid = 1")
        let marks = Self.shared(d)
        let touch = ["/bin/sh", "-c", "touch \(marks)/ran"]
        let tmpl = d.dir + "/bad.tmpl"
        let cases: [([String], Int32, String)] = [
            (["--secret", "ci/npm/token", "--secret", "ci/app/token"], 7, "two files are named token"),
            (["--secret", "ci/npm/token=a/b"], 7, "is not a file name"),
            (["--secret", "ci/npm/token=.."], 7, "is not a file name"),
            (["--secret", "ci/npm/token:mode=9999"], 7, "mode must be octal"),
            (["--secret", "ci/npm/token:uid=-1"], 7, "uid must be a number"),
            (["--template", tmpl + ":x"], 7, "unknown function 'env'"),
            (["--secret", "ci/npm/token", "--size", "1"], 7, "--size must be"),
            (["--secret", "ci/npm/token", "--network", "bridge"], 7, "--network must be"),
            (["--secret", "ci/npm/token", "--ttl", "1x"], 7, "ttl must be a duration"),
            (["--secret", "ci/missing/x"], 4, "no secret at ci/missing/x"),
        ]
        try "a = {{ env \"HOME\" }}\n".write(toFile: tmpl, atomically: true, encoding: .utf8)
        for (args, code, message) in cases {
            let r = try d.coffer(["run"] + args + ["--"] + touch)
            #expect(r.status == code, "\(args): \(r.status) \(r.stderr)")
            #expect(r.stderr.contains("coffer: error:") && r.stderr.contains(message), "\(args): \(r.stderr)")
        }
        try "a = {{ secret \"ci/nothing/here\" }}\n".write(toFile: tmpl, atomically: true, encoding: .utf8)
        #expect(try d.coffer(["run", "--template", tmpl + ":x", "--"] + touch).status == 4)
        #expect(try d.coffer(["run", "--secret", "ci/npm/token"]).stderr.contains("no command to run"))
        #expect(try d.coffer(["run", "--secret", "ci/npm/token", "--", "no-such-command-xyz"]).status == 127)
        let notExec = d.dir + "/not-executable"
        FileManager.default.createFile(atPath: notExec, contents: Data("#!/bin/sh\n".utf8), attributes: [.posixPermissions: 0o644])
        #expect(try d.coffer(["run", "--secret", "ci/npm/token", "--", notExec]).status == 126)
        // the tmpfs is too small for the files
        let big = try d.coffer(["secret", "put", "ci/app/big"], stdin: Array(repeating: 0x41, count: 60_000))
        #expect(big.status == 0)
        let full = try d.coffer(["run", "--size", "4k", "--secret", "ci/app/big", "--"] + touch)
        #expect(full.status == 7 && full.stderr.contains("--size"), "\(full.stderr)")
        // more runs than run.max_per_uid
        let p = try Self.launch(d, ["run", "--dir", d.dir + "/secrets", "--secret", "ci/npm/token", "--", "/bin/sh", "-c", "touch \(marks)/one; sleep 30"])
        #expect(Self.waitFor { FileManager.default.fileExists(atPath: marks + "/one") })
        let second = try d.coffer(["run", "--dir", d.dir + "/secrets", "--secret", "ci/npm/token", "--"] + touch)
        #expect(second.status == 7 && second.stderr.contains("already has 1 runs"), "\(second.status) \(second.stderr)")
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        #expect(!FileManager.default.fileExists(atPath: marks + "/ran"))
        #expect(Self.mounts(under: d.dir).isEmpty)
        // a root run makes its namespaces while cofferd answers: a refused start leaves
        // none of them behind (no process of these runs, whose command line names marks, lives on)
        #expect(Self.waitFor(2) { Self.processes(naming: marks).isEmpty }, "\(Self.processes(naming: marks))")
        // the API refuses what the CLI would not send
        for body in [#"{"secrets":[],"mount":"daemon"}"#, #"{"secrets":[{"path":"ci/npm/token"}],"mount":"elsewhere"}"#,
                     #"{"secrets":[{"path":"ci/npm/token"}],"mount":"daemon","size_bytes":9223372036854775807}"#,
                     #"{"secrets":[{"path":"ci/npm/token"},{"path":"ci/npm/token"}],"mount":"daemon"}"#,
                     #"{"secrets":[{"path":"ci/npm/token","version":-1}],"mount":"daemon"}"#,
                     #"{"secrets":[{"path":"../x"}],"mount":"daemon"}"#] {
            let (status, text) = try d.curl("POST", "/v1/runs", body: body)
            #expect((400..<500).contains(status) && errorCode(text) != nil, "\(body): \(status) \(text)")
        }
        #expect(Self.mounts(under: d.dir).isEmpty)
    }

    /// --network none: the command cannot reach a listener on the host, and has a
    /// working loopback of its own; without it, the same command connects.
    @Test func networkNoneCutsTheCommandOffTheHost() throws {
        let d = try Self.daemon()
        // a listener on the host's loopback, in this process (the kernel completes
        // connections into its backlog: no accept needed)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && listen(fd, 64) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        #expect(bound)
        let port = String(UInt16(bigEndian: addr.sin_port))
        let probe = """
            import socket, sys
            try:
                socket.create_connection(("127.0.0.1", \(port)), timeout=2).close(); host = "host-reachable"
            except OSError:
                host = "host-unreachable"
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
            socket.create_connection(s.getsockname(), timeout=2).close()
            print(host, "loopback-ok")
            """
        let isolated = try d.coffer(["run", "--dir", d.dir + "/secrets", "--network", "none", "--secret", "ci/npm/token", "--", "/usr/bin/python3", "-c", probe])
        #expect(isolated.status == 0, "\(isolated.stderr)")
        #expect(isolated.out == "host-unreachable loopback-ok\n", "\(isolated.out)")
        let open = try d.coffer(["run", "--dir", d.dir + "/secrets", "--secret", "ci/npm/token", "--", "/usr/bin/python3", "-c", probe])
        #expect(open.out == "host-reachable loopback-ok\n", "\(open.out) \(open.stderr)")
        let events = try d.coffer(["audit", "tail", "-n", "6", "--format", "json"]).out
        #expect(events.contains("\"network\":\"none\""), "the injection event records the network mode")
    }

    /// A signal sent while a run without network is still starting (its PID 1 has
    /// no handler yet, and the kernel spares a namespace's init what it does not
    /// handle) waits, and reaches the command once it runs: never lost, never exit 0.
    @Test func anEarlySignalToARunWithoutNetworkIsNeverLost() throws {
        let d = try Self.daemon()
        let marks = Self.shared(d)
        for i in 0..<12 {
            let done = marks + "/finished-\(i)"
            let p = try Self.launch(d, ["run", "--dir", d.dir + "/secrets", "--network", "none", "--secret", "ci/npm/token", "--",
                                        "/bin/sh", "-c", "trap 'exit 7' TERM; sleep 1.5; touch \(done)"])
            usleep(UInt32(1_000 * (1 + i % 9)))
            kill(p.processIdentifier, SIGTERM)
            p.waitUntilExit()
            #expect(p.terminationStatus == 7 || p.terminationStatus == 143, "run \(i): \(p.terminationStatus)")
            #expect(!FileManager.default.fileExists(atPath: done), "run \(i): the command ran on as if no signal had come")
        }
    }

    /// The environment reaches the command byte for byte (names and values that are not
    /// UTF-8 included); --env may not replace the run's own variables or the loader's.
    @Test func theEnvironmentPassesByteForByteAndEnvIsBounded() throws {
        let d = try Self.daemon()
        let want = d.dir + "/want", got = d.dir + "/got"
        // (the shell sets the odd bytes: Foundation's environment cannot hold them)
        let script = """
            printf 'ZZ\\377=v\\376\\n' > \(want)
            env "$(printf 'ZZ\\377=v\\376')" \(Bins.coffer) --socket \(d.socket) run --dir \(d.dir)/secrets --secret ci/npm/token -- /usr/bin/env \\
              | grep -a '^ZZ' > \(got)
            cmp \(want) \(got)
            """
        let odd = try run("/bin/sh", ["-c", script])
        #expect(odd.status == 0, "the environment was changed: \(Array(fileBytes(got))) \(odd.stderr)")
        for variable in ["COFFER_SECRETS_DIR", "LD_PRELOAD", "CREDENTIALS_DIRECTORY"] {
            let r = try d.coffer(["run", "--env", "\(variable)=ci/npm/token", "--secret", "ci/npm/token", "--", "/bin/true"])
            #expect(r.status == 7 && r.stderr.contains("would replace a variable"), "\(variable): \(r.stderr)")
        }
        let twice = try d.coffer(["run", "--env", "A=ci/npm/token", "--env", "A=ci/npm/token", "--", "/bin/true"])
        #expect(twice.status == 7 && twice.stderr.contains("given twice"), "\(twice.stderr)")
    }

    /// The runner holds values while the command runs: it is not dumpable (no core, no
    /// ptrace or /proc/PID/mem for its user: the kernel gives its /proc files to root),
    /// while the command it started is dumpable as usual.
    @Test func theRunnerIsNotDumpable() throws {
        let d = try Self.daemon()
        let user = TestUser.nonAdmin
        let marks = Self.shared(d)
        let p = try Self.launch(d, ["run", "--secret", "ci/npm/token", "--", "/bin/sh", "-c", "touch \(marks)/up; sleep 3; true"], as: user)
        #expect(Self.waitFor { FileManager.default.fileExists(atPath: marks + "/up") })
        func owner(_ pid: String) -> UInt32? {
            var st = stat()
            return stat("/proc/\(pid)/mem", &st) == 0 ? st.st_uid : nil
        }
        func comm(_ pid: String) -> String {
            String(decoding: fileBytes("/proc/\(pid)/comm"), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let pids = Self.processes(naming: marks + "/up").compactMap { $0.split(separator: ":").first.map(String.init) }
        let runner = pids.first { comm($0) == "coffer" }
        let command = pids.first { comm($0) == "sh" }
        #expect(runner != nil && command != nil, "\(Self.processes(naming: marks + "/up"))")
        if let runner { #expect(owner(runner) == 0, "the runner is dumpable") }
        if let command { #expect(owner(command) == user.uid, "the command is not dumpable") }
        p.waitUntilExit()
    }

    @Test func buildahBuildsWithTheSecretCachedPerVersionAndNoTraceInTheImage() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/buildah"), FileManager.default.isExecutableFile(atPath: "/bin/busybox") else {
            Issue.record("buildah and busybox-static are needed (contrib/dev/test installs them)")
            return
        }
        let d = try Self.daemon()
        let canary1 = "CANARY-npmrc-\(UUID().uuidString)"
        #expect(try d.coffer(["secret", "put", "ci/npm/npmrc"], stdin: Array(canary1.utf8)).status == 0)
        let ctx = d.dir + "/ctx"
        try FileManager.default.createDirectory(atPath: ctx + "/rootfs/bin", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: ctx + "/rootfs/bin/busybox")
        for applet in ["sh", "cat", "test", "date", "wc"] { symlink("busybox", ctx + "/rootfs/bin/" + applet) }
        try """
            FROM scratch
            COPY rootfs/ /
            ARG COFFER_SECRET_NPMRC_VERSION
            RUN --mount=type=secret,id=npmrc,required=true test -s /run/secrets/npmrc && wc -c < /run/secrets/npmrc > /secret-size && date +%s%N > /built-at
            """.write(toFile: ctx + "/Containerfile", atomically: true, encoding: .utf8)
        let image = "localhost/coffer-e2e-\(UUID().uuidString.prefix(8).lowercased())"
        let build = ["build", "--dir", d.dir + "/secrets", "--secret", "ci/npm/npmrc=npmrc", "--", "/usr/bin/buildah", "bud", "--isolation", "chroot",
                     "--layers", "-t", image, "-f", ctx + "/Containerfile", ctx]
        defer { _ = try? run("/usr/bin/buildah", ["rmi", "-f", image]) }
        let first = try d.coffer(build)
        #expect(first.status == 0, "\(first.stderr)")
        let second = try d.coffer(build)
        #expect(second.status == 0)
        #expect(second.out.components(separatedBy: "Using cache").count - 1 == 3, "same version: every step from the cache\n\(second.out)")
        #expect(try d.coffer(["secret", "put", "ci/npm/npmrc"], stdin: Array((canary1 + "-v2").utf8)).status == 0)
        let third = try d.coffer(build)
        #expect(third.status == 0)
        #expect(third.out.components(separatedBy: "Using cache").count - 1 == 2, "a new version re-runs the secret's step\n\(third.out)")
        // no layer of the image holds the secret
        let archive = d.dir + "/image.tar"
        let push = try run("/usr/bin/buildah", ["push", image, "oci-archive:" + archive])
        #expect(push.status == 0, "\(push.stderr)")
        let scan = try run("/usr/bin/python3", ["-c", """
            import gzip, sys, tarfile
            t = tarfile.open(sys.argv[1]); found = 0; layers = 0
            for m in t.getmembers():
                if not m.isfile(): continue
                b = t.extractfile(m).read()
                if b[:2] == b"\\x1f\\x8b": b = gzip.decompress(b); layers += 1
                if sys.argv[2].encode() in b: found += 1
            print(layers, found)
            """, archive, "CANARY-npmrc-"])
        let counts = scan.out.split(separator: " ").compactMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        #expect(counts.count == 2 && counts[0] >= 2 && counts[1] == 0, "layers, canaries: \(scan.out) \(scan.stderr)")
    }
}
