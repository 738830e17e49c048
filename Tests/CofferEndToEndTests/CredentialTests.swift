import CofferCore
import Foundation
import Synchronization
import Testing

/// Credentials other systems trust, checked by those systems: OpenSSH certificates
/// from Coffer's CA read by ssh-keygen and used against a real sshd on loopback (a
/// child of the test, PAM with the hook from contrib/pam.d as shipped), the KRL read by
/// ssh-keygen and sshd, sessions ended when the window closes; JWTs verified by PyJWT
/// against the JWKS fetched from the socket.
@Suite(.serialized) struct CredentialTests {
    static let user = sshUser("coffer-ssh1")
    static let other = sshUser("coffer-ssh2")

    /// A login account sshd accepts: a shell, a home, no password (`*`: not locked).
    static func sshUser(_ name: String) -> TestUser {
        if getgrnam("coffer-sshops") == nil { _ = try? run("/usr/sbin/groupadd", ["--system", "coffer-sshops"]) }
        if getpwnam(name) == nil {
            _ = try? run("/usr/sbin/useradd", ["--create-home", "--shell", "/bin/sh", "--user-group", "--groups", "coffer-sshops", name])
        }
        _ = try? run("/usr/sbin/usermod", ["-p", "*", name])
        guard let pw = getpwnam(name) else {
            Issue.record("cannot create \(name): run the tests as root (CI does)")
            return TestUser(name: name, uid: 65534, gid: 65534)
        }
        return TestUser(name: name, uid: pw.pointee.pw_uid, gid: pw.pointee.pw_gid)
    }

    static let policy = """
        [role.admin]
        [[role.admin.rule]]
        path = "**"
        capabilities = ["read", "list", "write", "admin", "audit"]
        [[bind]]
        subjects = ["uid:0"]
        roles = ["admin"]

        [role.deploy]
        [[role.deploy.rule]]
        path = "deploy/**"
        capabilities = ["read"]
        [[elevation]]
        role = "deploy"
        eligible = ["group:coffer-sshops"]
        approvals = 0
        max_duration = "2h"
        reason = "optional"
        ssh = { principals = ["deploy"] }
        jwt = { audiences = ["deploy-api", "billing-api"], max_ttl = "1h" }

        [role.forced]
        [[elevation]]
        role = "forced"
        eligible = ["group:coffer-sshops"]
        approvals = 0
        max_duration = "2h"
        reason = "optional"
        ssh = { principals = ["deploy", "ops"], extensions = ["permit-pty", "permit-port-forwarding"], force_command = "/bin/echo forced", source_address = "127.0.0.1/32,::1" }

        [role.stranger]
        [[elevation]]
        role = "stranger"
        eligible = ["group:coffer-sshops"]
        approvals = 0
        max_duration = "2h"
        reason = "optional"
        ssh = { principals = ["nobody-here"] }

        [role.reviewed]
        [[elevation]]
        role = "reviewed"
        eligible = ["group:coffer-sshops"]
        approvers = ["uid:0"]
        approvals = 1
        max_duration = "2h"
        reason = "optional"
        ssh = { principals = ["deploy"] }
        jwt = { audiences = ["deploy-api"], max_ttl = "10m" }
        """

    /// One daemon and one sshd for the suite.
    final class World: @unchecked Sendable {  // set up once, then only read
        let d: Daemon
        let dir: String
        let port: Int
        let sshdPID: Int32
        let sshdLog: String
        let ca: String
        var krl: String { d.dir + "/state/ssh_revoked.krl" }

