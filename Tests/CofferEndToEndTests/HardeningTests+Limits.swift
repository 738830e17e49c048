import CofferClient
import Foundation
import Testing

/// Hardening, part 2: numbers from outside, path-pattern complexity, connections
/// per uid. Every load here is a bounded count and stops by itself.
extension HardeningTests {
    // MARK: numbers from outside never crash the daemon

    static let extremes = ["9223372036854775807", "-9223372036854775808", "9223372036854775808", "-9223372036854775809",
                           "1e309", "-0", "18446744073709551616", String(repeating: "9", count: 400), "0x10", ""]
    /// Of the extremes, those that are integers within Int64.
    static let inInt64 = ["9223372036854775807", "-9223372036854775808", "-0"]

    struct NumberCase {
        var label: String
        var method: String
        var target: String
        var body: String?
        /// nil: any answer but 5xx will do (the value is legitimate for the field);
        /// otherwise the statuses allowed.
        var expected: Set<Int>?
    }

    /// Every numeric query parameter and JSON field of every route gets the
    /// extremes (raw JSON numbers and strings); every answer is a JSON 4xx (or, for
    /// a value that is legitimate for that field, at least no 5xx), no connection is
    /// dropped, and the daemon keeps serving. A daemon that dies is restarted so one
    /// run names every crashing input.
    @Test func extremeNumbersNeverCrashTheDaemon() throws {
        let d = try Daemon()
        try d.start()
        #expect(try d.coffer(["secret", "put", "num/x"], stdin: Array("kept".utf8)).status == 0)
        let rejected: Set<Int> = [400, 422]
        var cases: [NumberCase] = []
        // query parameters: (route, parameter, values legitimate for it)
        let query: [(String, String, [String])] = [
            ("/v1/audit/events", "since", ["-0"]),
            ("/v1/audit/events", "until", ["-0"]),
            ("/v1/audit/events", "after", ["9223372036854775807", "-0"]),
            ("/v1/audit/events", "limit", []),
            ("/v1/audit/events", "uid", ["-0"]),
            ("/v1/secrets/list/num", "limit", ["9223372036854775807"]),
            ("/v1/secrets/data/num/x", "version", []),
        ]
        for (route, name, fine) in query {
            for v in Self.extremes {
                cases.append(NumberCase(label: "GET \(route)?\(name)=\(v.prefix(24))", method: "GET", target: "\(route)?\(name)=\(v)",
                                        body: nil, expected: fine.contains(v) ? nil : rejected))
            }
        }
        // JSON fields: (method, route, body around the value, legitimate raw values, statuses also fine for in-range integers)
        let fields: [(String, String, (String) -> String, [String], Set<Int>)] = [
            ("PUT", "/v1/secrets/data/num/x", { #"{"value":"x","cas":\#($0)}"# }, [], [409]),
            ("POST", "/v1/secrets/delete/num/x", { #"{"versions":[\#($0)]}"# }, [], [404]),
            ("POST", "/v1/secrets/undelete/num/x", { #"{"versions":[\#($0)]}"# }, [], [404]),
            ("POST", "/v1/secrets/destroy/num/x", { #"{"versions":[\#($0)]}"# }, [], [404]),
            ("POST", "/v1/tokens", { #"{"roles":["admin"],"ttl":\#($0)}"# }, [], []),
            ("POST", "/v1/tokens", { #"{"roles":["admin"],"uses":\#($0)}"# }, ["9223372036854775807", "-0"], []),
            ("POST", "/v1/tokens", { #"{"roles":["admin"],"bind_uid":\#($0)}"# }, ["-0"], []),
            ("POST", "/v1/audit/prune", { #"{"through_seq":\#($0)}"# }, ["-0"], [404, 409]),
        ]
        for (method, route, wrap, fine, alsoFine) in fields {
            for v in Self.extremes {
                // as a raw JSON number (empty and 0x10 make the JSON itself invalid: 400;
                // but an empty item in `[…]` is a valid empty list, which is no number)
                let raw = wrap(v)
                let allowed = Self.inInt64.contains(v) ? rejected.union(alsoFine) : rejected
                if !(v.isEmpty && raw.contains("[]")) {
                    cases.append(NumberCase(label: "\(method) \(route) \(raw.prefix(60))", method: method, target: route, body: raw,
                                            expected: fine.contains(v) ? nil : allowed))
                }
                // as a string (a wrong type, except for ttl where no extreme is a duration)
                let quoted = wrap("\"\(v)\"")
                cases.append(NumberCase(label: "\(method) \(route) \(quoted.prefix(60))", method: method, target: route, body: quoted,
                                        expected: rejected))
            }
        }
        for ttl in ["99999999999999999999d", "9999999999d", "9223372036854775807s", "106751991167300d", "2562047788015215h",
                    "153722867280912930m", "999999999d999999999d999999999d"] {
            cases.append(NumberCase(label: "POST /v1/tokens ttl \(ttl)", method: "POST", target: "/v1/tokens",
                                    body: #"{"roles":["admin"],"ttl":"\#(ttl)"}"#, expected: [422]))
        }

        var bad: [String] = []
        var deaths: [String] = []
        for c in cases {
            let result = Hard.send(d.socket, c.method, c.target, body: c.body, timeout: 20)
            switch result {
            case .failure(let e):
                bad.append("\(c.label): no answer (\(e.message))")
            case .success(let r):
                if r.status >= 500 { bad.append("\(c.label): \(r.status) \(String(decoding: r.body.prefix(120), as: UTF8.self))") }
                if let expected = c.expected, !expected.contains(r.status) {
                    bad.append("\(c.label): \(r.status), expected one of \(expected.sorted())")
                }
                if r.status >= 400 && !Hard.isJSONError(r.body) {
                    bad.append("\(c.label): \(r.status) without a JSON error body")
                }
            }
            if case .failure = result {
                // give a crashing daemon a moment to be seen as dead
                let deadline = Date().addingTimeInterval(2)
                while d.process?.isRunning == true && Date() < deadline { usleep(20_000) }
            }
            if d.process?.isRunning != true {
                deaths.append(c.label)
                try d.start()
            }
        }
        #expect(deaths.isEmpty, "cofferd died on \(deaths.count) inputs: \(deaths.prefix(12))")
        #expect(bad.isEmpty, "\(bad.count) of \(cases.count) answers wrong; first: \(bad.prefix(12).joined(separator: " | "))")
        #expect(d.process?.isRunning == true)
        #expect(try d.curl("GET", "/v1/sys/health").0 == 200)
        #expect(try d.coffer(["secret", "get", "num/x"]).stdout == Array("kept".utf8), "no extreme changed the secret")
    }

    /// The README's example of an overflowing TTL, on its own: 422, and no token.
    @Test func hugeTTLIsRefusedWith422() throws {
        let d = try Daemon()
        try d.start()
        for ttl in ["99999999999999999999d", "9999999999d"] {
            let (code, body) = try d.curl("POST", "/v1/tokens", body: #"{"roles":["admin"],"ttl":"\#(ttl)"}"#)
            #expect(code == 422 && errorCode(body) == "invalid_parameter", "\(ttl): \(code) \(body)")
            let r = try d.coffer(["token", "create", "--role", "admin", "--ttl", ttl])
            #expect(r.status != 0 && r.stderr.hasPrefix("coffer: error:"), "\(ttl): \(r.stderr)")
        }
        #expect(d.process?.isRunning == true)
        #expect((json(try d.curl("GET", "/v1/tokens").1)["tokens"] as? [Any])?.count == 0)
    }

    // MARK: path-pattern complexity is bounded when a pattern is parsed

    /// At most 4 `**` segments, never two adjacent, at most 8 `*` in a segment: a
    /// pattern beyond that is refused by token create (API and CLI) and by
    /// `coffer policy check` with file:line; patterns within the limits work.
    @Test func pathPatternComplexityIsBoundedAtParseTime() throws {
        let d = try Daemon()
        try d.start()
        func policy(_ pattern: String) -> String {
            // the path is on line 3
            "[role.r]\n[[role.r.rule]]\npath = \"\(pattern)\"\ncapabilities = [\"read\"]\n\n[[bind]]\nsubjects = [\"uid:0\"]\nroles = [\"r\"]\n"
        }
        let tooComplex = [
            Array(repeating: "**", count: 40).joined(separator: "/") + "/zz",
            "**/a/**/b/**/c/**/d/**/zz",  // five **
            "a/**/**/zz",  // adjacent **
            "a/*b*c*d*e*f*g*h*i*j",  // nine * in one segment
        ]
        for (i, p) in tooComplex.enumerated() {
            let (code, body) = try d.curl("POST", "/v1/tokens", body: #"{"roles":["admin"],"paths":["\#(p)"]}"#)
            #expect(code == 422 && errorCode(body) == "invalid_parameter", "\(p.prefix(40)): \(code) \(body)")
            let r = try d.coffer(["token", "create", "--role", "admin", "--paths", p])
            #expect(r.status != 0 && r.stderr.hasPrefix("coffer: error:"), "\(p.prefix(40)): \(r.stderr)")
            let file = d.dir + "/complex-\(i).toml"
            try policy(p).write(toFile: file, atomically: true, encoding: .utf8)
            let c = try run(Bins.coffer, ["policy", "check", file])
            #expect(c.status != 0 && c.stderr.contains("\(file):3:"), "\(p.prefix(40)): \(c.status) \(c.stderr)")
        }
        #expect((json(try d.curl("GET", "/v1/tokens").1)["tokens"] as? [Any])?.count == 0, "no token was created")

        let withinLimits = ["**/a*b*c*d/**/x/**/zz", "**/*a*/**/*b*/**/*c*/**/zz", "q/*a*b*c*d*e*f*g*h"]
        for (i, p) in withinLimits.enumerated() {
            let (code, body) = try d.curl("POST", "/v1/tokens", body: #"{"roles":["admin"],"paths":["\#(p)"]}"#)
            #expect(code == 200, "\(p): \(code) \(body)")
            let file = d.dir + "/fine-\(i).toml"
            try policy(p).write(toFile: file, atomically: true, encoding: .utf8)
            let c = try run(Bins.coffer, ["policy", "check", file])
            #expect(c.status == 0, "\(p): \(c.stderr)")
        }
        // a pattern within the limits still matches what it should, and only that
        for p in ["q/aXbXcXd/x/zz", "q/other"] { _ = try d.coffer(["secret", "put", p], stdin: Array("v".utf8)) }
        let (code, body) = try d.curl("POST", "/v1/tokens", body: #"{"roles":["admin"],"paths":["**/a*b*c*d/**/x/**/zz"]}"#)
        #expect(code == 200)
        let token = json(body)["token"] as? String ?? ""
        #expect(try d.curl("GET", "/v1/secrets/data/q/aXbXcXd/x/zz", headers: ["X-Coffer-Token: \(token)"]).0 == 200)
        #expect(try d.curl("GET", "/v1/secrets/data/q/other", headers: ["X-Coffer-Token: \(token)"]).0 == 403)
    }

    /// With a token whose pattern is at the limits, 8 clients × 20 reads of a
    /// 30-segment path finish, and health from another connection answers within 2 s
    /// each time meanwhile.
    @Test func patternMatchingStaysFastUnderConcurrentDeepReads() throws {
        let d = try Daemon()
        try d.start()
        let (code, body) = try d.curl("POST", "/v1/tokens", body: #"{"roles":["admin"],"paths":["**/*a*/**/*b*/**/*c*/**/zz"]}"#)
        #expect(code == 200, "the pattern at the limits is accepted: \(body)")
        let token = json(body)["token"] as? String ?? ""
        // a/a/…/a, and abc/abc/…/abc where every glob matches every segment (most backtracking)
        let deep = ["a", "abc"].map { Array(repeating: $0, count: 30).joined(separator: "/") }
        let socket = d.socket
        let unexpected = Atomic([String]())
        let reads = Atomic(0)
        let group = DispatchGroup()
        for t in 0..<8 {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                for i in 0..<20 {
                    switch Hard.send(socket, "GET", "/v1/secrets/data/" + deep[(t + i) % 2], headers: [("X-Coffer-Token", token)], timeout: 120) {
                    case .success(let r) where r.status == 403 || r.status == 404: reads.add(1)
                    case .success(let r): unexpected.update { $0.append("status \(r.status)") }
                    case .failure(let e): unexpected.update { $0.append(e.message) }
                    }
                }
            }
        }
        var probes: [Double] = []
        let deadline = Date().addingTimeInterval(120)
        repeat {
            let t0 = Date()
            if case .success(let r) = Hard.send(socket, "GET", "/v1/sys/health", timeout: 10), r.status == 200 {
                probes.append(Date().timeIntervalSince(t0))
            } else {
                probes.append(.infinity)
            }
        } while group.wait(timeout: .now() + 0.1) == .timedOut && Date() < deadline
        #expect(group.wait(timeout: .now()) == .success, "8 × 20 deep reads did not finish in 120 s")
        #expect(reads.load() == 160, "\(unexpected.load().prefix(5))")
        #expect(probes.allSatisfy { $0 < 2 }, "health took up to \(probes.max() ?? 0) s under load")
        #expect(d.process?.isRunning == true)
    }

    // MARK: connections per uid

    /// With max_connections_per_uid = 8, of 30 idle connections by one uid the 22
    /// beyond 8 are closed promptly; root is served meanwhile.
    @Test func connectionsPerUidAreCapped() throws {
        let user = TestUser.nonAdmin
        let d = try Daemon(config: "[server]\nmax_connections_per_uid = 8")
        try d.start()
        _ = try d.coffer(["secret", "put", "cap/x"], stdin: Array("kept".utf8))
        // socat as the user holds one connection each; its stdin stays open, so it
        // exits (status 0) only when the server closes the connection
        let holders = try IdleHolders(count: 30, socket: d.socket, as: user)
        defer { holders.stop() }
        let deadline = Date().addingTimeInterval(5)
        while holders.exited.count < 22 && Date() < deadline { usleep(50_000) }
        usleep(500_000)
        let exited = holders.exited
        #expect(exited.count == 22, "\(exited.count) of 30 connections closed by the server (want 22): \(holders.errors.prefix(300))")
        #expect(exited.allSatisfy { $0 == 0 }, "a holder failed to connect: \(holders.errors.prefix(300))")
        #expect(holders.running == 8)
        for _ in 0..<5 {
            let health = Hard.seconds { #expect((try? CofferClient(socketPath: d.socket).health()) != nil) }
            let read = Hard.seconds { #expect((try? CofferClient(socketPath: d.socket).getRaw("cap/x", version: nil).value) == Array("kept".utf8)) }
            #expect(health < 2 && read < 2, "root waited \(health) s / \(read) s")
        }
        #expect(d.process?.isRunning == true)
    }

    /// 8 keep-alive clients of one uid hammering health (the cap exactly) are all
    /// served, and root's requests meanwhile answer within 2 s.
    @Test func keepAliveClientsOfOneUidDoNotBlockRoot() throws {
        let user = TestUser.nonAdmin
        let d = try Daemon(config: "[server]\nmax_connections_per_uid = 8")
        try d.start()
        _ = try d.coffer(["secret", "put", "cap/x"], stdin: Array("kept".utf8))
        let perClient = 1000
        var clients: [(Process, String)] = []
        defer { for (p, _) in clients where p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() } }
        for i in 0..<8 {
            let out = d.dir + "/keepalive-\(i).out"
            _ = FileManager.default.createFile(atPath: out, contents: nil)
            let (exe, args) = user.wrap("/usr/bin/curl", ["-s", "--unix-socket", d.socket, "-w", "<<%{http_code}>>\n"]
                                            + Array(repeating: "http://coffer/v1/sys/health", count: perClient))
            let p = Process()
            p.executableURL = URL(fileURLWithPath: exe)
            p.arguments = args
            p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
            p.standardError = FileHandle.nullDevice
            p.standardInput = FileHandle.nullDevice
            try p.run()
            clients.append((p, out))
        }
        var slowest = 0.0
        let deadline = Date().addingTimeInterval(120)
        repeat {
            slowest = max(slowest, Hard.seconds { _ = try? CofferClient(socketPath: d.socket).health() })
            slowest = max(slowest, Hard.seconds {
                #expect((try? CofferClient(socketPath: d.socket).getRaw("cap/x", version: nil).value) == Array("kept".utf8))
            })
            usleep(50_000)
        } while clients.contains(where: { $0.0.isRunning }) && Date() < deadline
        #expect(slowest < 2, "root waited \(slowest) s behind \(user.name)'s keep-alive clients")
        for (p, out) in clients {
            #expect(!p.isRunning, "a keep-alive client did not finish in 120 s")
            let text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
            #expect(p.isRunning || p.terminationStatus == 0, "curl exited with \(p.terminationStatus)")
            #expect(text.components(separatedBy: "<<200>>").count - 1 == perClient, "\(text.suffix(200))")
        }
    }
}

/// `count` idle connections held by socat processes running as `user`.
final class IdleHolders {
    private var procs: [Process] = []
    private var stdins: [Pipe] = []
    private var errFiles: [String] = []

    init(count: Int, socket: String, as user: TestUser) throws {
        for i in 0..<count {
            let err = NSTemporaryDirectory() + "coffer-holder-\(getpid())-\(i).err"
            _ = FileManager.default.createFile(atPath: err, contents: nil)
            let (exe, args) = user.wrap("/usr/bin/socat", ["-t", "0.2", "UNIX-CONNECT:" + socket, "STDIO"])
            let p = Process()
            p.executableURL = URL(fileURLWithPath: exe)
            p.arguments = args
            let stdin = Pipe()
            p.standardInput = stdin
            p.standardOutput = FileHandle.nullDevice
            p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: err))
            try p.run()
            procs.append(p)
            stdins.append(stdin)
            errFiles.append(err)
        }
    }

    var exited: [Int32] { procs.filter { !$0.isRunning }.map(\.terminationStatus) }
    var running: Int { procs.filter(\.isRunning).count }
    var errors: String { errFiles.compactMap { try? String(contentsOfFile: $0, encoding: .utf8) }.joined() }

    func stop() {
        for p in procs where p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() }
        for f in errFiles { try? FileManager.default.removeItem(atPath: f) }
        procs.removeAll()
        stdins.removeAll()
    }
}
