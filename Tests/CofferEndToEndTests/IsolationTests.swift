import Foundation
import Testing

/// `coffer run --network none` and `require = ["network:none"]` end to end: real
/// network namespaces (and, for a user who is not root, a real user namespace), a
/// TCP listener of the host, and cofferd checking the requesting process itself.
@Suite(.serialized) struct IsolationTests {
    static let policy = """
        [role.ci]
        [[role.ci.rule]]
        path = "ci/**"
        capabilities = ["read", "list"]
        [[role.ci.rule]]
        path = "ci/signing/**"
        capabilities = ["read", "inject"]
        require = ["network:none"]
        [role.ops]
        [[role.ops.rule]]
        path = "**"
        capabilities = ["read", "list", "write", "delete", "admin", "audit", "inject"]
        [[bind]]
        subjects = ["user:coffer-test", "uid:0"]
        roles = ["ci"]
        [[bind]]
        subjects = ["uid:0"]
        roles = ["ops"]
        """

    /// root holds ci and ops: the requirement of ci's rule binds root's reads of
    /// ci/signing too (the stricter rule wins).
    static func daemon() throws -> Daemon {
        let d = try Daemon(config: "", policy: policy)
        try d.start()
        mkdir(d.dir + "/secrets", 0o755)
        chmod(d.dir, 0o755)
        for (path, value) in [("ci/app/db", "app-db-1"), ("ci/signing/key", "SIGNING-\(UUID().uuidString)")] {
            // written over the API by root's ops role: writing is not a release
            let (status, _) = try d.curl("PUT", "/v1/secrets/data/" + path, body: #"{"value":"\#(value)"}"#)
            #expect(status == 200)
        }
        return d
    }

    static func marks(_ d: Daemon) -> String {
        let dir = d.dir + "/marks"
        mkdir(dir, 0o777)
        chmod(dir, 0o777)
        return dir
    }

    struct ListenError: Error {}

    /// A TCP listener of the host's network namespace (all addresses, an ephemeral port).
    final class Listener {
        let fd: Int32
        let port: UInt16
        init() throws {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_addr.s_addr = 0
            addr.sin_port = 0
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let ok = withUnsafeMutablePointer(to: &addr) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && listen(fd, 16) == 0 && getsockname(fd, $0, &len) == 0 }
            }
            guard ok else {
                close(fd)
                throw ListenError()
            }
            self.fd = fd
            port = UInt16(bigEndian: addr.sin_port)
        }
        deinit { close(fd) }
    }

    /// The host's first IPv4 address other than loopback, if it has one.
    static func hostAddress() -> String? {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return nil }
        defer { freeifaddrs(list) }
        var p = list
        while let i = p {
            if let a = i.pointee.ifa_addr, a.pointee.sa_family == sa_family_t(AF_INET), String(cString: i.pointee.ifa_name) != "lo" {
                var host = [CChar](repeating: 0, count: 64)
                if getnameinfo(a, socklen_t(MemoryLayout<sockaddr_in>.size), &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0 {
                    return String(cString: host)
                }
            }
            p = i.pointee.ifa_next
        }
        return nil
    }

    /// Connects to each target on the port, then to a listener of its own on loopback.
    static let probe = """
        import socket, sys
        port = int(sys.argv[1])
        out = []
        for host in sys.argv[2:]:
            try:
                socket.create_connection((host, port), timeout=3).close()
                out.append(host + "=ok")
            except OSError:
                out.append(host + "=no")
        l = socket.socket()
        l.bind(("127.0.0.1", 0))
        l.listen(1)
        c = socket.create_connection(l.getsockname(), timeout=3)
        a, _ = l.accept()
        c.sendall(b"y")
        out.append("own-loopback=" + ("ok" if a.recv(1) == b"y" else "no"))
        print(" ".join(out))
        """

    @Test func withoutNetworkNothingLeavesButItsOwnLoopbackWorks() throws {
        let d = try Self.daemon()
        let listener = try Listener()
        let probe = d.dir + "/probe.py"
        try Self.probe.write(toFile: probe, atomically: true, encoding: .utf8)
        chmod(probe, 0o644)
        let targets = ["127.0.0.1"] + (Self.hostAddress().map { [$0] } ?? [])
        let args = ["--dir", d.dir + "/secrets", "--secret", "ci/app/db", "--", "/usr/bin/python3", probe, String(listener.port)] + targets
        let open = try d.coffer(["run"] + args)
        #expect(open.status == 0, "\(open.stderr)")
        #expect(open.out == targets.map { "\($0)=ok" }.joined(separator: " ") + " own-loopback=ok\n", "\(open.out)")
        let closed = try d.coffer(["run", "--network", "none"] + args)
        #expect(closed.status == 0, "\(closed.stderr)")
        #expect(closed.out == targets.map { "\($0)=no" }.joined(separator: " ") + " own-loopback=ok\n", "\(closed.out)")
        // and the same for a user who is not root (a user namespace of its own)
        let user = TestUser.nonAdmin
        let refused = try d.coffer(["run", "--network", "none"] + args, as: user)
        #expect(refused.status == 7 && refused.stderr.contains("does not allow noswap") && refused.stderr.contains("--allow-swap"), "\(refused.stderr)")
        let asUser = try d.coffer(["run", "--network", "none", "--allow-swap"] + args, as: user)
        #expect(asUser.status == 0, "\(asUser.stderr)")
        #expect(asUser.out == targets.map { "\($0)=no" }.joined(separator: " ") + " own-loopback=ok\n", "\(asUser.out)")
        // the injection's audit event says which network the run had, as cofferd verified it
        let events = try d.coffer(["audit", "search", "--action", "inject", "--format", "json"]).out
        #expect(events.contains(#""network":"none""#) && events.contains(#""network":"host""#), "\(events)")
        // and whether cofferd counted it as cut off: the user's run yes, root's never
        #expect(events.contains(#""isolation":"verified""#) && events.contains(#""isolation":"root: not counted""#), "\(events)")
    }

    /// A root command could otherwise undo its namespace (uncover the host's /proc by
    /// unmounting its own, then setns into PID 1's network namespace): it runs without
    /// the capabilities for that, for good.
    @Test func aRootCommandWithoutNetworkCannotLeaveItsNamespace() throws {
        let d = try Self.daemon()
        let script = """
            umount /proc 2>/dev/null && echo umount-worked
            nsenter --net=/proc/1/ns/net true 2>/dev/null && echo nsenter-worked
            bnd=$(awk '/^CapBnd/ {print $2}' /proc/self/status)
            echo "sys_admin_bounding=$(( (0x$bnd >> 21) & 1 ))"
            """
        let r = try d.coffer(["run", "--network", "none", "--dir", d.dir + "/secrets", "--secret", "ci/app/db", "--", "/bin/sh", "-c", script])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.out == "sys_admin_bounding=0\n", "\(r.out)")
        // with network, a root command keeps its capabilities (nothing changes for it)
        let open = try d.coffer(["run", "--dir", d.dir + "/secrets", "--secret", "ci/app/db", "--", "/bin/sh", "-c",
                                 "bnd=$(awk '/^CapBnd/ {print $2}' /proc/self/status); echo $(( (0x$bnd >> 21) & 1 ))"])
        #expect(open.out == "1\n", "\(open.out) \(open.stderr)")
    }

    @Test func aValueThatRequiresNoNetworkReachesOnlyARunWithout() throws {
        let d = try Self.daemon()
        let key = try d.coffer(["secret", "get", "ci/app/db"]).out
        #expect(key == "app-db-1")
        let marks = Self.marks(d)
        let dir = d.dir + "/secrets"
        // not to secret get, even for root whose ci/** rule alone would allow the read
        for user in [nil, TestUser.nonAdmin] as [TestUser?] {
            let get = try d.coffer(["secret", "get", "ci/signing/key"], as: user)
            #expect(get.status == 5, "\(get.stderr)")
            #expect(get.stderr.contains("requires network:none") && get.stderr.contains("missing network:none"), "\(get.stderr)")
            // not to a run with network: nothing runs
            let withNet = try d.coffer(["run", "--dir", dir, "--secret", "ci/signing/key", "--", "/bin/sh", "-c", "touch \(marks)/ran"], as: user)
            #expect(withNet.status == 5, "\(withNet.stderr)")
            #expect(!FileManager.default.fileExists(atPath: marks + "/ran"))
            // to a run without network, yes — of a user who is not root: root can undo
            // any namespace, so its runs never count as cut off
            let name = user == nil ? "root" : "user"
            let isolated = try d.coffer(["run", "--network", "none", "--allow-swap", "--dir", dir, "--secret", "ci/signing/key", "--", "/bin/sh", "-c",
                                         "cat $COFFER_SECRETS_DIR/key > \(marks)/\(name)"], as: user)
            if user == nil {
                #expect(isolated.status == 5 && isolated.stderr.contains("a run of root is never counted as cut off"), "\(isolated.stderr)")
                #expect(!FileManager.default.fileExists(atPath: marks + "/root"))
            } else {
                #expect(isolated.status == 0, "\(isolated.stderr)")
                #expect(String(decoding: fileBytes(marks + "/" + name), as: UTF8.self).hasPrefix("SIGNING-"))
            }
        }
        // the explanation names the requirement
        let explain = try d.coffer(["policy", "explain", "--as", "user:coffer-test", "inject", "ci/signing/key"])
        #expect(explain.out.contains("requires network:none"), "\(explain.out)")
        // nothing is left mounted on the host
        #expect(RunTests.mounts(under: dir).isEmpty)
        #expect(try d.coffer(["run", "list", "--all"]).out == "no live runs\n")
    }

    /// cofferd believes no claim: a request that says "network none" from the host's
    /// network namespace, or from a new one while holding a socket made in the host's
    /// (connected or not), is refused; so is one from root's process for a path that
    /// requires it.
    @Test func aClaimOfIsolationIsCheckedNotBelieved() throws {
        let d = try Self.daemon()
        let user = TestUser.nonAdmin
        let body = #"{"secrets":[{"path":"ci/signing/key"}],"mount":"private","network":"none"}"#
        let (status, text) = try d.curl("POST", "/v1/runs", body: body, as: user)
        #expect(status == 403 && errorCode(text) == "network_not_isolated", "\(status) \(text)")
        #expect(text.contains("shares the host's network namespace"), "\(text)")
        #expect(!text.contains("SIGNING-"))
        let curl = ["/usr/bin/curl", "-s", "--unix-socket", d.socket, "-X", "POST", "-H", "Content-Type: application/json", "-d", body,
                    "-w", "\n%{http_code}", "http://coffer/v1/runs"]
        // in a network namespace of its own (a user namespace's), holding a UDP socket
        // of the host's that is not even bound, or a connected TCP one
        let listener = try Listener()
        for kind in ["udp", "tcp"] {
            let keep = """
                import os, socket, sys
                if sys.argv[1] == "udp":
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                else:
                    s = socket.create_connection(("127.0.0.1", \(listener.port)))
                os.set_inheritable(s.fileno(), True)
                os.execv("/usr/bin/unshare", ["unshare", "-rnm", "--"] + sys.argv[2:])
                """
            let script = d.dir + "/keep.py"
            try keep.write(toFile: script, atomically: true, encoding: .utf8)
            chmod(script, 0o644)
            let (exe, args) = user.wrap("/usr/bin/python3", [script, kind] + curl)
            let held = try run(exe, args)
            #expect(held.out.hasSuffix("\n403") && held.out.contains("holds a socket of another network namespace"), "\(kind): \(held.out) \(held.stderr)")
            #expect(!held.out.contains("SIGNING-"))
        }
        // the same without the socket: a process with no network receives it
        let (exe, args) = user.wrap("/usr/bin/unshare", ["-rnm", "--"] + curl)
        let clean = try run(exe, args)
        #expect(clean.out.hasSuffix("\n200") && clean.out.contains("value_base64"), "\(clean.out) \(clean.stderr)")
        // root's process in a namespace of its own: a run without network, but not counted as cut off
        let rootClean = try run("/usr/bin/unshare", ["-n", "--"] + curl)
        #expect(rootClean.out.hasSuffix("\n403") && rootClean.out.contains("never counted as cut off"), "\(rootClean.out)")
    }

    /// What `coffer run` inherits stays outside: descriptors beyond 0-2 do not reach a
    /// run without network (an inherited socket would still reach the host's).
    @Test func inheritedDescriptorsDoNotCrossIntoARunWithoutNetwork() throws {
        let d = try Self.daemon()
        let user = TestUser.nonAdmin
        let script = d.dir + "/inherit.py"
        try """
            import os, socket, sys
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            os.set_inheritable(s.fileno(), True)
            fd = str(s.fileno())
            os.execv(sys.argv[1], sys.argv[1:] + ["/bin/sh", "-c", "if [ -e /proc/self/fd/" + fd + " ]; then echo inherited; else echo closed; fi"])
            """.write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o644)
        let (exe, args) = user.wrap("/usr/bin/python3", [script, Bins.sharedCoffer, "--socket", d.socket, "run", "--network", "none", "--allow-swap",
                                                        "--dir", d.dir + "/secrets", "--secret", "ci/signing/key", "--"])
        let r = try run(exe, args)
        #expect(r.status == 0 && r.out == "closed\n", "\(r.out) \(r.stderr)")
    }

    @Test func badInputIsRefused() throws {
        let d = try Self.daemon()
        let dir = d.dir + "/secrets"
        var r = try d.coffer(["run", "--network", "none", "--mount", "daemon", "--secret", "ci/app/db", "--", "/bin/true"])
        #expect(r.status == 7 && r.stderr.contains("not with --mount daemon"), "\(r.stderr)")
        r = try d.coffer(["run", "--network", "none", "--keep-children", "--dir", dir, "--secret", "ci/app/db", "--", "/bin/true"])
        #expect(r.status == 7 && r.stderr.contains("--keep-children"), "\(r.stderr)")
        r = try d.coffer(["run", "--network", "moon", "--secret", "ci/app/db", "--", "/bin/true"])
        #expect(r.status == 7 && r.stderr.contains("--network must be host or none"), "\(r.stderr)")
        let bad = d.dir + "/bad.toml"
        try "[role.ci]\n[[role.ci.rule]]\npath = \"ci/**\"\ncapabilities = [\"read\"]\nrequire = [\"network:offline\"]\n"
            .write(toFile: bad, atomically: true, encoding: .utf8)
        r = try run(Bins.coffer, ["policy", "check", bad])
        #expect(r.status != 0 && r.stderr.contains("\(bad):5: unknown requirement (known: network:none)"), "\(r.stderr)")
        // the dry run of a run without network plans it as such, releasing nothing
        r = try d.coffer(["run", "--dry-run", "--network", "none", "--dir", dir, "--secret", "ci/signing/key", "--", "/bin/true"])
        #expect(r.status == 0 && r.out.contains("network: none"), "\(r.out) \(r.stderr)")
        #expect(!r.out.contains("SIGNING-"))
    }
}

