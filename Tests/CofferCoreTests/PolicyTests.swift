import Foundation
import CofferCore
import Testing

func principal(_ uid: UInt32, _ user: String?, groups: [String] = [], token: TokenGrant? = nil) -> Principal {
    Principal(pid: 1, uid: uid, gid: uid, userName: user, groups: [uid], groupNames: groups, token: token)
}

@Suite struct PathPatternTests {
    @Test(arguments: [
        ("ci/app/db", "ci/app/db", true), ("ci/app/db", "ci/app/dbx", false), ("ci/app/db", "ci/app", false),
        ("ci/*/db", "ci/app/db", true), ("ci/*/db", "ci/app/x/db", false), ("ci/*/db", "ci/db", false),
        ("ci/**", "ci/app/db", true), ("ci/**", "ci", true), ("ci/**", "cix/a", false), ("ci/**", "", false),
        ("**", "", true), ("**", "a/b/c", true), ("**/db", "a/b/db", true), ("**/db", "db", true), ("**/db", "a/dbx", false),
        ("ci/**/key", "ci/key", true), ("ci/**/key", "ci/a/b/key", true), ("ci/**/key", "ci/a/b/keys", false),
        ("ci/app-*", "ci/app-web", true), ("ci/app-*", "ci/app-", true), ("ci/app-*", "ci/ap", false),
        ("ci/*-prod/*", "ci/web-prod/db", true), ("ci/*-prod/*", "ci/web-dev/db", false),
        ("a*b*c", "abc", true), ("a*b*c", "axxbyyc", true), ("a*b*c", "acb", false), ("*", "x", true), ("*", "x/y", false),
    ] as [(String, String, Bool)])
    func matching(_ pattern: String, _ path: String, _ expected: Bool) throws {
        #expect(try PathPattern(pattern).matches(path) == expected, "\(pattern) ~ \(path)")
    }

    @Test(arguments: ["", "/a", "a/", "a//b", "a/**b", "a/b**", "a/../b", ".", "a b", "a/%"])
    func invalid(_ p: String) {
        #expect(throws: CofferError.self) { try PathPattern(p) }
    }

    @Test(arguments: [
        ("ci/app/db", "ci/**", true), ("ci/app/**", "ci/**", true), ("ci/**", "ci/app/**", false),
        ("ci/*/db", "ci/**", true), ("ci/*/db", "ci/*/*", true), ("ci/*/*", "ci/*/db", false),
        ("**", "ci/**", false), ("ci/**", "**", true), ("ci/app-*/x", "ci/*/x", true), ("ci/*/x", "ci/app-*/x", false),
        ("ci/app/db", "ci/app/db", true), ("ci/app/db", "ci/app/key", false), ("ci/web", "ci/app-*", false),
    ] as [(String, String, Bool)])
    func coverage(_ narrow: String, _ wide: String, _ expected: Bool) throws {
        #expect(try PathPattern(narrow).isCovered(by: PathPattern(wide)) == expected, "\(narrow) ⊆ \(wide)")
    }

    @Test func durations() {
        #expect(DurationText.seconds("90s") == 90)
        #expect(DurationText.seconds("30m") == 1800)
        #expect(DurationText.seconds("2h30m") == 9000)
        #expect(DurationText.seconds("7d") == 604_800)
        for bad in ["", "10", "m", "1x", "-1m", "1.5h", "0s", "9999999999s"] { #expect(DurationText.seconds(bad) == nil, "\(bad)") }
        #expect(DurationText.format(9000) == "2h30m")
    }
}

/// The shared policy fixture (Tests/Fixtures/policy): the same file and decision
/// table drive this unit test and the end-to-end PolicyFixtureTests.
enum PolicyFixture {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/policy")
    static let ciPolicy = try! String(contentsOf: dir.appendingPathComponent("ci.toml"), encoding: .utf8)  // a fixture file under test

    /// subject, capability, path, allowed, deciding rule (prefix): one case per line.
    static var cases: [(subject: String, capability: String, path: String, allowed: Bool, rule: String)] {
        let text = try! String(contentsOf: dir.appendingPathComponent("ci-cases.tsv"), encoding: .utf8)
        return text.split(separator: "\n").filter { !$0.hasPrefix("#") }.map { line in
            let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            return (f[0], f[1], f[2] == "-" ? "" : f[2], f[3] == "allow", f[4])
        }
    }
}

let ciPolicy = PolicyFixture.ciPolicy

@Suite struct PolicyTests {
    static let policy = try! Policy.parse(ciPolicy, file: "policy.toml")  // a constant under test