        init() throws {
            d = try Daemon(config: "[ssh]\nsession_grace = \"2s\"\n[jwt]\nissuer = \"https://coffer.test\"\n", policy: CredentialTests.policy)
            try d.start()
            dir = d.dir + "/ssh"
            // sshd opens the principals and authorized-keys files as the user: every
            // directory and file on the way is made readable explicitly (CI may run
            // with umask 077, which creation modes alone would inherit)
            for sub in ["", "/principals", "/authorized"] {
                try FileManager.default.createDirectory(atPath: dir + sub, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
                chmod(dir + sub, 0o755)
            }
            for u in [CredentialTests.user, CredentialTests.other] {
                try "deploy\n".write(toFile: dir + "/principals/" + u.name, atomically: true, encoding: .utf8)
                chmod(dir + "/principals/" + u.name, 0o644)
                let home = d.dir + "/home-" + u.name
                try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
                chown(home, u.uid, u.gid)
            }
            // keys: the user's (one per type), a plain authorized key, the host key
            for (name, args) in [("ed", ["-t", "ed25519"]), ("ec", ["-t", "ecdsa", "-b", "256"]), ("rsa", ["-t", "rsa", "-b", "3072"]),
                                 ("plain", ["-t", "ed25519"]), ("host", ["-t", "ed25519"])] {
                let r = try run("/usr/bin/ssh-keygen", ["-q", "-N", "", "-f", dir + "/" + name] + args)
                guard r.status == 0 else { throw TestError.failed("ssh-keygen: \(r.stderr)") }
                chmod(dir + "/" + name + ".pub", 0o644)
            }
            try String(contentsOfFile: dir + "/plain.pub", encoding: .utf8).write(toFile: dir + "/authorized/" + CredentialTests.user.name, atomically: true, encoding: .utf8)
            chmod(dir + "/authorized/" + CredentialTests.user.name, 0o644)
            // the CA, as `coffer ssh ca` prints it
            let ca = try d.coffer(["ssh", "ca"])
            guard ca.status == 0 else { throw TestError.failed("coffer ssh ca: \(ca.stderr)") }
            self.ca = ca.out.trimmingCharacters(in: .whitespacesAndNewlines)
            try (self.ca + "\n").write(toFile: dir + "/ca.pub", atomically: true, encoding: .utf8)
            // PAM: the service is named after sshd's argv[0]; the hook line is contrib's, pointed at this daemon
            let shipped = try String(contentsOfFile: Bins.packageRoot + "/contrib/pam.d/sshd-coffer", encoding: .utf8)
                .split(separator: "\n").filter { !$0.hasPrefix("#") && !$0.isEmpty }.joined(separator: "\n")
                .replacingOccurrences(of: "/usr/bin/coffer", with: Bins.sharedCoffer + " --socket " + d.socket)
                .replacingOccurrences(of: "/etc/ssh/coffer_user_ca.pub", with: dir + "/ca.pub")
            try "account required pam_unix.so\nsession required pam_loginuid.so\n\(shipped)\n".write(toFile: "/etc/pam.d/sshd-coffer-e2e", atomically: true, encoding: .utf8)
            // sshd's config: contrib's snippet with this test's paths, then the listener
            let snippet = try String(contentsOfFile: Bins.packageRoot + "/contrib/ssh/coffer.conf", encoding: .utf8)
                .replacingOccurrences(of: "/etc/ssh/coffer_user_ca.pub", with: dir + "/ca.pub")
                .replacingOccurrences(of: "/etc/ssh/auth_principals/%u", with: dir + "/principals/%u")
                .replacingOccurrences(of: "/var/lib/coffer/ssh_revoked.krl", with: d.dir + "/state/ssh_revoked.krl")
            port = try Self.freePort()
            try """
                ListenAddress 127.0.0.1
                Port \(port)
                HostKey \(dir)/host
                PidFile \(dir)/sshd.pid
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                AuthorizedKeysFile \(dir)/authorized/%u
                StrictModes no
                LogLevel VERBOSE
                \(snippet)
                """.write(toFile: dir + "/sshd_config", atomically: true, encoding: .utf8)
            mkdir("/run/sshd", 0o755)
            // sshd daemonises (its parent exits at once; the listener's pid is in PidFile):
            // run in the foreground, it would close the pipe Foundation's Process watches
            // and make Process wait for it, stalling every other child's reaping.
            let exe = dir + "/sshd-coffer-e2e"
            try FileManager.default.createSymbolicLink(atPath: exe, withDestinationPath: "/usr/sbin/sshd")
            sshdLog = dir + "/sshd.log"
            FileManager.default.createFile(atPath: sshdLog, contents: nil)
            let r = try run(exe, ["-E", sshdLog, "-f", dir + "/sshd_config"])
            guard r.status == 0 else { throw TestError.failed("sshd: \(r.stderr)") }
            let deadline = Date().addingTimeInterval(10)
            var pid: Int32 = 0
            while Date() < deadline {
                if let text = try? String(contentsOfFile: dir + "/sshd.pid", encoding: .utf8), let p = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                    pid = p
                    break
                }
                usleep(20_000)
            }
            guard pid > 0, kill(pid, 0) == 0 else { throw TestError.failed("sshd did not start: \((try? String(contentsOfFile: sshdLog, encoding: .utf8)) ?? "")") }
            sshdPID = pid
        }

        deinit {
            kill(sshdPID, SIGTERM)
            d.stop()
            unlink("/etc/pam.d/sshd-coffer-e2e")
        }

        static func freePort() throws -> Int {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_addr.s_addr = inet_addr("127.0.0.1")
            a.sin_port = 0
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let ok = withUnsafeMutablePointer(to: &a) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
            }
            guard ok else { throw TestError.failed("no free port") }
            return Int(UInt16(bigEndian: a.sin_port))
        }

        func coffer(_ u: TestUser, _ args: [String]) throws -> RunResult { try d.coffer(args, as: u) }

        func home(_ u: TestUser) -> String { d.dir + "/home-" + u.name }

        /// Asks for `role` and activates it (the rules need no approval); the id.
        func elevate(_ u: TestUser, _ role: String, for duration: String = "1h") throws -> String {
            let r = try coffer(u, ["elevate", "request", role, "--for", duration, "--format", "json"])
            guard r.status == 0, let id = json(r.out)["id"] as? String else { throw TestError.failed("request: \(r.stderr)") }
            if json(r.out)["state"] as? String == "approved" {
                let a = try coffer(u, ["elevate", "activate", id, "--output", home(u) + "/token-" + id])
                guard a.status == 0 else { throw TestError.failed("activate: \(a.stderr)") }
            }
            return id
        }

