import CofferCore
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import Synchronization

/// The PostgreSQL engine under the store: a fixed pool of connections on a small
/// event-loop group of its own. The store's calls are synchronous (as with SQLite),
/// so each waits on its connection's future from the caller's thread; that thread is
/// never one of this group's loops.
final class PostgresPool: Sendable {
    let target: PostgresTarget
    private let group: MultiThreadedEventLoopGroup
    private let idle = Mutex<[PostgresConnection]>([])
    private let slots: DispatchSemaphore
    private let writer = NSLock()
    private let nextID = Atomic<Int>(1)
    private let logger: Logger
    private let tlsContext: NIOSSLContext?
    /// SQL text in the store's dialect (SQLite's `?`) to PostgreSQL's (`$1`), once per text.
    private let translated = Mutex<[String: String]>([:])

    init(_ target: PostgresTarget) throws {
        self.target = target
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        slots = DispatchSemaphore(value: target.poolSize)
        var logger = Logger(label: "coffer.postgres")
        logger.logLevel = .critical
        self.logger = logger
        switch target.tls {
        case .disable:
            tlsContext = nil
        case .require, .verifyFull:
            var tls = TLSConfiguration.makeClientConfiguration()
            if target.tls == .require { tls.certificateVerification = .none }
            if let ca = target.caFile { tls.trustRoots = .file(ca) }
            tlsContext = try NIOSSLContext(configuration: tls)
        }
    }

    deinit {
        instanceLock.withLock { if let c = $0 { c.close().whenComplete { _ in _ = c } } }
        listener.withLock { if let c = $0 { c.close().whenComplete { _ in _ = c } } }
        jobLock.withLock { if let c = $0 { c.close().whenComplete { _ in _ = c } } }
        for c in idle.withLock({ $0 }) { c.close().whenComplete { _ in _ = c } }
        try? group.syncShutdownGracefully()
    }

    private func password() throws -> String? {
        guard let file = target.passwordFile else { return nil }
        guard let data = FileManager.default.contents(atPath: file) else {
            throw CofferError(.config, "cannot read the PostgreSQL password file \(file)")
        }
        var st = stat()
        guard stat(file, &st) == 0, st.st_mode & 0o077 == 0 else {
            throw CofferError(.config, "the PostgreSQL password file \(file) is readable by others", hint: "chmod 600 \(file)")
        }
        guard data.count <= 1024 else {
            throw CofferError(.config, "the PostgreSQL password file \(file) is over 1 KiB", hint: "it holds the password only, on one line")
        }
        var s = String(decoding: data, as: UTF8.self)
        while s.last == "\n" || s.last == "\r" { s.removeLast() }
        return s
    }

    private func connect() throws -> PostgresConnection {
        var config: PostgresConnection.Configuration
        switch target.endpoint {
        case .socket(let path):
            config = .init(unixSocketPath: path, username: target.user, password: try password(), database: target.database)
        case .tcp(let host, let port):
            let tls: PostgresConnection.Configuration.TLS = tlsContext.map { .require($0) } ?? .disable
            config = .init(host: host, port: port, username: target.user, password: try password(), database: target.database, tls: tls)
            if target.tls == .require { config.options.tlsServerName = nil }
        }
        config.options.connectTimeout = .seconds(5)
        let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        let c = try PostgresPool.bounded(PostgresConnection.connect(on: group.next(), configuration: config, id: id, logger: logger), seconds: 10)
        do {
            try prepare(c)
        } catch {
            c.close().whenComplete { _ in _ = c }
            throw error
        }
        return c
    }

    /// Every new connection: Coffer's schema first on the search path (pg_catalog stays
    /// ahead of it, implicitly), whatever the database or role set; and triggers and
    /// foreign keys in force (session_replication_role set to replica on the database
    /// or role would switch off both, and with them the generation every host follows).
    private func prepare(_ c: PostgresConnection) throws {
        let quoted = "\"" + target.schema + "\""
        _ = try PostgresPool.bounded(c.query(PostgresQuery(unsafeSQL: "SET search_path = \(quoted)"), logger: logger), closing: c)
        let rows = try session(c).query("SELECT current_setting('session_replication_role')", [])
        guard let v = rows.first?.values.first, case .string("origin") = v else {
            throw CofferError(.integrity, "the PostgreSQL session_replication_role is not 'origin' (set on the database or role?): triggers and foreign keys would not run",
                              hint: "ALTER DATABASE/ROLE ... RESET session_replication_role")
        }
    }

