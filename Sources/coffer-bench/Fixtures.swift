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

    /// `joining`: another instance on `joining`'s shared (PostgreSQL) database, with
    /// its key file; no init (a host joins with serve).
    init(bin: String, name: String, extra: String, policyExtra: String = "", serverExtra: String = "", shared: Bool = false,
         joining: Daemon? = nil) throws {
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
        if let joining {
            try FileManager.default.createDirectory(atPath: dir + "/keys", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            try FileManager.default.copyItem(atPath: joining.dir + "/keys/root.key", toPath: dir + "/keys/root.key")
        } else {
            let initRun = Process()
            initRun.executableURL = URL(fileURLWithPath: bin + "/cofferd")
            initRun.arguments = ["init", "--config", dir + "/cofferd.toml"]
            initRun.standardOutput = FileHandle.nullDevice
            try initRun.run()
            initRun.waitUntilExit()
            guard initRun.terminationStatus == 0 else { throw BenchError("cofferd init failed for \(name)") }
        }
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

/// A PostgreSQL 15 server for the PostgreSQL rows (issue 17): `initdb` into a
/// temporary directory and `pg_ctl start` on a Unix socket there, as `coffer-test`
/// when running as root (PostgreSQL refuses root), as the caller otherwise. nil when
/// PostgreSQL is not installed (the rows are left out, and the report says so).
final class BenchPostgres {
    static let bin = "/usr/lib/postgresql/15/bin"
    static let port = 5441
    let dir: String
    let user: String?

    static func start() -> BenchPostgres? {
        guard FileManager.default.isExecutableFile(atPath: bin + "/initdb") else { return nil }
        return try? BenchPostgres()
    }

    private init() throws {
        var template = Array("/tmp/cfbpg.XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw BenchError("mkdtemp") }
        dir = String(cString: p)
        if getuid() == 0 {
            guard let pw = getpwnam("coffer-test") else { throw BenchError("no coffer-test user to run PostgreSQL as") }
            chown(dir, pw.pointee.pw_uid, pw.pointee.pw_gid)
            user = "coffer-test"
        } else {
            user = nil
        }
        chmod(dir, 0o755)
        try run([Self.bin + "/initdb", "-D", dir + "/data", "-U", "coffer", "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"])
        // fsync on, as a real server: a write's cost includes its commit on both sides
        try run([Self.bin + "/pg_ctl", "-D", dir + "/data", "-l", dir + "/server.log", "-w", "-t", "60",
                 "-o", "-k \(dir) -c listen_addresses='' -p \(Self.port) -c max_connections=200 -c shared_buffers=128MB", "start"])
    }

    var socketFile: String { dir + "/.s.PGSQL.\(Self.port)" }

    /// Runs a command (as the server's user), every descriptor above stderr closed
    /// (the server pg_ctl leaves running must not hold Foundation's).
    private func run(_ argv: [String]) throws {
        let closer = "import os, sys; os.closerange(3, 65536); os.execv(sys.argv[1], sys.argv[1:])"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = ["-c", closer] + (user.map { ["/usr/sbin/runuser", "-u", $0, "--"] } ?? []) + argv
        p.currentDirectoryURL = URL(fileURLWithPath: dir)
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw BenchError("\(argv[0]) failed (\(p.terminationStatus))") }
    }

    func createDatabase(_ name: String) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/psql")
        p.arguments = ["-X", "-q", "-h", dir, "-p", "\(Self.port)", "-U", "coffer", "-d", "postgres", "-c", "CREATE DATABASE \(name)"]
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw BenchError("CREATE DATABASE \(name) failed") }
    }

    /// The `[storage]` text for a daemon on `database`.
    func storage(_ database: String, durability: String) -> String {
        "[storage]\ndurability = \"\(durability)\"\nbackend = \"postgres\"\n[storage.postgres]\nsocket = \"\(socketFile)\"\nuser = \"coffer\"\ndatabase = \"\(database)\"\n"
    }

    func stop() {
        try? run([Self.bin + "/pg_ctl", "-D", dir + "/data", "-m", "immediate", "-w", "stop"])
        try? FileManager.default.removeItem(atPath: dir)
    }
}