        /// `coffer ssh sign` as the user; the certificate file and the JSON answer.
        func sign(_ u: TestUser, _ id: String, key: String) throws -> (path: String, info: [String: Any]) {
            let out = home(u) + "/\(key)-\(id)-\(UUID().uuidString.prefix(6))-cert.pub"
            let r = try coffer(u, ["ssh", "sign", id, "--pubkey", dir + "/\(key).pub", "--output", out, "--format", "json"])
            guard r.status == 0 else { throw TestError.failed("ssh sign: \(r.stderr)") }
            return (out, json(r.out))
        }

        func sshArgs(key: String, cert: String?, user: TestUser) -> [String] {
            var a = ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                     "-o", "UserKnownHostsFile=\(dir)/known_hosts", "-o", "ConnectTimeout=10", "-p", String(port), "-i", dir + "/" + key]
            if let cert { a += ["-o", "CertificateFile=\(cert)"] }
            return a + ["\(user.name)@127.0.0.1"]
        }

        func ssh(key: String, cert: String?, user: TestUser = CredentialTests.user, _ command: String) throws -> RunResult {
            try run("/usr/bin/ssh", sshArgs(key: key, cert: cert, user: user) + [command], timeout: 30)
        }

        /// A session left open (`sleep N`), as a background client.
        func openSession(key: String, cert: String?, seconds: Int) throws -> Spawned {
            let p = try Spawned("/usr/bin/ssh", sshArgs(key: key, cert: cert, user: CredentialTests.user) + ["sleep \(seconds)"])
            guard waitFor(10, { CredentialTests.remote(seconds) }) else { throw TestError.failed("the session's sleep \(seconds) did not start: \(sshdText)") }
            return p
        }

        var sshdText: String { (try? String(contentsOfFile: sshdLog, encoding: .utf8)) ?? "" }

        func events(_ action: String) throws -> [[String: Any]] {
            json(try d.curl("GET", "/v1/audit/events?action=\(action)&limit=1000").1)["events"] as? [[String: Any]] ?? []
        }
    }

    /// A daemon and an sshd of the test's own (both stopped when it ends).
    static func world() throws -> World { try World() }

    /// Whether a process `sleep SECONDS` runs (the remote end of a session).
    static func remote(_ seconds: Int) -> Bool {
        let want = "sleep\0\(seconds)\0"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.contains { e in
            guard Int32(e) != nil, let c = FileManager.default.contents(atPath: "/proc/\(e)/cmdline") else { return false }
            guard String(decoding: c, as: UTF8.self) == want else { return false }
            let stat = (try? String(contentsOfFile: "/proc/\(e)/stat", encoding: .utf8)) ?? ""
            return !(stat.split(separator: ")").last?.hasPrefix(" Z") ?? false)
        }
    }

    static func waitFor(_ seconds: Double = 10, _ condition: () -> Bool) -> Bool { waitUntil(seconds, condition) }

    static func keygen(_ args: [String]) throws -> RunResult { try run("/usr/bin/ssh-keygen", args, env: ["TZ": "UTC"]) }

    @Test func certificatesLogInUntilTheElevationEndsAndTheirSessionsEndWithIt() throws {
        let w = try Self.world()
        // the CA: the same line from the CLI and the API, a key ssh-keygen reads
        let (code, body) = try w.d.curl("GET", "/v1/ssh/ca", as: Self.user)
        #expect(code == 200 && json(body)["public_key"] as? String == w.ca, "\(body)")
        #expect(try Self.keygen(["-l", "-f", w.dir + "/ca.pub"]).status == 0)

        let id = try w.elevate(Self.user, "deploy")
        let started = Date()
        let (cert, info) = try w.sign(Self.user, id, key: "ed")
        let show = try Self.keygen(["-L", "-f", cert])
        let serial = info["serial"] as? String ?? "?"
        let ends = json(try w.coffer(Self.user, ["elevate", "show", id, "--format", "json"]).out)["ends_at"] as? String ?? "?"
        #expect(show.out.contains("Type: ssh-ed25519-cert-v01@openssh.com user certificate"), "\(show.out)")
        #expect(show.out.contains("Key ID: \"coffer:\(id):\(Self.user.name)\""), "\(show.out)")
        #expect(show.out.contains("Serial: \(serial)\n"), "\(show.out)")
        #expect(show.out.contains("Signing CA: ED25519 "), "\(show.out)")
        #expect(show.out.contains("Principals: \n                deploy\n        Critical Options: (none)\n        Extensions: \n                permit-pty\n"), "\(show.out)")
        // valid from a minute before issue until the window's end, not a second later
        let valid = show.out.split(separator: "\n").first { $0.contains("Valid: from ") }.map(String.init) ?? ""
        #expect(valid.hasSuffix("to " + String(ends.prefix(19))), "\(valid) vs ends_at \(ends)")
        let f = ISO8601DateFormatter()
        if let from = valid.split(separator: " ").dropFirst(2).first.flatMap({ f.date(from: $0 + "Z") }) {
            #expect(abs(from.timeIntervalSince(started) + 60) < 5, "valid from \(from), issued at \(started)")
        } else {
            Issue.record("no valid-from in \(valid)")
        }
        // the event names serial, key id, principals and the user key's fingerprint
        let fp = try Self.keygen(["-l", "-f", w.dir + "/ed.pub"]).out.split(separator: " ")[1]
        let ev = try w.events("ssh_sign").first { ($0["details"] as? [String: Any])?["serial"] as? String == serial }
        let details = ev?["details"] as? [String: Any] ?? [:]
        #expect(ev?["status"] as? Int == 200 && details["key_id"] as? String == "coffer:\(id):\(Self.user.name)"
                && details["principals"] as? [String] == ["deploy"] && details["key_fingerprint"] as? String == String(fp), "\(ev ?? [:])")

        // sshd accepts it; the other key types are signed and accepted too
        var r = try w.ssh(key: "ed", cert: cert, "echo in")
        #expect(r.status == 0 && r.out == "in\n", "\(r.stderr) \(w.sshdText.suffix(600))")
        for (key, type) in [("ec", "ecdsa-sha2-nistp256-cert-v01@openssh.com"), ("rsa", "ssh-rsa-cert-v01@openssh.com")] {
            let (c, _) = try w.sign(Self.user, id, key: key)
            #expect(try Self.keygen(["-L", "-f", c]).out.contains("Type: \(type) user certificate"))
            r = try w.ssh(key: key, cert: c, "true")
            #expect(r.status == 0, "\(key): \(r.stderr)")
        }

        // a rule with options: ssh-keygen prints them, sshd enforces the forced command
        let forced = try w.elevate(Self.user, "forced")
        let (fcert, _) = try w.sign(Self.user, forced, key: "ed")
        let fshow = try Self.keygen(["-L", "-f", fcert]).out
        #expect(fshow.contains("Principals: \n                deploy\n                ops\n"), "\(fshow)")
        #expect(fshow.contains("Critical Options: \n                force-command /bin/echo forced\n                source-address 127.0.0.1/32,::1\n"), "\(fshow)")
        #expect(fshow.contains("Extensions: \n                permit-port-forwarding\n                permit-pty\n"), "\(fshow)")
        r = try w.ssh(key: "ed", cert: fcert, "echo mine")
        #expect(r.status == 0 && r.out == "forced\n", "\(r.out) \(r.stderr)")

        // a principal the account does not list is refused by sshd
        let stranger = try w.elevate(Self.user, "stranger")
        let (scert, _) = try w.sign(Self.user, stranger, key: "ed")
        r = try w.ssh(key: "ed", cert: scert, "true")
        #expect(r.status == 255 && w.sshdText.contains("does not contain an authorized principal"), "\(r.stderr)")

        // two open sessions of the same user: one with the certificate, one with a plain key
        let withCert = try w.openSession(key: "ed", cert: cert, seconds: 6011)
        let plain = try w.openSession(key: "plain", cert: nil, seconds: 6012)
        defer {
            for p in [withCert, plain] { p.stop() }
            _ = try? run("/usr/bin/pkill", ["-KILL", "-f", "^sleep 601[12]$"])
        }
        #expect(try w.events("ssh_session_open").contains { ($0["details"] as? [String: Any])?["serial"] as? String == serial && $0["status"] as? Int == 200 })
        let ended = Date()
        r = try w.coffer(Self.user, ["elevate", "end", id])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(Self.waitFor(8) { !Self.remote(6011) && !withCert.isRunning }, "the certificate's session outlived the window")
        #expect(Date().timeIntervalSince(ended) < 8)
        usleep(500_000)
        #expect(Self.remote(6012) && plain.isRunning, "a session opened with a plain key was touched")
        #expect(Self.waitFor(5) { (try? w.events("ssh_session_end_done"))?.contains {
            ($0["details"] as? [String: Any])?["serial"] as? String == serial && (($0["details"] as? [String: Any])?["hangup"] as? Int ?? 0) >= 1
        } ?? false }, "no ssh_session_end_done event")

        // revoked: in the KRL (ssh-keygen -Q), refused by sshd; the forced rule's certificate is not
        let q = try Self.keygen(["-Q", "-f", w.krl, cert])
        #expect(q.status != 0 && q.out.contains("REVOKED"), "\(q.out) \(q.stderr)")
        let fq = try Self.keygen(["-Q", "-f", w.krl, fcert])
        #expect(fq.status == 0 && fq.out.contains("ok"), "\(fq.out) \(fq.stderr)")
        r = try w.ssh(key: "ed", cert: cert, "true")
        #expect(r.status == 255 && w.sshdText.contains("revoked by file \(w.krl)"), "\(r.stderr)")
        // a serial edited in the database does not keep a certificate out of the KRL:
        // it is revoked by its key id too, taken from the MACed elevation row
        _ = try sqlite(w.d.dbPath, "UPDATE credential SET serial = serial + 1 WHERE elevation_id = '\(stranger)';")
        r = try w.coffer(Self.user, ["elevate", "end", stranger])
        #expect(r.status == 0, "\(r.stderr)")
        let sq = try Self.keygen(["-Q", "-f", w.krl, scert])
        #expect(sq.status != 0 && sq.out.contains("REVOKED"), "\(sq.out) \(sq.stderr)")
        // a certificate for an ended elevation is not issued
        let late = try w.coffer(Self.user, ["ssh", "sign", id, "--pubkey", w.dir + "/ed.pub"])
        #expect(late.status != 0 && late.stderr.contains("not active"), "\(late.stderr)")
    }

    /// A process that ignores SIGHUP and hops pids faster than one pass over /proc
    /// (found, then gone before it is signalled) is still ended with the window.
    @Test func aProcessHoppingPidsDoesNotOutliveTheWindow() throws {
        let w = try Self.world()
        let hop = w.home(Self.user) + "/hop.py"
        try FileManager.default.copyItem(atPath: URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/hop.py").path,
                                         toPath: hop)
        chmod(hop, 0o755)
        let beat = w.home(Self.user) + "/beat"
        let id = try w.elevate(Self.user, "deploy")
        let (cert, _) = try w.sign(Self.user, id, key: "ed")
        let client = try Spawned("/usr/bin/ssh", w.sshArgs(key: "ed", cert: cert, user: Self.user)
                                 + ["/usr/bin/python3 \(hop) \(beat) 90 </dev/null >/dev/null 2>&1; exec sleep 6014"])
        defer {
            client.stop()
            _ = try? run("/usr/bin/pkill", ["-KILL", "-f", "^sleep 6014$"])
            _ = try? run("/usr/bin/pkill", ["-KILL", "-f", "hop.py"])
        }
        func heartbeat() -> String { (try? String(contentsOfFile: beat, encoding: .utf8)) ?? "" }
        #expect(Self.waitFor(10) { Self.remote(6014) && !heartbeat().isEmpty }, "the hopper did not start: \(w.sshdText.suffix(400))")
        let first = heartbeat()
        #expect(Self.waitFor(3) { heartbeat() != first }, "no heartbeat")
        #expect(try w.coffer(Self.user, ["elevate", "end", id]).status == 0)
        // the grace is 2 s: within a few seconds more, nothing of the session beats
        #expect(Self.waitFor(10) {
            let a = heartbeat()
            usleep(600_000)
            return a == heartbeat() && !Self.remote(6014)
        }, "the hopping process outlived the window")
        let end = try w.events("ssh_session_end").last
        #expect((end?["details"] as? [String: Any])?["elevation_id"] as? String == id, "the intent event names the request: \(end ?? [:])")
    }

    @Test func theKRLStaysWholeUnderConcurrentEnds() throws {
        let w = try Self.world()
        var certs: [(String, String)] = []
        for _ in 0..<8 {
            let id = try w.elevate(Self.other, "deploy")
            certs.append((id, try w.sign(Self.other, id, key: "ec").path))
        }
        let failures = Mutex<[String]>([])
        let ids = certs.map(\.0)
        DispatchQueue.concurrentPerform(iterations: ids.count) { i in
            let r = try? w.coffer(Self.other, ["elevate", "end", ids[i]])
            if r?.status != 0 { failures.withLock { $0.append(r?.stderr ?? "no result") } }
        }
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0 })")
        for (_, c) in certs {
            let q = try Self.keygen(["-Q", "-f", w.krl, c])
            #expect(q.status != 0 && q.out.contains("REVOKED"), "\(q.out) \(q.stderr)")
        }
        // the file parses whole: ssh-keygen lists every serial
        let list = try Self.keygen(["-Q", "-l", "-f", w.krl])
        #expect(list.status == 0, "\(list.stderr)")
    }

    @Test func aWindowThatExpiresEndsItsSessionsAndItsCertificates() throws {
        let w = try Self.world()
        let id = try w.elevate(Self.user, "deploy", for: "1m")
        let (cert, _) = try w.sign(Self.user, id, key: "ed")
        let ends = json(try w.coffer(Self.user, ["elevate", "show", id, "--format", "json"]).out)["ends_at"] as? String ?? ""
        guard let end = ISO8601DateFormatter.withFractions.date(from: ends) else { throw TestError.failed("ends_at \(ends)") }
        let session = try w.openSession(key: "ed", cert: cert, seconds: 6013)
        defer {
            session.stop()
            _ = try? run("/usr/bin/pkill", ["-KILL", "-f", "^sleep 6013$"])
        }
        // still open a little before the end
        Thread.sleep(until: end.addingTimeInterval(-3))
        #expect(Self.remote(6013), "ended before the window closed")
        #expect(Self.waitFor(end.timeIntervalSinceNow + 6) { !Self.remote(6013) }, "the session outlived the window by more than 6 s")
        Thread.sleep(until: end.addingTimeInterval(1))
        let r = try w.ssh(key: "ed", cert: cert, "true")
        // refused: past its validity, and in the KRL by key id since the window expired
        #expect(r.status == 255 && (w.sshdText.contains("Certificate invalid: expired") || w.sshdText.contains("revoked by file \(w.krl)")),
                "\(r.stderr) \(w.sshdText.suffix(400))")
        // the elevation clock (every 2 s) expires the request, and the KRL is rewritten then
        #expect(Self.waitFor(10) { (try? Self.keygen(["-Q", "-f", w.krl, cert]))?.out.contains("REVOKED") == true },
                "an expired window's certificate is in the KRL")
    }

    @Test func badRequestsIssueNothingAndEachLeavesOneEvent() throws {
        let w = try Self.world()
        let id = try w.elevate(Self.user, "deploy")
        let before = try w.events("ssh_sign").count
        let krlBefore = fileBytes(w.krl)
        // the CLI refuses a private key before sending anything
        let own = w.home(Self.user) + "/id_ed25519"
        try FileManager.default.copyItem(atPath: w.dir + "/plain", toPath: own)
        chown(own, Self.user.uid, Self.user.gid)
        let r = try w.coffer(Self.user, ["ssh", "sign", id, "--pubkey", own])
        #expect(r.status != 0 && r.stderr.contains("private key") && r.stderr.contains("coffer: error:"), "\(r.stderr)")
        let ed = try String(contentsOfFile: w.dir + "/ed.pub", encoding: .utf8)
        let ecFields = try String(contentsOfFile: w.dir + "/ec.pub", encoding: .utf8).split(separator: " ")
        var ecBlob = Base64.decode(String(ecFields[1]))!
        ecBlob[ecBlob.count - 1] ^= 1  // the point leaves the curve
        var shortRSA = w.dir + "/rsa1024"
        _ = try run("/usr/bin/ssh-keygen", ["-q", "-N", "", "-t", "rsa", "-b", "1024", "-f", shortRSA])
        shortRSA = try String(contentsOfFile: shortRSA + ".pub", encoding: .utf8)
        let privateKey = try String(contentsOfFile: w.dir + "/plain", encoding: .utf8)
        let cases: [(String, String)] = [
            ("private key", privateKey), ("garbage", "not a key at all"),
            ("unsupported type", "ssh-dss AAAAB3NzaC1kc3MAAACBAP1/U4Ed x"),
            ("certificate", try String(contentsOfFile: w.sign(Self.user, id, key: "ed").path, encoding: .utf8)),
            ("too long", "ssh-ed25519 " + String(repeating: "A", count: 20_000)),
            ("two keys", ed + ed), ("off the curve", "ecdsa-sha2-nistp256 " + Base64.encode(ecBlob)), ("short RSA", shortRSA),
            ("type and blob disagree", "ssh-rsa " + ed.split(separator: " ")[1]),
        ]
        let seen = Set(try w.events("ssh_sign").compactMap { $0["seq"] as? Int })  // the certificate case signed one
        #expect(seen.count == before + 1)
        for (name, key) in cases {
            let body = String(decoding: try JSONSerialization.data(withJSONObject: ["public_key": key]), as: UTF8.self)
            let (code, b) = try w.d.curl("POST", "/v1/elevation/requests/\(id)/ssh", body: body, headers: ["Content-Type: application/json"], as: Self.user)
            #expect(code == 422 && errorCode(b) == "invalid_parameter", "\(name): \(code) \(b)")
            #expect(!b.contains("PRIVATE") && !b.contains("AAAA"), "\(name): the answer echoes the key: \(b)")
        }
        // not the caller's; not active (pending); each refused
        let body = String(decoding: try JSONSerialization.data(withJSONObject: ["public_key": ed]), as: UTF8.self)
        var (code, b) = try w.d.curl("POST", "/v1/elevation/requests/\(id)/ssh", body: body, headers: ["Content-Type: application/json"], as: Self.other)
        #expect(code == 404, "\(code) \(b)")
        let pending = try w.elevate(Self.user, "reviewed")
        (code, b) = try w.d.curl("POST", "/v1/elevation/requests/\(pending)/ssh", body: body, headers: ["Content-Type: application/json"], as: Self.user)
        #expect(code == 422 && b.contains("pending, not active"), "\(code) \(b)")
        // one event per attempt, none of them an issue
        let fresh = try w.events("ssh_sign").filter { !seen.contains($0["seq"] as? Int ?? -1) }
        #expect(fresh.count == cases.count + 2 && fresh.allSatisfy { $0["status"] as? Int != 200 && $0["outcome"] as? String == "error" },
                "\(fresh.map { "\($0["status"] ?? "-")" })")
        #expect(fileBytes(w.krl) == krlBefore)

        // JWT: an audience the rule does not name; a TTL past the window, or past the rule's cap
        let short = try w.elevate(Self.user, "deploy", for: "1m")
        let jwtIssued = try w.events("jwt_sign").filter { $0["status"] as? Int == 200 }.count
        var j = try w.coffer(Self.user, ["elevate", "jwt", short, "--audience", "payroll-api"])
        #expect(j.status != 0 && j.stderr.contains("not allowed"), "\(j.stderr)")
        j = try w.coffer(Self.user, ["elevate", "jwt", short, "--audience", "deploy-api", "--ttl", "30m"])
        #expect(j.status != 0 && j.stderr.contains("beyond the window"), "\(j.stderr)")
        j = try w.coffer(Self.user, ["elevate", "jwt", id, "--audience", "deploy-api", "--ttl", "2h"])
        #expect(j.status != 0, "\(j.stderr)")
        j = try w.coffer(Self.other, ["elevate", "jwt", id, "--audience", "deploy-api"])
        #expect(j.status != 0 && j.stderr.contains("no such elevation request"), "\(j.stderr)")
        #expect(try w.events("jwt_sign").filter { $0["status"] as? Int == 200 }.count == jwtIssued, "a refused JWT was issued")

        // only root's PAM hook registers sessions, and only for well-formed certificates
        let reg = #"{"certificate":"AAAA"}"#
        (code, b) = try w.d.curl("POST", "/v1/ssh/sessions", body: reg, headers: ["Content-Type: application/json"], as: Self.user)
        #expect(code == 403, "\(code) \(b)")
        (code, b) = try w.d.curl("POST", "/v1/ssh/sessions", body: reg, headers: ["Content-Type: application/json"])
        #expect(code == 422, "\(code) \(b)")
    }

    @Test func jwtsVerifyWithPyJWTAgainstTheJWKSAndRotationKeepsOldKeysOnlyWhileNeeded() throws {
        let w = try Self.world()
        let verifier = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/verify_jwt.py").path
        let jwks = w.dir + "/jwks.json"
        func fetchJWKS() throws -> [[String: Any]] {
            let (code, body) = try w.d.curl("GET", "/v1/jwks", as: Self.user)
            #expect(code == 200)
            try body.write(toFile: jwks, atomically: true, encoding: .utf8)
            return json(body)["keys"] as? [[String: Any]] ?? []
        }
        func verify(_ token: String, audience: String = "deploy-api", exp: Bool = true) throws -> RunResult {
            try run("/usr/bin/python3", [verifier, jwks, token, audience, "https://coffer.test"] + (exp ? [] : ["no-exp"]))
        }
        // approved by root: the approvers claim names it
        let id = try w.elevate(Self.user, "reviewed")
        #expect(try w.d.coffer(["elevate", "approve", id]).status == 0)
        #expect(try w.coffer(Self.user, ["elevate", "activate", id, "--output", w.home(Self.user) + "/tok-" + id]).status == 0)
        var j = try w.coffer(Self.user, ["elevate", "jwt", id, "--audience", "deploy-api", "--ttl", "5m", "--format", "json"])
        #expect(j.status == 0, "\(j.stderr)")
        let token = json(j.out)["token"] as? String ?? ""
        var keys = try fetchJWKS()
        #expect(keys.count == 1 && keys[0]["kty"] as? String == "OKP" && keys[0]["crv"] as? String == "Ed25519" && keys[0]["alg"] as? String == "EdDSA")
        var v = try verify(token)
        #expect(v.status == 0, "\(v.out)")
        let claims = json(v.out)
        #expect(claims["sub"] as? String == Self.user.name && claims["role"] as? String == "reviewed" && claims["request_id"] as? String == id
                && claims["approvers"] as? [String] == ["root"] && claims["aud"] as? String == "deploy-api", "\(claims)")
        if let exp = claims["exp"] as? Int, let nbf = claims["nbf"] as? Int, let iat = claims["iat"] as? Int {
            #expect(exp - iat == 300 && nbf == iat && abs(Double(iat) - Date().timeIntervalSince1970) < 10, "\(claims)")
        } else {
            Issue.record("no exp/nbf/iat: \(claims)")
        }
        // the header names the key
        let header = json(String(decoding: Base64.decode(base64url(String(token.split(separator: ".")[0])))!, as: UTF8.self))
        #expect(header["alg"] as? String == "EdDSA" && header["kid"] as? String == keys[0]["kid"] as? String)
        // tampered payload, another audience: refused
        var parts = token.split(separator: ".").map(String.init)
        let payload = String(decoding: Base64.decode(base64url(parts[1]))!, as: UTF8.self).replacingOccurrences(of: "\"reviewed\"", with: "\"superuser\"")
        parts[1] = Base64.encode(Array(payload.utf8)).replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        v = try verify(parts.joined(separator: "."))
        #expect(v.status == 2 && v.out.contains("InvalidSignatureError"), "\(v.out)")
        v = try verify(token, audience: "billing-api")
        #expect(v.status == 2 && v.out.contains("InvalidAudienceError"), "\(v.out)")

        // a short token expires for PyJWT; then rotation: the old key stays while its tokens live
        let deploy = try w.elevate(Self.user, "deploy")
        j = try w.coffer(Self.user, ["elevate", "jwt", deploy, "--audience", "deploy-api", "--ttl", "6s", "--format", "json"])
        let shortToken = json(j.out)["token"] as? String ?? ""
        let oldKid = keys[0]["kid"] as? String ?? ""
        let rot = try w.d.coffer(["jwks", "rotate", "--format", "json"])
        #expect(rot.status == 0, "\(rot.stderr)")
        let newKid = json(rot.out)["kid"] as? String ?? "?"
        keys = try fetchJWKS()
        #expect(Set(keys.compactMap { $0["kid"] as? String }) == [oldKid, newKid], "\(keys)")
        #expect(try verify(shortToken).status == 0)
        j = try w.coffer(Self.user, ["elevate", "jwt", deploy, "--audience", "billing-api", "--ttl", "1m", "--format", "json"])
        let fresh = json(j.out)["token"] as? String ?? ""
        #expect(json(j.out)["kid"] as? String == newKid)
        #expect(try verify(fresh, audience: "billing-api").status == 0)
        // the 5-minute token keeps the old key published; a file copy for services
        let file = w.dir + "/jwks-file.json"
        #expect(try w.d.coffer(["jwks", "--output", file]).status == 0)
        #expect((json(try String(contentsOfFile: file, encoding: .utf8))["keys"] as? [[String: Any]])?.count == 2)
        // the short one expires: PyJWT says so
        Thread.sleep(forTimeInterval: 7)
        v = try verify(shortToken)
        #expect(v.status == 2 && v.out.contains("ExpiredSignatureError"), "\(v.out)")
        // the 5-minute token still needs the old key: it stays published
        keys = try fetchJWKS()
        #expect(keys.contains { $0["kid"] as? String == oldKid })
    }

    @Test func aRetiredKeyLeavesTheJWKSWhenItsLastTokenExpires() throws {
        let w = try Self.world()
        let verifier = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/verify_jwt.py").path
        let id = try w.elevate(Self.other, "deploy")
        // every earlier key's last token must be gone first: rotate twice, sign with the middle key
        #expect(try w.d.coffer(["jwks", "rotate"]).status == 0)
        let j = try w.coffer(Self.other, ["elevate", "jwt", id, "--audience", "deploy-api", "--ttl", "5s", "--format", "json"])
        let token = json(j.out)["token"] as? String ?? ""
        let kid = json(j.out)["kid"] as? String ?? "?"
        #expect(try w.d.coffer(["jwks", "rotate"]).status == 0)
        let jwks = w.dir + "/jwks-retired.json"
        var body = try w.d.curl("GET", "/v1/jwks").1
        #expect(body.contains(kid))
        Thread.sleep(forTimeInterval: 6)
        body = try w.d.curl("GET", "/v1/jwks").1
        #expect(!body.contains(kid), "a retired key stays after its last token expired: \(body)")
        try body.write(toFile: jwks, atomically: true, encoding: .utf8)
        // even ignoring exp, a verifier no longer finds the key: refused
        let v = try run("/usr/bin/python3", [verifier, jwks, token, "deploy-api", "https://coffer.test", "no-exp"])
        #expect(v.status == 2 && v.out.contains("no key with kid \(kid)"), "\(v.out)")
    }
}

