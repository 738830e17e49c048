import CofferAPI
import CofferClient
import Foundation
import Testing

@Suite(.serialized) struct TokenTests {
    func mint(_ d: Daemon, _ args: [String], token: String? = nil) throws -> (token: String, accessor: String) {
        var env: [String: String] = ["COFFER_SOCKET": d.socket]
        if let token { env["COFFER_TOKEN"] = token }
        let r = try run(Bins.coffer, ["--format", "json", "token", "create"] + args, env: env)
        guard r.status == 0 else { throw TestError.failed("token create \(args): \(r.stderr)") }
        let j = json(r.out)
        let info = j["info"] as? [String: Any] ?? [:]
        return (j["token"] as? String ?? "", info["accessor"] as? String ?? "")
    }

    func use(_ d: Daemon, _ token: String, _ args: [String] = ["secret", "get", "ci/app/db"], as user: TestUser? = nil) throws -> RunResult {
        if let user {
            let file = d.dir + "/tok-\(UUID().uuidString)"
            FileManager.default.createFile(atPath: file, contents: Data(token.utf8), attributes: [.posixPermissions: 0o400])
            chown(file, user.uid, user.gid)
            return try d.coffer(["--token-file", file] + args, as: user)
        }
        return try run(Bins.coffer, args, env: ["COFFER_SOCKET": d.socket, "COFFER_TOKEN": token])
    }

    @Test func expiryAfterAShortTTL() throws {
        let d = try AccessFixture.daemon()
        let t = try mint(d, ["--role", "ci-build", "--ttl", "2s"])
        #expect(t.token.hasPrefix("cfr_") && t.token.count == 47)
        var r = try use(d, t.token)
        #expect(r.status == 0 && r.stdout == Array("value-of-ci/app/db".utf8))
        r = try use(d, t.token, ["token", "lookup"])
        #expect(r.out.contains("state:      active") && r.out.contains("roles:      ci-build"), "\(r.out)")
        usleep(2_300_000)
        r = try use(d, t.token)
        #expect(r.status == 5)
        #expect(r.stderr.hasPrefix("coffer: error: the token expired"))
        let (code, body) = try d.curl("GET", "/v1/secrets/data/ci/app/db", headers: ["X-Coffer-Token: \(t.token)"])
        #expect(code == 401 && errorCode(body) == "token_expired")
        let (code2, body2) = try d.curl("GET", "/v1/secrets/data/ci/app/db", headers: ["Authorization: Bearer \(t.token)"])
        #expect(code2 == 401 && errorCode(body2) == "token_expired")
    }

    @Test func useCountIsExactUnder32ConcurrentUses() throws {
        let d = try AccessFixture.daemon()
        let t = try mint(d, ["--role", "ci-build", "--uses", "10"])
        let ok = Atomic(0), exhausted = Atomic(0), other = Atomic(0)
        let socket = d.socket, token = t.token
        DispatchQueue.concurrentPerform(iterations: 32) { _ in
            do {
                _ = try CofferClient(socketPath: socket, token: token).getRaw("ci/app/db", version: nil)
                ok.add(1)
            } catch let e as APIError where e.code == "token_exhausted" {
                exhausted.add(1)
            } catch {
                other.add(1)
            }
        }
        #expect(ok.load() == 10)
        #expect(exhausted.load() == 22)
        #expect(other.load() == 0)
        let info = json(try d.coffer(["--format", "json", "token", "lookup", t.accessor]).out)
        #expect(info["uses"] as? Int == 10 && info["uses_left"] as? Int == 0 && info["state"] as? String == "exhausted")
    }

