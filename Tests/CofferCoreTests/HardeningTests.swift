import Testing
@testable import CofferCore

/// Core pieces of the security issue: bounded, linear matching; checked durations;
/// tokens that keep every layer of their chain and their creator's denies.
@Suite struct CoreHardeningTests {
    @Test(arguments: [
        Array(repeating: "**", count: 40).joined(separator: "/") + "/zz",
        "**/**/a",  // adjacent
        "a/**/b/**/c/**/d/**/e/**/f",  // five
        "a*b*c*d*e*f*g*h*i*j",  // nine stars in one segment
        Array(repeating: "a", count: 33).joined(separator: "/"),
    ])
    func tooComplexPatternsAreRefused(_ raw: String) {
        do {
            _ = try PathPattern(raw)
            Issue.record("accepted: \(raw)")
        } catch {
            #expect(error.code == .invalidParameter)
        }
    }

    /// The finding's pattern shape at the limit, against the deepest paths: an NFA walk
    /// answers in microseconds (backtracking took 21 s for 40 '**' and a 6-deep path).
    /// Correctness is what is asserted; the bound on work is structural.
    @Test func limitPatternsMatchCorrectly() throws {
        let p = try PathPattern("**/*a*/**/*b*/**/zz")
        let deep = Array(repeating: "x", count: 31).joined(separator: "/")
        #expect(!p.matches(deep + "/q"))
        #expect(p.matches("xa/yb/zz"))
        #expect(p.matches("q/xa/q/q/yb/q/zz"))
        #expect(!p.matches("yb/xa/zz"))
        #expect(!p.matches("xa/yb/zz/q"))
        let stars = try PathPattern("**/" + "a*a*a*a*a*a*a*a*b")
        #expect(!stars.matches(Array(repeating: String(repeating: "a", count: 128), count: 32).joined(separator: "/")))
        #expect(stars.matches("q/aaaaaaaaab"))
        // ** also matches zero segments at every position
        #expect(try PathPattern("**/a/**").matches("a"))
        #expect(try PathPattern("a/**/b/**").matches("a/b"))
        #expect(!(try PathPattern("a/**/b").matches("a")))
    }

    @Test func containmentIsPolynomialAndStillConservative() throws {
        let wide = try PathPattern("**/x/**/y/**/z/**")
        let narrow = try PathPattern("a/x/b/y/c/z/d")
        #expect(narrow.isCovered(by: wide))
        #expect(!wide.isCovered(by: narrow))
        #expect(try PathPattern("ci/app/**").isCovered(by: try PathPattern("ci/**")))
        #expect(!(try PathPattern("ci/**").isCovered(by: try PathPattern("ci/app/**"))))
        let deep = try PathPattern(Array(repeating: "a", count: 28).joined(separator: "/"))
        #expect(deep.isCovered(by: try PathPattern("**/a/**/a/**/a/**")))
        #expect(!deep.isCovered(by: try PathPattern("**/b/**/a/**/a/**")))
    }

