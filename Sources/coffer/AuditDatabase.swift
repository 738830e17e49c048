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
        var events: [AuditEvent] = []
        try query(db, """
            SELECT seq, time, request_id, peer_pid, peer_uid, peer_user, token_accessor, method, action, path,
                   decision, rule, outcome, status, error_code, prev_hash, hash
            FROM audit_event ORDER BY seq
            """) { s in
            events.append(AuditEvent(
                seq: sqlite3_column_int64(s, 0), time: sqlite3_column_int64(s, 1), requestID: text(s, 2) ?? "",
                peerPID: Int32(truncatingIfNeeded: sqlite3_column_int64(s, 3)),
                peerUID: UInt32(truncatingIfNeeded: sqlite3_column_int64(s, 4)), peerUser: text(s, 5),
                tokenAccessor: text(s, 6), method: text(s, 7) ?? "", action: text(s, 8) ?? "", path: text(s, 9),
                decision: text(s, 10) ?? "", rule: text(s, 11), outcome: text(s, 12) ?? "",
                status: Int(sqlite3_column_int64(s, 13)), errorCode: text(s, 14), prevHash: blob(s, 15), hash: blob(s, 16)))
        }
        var checkpoints: [AuditCheckpoint] = []
        try query(db, "SELECT seq, hash, time, signature FROM audit_checkpoint ORDER BY seq") { s in
            checkpoints.append(AuditCheckpoint(seq: sqlite3_column_int64(s, 0), hash: blob(s, 1),
                                               time: sqlite3_column_int64(s, 2), signature: blob(s, 3)))
        }
        return (events, checkpoints)
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
