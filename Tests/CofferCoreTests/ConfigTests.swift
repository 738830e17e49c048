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

/// `[storage] backend = "postgres"` with `[storage.postgres]`: every way to name the
/// server parses to one target, and every mistake is refused with the key named.
@Suite struct PostgresConfigTests {
    func parse(_ storage: String) throws(CofferError) -> CofferConfig {
        try CofferConfig.parse("[storage]\n" + storage, file: "t.toml")
    }

    @Test func urlSocketAndDefaults() throws {
        #expect(try parse("database = \"/x.db\"").databaseLocation == .sqlite(path: "/x.db"))
        var c = try parse("""
            backend = "postgres"
            [storage.postgres]
            url = "postgresql://coffer@db.example:5433/coffer?sslmode=verify-full&sslrootcert=/etc/coffer/ca.pem"
            pool_size = 4
            password_file = "/etc/coffer/pg.pass"
            """)
        let t = try #require(c.postgres)
        #expect(t.endpoint == .tcp(host: "db.example", port: 5433))
        #expect(t.user == "coffer" && t.database == "coffer" && t.tls == .verifyFull && t.caFile == "/etc/coffer/ca.pem")
        #expect(t.poolSize == 4 && t.passwordFile == "/etc/coffer/pg.pass")
        #expect(c.databaseLocation.isPostgres)
        #expect(!c.databaseLocation.description.contains("pass"))
        c = try parse("""
            backend = "postgres"
            [storage.postgres]
            url = "postgres://coffer@/coffer?host=/nonexistent-dir/.s.PGSQL.5432"
            """)
        #expect(c.postgres?.endpoint == .socket(path: "/nonexistent-dir/.s.PGSQL.5432"))
        #expect(c.postgres?.poolSize == 8 && c.postgres?.tls == .disable)
        c = try parse("""
            backend = "postgres"
            [storage.postgres]
            socket = "/tmp"
            user = "u"
            database = "d"
            """)
        #expect(c.postgres?.endpoint == .socket(path: "/tmp/.s.PGSQL.5432"), "a directory names its default socket file")
    }

    @Test func mistakesAreRefused() {
        let bad: [(String, String)] = [
            ("backend = \"mysql\"", "backend"),
            ("backend = \"postgres\"", "[storage.postgres]"),
            ("[storage.postgres]\nurl = \"postgresql://u@h/d\"", "backend is \"sqlite\""),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u:secret@h/d\"", "password_file"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"mysql://u@h/d\"", "postgresql://"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://h/d\"", "no user"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@h\"", "no database"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@h:99999/d\"", "port"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@h/d?sslmode=prefer\"", "sslmode"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@h/d?application_name=x\"", "unknown parameter"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@/d?host=/run/pg&sslmode=require\"", "TLS over a Unix socket"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@h/d\"\nuser = \"x\"", "remove user"),
            ("backend = \"postgres\"\n[storage.postgres]\nsocket = \"run/pg\"\nuser = \"u\"\ndatabase = \"d\"", "absolute"),
            ("backend = \"postgres\"\n[storage.postgres]\nsocket = \"/run/pg\"\ndatabase = \"d\"", "user"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@h/d\"\npool_size = 0", "pool_size"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@h/d\"\ntls = \"maybe\"", "tls"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@h/d\"\npassword_file = \"pg.pass\"", "absolute"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@h/d\"\nhost = \"x\"", "unknown key"),
            // a password smuggled in percent-encoded, and names with a NUL
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u%3Asecret@h/d\"", "password_file"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@h/d%00x\"", "control character"),
            ("backend = \"postgres\"\n[storage.postgres]\nsocket = \"/run/pg\"\nuser = \"u\\u0000x\"\ndatabase = \"d\"", "control characters"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@h/d\"\nmax_staleness_ms = 60001", "max_staleness_ms"),
            // TLS set twice (the last one would win), or in two places; a CA without TLS
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@h/d?sslmode=verify-full&sslmode=disable\"", "twice"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@h/d?ssl%6Dode=require\"\ntls = \"disable\"", "not both"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@h/d\"\ntls_ca_file = \"/etc/ca.pem\"", "TLS is off"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@[::1:5432/d\"", "malformed"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@h/d#x\"", "fragment"),
            ("backend = \"postgres\"\n[storage.postgres]\nurl = \"postgresql://u@h/d\"\nschema = \"a\\\"b\"", "schema"),
        ]
        for (text, needle) in bad {
            do {
                _ = try parse(text)
                Issue.record("accepted: \(text)")
            } catch {
                #expect((error.message + (error.hint ?? "")).contains(needle), "\(text): \(error.message)")
                #expect(!error.message.contains("secret"), "the password is echoed back")
            }
        }
    }
}
