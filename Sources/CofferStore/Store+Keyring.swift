public import CofferAudit
public import CofferCore
import Foundation

/// One key of the keyring as stored: its material sealed under the root key.
public struct KeyRecord: Sendable, Equatable {
    public enum Purpose: String, Sendable, CaseIterable {
        /// Wraps the data key of each secret version.
        case data
        /// Keys the BLAKE2b under which tokens are stored.
        case tokenHash = "token-hash"
        /// Keys the MACs of audit events.
        case auditMAC = "audit-mac"
    }

    public enum State: String, Sendable, CaseIterable {
        /// Seals new values (one per purpose).
        case active
        /// Opens what it sealed, seals nothing new.
        case decryptOnly = "decrypt-only"
        /// Opens nothing (kept so that its id stays known).
        case retired
    }

    public var keyID: String
    public var purpose: Purpose
    public var state: State
    public var createdAt: Int64
    /// The root key it is sealed under.
    public var rootKeyID: String
    /// nil only for a key carried over from before the keyring (the root key itself
    /// was the data key): the daemon seals it at its first unlock.
    public var sealed: Data?
    /// Secret versions wrapped under it (data keys).
    public var versions: Int

    public init(keyID: String, purpose: Purpose, state: State, createdAt: Int64, rootKeyID: String, sealed: Data?, versions: Int = 0) {
        self.keyID = keyID
        self.purpose = purpose
        self.state = state
        self.createdAt = createdAt
        self.rootKeyID = rootKeyID
        self.sealed = sealed
        self.versions = versions
    }
}

extension Store {
    static func registerKeyringMigration(_ m: inout DatabaseMigrator) {
        // The keyring of many keys. `keyring` held one row per root key (its check),
        // and versions named the root key as their wrapping key. Now `root_key` holds
        // the root's check, and `keyring` the keys sealed under it. The root key of an
        // existing database stays the data key its versions name (sealed at the first
        // unlock); the token-hash and audit MAC keys are added at that unlock too, with
        // the values they had (derived from the root), so every token stays valid.
        m.registerMigration("v6-keyring") { db in
            try db.execute(sql: """
                CREATE TABLE root_key (
                    key_id TEXT PRIMARY KEY NOT NULL CHECK (length(key_id) BETWEEN 8 AND 64),
                    created_at INTEGER NOT NULL,
                    check_blob BLOB NOT NULL
                ) STRICT;
                INSERT INTO root_key (key_id, created_at, check_blob) SELECT key_id, created_at, check_blob FROM keyring;
                CREATE TABLE keyring_new (
                    key_id TEXT PRIMARY KEY NOT NULL CHECK (length(key_id) BETWEEN 8 AND 64),
                    purpose TEXT NOT NULL CHECK (purpose IN ('data', 'token-hash', 'audit-mac')),
                    state TEXT NOT NULL CHECK (state IN ('active', 'decrypt-only', 'retired')),
                    created_at INTEGER NOT NULL,
                    root_key_id TEXT NOT NULL REFERENCES root_key(key_id),
                    sealed BLOB CHECK (sealed IS NULL OR length(sealed) = 72)
                ) STRICT;
                INSERT INTO keyring_new (key_id, purpose, state, created_at, root_key_id, sealed)
                    SELECT key_id, 'data', 'active', created_at, key_id, NULL FROM keyring;
                DROP TABLE keyring;
                ALTER TABLE keyring_new RENAME TO keyring;
                CREATE UNIQUE INDEX keyring_one_active ON keyring(purpose) WHERE state = 'active';
                """)
        }
    }

    static func keyRecord(_ r: Row) -> KeyRecord {
        KeyRecord(keyID: r["key_id"], purpose: KeyRecord.Purpose(rawValue: r["purpose"]) ?? .data,
                  state: KeyRecord.State(rawValue: r["state"]) ?? .retired, createdAt: r["created_at"],
                  rootKeyID: r["root_key_id"], sealed: r["sealed"], versions: r["versions"] ?? 0)
    }

