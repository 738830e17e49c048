public import CofferCore
import Foundation
public import GRDB
import PostgresNIO

/// What the engine needs to know of a database error without knowing the engine.
public enum StoreFailure: Sendable, Equatable {
    /// The database cannot take a write now (a full disk, an I/O error, a read-only
    /// file, a server that is down): every write, and so every audited request, fails
    /// closed until it can.
    case unwritable(String)
    /// Anything else (a constraint, a programming error): the request fails, nothing more.
    case other
}

extension Store {
    public static func classify(_ error: any Error) -> StoreFailure {
        if let e = error as? PSQLError {
            if e.code != .server { return .unwritable("the database server is unreachable") }
            let state = e.serverInfo?[.sqlState] ?? ""
            // 08: connection; 53: resources (disk, memory, connections); 57P: shutdown; 25006: read-only
            if state.hasPrefix("08") || state.hasPrefix("53") || state.hasPrefix("57P") || state == "25006" {
                return .unwritable("the database server cannot take writes (\(state))")
            }
            return .other
        }
        if PostgresPool.isConnectionError(error) && !(error is DatabaseError) && !(error is CofferError) && !(error is SQLError) {
            return .unwritable("the database server is unreachable")
        }
        if let e = error as? DatabaseError {
            switch e.resultCode {
            case .SQLITE_FULL: return .unwritable("the disk is full")
            case .SQLITE_READONLY: return .unwritable("the database is read-only")
            case .SQLITE_IOERR: return .unwritable("I/O error")
            default: return .other
            }
        }
        return .other
    }

    /// A short description for the log and the health answer (no values, no SQL).
    public static func describe(_ error: any Error) -> String {
        if case .unwritable(let reason) = classify(error) { return reason }
        if let e = error as? DatabaseError { return "database error \(e.resultCode.rawValue)" }
        if let e = error as? SQLError { return e.message }
        if let e = error as? PSQLError, let info = e.serverInfo {
            // the server's message and SQLSTATE (no detail: a constraint's detail quotes values)
            return "PostgreSQL \(info[.sqlState] ?? "?"): \(info[.message] ?? "")"
        }
        if let e = error as? PSQLError {
            // no answer from a server: what went wrong on the way (never a password: none is in these)
            return "PostgreSQL \(e.code)" + (e.underlying.map { ": \(String(describing: $0).prefix(200))" } ?? "")
        }
        return "\(type(of: error))"
    }

    /// What a backup manifest says of the database it carries.
    public struct SnapshotSummary: Sendable {
        public let keyIDs: [String]
        public let auditHeadSeq: Int64
        public let auditHeadHash: Data
        public let secrets: Int
        public let versions: Int
        public let tokens: Int
    }

    /// A consistent online copy of the whole database into `path` (SQLite's VACUUM
    /// INTO), and the summary read back from the copy itself.
    public func snapshot(to path: String) throws -> SnapshotSummary {
        guard let sqlite = pool.sqlite else {
            throw CofferError(.conflict, "online backup is for the SQLite store",
                              hint: "back up PostgreSQL with its own tools (pg_dump, base backups)")
        }
        try sqlite.writeWithoutTransaction { db in try db.execute(sql: "VACUUM INTO ?", arguments: [path]) }
        chmod(path, 0o600)
        var config = GRDB.Configuration()
        config.readonly = true
        let copy = try DatabaseQueue(path: path, configuration: config)
        defer { try? copy.close() }
        return try copy.read { g in
            let db = Database(connection: .sqlite(g))
            let head = try Row.fetchOne(db, sql: "SELECT seq, hash FROM audit_event ORDER BY seq DESC LIMIT 1")
            return SnapshotSummary(
                keyIDs: try String.fetchAll(db, sql: "SELECT key_id FROM keyring ORDER BY created_at, key_id"),
                auditHeadSeq: head?["seq"] ?? 0, auditHeadHash: (head?["hash"] as Data?) ?? Data(),
                secrets: try Int.fetchOne(db, sql: "SELECT count(*) FROM secret") ?? 0,
                versions: try Int.fetchOne(db, sql: "SELECT count(*) FROM secret_version") ?? 0,
                tokens: try Int.fetchOne(db, sql: "SELECT count(*) FROM token") ?? 0)
        }
    }

    /// The hash of one audit event (nil when there is no such event).
    public func auditEventHash(seq: Int64) throws -> Data? {
        try pool.read { db in try Row.fetchOne(db, sql: "SELECT hash FROM audit_event WHERE seq = ?", arguments: [seq])?["hash"] }
    }
}

extension Store {
    /// GRDB's own pool under a SQLite store (nil on PostgreSQL): for the tests that
    /// change the file behind the daemon's back, and for SQLite-only tools.
    public var sqlitePool: DatabasePool? { pool.sqlite }
}

extension Store {
    /// True for the embedded SQLite store: a read is a short local call that may run
    /// on an event loop. False for PostgreSQL, whose calls wait on the network.
    public var isLocal: Bool { pool.sqlite != nil }
}
