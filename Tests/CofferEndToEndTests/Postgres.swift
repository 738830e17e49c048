import Foundation
import Testing

/// A real PostgreSQL 15 for the tests: `initdb` into a temporary directory and
/// `pg_ctl start` listening only on a Unix socket there, run as the unprivileged
/// `coffer-test` user (PostgreSQL refuses to run as root). One server per test
/// process, started on first use and stopped when the process exits.
///
/// COFFER_TEST_BACKEND=postgres runs every `Daemon` on it (a fresh database each),
/// so the whole end-to-end suite runs against both backends (.ci/run does both).
enum PostgresServer {
    static let bin = "/usr/lib/postgresql/15/bin"
    static let user = "coffer-test"
    static let port = 5439

    struct Cluster: Sendable {
        let dir: String
        var socketDir: String { dir }
        var socketFile: String { dir + "/.s.PGSQL.\(PostgresServer.port)" }
    }

    /// Whether the suite's daemons run on PostgreSQL.
    static var enabled: Bool { ProcessInfo.processInfo.environment["COFFER_TEST_BACKEND"] == "postgres" }

    static let shared: Result<Cluster, TestError> = {
        do { return .success(try start()) } catch let e as TestError { return .failure(e) } catch { return .failure(.failed("\(error)")) }
    }()

    static func cluster() throws -> Cluster { try shared.get() }

    static func start() throws -> Cluster {
        guard FileManager.default.isExecutableFile(atPath: bin + "/initdb") else {
            throw TestError.failed("PostgreSQL 15 is not installed (\(bin)/initdb); .ci/run installs the postgresql package")
        }
        var template = Array("/tmp/cfpg.XXXXXX".utf8CString)
        guard let d = mkdtemp(&template) else { throw TestError.failed("mkdtemp failed") }
        let dir = String(cString: d)
        guard let pw = getpwnam(user) else { throw TestError.failed("no user \(user) (.ci/run creates it)") }
        chown(dir, pw.pointee.pw_uid, pw.pointee.pw_gid)
        chmod(dir, 0o755)
        let initdb = try run("/usr/sbin/runuser", ["-u", user, "--", bin + "/initdb", "-D", dir + "/data", "-U", "coffer", "--auth=trust",
                                                   "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"], cwd: dir, timeout: 120)
        guard initdb.status == 0 else { throw TestError.failed("initdb failed: \(initdb.stderr)") }
        // fsync stays on: the kill -9 tests count on acknowledged writes being durable
        let opts = "-k \(dir) -c listen_addresses='' -p \(port) -c max_connections=400 -c shared_buffers=64MB"
        let start = try spawn(["/usr/sbin/runuser", "-u", user, "--", bin + "/pg_ctl", "-D", dir + "/data", "-l", dir + "/server.log",
                               "-o", opts, "-w", "-t", "60", "start"], log: dir + "/pg_ctl.log")
        guard start == 0 else { throw TestError.failed("pg_ctl start failed (\(start)); see \(dir)/pg_ctl.log") }
        let cluster = Cluster(dir: dir)
        atexit {
            guard case .success(let c) = PostgresServer.shared else { return }
            _ = try? PostgresServer.spawn(["/usr/sbin/runuser", "-u", PostgresServer.user, "--", PostgresServer.bin + "/pg_ctl", "-D",
                                           c.dir + "/data", "-m", "immediate", "-w", "stop"], log: "/dev/null")
            // COFFER_TEST_PG_KEEP=1 keeps the data directory and server.log for a post-mortem
            if ProcessInfo.processInfo.environment["COFFER_TEST_PG_KEEP"] == nil { try? FileManager.default.removeItem(atPath: c.dir) }
        }
        return cluster
    }

    /// Runs a command whose children outlive it (pg_ctl leaves the server running),
    /// with every descriptor above stderr closed first: Foundation's Process waits
    /// for every holder of its internal descriptors, and the server would hold them
    /// for ever. Its exit status.
    static func spawn(_ argv: [String], log: String) throws -> Int32 {
        let closer = "import os, sys; os.closerange(3, 65536); os.execv(sys.argv[1], sys.argv[1:])"
        let r = try run("/usr/bin/python3", ["-c", closer] + argv, timeout: 120)
        if let h = FileHandle(forWritingAtPath: log) {
            h.seekToEndOfFile()
            h.write(Data((r.out + r.stderr).utf8))
            try? h.close()
        } else {
            FileManager.default.createFile(atPath: log, contents: Data((r.out + r.stderr).utf8))
        }
        return r.status
    }

    /// Stops the server (fast shutdown: connections are cut), for the outage tests.
    static func stop() throws {
        let c = try cluster()
        let r = try spawn(["/usr/sbin/runuser", "-u", user, "--", bin + "/pg_ctl", "-D", c.dir + "/data", "-m", "fast", "-w", "stop"],
                          log: c.dir + "/pg_ctl.log")
        guard r == 0 else { throw TestError.failed("pg_ctl stop failed (\(r))") }
    }

