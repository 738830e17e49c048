import Foundation
import CofferCore
import Testing

@Suite struct TOMLTests {
    @Test func parsesTheSubset() throws {
        let t = try TOML.parse("""
            # comment
            top = "x" # trailing
            [server]
            socket = "/run/coffer/coffer.sock"
            socket_mode = '0660'
            [limits]
            max_value_bytes = 1_024
            neg = -5
            octal = 0o755
            flag = true
            list = [1, 2,
               3, ] # multi-line
            names = ["a", "b\\"q\\u00e9"]
            [[role]]
            name = "one"
            [[role]]
            name = "two"
            """)
        #expect(t["top"]?.value == .string("x"))
        guard case .table(let server) = t["server"]?.value else { Issue.record("no server"); return }
        #expect(server["socket"]?.value == .string("/run/coffer/coffer.sock"))
        #expect(server["socket"]?.line == 4)
        #expect(server["socket_mode"]?.value == .string("0660"))
        guard case .table(let limits) = t["limits"]?.value else { Issue.record("no limits"); return }
        #expect(limits["max_value_bytes"]?.value == .integer(1024))
        #expect(limits["neg"]?.value == .integer(-5))
        #expect(limits["octal"]?.value == .integer(0o755))
        #expect(limits["flag"]?.value == .bool(true))
        #expect(limits["list"]?.value == .array([.integer(1), .integer(2), .integer(3)]))
        #expect(limits["names"]?.value == .array([.string("a"), .string("b\"qé")]))
        guard case .tableArray(let roles) = t["role"]?.value else { Issue.record("no roles"); return }
        #expect(roles.count == 2)
        #expect(roles[1]["name"]?.value == .string("two"))
        #expect(roles[1]["name"]?.line == 17)
    }

    @Test(arguments: [
        ("a = ", 1), ("a = \"x", 1), ("\n\nb = 1.5", 3), ("a = 1\na = 2", 2), ("[t]\n[t]", 2),
        ("a = [1, 2", 1), ("a = x", 1), ("a.b = 1", 1), ("a = 1 b", 1), ("a = 99999999999999999999", 1),
        ("= 1", 1), ("[t", 1), ("a = \"\\q\"", 1), ("a = 0o9", 1),
    ] as [(String, Int)])
    func errorsNameTheLine(_ text: String, _ line: Int) {
        do {
            _ = try TOML.parse(text)
            Issue.record("parsed: \(text)")
        } catch {
            #expect(error.line == line, "\(text): \(error)")
        }
    }
}

@Suite struct ConfigTests {
    @Test func defaultsAndOverrides() throws {
        let c = try CofferConfig.parse("""
            [server]
            socket = "/tmp/x.sock"
            socket_mode = "0640"
            socket_group = "coffer"
            [storage]
            state_dir = "/srv/coffer"
            durability = "normal"
            [keys]
            unlock = "key-file"
            key_file = "/srv/keys/root.key"
            [access]
            admin_group = "ops"
            admin_uids = [1000, 1001]
            [limits]
            max_value_bytes = 1048576
            max_versions = 3
            [log]
            level = "debug"
            """, file: "t.toml")
        #expect(c.socketPath == "/tmp/x.sock")
        #expect(c.socketMode == 0o640)
        #expect(c.socketGroup == "coffer")
        #expect(c.resolvedDatabasePath == "/srv/coffer/coffer.db")
        #expect(c.durability == .normal)
        #expect(c.keyFile == "/srv/keys/root.key")
        #expect(c.adminGroup == "ops")
        #expect(c.adminUIDs == [1000, 1001])
        #expect(c.maxValueBytes == 1_048_576)
        #expect(c.maxVersions == 3)
        #expect(c.logLevel == "debug")
        let d = try CofferConfig.parse("", file: "empty.toml")
        #expect(d == CofferConfig())
        #expect(d.maxValueBytes == 65536)
        #expect(d.durability == .full)
    }

