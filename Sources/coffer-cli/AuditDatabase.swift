import CSQLite
import CofferAudit
import CofferCore
import Foundation

/// Reads the audit chain straight from a database file, read-only, with SQLite's C
/// API: the CLI does not link the daemon's storage layer (GRDB), which kept its
/// start-up (and every `coffer secret get`) measurably slower.
enum AuditDatabase {
    static func readChain(path: String) throws -> (events: [AuditEvent], checkpoints: [AuditCheckpoint]) {
        var db: OpaquePointer?
        guard sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, nil) == SQLITE_OK, let db else {
            throw CofferError(.invalidParameter, "cannot open \(path) read-only")
        }
        defer { sqlite3_close(db) }
        sqlite3_busy_timeout(db, 5000)
        // A database not yet upgraded by the daemon lacks the newer columns: read
        // them as their defaults (no MAC, format 1, no details).
        var present = Set<String>()
        try query(db, "SELECT name FROM pragma_table_info('audit_event')") { s in if let n = text(s, 0) { present.insert(n) } }
        let defaults = ["mac": "NULL", "format": "1", "details": "NULL", "chain": "''"]
        let columns = AuditEvent.columns.map { c in present.contains(c) ? c : "\(defaults[c] ?? "NULL") AS \(c)" }
        var events: [AuditEvent] = []
        try query(db, "SELECT \(columns.joined(separator: ", ")) FROM audit_event ORDER BY seq") { s in
            events.append(AuditEvent(row: Columns(stmt: s)))
        }
        var checkpoints: [AuditCheckpoint] = []
        try query(db, "SELECT seq, hash, time, signature FROM audit_checkpoint ORDER BY seq") { s in
            checkpoints.append(AuditCheckpoint(seq: sqlite3_column_int64(s, 0), hash: blob(s, 1),
                                               time: sqlite3_column_int64(s, 2), signature: blob(s, 3)))
        }
        return (events, checkpoints)
    }

    /// SQLite's C API row, read in `AuditEvent.columns` order.
    struct Columns: AuditRowReader {
        let stmt: OpaquePointer
        func integer(_ i: Int) -> Int64 { sqlite3_column_int64(stmt, Int32(i)) }
        func text(_ i: Int) -> String? { AuditDatabase.text(stmt, Int32(i)) }
        func blob(_ i: Int) -> [UInt8]? {
            sqlite3_column_type(stmt, Int32(i)) == SQLITE_NULL ? nil : AuditDatabase.blob(stmt, Int32(i))
        }
    }

    static func query(_ db: OpaquePointer, _ sql: String, _ row: (OpaquePointer) -> Void) throws {
        var stmt: OpaquePointer?
        guard sqlite3_prepare_v2(db, sql, -1, &stmt, nil) == SQLITE_OK, let stmt else {
            throw CofferError(.invalidParameter, "not a Coffer database: \(String(cString: sqlite3_errmsg(db)))")
        }
        defer { sqlite3_finalize(stmt) }
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { return }
            guard rc == SQLITE_ROW else { throw CofferError(.invalidParameter, "cannot read: \(String(cString: sqlite3_errmsg(db)))") }
            row(stmt)
        }
    }

    static func text(_ s: OpaquePointer, _ i: Int32) -> String? {
        guard sqlite3_column_type(s, i) != SQLITE_NULL, let p = sqlite3_column_text(s, i) else { return nil }
        return String(cString: p)
    }

    static func blob(_ s: OpaquePointer, _ i: Int32) -> [UInt8] {
        let n = Int(sqlite3_column_bytes(s, i))
        guard n > 0, let p = sqlite3_column_blob(s, i) else { return [] }
        return [UInt8](UnsafeRawBufferPointer(start: p, count: n))
    }
}
