import CofferAPI
import CofferClient
import Foundation
import Testing

/// Real users and groups for the authorization matrix (created when missing; CI is root).
enum AccessFixture {
    static let group = "coffer-ci"
    static let alice = TestUser.ensure("coffer-alice", supplementary: group)  // in coffer-ci (supplementary)
    static let bob = TestUser.ensure("coffer-bob")  // bound by user name
    static let carol = TestUser.ensure("coffer-carol")  // bound to nothing

    static let policy = """
        [role.admin]
        [[role.admin.rule]]
        path = "**"
        capabilities = ["read", "list", "write", "delete", "destroy", "admin", "audit"]

        [role.ci-build]
        max_ttl = "1h"
        [[role.ci-build.rule]]
        path = "ci/**"
        capabilities = ["read", "list"]
        [[role.ci-build.rule]]
        path = "ci/*/prod/**"
        capabilities = ["read", "list"]
        effect = "deny"

        [role.bob-writer]
        max_ttl = "10m"
        [[role.bob-writer.rule]]
        path = "ci/bob/**"
        capabilities = ["read", "write", "delete"]

        [[bind]]
        subjects = ["uid:0"]
        roles = ["admin"]

        [[bind]]
        subjects = ["group:\(group)"]
        roles = ["ci-build"]

        [[bind]]
        subjects = ["user:coffer-bob"]
        roles = ["bob-writer"]
        """

    static func daemon(policy text: String = policy) throws -> Daemon {
        _ = alice; _ = bob; _ = carol
        let d = try Daemon(config: "", initialise: false, policy: text)
        let r = try run(Bins.cofferd, ["init", "--config", d.configPath])
        guard r.status == 0 else { throw TestError.failed("init: \(r.stderr)") }
        try d.start()
        for p in ["ci/app/db", "ci/app/prod/db", "ci/bob/key", "other/x"] {
            _ = try d.coffer(["secret", "put", p], stdin: Array("value-of-\(p)".utf8))
        }
        return d
    }
}