    @Test(arguments: [
        ("[server]\nsocket = 1", "t.toml:2:"),
        ("[server]\nsokcet = \"x\"", "t.toml:2: unknown key 'server.sokcet'"),
        ("[nope]\n", "t.toml:1: unknown key 'nope'"),
        ("[server]\nsocket_mode = \"999\"", "t.toml:2:"),
        ("[limits]\nmax_value_bytes = 2000000", "t.toml:2:"),
        ("[limits]\nmax_versions = 0", "t.toml:2:"),
        ("[storage]\ndurability = \"sometimes\"", "t.toml:2:"),
        ("[keys]\nunlock = \"shamir\"", "t.toml:2:"),
        ("[access]\nadmin_uids = [\"x\"]", "t.toml:2:"),
        ("\n\nserver = 1", "t.toml:3:"),
        ("[log]\nlevel = \"loud\"", "t.toml:2:"),
        ("[server\n", "t.toml:1:"),
        ("[server]\nrequest_path = \"epoll\"", "t.toml:2:"),
    ] as [(String, String)])
    func strictErrors(_ text: String, _ prefix: String) {
        do {
            _ = try CofferConfig.parse(text, file: "t.toml")
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.code == .config)
            #expect(error.message.hasPrefix(prefix), "\(error.message)")
        }
    }

    @Test func theRequestPathIsTheEventLoopUnlessHummingbirdIsAskedFor() throws {
        #expect(try CofferConfig.parse("", file: "t.toml").requestPath == "event-loop")
        #expect(try CofferConfig.parse("[server]\nrequest_path = \"hummingbird\"", file: "t.toml").requestPath == "hummingbird")
        #expect(try CofferConfig.parse("[server]\nrequest_path = \"epoll-prototype\"", file: "t.toml").requestPath == "epoll-prototype")
        #expect(throws: CofferError.self) { try CofferConfig.parse("[server]\nrequest_path = \"Event-Loop\"", file: "t.toml") }
        #expect(throws: CofferError.self) { try CofferConfig.parse("[server]\nrequest_path = \"\"", file: "t.toml") }
    }

    @Test func devDefaults() {
        let c = CofferConfig.dev(directory: "/home/a/proj", uid: 1000)
        #expect(c.socketPath == "/home/a/proj/.coffer/coffer.sock")
        #expect(c.keyFile == "/home/a/proj/keys/dev/root.key")
        #expect(c.resolvedDatabasePath == "/home/a/proj/.coffer/coffer.db")
        #expect(c.adminUIDs == [1000])
        #expect(c.devMode)
        #expect(c.maxBodyBytes > c.maxValueBytes * 4 / 3)
    }
}

/// The examples in contrib/ are what users copy: they must parse.
@Suite struct ContribExamplesTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func exampleConfigParsesToTheDefaults() throws {
        let path = Self.root.appendingPathComponent("contrib/cofferd.toml").path
        let c = try CofferConfig.parse(try String(contentsOfFile: path, encoding: .utf8), file: path)
        var expected = CofferConfig()
        expected.adminUIDs = []
        #expect(c == expected)
    }

    @Test func examplePolicyParses() throws {
        let path = Self.root.appendingPathComponent("contrib/policy.toml").path
        let p = try Policy.parse(try String(contentsOfFile: path, encoding: .utf8), file: path)
        #expect(p.roles.keys.sorted() == ["admin", "app-containers", "ci-build", "metrics", "release"])
        let prometheus = Principal(pid: 1, uid: 1300, gid: 1300, userName: "prometheus", groups: [1300], groupNames: ["prometheus"])
        #expect(PolicyEvaluator.decide(p, prometheus, .metrics, nil).allowed)
        #expect(!PolicyEvaluator.decide(p, prometheus, .read, try SecretPath("ci/web/db")).allowed)
        let runner = Principal(pid: 1, uid: 1200, gid: 1200, userName: "ci-runner", groups: [1200], groupNames: ["ci-runner"])
        #expect(PolicyEvaluator.decide(p, runner, .read, try SecretPath("ci/web/db")).allowed)
        #expect(!PolicyEvaluator.decide(p, runner, .read, try SecretPath("ci/web/prod/db")).allowed)
        // a container named app-* gets the app's secrets as files, nothing else
        var app = Principal(pid: 1, uid: 1300, gid: 1300, userName: nil, groups: [1300])
        app.container = "app-web-1"
        #expect(PolicyEvaluator.decide(p, app, .inject, try SecretPath("ci/app/db")).allowed)
        #expect(!PolicyEvaluator.decide(p, app, .read, try SecretPath("ci/app/db")).allowed)
        app.container = "web-1"
        #expect(!PolicyEvaluator.decide(p, app, .inject, try SecretPath("ci/app/db")).allowed)
    }
}

@Suite struct RunConfigTests {
    @Test func runTableIsCheckedAndDefaultsBesideTheSocket() throws {
        let c = try CofferConfig.parse("[server]\nsocket = \"/srv/c/coffer.sock\"\n[run]\nmax_per_uid = 2\nmax_ttl = \"30m\"\nmax_size_bytes = 8192\n", file: "t.toml")
        #expect(c.resolvedRunDir == "/srv/c/run")
        #expect(c.maxRunsPerUID == 2 && c.maxRunTTLSeconds == 1800 && c.maxRunSizeBytes == 8192)
        #expect(try CofferConfig.parse("[run]\ndir = \"/x/runs\"\n", file: "t.toml").resolvedRunDir == "/x/runs")
        for bad in ["[run]\ndir = \"rel\"", "[run]\ndir = \"/a/../b\"", "[run]\nmax_per_uid = 0", "[run]\nmax_ttl = \"8d\"",
                    "[run]\nmax_size_bytes = 1", "[run]\nunknown = 1"] {
            #expect(throws: CofferError.self, "\(bad)") { try CofferConfig.parse(bad, file: "t.toml") }
        }
    }
}