    /// A token's name cannot hide what it is: control and format characters (a
    /// right-to-left override, a zero-width joiner, a line separator) are refused.
    @Test(arguments: ["a\u{202E}gpj.exe", "a\u{200D}b", "a\u{2028}b", "a\u{85}b", "tab\there"])
    func tokenNamesMustPrintAsTheyAre(_ name: String) throws {
        let d = try AccessFixture.daemon()
        let r = try d.coffer(["token", "create", "--role", "admin", "--name", name])
        #expect(r.status != 0 && r.stderr.contains("name must be at most 128 printable characters"), "\(r.stderr)")
        #expect(try mint(d, ["--role", "admin", "--name", "café ✓"]).token.hasPrefix("cfr_"))
    }

    @Test func revokeCascadesToChildren() throws {
        let d = try AccessFixture.daemon()
        let a = try mint(d, ["--role", "admin", "--name", "parent"])
        let b = try mint(d, ["--role", "admin", "--name", "child"], token: a.token)
        let c = try mint(d, ["--role", "admin", "--name", "grandchild"], token: b.token)
        let other = try mint(d, ["--role", "admin", "--name", "unrelated"])
        for t in [a, b, c, other] { #expect(try use(d, t.token).status == 0) }
        let info = json(try d.coffer(["--format", "json", "token", "lookup", c.accessor]).out)
        #expect(info["parent"] as? String == b.accessor)
        let r = try d.coffer(["--format", "json", "token", "revoke", a.accessor])
        #expect(r.status == 0)
        #expect(Set(json(r.out)["revoked"] as? [String] ?? []) == [a.accessor, b.accessor, c.accessor])
        for t in [a, b, c] {
            let u = try use(d, t.token)
            #expect(u.status == 5 && u.stderr.contains("the token was revoked"))
        }
        #expect(try use(d, other.token).status == 0)
        // a token may revoke itself
        #expect(try use(d, other.token, ["token", "revoke", "--self"]).status == 0)
        #expect(try use(d, other.token).status == 5)
    }

    @Test func uidBindingAndTokenRolesOnly() throws {
        let d = try AccessFixture.daemon()
        let carol = AccessFixture.carol
        let t = try mint(d, ["--role", "ci-build", "--bind-uid", "\(carol.uid)"])
        // carol has no role of her own; the token gives her exactly ci-build
        var r = try use(d, t.token, as: carol)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try use(d, t.token, ["secret", "get", "other/x"], as: carol).status == 5)
        // root holding the token gets the token's roles only, and it is bound to carol
        r = try use(d, t.token)
        #expect(r.status == 5 && r.stderr.contains("bound to another uid"))
        let (code, body) = try d.curl("GET", "/v1/secrets/data/ci/app/db", headers: ["X-Coffer-Token: \(t.token)"])
        #expect(code == 401 && errorCode(body) == "token_uid_mismatch")
        // an unbound ci-build token used by root cannot destroy, though root could
        let plain = try mint(d, ["--role", "ci-build"])
        r = try use(d, plain.token, ["secret", "destroy", "ci/app/db"])
        #expect(r.status == 5)
        #expect(try d.coffer(["secret", "get", "ci/app/db"]).status == 0)
    }

