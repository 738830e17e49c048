import Foundation
import Testing

/// Real rootful podman (runc runtime, cgroupfs, its own storage under the test's
/// folder, a local image imported from a busybox-static rootfs): the OCI hook through
/// `--hooks-dir` with contrib/oci's files, and podman's shell secret driver.
@Suite(.serialized) struct PodmanTests {
    static let podmanPath = "/usr/bin/podman"
    static var available: Bool {
        FileManager.default.isExecutableFile(atPath: podmanPath) && FileManager.default.isExecutableFile(atPath: "/usr/sbin/runc")
            && FileManager.default.isExecutableFile(atPath: "/bin/busybox")
    }

    /// podman with storage, run state, configuration and hooks of its own in `d.dir`.
    struct Podman {
        let d: Daemon
        var base: String { d.dir + "/podman" }
        var env: [String: String] { ["CONTAINERS_CONF": base + "/containers.conf", "COFFER_SOCKET": d.socket] }

        init(_ d: Daemon) throws {
            self.d = d
            let fm = FileManager.default
            try fm.createDirectory(atPath: d.dir + "/podman/hooks", withIntermediateDirectories: true)
            try """
                [containers]
                default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
                [engine]
                runtime = "runc"
                cgroup_manager = "cgroupfs"
                events_logger = "file"
                """.write(toFile: d.dir + "/podman/containers.conf", atomically: true, encoding: .utf8)
            // contrib/oci's hook files, pointed at this build and this daemon
            for stage in ["createRuntime", "poststop"] {
                var text = try String(contentsOfFile: Bins.packageRoot + "/contrib/oci/coffer-\(stage).json", encoding: .utf8)
                text = text.replacingOccurrences(of: "/usr/local/bin/coffer", with: Bins.coffer)
                    .replacingOccurrences(of: "/run/coffer/coffer.sock", with: d.socket)
                try text.write(toFile: d.dir + "/podman/hooks/coffer-\(stage).json", atomically: true, encoding: .utf8)
            }
            let rootfs = d.dir + "/podman/rootfs"
            for sub in ["bin", "proc", "sys", "dev", "run", "tmp", "etc"] {
                try fm.createDirectory(atPath: rootfs + "/" + sub, withIntermediateDirectories: true)
            }
            try fm.copyItem(atPath: "/bin/busybox", toPath: rootfs + "/bin/busybox")
            for applet in ["sh", "cat", "grep", "stat", "echo", "touch", "true"] {
                try fm.createSymbolicLink(atPath: rootfs + "/bin/" + applet, withDestinationPath: "busybox")
            }
            let tar = try run("/bin/tar", ["-C", rootfs, "-cf", d.dir + "/podman/rootfs.tar", "."])
            #expect(tar.status == 0, "\(tar.stderr)")
            let imported = try podman(["image", "import", d.dir + "/podman/rootfs.tar", "localhost/coffer-test:latest"])
            #expect(imported.status == 0, "\(imported.stderr)")
        }

        func podman(_ args: [String], stdin: [UInt8]? = nil) throws -> RunResult {
            try run(PodmanTests.podmanPath, ["--root", base + "/storage", "--runroot", base + "/runroot", "--storage-driver", "vfs",
                                             "--hooks-dir", base + "/hooks"] + args, stdin: stdin, env: env, timeout: 120)
        }
    }

    static let policy = """
        [role.ops]
        [[role.ops.rule]]
        path = "**"
        capabilities = ["read", "list", "write", "destroy", "admin", "audit"]
        [[role.ops.rule]]
        path = "ci/private/**"
        capabilities = ["read"]
        effect = "deny"
        [[bind]]
        subjects = ["uid:0"]
        roles = ["ops"]
        """

    @Test func podmanRunsTheHookFromHooksDirAndTheContainerReadsATmpfs() throws {
        guard Self.available else { Issue.record("podman, runc and busybox-static are needed (.ci/run installs them)"); return }
        let d = try Daemon(config: "", policy: Self.policy)
        try d.start()
        let value = "db-\(UUID().uuidString)"
        #expect(try d.coffer(["secret", "put", "ci/app/db"], stdin: Array(value.utf8)).status == 0)
        let p = try Podman(d)
        let name = "coffer-test-\(getpid())-pm"
        var r = try p.podman(["run", "--rm", "--name", name, "--network", "none",
                              "--annotation", "io.coffer.secrets=ci/app/db=db:uid=1000:mode=0440",
                              "localhost/coffer-test:latest", "/bin/sh", "-c",
                              "cat /run/secrets/db; echo; stat -c '%a %u' /run/secrets/db; grep ' /run/secrets ' /proc/mounts"])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.out.split(separator: "\n").map(String.init)
        #expect(lines.count == 3 && lines[0] == value && lines[1] == "440 1000", "\(r.out)")
        #expect(lines.count == 3 && lines[2].hasPrefix("coffer-run /run/secrets tmpfs ro,") && lines[2].contains("noswap"), "\(r.out)")
        let events = try d.coffer(["audit", "search", "--action", "inject", "--format", "json"]).out
        #expect(events.contains("\"label\":\"container:") && events.contains("ci/app/db"), "\(events)")
        // a container without the annotation does not run the hook; a denied one does not start
        r = try p.podman(["run", "--rm", "--network", "none", "localhost/coffer-test:latest", "/bin/sh", "-c", "ls /run/secrets 2>&1 || echo none"])
        #expect(r.status == 0 && r.out.contains("none"), "\(r.out) \(r.stderr)")
        r = try p.podman(["run", "--rm", "--network", "none", "--annotation", "io.coffer.secrets=ci/private/x",
                          "localhost/coffer-test:latest", "/bin/touch", "/tmp/ran"])
        #expect(r.status != 0 && r.stderr.contains("permission denied"), "\(r.stderr)")
        #expect(try d.coffer(["run", "list", "--all"]).out == "no live runs\n")
        let mounts = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        let left = mounts.split(separator: "\n").filter { $0.contains(p.base) && $0.contains("coffer-run") }
        #expect(left.isEmpty, "\(left)")
    }