/// `--registry-auth`: push credentials as auth.json on the run's tmpfs, against a real
/// registry (Debian's docker-registry, the CNCF distribution registry) with htpasswd
/// authentication on loopback, and a real `buildah push`.
@Suite(.serialized) struct RegistryAuthTests {
    /// A background process (stdio to /dev/null), killed at the end.
    final class Background {
        let pid: pid_t
        init(_ exe: String, _ args: [String]) throws {
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            for fd in [0, 1, 2] as [Int32] { posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0) }
            let argv = ([exe] + args).map { strdup($0) } + [nil]
            defer { argv.forEach { free($0) } }
            var p: pid_t = 0
            guard posix_spawn(&p, exe, &actions, nil, argv, environ) == 0 else { throw IsolationTests.ListenError() }
            pid = p
        }
        deinit {
            kill(pid, SIGKILL)
            var st: Int32 = 0
            waitpid(pid, &st, 0)
        }
    }

    static func freePort() throws -> UInt16 {
        let l = try IsolationTests.Listener()
        return l.port  // closed when l goes: the registry takes it next
    }

    @Test func pushCredentialsOnlyForThePushAndNoAuthFileLeft() throws {
        for tool in ["/usr/bin/docker-registry", "/usr/bin/htpasswd", "/usr/bin/buildah", "/bin/busybox"] where !FileManager.default.isExecutableFile(atPath: tool) {
            Issue.record("\(tool) is needed (contrib/dev/test installs docker-registry, apache2-utils, buildah, busybox-static)")
            return
        }
        let d = try IsolationTests.daemon()
        let password = "push-\(UUID().uuidString)"
        let reg = d.dir + "/registry"
        mkdir(reg, 0o700)
        let hash = try run("/usr/bin/htpasswd", ["-Bbn", "pusher", password])
        #expect(hash.status == 0)
        try hash.out.write(toFile: reg + "/htpasswd", atomically: true, encoding: .utf8)
        let port = try Self.freePort()
        let host = "127.0.0.1:\(port)"
        try """
            version: 0.1
            log:
              level: error
            storage:
              filesystem:
                rootdirectory: \(reg)/data
            http:
              addr: \(host)
            auth:
              htpasswd:
                realm: coffer-test
                path: \(reg)/htpasswd
            """.write(toFile: reg + "/config.yml", atomically: true, encoding: .utf8)
        let registry = try Background("/usr/bin/docker-registry", ["serve", reg + "/config.yml"])
        var up = false
        for _ in 0..<100 where !up {
            up = (try? run("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://\(host)/v2/"]).out) == "401"
            if !up { usleep(100_000) }
        }
        #expect(up, "the registry did not start")
        // an image to push
        let ctr = try run("/usr/bin/buildah", ["from", "scratch"]).out.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try run("/usr/bin/buildah", ["copy", ctr, "/bin/busybox", "/busybox"]).status == 0)
        let image = "localhost/coffer-push-test:\(port)"
        #expect(try run("/usr/bin/buildah", ["commit", "-q", ctr, image]).status == 0)
        defer {
            _ = try? run("/usr/bin/buildah", ["rm", ctr])
            _ = try? run("/usr/bin/buildah", ["rmi", "-f", image])
        }
        #expect(try d.coffer(["secret", "put", "ci/registry/push"], stdin: Array("pusher:\(password)\n".utf8)).status == 0)
        let auth = Data("pusher:\(password)".utf8).base64EncodedString()
        #expect(try d.coffer(["secret", "put", "ci/registry/auth"], stdin: Array(#"{"auths":{"\#(host)":{"auth":"\#(auth)"}}}"#.utf8)).status == 0)
        let push = ["/usr/bin/buildah", "push", "--tls-verify=false", image]
        // without credentials the registry refuses the push
        let nobody = try run(push[0], Array(push.dropFirst()) + ["docker://\(host)/coffer/app:0"], env: ["REGISTRY_AUTH_FILE": d.dir + "/none.json"])
        #expect(nobody.status != 0)
        // with them, for this command only: user:password for a registry, and an auth file as stored
        let dir = d.dir + "/secrets"
        var r = try d.coffer(["run", "--dir", dir, "--registry-auth", "\(host)=ci/registry/push", "--"] + push + ["docker://\(host)/coffer/app:1"])
        #expect(r.status == 0, "\(r.stderr)")
        r = try d.coffer(["run", "--dir", dir, "--registry-auth", "ci/registry/auth", "--", "/bin/sh", "-c",
                          "test \"$REGISTRY_AUTH_FILE\" = \"$COFFER_SECRETS_DIR/auth.json\" && " + push.joined(separator: " ") + " docker://\(host)/coffer/app:2"])
        #expect(r.status == 0, "\(r.stderr)")
        let tags = try run("/usr/bin/curl", ["-s", "-u", "pusher:\(password)", "http://\(host)/v2/coffer/app/tags/list"]).out
        #expect(tags.contains("\"1\"") && tags.contains("\"2\"") && !tags.contains("\"0\""), "\(tags)")
        // no auth file is left anywhere a tool would keep one, and nothing mounted
        #expect(RunTests.mounts(under: dir).isEmpty)
        for place in ["/run/containers", "/root/.docker", "/root/.config/containers", d.dir] {
            let found = try run("/bin/grep", ["-rlF", password, place])
            #expect(found.out.isEmpty, "\(place): \(found.out)")
        }
        // bad values: refused before anything runs
        #expect(try d.coffer(["secret", "put", "ci/registry/bad"], stdin: Array("no-colon-here".utf8)).status == 0)
        r = try d.coffer(["run", "--dir", dir, "--registry-auth", "\(host)=ci/registry/bad", "--", "/bin/sh", "-c", "touch \(d.dir)/ran"])
        #expect(r.status == 7 && r.stderr.contains("neither a containers auth file (JSON) nor user:password"), "\(r.stderr)")
        r = try d.coffer(["run", "--dir", dir, "--registry-auth", "ci/registry/push", "--", "/bin/sh", "-c", "touch \(d.dir)/ran"])
        #expect(r.status == 7 && r.stderr.contains("say for which registry") && !r.stderr.contains(password), "\(r.stderr)")
        r = try d.coffer(["run", "--dir", dir, "--registry-auth", "bad host=ci/registry/push", "--", "/bin/true"])
        #expect(r.status == 7 && r.stderr.contains("is not a registry"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: d.dir + "/ran"))
        _ = registry
    }
}