    @Test func escalationAttemptsAreRefused() throws {
        let d = try AccessFixture.daemon()
        let ci = try mint(d, ["--role", "ci-build", "--paths", "ci/app/**", "--ttl", "10m"])
        let cases: [([String], String?, String)] = [
            (["--role", "admin"], ci.token, "you do not hold role 'admin'"),  // a role the creator lacks
            (["--role", "ci-build", "--paths", "ci/**"], ci.token, "wider than your token's paths"),
            (["--role", "ci-build", "--paths", "**"], ci.token, "wider than your token's paths"),
            (["--role", "ci-build", "--ttl", "2h"], nil, "longer than the roles allow"),  // role max_ttl 1h
            (["--role", "ci-build", "--role", "bob-writer", "--ttl", "30m"], nil, "longer than the roles allow"),  // 10m cap
            (["--role", "ci-build", "--ttl", "30m"], ci.token, "cannot outlive"),
            (["--role", "nosuch"], nil, "unknown role"),
        ]
        for (args, parent, message) in cases {
            var env: [String: String] = ["COFFER_SOCKET": d.socket]
            if let parent { env["COFFER_TOKEN"] = parent }
            let r = try run(Bins.coffer, ["token", "create"] + args, env: env)
            #expect(r.status != 0, "\(args)")
            #expect(r.stderr.contains(message), "\(args): \(r.stderr)")
        }
        // a narrower child works and inherits nothing wider
        let child = try mint(d, ["--role", "ci-build", "--paths", "ci/app/db", "--ttl", "5m"], token: ci.token)
        #expect(try use(d, child.token).status == 0)
        #expect(try use(d, child.token, ["secret", "get", "ci/app/other"]).status == 5)
        // a bound parent's children stay bound
        let bound = try mint(d, ["--role", "ci-build", "--bind-uid", "0"])
        let r = try run(Bins.coffer, ["token", "create", "--role", "ci-build", "--bind-uid", "\(AccessFixture.carol.uid)"],
                        env: ["COFFER_SOCKET": d.socket, "COFFER_TOKEN": bound.token])
        #expect(r.status == 5 && r.stderr.contains("bound to uid 0"))
        // garbage and unknown tokens are 401 with their own code
        for bad in ["nonsense", "cfr_" + String(repeating: "A", count: 43), "Bearer"] {
            let (code, body) = try d.curl("GET", "/v1/sys/status", headers: ["X-Coffer-Token: \(bad)"])
            #expect(code == 401 && errorCode(body) == "token_unknown", "\(bad)")
        }
        #expect(try d.curl("GET", "/v1/sys/status", headers: ["Authorization: Basic abc"]).0 == 401)
    }