    /// Runs `body` on a connection of the pool (waiting for one when all are out). A
    /// connection that failed is closed, not put back.
    func withConnection<T>(_ body: (PostgresConnection) throws -> T) throws -> T {
        slots.wait()
        defer { slots.signal() }
        var conn = idle.withLock { $0.popLast() }
        if let c = conn, c.isClosed { conn = nil }
        let c = try conn ?? connect()
        do {
            let result = try body(c)
            if !c.isClosed { idle.withLock { $0.append(c) } }
            return result
        } catch {
            if !c.isClosed {
                if PostgresPool.isConnectionError(error) {
                    c.close().whenComplete { _ in _ = c }  // kept until closed (postgres-nio asserts it)
                } else {
                    idle.withLock { $0.append(c) }
                }
            }
            throw error
        }
    }

    func session(_ c: PostgresConnection) -> PostgresSession { PostgresSession(connection: c, pool: self) }

    /// A read: one snapshot for all its queries.
    func read<T>(_ body: (Database) throws -> T) throws -> T {
        try withConnection { c in
            let s = session(c)
            try s.simple("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            do {
                let r = try body(Database(connection: .postgres(s)))
                try s.simple("COMMIT")
                return r
            } catch {
                try? s.simple("ROLLBACK")
                throw error
            }
        }
    }

    /// One statement on its own (autocommit): the generation check per request.
    func queryOnce(_ sql: String) throws -> [Row] {
        try withConnection { c in try session(c).query(sql, []) }
    }

    /// The connection that LISTENs for other instances' changes (its own, outside
    /// the pool). nil until `listen` succeeds, and again once it closed.
    private let listener = Mutex<PostgresConnection?>(nil)

    /// Whether a listening connection is up.
    var isListening: Bool { listener.withLock { c in c.map { !$0.isClosed } ?? false } }

    /// LISTENs on `channel` on a connection of its own; `notified` runs (on the
    /// pool's event loop) for each notification. A connection that was listening and
    /// closed is replaced.
    func listen(channel: String, notified: @escaping @Sendable (_ payload: String) -> Void) throws {
        if isListening { return }
        let c = try connect()
        c.addListener(channel: channel) { _, n in notified(n.payload) }
        _ = try PostgresPool.bounded(c.query(PostgresQuery(unsafeSQL: "LISTEN \(channel)"), logger: logger), closing: c)
        let old = listener.withLock { l -> PostgresConnection? in defer { l = c }; return l }
        if let old { old.close().whenComplete { _ in _ = old } }
    }

    /// A write: one transaction, and one writer at a time across every instance (a
    /// transaction-scoped advisory lock), as SQLite's single writer: the store's
    /// read-then-write steps (check-and-set, use counts, thresholds, the audit head)
    /// are decided inside it, by the database, for all hosts.
    func write<T>(_ body: (Database) throws -> T) throws -> T {
        // One writer in this process from BEGIN to the last commit callback (as GRDB's
        // writer queue): the callbacks (the trusted audit head) run before the next
        // transaction of this process reads what they set.
        writer.lock()
        defer { writer.unlock() }
        return try withConnection { c in
            let s = session(c)
            try s.simple("BEGIN ISOLATION LEVEL READ COMMITTED")
            do {
                try s.simple("SELECT pg_advisory_xact_lock(\(PostgresPool.writerLock))")
                let r = try body(Database(connection: .postgres(s)))
                try s.simple("COMMIT")
                for f in s.onCommit { f(Database(connection: .postgres(s))) }
                return r
            } catch {
                try? s.simple("ROLLBACK")
                throw error
            }
        }
    }

    func writeWithoutTransaction<T>(_ body: (Database) throws -> T) throws -> T {
        try withConnection { c in try body(Database(connection: .postgres(session(c)))) }
    }

    /// The session lock a serving daemon holds on its instance id for as long as it
    /// runs (its own connection): two daemons started with one state directory (one
    /// instance id) would append to one chain, each finding the other's events
    /// "changed behind its back". Daemons with different ids share the database.
    private let instanceLock = Mutex<PostgresConnection?>(nil)

