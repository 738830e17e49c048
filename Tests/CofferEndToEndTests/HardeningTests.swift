import CofferClient
import Foundation
import Testing

/// Regression tests for the hardening round: what the CLI trusts (discovered
/// sockets, token files), what `cofferd serve` refuses to start on (shared state,
/// loose owners and modes, a missing database), what `coffer-job` hands to a job,
/// and strict request parsing. The limits (numbers, patterns, connections) are in
/// HardeningTests+Limits.swift.
@Suite(.serialized) struct HardeningTests {
    // MARK: the CLI does not trust a socket someone else planted

    /// Without --socket and COFFER_SOCKET, `coffer` finds ./.coffer/coffer.sock; a
    /// socket (or its directory) owned by another user is refused before any byte
    /// is sent, so a planted listener never sees the value being written.
    @Test func cliRefusesADiscoveredSocketPlantedByAnotherUser() throws {
        let user = TestUser.nonAdmin
        // (who owns .coffer, its mode): the directory and the socket owned by the
        // other user, then a root-owned 0700 directory holding the other user's socket
        for (dirOwner, dirMode) in [(user.uid, mode_t(0o755)), (UInt32(0), mode_t(0o700))] {
            let dir = try Hard.tempDir()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let cofferDir = dir + "/.coffer"
            #expect(mkdir(cofferDir, dirMode) == 0)
            chmod(cofferDir, dirMode)
            chown(cofferDir, dirOwner, dirOwner == 0 ? 0 : user.gid)
            let sock = cofferDir + "/coffer.sock"
            let listener = try PlantedListener(path: sock, owner: user)
            defer { listener.close() }
            var st = stat()
            #expect(lstat(sock, &st) == 0 && st.st_uid == user.uid, "precondition: the planted socket belongs to \(user.name)")

            let canary = "canary-\(UUID().uuidString)"
            let put = try run(Bins.coffer, ["secret", "put", "x/y"], stdin: Array(canary.utf8), cwd: dir, timeout: 30)
            let get = try run(Bins.coffer, ["secret", "get", "x/y"], cwd: dir, timeout: 30)
            for (name, r) in [("put", put), ("get", get)] {
                #expect(r.status != 0, "\(name) with .coffer owned by uid \(dirOwner): \(r.stderr)")
                #expect(r.stderr.hasPrefix("coffer: error:"), "\(name): \(r.stderr)")
                #expect(r.stderr.contains(cofferDir), "\(name): the message names the socket: \(r.stderr)")
                let why = r.stderr.lowercased()
                #expect(why.contains("own") || why.contains("belong"), "\(name): the message says why (owner): \(r.stderr)")
            }
            #expect(listener.connections.load() == 0, "coffer connected to a socket planted by \(user.name)")
            #expect(listener.received.load() == 0, "the planted listener received \(listener.received.load()) bytes")
            #expect(!listener.capturedText.contains(canary), "the value reached the planted listener")
        }
    }

    /// Positive control: a root-owned 0700 ./.coffer holding a real daemon's socket
    /// is used; the same directory made world-writable is refused.
    @Test func cliUsesADiscoveredSocketItTrusts() throws {
        let dir = try Hard.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cofferDir = dir + "/.coffer"
        #expect(mkdir(cofferDir, 0o700) == 0)
        chmod(cofferDir, 0o700)
        let d = try Daemon(socketMode: "0600")
        try Hard.serve(d, socket: cofferDir + "/coffer.sock")
        let put = try run(Bins.coffer, ["secret", "put", "x/y"], stdin: Array("trusted".utf8), cwd: dir)
        #expect(put.status == 0, "\(put.stderr)")
        var get = try run(Bins.coffer, ["secret", "get", "x/y"], cwd: dir)
        #expect(get.status == 0 && get.stdout == Array("trusted".utf8), "\(get.stderr)")

        chmod(cofferDir, 0o777)
        get = try run(Bins.coffer, ["secret", "get", "x/y"], cwd: dir)
        #expect(get.status != 0 && get.stdout.isEmpty, "a world-writable .coffer directory is not trusted")
        #expect(get.stderr.hasPrefix("coffer: error:") && get.stderr.contains(cofferDir), "\(get.stderr)")
        chmod(cofferDir, 0o700)
        get = try run(Bins.coffer, ["secret", "get", "x/y"], cwd: dir)
        #expect(get.status == 0 && get.stdout == Array("trusted".utf8), "\(get.stderr)")
    }