    /// The root keys' checks (one, until a root-key change is half done).
    public func rootKeyChecks() throws -> [(keyID: String, check: Data)] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT key_id, check_blob FROM root_key").map { ($0["key_id"], $0["check_blob"]) }
        }
    }

    public func addRootKeyCheck(keyID: String, check: Data, now: Int64) throws {
        try pool.write { db in
            try db.execute(sql: "INSERT INTO root_key (key_id, created_at, check_blob) VALUES (?, ?, ?)", arguments: [keyID, now, check])
        }
    }

    /// Every key, with how many versions each data key wraps.
    public func keyRecords() throws -> [KeyRecord] {
        try pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT k.*, (SELECT count(*) FROM secret_version v WHERE v.key_id = k.key_id AND v.wrapped_key IS NOT NULL) AS versions
                FROM keyring k ORDER BY created_at, key_id
                """).map(Store.keyRecord)
        }
    }

    /// First unlock: seals keys that have no material yet and adds the missing ones,
    /// in one transaction (the keyring is whole or untouched).
    public func completeKeyring(seal: [(keyID: String, sealed: Data)], add: [KeyRecord]) throws {
        try pool.write { db in
            for s in seal {
                try db.execute(sql: "UPDATE keyring SET sealed = ? WHERE key_id = ? AND sealed IS NULL", arguments: [s.sealed, s.keyID])
                guard db.changesCount == 1 else { throw CofferError(.integrity, "the keyring changed while it was being completed") }
            }
            for k in add { try Store.insertKey(db, k) }
        }
    }

    static func insertKey(_ db: Database, _ k: KeyRecord) throws {
        try db.execute(sql: "INSERT INTO keyring (key_id, purpose, state, created_at, root_key_id, sealed) VALUES (?, ?, ?, ?, ?, ?)",
                       arguments: [k.keyID, k.purpose.rawValue, k.state.rawValue, k.createdAt, k.rootKeyID, k.sealed])
    }

    /// Adds a new active key of its purpose; the one active before becomes
    /// decrypt-only. One transaction, with its audit event.
    public func addActiveKey(_ k: KeyRecord, guard tokenGuard: TokenGuard?, ticket: AuditTicket) async throws {
        let mac = try recordMAC()
        let event = try await pool.write { db -> AuditEvent? in
            try tokenGuard?.check(db)
            let demoted = try String.fetchAll(db, sql: "SELECT key_id FROM keyring WHERE purpose = ? AND state = 'active'", arguments: [k.purpose.rawValue])
            try db.execute(sql: "UPDATE keyring SET state = 'decrypt-only' WHERE purpose = ? AND state = 'active'", arguments: [k.purpose.rawValue])
            try Store.insertKey(db, k)
            try Store.sealKeys(db, mac, demoted + [k.keyID])
            return try self.commit(ticket, db)
        }
        if let event { ticket.markCommitted(event) }
    }

    /// A root-key change: every key (and the audit signing key) re-sealed under the
    /// new root, whose check replaces the old one. All or nothing; secret versions
    /// and tokens are untouched (they depend on the keys, not on the root).
    public func replaceRootKey(oldID: String, newID: String, check: Data, now: Int64,
                               keys: [(keyID: String, sealed: Data)], auditKey: Data?, demoteLegacy: (legacy: String, fresh: KeyRecord)? = nil,
                               signingKeys: [(keyID: String, sealed: Data)] = []) throws {
        let mac = recordMACKey.withLock { $0 }
        try pool.write { db in
            if let d = demoteLegacy {
                try db.execute(sql: "UPDATE keyring SET state = 'decrypt-only' WHERE key_id = ? AND state = 'active'", arguments: [d.legacy])
                try Store.insertKey(db, d.fresh)  // sealed under the old root here, re-sealed below with the rest
                try Store.sealKeys(db, mac, [d.legacy, d.fresh.keyID])
            }
            try Store.moveRoot(db, oldID: oldID, newID: newID, check: check, now: now, keys: keys, auditKey: auditKey, signingKeys: signingKeys)
        }
    }

    /// Inside a transaction: the new root key's check in; every keyring key, the audit
    /// signing key and every signing key replaced by its re-sealed form (each must have
    /// been under `oldID`, and none with material may be left behind: a key added or
    /// changed meanwhile is a conflict); erased keys follow the new root; the old
    /// root key's check out. Shared by a root-key change and a rotation.
    static func moveRoot(_ db: Database, oldID: String, newID: String, check: Data, now: Int64, keys: [(keyID: String, sealed: Data)],
                         auditKey: Data?, signingKeys: [(keyID: String, sealed: Data)]) throws {
        guard try Int.fetchOne(db, sql: "SELECT count(*) FROM root_key WHERE key_id = ?", arguments: [oldID]) == 1 else {
            throw CofferError(.conflict, "the root key changed meanwhile", hint: "try again")
        }
        try db.execute(sql: "INSERT INTO root_key (key_id, created_at, check_blob) VALUES (?, ?, ?)", arguments: [newID, now, check])
        // each row's material replaced by its re-sealed form, only where it was under the old root
        func reseal(_ table: String, _ rows: [(keyID: String, sealed: Data)], _ what: String) throws {
            for k in rows {
                try db.execute(sql: "UPDATE \(table) SET sealed = ?, root_key_id = ? WHERE key_id = ? AND root_key_id = ?",
                               arguments: [k.sealed, newID, k.keyID, oldID])
                guard db.changesCount == 1 else { throw CofferError(.conflict, "\(what) changed during the root-key change", hint: "try again") }
            }
        }
        try reseal("keyring", keys, "the keyring")
        guard try Int.fetchOne(db, sql: "SELECT count(*) FROM keyring WHERE root_key_id = ? AND sealed IS NOT NULL", arguments: [oldID]) == 0 else {
            throw CofferError(.conflict, "a key was added during the root-key change", hint: "try again")
        }
        try db.execute(sql: "UPDATE keyring SET root_key_id = ? WHERE root_key_id = ?", arguments: [newID, oldID])  // erased keys
        if let auditKey { try db.execute(sql: "UPDATE audit_key SET sealed_secret = ?", arguments: [auditKey]) }
        try reseal("signing_key", signingKeys, "a signing key")
        guard try Int.fetchOne(db, sql: "SELECT count(*) FROM signing_key WHERE root_key_id = ?", arguments: [oldID]) == 0 else {
            throw CofferError(.conflict, "a signing key was added during the root-key change", hint: "try again")
        }
        try db.execute(sql: "DELETE FROM root_key WHERE key_id = ?", arguments: [oldID])
    }
}