    func holdInstanceLock(instance: String) throws {
        let c = try connect()
        // the two-int form: a key space apart from the writers' bigint lock
        let rows = try session(c).query("SELECT pg_try_advisory_lock(6516582, hashtext(?))", [instance.databaseValue].asArguments)
        guard let v = rows.first?.values.first, case .int64(1) = v else {
            c.close().whenComplete { _ in _ = c }  // kept until closed (postgres-nio asserts it)
            throw CofferError(.config, "another cofferd is serving the PostgreSQL database \(target) as instance '\(instance)'",
                              hint: "each host's cofferd needs a state directory of its own (its instance id is in it)")
        }
        instanceLock.withLock { $0 = c }
    }

    /// While serving: the instance lock is still held. Its connection may have ended (a
    /// server restart, a terminated backend, an idle timeout): it is taken again, and
    /// if another daemon took it meanwhile, this one must write nothing more.
    func ensureInstanceLock(instance: String) throws {
        guard instanceLock.withLock({ $0.map { $0.isClosed } ?? false }) else { return }
        let c: PostgresConnection
        do { c = try connect() } catch { return }  // unreachable: the requests fail closed on their own
        let rows = try session(c).query("SELECT pg_try_advisory_lock(6516582, hashtext(?))", [instance.databaseValue].asArguments)
        guard let v = rows.first?.values.first, case .int64(1) = v else {
            c.close().whenComplete { _ in _ = c }
            throw CofferError(.auditUnavailable, "another cofferd took over instance '\(instance)' while this one's session was gone; this one writes nothing more",
                              hint: "each host's cofferd needs a state directory of its own")
        }
        instanceLock.withLock { $0 = c }
    }

    /// A job only one instance runs at a time (the rotation's re-wrap): a session lock
    /// on a connection of its own, held while the job runs; an instance that dies
    /// loses it with its connection, and another takes the job over.
    private let jobLock = Mutex<PostgresConnection?>(nil)

    func claimJob(_ job: Int32) throws -> Bool {
        if jobLock.withLock({ $0.map { !$0.isClosed } ?? false }) { return true }
        let c = try connect()
        let rows = try session(c).query("SELECT pg_try_advisory_lock(6516583, CAST(? AS INTEGER))", [Int64(job).databaseValue].asArguments)
        guard let v = rows.first?.values.first, case .int64(1) = v else {
            c.close().whenComplete { _ in _ = c }
            return false
        }
        jobLock.withLock { $0 = c }
        return true
    }

    func releaseJob() {
        jobLock.withLock { if let c = $0 { c.close().whenComplete { _ in _ = c } }; $0 = nil }
    }

    /// The advisory lock every writing transaction holds ("coffer" in ASCII).
    static let writerLock: Int64 = 0x636F_6666_6572

    /// Runs a blocking transaction off the cooperative pool (its threads are few).
    static func offload<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { cont in
            DispatchQueue.global().async { cont.resume(with: Result { try body() }) }
        }
    }

    func translate(_ sql: String) -> String {
        if let t = translated.withLock({ $0[sql] }) { return t }
        let t = PostgresPool.placeholders(sql)
        translated.withLock { if $0.count < 4096 { $0[sql] = t } }
        return t
    }

    /// `?` to `$n` and `?NNN` to `$NNN` (SQLite's numbered form: the same argument
    /// again; a bare `?` after one takes the highest number so far plus one, as in
    /// SQLite), outside quoted text and names.
    static func placeholders(_ sql: String) -> String {
        let chars = Array(sql)
        var out = ""
        out.reserveCapacity(chars.count + 16)
        var highest = 0
        var quote: Character?
        var i = 0
        while i < chars.count {
            let ch = chars[i]
            i += 1
            if let q = quote {
                out.append(ch)
                if ch == q { quote = nil }
                continue
            }
            switch ch {
            case "'", "\"":
                quote = ch
                out.append(ch)
            case "?":
                var digits = ""
                while i < chars.count, chars[i].isASCII, chars[i].isNumber { digits.append(chars[i]); i += 1 }
                let n = Int(digits) ?? highest + 1
                highest = max(highest, n)
                out += "$\(n)"
            default:
                out.append(ch)
            }
        }
        return out
    }

    /// How long one statement's answer is awaited. A server that goes away in the
    /// middle of a statement can leave its future unanswered: without a bound, the
    /// writer (and with it the audit writer, and every request waiting for its event)
    /// would wait for ever. Past it the connection is closed and the call fails as
    /// "unreachable" (503), never as an answer.
    static let statementTimeout: Int64 = 15

    struct Timeout: Error, CustomStringConvertible {
        var description: String { "no answer from the PostgreSQL server in time" }
    }

    /// Waits for `future` at most `seconds`; on timeout closes `closing` (its state is
    /// unknown) and throws `Timeout`.
    static func bounded<T>(_ future: EventLoopFuture<T>, seconds: Int64 = statementTimeout, closing: PostgresConnection? = nil) throws -> T {
        let promise = future.eventLoop.makePromise(of: T.self)
        future.cascade(to: promise)
        let timer = future.eventLoop.scheduleTask(in: .seconds(seconds)) { promise.fail(Timeout()) }
        do {
            let value = try promise.futureResult.wait()
            timer.cancel()
            return value
        } catch let e as Timeout {
            if let c = closing { c.close().whenComplete { _ in _ = c } }
            throw e
        }
    }

    static func isConnectionError(_ error: any Error) -> Bool {
        if error is Timeout { return true }
        guard let e = error as? PSQLError else { return error is ChannelError || error is IOError || error is NIOConnectionError }
        switch e.code {
        case .server: return false
        default: return true
        }
    }
}