    // MARK: cofferd serve refuses what it must not run on

    /// A second daemon on the same state directory (same database), another socket:
    /// it exits with a message naming the state directory; the first keeps serving.
    @Test func secondDaemonOnTheSameStateDirectoryRefusesToStart() throws {
        let d = try Daemon()
        try d.start()
        #expect(try d.coffer(["secret", "put", "live/x"], stdin: Array("v".utf8)).status == 0)
        let secondSocket = d.dir + "/run2/coffer.sock"
        let secondConfig = d.dir + "/second.toml"
        let text = try String(contentsOfFile: d.configPath, encoding: .utf8)
            .replacingOccurrences(of: "socket = \"\(d.socket)\"", with: "socket = \"\(secondSocket)\"")
        #expect(text.contains(secondSocket))
        try Hard.writeStrict(text, to: secondConfig)
        let log = d.dir + "/second.log"
        let p = try Hard.launchCofferd(config: secondConfig, log: log)
        let outcome = Hard.outcome(p, socket: secondSocket)
        let msg = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(outcome.refused, "second cofferd on \(d.dir)/state: \(outcome) \(msg)")
        #expect(msg.contains("cofferd: error:"), "\(msg)")
        #expect(msg.contains(d.dir + "/state"), "the message names the state directory: \(msg)")
        #expect(d.process?.isRunning == true)
        #expect(try d.coffer(["secret", "get", "live/x"]).stdout == Array("v".utf8))
        #expect(try d.coffer(["secret", "put", "live/x"], stdin: Array("w".utf8)).status == 0)
    }

    /// Installed mode refuses a group/world-writable state directory, config or
    /// policy file and a key file owned by another uid; each message names the path.
    /// Every case is undone afterwards and the daemon starts again (positive control).
    @Test func serveRefusesLooseOwnersAndModes() throws {
        let user = TestUser.nonAdmin
        let d = try Hard.strictDaemon()
        try d.start()
        d.stop()
        let state = d.dir + "/state"
        func mode(_ path: String, _ m: mode_t) -> (String, String, () -> Void, () -> Void) {
            var st = stat()
            stat(path, &st)
            let old = st.st_mode & 0o7777
            return ("\((path as NSString).lastPathComponent) mode \(String(m, radix: 8))", path, { chmod(path, m) }, { chmod(path, old) })
        }
        let cases: [(String, String, () -> Void, () -> Void)] = [
            mode(state, 0o777),
            mode(state, 0o770),
            ("key file owned by \(user.name)", d.keyPath, { chown(d.keyPath, user.uid, user.gid) }, { chown(d.keyPath, 0, 0) }),
            mode(d.policyPath, 0o666),
            mode(d.policyPath, 0o620),
            mode(d.configPath, 0o666),
            mode(d.configPath, 0o660),
        ]
        for (name, path, breakIt, undo) in cases {
            let before = d.log.utf8.count
            breakIt()
            let p = try d.launch()
            let outcome = Hard.outcome(p, socket: d.socket)
            undo()
            let msg = String(decoding: Array(d.log.utf8).dropFirst(before), as: UTF8.self)
            #expect(outcome.refused, "\(name): \(outcome) \(msg)")
            #expect(msg.contains("cofferd: error:"), "\(name): \(msg)")
            #expect(msg.contains(path), "\(name): the message names \(path): \(msg)")
        }
        try d.start()
        #expect(try d.coffer(["status"]).status == 0)
    }

