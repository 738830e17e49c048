import CofferAudit
import Foundation
import Testing

/// `coffer login` against a real PAM stack: pam_unix (nodelay) for passwords, pam_oath
/// for a TOTP second factor, accounts made with useradd/chpasswd, codes from oathtool,
/// and pamtester checking the same services independently. The daemon is the real
/// binary; the callers are real unprivileged users.
@Suite(.serialized) struct LoginTests {
    static let password = "Corr3ct-horse-battery"
    static let user = PAMUser.ensure("coffer-pam1", password: password)
    static let expired = PAMUser.ensure("coffer-pam2", password: password)
    static let otpUser = PAMUser.ensure("coffer-pam3", password: password)
    static let otpKey = "3132333435363738393031323334353637383930"

    /// Test PAM services: password only, and password + TOTP (pam_oath users file).
    static let services: (password: String, otp: String, usersFile: String) = {
        let usersFile = "/etc/coffer-e2e-users.oath"
        FileManager.default.createFile(atPath: usersFile, contents: Data("HOTP/T30/6\t\(otpUser.name)\t-\t\(otpKey)\n".utf8),
                                       attributes: [.posixPermissions: 0o600])
        try? "auth requisite pam_unix.so nodelay\naccount required pam_unix.so\n"
            .write(toFile: "/etc/pam.d/coffer-e2e-pw", atomically: true, encoding: .utf8)
        try? "auth requisite pam_unix.so nodelay\nauth required pam_oath.so usersfile=\(usersFile) window=2 digits=6\naccount required pam_unix.so\n"
            .write(toFile: "/etc/pam.d/coffer-e2e-otp", atomically: true, encoding: .utf8)
        return ("coffer-e2e-pw", "coffer-e2e-otp", usersFile)
    }()

    static func daemon(service: String, extra: String = "") throws -> Daemon {
        _ = services
        let d = try Daemon(config: "[auth]\npam_service = \"\(service)\"\nfailure_delay_ms = 300\n\(extra)")
        try d.start()
        return d
    }

    /// `coffer login --password-stdin` as the user; the session goes to a file it owns.
    static func login(_ d: Daemon, _ u: PAMUser, answers: [String]) throws -> (RunResult, String) {
        let home = d.dir + "/home-" + u.name
        try? FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        chown(home, u.uid, u.gid)
        let session = home + "/session"
        let (exe, args) = u.wrap(Bins.sharedCoffer, ["--socket", d.socket, "login", "--password-stdin", "--output", session, "--format", "json"])
        return (try run(exe, args, stdin: Array(answers.map { $0 + "\n" }.joined().utf8)), session)
    }

    @Test func pamtesterAgreesWithTheTestServices() throws {
        _ = Self.services
        let ok = try run("/usr/bin/pamtester", [Self.services.password, Self.user.name, "authenticate", "acct_mgmt"], stdin: Array((Self.password + "\n").utf8))
        #expect(ok.status == 0, "\(ok.stderr)")
        let bad = try run("/usr/bin/pamtester", [Self.services.password, Self.user.name, "authenticate"], stdin: Array("wrong\n".utf8))
        #expect(bad.status != 0)
        let exp = try run("/usr/bin/pamtester", [Self.services.password, Self.expired.name, "authenticate", "acct_mgmt"], stdin: Array((Self.password + "\n").utf8))
        #expect(exp.status != 0, "an expired account must be refused by acct_mgmt")
    }

