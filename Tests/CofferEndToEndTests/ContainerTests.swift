import Foundation
import Testing

/// `coffer oci-hook` with real runc: a busybox-static rootfs whose config.json runs the
/// hook at createRuntime and poststop; the container reads /run/secrets.
@Suite(.serialized) struct ContainerTests {
    static let policy = """
        [role.ops]
        [[role.ops.rule]]
        path = "**"
        capabilities = ["read", "list", "write", "admin", "audit"]
        [[role.ops.rule]]
        path = "ci/private/**"
        capabilities = ["read"]
        effect = "deny"
        [[bind]]
        subjects = ["uid:0"]
        roles = ["ops"]
        """

    /// A bundle: rootfs with busybox and its applets, config.json from `runc spec`
    /// with the hooks, the annotations and the command given.
    static func bundle(_ d: Daemon, _ name: String, script: String, annotations: [String: String]) throws -> String {
        let bundle = d.dir + "/" + name
        let rootfs = bundle + "/rootfs"
        for sub in ["bin", "proc", "sys", "dev", "run", "tmp"] {
            try FileManager.default.createDirectory(atPath: rootfs + "/" + sub, withIntermediateDirectories: true)
        }
        try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: rootfs + "/bin/busybox")
        for applet in ["sh", "cat", "grep", "touch", "ls", "stat", "echo", "sleep"] {
            try FileManager.default.createSymbolicLink(atPath: rootfs + "/bin/" + applet, withDestinationPath: "busybox")
        }
        let spec = try run("/usr/sbin/runc", ["spec", "--bundle", bundle])
        #expect(spec.status == 0, "\(spec.stderr)")
        let url = URL(fileURLWithPath: bundle + "/config.json")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        var process = config["process"] as! [String: Any]
        process["terminal"] = false
        process["args"] = ["/bin/sh", "-c", script]
        config["process"] = process
        var root = config["root"] as! [String: Any]
        root["readonly"] = false
        config["root"] = root
        config["annotations"] = annotations
        let hook = { (stage: String) -> [String: Any] in
            ["path": Bins.coffer, "args": ["coffer", "oci-hook", stage], "env": ["COFFER_SOCKET=\(d.socket)"], "timeout": 20]
        }
        config["hooks"] = ["createRuntime": [hook("createRuntime")], "poststop": [hook("poststop")]]
        try JSONSerialization.data(withJSONObject: config).write(to: url)
        return bundle
    }

    static func daemon() throws -> Daemon {
        let d = try Daemon(config: "", policy: policy)
        try d.start()
        chmod(d.dir, 0o755)
        for (path, value) in [("ci/app/db", "db-\(UUID().uuidString)"), ("ci/app/tls", "tls-key"), ("ci/private/x", "nope")] {
            #expect(try d.coffer(["secret", "put", path], stdin: Array(value.utf8)).status == 0)
        }
        return d
    }

    static func hostMounts(under prefix: String) -> [String] {
        let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        // (only under the bundle: other suites' runs mount coffer-run tmpfs elsewhere meanwhile)
        return text.split(separator: "\n").filter { $0.contains(prefix) }.map(String.init)
    }

    static var available: Bool {
        FileManager.default.isExecutableFile(atPath: "/usr/sbin/runc") && FileManager.default.isExecutableFile(atPath: "/bin/busybox")
    }

    @Test func theContainerReadsItsSecretsFromAReadOnlyNoswapTmpfs() throws {
        guard Self.available else { Issue.record("runc and busybox-static are needed (contrib/dev/test installs them)"); return }
        let d = try Self.daemon()
        let db = try d.coffer(["secret", "get", "ci/app/db"]).out
        let id = "coffer-test-\(getpid())-ok"
        let b = try Self.bundle(d, "ok", script: "cat /run/secrets/db; echo; cat /run/secrets/tls; echo; stat -c '%a %u' /run/secrets/db /run/secrets/tls; grep ' /run/secrets ' /proc/mounts",
                                annotations: ["io.coffer.secrets": "ci/app/db=db,ci/app/tls:uid=1000:mode=0440"])
        let r = try run("/usr/sbin/runc", ["run", "--bundle", b, id], timeout: 60)
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.out.split(separator: "\n").map(String.init)
        #expect(lines.count == 5, "\(r.out)")
        guard lines.count == 5 else { return }
        #expect(lines[0] == db && lines[1] == "tls-key")
        #expect(lines[2] == "400 0" && lines[3] == "440 1000", "\(lines[2]) \(lines[3])")
        #expect(lines[4].hasPrefix("coffer-run /run/secrets tmpfs ro,") && lines[4].contains("noswap") && lines[4].contains("nosuid,nodev,noexec"), "\(lines[4])")
        // nothing of it on the host, and cofferd recorded both ends, labelled with the container
        #expect(Self.hostMounts(under: b).isEmpty, "\(Self.hostMounts(under: b))")
        let events = try d.coffer(["audit", "search", "--action", "inject", "--format", "json"]).out
        #expect(events.contains("container:\(id)") && events.contains("ci/app/tls"), "\(events)")
        let ends = try d.coffer(["audit", "search", "--action", "run_end", "--format", "json"]).out
        // one end, from the poststop hook or from cofferd's watch of the container's
        // process (it exits before runc calls poststop: either may come first)
        let allowed = ends.split(separator: "\n").filter { $0.contains("\"decision\":\"allow\"") && $0.contains("\"outcome\":\"ok\"") }
        #expect(allowed.count == 1 && allowed[0].contains("container:\(id)")
                && (allowed[0].contains("the container stopped") || allowed[0].contains("the runner exited without ending the run")), "\(ends)")
        #expect(try d.coffer(["run", "list", "--all"]).out == "no live runs\n")
    }

    @Test func aDeniedOrMalformedRequestKeepsTheContainerFromStarting() throws {
        guard Self.available else { Issue.record("runc and busybox-static are needed (contrib/dev/test installs them)"); return }
        let d = try Self.daemon()
        let cases: [(String, [String: String], String)] = [
            ("denied", ["io.coffer.secrets": "ci/app/db,ci/private/x"], "permission denied"),
            ("missing", ["io.coffer.secrets": "ci/app/nothing"], "no secret at ci/app/nothing"),
            ("dotdot", ["io.coffer.secrets": "ci/app/db=.."], "is not a file name"),
            ("twice", ["io.coffer.secrets": "ci/app/db=x,ci/app/tls=x"], "names x twice"),
            ("mode", ["io.coffer.secrets": "ci/app/db:mode=999"], "mode must be octal"),
            ("uid", ["io.coffer.secrets": "ci/app/db:uid=99999999999"], "uid must be a number"),
            ("unknown", ["io.coffer.secrets": "ci/app/db", "io.coffer.colour": "blue"], "unknown annotation io.coffer.colour"),
            ("target", ["io.coffer.secrets": "ci/app/db", "io.coffer.target": "/run/../etc"], "io.coffer.target must be"),
        ]
        for (name, annotations, message) in cases {
            let b = try Self.bundle(d, name, script: "touch /ran", annotations: annotations)
            let r = try run("/usr/sbin/runc", ["run", "--bundle", b, "coffer-test-\(getpid())-\(name)"], timeout: 60)
            #expect(r.status != 0, "\(name)")
            #expect(r.stderr.contains(message), "\(name): \(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: b + "/rootfs/ran"), "\(name): the container ran")
            #expect(Self.hostMounts(under: b).isEmpty, "\(name)")
        }
        #expect(try d.coffer(["run", "list", "--all"]).out == "no live runs\n")
    }

    /// The target is resolved inside the container's root: a symbolic link in the
    /// rootfs to an absolute path leads to that path inside the rootfs, never to the
    /// host's; one that leads nowhere there fails the hook.
    @Test func theTargetStaysInsideTheRootfs() throws {
        guard Self.available else { Issue.record("runc and busybox-static are needed (contrib/dev/test installs them)"); return }
        let d = try Self.daemon()
        let outside = d.dir + "/outside"
        mkdir(outside, 0o755)
        // /run/link -> /tmp: <rootfs>/tmp/secrets, not the host's /tmp/secrets
        let b = try Self.bundle(d, "link", script: "cat /run/link/secrets/db >/dev/null && echo read",
                                annotations: ["io.coffer.secrets": "ci/app/db", "io.coffer.target": "/run/link/secrets"])
        try FileManager.default.createSymbolicLink(atPath: b + "/rootfs/run/link", withDestinationPath: "/tmp")
        let hostHad = FileManager.default.fileExists(atPath: "/tmp/secrets")
        var r = try run("/usr/sbin/runc", ["run", "--bundle", b, "coffer-test-\(getpid())-link"], timeout: 60)
        #expect(r.status == 0 && r.out == "read\n", "\(r.stderr)")
        #expect(FileManager.default.fileExists(atPath: b + "/rootfs/tmp/secrets"))
        #expect(FileManager.default.fileExists(atPath: "/tmp/secrets") == hostHad)
        #expect(Self.hostMounts(under: b).isEmpty)
        // /run/away -> a host directory that does not exist in the rootfs: refused
        let b2 = try Self.bundle(d, "away", script: "touch /ran",
                                 annotations: ["io.coffer.secrets": "ci/app/db", "io.coffer.target": "/run/away/secrets"])
        try FileManager.default.createSymbolicLink(atPath: b2 + "/rootfs/run/away", withDestinationPath: outside)
        r = try run("/usr/sbin/runc", ["run", "--bundle", b2, "coffer-test-\(getpid())-away"], timeout: 60)
        #expect(r.status != 0 && r.stderr.contains("cannot attach the tmpfs at /run/away/secrets inside the container's root"), "\(r.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: outside).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: b2 + "/rootfs/ran"))
        #expect(Self.hostMounts(under: b2).isEmpty)
    }

    /// `io.coffer.token-file`: the hook acts with the token of the person starting the
    /// container (here one limited to ci/app/db), not with the runtime's uid 0.
    @Test func aTokenFileNarrowsWhatTheContainerGets() throws {
        guard Self.available else { Issue.record("runc and busybox-static are needed (contrib/dev/test installs them)"); return }
        let d = try Self.daemon()
        let tokenFile = d.dir + "/starter.token"
        let created = try d.coffer(["token", "create", "--role", "ops", "--paths", "ci/app/db", "--output", tokenFile])
        #expect(created.status == 0, "\(created.stderr)")
        // uid 0 itself may read ci/app/tls; with the token the container may not
        let b = try Self.bundle(d, "tok", script: "touch /ran", annotations: ["io.coffer.secrets": "ci/app/db,ci/app/tls", "io.coffer.token-file": tokenFile])
        var r = try run("/usr/sbin/runc", ["run", "--bundle", b, "coffer-test-\(getpid())-tok"], timeout: 60)
        #expect(r.status != 0 && r.stderr.contains("permission denied"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: b + "/rootfs/ran"))
        let b2 = try Self.bundle(d, "tok2", script: "cat /run/secrets/db >/dev/null && echo ok", annotations: ["io.coffer.secrets": "ci/app/db", "io.coffer.token-file": tokenFile])
        r = try run("/usr/sbin/runc", ["run", "--bundle", b2, "coffer-test-\(getpid())-tok2"], timeout: 60)
        #expect(r.status == 0 && r.out == "ok\n", "\(r.stderr)")
        let events = try d.coffer(["audit", "search", "--action", "inject", "--format", "json"]).out
        #expect(events.contains("\"token_accessor\""), "the injection was not made with the token: \(events)")
        // a token file others can read is refused, and so is one that is not there
        chmod(tokenFile, 0o644)
        let b3 = try Self.bundle(d, "tok3", script: "touch /ran", annotations: ["io.coffer.secrets": "ci/app/db", "io.coffer.token-file": tokenFile])
        r = try run("/usr/sbin/runc", ["run", "--bundle", b3, "coffer-test-\(getpid())-tok3"], timeout: 60)
        #expect(r.status != 0 && r.stderr.contains("is readable by others"), "\(r.stderr)")
        let b4 = try Self.bundle(d, "tok4", script: "touch /ran", annotations: ["io.coffer.secrets": "ci/app/db", "io.coffer.token-file": d.dir + "/none"])
        r = try run("/usr/sbin/runc", ["run", "--bundle", b4, "coffer-test-\(getpid())-tok4"], timeout: 60)
        #expect(r.status != 0 && r.stderr.contains("io.coffer.token-file must be an absolute path of a regular file"), "\(r.stderr)")
        // nor through a symbolic link
        try FileManager.default.createSymbolicLink(atPath: d.dir + "/link.token", withDestinationPath: tokenFile)
        chmod(tokenFile, 0o600)
        let b5 = try Self.bundle(d, "tok5", script: "touch /ran", annotations: ["io.coffer.secrets": "ci/app/db", "io.coffer.token-file": d.dir + "/link.token"])
        r = try run("/usr/sbin/runc", ["run", "--bundle", b5, "coffer-test-\(getpid())-tok5"], timeout: 60)
        #expect(r.status != 0 && r.stderr.contains("not a symbolic link"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: b3 + "/rootfs/ran") && !FileManager.default.fileExists(atPath: b4 + "/rootfs/ran"))
    }

    /// Twenty containers started at once and alive together (more than run.max_per_uid,
    /// which bounds a user's jobs, not a host's containers): each reads its own values,
    /// every run ends, nothing is left mounted on the host.
    @Test func twentyConcurrentStarts() async throws {
        guard Self.available else { Issue.record("runc and busybox-static are needed (contrib/dev/test installs them)"); return }
        let d = try Daemon(config: "[run]\nmax_per_uid = 4\n", policy: Self.policy)
        try d.start()
        chmod(d.dir, 0o755)
        #expect(try d.coffer(["secret", "put", "ci/app/db"], stdin: Array("db-\(UUID().uuidString)".utf8)).status == 0)
        let db = try d.coffer(["secret", "get", "ci/app/db"]).out
        var bundles: [String] = []
        for i in 0..<20 {
            bundles.append(try Self.bundle(d, "c\(i)", script: "sleep 2; cat /run/secrets/db", annotations: ["io.coffer.secrets": "ci/app/db"]))
        }
        let results = try await withThrowingTaskGroup(of: (Int, RunResult).self) { group in
            for (i, b) in bundles.enumerated() {
                group.addTask { (i, try run("/usr/sbin/runc", ["run", "--bundle", b, "coffer-test-\(getpid())-c\(i)"], timeout: 120)) }
            }
            var out: [(Int, RunResult)] = []
            for try await r in group { out.append(r) }
            return out
        }
        #expect(results.count == 20)
        for (i, r) in results {
            #expect(r.status == 0 && r.out == db, "container \(i): \(r.stderr)")
        }
        for b in bundles { #expect(Self.hostMounts(under: b).isEmpty) }
        let injects = try d.coffer(["audit", "search", "--action", "inject", "--decision", "allow", "--format", "json"]).out
        #expect(injects.split(separator: "\n").count == 20, "\(injects)")
        var live = ""
        for _ in 0..<50 {
            live = try d.coffer(["run", "list", "--all"]).out
            if live == "no live runs\n" { break }
            usleep(100_000)
        }
        #expect(live == "no live runs\n")
    }

    /// Live rotation: a container reading /run/secrets/x in a loop sees only whole old
    /// or whole new values across 100 updates, each new one within a second (read from
    /// the host through /proc/PID/root), gets SIGHUP after each, and the mount stays
    /// read-only, noswap.
    @Test func aFollowedContainerSeesEveryNewVersionWhole() throws {
        guard Self.available else { Issue.record("runc and busybox-static are needed (contrib/dev/test installs them)"); return }
        let d = try Self.daemon()
        func value(_ n: Int) -> String { "v\(n)-" + String(repeating: String(UnicodeScalar(UInt8(97 + n % 26))), count: 3000 + 37 * n) + "-end" }
        #expect(try d.coffer(["secret", "put", "ci/app/x"], stdin: Array(value(0).utf8)).status == 0)
        let id = "coffer-test-\(getpid())-follow"
        let b = try Self.bundle(d, "follow", script: """
            trap 'echo hup >> /tmp/hups' HUP
            while [ ! -e /tmp/stop ]; do cat /run/secrets/x; echo; sleep 0.02; done
            grep ' /run/secrets ' /proc/mounts > /tmp/mounts
            """, annotations: ["io.coffer.secrets": "ci/app/x=x:uid=1000:mode=0440", "io.coffer.follow": "true", "io.coffer.signal": "SIGHUP"])
        let runc = Process()
        runc.executableURL = URL(fileURLWithPath: "/usr/sbin/runc")
        runc.arguments = ["run", "--bundle", b, id]
        let outPath = d.dir + "/follow.out"
        FileManager.default.createFile(atPath: outPath, contents: nil)
        runc.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        runc.standardError = FileHandle.nullDevice
        try runc.run()
        defer { if runc.isRunning { _ = try? run("/usr/sbin/runc", ["kill", id, "KILL"]); runc.waitUntilExit() } }
        // the container's init, from runc
        var pid: Int32 = 0
        for _ in 0..<100 {
            let state = try run("/usr/sbin/runc", ["state", id])
            if let j = try? JSONSerialization.jsonObject(with: Data(state.stdout)) as? [String: Any], let p = j["pid"] as? Int, p > 0,
               FileManager.default.fileExists(atPath: "/proc/\(p)/root/run/secrets/x") { pid = Int32(p); break }
            usleep(50_000)
        }
        #expect(pid > 0, "the container did not start")
        guard pid > 0 else { return }
        let seen = "/proc/\(pid)/root/run/secrets/x"
        var slowest = 0.0
        for n in 1...100 {
            #expect(try d.coffer(["secret", "put", "ci/app/x"], stdin: Array(value(n).utf8)).status == 0)
            let t0 = Date()
            while (try? String(contentsOfFile: seen, encoding: .utf8)) != value(n) && Date().timeIntervalSince(t0) < 1.0 { usleep(2_000) }
            let took = Date().timeIntervalSince(t0)
            slowest = max(slowest, took)
            #expect((try? String(contentsOfFile: seen, encoding: .utf8)) == value(n), "version \(n + 1) not in the container after \(took)s")
        }
        var st = stat()
        #expect(stat(seen, &st) == 0 && st.st_mode & 0o7777 == 0o440 && st.st_uid == 1000, "owner or mode changed")
        // coffer inject list: what the kernel shows of the container's tmpfs
        let listed = try d.coffer(["inject", "list", "--all", "--format", "json"])
        let j = try JSONSerialization.jsonObject(with: Data(listed.stdout)) as? [String: Any]
        let x = (j?["injections"] as? [[String: Any]])?.first { ($0["label"] as? String) == "container:\(id)" }
        #expect(x?["verdict"] as? String == "weak" && (x?["reasons"] as? [String]) == ["x is 440 (not 0400)"], "\(listed.out)")
        #expect((x?["mount_options"] as? [String])?.contains("ro") == true && (x?["super_options"] as? [String])?.contains("noswap") == true
                && x?["fs_type"] as? String == "tmpfs" && x?["source"] as? String == "coffer-run" && x?["follow"] as? Bool == true, "\(listed.out)")
        let xs = (x?["secrets"] as? [[String: Any]]) ?? []
        #expect(xs.count == 1 && xs[0]["path"] as? String == "ci/app/x" && xs[0]["version"] as? Int == 101, "\(xs)")
        let xf = (x?["files"] as? [[String: Any]]) ?? []
        #expect(xf.count == 1 && xf[0]["name"] as? String == "x" && xf[0]["mode"] as? String == "0440" && xf[0]["uid"] as? Int == 1000, "\(xf)")
        let text = try d.coffer(["inject", "list", "--all"]).out
        #expect(text.contains("container:\(id)") && text.contains("WEAK") && text.contains("weak: x is 440"), "\(text)")
        FileManager.default.createFile(atPath: b + "/rootfs/tmp/stop", contents: nil)
        runc.waitUntilExit()
        #expect(runc.terminationStatus == 0)
        let lines = try String(contentsOfFile: outPath, encoding: .utf8).split(separator: "\n").map(String.init)
        let valid = Set((0...100).map(value))
        let torn = lines.filter { !valid.contains($0) }
        #expect(lines.count > 20 && torn.isEmpty, "\(lines.count) reads, \(torn.count) not a whole value: \(torn.first?.prefix(40) ?? "")")
        #expect(Set(lines).count > 5, "the container saw too few versions: \(Set(lines).count)")
        let hups = (try? String(contentsOfFile: b + "/rootfs/tmp/hups", encoding: .utf8)) ?? ""
        #expect(hups.contains("hup"), "no SIGHUP reached the container")
        let mounts = (try? String(contentsOfFile: b + "/rootfs/tmp/mounts", encoding: .utf8)) ?? ""
        #expect(mounts.contains("tmpfs ro,") && mounts.contains("noswap"), "\(mounts)")
        let rotations = try d.coffer(["audit", "search", "--action", "inject_rotate", "--format", "json"]).out
        #expect(rotations.contains("container:\(id)") && rotations.contains("\"decision\":\"allow\""), "\(rotations.prefix(500))")
        let done = try d.coffer(["audit", "search", "--action", "inject_rotate_done", "--format", "json"]).out
        #expect(done.contains("\"versions\":[\"101\"]") && done.contains("written; signal") && !done.contains("not written"), "\(done.suffix(800))")
        print("live rotation: 100 updates, slowest seen after \(Int(slowest * 1000)) ms; \(lines.count) reads in the container, \(Set(lines).count) versions seen")
        #expect(Self.hostMounts(under: b).isEmpty)
    }

    /// `container:PATTERN` bindings: root itself may not read ci/app/db, containers
    /// named coffer-ci-* get it injected; another name, or root claiming a container
    /// for a process in its own namespaces, does not.
    @Test func containerSubjectsGrantToContainersByName() throws {
        guard Self.available else { Issue.record("runc and busybox-static are needed (contrib/dev/test installs them)"); return }
        let d = try Daemon(config: "", policy: """
            [role.host]
            [[role.host.rule]]
            path = "**"
            capabilities = ["write", "list", "admin", "audit"]
            [role.ci-containers]
            [[role.ci-containers.rule]]
            path = "ci/app/**"
            capabilities = ["inject"]
            [[bind]]
            subjects = ["uid:0"]
            roles = ["host"]
            [[bind]]
            subjects = ["container:coffer-ci-*"]
            roles = ["ci-containers"]
            """)
        try d.start()
        chmod(d.dir, 0o755)
        let value = "db-\(UUID().uuidString)"
        #expect(try d.coffer(["secret", "put", "ci/app/db"], stdin: Array(value.utf8)).status == 0)
        #expect(try d.coffer(["secret", "get", "ci/app/db"]).status != 0, "root itself may not read it")
        let ok = "coffer-ci-\(getpid())"
        let b = try Self.bundle(d, "ci", script: "cat /run/secrets/db", annotations: ["io.coffer.secrets": "ci/app/db"])
        var r = try run("/usr/sbin/runc", ["run", "--bundle", b, ok], timeout: 60)
        #expect(r.status == 0 && r.out == value, "\(r.stderr)")
        let b2 = try Self.bundle(d, "other", script: "touch /ran", annotations: ["io.coffer.secrets": "ci/app/db"])
        r = try run("/usr/sbin/runc", ["run", "--bundle", b2, "coffer-web-\(getpid())"], timeout: 60)
        #expect(r.status != 0 && r.stderr.contains("permission denied"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: b2 + "/rootfs/ran"))
        // root naming a process of its own namespaces a container gets nothing by the name
        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: "/bin/sleep")
        sleeper.arguments = ["20"]
        try sleeper.run()
        defer { kill(sleeper.processIdentifier, SIGKILL); sleeper.waitUntilExit() }
        let body = #"{"secrets":[{"path":"ci/app/db"}],"mount":"private","holder_pid":\#(sleeper.processIdentifier),"label":"container:\#(ok)"}"#
        let c = try run("/usr/bin/curl", ["-s", "--unix-socket", d.socket, "-X", "POST", "-H", "Content-Type: application/json", "--data", body, "http://coffer/v1/runs"])
        #expect(c.out.contains("permission_denied") && !c.out.contains("value_base64"), "\(c.out)")
        let events = try d.coffer(["audit", "search", "--action", "inject", "--decision", "allow", "--format", "json"]).out
        #expect(events.contains("\"container\":\"\(ok)\""), "\(events)")
        // policy explain knows the subject
        let e = try d.coffer(["policy", "explain", "--as", "container:coffer-ci-7", "inject", "ci/app/db"])
        #expect(e.status == 0 && e.out.hasPrefix("ALLOW") && e.out.contains("ci-containers"), "\(e.out) \(e.stderr)")
        let e2 = try d.coffer(["policy", "explain", "--as", "container:coffer-web-7", "inject", "ci/app/db"])
        #expect(e2.out.hasPrefix("DENY"), "\(e2.out)")
    }

    /// A target on a shared mount (a volume with rshared propagation) is refused: the
    /// tmpfs would propagate to the host and outlive the container.
    @Test func aTargetOnASharedMountIsRefused() throws {
        guard Self.available else { Issue.record("runc and busybox-static are needed (contrib/dev/test installs them)"); return }
        let d = try Self.daemon()
        let shared = d.dir + "/volume"
        mkdir(shared, 0o755)
        #expect(try run("/bin/mount", ["--bind", shared, shared]).status == 0)
        defer { _ = try? run("/bin/umount", ["-l", shared]) }
        #expect(try run("/bin/mount", ["--make-shared", shared]).status == 0)
        let b = try Self.bundle(d, "shared", script: "touch /ran", annotations: ["io.coffer.secrets": "ci/app/db", "io.coffer.target": "/mnt/sh"])
        let url = URL(fileURLWithPath: b + "/config.json")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        var mounts = config["mounts"] as! [[String: Any]]
        mounts.append(["destination": "/mnt/sh", "type": "bind", "source": shared, "options": ["rbind", "rshared"]])
        config["mounts"] = mounts
        try JSONSerialization.data(withJSONObject: config).write(to: url)
        let r = try run("/usr/sbin/runc", ["run", "--bundle", b, "coffer-test-\(getpid())-shared"], timeout: 60)
        #expect(r.status != 0 && r.stderr.contains("is on a mount shared with other mount namespaces"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: b + "/rootfs/ran"))
        let host = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        #expect(!host.split(separator: "\n").contains { $0.contains(shared) && $0.contains("coffer-run") }, "a tmpfs reached the host")
        let left = (try? FileManager.default.contentsOfDirectory(atPath: shared)) ?? []
        #expect(left.isEmpty, "\(left)")
    }

    /// run.max_ttl does not kill a container: its run stops being followed and listed.
    @Test func aContainerOutlivesTheRunTTL() throws {
        guard Self.available else { Issue.record("runc and busybox-static are needed (contrib/dev/test installs them)"); return }
        let d = try Daemon(config: "[run]\nmax_ttl = \"1s\"\n", policy: Self.policy)
        try d.start()
        chmod(d.dir, 0o755)
        #expect(try d.coffer(["secret", "put", "ci/app/db"], stdin: Array("v".utf8)).status == 0)
        let id = "coffer-test-\(getpid())-ttl"
        let b = try Self.bundle(d, "ttl", script: "sleep 8; cat /run/secrets/db; echo; echo alive", annotations: ["io.coffer.secrets": "ci/app/db"])
        let r = try run("/usr/sbin/runc", ["run", "--bundle", b, id], timeout: 60)
        #expect(r.status == 0 && r.out == "v\nalive\n", "\(r.status) \(r.out) \(r.stderr)")
        let ends = try d.coffer(["audit", "search", "--action", "run_end", "--format", "json"]).out
        #expect(ends.contains("ttl expired: no longer followed (the container keeps its tmpfs until it ends)"), "\(ends)")
    }

    @Test func aStateThatIsNotOneIsRefused() throws {
        for (input, message) in [("not json", "is not an OCI state"), (#"{"id":"x","pid":1,"bundle":"/tmp"}"#, "is not a container's"),
                                 (#"{"id":"x/y","pid":5,"bundle":"/tmp"}"#, "no valid container id"),
                                 (#"{"id":"x","pid":999999999,"bundle":"/nonexistent","annotations":{"io.coffer.secrets":"a/b"}}"#, "not a directory")] {
            let r = try run(Bins.coffer, ["oci-hook", "createRuntime"], stdin: Array(input.utf8))
            #expect(r.status != 0 && r.stderr.contains(message), "\(input): \(r.stderr)")
        }
        // a process of the host's own mount namespace is no container's
        let d = try Self.daemon()
        let b = try Self.bundle(d, "hostns", script: "true", annotations: [:])
        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: "/bin/sleep")
        sleeper.arguments = ["20"]
        try sleeper.run()
        defer { kill(sleeper.processIdentifier, SIGKILL); sleeper.waitUntilExit() }
        let state = #"{"ociVersion":"1.0.2","id":"hostns","status":"creating","pid":\#(sleeper.processIdentifier),"bundle":"\#(b)","annotations":{"io.coffer.secrets":"ci/app/db"}}"#
        let h = try run(Bins.coffer, ["oci-hook", "createRuntime"], stdin: Array(state.utf8), env: ["COFFER_SOCKET": d.socket])
        #expect(h.status != 0 && h.stderr.contains("is in the host's mount namespace"), "\(h.stderr)")
        #expect(Self.hostMounts(under: b).isEmpty)
        let usage = try run(Bins.coffer, ["oci-hook"])
        #expect(usage.status == 7 && usage.stderr.contains("usage: coffer oci-hook createRuntime|poststop"))
    }
}