    /// A running daemon does not take a policy file that became world-writable
    /// (API reload and SIGHUP): 4xx invalid_policy, and the old policy stays.
    @Test func policyReloadRefusesAWritablePolicyFile() throws {
        let d = try AccessFixture.daemon()
        let alice = AccessFixture.alice
        #expect(try d.coffer(["secret", "get", "ci/app/db"], as: alice).status == 0)
        // a valid policy that would drop alice's binding, but world-writable
        let without = AccessFixture.policy.replacingOccurrences(of: "subjects = [\"group:\(AccessFixture.group)\"]", with: "subjects = [\"uid:4000000\"]")
        #expect(without != AccessFixture.policy)
        try without.write(toFile: d.policyPath, atomically: true, encoding: .utf8)
        chmod(d.policyPath, 0o666)

        let (code, body) = try d.curl("POST", "/v1/sys/policy/reload")
        #expect((400..<500).contains(code) && errorCode(body) == "invalid_policy", "\(code) \(body)")
        let r = try d.coffer(["policy", "reload"])
        #expect(r.status != 0 && r.stderr.hasPrefix("coffer: error:"), "\(r.stderr)")
        #expect(try d.coffer(["secret", "get", "ci/app/db"], as: alice).status == 0, "the old policy stays in force")

        let refusedBefore = d.log.components(separatedBy: "policy reload refused").count
        let reloadedBefore = d.log.components(separatedBy: "policy reloaded").count
        kill(d.pid ?? 0, SIGHUP)
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline
            && d.log.components(separatedBy: "policy reload refused").count == refusedBefore
            && d.log.components(separatedBy: "policy reloaded").count == reloadedBefore { usleep(50_000) }
        #expect(d.log.components(separatedBy: "policy reload refused").count > refusedBefore, "SIGHUP: \(d.log.suffix(600))")
        #expect(try d.coffer(["secret", "get", "ci/app/db"], as: alice).status == 0, "the old policy stays in force after SIGHUP")

        // control: the same content at 0600 is taken
        chmod(d.policyPath, 0o600)
        #expect(try d.coffer(["policy", "reload"]).status == 0)
        #expect(try d.coffer(["secret", "get", "ci/app/db"], as: alice).status == 5)
    }

