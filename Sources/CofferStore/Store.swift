import CofferAudit
import CofferCore
import Foundation
import GRDB
import Synchronization

/// A value was sealed under a data key the database no longer names active (a
/// rotation on another host): nothing was written; reload the keyring and seal again.
public struct StaleDataKey: Error, Sendable {
    public let keyID: String
}

/// The database: ciphertext, wrapped keys and metadata only (never plaintext).
/// One `DatabasePool` in WAL mode; schema changes are named migrations.
public final class Store: Sendable {
    let pool: SQLPool
    public let path: String
    /// MACs new audit events. Installed once the keyring is loaded (its key lives
    /// sealed in this database); until then no event can be appended (fail closed).
    let auditMAC: Mutex<AuditMAC?>
    /// MACs the records that decide access (Store+Integrity). Installed at open, from
    /// the keyring; until then no such record can be written or read.
    let recordMACKey = Mutex<RecordMAC?>(nil)
    /// True when this open added MACs to an existing audit trail (an upgrade): the
    /// events before have none.
    public let upgradedToAuditMAC: Bool
    /// True when this open created the database (nothing was there before).
    public let createdNow: Bool
    /// True when this open created the audit tables (a new database, or one made
    /// before the audit trail existed).
    public let createdAuditNow: Bool
    /// The audit head as this process last committed it (nil until the daemon has
    /// verified the trail at start). Every append and checkpoint first checks that
    /// the database still ends there: events deleted or added behind the daemon's
    /// back are caught at once, not chained onto and signed.
    let trustedHead = Mutex<(seq: Int64, hash: [UInt8])?>(nil)
    /// This daemon instance's audit chain: "" on SQLite (one daemon per file); on
    /// PostgreSQL the instance id kept in the state directory, so that every daemon
    /// sharing the database appends to a chain of its own.
    public let chain: String

    /// Opens (creating if needed) and migrates the database.
    public init(path: String, durability: CofferConfig.Durability, auditMAC: AuditMAC? = nil) throws {
        var config = GRDB.Configuration()
        config.busyMode = .timeout(5)
        // Reads run on the few threads of the cooperative pool: more readers than
        // cores only add page caches (memory) without adding throughput.
        config.maximumReaderCount = max(2, ProcessInfo.processInfo.activeProcessorCount)
        config.prepareDatabase { db in
            // Deleted rows (destroyed versions) are overwritten with zeros in the file.
            try db.execute(sql: "PRAGMA secure_delete = ON")
        }
        let grdb = try DatabasePool(path: path, configuration: config)
        let pool = SQLPool(.sqlite(grdb))
        // GRDB sets synchronous=NORMAL for WAL when opening; set ours afterwards on
        // the single writer connection (readers never write).
        let level = durability == .full ? "FULL" : "NORMAL"
        try pool.writeWithoutTransaction { db in
            try db.execute(sql: "PRAGMA synchronous = \(level)")
        }
        let before = try grdb.read { try Store.migrator.grdb.appliedIdentifiers($0) }
        // Coffer makes no triggers or views: one planted in the file would run inside
        // the daemon's own transactions (undo a revocation, restore an old MAC)
        if let foreign = try grdb.read({ try Store.foreignSchemaObjects(Database(connection: .sqlite($0))) }).first {
            throw Store.integrityError("the database schema (\(foreign) was not made by Coffer)")
        }
        try Store.migrator.grdb.migrate(grdb)
        // The schema must be exactly the one the migrations make (a table rebuilt
        // without its keys or STRICT types would let duplicate rows or wrong types
        // in), and the file must pass SQLite's own check (a schema text edited with
        // writable_schema to look right over rows that break it).
        try pool.read { db in try Store.checkSchema(db) }
        self.pool = pool
        self.path = path
        self.auditMAC = Mutex(auditMAC)
        self.upgradedToAuditMAC = before.contains("v3-audit") && !before.contains("v4-audit-mac")
        self.createdNow = before.isEmpty
        self.createdAuditNow = !before.contains("v3-audit")
        self.chain = ""
    }