/// A child started with posix_spawn, not Foundation's Process: ssh closes every
/// descriptor it inherits, which Foundation takes for an exit — it then blocks its
/// monitor thread in wait4 on that process, and no other child is reaped meanwhile.
final class Spawned {
    let pid: pid_t
    private var status: Int32?

    init(_ exe: String, _ args: [String]) throws {
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0)
        let argv: [UnsafeMutablePointer<CChar>?] = ([exe] + args).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, exe, &fa, nil, argv, environ)
        guard rc == 0 else { throw TestError.failed("posix_spawn \(exe): \(rc)") }
        self.pid = pid
    }

    var isRunning: Bool {
        if status != nil { return false }
        var st: Int32 = 0
        let r = waitpid(pid, &st, WNOHANG)
        if r == pid { status = st }
        return r == 0
    }

    func stop() {
        guard isRunning else { return }
        kill(pid, SIGKILL)
        var st: Int32 = 0
        waitpid(pid, &st, 0)
        status = st
    }

    deinit { stop() }
}

func base64url(_ s: String) -> String {
    var t = s.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
    while t.count % 4 != 0 { t += "=" }
    return t
}

extension ISO8601DateFormatter {
    nonisolated(unsafe) static let withFractions: ISO8601DateFormatter = {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f
    }()
}