    /// Only `cofferd init` creates a database: serve on a deleted one refuses and
    /// says to run `cofferd init`, creating nothing.
    @Test func serveRefusesAMissingDatabase() throws {
        let d = try Hard.strictDaemon()
        try d.start()
        #expect(try d.coffer(["secret", "put", "db/x"], stdin: Array("v".utf8)).status == 0)
        d.stop()
        if let database = d.postgresDatabase {
            // PostgreSQL: the database is there but holds nothing of Coffer's
            try PostgresServer.psql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;", database: database)
        } else {
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: d.dbPath + suffix) }
        }
        let before = d.log.utf8.count
        let p = try d.launch()
        let outcome = Hard.outcome(p, socket: d.socket)
        let msg = String(decoding: Array(d.log.utf8).dropFirst(before), as: UTF8.self)
        #expect(outcome.refused, "\(outcome) \(msg)")
        #expect(msg.contains("cofferd: error:"), "\(msg)")
        #expect(msg.contains("cofferd init"), "\(msg)")
        if let database = d.postgresDatabase {
            #expect(try PostgresServer.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public';", database: database) == "0",
                    "serve created tables")
        } else {
            #expect(!FileManager.default.fileExists(atPath: d.dbPath), "serve created an empty database")
        }
    }

    // MARK: coffer-job

    /// The runner's own COFFER_* settings (here an admin token) never reach the job;
    /// the job still reads its project's secrets with its own token file.
    @Test func ciJobDoesNotPassTheRunnersTokenToTheJob() throws {
        let d = try AccessFixture.daemon()
        _ = try d.coffer(["secret", "put", "ci/p1/db-password"], stdin: Array("pw-p1".utf8))
        let admin = try Hard.mint(d, ["--role", "admin", "--name", "runner-admin", "--ttl", "2h"])  // outlives the job's 1h
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("contrib/ci/coffer-job").path
        let binDir = (Bins.sharedCoffer as NSString).deletingLastPathComponent
        let env = ["COFFER_SOCKET": d.socket, "COFFER_TOKEN": admin.token, "COFFER_HARDENING_MARKER": "leaked-marker",
                   "PATH": binDir + ":/usr/sbin:/usr/bin:/sbin:/bin", "CI_JOB_ID": "77"]
        let user = TestUser.nonAdmin
        // --socket is given explicitly: this test is about what leaks, not socket discovery
        let job = "env; echo '---'; coffer --socket '\(d.socket)' secret get ci/p1/db-password; rc=$?; echo; echo \"rc=$rc\""
        let r = try run("/bin/bash", [script, "p1", user.name, "--", "sh", "-c", job], env: env)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.out.contains("COFFER_TOKEN_FILE="), "positive control: the job's env was printed: \(r.out)")
        #expect(!r.out.contains(admin.token), "the runner's admin token reached the job")
        #expect(!r.out.contains("COFFER_TOKEN="), "COFFER_TOKEN is in the job's environment")
        #expect(!r.out.contains("leaked-marker"), "another COFFER_* variable reached the job")
        #expect(r.out.contains("pw-p1\nrc=0"), "the job reads ci/p1 with its own token: \(r.out) \(r.stderr)")
        // a project that would widen the token (a comma splits --paths; a glob; a slash) is refused before any token
        let before = try d.coffer(["token", "list"]).out
        for bad in ["p1/**,ci/p2", "*", "p1/x", "..", ""] {
            let w = try run("/bin/bash", [script, bad, user.name, "--", "true"], env: env)
            #expect(w.status == 2 && w.stderr.contains("PROJECT must be one name"), "\(bad): \(w.stderr)")
        }
        #expect(try d.coffer(["token", "list"]).out == before, "no token was minted for a refused project")
    }

    // MARK: strict requests

    /// A JSON object with a repeated key is ambiguous: 400 invalid_json, nothing written.
    @Test func duplicateJSONKeysAreRefused() throws {
        let d = try Daemon()
        try d.start()
        let tokensBefore = (json(try d.curl("GET", "/v1/tokens").1)["tokens"] as? [Any])?.count
        let cases: [(String, String, String)] = [
            ("PUT", "/v1/secrets/data/x/y", #"{"value":"a","value":"b"}"#),
            ("PUT", "/v1/secrets/data/x/y", #"{"value":"a","cas":0,"cas":7}"#),
            ("PUT", "/v1/secrets/data/x/y", #"{"value":"a","val\u0075e":"b"}"#),  // the same key once unescaped
            ("POST", "/v1/tokens", #"{"roles":["admin"],"roles":["admin"]}"#),
            ("POST", "/v1/tokens", #"{"roles":["admin"],"ttl":"1m","ttl":"1h"}"#),
        ]
        for (method, path, body) in cases {
            let (code, text) = try d.curl(method, path, body: body)
            #expect(code == 400 && errorCode(text) == "invalid_json", "\(body): \(code) \(text)")
            let message = ((json(text)["error"] as? [String: Any])?["message"] as? String ?? "").lowercased()
            #expect(message.contains("duplicate"), "\(body): \(text)")
        }
        let (code, _) = try d.curl("GET", "/v1/secrets/data/x/y")
        #expect(code == 404, "a refused body wrote nothing")
        #expect((json(try d.curl("GET", "/v1/tokens").1)["tokens"] as? [Any])?.count == tokensBefore, "no token was created")
        // control: the same bodies without the repeat are accepted
        #expect(try d.curl("PUT", "/v1/secrets/data/x/y", body: #"{"value":"a"}"#).0 == 200)
        #expect(try d.curl("POST", "/v1/tokens", body: #"{"roles":["admin"]}"#).0 == 200)
    }

    /// The Authorization scheme is case-insensitive: `bearer TOKEN` is the token.
    @Test func lowerCaseBearerSchemeIsAccepted() throws {
        let d = try Daemon()
        try d.start()
        for p in ["ci/app/db", "other/x"] { _ = try d.coffer(["secret", "put", p], stdin: Array("v".utf8)) }
        let t = try Hard.mint(d, ["--role", "admin", "--paths", "ci/app/**"])
        for scheme in ["Bearer", "bearer"] {
            let (code, body) = try d.curl("GET", "/v1/tokens/self", headers: ["Authorization: \(scheme) \(t.token)"])
            #expect(code == 200, "\(scheme): \(code) \(body)")
            #expect((json(body)["token"] as? [String: Any])?["accessor"] as? String == t.accessor, "\(scheme): the token was used: \(body)")
            #expect(try d.curl("GET", "/v1/secrets/data/ci/app/db", headers: ["Authorization: \(scheme) \(t.token)"]).0 == 200, "\(scheme)")
            // the token's paths apply (root alone could read this)
            #expect(try d.curl("GET", "/v1/secrets/data/other/x", headers: ["Authorization: \(scheme) \(t.token)"]).0 == 403, "\(scheme)")
        }
    }

    /// A token file others can read is refused (like ssh with a private key) and
    /// the CLI says how to fix it; 0600 and 0400 work.
    @Test func cliRefusesAGroupOrWorldReadableTokenFile() throws {
        let d = try Daemon()
        try d.start()
        _ = try d.coffer(["secret", "put", "ci/app/db"], stdin: Array("v".utf8))
        let t = try Hard.mint(d, ["--role", "admin"])
        let file = d.dir + "/job.token"
        _ = FileManager.default.createFile(atPath: file, contents: Data((t.token + "\n").utf8))
        for m: mode_t in [0o644, 0o640, 0o604] {
            chmod(file, m)
            for viaEnv in [false, true] {
                let r = viaEnv
                    ? try run(Bins.coffer, ["secret", "get", "ci/app/db"], env: ["COFFER_SOCKET": d.socket, "COFFER_TOKEN_FILE": file])
                    : try d.coffer(["--token-file", file, "secret", "get", "ci/app/db"])
                let how = "mode \(String(m, radix: 8))\(viaEnv ? " via COFFER_TOKEN_FILE" : "")"
                #expect(r.status != 0 && r.stdout.isEmpty, "\(how): \(r.stderr)")
                #expect(r.stderr.hasPrefix("coffer: error:") && r.stderr.contains(file), "\(how): \(r.stderr)")
                #expect(r.stderr.contains("chmod 600"), "\(how): \(r.stderr)")
            }
        }
        for m: mode_t in [0o600, 0o400] {
            chmod(file, m)
            let r = try d.coffer(["--token-file", file, "secret", "get", "ci/app/db"])
            #expect(r.status == 0 && r.stdout == Array("v".utf8), "mode \(String(m, radix: 8)): \(r.stderr)")
        }
    }

    /// A chunk size that does not fit in 64 bits gets a 400 with a JSON body, not a
    /// silent close; the daemon keeps serving and nothing is written.
    @Test func hugeChunkSizeGetsA400() throws {
        let d = try Daemon()
        try d.start()
        let request = Array("PUT /v1/secrets/data/x/y HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nFFFFFFFFFFFFFFFF\r\n{\"value\":\"x\"}\r\n0\r\n\r\n".utf8)
        let out = rawExchange(d.socket, [request], wait: 5)
        let responses = parseResponses(out)
        #expect(responses.first?.0 == 400, "answer: \(String(decoding: out.prefix(300), as: UTF8.self))")
        if let body = responses.first?.1 {
            #expect(Hard.isJSONError(body), "\(String(decoding: body, as: UTF8.self))")
        }
        #expect(d.process?.isRunning == true)
        #expect(try d.curl("GET", "/v1/sys/health").0 == 200)
        #expect(try d.curl("GET", "/v1/secrets/data/x/y").0 == 404)
    }
}

// MARK: - helpers shared by the hardening tests

enum Hard {
    static func tempDir() throws -> String {
        var template = Array("/tmp/cfh.XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestError.failed("mkdtemp failed") }
        let dir = String(cString: p)
        chmod(dir, 0o755)
        return dir
    }

    static func writeStrict(_ text: String, to path: String) throws {
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o600)
    }

    static let rootAdminPolicy = """
        [role.admin]
        [[role.admin.rule]]
        path = "**"
        capabilities = ["read", "list", "write", "delete", "destroy", "admin", "audit"]

        [[bind]]
        subjects = ["uid:0"]
        roles = ["admin"]
        """

    /// An installed-mode daemon (initialised, not started) whose files are all strict:
    /// config and policy 0600 owned by root; the state and key are what init made.
    static func strictDaemon() throws -> Daemon {
        let d = try Daemon(socketMode: "0600", initialise: false, policy: rootAdminPolicy)
        chmod(d.configPath, 0o600)
        chmod(d.policyPath, 0o600)
        let r = try run(Bins.cofferd, ["init", "--config", d.configPath])
        guard r.status == 0 else { throw TestError.failed("cofferd init: \(r.stderr)") }
        return d
    }

    /// Serves `d` on another socket path (its config is rewritten) and waits for health.
    static func serve(_ d: Daemon, socket: String) throws {
        let text = try String(contentsOfFile: d.configPath, encoding: .utf8)
            .replacingOccurrences(of: "socket = \"\(d.socket)\"", with: "socket = \"\(socket)\"")
        guard text.contains(socket) else { throw TestError.failed("could not rewrite the socket path") }
        try text.write(toFile: d.configPath, atomically: true, encoding: .utf8)
        let p = try d.launch()
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if !p.isRunning { throw TestError.failed("cofferd exited with \(p.terminationStatus): \(d.log)") }
            if (try? CofferClient(socketPath: socket).health()) != nil { return }
            usleep(20_000)
        }
        throw TestError.failed("cofferd did not become healthy on \(socket): \(d.log)")
    }

    static func launchCofferd(config: String, log: String) throws -> Process {
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Bins.cofferd)
        p.arguments = ["serve", "--config", config]
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        p.standardOutput = h
        p.standardError = h
        p.standardInput = FileHandle.nullDevice
        try p.run()
        return p
    }

    enum StartOutcome: CustomStringConvertible {
        case exited(Int32), serving, hung
        var refused: Bool { if case .exited(let s) = self { return s != 0 }; return false }
        var description: String {
            switch self {
            case .exited(let s): "exited with \(s)"
            case .serving: "started serving"
            case .hung: "neither exited nor served"
            }
        }
    }

    /// Waits for a launched daemon either to exit or to answer health on `socket`;
    /// one that serves (or hangs) is killed, so a test never leaves it behind.
    static func outcome(_ p: Process, socket: String, timeout: Double = 15) -> StartOutcome {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if !p.isRunning { return .exited(p.terminationStatus) }
            if (try? CofferClient(socketPath: socket).health()) != nil {
                kill(p.processIdentifier, SIGKILL)
                p.waitUntilExit()
                return .serving
            }
            usleep(20_000)
        }
        if !p.isRunning { return .exited(p.terminationStatus) }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        return .hung
    }

    /// `coffer token create` as root; (token, accessor).
    static func mint(_ d: Daemon, _ args: [String]) throws -> (token: String, accessor: String) {
        let r = try d.coffer(["--format", "json", "token", "create"] + args)
        guard r.status == 0 else { throw TestError.failed("token create \(args): \(r.stderr)") }
        let j = json(r.out)
        return (j["token"] as? String ?? "", (j["info"] as? [String: Any])?["accessor"] as? String ?? "")
    }

    /// `{"error":{"code":"…","message":"…"}}`
    static func isJSONError(_ body: [UInt8]) -> Bool {
        let j = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any]
        let e = j?["error"] as? [String: Any]
        return e?["code"] is String && e?["message"] is String
    }

    /// One request on its own connection; the error when the connection failed or dropped.
    static func send(_ socket: String, _ method: String, _ target: String, body: String? = nil,
                     headers: [(String, String)] = [], timeout: Int = 30) -> Result<HTTPResult, ClientError> {
        let c = UnixHTTPClient(socketPath: socket)
        c.timeoutSeconds = timeout
        do throws(ClientError) {
            return .success(try c.request(method, target, headers: headers + (body == nil ? [] : [("Content-Type", "application/json")]),
                                          body: body.map { Array($0.utf8) }))
        } catch {
            return .failure(error)
        }
    }

    static func seconds(_ body: () throws -> Void) rethrows -> Double {
        let t0 = Date()
        try body()
        return Date().timeIntervalSince(t0)
    }
}