    /// `podman secret create --driver shell` stores into Coffer; `podman run --secret`
    /// looks it up; `podman secret rm` destroys it; every step is in the audit trail.
    @Test func theShellDriverKeepsPodmanSecretsInCoffer() throws {
        guard Self.available else { Issue.record("podman, runc and busybox-static are needed (.ci/run installs them)"); return }
        let d = try Daemon(config: "", policy: Self.policy)
        try d.start()
        let p = try Podman(d)
        let driver = ["store", "lookup", "delete", "list"].map { "\($0)=\(Bins.coffer) podman-driver \($0) --prefix ci/podman" }.joined(separator: ",")
        let value = "npm-token-\(UUID().uuidString)"
        let file = d.dir + "/podman/value"
        try value.write(toFile: file, atomically: true, encoding: .utf8)
        var r = try p.podman(["secret", "create", "--driver", "shell", "--driver-opts", driver, "npmrc", file])
        #expect(r.status == 0, "\(r.stderr)")
        unlink(file)
        let id = r.out.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(id.count == 25, "\(r.out)")
        // the value is in Coffer under the prefix, not in podman's storage
        #expect(try d.coffer(["secret", "get", "ci/podman/" + id]).out == value)
        #expect(try d.coffer(["secret", "list", "ci/podman"]).out == id + "\n")
        let grep = try run("/bin/grep", ["-rl", value, p.base + "/storage"])
        #expect(grep.status == 1, "podman's storage holds the value: \(grep.out)")
        r = try p.podman(["run", "--rm", "--network", "none", "--secret", "npmrc", "localhost/coffer-test:latest", "/bin/cat", "/run/secrets/npmrc"])
        #expect(r.status == 0 && r.out == value, "\(r.out) \(r.stderr)")
        r = try p.podman(["secret", "rm", "npmrc"])
        #expect(r.status == 0, "\(r.stderr)")
        let versions = try d.coffer(["secret", "versions", "ci/podman/" + id]).out
        #expect(versions.contains("destroyed"), "\(versions)")
        let audit = try d.coffer(["audit", "search", "--path", "ci/podman/" + id, "--format", "json"]).out
        for action in ["\"action\":\"write\"", "\"action\":\"read\"", "\"action\":\"destroy\""] {
            #expect(audit.contains(action), "\(action): \(audit)")
        }
        // the driver refuses what podman would never send, with a clear error
        let bad = try run(Bins.coffer, ["podman-driver", "lookup"], env: ["COFFER_SOCKET": d.socket, "SECRET_ID": "../../etc"])
        #expect(bad.status != 0 && bad.stderr.contains("coffer: error: SECRET_ID must be podman's hexadecimal secret id"), "\(bad.stderr)")
        let none = try run(Bins.coffer, ["podman-driver", "lookup"], env: ["COFFER_SOCKET": d.socket])
        #expect(none.status != 0 && none.stderr.contains("SECRET_ID is not set"), "\(none.stderr)")
        let op = try run(Bins.coffer, ["podman-driver", "copy"], env: ["COFFER_SOCKET": d.socket, "SECRET_ID": "abc"])
        #expect(op.status != 0 && op.stderr.contains("unknown operation 'copy'"), "\(op.stderr)")
        // a second store under an id that exists does not overwrite it
        #expect(try d.coffer(["secret", "put", "ci/podman/abc"], stdin: Array("first".utf8)).status == 0)
        let again = try run(Bins.coffer, ["podman-driver", "store", "--prefix", "ci/podman"], stdin: Array("second".utf8),
                            env: ["COFFER_SOCKET": d.socket, "SECRET_ID": "abc"])
        #expect(again.status != 0)
        #expect(try d.coffer(["secret", "get", "ci/podman/abc"]).out == "first")
    }
}