@Suite(.serialized) struct AccessTests {
    /// Every route × allowed/denied subject with real uids and groups; each denied
    /// call changes nothing.
    @Test func authorizationMatrix() throws {
        let d = try AccessFixture.daemon()
        let (alice, bob, carol) = (AccessFixture.alice, AccessFixture.bob, AccessFixture.carol)
        func state() throws -> String {
            try ["ci/app/db", "ci/app/prod/db", "ci/bob/key", "other/x"].map { try d.curl("GET", "/v1/secrets/metadata/\($0)").1 }.joined()
                + (try d.curl("GET", "/v1/secrets/list/ci").1)
        }
        // (user, args, stdin, expected exit)
        let cases: [(TestUser, [String], String?, Int32)] = [
            (alice, ["secret", "get", "ci/app/db"], nil, 0),
            (alice, ["secret", "get", "ci/app/db", "--version", "1"], nil, 0),
            (alice, ["secret", "versions", "ci/app/db"], nil, 0),
            (alice, ["secret", "list", "ci"], nil, 0),
            (alice, ["secret", "list", "ci/app"], nil, 0),
            (alice, ["status"], nil, 0),
            (alice, ["secret", "get", "ci/app/prod/db"], nil, 5),
            (alice, ["secret", "list", "ci/app/prod"], nil, 5),
            (alice, ["secret", "get", "other/x"], nil, 5),
            (alice, ["secret", "get", "ci/app/nope"], nil, 4),  // allowed to know: not found
            (alice, ["secret", "list"], nil, 5),
            (alice, ["secret", "put", "ci/app/db"], "x", 5),
            (alice, ["secret", "delete", "ci/app/db"], nil, 5),
            (alice, ["secret", "undelete", "ci/app/db"], nil, 5),
            (alice, ["secret", "destroy", "ci/app/db"], nil, 5),
            (alice, ["token", "list"], nil, 5),
            (alice, ["policy", "reload"], nil, 5),
            (alice, ["policy", "explain", "--as", "uid:0", "read", "x"], nil, 5),
            (bob, ["secret", "get", "ci/bob/key"], nil, 0),
            (bob, ["secret", "get", "ci/app/db"], nil, 5),
            (bob, ["secret", "list", "ci"], nil, 5),
            (bob, ["secret", "destroy", "ci/bob/key"], nil, 5),
            (bob, ["secret", "put", "ci/app/db"], "x", 5),
            (carol, ["status"], nil, 5),
            (carol, ["secret", "get", "ci/app/db"], nil, 5),
            (carol, ["secret", "get", "does/not/exist"], nil, 5),
            (carol, ["secret", "list", "ci"], nil, 5),
            (carol, ["secret", "versions", "ci/app/db"], nil, 5),
            (carol, ["secret", "put", "ci/new"], "x", 5),
            (carol, ["token", "create", "--role", "ci-build"], nil, 5),
        ]
        for (user, args, stdin, expected) in cases {
            let before = try state()
            let r = try d.coffer(args, stdin: stdin.map { Array($0.utf8) }, as: user)
            #expect(r.status == expected, "\(user.name) \(args): \(r.stderr)")
            if expected == 5 {
                #expect(r.stderr.hasPrefix("coffer: error: permission denied") || r.stderr.contains("you do not hold role"),
                        "\(user.name) \(args): \(r.stderr)")
                #expect(try state() == before, "\(user.name) \(args) changed something")
            }
        }
        // bob's writes are allowed where his role says, and land
        #expect(try d.coffer(["secret", "put", "ci/bob/key"], stdin: Array("bob2".utf8), as: bob).status == 0)
        #expect(try d.coffer(["secret", "get", "ci/bob/key"]).stdout == Array("bob2".utf8))
        // the deciding rule is named, for a supplementary-group member
        let ex = try d.coffer(["policy", "explain", "--as", "user:\(alice.name)", "read", "ci/app/prod/db"])
        #expect(ex.status == 0)
        #expect(ex.out.hasPrefix("DENY read ci/app/prod/db as user:\(alice.name)"))
        #expect(ex.out.contains("decided by: role ci-build rule 2 ("))
        #expect(ex.out.contains("policy.toml:12: deny list,read on ci/*/prod/**"), "\(ex.out)")
        let ex2 = try d.coffer(["--format", "json", "policy", "explain", "--as", "group:\(AccessFixture.group)", "list", "ci"])
        #expect(json(ex2.out)["allowed"] as? Bool == true)
        let ex3 = try d.coffer(["policy", "explain", "--as", "user:\(carol.name)", "read", "ci/app/db"])
        #expect(ex3.out.contains("DENY") && ex3.out.contains("no rule matched"))
    }

    @Test func policyCheckReloadAndSIGHUP() throws {
        let d = try AccessFixture.daemon()
        let good = d.dir + "/good.toml", bad = d.dir + "/bad.toml"
        try AccessFixture.policy.write(toFile: good, atomically: true, encoding: .utf8)
        try (AccessFixture.policy + "\n[[bind]]\nsubjects = [\"user:x\"]\nroles = [\"nope\"]\n").write(toFile: bad, atomically: true, encoding: .utf8)
        var r = try run(Bins.coffer, ["policy", "check", good])
        #expect(r.status == 0 && r.out.contains("OK (3 roles, 4 rules, 3 bindings, 0 elevation rules)"))
        r = try run(Bins.coffer, ["policy", "check", bad])
        #expect(r.status == 7)
        #expect(r.stderr.contains("bad.toml:35: unknown role 'nope'"), "\(r.stderr)")
        // an invalid policy is refused and the old one stays
        try String(contentsOfFile: bad, encoding: .utf8).write(toFile: d.policyPath, atomically: true, encoding: .utf8)
        r = try d.coffer(["policy", "reload"])
        #expect(r.status == 7 && r.stderr.contains("unknown role 'nope'"))
        #expect(try d.coffer(["secret", "get", "ci/app/db"], as: AccessFixture.alice).status == 0)
        // a valid one that drops alice's binding takes effect through the API...
        let without = AccessFixture.policy.replacingOccurrences(of: "subjects = [\"group:\(AccessFixture.group)\"]", with: "subjects = [\"uid:4000000\"]")
        try without.write(toFile: d.policyPath, atomically: true, encoding: .utf8)
        #expect(try d.coffer(["policy", "reload"]).status == 0)
        #expect(try d.coffer(["secret", "get", "ci/app/db"], as: AccessFixture.alice).status == 5)
        // ...and through SIGHUP
        try AccessFixture.policy.write(toFile: d.policyPath, atomically: true, encoding: .utf8)
        kill(d.pid ?? 0, SIGHUP)
        var ok = false
        for _ in 0..<100 where !ok {
            ok = try d.coffer(["secret", "get", "ci/app/db"], as: AccessFixture.alice).status == 0
            if !ok { usleep(50_000) }
        }
        #expect(ok)
        #expect(d.log.contains("policy reloaded"))
        #expect(d.log.contains("policy reload refused"))
    }

    /// 16 clients read continuously while the policy is reloaded 50 times (valid and
    /// invalid alternately): no request that policy allowed fails.
    @Test func reloadUnderLoad() throws {
        let d = try AccessFixture.daemon()
        let valid = AccessFixture.policy
        let invalid = AccessFixture.policy + "\n[role.broken]\n[[role.broken.rule]]\npath = \"a//b\"\ncapabilities = [\"read\"]\n"
        let stop = Atomic(false)
        let failures = Atomic(0)
        let successes = Atomic(0)
        let group = DispatchGroup()
        let socket = d.socket
        for _ in 0..<16 {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                let client = CofferClient(socketPath: socket)
                while !stop.load() {
                    do {
                        _ = try client.getRaw("ci/app/db", version: nil)
                        successes.add(1)
                    } catch {
                        failures.add(1)
                    }
                }
            }
        }
        var refused = 0
        for i in 0..<50 {
            try (i % 2 == 0 ? valid : invalid).write(toFile: d.policyPath, atomically: true, encoding: .utf8)
            let r = try d.coffer(["policy", "reload"])
            if r.status != 0 { refused += 1 }
        }
        stop.store(true)
        group.wait()
        #expect(failures.load() == 0)
        #expect(successes.load() > 100)
        #expect(refused == 25)
    }
}

/// A tiny lock-based atomic for test threads.
final class Atomic<T>: @unchecked Sendable {
    private var value: T
    private let lock = NSLock()
    init(_ v: T) { value = v }
    func load() -> T { lock.withLock { value } }
    func store(_ v: T) { lock.withLock { value = v } }
    func update(_ body: (inout T) -> Void) { lock.withLock { body(&value) } }
}

extension Atomic where T == Int {
    func add(_ n: Int) { lock.withLock { value += n } }
}