    @Test(arguments: [
        // who, action, path, allowed, deciding rule (prefix)
        (principal(0, "root"), Action.destroy, "anything/at/all", true, "role admin rule 1 (policy.toml:3"),
        (principal(1000, "alice", groups: ["users", "coffer-admin"]), .write, "x", true, "role admin rule 1"),
        (principal(1001, "jenkins"), .read, "ci/app/db", true, "role ci-build rule 1 (policy.toml:9"),
        (principal(1001, "jenkins"), .list, "ci", true, "role ci-build rule 1"),
        (principal(1001, "jenkins"), .readMetadata, "ci/app/db", true, "role ci-build rule 1"),
        (principal(1001, "jenkins"), .write, "ci/app/db", false, "no rule matched (roles: ci-build)"),
        (principal(1001, "jenkins"), .read, "ci/app/prod/db", false, "role ci-build rule 2 (policy.toml:12: deny read"),
        (principal(1001, "jenkins"), .read, "other/db", false, "no rule matched"),
        (principal(1001, "jenkins"), .list, "", false, "no rule matched"),
        (principal(1002, "bob", groups: ["ci"]), .read, "ci/web/tls", true, "role ci-build rule 1"),  // supplementary group
        (principal(1003, "eve", groups: ["users"]), .read, "ci/web/tls", false, "no rule matched (no role is bound to this caller)"),
        (principal(1500, "deploy"), .read, "ci/app/prod/db", false, "role ci-build rule 2"),  // deny beats another role's allow
        (principal(1500, "deploy"), .write, "ci/app/prod/db", true, "role deployer rule 1"),
        (principal(1001, "jenkins"), .status, "", true, "status: holds role ci-build"),
        (principal(1003, "eve"), .status, "", false, "no rule matched"),
        (principal(1001, "jenkins"), .admin, "", false, "no rule matched"),
        (principal(0, "root"), .admin, "", true, "role admin rule 1"),
    ] as [(Principal, Action, String, Bool, String)])
    func decisions(_ p: Principal, _ action: Action, _ path: String, _ allowed: Bool, _ rule: String) throws {
        let d = PolicyEvaluator.decide(Self.policy, p, action, path.isEmpty ? nil : try SecretPath(path))
        #expect(d.allowed == allowed, "\(d.rule)")
        #expect(d.rule.hasPrefix(rule), "\(d.rule)")
    }

    /// The shared decision table, as the resolver builds subjects (uid:N, group:NAME).
    @Test func sharedDecisionTable() throws {
        let cases = PolicyFixture.cases
        #expect(cases.count >= 10)
        for c in cases {
            let p: Principal
            if c.subject.hasPrefix("uid:") {
                p = principal(UInt32(c.subject.dropFirst(4))!, nil)
            } else {
                p = Principal(pid: 0, uid: UInt32.max - 1, gid: UInt32.max - 1, userName: nil, groups: [], groupNames: [String(c.subject.dropFirst(6))])
            }
            let action = try #require(Action(rawValue: c.capability))
            let d = PolicyEvaluator.decide(Self.policy, p, action, c.path.isEmpty ? nil : try SecretPath(c.path))
            #expect(d.allowed == c.allowed && d.rule.hasPrefix(c.rule), "\(c): \(d.rule)")
        }
    }

    @Test func tokensReplaceThePeersRolesAndNarrowPaths() throws {
        let grant = TokenGrant(accessor: "acc_1", roles: ["ci-build"], paths: [try PathPattern("ci/app/**")], expiresAt: 0, boundUID: nil)
        let rootWithToken = principal(0, "root", token: grant)
        #expect(PolicyEvaluator.decide(Self.policy, rootWithToken, .read, try SecretPath("ci/app/db")).allowed)
        let outside = PolicyEvaluator.decide(Self.policy, rootWithToken, .read, try SecretPath("ci/web/db"))
        #expect(!outside.allowed && outside.rule.contains("outside the token's paths"))
        #expect(!PolicyEvaluator.decide(Self.policy, rootWithToken, .write, try SecretPath("ci/app/db")).allowed)
        #expect(!PolicyEvaluator.decide(Self.policy, rootWithToken, .destroy, try SecretPath("x")).allowed)
    }

