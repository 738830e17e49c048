import Foundation
import Synchronization
import Testing

/// Time-boxed elevation end to end: real users signed in through real PAM, driving
/// the real CLI against the real daemon — one asks, two leads approve, the window is
/// used and ended early; the rules hold under attack and under concurrent reviews.
@Suite(.serialized) struct ElevationTests {
    static let password = "Elev8-correct-horse"
    static let requester = member("coffer-oncall1", "coffer-oncall")
    static let lead1 = member("coffer-lead1", "coffer-leads")
    static let lead2 = member("coffer-lead2", "coffer-leads")
    static let racers = (3...34).map { member("coffer-lead\($0)", "coffer-leads") }  // 32 approvers race

    static func member(_ name: String, _ group: String) -> PAMUser {
        _ = TestUser.ensure(name, supplementary: group)
        return PAMUser.ensure(name, password: password)
    }

    static var policy: String { """
        notify = ["/bin/sh", "-c", "cat >> \(notifyFile).all"]
        [role.admin]
        [[role.admin.rule]]
        path = "**"
        capabilities = ["read", "list", "write", "delete", "destroy", "admin", "audit"]

        [role.prod-db-admin]
        [[role.prod-db-admin.rule]]
        path = "prod/db/**"
        capabilities = ["read", "write"]

        [role.quick]
        [[role.quick.rule]]
        path = "quick/**"
        capabilities = ["read"]

        [[bind]]
        subjects = ["uid:0"]
        roles = ["admin"]

        [[elevation]]
        role = "prod-db-admin"
        eligible = ["group:coffer-oncall"]
        approvers = ["group:coffer-leads", "group:coffer-oncall"]
        approvals = 2
        max_duration = "2h"
        reason = "required"
        ticket_pattern = "^OPS-[0-9]+$"
        fresh_login = "10m"

        [[elevation]]
        role = "quick"
        eligible = ["group:coffer-oncall"]
        approvers = ["group:coffer-leads"]
        approvals = 1
        max_duration = "1h"
        pending_ttl = "2s"
        reason = "optional"
        break_glass = true
        notify = [["/bin/sh", "-c", "cat >> \(notifyFile)"], ["/bin/false"]]
        """ }

    static let notifyFile = "/tmp/coffer-e2e-notify-\(getpid()).jsonl"

    /// A daemon with the elevation policy, and each user signed in (session files).
    final class World: @unchecked Sendable {  // read-only once set up (the race only reads sessions)
        let d: Daemon
        var sessions: [String: String] = [:]

        init() throws {
            _ = LoginTests.services
            d = try Daemon(config: "[auth]\npam_service = \"\(LoginTests.services.password)\"\nfailure_delay_ms = 100\n", policy: ElevationTests.policy)
            try d.start()
        }

        func signIn(_ u: PAMUser) throws {
            let (r, session) = try LoginTests.login(d, u, answers: [ElevationTests.password])
            guard r.status == 0 else { throw TestError.failed("login \(u.name): \(r.stderr)") }
            sessions[u.name] = session
        }

        /// `coffer elevate ...` as the user, with its session.
        func elevate(_ u: PAMUser, _ args: [String], session: Bool = true) throws -> RunResult {
            var a = ["--socket", d.socket]
            if session, let s = sessions[u.name] { a += ["--token-file", s] }
            let (exe, all) = u.wrap(Bins.sharedCoffer, a + ["elevate"] + args)
            return try run(exe, all)
        }
    }

