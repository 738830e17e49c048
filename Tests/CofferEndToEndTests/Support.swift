import CofferClient
import Foundation
import Testing

/// End-to-end tests drive the built binaries (`swift build` puts them beside the
/// test bundle; COFFER_BIN_DIR overrides). CI runs as root, so tests also create a
/// real unprivileged user and run `coffer`/`curl` as that user with setpriv.
enum Bins {
    static let dir: String = {
        if let d = ProcessInfo.processInfo.environment["COFFER_BIN_DIR"], !d.isEmpty { return d }
        // .../.build/<triple>/debug/coffer-packageTests.xctest → that debug folder
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var u = exe
        while u.path != "/" {
            if FileManager.default.isExecutableFile(atPath: u.appendingPathComponent("cofferd").path) { return u.path }
            u = u.deletingLastPathComponent()
        }
        // fall back to the package's own build folder
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return root.appendingPathComponent(".build/debug").path
    }()

    /// A copy of `coffer` (and the `coffer-cli` it hands most commands to) that every
    /// user can execute (the build folder may sit under a directory other users cannot enter).
    static let sharedCoffer: String = {
        let d = "/tmp/coffer-e2e-bin-\(getpid())"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        chmod(d, 0o755)
        for name in ["coffer", "coffer-cli"] {
            let dst = d + "/" + name
            try? FileManager.default.removeItem(atPath: dst)
            try? FileManager.default.copyItem(atPath: dir + "/" + name, toPath: dst)
            chmod(dst, 0o755)
        }
        return d + "/coffer"
    }()
    /// The package's folder (contrib/ files the tests use as shipped).
    static let packageRoot: String = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static var cofferd: String { dir + "/cofferd" }
    static var coffer: String { dir + "/coffer" }
}

struct RunResult {
    var status: Int32
    var stdout: [UInt8]
    var stderr: String
    var out: String { String(decoding: stdout, as: UTF8.self) }
}

enum TestError: Error, CustomStringConvertible {
    case failed(String)
    var description: String { if case .failed(let s) = self { return s }; return "" }
}

/// Runs a program to completion with stdout/stderr captured through files (no pipe deadlocks).
@discardableResult
func run(_ exe: String, _ args: [String], stdin: [UInt8]? = nil, env: [String: String] = [:], cwd: String? = nil, timeout: Double = 60) throws -> RunResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    var environment = ProcessInfo.processInfo.environment
    environment["COFFER_SOCKET"] = nil
    for (k, v) in env { environment[k] = v }
    p.environment = environment
    if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
    let tmp = NSTemporaryDirectory() + "coffer-run-" + UUID().uuidString
    FileManager.default.createFile(atPath: tmp + ".out", contents: nil)
    FileManager.default.createFile(atPath: tmp + ".err", contents: nil)
    defer {
        try? FileManager.default.removeItem(atPath: tmp + ".out")
        try? FileManager.default.removeItem(atPath: tmp + ".err")
    }
    let outH = try FileHandle(forWritingTo: URL(fileURLWithPath: tmp + ".out"))
    let errH = try FileHandle(forWritingTo: URL(fileURLWithPath: tmp + ".err"))
    p.standardOutput = outH
    p.standardError = errH
    let inPipe = Pipe()
    p.standardInput = stdin == nil ? FileHandle.nullDevice : inPipe
    try p.run()
    if let stdin {
        inPipe.fileHandleForWriting.write(Data(stdin))
        try inPipe.fileHandleForWriting.close()
    }
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning {
        if Date() > deadline {
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            throw TestError.failed("\(exe) \(args) timed out")
        }
        usleep(2000)
    }
    try outH.close()
    try errH.close()
    let out = try Data(contentsOf: URL(fileURLWithPath: tmp + ".out"))
    let err = try Data(contentsOf: URL(fileURLWithPath: tmp + ".err"))
    return RunResult(status: p.terminationStatus, stdout: [UInt8](out), stderr: String(decoding: err, as: UTF8.self))
}

/// A real unprivileged account for permission tests (created when missing; CI is root).
struct TestUser {
    let name: String
    let uid: UInt32
    let gid: UInt32

    static let nonAdmin: TestUser = ensure("coffer-test")

    static func ensure(_ name: String, supplementary group: String? = nil) -> TestUser {
        if let group, getgrnam(group) == nil {
            _ = try? run("/usr/sbin/groupadd", ["--system", group])
        }
        if getpwnam(name) == nil {
            var args = ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group"]
            if let group { args += ["--groups", group] }
            _ = try? run("/usr/sbin/useradd", args + [name])
        }
        guard let pw = getpwnam(name) else {
            Issue.record("cannot create the test user \(name): run the tests as root (CI does)")
            return TestUser(name: name, uid: 65534, gid: 65534)
        }
        return TestUser(name: name, uid: pw.pointee.pw_uid, gid: pw.pointee.pw_gid)
    }