/// A listener on a Unix socket owned by another user, standing in for a socket
/// planted in ./.coffer: it records every connection and byte, answers 503, closes.
final class PlantedListener: @unchecked Sendable {
    let path: String
    let fd: Int32
    let connections = Atomic(0)
    let received = Atomic(0)
    private let captured = Atomic([UInt8]())
    private let stop = Atomic(false)
    private let done = DispatchSemaphore(value: 0)
    private var closed = false

    var capturedText: String { String(decoding: captured.load(), as: UTF8.self) }

    init(path: String, owner: TestUser) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestError.failed("socket() failed") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0, listen(fd, 16) == 0 else {
            Glibc.close(fd)
            throw TestError.failed("cannot listen on \(path): \(String(cString: strerror(errno)))")
        }
        chmod(path, 0o777)
        lchown(path, owner.uid, owner.gid)
        Thread.detachNewThread { [self] in loop() }
    }

    private func loop() {
        defer { done.signal() }
        while !stop.load() {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            let c = accept(fd, nil, nil)
            guard c >= 0 else { continue }
            connections.add(1)
            var tv = timeval(tv_sec: 0, tv_usec: 500_000)
            setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buf.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, 0) }
                if n <= 0 { break }
                received.add(n)
                captured.update { $0 += buf[0..<n] }
            }
            let body = #"{"error":{"code":"storage_error","message":"planted listener"}}"#
            let answer = Array("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)".utf8)
            _ = answer.withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            Glibc.close(c)
        }
    }

    func close() {
        guard !closed else { return }
        closed = true
        stop.store(true)
        done.wait()
        Glibc.close(fd)
        unlink(path)
    }

    deinit { close() }
}