    @Test func oncallAsksTwoLeadsApproveTheWindowIsUsedAndEndedEarly() throws {
        let w = try World()
        defer { w.d.stop() }
        #expect(try w.d.coffer(["secret", "put", "prod/db/password"], stdin: Array("db-secret".utf8)).status == 0)
        // without a recent sign-in: "sign in again", its own error
        var r = try w.elevate(Self.requester, ["request", "prod-db-admin", "--for", "1h", "--reason", "migrate", "--ticket", "OPS-42"], session: false)
        #expect(r.status == 5 && r.stderr.contains("sign in again"), "\(r.stderr)")
        for u in [Self.requester, Self.lead1, Self.lead2] { try w.signIn(u) }
        // refused at request time: too long, no reason, a ticket that does not match, a role not offered, not eligible
        for (args, what) in [(["--for", "3h", "--reason", "x", "--ticket", "OPS-1"], "duration"),
                             (["--for", "1h", "--ticket", "OPS-1"], "reason"),
                             (["--for", "1h", "--reason", "x", "--ticket", "JIRA-1"], "ticket")] {
            r = try w.elevate(Self.requester, ["request", "prod-db-admin"] + args)
            #expect(r.status == 7, "\(what): \(r.status) \(r.stderr)")
        }
        r = try w.elevate(Self.requester, ["request", "admin", "--for", "1h", "--reason", "x"])
        #expect(r.status == 4, "\(r.stderr)")
        r = try w.elevate(Self.lead1, ["request", "prod-db-admin", "--for", "1h", "--reason", "x", "--ticket", "OPS-1"])
        #expect(r.status == 5 && r.stderr.contains("not eligible"), "\(r.stderr)")

        r = try w.elevate(Self.requester, ["request", "prod-db-admin", "--for", "1h", "--reason", "schema migration", "--ticket", "OPS-42", "--format", "json"])
        #expect(r.status == 0, "\(r.stderr)")
        let id = try #require(json(r.out)["id"] as? String)
        #expect(json(r.out)["state"] as? String == "pending")
        // approvers see who asks, the role and what it grants
        r = try w.elevate(Self.lead1, ["show", id, "--format", "json"])
        let shown = json(r.out)
        #expect((shown["grants"] as? [[String: Any]])?.first?["path"] as? String == "prod/db/**" && shown["reason"] as? String == "schema migration", "\(r.out)")
        // no self-approval, not even through an approver group the requester is in
        r = try w.elevate(Self.requester, ["approve", id])
        #expect(r.status == 5 && r.stderr.contains("your own request"), "\(r.stderr)")
        // nobody but the requester activates, and not before approval
        r = try w.elevate(Self.requester, ["activate", id])
        #expect(r.status == 7, "\(r.stderr)")
        r = try w.elevate(Self.lead1, ["approve", id, "--comment", "ok"])
        #expect(r.status == 0 && r.out.contains("approvals 1/2"), "\(r.out) \(r.stderr)")
        r = try w.elevate(Self.lead1, ["approve", id])
        #expect(r.status == 6 && r.stderr.contains("already reviewed"), "one review per approver: \(r.stderr)")
        r = try w.elevate(Self.lead2, ["approve", id])
        #expect(r.status == 0 && r.out.contains("approved"), "\(r.out)")
        r = try w.elevate(Self.lead1, ["activate", id])
        #expect(r.status == 4, "\(r.stderr)")
        // the window: a token carrying the role, bound to the requester
        r = try w.elevate(Self.requester, ["activate", id, "--format", "json"])
        #expect(r.status == 0, "\(r.stderr)")
        let token = try #require(json(r.out)["token"] as? String)
        var (code, body) = try w.d.curl("GET", "/v1/secrets/data/prod/db/password", headers: ["X-Coffer-Token: \(token)"], as: Self.requester.testUser)
        #expect(code == 200 && body.contains("db-secret"), "\(code) \(body)")
        (code, _) = try w.d.curl("GET", "/v1/secrets/data/prod/other", headers: ["X-Coffer-Token: \(token)"], as: Self.requester.testUser)
        #expect(code == 403)
        (code, body) = try w.d.curl("GET", "/v1/secrets/data/prod/db/password", headers: ["X-Coffer-Token: \(token)"], as: Self.lead1.testUser)
        #expect(code == 401 && errorCode(body) == "token_uid_mismatch")
        // ended early by the requester: the token stops at once
        r = try w.elevate(Self.requester, ["end", id])
        #expect(r.status == 0 && r.out.contains("ended"), "\(r.out) \(r.stderr)")
        (code, body) = try w.d.curl("GET", "/v1/secrets/data/prod/db/password", headers: ["X-Coffer-Token: \(token)"], as: Self.requester.testUser)
        #expect(code == 401 && errorCode(body) == "token_revoked", "\(code) \(body)")
        r = try w.elevate(Self.lead2, ["approve", id])
        #expect(r.status == 7, "a closed request takes no review")
        // a cancelled one takes no review either
        r = try w.elevate(Self.requester, ["request", "prod-db-admin", "--for", "10m", "--reason", "c", "--ticket", "OPS-43", "--format", "json"])
        let cid = try #require(json(r.out)["id"] as? String)
        // with the session token or without it, the requester is the requester
        let (c2, b2) = try w.d.curl("POST", "/v1/elevation/requests/\(cid)/approve", as: Self.requester.testUser)
        #expect(c2 == 403 && b2.contains("your own request"), "\(c2) \(b2)")
        #expect(try w.elevate(Self.requester, ["cancel", cid]).status == 0)
        r = try w.elevate(Self.lead1, ["approve", cid])
        #expect(r.status == 7, "no review after cancel: \(r.stderr)")
        // every transition is an event naming the request
        let events = json(try w.d.curl("GET", "/v1/audit/events?path=\(id)").1)["events"] as? [[String: Any]] ?? []
        let actions = events.filter { $0["status"] as? Int == 200 }.map { $0["action"] as? String ?? "" }
        #expect(actions.contains("elevation_request") && actions.filter { $0 == "elevation_approve" }.count == 2
                && actions.contains("elevation_activate") && actions.contains("elevation_end"), "\(actions)")
        let approved = events.first { ($0["details"] as? [String: Any])?["state"] as? String == "approved" }
        #expect(((approved?["details"] as? [String: Any])?["approvers"] as? [String])?.sorted() == [Self.lead1.name, Self.lead2.name].sorted())
        // explain and check cover elevation
        r = try w.d.coffer(["policy", "explain", "--as", "user:\(Self.requester.name)", "read", "prod/db/password"])
        #expect(r.out.contains("DENY") && r.out.contains("prod-db-admin: eligible via group:coffer-oncall, needs 2 approvals, at most 2h"), "\(r.out)")
        r = try w.d.coffer(["policy", "explain", "--as", "user:\(Self.lead1.name)", "read", "prod/db/password"])
        #expect(r.out.contains("prod-db-admin: may review requests via group:coffer-leads"), "\(r.out)")
        r = try run(Bins.coffer, ["policy", "check", w.d.policyPath])
        #expect(r.out.contains("2 elevation rules"), "\(r.out)")
        let bad = w.d.dir + "/bad.toml"
        try (Self.policy + "\n[[elevation]]\nrole = \"quick\"\neligible = [\"group:x\"]\nmax_duration = \"1h\"\napprovals = 1\n").write(toFile: bad, atomically: true, encoding: .utf8)
        r = try run(Bins.coffer, ["policy", "check", bad])
        #expect(r.status != 0 && r.stderr.contains("bad.toml:") && r.stderr.contains("approvers"), "\(r.stderr)")
        // history survives a restart
        w.d.stop()
        try w.d.start()
        r = try w.elevate(Self.requester, ["list", "--all", "--mine", "--format", "json"])
        let kept = (json(r.out)["requests"] as? [[String: Any]]) ?? []
        #expect(kept.first { $0["id"] as? String == id }?["state"] as? String == "ended" && kept.contains { $0["state"] as? String == "cancelled" }, "\(r.out)")
    }

    /// Authenticated state: a request approved by hand in the database (its approvals
    /// lowered, its state set) is an integrity error when used, not a window.
    @Test func aRequestApprovedByHandIsRefused() throws {
        let w = try World()
        defer { w.d.stop() }
        for u in [Self.requester, Self.lead1] { try w.signIn(u) }
        var r = try w.elevate(Self.requester, ["request", "prod-db-admin", "--for", "1h", "--reason", "r", "--ticket", "OPS-7", "--format", "json"])
        let id = try #require(json(r.out)["id"] as? String)
        r = try w.elevate(Self.lead1, ["approve", id])
        #expect(r.status == 0 && r.out.contains("approvals 1/2"), "\(r.out) \(r.stderr)")
        w.d.stop()
        _ = try sqlite(w.d.dbPath, "UPDATE elevation_request SET approvals_needed = 1, state = 'approved', approved_at = created_at WHERE id = '\(id)';")
        try w.d.start()
        r = try w.elevate(Self.requester, ["activate", id])
        #expect(r.status != 0 && r.stderr.contains("the elevation request \(id) failed its integrity check"), "\(r.status) \(r.stderr)")
        r = try w.d.coffer(["operator", "check"])
        #expect(r.status == 9 && r.out.contains("elevation request \(id)"), "\(r.out)")
    }

    @Test func concurrentApprovalsCountExactly() throws {
        let w = try World()
        defer { w.d.stop() }
        for u in [Self.requester] + Self.racers { try w.signIn(u) }
        var r = try w.elevate(Self.requester, ["request", "prod-db-admin", "--for", "30m", "--reason", "race", "--ticket", "OPS-7", "--format", "json"])
        let id = try #require(json(r.out)["id"] as? String)
        let results = Mutex<[Int32]>([])
        DispatchQueue.concurrentPerform(iterations: Self.racers.count) { i in
            let out = try? w.elevate(Self.racers[i], ["approve", id])
            results.withLock { $0.append(out?.status ?? -1) }
        }
        let statuses = results.withLock { $0 }
        #expect(statuses.filter { $0 == 0 }.count == 2, "exactly two approvals land: \(statuses)")
        r = try w.elevate(Self.requester, ["show", id, "--format", "json"])
        #expect(json(r.out)["approvals"] as? Int == 2 && json(r.out)["state"] as? String == "approved", "\(r.out)")
        let events = json(try w.d.curl("GET", "/v1/audit/events?path=\(id)").1)["events"] as? [[String: Any]] ?? []
        // two approvals landed, one of them made the transition: one event says so
        #expect(events.filter { $0["action"] as? String == "elevation_approve" && $0["status"] as? Int == 200 }.count == 2)
        #expect(events.filter { ($0["details"] as? [String: Any])?["state"] as? String == "approved" && $0["action"] as? String == "elevation_approve" }.count == 1)
        // an admin revokes it (with a reason); the requester can no longer activate
        let (code, body) = try w.d.curl("POST", "/v1/elevation/requests/\(id)/revoke", body: #"{"reason":"incident over"}"#)
        #expect(code == 200 && json(body)["state"] as? String == "revoked", "\(body)")
        r = try w.elevate(Self.requester, ["activate", id])
        #expect(r.status == 7)
    }

    @Test func approvedSurvivesAKillBeforeActivation() throws {
        let w = try World()
        defer { w.d.stop() }
        for u in [Self.requester, Self.lead1, Self.lead2] { try w.signIn(u) }
        var r = try w.elevate(Self.requester, ["request", "prod-db-admin", "--for", "10m", "--reason", "kill", "--ticket", "OPS-9", "--format", "json"])
        let id = try #require(json(r.out)["id"] as? String, "\(r.stderr)")
        for lead in [Self.lead1, Self.lead2] {
            r = try w.elevate(lead, ["approve", id])
            #expect(r.status == 0, "\(r.stderr)")
        }
        w.d.kill9()
        try w.d.start()
        r = try w.elevate(Self.requester, ["activate", id, "--format", "json"])
        #expect(r.status == 0 && json(r.out)["token"] is String, "\(r.out) \(r.stderr)")
        r = try w.elevate(Self.requester, ["show", id, "--format", "json"])
        #expect(json(r.out)["state"] as? String == "active" && json(r.out)["ends_at"] is String, "\(r.out)")
    }

    @Test func hooksHearEveryStateChangeAndNeverBlock() throws {
        try? FileManager.default.removeItem(atPath: Self.notifyFile)
        try? FileManager.default.removeItem(atPath: Self.notifyFile + ".all")
        let w = try World()
        defer { w.d.stop() }
        for u in [Self.requester, Self.lead1] { try w.signIn(u) }
        var r = try w.elevate(Self.requester, ["request", "quick", "--for", "10m", "--reason", "hooks", "--format", "json"])
        let id = try #require(json(r.out)["id"] as? String, "\(r.stderr)")
        r = try w.elevate(Self.lead1, ["approve", id])
        r = try w.elevate(Self.requester, ["activate", id, "--format", "json"])
        let token = json(r.out)["token"] as? String ?? "-"
        r = try w.elevate(Self.requester, ["end", id])
        #expect(r.status == 0, "\(r.stderr)")
        Thread.sleep(forTimeInterval: 1)
        let lines = ((try? String(contentsOfFile: Self.notifyFile, encoding: .utf8)) ?? "").split(separator: "\n").map { json(String($0)) }
        // hooks run concurrently, off the request path: order by their time stamps
        let states = lines.sorted { ($0["at"] as? String ?? "") < ($1["at"] as? String ?? "") }.compactMap { $0["state"] as? String }
        #expect(states == ["pending", "approved", "active", "ended"], "\(lines)")
        #expect(lines.allSatisfy { $0["request_id"] as? String == id && $0["role"] as? String == "quick" })
        #expect(!((try? String(contentsOfFile: Self.notifyFile, encoding: .utf8)) ?? "").contains(token), "a hook never sees a token")
        // the policy-wide hook heard the same changes
        let all = ((try? String(contentsOfFile: Self.notifyFile + ".all", encoding: .utf8)) ?? "").split(separator: "\n").map { json(String($0)) }
        #expect(all.filter { $0["request_id"] as? String == id }.count == 4, "\(all.count)")
        // the failing hook (/bin/false) shows in health, and blocked nothing
        let health = json(try w.d.curl("GET", "/v1/sys/health").1)
        #expect((health["notify"] as? String)?.hasPrefix("failing: /bin/false exited") == true, "\(health)")
        try? FileManager.default.removeItem(atPath: Self.notifyFile)
        try? FileManager.default.removeItem(atPath: Self.notifyFile + ".all")
    }

    @Test func breakGlassIsSelfApprovedAndReviewedAfterwards() throws {
        let w = try World()
        defer { w.d.stop() }
        for u in [Self.requester, Self.lead1] { try w.signIn(u) }
        // only where the rule allows it, and never without a reason
        var r = try w.elevate(Self.requester, ["request", "prod-db-admin", "--for", "10m", "--reason", "x", "--ticket", "OPS-1", "--break-glass"])
        #expect(r.status == 5 && r.stderr.contains("no break-glass"), "\(r.stderr)")
        r = try w.elevate(Self.requester, ["request", "quick", "--for", "10m", "--break-glass"])
        #expect(r.status == 7 && r.stderr.contains("reason"), "\(r.stderr)")
        r = try w.elevate(Self.requester, ["request", "quick", "--for", "10m", "--reason", "site down", "--break-glass", "--format", "json"])
        let id = try #require(json(r.out)["id"] as? String, "\(r.stderr)")
        #expect(json(r.out)["state"] as? String == "approved" && json(r.out)["break_glass"] as? Bool == true)
        r = try w.elevate(Self.requester, ["activate", id, "--format", "json"])
        #expect(r.status == 0, "\(r.stderr)")
        // the access review flags it until an approver (not the requester) acknowledges it
        var report = try w.d.coffer(["elevate", "report"])
        #expect(report.out.contains("UNREVIEWED break-glass: \(id)") && report.out.contains("quick  \(Self.requester.name)  1×"), "\(report.out)")
        r = try w.elevate(Self.requester, ["ack", id])
        #expect(r.status == 5, "\(r.stderr)")
        r = try w.elevate(Self.lead1, ["ack", id])
        #expect(r.status == 0, "\(r.stderr)")
        r = try w.elevate(Self.lead1, ["ack", id])
        #expect(r.status == 6, "once: \(r.stderr)")
        report = try w.d.coffer(["elevate", "report", "--format", "json"])
        #expect((json(report.out)["unreviewed_break_glass"] as? [Any])?.isEmpty == true, "\(report.out)")
        // the report needs the audit capability; history filters by role and user
        r = try w.elevate(Self.lead1, ["report"])
        #expect(r.status == 5)
        r = try w.elevate(Self.lead1, ["history", "--role", "quick", "--user", Self.requester.name, "--format", "json"])
        #expect((json(r.out)["requests"] as? [[String: Any]])?.map { $0["id"] as? String } == [id], "\(r.out)")
        r = try w.elevate(Self.lead1, ["history", "--role", "prod-db-admin", "--format", "json"])
        #expect((json(r.out)["requests"] as? [[String: Any]])?.isEmpty == true, "\(r.out)")
    }

    @Test func requestWaitActivatesWhenApproved() throws {
        let w = try World()
        defer { w.d.stop() }
        for u in [Self.requester, Self.lead1, Self.lead2] { try w.signIn(u) }
        try FileManager.default.createDirectory(atPath: w.d.dir + "/wait", withIntermediateDirectories: true)
        chown(w.d.dir + "/wait", Self.requester.uid, Self.requester.gid)
        let (exe, args) = Self.requester.wrap(Bins.sharedCoffer, ["--socket", w.d.socket, "--token-file", w.sessions[Self.requester.name]!, "elevate",
                                                                  "request", "prod-db-admin", "--for", "10m", "--reason", "wait", "--ticket", "OPS-5",
                                                                  "--wait", "--output", w.d.dir + "/wait/t"])
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        defer { if p.isRunning { p.terminate() } }
        // find the request it made, approve it twice
        var id: String?
        for _ in 0..<50 where id == nil {
            Thread.sleep(forTimeInterval: 0.1)
            let r = try w.elevate(Self.lead1, ["list", "--pending", "--format", "json"])
            id = (json(r.out)["requests"] as? [[String: Any]])?.first { $0["reason"] as? String == "wait" }?["id"] as? String
        }
        let rid = try #require(id)
        #expect(p.isRunning, "--wait waits while pending")
        for lead in [Self.lead1, Self.lead2] { #expect(try w.elevate(lead, ["approve", rid]).status == 0) }
        let deadline = Date().addingTimeInterval(10)
        while p.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.1) }
        #expect(!p.isRunning && p.terminationStatus == 0)
        let token = try String(contentsOfFile: w.d.dir + "/wait/t", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.hasPrefix("cfr_"))
        let r = try w.elevate(Self.requester, ["show", rid, "--format", "json"])
        #expect(json(r.out)["state"] as? String == "active", "\(r.out)")
    }

    /// Found by the attack pass: eligibility and approver status are read live, not
    /// only when the request was made; a directly revoked token ends the window.
    @Test func rulesHoldAfterTheFactToo() throws {
        let w = try World()
        defer { w.d.stop() }
        #expect(try w.d.coffer(["secret", "put", "prod/db/password"], stdin: Array("db-secret".utf8)).status == 0)
        for u in [Self.requester, Self.lead1, Self.lead2] { try w.signIn(u) }
        // text that could steer an approver's terminal, or blank text, is no reason
        for reason in ["x\u{009B}31mRED", "rtl\u{202E}txt", "\u{200B}", "   "] {
            let r = try w.elevate(Self.requester, ["request", "prod-db-admin", "--for", "10m", "--reason", reason, "--ticket", "OPS-3"])
            #expect(r.status == 7, "\(reason.unicodeScalars.map { String($0.value, radix: 16) }): \(r.stderr)")
        }
        var r = try w.elevate(Self.requester, ["request", "prod-db-admin", "--for", "10m", "--reason", "live", "--ticket", "OPS-3", "--format", "json"])
        let id = try #require(json(r.out)["id"] as? String, "\(r.stderr)")
        // lead1 approves, then stops being a lead: that approval no longer counts
        #expect(try w.elevate(Self.lead1, ["approve", id]).status == 0)
        _ = try run("/usr/bin/gpasswd", ["-d", Self.lead1.name, "coffer-leads"])
        defer { _ = try? run("/usr/bin/gpasswd", ["-a", Self.lead1.name, "coffer-leads"]) }
        Thread.sleep(forTimeInterval: 0.6)
        r = try w.elevate(Self.lead2, ["approve", id, "--format", "json"])
        #expect(r.status == 0 && json(r.out)["state"] as? String == "pending", "\(r.out) \(r.stderr)")
        _ = try run("/usr/bin/gpasswd", ["-a", Self.lead1.name, "coffer-leads"])
        Thread.sleep(forTimeInterval: 0.6)
        // a second request, approved by both while both are leads, then activated
        r = try w.elevate(Self.requester, ["request", "prod-db-admin", "--for", "10m", "--reason", "live 2", "--ticket", "OPS-4", "--format", "json"])
        let id2 = try #require(json(r.out)["id"] as? String, "\(r.stderr)")
        for lead in [Self.lead1, Self.lead2] { #expect(try w.elevate(lead, ["approve", id2]).status == 0) }
        r = try w.elevate(Self.requester, ["activate", id2, "--format", "json"])
        let token = try #require(json(r.out)["token"] as? String, "\(r.stderr)")
        var (code, _) = try w.d.curl("GET", "/v1/secrets/data/prod/db/password", headers: ["X-Coffer-Token: \(token)"], as: Self.requester.testUser)
        #expect(code == 200)
        // the requester leaves the eligible group: the elevated role goes with it
        _ = try run("/usr/bin/gpasswd", ["-d", Self.requester.name, "coffer-oncall"])
        defer { _ = try? run("/usr/bin/gpasswd", ["-a", Self.requester.name, "coffer-oncall"]) }
        Thread.sleep(forTimeInterval: 0.6)
        (code, _) = try w.d.curl("GET", "/v1/secrets/data/prod/db/password", headers: ["X-Coffer-Token: \(token)"], as: Self.requester.testUser)
        #expect(code == 403, "an elevation outlives its eligibility")
        _ = try run("/usr/bin/gpasswd", ["-a", Self.requester.name, "coffer-oncall"])
        Thread.sleep(forTimeInterval: 0.6)
        // the token revoked directly: the window ends (the job closes the request)
        (code, _) = try w.d.curl("POST", "/v1/tokens/self/revoke", headers: ["X-Coffer-Token: \(token)"], as: Self.requester.testUser)
        #expect(code == 200)
        Thread.sleep(forTimeInterval: 3)
        r = try w.elevate(Self.requester, ["show", id2, "--format", "json"])
        #expect(json(r.out)["state"] as? String == "ended" && json(r.out)["close_reason"] as? String == "its token was revoked", "\(r.out)")
        // the activation event names the token it minted
        let events = json(try w.d.curl("GET", "/v1/audit/events?action=elevation_activate").1)["events"] as? [[String: Any]] ?? []
        #expect(events.contains { (($0["details"] as? [String: Any])?["token"] as? String)?.hasPrefix("acc_") == true }, "\(events)")
    }

    @Test func unansweredRequestsExpire() throws {
        let w = try World()
        defer { w.d.stop() }
        try w.signIn(Self.requester)
        var r = try w.elevate(Self.requester, ["request", "quick", "--for", "5m", "--format", "json"])
        let id = try #require(json(r.out)["id"] as? String, "\(r.stderr)")
        Thread.sleep(forTimeInterval: 4.5)
        r = try w.elevate(Self.requester, ["show", id, "--format", "json"])
        #expect(json(r.out)["state"] as? String == "expired" && json(r.out)["closed_by"] as? String == "system:elevation", "\(r.out)")
        let events = json(try w.d.curl("GET", "/v1/audit/events?action=elevation_expire").1)["events"] as? [[String: Any]] ?? []
        #expect(events.contains { $0["path"] as? String == id && $0["method"] as? String == "JOB" }, "\(events)")
        // ids that do not exist, or belong to others, read the same
        r = try w.elevate(Self.requester, ["show", "el_0000000000000000"])
        #expect(r.status == 4)
    }
}