    @Test func signInGivesASessionBoundToTheCaller() throws {
        let d = try Self.daemon(service: Self.services.password)
        defer { d.stop() }
        let (r, session) = try Self.login(d, Self.user, answers: [Self.password])
        #expect(r.status == 0, "\(r.stderr)")
        let info = json(r.out)
        #expect(info["bound_uid"] as? Int == Int(Self.user.uid) && info["authenticated_at"] is String && info["name"] as? String == "sign-in", "\(r.out)")
        var st = stat()
        #expect(stat(session, &st) == 0 && st.st_mode & 0o777 == 0o600 && st.st_uid == Self.user.uid)
        let token = try String(contentsOfFile: session, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.hasPrefix("cfr_"))
        // the token is the user's: bound to its uid, useless to anyone else
        var (code, body) = try d.curl("GET", "/v1/tokens/self", headers: ["X-Coffer-Token: \(token)"], as: Self.user.testUser)
        #expect(code == 200 && body.contains("authenticated_at"), "\(code) \(body)")
        (code, body) = try d.curl("GET", "/v1/tokens/self", headers: ["X-Coffer-Token: \(token)"])
        #expect(code == 401 && errorCode(body) == "token_uid_mismatch", "\(code) \(body)")
        // the account comes from the peer, never from the request
        (code, body) = try d.curl("POST", "/v1/auth/login", body: #"{"user":"root"}"#, as: Self.user.testUser)
        #expect(code == 422, "\(code) \(body)")
        // a sign-in with a token proves nothing more: refused
        (code, body) = try d.curl("POST", "/v1/auth/login", headers: ["X-Coffer-Token: \(token)"], as: Self.user.testUser)
        #expect(code == 403, "\(code) \(body)")
        // logout ends it
        let (exe, args) = Self.user.wrap(Bins.sharedCoffer, ["--socket", d.socket, "logout", "--session", session])
        let out = try run(exe, args)
        #expect(out.status == 0 && !FileManager.default.fileExists(atPath: session), "\(out.stderr)")
        (code, body) = try d.curl("GET", "/v1/tokens/self", headers: ["X-Coffer-Token: \(token)"], as: Self.user.testUser)
        #expect(code == 401 && errorCode(body) == "token_revoked", "\(code) \(body)")
        // every attempt is in the trail; the password never is
        let events = json(try d.curl("GET", "/v1/audit/events?action=auth_login").1)["events"] as? [[String: Any]] ?? []
        #expect(events.contains { $0["status"] as? Int == 200 && ($0["peer"] as? [String: Any])?["uid"] as? Int == Int(Self.user.uid) }, "\(events)")
        #expect(!(try sqlite(d.dbPath, "SELECT * FROM audit_event;")).contains(Self.password) && !d.log.contains(Self.password))
    }

    @Test func failuresLookAlikeAndLockAfterRepeatedAttempts() throws {
        let d = try Self.daemon(service: Self.services.password, extra: "max_failures = 3\nlockout = \"1h\"")
        defer { d.stop() }
        // an expired account with the right password: the same answer as a wrong password
        let start = Date()
        var (r, _) = try Self.login(d, Self.expired, answers: [Self.password])
        let expiredTime = Date().timeIntervalSince(start)
        #expect(r.status == 5 && r.stderr.contains("coffer: error: sign-in failed"), "\(r.status) \(r.stderr)")
        #expect(expiredTime >= 0.3, "every failure waits the configured delay")
        for i in 0..<3 {
            (r, _) = try Self.login(d, Self.user, answers: ["wrong-\(i)"])
            #expect(r.status == 5 && r.stderr.contains("sign-in failed"), "\(r.stderr)")
        }
        // locked now: even the right password fails, with the same answer
        (r, _) = try Self.login(d, Self.user, answers: [Self.password])
        #expect(r.status == 5 && r.stderr.contains("sign-in failed"), "\(r.stderr)")
        let events = json(try d.curl("GET", "/v1/audit/events?action=auth_login").1)["events"] as? [[String: Any]] ?? []
        let reasons = events.compactMap { ($0["details"] as? [String: Any])?["pam"] as? String }
        #expect(reasons.contains { $0.lowercased().contains("expired") } && reasons.contains { $0.contains("locked by coffer") }, "\(reasons)")
        #expect(events.filter { $0["status"] as? Int == 401 }.count == 5, "\(events.count)")
        // a restart forgets the lockout only for the daemon's memory: still one answer for all
        #expect(d.process?.isRunning == true)
    }

    @Test func aSecondFactorIsAskedPromptByPrompt() throws {
        let d = try Self.daemon(service: Self.services.otp)
        defer { d.stop() }
        // the raw protocol: one prompt at a time, secret prompts marked so
        var (code, body) = try d.curl("POST", "/v1/auth/login", as: Self.otpUser.testUser)
        #expect(code == 200, "\(body)")
        var step = json(body)
        let id = try #require(step["login_id"] as? String)
        #expect((step["prompts"] as? [[String: Any]])?.first?["style"] as? String == "secret", "\(body)")
        (code, body) = try d.curl("POST", "/v1/auth/login/\(id)", body: #"{"answers":["\#(Self.password)"]}"#, as: Self.otpUser.testUser)
        step = json(body)
        #expect(code == 200 && (step["prompts"] as? [[String: Any]])?.first?["style"] as? String != nil, "\(body)")
        // another user cannot answer someone's sign-in
        (code, body) = try d.curl("POST", "/v1/auth/login/\(id)", body: #"{"answers":["000000"]}"#, as: Self.user.testUser)
        #expect(code == 404, "\(body)")
        let codeNow = try run("/usr/bin/oathtool", ["--totp", "-d", "6", Self.otpKey]).out.trimmingCharacters(in: .whitespacesAndNewlines)
        (code, body) = try d.curl("POST", "/v1/auth/login/\(id)", body: #"{"answers":["\#(codeNow)"]}"#, as: Self.otpUser.testUser)
        #expect(code == 200 && json(body)["token"] is String, "\(code) \(body)")
        // the same code again (replayed within its window) fails; so does a wrong one
        var (r, _) = try Self.login(d, Self.otpUser, answers: [Self.password, codeNow])
        #expect(r.status == 5, "a replayed code must fail: \(r.out)")
        (r, _) = try Self.login(d, Self.otpUser, answers: [Self.password, "000000"])
        #expect(r.status == 5)
        // a wrong password ends it before the code is asked (requisite): one answer only
        (r, _) = try Self.login(d, Self.otpUser, answers: ["wrong"])
        #expect(r.status == 5 && r.stderr.contains("sign-in failed"), "\(r.stderr)")
    }
}

/// A test account with a password (and, for pam_unix, an unlocked one).
struct PAMUser {
    let name: String
    let uid: UInt32
    let gid: UInt32

    var testUser: TestUser { TestUser(name: name, uid: uid, gid: gid) }

    static func ensure(_ name: String, password: String) -> PAMUser {
        let t = TestUser.ensure(name)
        _ = try? run("/usr/sbin/chpasswd", [], stdin: Array("\(name):\(password)\n".utf8))
        if name == "coffer-pam2" {
            _ = try? run("/usr/bin/chage", ["-E", "0", name])  // expired long ago
        } else {
            _ = try? run("/usr/bin/chage", ["-E", "-1", name])
        }
        return PAMUser(name: t.name, uid: t.uid, gid: t.gid)
    }

    func wrap(_ exe: String, _ args: [String]) -> (String, [String]) { testUser.wrap(exe, args) }
}
