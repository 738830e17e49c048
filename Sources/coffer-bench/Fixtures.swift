import CofferClient
import Foundation
import Glibc

/// A cofferd started for the benchmark on a temporary socket.
final class Daemon {
    let bin: String
    let dir: String
    let socket: String
    let process: Process
    var pid: Int32 { process.processIdentifier }

    init(bin: String, name: String, extra: String, policyExtra: String = "", serverExtra: String = "", shared: Bool = false) throws {
        self.bin = bin
        var template = Array("/tmp/cfb.XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw BenchError("mkdtemp") }
        dir = String(cString: p)
        socket = dir + "/s.sock"
        if shared { chmod(dir, 0o755) }  // other users reach the socket (sign-in, elevation)
        let policy = """
            [role.admin]
            [[role.admin.rule]]
            path = "**"
            capabilities = ["read", "list", "write", "delete", "destroy", "admin", "audit", "metrics"]
            [role.narrow]
            [[role.narrow.rule]]
            path = "ci/**"
            capabilities = ["read"]
            [[bind]]
            subjects = ["uid:\(getuid())"]
            roles = ["admin"]
            \(policyExtra)
            """
        try policy.write(toFile: dir + "/policy.toml", atomically: true, encoding: .utf8)
        try """
            [server]
            socket = "\(socket)"
            socket_mode = "\(shared ? "0666" : "0600")"
            \(serverExtra)
            [keys]
            key_file = "\(dir)/keys/root.key"
            [access]
            policy_file = "\(dir)/policy.toml"
            admin_group = ""
            [log]
            level = "warning"
            \(extra.replacingOccurrences(of: "[storage]\n", with: "[storage]\nstate_dir = \"\(dir)/state\"\n"))
            """.write(toFile: dir + "/cofferd.toml", atomically: true, encoding: .utf8)
        let initRun = Process()
        initRun.executableURL = URL(fileURLWithPath: bin + "/cofferd")
        initRun.arguments = ["init", "--config", dir + "/cofferd.toml"]
        initRun.standardOutput = FileHandle.nullDevice
        try initRun.run()
        initRun.waitUntilExit()
        guard initRun.terminationStatus == 0 else { throw BenchError("cofferd init failed for \(name)") }
        process = Process()
        process.executableURL = URL(fileURLWithPath: bin + "/cofferd")
        process.arguments = ["serve", "--config", dir + "/cofferd.toml"]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        for _ in 0..<500 {
            if (try? CofferClient(socketPath: socket).health()) != nil { return }
            usleep(10_000)
        }
        throw BenchError("cofferd (\(name)) did not start")
    }

    func stop() {
        if process.isRunning {
            kill(pid, SIGTERM)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: dir)
    }

    func put(_ path: String, _ value: String) throws {
        _ = try CofferClient(socketPath: socket).put(path, value: Array(value.utf8), cas: nil)
    }

    /// The audit writer's totals from /v1/sys/metrics: commits, events, seconds committing.
    func auditTotals() -> (commits: Double, events: Double, seconds: Double)? {
        guard let r = try? UnixHTTPClient(socketPath: socket).request("GET", "/v1/sys/metrics"), r.status == 200 else { return nil }
        var v: [String: Double] = [:]
        for line in String(decoding: r.body, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let x = Double(parts[1]) { v[String(parts[0])] = x }
        }
        // before the writer's first batch the series are not there yet
        return (v["coffer_audit_batch_events_count"] ?? 0, v["coffer_audit_batch_events_sum"] ?? 0, v["coffer_audit_commit_duration_seconds_sum"] ?? 0)
    }

    func token(role: String) throws -> String {
        try CofferClient(socketPath: socket).createToken(.init(roles: [role], ttl: "2h", uses: nil, bindUID: nil, paths: nil, name: "bench")).token
    }

    /// Stores `n` small secrets through the API, 32 connections at a time.
    func seed(_ n: Int) throws {
        let socket = self.socket
        let per = (n + 31) / 32
        DispatchQueue.concurrentPerform(iterations: 32) { t in
            let c = UnixHTTPClient(socketPath: socket)
            for i in (t * per)..<min(n, (t + 1) * per) {
                _ = try? c.request("PUT", "/v1/secrets/data/scale/\(i % 1000)/s\(i)", body: Array(#"{"value":"v"}"#.utf8))
            }
        }
    }
}

/// redis-server on a Unix socket, persistence off (the baseline's best case).
final class Redis {
    let process: Process
    let socket: String
    let dir: String
    var pid: Int32 { process.processIdentifier }

    static func which(_ name: String) -> String? {
        ["/usr/bin/", "/usr/local/bin/", "/usr/sbin/"].map { $0 + name }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    static func start() -> Redis? {
        guard let server = which("redis-server") else {
            print("redis-server not found (apt-get install redis-server): the Redis baseline is skipped")
            return nil
        }
        return try? Redis(server)
    }

    init(_ server: String) throws {
        var template = Array("/tmp/cfr.XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw BenchError("mkdtemp") }
        dir = String(cString: p)
        socket = dir + "/redis.sock"
        process = Process()
        process.executableURL = URL(fileURLWithPath: server)
        process.arguments = ["--port", "0", "--unixsocket", socket, "--save", "", "--appendonly", "no", "--dir", dir]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        for _ in 0..<300 where !FileManager.default.fileExists(atPath: socket) { usleep(10_000) }
    }

    func set(_ key: String, _ value: String) throws {
        guard let cli = Redis.which("redis-cli") else { return }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: cli)
        p.arguments = ["-s", socket, "SET", key, value]
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
    }

    func stop() {
        if process.isRunning {
            kill(pid, SIGTERM)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: dir)
    }
}