    /// Starts it again after `stop`.
    static func restart() throws {
        let c = try cluster()
        let opts = "-k \(c.dir) -c listen_addresses='' -p \(port) -c max_connections=400 -c shared_buffers=64MB"
        let r = try spawn(["/usr/sbin/runuser", "-u", user, "--", bin + "/pg_ctl", "-D", c.dir + "/data", "-l", c.dir + "/server.log",
                           "-o", opts, "-w", "-t", "60", "start"], log: c.dir + "/pg_ctl.log")
        guard r == 0 else { throw TestError.failed("pg_ctl start failed (\(r))") }
    }

    /// Runs SQL as the superuser (psql over the socket); stdout.
    @discardableResult
    static func psql(_ sql: String, database: String = "postgres") throws -> String {
        let c = try cluster()
        let r = try run("/usr/bin/psql", ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", c.socketDir, "-p", "\(port)", "-U", "coffer",
                                          "-d", database, "-c", sql])
        guard r.status == 0 else { throw TestError.failed("psql failed: \(r.stderr)") }
        return r.out.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A new, empty database; its name.
    static func createDatabase() throws -> String {
        let name = "cf_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(16)
        try psql("CREATE DATABASE \(name)")
        return String(name)
    }

    static func dropDatabase(_ name: String) {
        _ = try? psql("DROP DATABASE IF EXISTS \(name) WITH (FORCE)")
    }

    /// The `[storage]` keys and `[storage.postgres]` table for a daemon on `database`.
    static func config(database: String) throws -> (storage: String, table: String) {
        let c = try cluster()
        return ("backend = \"postgres\"", """
            [storage.postgres]
            socket = "\(c.socketFile)"
            user = "coffer"
            database = "\(database)"
            """)
    }
}

/// A PostgreSQL server of one test's own (the outage tests stop and start it, which
/// the shared one must never be).
final class OwnPostgres {
    let dir: String
    let port: Int
    var socketFile: String { dir + "/.s.PGSQL.\(port)" }

    init(port: Int) throws {
        var template = Array("/tmp/cfpo.XXXXXX".utf8CString)
        guard let d = mkdtemp(&template) else { throw TestError.failed("mkdtemp failed") }
        dir = String(cString: d)
        self.port = port
        guard let pw = getpwnam(PostgresServer.user) else { throw TestError.failed("no user \(PostgresServer.user)") }
        chown(dir, pw.pointee.pw_uid, pw.pointee.pw_gid)
        chmod(dir, 0o755)
        let initdb = try run("/usr/sbin/runuser", ["-u", PostgresServer.user, "--", PostgresServer.bin + "/initdb", "-D", dir + "/data", "-U", "coffer",
                                                   "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"], cwd: dir, timeout: 120)
        guard initdb.status == 0 else { throw TestError.failed("initdb failed: \(initdb.stderr)") }
        try start()
    }

    deinit {
        _ = try? stop(mode: "immediate")
        try? FileManager.default.removeItem(atPath: dir)
    }

    func start() throws {
        let r = try PostgresServer.spawn(["/usr/sbin/runuser", "-u", PostgresServer.user, "--", PostgresServer.bin + "/pg_ctl", "-D", dir + "/data",
                                          "-l", dir + "/server.log", "-o", "-k \(dir) -c listen_addresses='' -p \(port)", "-w", "-t", "60", "start"],
                                         log: dir + "/pg_ctl.log")
        guard r == 0 else { throw TestError.failed("pg_ctl start failed (\(r))") }
    }

    /// Stops the server: "fast" cuts every connection and rolls back what is open.
    func stop(mode: String = "fast") throws {
        let r = try PostgresServer.spawn(["/usr/sbin/runuser", "-u", PostgresServer.user, "--", PostgresServer.bin + "/pg_ctl", "-D", dir + "/data",
                                          "-m", mode, "-w", "stop"], log: dir + "/pg_ctl.log")
        guard r == 0 else { throw TestError.failed("pg_ctl stop failed (\(r))") }
    }

    @discardableResult
    func psql(_ sql: String, database: String = "postgres") throws -> String {
        let r = try run("/usr/bin/psql", ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", dir, "-p", "\(port)", "-U", "coffer", "-d", database, "-c", sql])
        guard r.status == 0 else { throw TestError.failed("psql failed: \(r.stderr)") }
        return r.out.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A daemon's config on `database` of this server.
    func daemonConfig(_ database: String) -> String {
        "[storage]\nbackend = \"postgres\"\n[storage.postgres]\nsocket = \"\(socketFile)\"\nuser = \"coffer\"\ndatabase = \"\(database)\"\n"
    }
}