    /// setpriv prefix that runs a command as this user with no supplementary groups.
    func wrap(_ exe: String, _ args: [String]) -> (String, [String]) {
        ("/usr/bin/setpriv", ["--reuid=\(uid)", "--regid=\(gid)", "--clear-groups", "--", exe] + args)
    }
}

/// One `cofferd serve` on a temporary short socket path, installed-mode config.
final class Daemon {
    let dir: String
    let configPath: String
    let socket: String
    let logPath: String
    let dbPath: String
    let keyPath: String
    let policyPath: String
    /// The PostgreSQL database this daemon uses (COFFER_TEST_BACKEND=postgres, or `database`).
    let postgresDatabase: String?
    /// Whether this daemon created its PostgreSQL database (and drops it at the end).
    private let ownsDatabase: Bool
    private(set) var process: Process?

    /// `sqlite`: always on SQLite (a test of the SQLite file itself: tampering with it
    /// by hand, its backup, its full disk). `postgres`: on that database of the
    /// tests' PostgreSQL server (several daemons sharing one state). Neither: the
    /// suite's backend (COFFER_TEST_BACKEND).
    init(sqlite: Bool = false, config extra: String = "", socketMode: String = "0666", initialise: Bool = true, policy: String? = nil,
         postgres: String? = nil, postgresOptions: String = "") throws {
        var template = Array("/tmp/cf.XXXXXX".utf8CString)
        guard let d = mkdtemp(&template) else { throw TestError.failed("mkdtemp failed") }
        dir = String(cString: d)
        chmod(dir, 0o755)
        configPath = dir + "/cofferd.toml"
        socket = dir + "/run/coffer.sock"
        logPath = dir + "/cofferd.log"
        keyPath = dir + "/keys/root.key"
        policyPath = dir + "/policy.toml"
        if let policy { try policy.write(toFile: policyPath, atomically: true, encoding: .utf8) }
        // Keys from `extra` for the tables written here are merged into them (TOML
        // allows a table only once); other tables are appended.
        var merged: [String: [String]] = [:]
        var others: [String] = []
        var current: String?
        for line in extra.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
            if line.hasPrefix("[") && !line.hasPrefix("[[") {
                let name = line.trimmingCharacters(in: CharacterSet(charactersIn: "[] "))
                current = ["server", "storage", "keys", "access"].contains(name) ? name : nil
                if current == nil { others.append(line) }
            } else if let c = current {
                merged[c, default: []].append(line)
            } else {
                others.append(line)
            }
        }
        // COFFER_TEST_REQUEST_PATH=hummingbird runs the suite on the other request path
        if let path = ProcessInfo.processInfo.environment["COFFER_TEST_REQUEST_PATH"], !path.isEmpty,
           !(merged["server"] ?? []).contains(where: { $0.hasPrefix("request_path") }) {
            merged["server", default: []].append("request_path = \"\(path)\"")
        }
        // COFFER_TEST_BACKEND=postgres runs the suite on PostgreSQL: a new database each
        var database = postgres
        var owns = false
        if database == nil, !sqlite, PostgresServer.enabled, !extra.contains("backend =") {
            database = try PostgresServer.createDatabase()
            owns = true
        }
        postgresDatabase = database
        ownsDatabase = owns
        // the `sqlite(_:_:)` helper reads "postgres:NAME" as that database (psql)
        dbPath = database.map { "postgres:" + $0 } ?? dir + "/state/coffer.db"
        if let database {
            let pg = try PostgresServer.config(database: database)
            merged["storage", default: []].append(pg.storage)
            others.append(pg.table + (postgresOptions.isEmpty ? "" : "\n" + postgresOptions))
        }
        func more(_ t: String) -> String { (merged[t] ?? []).joined(separator: "\n") }
        let config = """
            [server]
            socket = "\(socket)"
            socket_mode = "\(socketMode)"
            \(more("server"))
            [storage]
            state_dir = "\(dir)/state"
            \(more("storage"))
            [keys]
            key_file = "\(keyPath)"
            \(more("keys"))
            [access]
            admin_group = ""
            policy_file = "\(policyPath)"
            \(more("access"))
            \(others.joined(separator: "\n"))
            """
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        FileManager.default.createFile(atPath: logPath, contents: nil)
        if initialise {
            let r = try run(Bins.cofferd, ["init", "--config", configPath])
            guard r.status == 0 else { throw TestError.failed("cofferd init failed: \(r.stderr)") }
        }
    }

    deinit {
        if let p = process, p.isRunning {
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
        }
        // COFFER_TEST_KEEP_LOGS=DIR keeps every daemon's log there, for a post-mortem
        if let keep = ProcessInfo.processInfo.environment["COFFER_TEST_KEEP_LOGS"], !keep.isEmpty {
            try? FileManager.default.createDirectory(atPath: keep, withIntermediateDirectories: true)
            try? FileManager.default.copyItem(atPath: logPath, toPath: keep + "/" + (dir as NSString).lastPathComponent + ".log")
        }
        try? FileManager.default.removeItem(atPath: dir)
        if ownsDatabase, let postgresDatabase { PostgresServer.dropDatabase(postgresDatabase) }
    }

    var pid: Int32? { process?.processIdentifier }

    /// Everything the database holds, as bytes: the SQLite file, its WAL and shared
    /// memory (checkpointed first), or a pg_dump of the PostgreSQL database.
    func databaseBytes() throws -> [UInt8] {
        if let postgresDatabase {
            let c = try PostgresServer.cluster()
            let r = try run("/usr/bin/pg_dump", ["-h", c.socketDir, "-p", "\(PostgresServer.port)", "-U", "coffer", "-d", postgresDatabase])
            guard r.status == 0 else { throw TestError.failed("pg_dump failed: \(r.stderr)") }
            return r.stdout
        }
        _ = try run("/usr/bin/sqlite3", [dbPath, "PRAGMA wal_checkpoint(PASSIVE);"])
        return ["", "-wal", "-shm"].flatMap { fileBytes(dbPath + $0) }
    }

    /// Takes over a daemon process started elsewhere (other flags).
    func adopt(_ p: Process) { process = p }

    /// Starts `cofferd serve` and waits until health answers.
    func start() throws {
        let p = try launch()
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if !p.isRunning { throw TestError.failed("cofferd exited with \(p.terminationStatus): \(log)") }
            if (try? CofferClient(socketPath: socket).health()) != nil { return }
            usleep(20_000)
        }
        throw TestError.failed("cofferd did not become healthy: \(log)")
    }

    /// Launches without waiting (for start-up failure tests). Output goes to the log.
    func launch() throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Bins.cofferd)
        p.arguments = ["serve", "--config", configPath]
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        h.seekToEndOfFile()
        p.standardOutput = h
        p.standardError = h
        p.standardInput = FileHandle.nullDevice
        try p.run()
        process = p
        return p
    }

    /// Waits for a launched daemon to exit by itself.
    func waitForExit(timeout: Double = 20) throws -> Int32 {
        guard let p = process else { throw TestError.failed("not launched") }
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning {
            if Date() > deadline { throw TestError.failed("cofferd did not exit") }
            usleep(10_000)
        }
        return p.terminationStatus
    }

    func stop() {
        guard let p = process, p.isRunning else { return }
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
    }

    func kill9() {
        guard let p = process, p.isRunning else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    @discardableResult
    func coffer(_ args: [String], stdin: [UInt8]? = nil, as user: TestUser? = nil) throws -> RunResult {
        if let user {
            let (exe, a) = user.wrap(Bins.sharedCoffer, ["--socket", socket] + args)
            return try run(exe, a, stdin: stdin)
        }
        return try run(Bins.coffer, args, stdin: stdin, env: ["COFFER_SOCKET": socket])
    }

    /// curl over the Unix socket; returns (HTTP status, body).
    func curl(_ method: String, _ path: String, body: String? = nil, headers: [String] = [], as user: TestUser? = nil, extra: [String] = []) throws -> (Int, String) {
        var args = ["-s", "-S", "--unix-socket", socket, "-X", method, "-o", "-", "-w", "\n%{http_code}"]
        for h in headers { args += ["-H", h] }
        if let body {
            if body.utf8.count > 8192 {  // argv has a per-argument limit: send big bodies from a file
                let f = dir + "/body-" + UUID().uuidString
                FileManager.default.createFile(atPath: f, contents: Data(body.utf8), attributes: [.posixPermissions: 0o644])
                args += ["--data-binary", "@" + f]
            } else {
                args += ["--data-binary", body]
            }
        }
        args += extra
        args.append("http://coffer" + path)
        let r: RunResult
        if let user {
            let (exe, a) = user.wrap("/usr/bin/curl", args)
            r = try run(exe, a)
        } else {
            r = try run("/usr/bin/curl", args)
        }
        guard r.status == 0 else { throw TestError.failed("curl failed (\(r.status)): \(r.stderr)") }
        let text = r.out
        guard let nl = text.lastIndex(of: "\n"), let code = Int(text[text.index(after: nl)...]) else {
            throw TestError.failed("curl output without status: \(text)")
        }
        return (code, String(text[..<nl]))
    }
}

/// Parses a JSON object body.
func json(_ s: String) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(s.utf8))) as? [String: Any] ?? [:]
}

func errorCode(_ s: String) -> String? {
    (json(s)["error"] as? [String: Any])?["code"] as? String
}

func fileBytes(_ path: String) -> [UInt8] {
    (try? [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))) ?? []
}

func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty, haystack.count >= needle.count else { return false }
    let first = needle[0]
    var i = 0
    while i <= haystack.count - needle.count {
        if haystack[i] == first && haystack[i..<(i + needle.count)].elementsEqual(needle) { return true }
        i += 1
    }
    return false
}

/// Polls `condition` every 50 ms until it holds or `seconds` pass; the last answer.
func waitUntil(_ seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(50_000)
    }
    return condition()
}
