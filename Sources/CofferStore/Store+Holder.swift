public import CofferAudit
public import CofferCore
public import Foundation
import GRDB

/// How the root key is held (keys/README.md): a key file (no row: the key file's key
/// is the root key itself, as before), or a row naming the unseal key's kind with the
/// root key sealed under it — a passphrase's Argon2id key, the key rebuilt from
/// Shamir shares, or a key file once the root has been rotated.
public struct HolderRecord: Sendable, Equatable {
    public enum Mode: String, Sendable, CaseIterable {
        case keyfile, passphrase, shares
    }

    public var mode: Mode
    /// The public id of the unseal key (as a root key's id is derived).
    public var unsealKeyID: String
    /// The root key sealed under the unseal key, bound to (mode, unseal key id, root key id).
    public var wrapped: Data
    public var rootKeyID: String
    public var createdAt: Int64
    // passphrase
    public var salt: Data?
    public var opsLimit: Int64?
    public var memLimit: Int64?
    // shares
    public var threshold: Int?
    public var shareCount: Int?
    /// The id every share of this split carries (8 hex digits).
    public var shareSet: String?
    /// BLAKE2b of each share (index order), so that a share that parses but is not one
    /// of this database's is named as such; one-way, it says nothing of the share.
    public var shareDigests: [String]?

    public init(mode: Mode, unsealKeyID: String, wrapped: Data, rootKeyID: String, createdAt: Int64, salt: Data? = nil, opsLimit: Int64? = nil,
                memLimit: Int64? = nil, threshold: Int? = nil, shareCount: Int? = nil, shareSet: String? = nil, shareDigests: [String]? = nil) {
        self.mode = mode
        self.unsealKeyID = unsealKeyID
        self.wrapped = wrapped
        self.rootKeyID = rootKeyID
        self.createdAt = createdAt
        self.salt = salt
        self.opsLimit = opsLimit
        self.memLimit = memLimit
        self.threshold = threshold
        self.shareCount = shareCount
        self.shareSet = shareSet
        self.shareDigests = shareDigests
    }
}

extension Store {
    static func registerHolderMigration(_ m: inout DatabaseMigrator) {
        m.registerMigration("v12-key-holder") { db in
            try db.execute(sql: """
                CREATE TABLE key_holder (
                    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
                    mode TEXT NOT NULL CHECK (mode IN ('keyfile', 'passphrase', 'shares')),
                    unseal_key_id TEXT NOT NULL CHECK (length(unseal_key_id) BETWEEN 8 AND 64),
                    wrapped BLOB NOT NULL CHECK (length(wrapped) = 72),
                    root_key_id TEXT NOT NULL,
                    created_at INTEGER NOT NULL,
                    salt BLOB CHECK (salt IS NULL OR length(salt) = 16),
                    ops_limit INTEGER,
                    mem_limit INTEGER,
                    threshold INTEGER CHECK (threshold IS NULL OR threshold BETWEEN 2 AND 255),
                    share_count INTEGER CHECK (share_count IS NULL OR share_count BETWEEN 2 AND 255),
                    share_set TEXT,
                    share_digests TEXT
                ) STRICT;
                CREATE TABLE key_rotation (
                    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
                    target_key_id TEXT NOT NULL,
                    started_at INTEGER NOT NULL,
                    started_by TEXT NOT NULL,
                    total INTEGER NOT NULL,
                    done INTEGER NOT NULL DEFAULT 0
                ) STRICT;
                """)
        }
    }

    static func holder(_ r: Row) -> HolderRecord? {
        guard let mode = HolderRecord.Mode(rawValue: r["mode"]) else { return nil }
        var digests: [String]?
        if let text: String = r["share_digests"] {
            digests = text.split(separator: ",").map(String.init)
        }
        return HolderRecord(mode: mode, unsealKeyID: r["unseal_key_id"], wrapped: r["wrapped"], rootKeyID: r["root_key_id"], createdAt: r["created_at"],
                            salt: r["salt"], opsLimit: r["ops_limit"], memLimit: r["mem_limit"], threshold: r["threshold"],
                            shareCount: r["share_count"], shareSet: r["share_set"], shareDigests: digests)
    }

    /// The holder row, read-only (a sealed daemon, before any key): nil for a database
    /// held by its key file alone (or one from before holders).
    public static func readHolder(path: String) throws -> HolderRecord? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        var config = GRDB.Configuration()
        config.readonly = true
        config.busyMode = .timeout(5)  // a seal's last commits may hold the lock a moment
        let queue = try DatabaseQueue(path: path, configuration: config)
        defer { try? queue.close() }
        return try queue.read { g -> HolderRecord? in
            guard try g.tableExists("key_holder") else { return nil }
            let db = Database(connection: .sqlite(g))
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM key_holder WHERE id = 1") else { return nil }
            guard let h = Store.holder(row) else { throw CofferError(.integrity, "the key holder row names an unknown mode") }
            return h
        }
    }

    public func holder() throws -> HolderRecord? {
        try pool.read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM key_holder WHERE id = 1") else { return nil }
            return Store.holder(row)
        }
    }

    static func writeHolder(_ db: Database, _ h: HolderRecord?) throws {
        try db.execute(sql: "DELETE FROM key_holder")
        guard let h else { return }
        try db.execute(sql: """
            INSERT INTO key_holder (id, mode, unseal_key_id, wrapped, root_key_id, created_at, salt, ops_limit, mem_limit, threshold, share_count,
                                    share_set, share_digests)
            VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [h.mode.rawValue, h.unsealKeyID, h.wrapped, h.rootKeyID, h.createdAt, h.salt, h.opsLimit, h.memLimit, h.threshold,
                             h.shareCount, h.shareSet, h.shareDigests?.joined(separator: ",")])
    }

    /// First unlock of a new database held by a passphrase or shares: the holder row.
    public func enrollHolder(_ h: HolderRecord) throws {
        try pool.write { db in
            guard try Int.fetchOne(db, sql: "SELECT count(*) FROM key_holder") == 0 else {
                throw CofferError(.integrity, "the database already has a key holder")
            }
            try Store.writeHolder(db, h)
        }
    }

    /// A rekey: how the root key is held changes (the root key and every key under it
    /// stay as they are). nil: the key file holds the root key itself. Committed with
    /// its audit event; `expectedUnsealKeyID` guards against a concurrent change.
    public func replaceHolder(_ h: HolderRecord?, expectedUnsealKeyID: String, guard tokenGuard: TokenGuard?, ticket: AuditTicket) async throws {
        let event = try await pool.write { db -> AuditEvent? in
            try tokenGuard?.check(db)
            let current = try String.fetchOne(db, sql: "SELECT unseal_key_id FROM key_holder WHERE id = 1")
            guard current == nil || current == expectedUnsealKeyID else {
                throw CofferError(.conflict, "the key holder changed meanwhile", hint: "try again")
            }
            // the holder must seal the root key the database has now (a rotation may
            // have committed since the rekey read it)
            if let h {
                guard try Int.fetchOne(db, sql: "SELECT count(*) FROM root_key WHERE key_id = ?", arguments: [h.rootKeyID]) == 1,
                      try Int.fetchOne(db, sql: "SELECT count(*) FROM root_key") == 1 else {
                    throw CofferError(.conflict, "the root key changed meanwhile (a rotation)", hint: "try the rekey again")
                }
            }
            try Store.writeHolder(db, h)
            return try self.commit(ticket, db)
        }
        if let event { ticket.markCommitted(event) }
    }
}