    /// `require = ["network:none"]`: the rule allows only when cofferd verified the
    /// condition of the receiving process; otherwise the denial names rule and condition.
    @Test func requiredConditionsGateTheRule() throws {
        let policy = try Policy.parse("""
            [role.ci]
            [[role.ci.rule]]
            path = "ci/**"
            capabilities = ["read"]
            [[role.ci.rule]]
            path = "ci/signing/**"
            capabilities = ["inject", "read"]
            require = ["network:none"]
            [role.other]
            [[role.other.rule]]
            path = "ci/signing/public"
            capabilities = ["read"]
            [[bind]]
            subjects = ["uid:1000"]
            roles = ["ci"]
            [[bind]]
            subjects = ["uid:1001"]
            roles = ["ci", "other"]
            """, file: "p.toml")
        let key = try SecretPath("ci/signing/key")
        var p = principal(1000, "ci")
        #expect(PolicyEvaluator.decide(policy, p, .read, try SecretPath("ci/app/db")).allowed)
        let plain = PolicyEvaluator.decide(policy, p, .inject, key)
        #expect(!plain.allowed)
        #expect(plain.rule.contains("role ci rule 2 (p.toml:6: allow inject,read on ci/signing/** requires network:none)"), "\(plain.rule)")
        #expect(plain.rule.contains("only into a run without network") && plain.rule.hasSuffix("missing network:none"), "\(plain.rule)")
        // rule 1 (ci/**, read) alone would allow a read: the requirement binds every release of the path
        let read = PolicyEvaluator.decide(policy, p, .read, key)
        #expect(!read.allowed && read.rule.contains("rule 2"), "\(read.rule)")
        p.conditions = [.networkNone]
        let isolated = PolicyEvaluator.decide(policy, p, .inject, key)
        #expect(isolated.allowed && isolated.rule.contains("rule 2"))
        #expect(PolicyEvaluator.decide(policy, p, .read, key).allowed)
        // through a token made of the same role: the same
        let grant = TokenGrant(accessor: "acc_1", roles: ["ci"], paths: [], expiresAt: 0, boundUID: nil)
        var t = principal(0, "root", token: grant)
        #expect(!PolicyEvaluator.decide(policy, t, .inject, key).allowed)
        t.conditions = [.networkNone]
        #expect(PolicyEvaluator.decide(policy, t, .inject, key).allowed)
        // nor does another role of the same caller lift it
        #expect(!PolicyEvaluator.decide(policy, principal(1001, "o"), .read, try SecretPath("ci/signing/public")).allowed)
    }

    @Test(arguments: [
        ("require = [\"network:open\"]", "p.toml:5: unknown requirement (known: network:none)"),
        ("require = []", "p.toml:5: require = [\"network:none\"]"),
        ("require = \"network:none\"", "p.toml:5: require = [\"network:none\"]"),
        ("require = [\"network:none\"]\neffect = \"deny\"", "p.toml:5: require belongs on allow rules"),
    ] as [(String, String)])
    func badRequirements(_ line: String, _ message: String) {
        let text = "[role.ci]\n[[role.ci.rule]]\npath = \"ci/**\"\ncapabilities = [\"read\"]\n\(line)\n"
        #expect { try Policy.parse(text, file: "p.toml") } throws: { ($0 as? CofferError)?.message.hasPrefix(message) == true }
    }

    @Test func requirementsGateOnlyTheReleaseOfValues() {
        let text = "[role.ci]\n[[role.ci.rule]]\npath = \"ci/**\"\ncapabilities = [\"read\", \"write\"]\nrequire = [\"network:none\"]\n"
        #expect { try Policy.parse(text, file: "p.toml") } throws: { ($0 as? CofferError)?.message.contains("read and/or inject") == true }
    }

    @Test func rolesMaxTTL() {
        #expect(Self.policy.maxTTL(roles: ["ci-build"]) == 3600)
        #expect(Self.policy.maxTTL(roles: ["ci-build", "deployer"]) == 900)
        #expect(Self.policy.maxTTL(roles: ["admin"]) == nil)
        #expect(Self.policy.roleNames(for: principal(1500, "x")) == ["ci-build", "deployer"])
    }