    /// Tokens are stored only as keyed hashes: the token text is in no database file
    /// and in no log line; --output writes a new 0600 file.
    @Test func tokensAreNotRecoverableFromDiskOrLogs() throws {
        let d = try AccessFixture.daemon()
        var tokens: [String] = []
        for i in 0..<5 { tokens.append(try mint(d, ["--role", "ci-build", "--name", "t\(i)"]).token) }
        let out = d.dir + "/job.token"
        var r = try d.coffer(["token", "create", "--role", "ci-build", "--output", out])
        #expect(r.status == 0 && r.out.contains("token written to"))
        var st = stat()
        #expect(stat(out, &st) == 0 && st.st_mode & 0o777 == 0o600)
        let fromFile = ((try? String(contentsOfFile: out, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        tokens.append(fromFile)
        r = try d.coffer(["token", "create", "--role", "ci-build", "--output", out])
        #expect(r.status != 0, "refuses to overwrite")
        for t in tokens { #expect(try use(d, t).status == 0) }
        #expect(try use(d, fromFile, ["token", "lookup"]).status == 0)
        let stored = try d.databaseBytes()
        for t in tokens {
            let secretPart = Array(t.dropFirst(4).utf8)
            #expect(!contains(stored, secretPart), "token in the database")
            #expect(!contains(fileBytes(d.logPath), secretPart), "token in the log")
            if let raw = Data(base64Encoded: String(t.dropFirst(4)).replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/") + "=") {
                #expect(!contains(stored, [UInt8](raw)), "raw token bytes in the database")
                #expect(!contains(stored, Array(raw.map { String(format: "%02x", $0) }.joined().utf8)), "token bytes in hex in the database")
            }
        }
        // positive control: accessors are stored
        let list = json(try d.coffer(["--format", "json", "token", "list"]).out)["tokens"] as? [[String: Any]] ?? []
        #expect(list.count == 6)
        let accessor = list.first?["accessor"] as? String ?? "?"
        #expect(contains(stored, Array(accessor.utf8)))
    }

    /// contrib/ci/coffer-job, as a CI runner would use it: the job runs as another
    /// user with a token for its project only, revoked when the job ends.
    @Test func ciJobWrapper() throws {
        let d = try AccessFixture.daemon()
        _ = try d.coffer(["secret", "put", "ci/proj/db-password"], stdin: Array("pw".utf8))
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("contrib/ci/coffer-job").path
        let binDir = (Bins.sharedCoffer as NSString).deletingLastPathComponent
        let env = ["COFFER_SOCKET": d.socket, "PATH": binDir + ":/usr/sbin:/usr/bin:/sbin:/bin", "CI_JOB_ID": "42"]
        let carol = AccessFixture.carol
        var r = try run("/bin/bash", [script, "proj", carol.name, "--", "sh", "-c",
                                      "id -u; coffer secret get ci/proj/db-password; echo; coffer secret get ci/app/db; echo \"other=$?\""], env: env)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.out == "\(carol.uid)\npw\nother=5\n", "\(r.out) \(r.stderr)")
        // the job's token was revoked afterwards
        let list = json(try d.coffer(["--format", "json", "token", "list"]).out)["tokens"] as? [[String: Any]] ?? []
        let job = list.first { ($0["name"] as? String) == "job:proj:42" }
        #expect(job?["state"] as? String == "revoked")
        #expect(job?["bound_uid"] as? Int == Int(carol.uid))
        #expect(job?["paths"] as? [String] == ["ci/proj/**"])
        r = try run("/bin/bash", [script, "proj", carol.name, "--", "false"], env: env)
        #expect(r.status != 0)
        // with --secret the job runs under coffer run: a tmpfs of files owned by the job user
        r = try run("/bin/bash", [script, "proj", carol.name, "--secret", "db-password", "--", "sh", "-c",
                                  "stat -c '%u %a' \"$COFFER_SECRETS_DIR/db-password\"; cat \"$COFFER_SECRETS_DIR/db-password\""], env: env)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.out == "\(carol.uid) 400\npw", "\(r.out) \(r.stderr)")
    }

    /// The runner account it is written for need not be root: alice (ci-build) runs a
    /// job as herself; her token is revoked afterwards by her, the one who minted it.
    @Test func ciJobWrapperAsANonRootRunner() throws {
        let d = try AccessFixture.daemon()
        _ = try d.coffer(["secret", "put", "ci/proj/db-password"], stdin: Array("pw".utf8))
        let script = Bins.packageRoot + "/contrib/ci/coffer-job"
        let shared = (Bins.sharedCoffer as NSString).deletingLastPathComponent
        try FileManager.default.copyItem(atPath: script, toPath: shared + "/coffer-job-\(getpid())")
        let alice = AccessFixture.alice
        let (exe, args) = alice.wrap("/usr/bin/env", ["COFFER_SOCKET=\(d.socket)", "PATH=\(shared):/usr/sbin:/usr/bin:/sbin:/bin", "CI_JOB_ID=43",
                                                      "/bin/bash", shared + "/coffer-job-\(getpid())", "proj", alice.name, "--", "sh", "-c",
                                                      "coffer secret get ci/proj/db-password"])
        let r = try run(exe, args)
        #expect(r.status == 0 && r.out == "pw", "\(r.status) \(r.out) \(r.stderr)")
        let list = json(try d.coffer(["--format", "json", "token", "list"]).out)["tokens"] as? [[String: Any]] ?? []
        let job = list.first { ($0["name"] as? String) == "job:proj:43" }
        #expect(job?["state"] as? String == "revoked", "\(job ?? [:])")
        // a token alice did not mint stays out of her reach
        let other = json(try d.coffer(["--format", "json", "token", "create", "--role", "ci-build", "--ttl", "5m"]).out)
        let acc = (other["info"] as? [String: Any])?["accessor"] as? String ?? "?"
        let refused = try d.coffer(["token", "revoke", acc], as: alice)
        #expect(refused.status == 5, "\(refused.stderr)")
    }
}
