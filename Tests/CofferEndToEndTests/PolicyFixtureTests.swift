import Foundation
import Testing

/// The shared policy fixture (Tests/Fixtures/policy): the policy file and decision
/// table the unit tests evaluate in memory (CofferCoreTests.PolicyTests) are replayed
/// here against the real daemon through `coffer policy explain`.
@Suite struct PolicyFixtureTests {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/policy")

    @Test func theDaemonDecidesTheSharedTableAsTheUnitTestsDo() throws {
        let policy = try String(contentsOf: Self.dir.appendingPathComponent("ci.toml"), encoding: .utf8)
        let table = try String(contentsOf: Self.dir.appendingPathComponent("ci-cases.tsv"), encoding: .utf8)
        let d = try Daemon(policy: policy)
        try d.start()
        defer { d.stop() }
        var n = 0
        for line in table.split(separator: "\n") where !line.hasPrefix("#") {
            let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            let r = try d.coffer(["policy", "explain", "--format", "json", "--as", f[0], f[1], f[2] == "-" ? "" : f[2]])
            #expect(r.status == 0, "\(line): \(r.stderr)")
            let o = json(r.out)
            #expect(o["allowed"] as? Bool == (f[3] == "allow"), "\(line): \(r.out)")
            #expect((o["rule"] as? String)?.hasPrefix(f[4]) == true, "\(line): \(r.out)")
            n += 1
        }
        #expect(n >= 10)
    }
}