    /// Deep nesting and long dotted keys are errors, not a stack overflow (the daemon
    /// parses policy files on reload) or quadratic work.
    @Test func tomlBoundsItsWork() {
        let hostile = [
            ("x = " + String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000), "nest deeper than 32"),
            ("a = " + String(repeating: "{b = ", count: 50000) + "1" + String(repeating: "}", count: 50000), "nest deeper than 32"),
            ("[" + String(repeating: "a.", count: 16000) + "b]", "more than 16 parts"),
            (String(repeating: "a.", count: 20) + "b = 1", "more than 16 parts"),
            (String(repeating: "# padding\n", count: 120_000), "larger than 1024 KiB"),
        ]
        for (text, message) in hostile {
            do {
                _ = try TOML.parse(text)
                Issue.record("accepted: \(text.prefix(40))")
            } catch {
                #expect(error.message.contains(message), "\(error.message)")
            }
        }
        #expect((try? TOML.parse("x = " + String(repeating: "[", count: 32) + String(repeating: "]", count: 32))) != nil, "32 levels still parse")
    }

    @Test func durationsNeverOverflow() {
        for bad in ["99999999999999999999d", "9999999999d", "999999999d999999999d", "3651d", "999999999h", "9223372036854775807s",
                    String(repeating: "9", count: 400) + "s", "1d" + String(repeating: "9", count: 40)] {
            #expect(DurationText.seconds(bad) == nil, "\(bad)")
        }
        #expect(DurationText.seconds("3650d") == 3650 * 86400)
        #expect(DurationText.seconds("315360000s") == 315_360_000)
        #expect(DurationText.seconds("315360001s") == nil)
    }

    static let policy = try! Policy.parse("""
        [role.admin]
        [[role.admin.rule]]
        path = "**"
        capabilities = ["read", "list", "write", "admin", "audit"]
        [role.ci]
        [[role.ci.rule]]
        path = "ci/**"
        capabilities = ["read", "list"]
        [role.no-secret]
        [[role.no-secret.rule]]
        path = "ci/secret/**"
        capabilities = ["read"]
        effect = "deny"
        [[bind]]
        subjects = ["user:adva"]
        roles = ["ci", "no-secret"]
        [[bind]]
        subjects = ["user:advb"]
        roles = ["ci"]
        [[bind]]
        subjects = ["group:nosecret"]
        roles = ["no-secret"]
        [[bind]]
        subjects = ["uid:0"]
        roles = ["admin"]
        """, file: "t.toml")

    static func withToken(_ grant: TokenGrant) -> Principal {
        Principal(pid: 1, uid: 5000, gid: 5000, userName: "runner", groups: [5000], groupNames: [], token: grant)
    }

    @Test func aTokenIsDeniedWhereItsOriginIs() throws {
        let secret = try SecretPath("ci/secret/key")
        let app = try SecretPath("ci/app/db")
        for origin in [TokenGrant.Origin(uid: 1001, userName: "adva", groupNames: []),
                       TokenGrant.Origin(uid: 1002, userName: "advb", groupNames: ["nosecret"])] {
            let g = TokenGrant(accessor: "acc_t", roles: ["ci"], paths: [], expiresAt: 0, boundUID: nil, origin: origin)
            let d = PolicyEvaluator.decide(Self.policy, Self.withToken(g), .read, secret)
            #expect(!d.allowed && d.rule.contains("no-secret"), "\(d.rule)")
            #expect(PolicyEvaluator.decide(Self.policy, Self.withToken(g), .read, app).allowed)
        }
        // an origin the policy no longer binds at all: nothing
        let gone = TokenGrant(accessor: "acc_t", roles: ["ci"], paths: [], expiresAt: 0, boundUID: nil,
                              origin: .init(uid: 1003, userName: "left", groupNames: []))
        #expect(!PolicyEvaluator.decide(Self.policy, Self.withToken(gone), .read, app).allowed)
    }

    @Test func everyAncestorNarrows() throws {
        let root = TokenGrant.Origin(uid: 0, userName: "root", groupNames: [])
        let parent = TokenGrant.Layer(accessor: "acc_p", roles: ["admin"], paths: [try PathPattern("ci/app/**")])
        let child = TokenGrant(accessor: "acc_c", roles: ["admin"], paths: [], expiresAt: 0, boundUID: nil, ancestors: [parent], origin: root)
        #expect(PolicyEvaluator.decide(Self.policy, Self.withToken(child), .read, try SecretPath("ci/app/db")).allowed)
        let d = PolicyEvaluator.decide(Self.policy, Self.withToken(child), .read, try SecretPath("ci/other"))
        #expect(!d.allowed && d.rule.contains("acc_p"), "\(d.rule)")
        // path-limited anywhere in the chain: no global capability
        #expect(!PolicyEvaluator.decide(Self.policy, Self.withToken(child), .admin, nil).allowed)
        #expect(!PolicyEvaluator.decide(Self.policy, Self.withToken(child), .audit, nil).allowed)
        let unlimited = TokenGrant(accessor: "acc_u", roles: ["admin"], paths: [], expiresAt: 0, boundUID: nil, origin: root)
        #expect(PolicyEvaluator.decide(Self.policy, Self.withToken(unlimited), .admin, nil).allowed)
        let everything = TokenGrant(accessor: "acc_e", roles: ["admin"], paths: [.everything], expiresAt: 0, boundUID: nil, origin: root)
        #expect(PolicyEvaluator.decide(Self.policy, Self.withToken(everything), .audit, nil).allowed)
    }
}
