public import CofferAudit
public import CofferCore
public import Foundation

/// A key rotation in progress: every version not under `targetKeyID` is re-wrapped
/// under it, in batches, by a background job that resumes where it stopped.
public struct RotationRecord: Sendable {
    public var targetKeyID: String
    public var startedAt: Int64
    public var startedBy: String
    public var total: Int
    public var done: Int
}

/// One version to re-wrap.
public struct RewrapRow: Sendable {
    public var secretID: Int64
    public var path: String
    public var version: Int
    public var keyID: String
    public var wrappedKey: Data
    public var ciphertext: Data
}

extension Store {
    /// A rotation's first step, in one transaction with its audit event: a new root key
    /// (its check replaces the old one; every keyring key, signing key and the audit
    /// signing key re-sealed under it; the holder re-sealed), a new active data key
    /// (sealed under the new root), and the rotation row the background job follows.
    public func rotateRoot(oldID: String, newID: String, check: Data, now: Int64, keys: [(keyID: String, sealed: Data)], auditKey: Data?,
                           signingKeys: [(keyID: String, sealed: Data)], holder: HolderRecord, expectedUnsealKeyID: String, newDataKey: KeyRecord,
                           startedBy: String, guard tokenGuard: TokenGuard?, ticket: AuditTicket) async throws -> RotationRecord {
        let mac = try recordMAC()
        let (event, record) = try await pool.write { db -> (AuditEvent?, RotationRecord) in
            try tokenGuard?.check(db)
            let current = try String.fetchOne(db, sql: "SELECT unseal_key_id FROM key_holder WHERE id = 1")
            guard current == nil || current == expectedUnsealKeyID else { throw CofferError(.conflict, "the key holder changed meanwhile") }
            try Store.moveRoot(db, oldID: oldID, newID: newID, check: check, now: now, keys: keys, auditKey: auditKey, signingKeys: signingKeys)
            try Store.writeHolder(db, holder)
            let demoted = try String.fetchAll(db, sql: "SELECT key_id FROM keyring WHERE purpose = 'data' AND state = 'active'")
            try db.execute(sql: "UPDATE keyring SET state = 'decrypt-only' WHERE purpose = 'data' AND state = 'active'")
            try Store.insertKey(db, newDataKey)
            try Store.sealKeys(db, mac, demoted + [newDataKey.keyID])
            let total = try Int.fetchOne(db, sql: "SELECT count(*) FROM secret_version WHERE wrapped_key IS NOT NULL AND key_id != ?",
                                         arguments: [newDataKey.keyID]) ?? 0
            try Store.deleteRotation(db, mac)
            try db.execute(sql: "INSERT INTO key_rotation (id, target_key_id, started_at, started_by, total, done) VALUES (1, ?, ?, ?, ?, 0)",
                           arguments: [newDataKey.keyID, now, startedBy, total])
            try Store.sealRotation(db, mac)
            return (try self.commit(ticket, db), RotationRecord(targetKeyID: newDataKey.keyID, startedAt: now, startedBy: startedBy, total: total, done: 0))
        }
        if let event { ticket.markCommitted(event) }
        return record
    }

    /// The rotation in progress, checked against its MAC (a row planted or changed
    /// without the key is an integrity error: nothing is re-wrapped or erased on it).
    public func rotation() throws -> RotationRecord? {
        let mac = try recordMAC()
        return try pool.read { db in
            guard let r = try Row.fetchOne(db, sql: "SELECT * FROM key_rotation WHERE id = 1") else { return nil }
            guard RecordMAC.matches(r["mac"], mac.rotation(r)) else { throw Store.integrityError("the key rotation record") }
            return RotationRecord(targetKeyID: r["target_key_id"], startedAt: r["started_at"], startedBy: r["started_by"], total: r["total"],
                                  done: r["done"])
        }
    }

    /// The next versions not under `target`, after the cursor (secret id, version).
    public func rewrapBatch(target: String, after: (Int64, Int), limit: Int) throws -> [RewrapRow] {
        try pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT v.secret_id, v.version, v.key_id, v.wrapped_key, v.ciphertext, s.path FROM secret_version v JOIN secret s ON s.id = v.secret_id
                WHERE v.wrapped_key IS NOT NULL AND v.key_id != ? AND (v.secret_id > ? OR (v.secret_id = ? AND v.version > ?))
                ORDER BY v.secret_id, v.version LIMIT ?
                """, arguments: [target, after.0, after.0, after.1, limit]).map {
                RewrapRow(secretID: $0["secret_id"], path: $0["path"], version: $0["version"], keyID: $0["key_id"], wrappedKey: $0["wrapped_key"],
                          ciphertext: $0["ciphertext"])
            }
        }
    }

    /// Stores re-wrapped versions (each only if it is still as it was read: a
    /// version destroyed meanwhile stays destroyed) and counts them; one transaction.
    public func storeRewrapped(_ rows: [(old: RewrapRow, keyID: String, wrappedKey: Data, ciphertext: Data)]) async throws -> Int {
        try await pool.write { db in
            var n = 0
            for r in rows {
                try db.execute(sql: """
                    UPDATE secret_version SET key_id = ?, wrapped_key = ?, ciphertext = ?
                    WHERE secret_id = ? AND version = ? AND key_id = ? AND wrapped_key = ?
                    """, arguments: [r.keyID, r.wrappedKey, r.ciphertext, r.old.secretID, r.old.version, r.old.keyID, r.old.wrappedKey])
                n += db.changesCount
            }
            try db.execute(sql: "UPDATE key_rotation SET done = CASE WHEN done + ? > total THEN total ELSE done + ? END", arguments: [rows.count, rows.count])
            return n
        }
    }

    /// The rotation's end, with its event: every data key that wraps no version any
    /// more (and is not active) is retired and its material erased; the rotation row goes.
    public func finishRotation(ticket: AuditTicket) async throws -> [String] {
        let mac = try recordMAC()
        let (event, erased) = try await pool.write { db -> (AuditEvent?, [String]) in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM key_rotation WHERE id = 1") else { return (nil, []) }
            guard RecordMAC.matches(row["mac"], mac.rotation(row)) else { throw Store.integrityError("the key rotation record") }
            let target: String = row["target_key_id"]
            guard try Int.fetchOne(db, sql: "SELECT count(*) FROM secret_version WHERE wrapped_key IS NOT NULL AND key_id != ?", arguments: [target]) == 0
            else { throw CofferError(.conflict, "versions remain under older keys") }
            let erased = try String.fetchAll(db, sql: """
                SELECT key_id FROM keyring k WHERE purpose = 'data' AND state != 'active' AND sealed IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM secret_version v WHERE v.key_id = k.key_id AND v.wrapped_key IS NOT NULL)
                """)
            for id in erased {
                try db.execute(sql: "UPDATE keyring SET state = 'retired', sealed = NULL WHERE key_id = ?", arguments: [id])
            }
            try Store.sealKeys(db, mac, erased)
            try Store.deleteRotation(db, mac)
            ticket.update { $0.details["erased_keys"] = .text(erased.joined(separator: ",")) }
            return (try self.commit(ticket, db), erased)
        }
        if let event { ticket.markCommitted(event) }
        return erased
    }
}