/// One connection for the length of one read or transaction.
final class PostgresSession {
    let connection: PostgresConnection
    unowned let pool: PostgresPool
    var changes = 0
    var onCommit: [@Sendable (Database) -> Void] = []

    init(connection: PostgresConnection, pool: PostgresPool) {
        self.connection = connection
        self.pool = pool
    }

    /// Statements without arguments, possibly several (the schema), one at a time.
    func simple(_ sql: String) throws {
        for statement in PostgresSession.split(sql) {
            _ = try PostgresPool.bounded(connection.query(PostgresQuery(unsafeSQL: statement), logger: PostgresSession.logger), closing: connection)
        }
    }

    static let logger = Logger(label: "coffer.postgres")

    /// Splits at `;` outside quotes (and `$$` bodies).
    static func split(_ sql: String) -> [String] {
        var out: [String] = []
        var cur = ""
        var quote: Character?
        var dollar = false
        var last: Character = " "
        for ch in sql {
            defer { last = ch }
            if dollar {
                cur.append(ch)
                if ch == "$" && last == "$" { dollar = false }
            } else if let q = quote {
                cur.append(ch)
                if ch == q { quote = nil }
            } else if ch == "$" && last == "$" {
                dollar = true
                cur.append(ch)
            } else if ch == "'" || ch == "\"" {
                quote = ch
                cur.append(ch)
            } else if ch == ";" {
                out.append(cur)
                cur = ""
            } else {
                cur.append(ch)
            }
        }
        out.append(cur)
        return out.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty }
    }

    func run(_ sql: String, _ arguments: StatementArguments) throws {
        if arguments.isEmpty, sql.contains(";") {
            try simple(sql)
            return
        }
        _ = try query(sql, arguments)
    }

    func query(_ sql: String, _ arguments: StatementArguments) throws -> [Row] {
        var binds = PostgresBindings(capacity: arguments.values.count)
        for v in arguments.values {
            switch v {
            case .null: binds.appendNull()
            case .int64(let i): try binds.append(i)
            case .double(let d): try binds.append(d)
            case .string(let s): try binds.append(s)
            case .blob(let b): try binds.append(ByteBuffer(bytes: b))
            }
        }
        let result = try PostgresPool.bounded(connection.query(PostgresQuery(unsafeSQL: pool.translate(sql), binds: binds), logger: PostgresSession.logger),
                                              closing: connection)
        changes = result.metadata.rows ?? 0
        guard let first = result.rows.first else { return [] }
        let names = first.map(\.columnName)
        return try result.rows.map { row in Row(columns: names, values: try row.map(PostgresSession.value)) }
    }

    static func value(_ cell: PostgresCell) throws -> DatabaseValue {
        guard cell.bytes != nil else { return .null }
        switch cell.dataType {
        case .int8: return .int64(try cell.decode(Int64.self))
        case .int4: return .int64(Int64(try cell.decode(Int32.self)))
        case .int2: return .int64(Int64(try cell.decode(Int16.self)))
        case .bool: return .int64(try cell.decode(Bool.self) ? 1 : 0)
        case .float8, .float4: return .double(try cell.decode(Double.self))
        case .bytea: return .blob(try cell.decode(Data.self))
        case .numeric:
            let s = try cell.decode(String.self)
            if let i = Int64(s) { return .int64(i) }
            return .double(Double(s) ?? .nan)
        default: return .string(try cell.decode(String.self))
        }
    }
}

extension Array where Element == DatabaseValue {
    var asArguments: StatementArguments { StatementArguments(self) }
}