    @Test(arguments: [
        ("[role.a]\n[[role.a.rule]]\npath = \"x\"\ncapabilities = [\"reed\"]", "p.toml:4: unknown capability"),
        ("[role.a]\n[[role.a.rule]]\npath = \"x//y\"\ncapabilities = [\"read\"]", "p.toml:3:"),
        ("[role.a]\n[[role.a.rule]]\npath = \"x\"\ncapabilities = [\"read\"]\npaht = \"y\"", "p.toml:5: unknown key 'paht'"),
        ("[role.a]\n[[role.a.rule]]\npath = \"x\"\ncapabilities = [\"read\"]\neffect = \"maybe\"", "p.toml:5:"),
        ("[role.a]\n[[role.a.rule]]\npath = \"x\"\ncapabilities = [\"admin\"]", "p.toml:4: admin, audit and metrics are global"),
        ("[role.a]\nmax_ttl = \"forever\"", "p.toml:2:"),
        ("[role.a]\ncolour = 1", "p.toml:2: unknown key 'colour'"),
        ("[[bind]]\nsubjects = [\"user:x\"]\nroles = [\"ghost\"]", "p.toml:3: unknown role 'ghost'"),
        ("[role.a]\n[[bind]]\nsubjects = [\"person:x\"]\nroles = [\"a\"]", "p.toml:3:"),
        ("[role.a]\n[[bind]]\nsubjects = [\"uid:abc\"]\nroles = [\"a\"]", "p.toml:3:"),
        ("[role.a]\n[[bind]]\nroles = [\"a\"]", "p.toml:2:"),
        ("[roles.a]", "p.toml:1: unknown key 'roles'"),
        ("[role.a]\n[[role.a.rule]]\ncapabilities = [\"read\"]", "p.toml:2: a rule needs path"),
        ("[role.a\n", "p.toml:1:"),
    ] as [(String, String)])
    func strictParsing(_ text: String, _ prefix: String) {
        do {
            _ = try Policy.parse(text, file: "p.toml")
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.code == .invalidPolicy)
            #expect(error.message.hasPrefix(prefix), "\(error.message)")
        }
    }

    @Test func builtInAdminOnly() throws {
        let p = Policy.adminOnly(uids: [1000], group: "wheel")
        #expect(PolicyEvaluator.decide(p, principal(0, "root"), .destroy, try SecretPath("a")).allowed)
        #expect(PolicyEvaluator.decide(p, principal(1000, "a"), .read, try SecretPath("a")).allowed)
        #expect(PolicyEvaluator.decide(p, principal(1001, "b", groups: ["wheel"]), .read, try SecretPath("a")).allowed)
        #expect(!PolicyEvaluator.decide(p, principal(1002, "c"), .read, try SecretPath("a")).allowed)
        #expect(!PolicyEvaluator.decide(p, principal(1002, "c"), .status, nil).allowed)
    }
}

@Suite struct ContainerSubjectTests {
    @Test(arguments: [
        ("ci-*", "ci-1", true), ("ci-*", "ci-", true), ("ci-*", "cd-1", false), ("ci-?", "ci-12", false), ("ci-?", "ci-1", true),
        ("*", "anything", true), ("web", "web", true), ("web", "web2", false), ("*-prod-*", "a-prod-b", true), ("*-prod-*", "a-prodb", false),
        ("a*b*c", "axxbyyc", true), ("a*b*c", "axxbyy", false),
    ])
    func containerPatterns(_ pattern: String, _ id: String, _ expected: Bool) throws {
        var p = Principal(pid: 1, uid: 0, gid: 0, userName: "root", groups: [0])
        let s = try Subject("container:" + pattern)
        #expect(!s.matches(p), "no container: no match")
        p.container = id
        #expect(s.matches(p) == expected)
        #expect(s.description == "container:" + pattern)
    }

    @Test(arguments: ["container:", "container:a/b", "container:a b", "container:" + String(repeating: "a", count: 129), "container:ü"])
    func badContainerSubjects(_ text: String) {
        #expect(throws: CofferError.self) { try Subject(text) }
    }
}