    /// Opens (creating the schema when needed) the shared PostgreSQL database.
    init(postgres: PostgresPool, auditMAC: AuditMAC?, instance: String) throws {
        try postgres.holdInstanceLock(instance: instance)
        chain = instance
        // nothing planted beside the tables (a trigger, a rule, a view, an event trigger),
        // before any statement of Coffer's runs there (the migrations included)
        try postgres.read { db in try Store.checkSchema(db) }
        let before = try Store.migratePostgres(postgres)
        pool = SQLPool(.postgres(postgres))
        path = postgres.target.description
        self.auditMAC = Mutex(auditMAC)
        upgradedToAuditMAC = false
        createdNow = before.isEmpty
        createdAuditNow = before.isEmpty
    }

    /// Sets the key that MACs new audit events (once, at open, from the keyring).
    public func installAuditMAC(_ mac: AuditMAC) { auditMAC.withLock { $0 = mac } }

    /// Reads whether a database file exists and what key check it holds, without
    /// changing a byte of it (read-only connection). Used before unlocking.
    public static func readKeyCheck(path: String) throws -> (keyID: String, check: Data)? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        var config = GRDB.Configuration()
        config.readonly = true
        config.busyMode = .timeout(5)
        let queue = try DatabaseQueue(path: path, configuration: config)
        defer { try? queue.close() }
        return try queue.read { db -> (keyID: String, check: Data)? in
            // `root_key` since the keyring of many keys; before it, `keyring` held the check
            let table = try db.tableExists("root_key") ? "root_key" : "keyring"
            guard try db.tableExists(table), try db.columns(in: table).contains(where: { $0.name == "check_blob" }) else { return nil }
            guard let row = try GRDB.Row.fetchOne(db, sql: "SELECT key_id, check_blob FROM \(table) ORDER BY created_at LIMIT 1") else {
                return nil
            }
            return (row["key_id"], row["check_blob"])
        }
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1-secrets") { db in
            try db.execute(sql: """
                CREATE TABLE keyring (
                    key_id TEXT PRIMARY KEY NOT NULL CHECK (length(key_id) BETWEEN 8 AND 64),
                    created_at INTEGER NOT NULL,
                    check_blob BLOB NOT NULL
                ) STRICT;
                CREATE TABLE secret (
                    id INTEGER PRIMARY KEY,
                    path TEXT NOT NULL UNIQUE CHECK (length(path) BETWEEN 1 AND 512),
                    current_version INTEGER NOT NULL DEFAULT 0 CHECK (current_version >= 0),
                    created_at INTEGER NOT NULL,
                    updated_at INTEGER NOT NULL
                ) STRICT;
                CREATE TABLE secret_version (
                    secret_id INTEGER NOT NULL REFERENCES secret(id) ON DELETE CASCADE,
                    version INTEGER NOT NULL CHECK (version >= 1),
                    created_at INTEGER NOT NULL,
                    created_uid INTEGER NOT NULL,
                    created_user TEXT,
                    size INTEGER NOT NULL CHECK (size >= 0),
                    state TEXT NOT NULL CHECK (state IN ('active', 'deleted', 'destroyed')),
                    deleted_at INTEGER,
                    key_id TEXT NOT NULL REFERENCES keyring(key_id),
                    wrapped_key BLOB,
                    ciphertext BLOB,
                    PRIMARY KEY (secret_id, version),
                    CHECK ((state = 'destroyed') = (ciphertext IS NULL)),
                    CHECK ((ciphertext IS NULL) = (wrapped_key IS NULL))
                ) STRICT, WITHOUT ROWID;
                """)
        }
        registerTokenMigration(&m)
        registerAuditMigration(&m)
        registerKeyringMigration(&m)
        registerElevationMigration(&m)
        registerCredentialMigration(&m)
        registerIntegrityMigration(&m)
        registerHolderMigration(&m)
        registerDigestMigration(&m)
        return m
    }

    // MARK: reads (synchronous: a short SQLite read costs less than a thread hop)

    public func secret(_ path: SecretPath) throws -> SecretRecord? {
        try pool.read { db in try self.fetchSecret(db, path.rawValue) }
    }

    /// The head and every version, each checked against its MAC, and the versions
    /// checked to be all there.
    func fetchSecret(_ db: Database, _ path: String) throws -> SecretRecord? {
        guard let row = try Row.fetchOne(
            db, sql: "SELECT id, current_version, low_version, mac, created_at, updated_at FROM secret WHERE path = ?", arguments: [path])
        else { return nil }
        let id: Int64 = row["id"]
        let current: Int = row["current_version"]
        let low: Int? = row["low_version"]
        try checkHead(path, current: current, low: low, mac: row["mac"])
        let rows = try Row.fetchAll(db, sql: """
            SELECT version, created_at, created_uid, created_user, size, state, deleted_at, key_id, mac
            FROM secret_version WHERE secret_id = ? ORDER BY version
            """, arguments: [id])
        for r in rows { try checkVersion(path, r) }
        guard let low, Store.contiguous(rows.map { $0["version"] as Int }, low: low, current: current) else {
            throw Store.integrityError("the versions of the secret \(path)")
        }
        try digestGate()  // the rows each hold: now the set they belong to
        return SecretRecord(path: path, currentVersion: current, createdAt: row["created_at"],
                            updatedAt: row["updated_at"], versions: rows.map(Store.versionRecord))
    }

    static func versionRecord(_ r: Row) -> VersionRecord {
        VersionRecord(
            version: r["version"], createdAt: r["created_at"], createdUID: UInt32(truncatingIfNeeded: r["created_uid"] as Int64),
            createdUser: r["created_user"], size: r["size"],
            state: VersionState(rawValue: r["state"]) ?? .destroyed, deletedAt: r["deleted_at"], keyID: r["key_id"])
    }

    /// One version (latest when `version` is nil) with its sealed material; `stored`
    /// is nil when that version does not exist (never written, or pruned).
    public func version(_ path: SecretPath, _ version: Int?) throws -> (current: Int, stored: StoredVersion?)? {
        try pool.read { db in
            // One cached statement: the hot read path prepares nothing.
            let stmt = try db.cachedStatement(sql: """
                SELECT s.current_version AS current, s.low_version AS low, s.mac AS head_mac, v.version, v.created_at, v.created_uid,
                       v.created_user, v.size, v.state, v.deleted_at, v.key_id, v.wrapped_key, v.ciphertext, v.mac
                FROM secret s LEFT JOIN secret_version v ON v.secret_id = s.id AND v.version = coalesce(?, s.current_version)
                WHERE s.path = ?
                """)
            guard let row = try Row.fetchOne(stmt, arguments: [version, path.rawValue]) else { return nil }
            let current: Int = row["current"]
            let low: Int? = row["low"]
            // the head first: a rolled-back current version fails here
            try checkHead(path.rawValue, current: current, low: low, mac: row["head_mac"])
            guard (row["version"] as Int?) != nil else {
                // a version the head says is retained must be there
                if let low, (low...max(low, current)).contains(version ?? current) {
                    throw Store.integrityError("version \(version ?? current) of the secret \(path)")
                }
                try digestGate()
                return (current, nil)
            }
            try checkVersion(path.rawValue, row)
            try digestGate()
            return (current, StoredVersion(meta: Store.versionRecord(row), wrappedKey: row["wrapped_key"], ciphertext: row["ciphertext"]))
        }
    }

    /// Immediate children of `prefix`, in byte order, after `after`, at most `limit`.
    /// One page of the children under `prefix`; `visible` decides, per child ("key" or
    /// "folder/"), whether the caller may see its name at all (hidden ones neither
    /// count toward the page nor become its cursor).
    public func list(_ prefix: SecretPrefix, after: String?, limit: Int, visible: (String) -> Bool = { _ in true }) throws -> ListPage {
        let base = prefix.childPrefix
        // Paths use only [A-Za-z0-9._-/]; '0' (0x30) follows '/' (0x2F), and '~' (0x7E) follows them all.
        let upper = base + "~"
        var lower = base
        var inclusive = true
        if let after, !after.isEmpty {
            if after.hasSuffix("/") {
                lower = base + after.dropLast() + "0"  // skip the whole folder
            } else {
                lower = base + after
                inclusive = false
            }
        }
        return try pool.read { db in
            var keys: [String] = []
            var hidden: String?
            var more = false
            let cursor = try String.fetchCursor(
                db, sql: "SELECT path FROM secret WHERE path \(inclusive ? ">=" : ">") ? AND path < ? ORDER BY path",
                arguments: [lower, upper])
            while let p = try cursor.next() {
                let rest = p.dropFirst(base.count)
                let key: String
                if let slash = rest.firstIndex(of: "/") {
                    key = String(rest[..<slash]) + "/"
                } else {
                    key = String(rest)
                }
                if keys.last == key || hidden == key { continue }
                guard visible(key) else { hidden = key; continue }
                if keys.count == limit { more = true; break }
                keys.append(key)
            }
            return ListPage(keys: keys, nextAfter: more ? keys.last : nil)
        }
    }

    /// What is live now, for the metrics: tokens neither expired, revoked nor used up,
    /// and elevation requests that are not over, by state.
    public func liveCounts(nowMillis: Int64) throws -> (tokens: Int, elevations: [String: Int]) {
        try pool.read { db in
            let tokens = try Int.fetchOne(db, sql: """
                SELECT count(*) FROM token WHERE revoked_at IS NULL AND expires_at > ? AND (uses_left IS NULL OR uses_left > 0)
                """, arguments: [nowMillis]) ?? 0
            var elevations = ["pending": 0, "approved": 0, "active": 0]
            for row in try Row.fetchAll(db, sql: """
                SELECT state, count(*) FROM elevation_request WHERE state IN ('pending', 'approved', 'active') GROUP BY state
                """) {
                elevations[row[0] as String] = row[1] as Int
            }
            return (tokens, elevations)
        }
    }

    public func secretCount() throws -> Int {
        try pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM secret") ?? 0 }
    }

    // MARK: writes

    /// Appends version N+1 in one transaction: check-and-set, seal (inside the
    /// transaction, so the version number the ciphertext is bound to is the one
    /// stored), insert, and prune versions beyond `maxVersions`.
    public func put(
        _ path: SecretPath, cas: Int?, maxVersions: Int, author: Author, now: Int64, guard tokenGuard: TokenGuard? = nil,
        ticket: AuditTicket, seal: @escaping @Sendable (Int) throws -> SealedVersion
    ) async throws -> VersionRecord {
        let mac = try recordMAC()
        let (record, event) = try await pool.write { db -> (VersionRecord, AuditEvent?) in
            try tokenGuard?.check(db)
            let existing = try Row.fetchOne(db, sql: "SELECT id, current_version, low_version, mac FROM secret WHERE path = ?",
                                            arguments: [path.rawValue])
            let current: Int = existing?["current_version"] ?? 0
            // a secret changed by hand (its head or any version) is not built upon: its
            // check-and-set would rest on it, and pruning would erase the evidence
            if existing != nil { _ = try self.fetchSecret(db, path.rawValue) } else { try self.digestGate() }
            if let cas, cas != current {
                throw CofferError(.casMismatch, "check-and-set failed: the current version is \(current), not \(cas)",
                                  hint: "read the secret again and retry with --cas \(current)")
            }
            let id: Int64
            if let existing {
                id = existing["id"]
            } else {
                guard let new = try Int64.fetchOne(db, sql: "INSERT INTO secret (path, current_version, created_at, updated_at) VALUES (?, 0, ?, ?) RETURNING id",
                                                   arguments: [path.rawValue, now, now]) else { throw SQLError(message: "INSERT returned no id") }
                id = new
            }
            let next = current + 1
            let sealed = try seal(next)
            // sealed under the key the database names active, checked in the writing
            // transaction (under the writers' lock): a daemon that missed a rotation
            // elsewhere never seals under a retired key
            guard try String.fetchOne(db, sql: "SELECT state FROM keyring WHERE key_id = ? AND purpose = 'data'", arguments: [sealed.keyID]) == "active" else {
                throw StaleDataKey(keyID: sealed.keyID)
            }
            try db.execute(sql: """
                INSERT INTO secret_version (secret_id, version, created_at, created_uid, created_user, size, state, key_id, wrapped_key, ciphertext)
                VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?, ?)
                """, arguments: [id, next, now, Int64(author.uid), author.user, sealed.size, sealed.keyID, sealed.wrappedKey, sealed.ciphertext])
            try db.execute(sql: "UPDATE secret SET current_version = ?, updated_at = ? WHERE id = ?", arguments: [next, now, id])
            // Versions beyond the limit are removed with their keys (secure_delete zeroes
            // them), and leave the record digest with them.
            for gone in try Data?.fetchAll(db, sql: "SELECT mac FROM secret_version WHERE secret_id = ? AND version <= ?",
                                           arguments: [id, next - maxVersions]) {
                try Store.digestReplace(db, mac, .version, old: gone, new: nil)
            }
            try db.execute(sql: "DELETE FROM secret_version WHERE secret_id = ? AND version <= ?", arguments: [id, next - maxVersions])
            // authenticated state: the new version and the head, as they now are
            try Store.sealVersions(db, mac, id: id, path: path.rawValue, versions: [next])
            try Store.sealHead(db, mac, id: id, path: path.rawValue)
            // Invariant 4: the event commits in the same transaction as the change.
            let event = try self.commit(ticket, db)
            return (VersionRecord(version: next, createdAt: now, createdUID: author.uid, createdUser: author.user,
                                  size: sealed.size, state: .active, deletedAt: nil, keyID: sealed.keyID), event)
        }
        if let event { ticket.markCommitted(event) }
        return record
    }

    public enum VersionChange: Sendable { case delete, undelete, destroy }

    /// Changes the state of the given versions (the latest when empty). Unknown
    /// versions are an error and nothing changes. Returns the secret afterwards.
    public func change(_ change: VersionChange, _ path: SecretPath, versions: [Int], now: Int64, guard tokenGuard: TokenGuard? = nil,
                       ticket: AuditTicket) async throws -> SecretRecord {
        let mac = try recordMAC()
        let (record, event) = try await pool.write { db -> (SecretRecord, AuditEvent?) in
            try tokenGuard?.check(db)
            // the record as it is, checked, before anything is changed on its word
            guard try self.fetchSecret(db, path.rawValue) != nil,
                  let s = try Row.fetchOne(db, sql: "SELECT id, current_version FROM secret WHERE path = ?", arguments: [path.rawValue])
            else { throw CofferError(.notFound, "no secret at \(path)") }
            let id: Int64 = s["id"]
            let targets = versions.isEmpty ? [s["current_version"] as Int] : versions
            let present = Set(try Int.fetchAll(db, sql: "SELECT version FROM secret_version WHERE secret_id = ?", arguments: [id]))
            if change == .destroy && versions.isEmpty {
                // destroy without versions: every retained version
                for v in present { try Store.apply(.destroy, db, id, v, now) }
            } else {
                for v in targets where !present.contains(v) {
                    throw CofferError(.notFound, "\(path) has no version \(v)", hint: "see coffer secret versions \(path)")
                }
                for v in targets { try Store.apply(change, db, id, v, now) }
            }
            try db.execute(sql: "UPDATE secret SET updated_at = ? WHERE id = ?", arguments: [now, id])
            try Store.sealVersions(db, mac, id: id, path: path.rawValue)
            guard let rec = try self.fetchSecret(db, path.rawValue) else { throw CofferError(.notFound, "no secret at \(path)") }
            let event = try self.commit(ticket, db)
            return (rec, event)
        }
        if let event { ticket.markCommitted(event) }
        return record
    }

    static func apply(_ change: VersionChange, _ db: Database, _ id: Int64, _ v: Int, _ now: Int64) throws {
        switch change {
        case .delete:
            try db.execute(sql: "UPDATE secret_version SET state = 'deleted', deleted_at = ? WHERE secret_id = ? AND version = ? AND state = 'active'",
                           arguments: [now, id, v])
        case .undelete:
            try db.execute(sql: "UPDATE secret_version SET state = 'active', deleted_at = NULL WHERE secret_id = ? AND version = ? AND state = 'deleted'",
                           arguments: [id, v])
        case .destroy:
            try db.execute(sql: """
                UPDATE secret_version SET state = 'destroyed', wrapped_key = NULL, ciphertext = NULL,
                    deleted_at = coalesce(deleted_at, ?) WHERE secret_id = ? AND version = ?
                """, arguments: [now, id, v])
        }
    }

    /// Writes everything in the WAL into the main file (tests and shutdown).
    public func checkpoint() throws {
        try pool.sqlite?.writeWithoutTransaction { db in _ = try db.checkpoint(.truncate) }
    }
}
