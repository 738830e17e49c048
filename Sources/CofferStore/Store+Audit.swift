public import CofferAudit
import CofferCore
import Foundation

/// The database's audit head is not where this process left it.
public struct AuditTrailChanged: Error, Sendable {
    public let message: String
}

/// Audit filters for search (all optional, combined with AND).
public struct AuditFilter: Sendable {
    public var afterSeq: Int64 = 0
    public var since: Int64?
    public var until: Int64?
    public var user: String?
    public var uid: UInt32?
    public var pathPrefix: String?
    public var action: String?
    public var decision: AuditDecision?
    public var limit: Int = 1000
    public init() {}
}

extension Store {
    static func registerAuditMigration(_ m: inout DatabaseMigrator) {
        m.registerMigration("v3-audit") { db in
            try db.execute(sql: """
                CREATE TABLE audit_event (
                    seq INTEGER PRIMARY KEY CHECK (seq >= 1),
                    time INTEGER NOT NULL,
                    request_id TEXT NOT NULL,
                    peer_pid INTEGER NOT NULL,
                    peer_uid INTEGER NOT NULL,
                    peer_user TEXT,
                    token_accessor TEXT,
                    method TEXT NOT NULL,
                    action TEXT NOT NULL,
                    path TEXT,
                    decision TEXT NOT NULL,
                    rule TEXT,
                    outcome TEXT NOT NULL,
                    status INTEGER NOT NULL,
                    error_code TEXT,
                    prev_hash BLOB NOT NULL,
                    hash BLOB NOT NULL
                ) STRICT;
                CREATE INDEX audit_event_time ON audit_event(time);
                CREATE TABLE audit_checkpoint (
                    seq INTEGER PRIMARY KEY,
                    hash BLOB NOT NULL,
                    time INTEGER NOT NULL,
                    signature BLOB NOT NULL
                ) STRICT;
                CREATE TABLE audit_key (
                    key_id TEXT PRIMARY KEY NOT NULL,
                    public_key BLOB NOT NULL,
                    sealed_secret BLOB NOT NULL,
                    created_at INTEGER NOT NULL
                ) STRICT;
                """)
        }
        m.registerMigration("v4-audit-mac") { db in
            try db.execute(sql: "ALTER TABLE audit_event ADD COLUMN mac BLOB CHECK (mac IS NULL OR length(mac) = 32)")
        }
        m.registerMigration("v5-audit-format") { db in
            // events written before keep format 1 (their hash encoding); new ones are 2
            try db.execute(sql: """
                ALTER TABLE audit_event ADD COLUMN format INTEGER NOT NULL DEFAULT 1;
                ALTER TABLE audit_event ADD COLUMN details BLOB;
                """)
        }
    }

    /// Appends events inside the caller's write transaction: numbers them after the
    /// current head and chains their hashes. The head comes from the database, so a
    /// rolled-back transaction leaves nothing behind to go stale.
    func appendAudit(_ db: Database, _ drafts: [AuditEvent]) throws -> [AuditEvent] {
        var (seq, prev) = try Store.auditHead(db, chain: chain)
        try checkTrustedHead(seq, prev)
        var out: [AuditEvent] = []
        out.reserveCapacity(drafts.count)
        guard let auditMAC = auditMAC.withLock({ $0 }) else {
            throw AuditTrailChanged(message: "no audit MAC key is installed: refusing to write unauthenticated events")
        }
        let shared = db.isPostgres
        // a shared database registers each chain with its first event (MACed, in the
        // record digest): a chain deleted whole, or its start without a prune, shows on every host
        if shared, seq == 0, let mac = recordMACKey.withLock({ $0 }), !drafts.isEmpty {
            let created = drafts[0].time
            let m = mac.instance(chain: chain, createdAt: created, prunedThrough: 0)
            try db.execute(sql: "INSERT INTO audit_instance (chain, created_at, pruned_through, mac) VALUES (?, ?, 0, ?)",
                           arguments: [chain, created, Data(m)])
            try Store.digestReplace(db, mac, .instance, old: nil, new: m)
        }
        let stmt = try db.cachedStatement(sql: shared ? Store.insertEventWithPositionSQL : Store.insertEventSQL)
        // PostgreSQL: each event's place in the global order, taken under the writers'
        // lock (so in commit order) before it is hashed: a named chain's hash covers it
        let positions = shared
            ? try Int64.fetchAll(db, sql: "SELECT nextval('audit_position') FROM generate_series(1, CAST(? AS INTEGER))", arguments: [drafts.count]).sorted()
            : []
        for (i, draft) in drafts.enumerated() {
            var e = draft
            seq += 1
            e.seq = seq
            e.chain = chain
            e.position = shared ? positions[i] : seq
            if !chain.isEmpty { e.format = AuditEvent.chainFormat }
            e.prevHash = prev
            e.hash = e.computedHash()
            e.mac = auditMAC.mac(e.hash)
            prev = e.hash
            var values = e.rowValues.map(Store.databaseValue)
            if shared { values.append(e.position.databaseValue) }
            try stmt.execute(arguments: StatementArguments(values))
            out.append(e)
        }
        let head = (seq: seq, hash: prev)
        // the record digest names the trail's head (a rollback of the records alone shows)
        try digestFollowAudit(db, chain: chain, seq: seq, hash: prev)
        db.afterNextTransaction(onCommit: { db in
            // GRDB keeps a next-transaction observer whose COMMIT failed (a full disk)
            // and fires it at the next commit of anything: trust the head only when
            // the database really ends there.
            guard let (s, h) = try? Store.auditHead(db, chain: self.chain), s == head.seq, h == head.hash else { return }
            self.trustedHead.withLock { t in if t != nil { t = head } }
        })
        return out
    }

    /// Throws when the database's audit head is not the one this process committed last.
    func checkTrustedHead(_ seq: Int64, _ hash: [UInt8]) throws {
        guard let t = trustedHead.withLock({ $0 }) else { return }
        guard t.seq == seq, t.hash == hash else {
            throw AuditTrailChanged(message: "the audit trail changed behind cofferd: it ends at seq \(seq), but cofferd last wrote seq \(t.seq)")
        }
    }

    /// From now on every append and checkpoint checks the head (called once the
    /// trail has been verified at start).
    public func trustAuditHead() throws {
        let head = try auditHead()
        trustedHead.withLock { $0 = (head.seq, head.hash) }
    }

    /// Commits a write's event inside the write's own transaction (the ticket is what
    /// makes a store write possible at all; nil when audit is switched off).
    func commit(_ ticket: AuditTicket, _ db: Database) throws -> AuditEvent? {
        guard ticket.enabled else { return nil }
        return try appendAudit(db, [ticket.finished(status: 200, errorCode: nil)])[0]
    }

    /// The head of one instance's chain.
    static func auditHead(_ db: Database, chain: String) throws -> (Int64, [UInt8]) {
        if let row = try Row.fetchOne(db.cachedStatement(sql: "SELECT seq, hash FROM audit_event WHERE chain = ? ORDER BY seq DESC LIMIT 1"),
                                      arguments: [chain]) {
            return (row["seq"], [UInt8](row["hash"] as Data))
        }
        // after a prune the newest checkpoint may be all that remains of the head
        if let row = try Row.fetchOne(db, sql: "SELECT seq, hash FROM audit_checkpoint WHERE chain = ? ORDER BY seq DESC LIMIT 1", arguments: [chain]) {
            return (row["seq"], [UInt8](row["hash"] as Data))
        }
        return (0, AuditEvent.genesis)
    }

    /// Group commit: one transaction for a batch of events.
    public func appendAudit(_ drafts: [AuditEvent]) async throws -> [AuditEvent] {
        try await pool.write { db in try self.appendAudit(db, drafts) }
    }

    /// The same, blocking the calling thread (the audit writer's own loop), which
    /// saves a thread hop per batch.
    public func appendAuditBlocking(_ drafts: [AuditEvent]) throws -> [AuditEvent] {
        try pool.write { db in try self.appendAudit(db, drafts) }
    }

    public func auditHead() throws -> (seq: Int64, hash: [UInt8], lastCheckpoint: Int64) {
        try pool.read { db in
            let (s, h) = try Store.auditHead(db, chain: chain)
            let cp = try Int64.fetchOne(db, sql: "SELECT max(seq) FROM audit_checkpoint WHERE chain = ?", arguments: [chain]) ?? 0
            return (s, h, cp)
        }
    }

    /// What the signer sees before it signs a new head: the newest checkpoint, the
    /// checkpoint the head anchor names (if still there), and every event after the
    /// newest checkpoint, in order.
    public struct CheckpointBasis: Sendable {
        public var base: AuditCheckpoint?
        public var anchored: AuditCheckpoint?
        /// The events after `base`; empty when the head is the one this process
        /// committed last (`headIsTrusted`): then every event up to it is what this
        /// process wrote (the hash chain binds them), and they need no re-reading.
        public var tail: [AuditEvent]
        public var head: (seq: Int64, hash: [UInt8])
        public var headIsTrusted: Bool
    }

    /// Signs the current head if it moved since the last checkpoint. The head is read
    /// and the checkpoint written in one transaction, so it always matches the chain;
    /// `sign` verifies the basis (and throws to refuse) before it signs.
    /// Blocking: the audit writer thread and shutdown (a cancelled task) call it too.
    public func checkpointAuditNow(anchorSeq: Int64, sign: (CheckpointBasis) throws -> AuditCheckpoint) throws -> AuditCheckpoint? {
        try pool.write { db in
            let (seq, headHash) = try Store.auditHead(db, chain: chain)
            try checkTrustedHead(seq, headHash)
            let basis = try Store.basis(db, chain: chain, anchorSeq: anchorSeq, trusted: trustedHead.withLock { $0 != nil })
            guard seq > basis.base?.seq ?? 0 else { return nil }
            let cp = try sign(basis)
            guard cp.chain == chain else { throw AuditTrailChanged(message: "a checkpoint was signed for another chain") }
            try db.execute(sql: "INSERT INTO audit_checkpoint (seq, hash, time, signature, chain) VALUES (?, ?, ?, ?, ?)",
                           arguments: [cp.seq, Data(cp.hash), cp.time, Data(cp.signature), chain])
            return cp
        }
    }

    /// The same basis without signing (the check at start when the head has not moved).
    public func checkpointBasis(anchorSeq: Int64) throws -> CheckpointBasis {
        try pool.read { db in try Store.basis(db, chain: chain, anchorSeq: anchorSeq, trusted: false) }
    }

    /// Reads the basis of one chain; the tail only when the head is not trusted.
    static func basis(_ db: Database, chain: String, anchorSeq: Int64, trusted: Bool) throws -> CheckpointBasis {
        let base = try Row.fetchOne(db, sql: selectCheckpoint + " WHERE chain = ? ORDER BY seq DESC LIMIT 1", arguments: [chain]).map(Store.checkpoint)
        let anchored = try Row.fetchOne(db, sql: selectCheckpoint + " WHERE chain = ? AND seq = ?", arguments: [chain, anchorSeq]).map(Store.checkpoint)
        let tail = trusted ? [] : try Row.fetchAll(db, sql: Store.selectEvent(db.isPostgres) + " WHERE chain = ? AND seq > ? ORDER BY seq",
                                                   arguments: [chain, base?.seq ?? 0]).map(Store.event)
        let (seq, hash) = try auditHead(db, chain: chain)
        return CheckpointBasis(base: base, anchored: anchored, tail: tail, head: (seq, hash), headIsTrusted: trusted)
    }

    /// The lowest event seq still stored (nil: none).
    public func firstAuditSeq() throws -> Int64? {
        try pool.read { db in try Int64.fetchOne(db, sql: "SELECT min(seq) FROM audit_event WHERE chain = ?", arguments: [chain]) }
    }

    /// Whether this instance's chain has nothing in the database yet (a new instance).
    public func auditChainIsEmpty() throws -> Bool {
        try pool.read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM (SELECT seq FROM audit_event WHERE chain = ? LIMIT 1) e", arguments: [chain]) == 0
                && Int.fetchOne(db, sql: "SELECT count(*) FROM (SELECT seq FROM audit_checkpoint WHERE chain = ? LIMIT 1) c", arguments: [chain]) == 0
        }
    }

    static let selectCheckpoint = "SELECT seq, hash, time, signature, chain FROM audit_checkpoint"

    static func checkpoint(_ r: Row) -> AuditCheckpoint {
        AuditCheckpoint(seq: r["seq"], hash: [UInt8](r["hash"] as Data), time: r["time"], signature: [UInt8](r["signature"] as Data),
                        chain: r["chain"])
    }

    static let insertEventSQL = "INSERT INTO audit_event (\(AuditEvent.columns.joined(separator: ", "))) VALUES ("
        + Array(repeating: "?", count: AuditEvent.columns.count).joined(separator: ", ") + ")"
    static let insertEventWithPositionSQL = "INSERT INTO audit_event (\(AuditEvent.columns.joined(separator: ", ")), pos) VALUES ("
        + Array(repeating: "?", count: AuditEvent.columns.count + 1).joined(separator: ", ") + ")"
    /// Every column, with each event's place in the global order (PostgreSQL numbers
    /// every event of every chain in commit order, under the writers' lock; SQLite's
    /// one chain is its own order).
    static func selectEvent(_ postgres: Bool) -> String {
        "SELECT " + AuditEvent.columns.joined(separator: ", ") + ", \(postgres ? "pos" : "seq") AS position FROM audit_event"
    }
    func selectEventWithPosition() -> String { Store.selectEvent(pool.isPostgres) }
    var positionColumn: String { pool.isPostgres ? "pos" : "seq" }

    static func databaseValue(_ v: AuditColumnValue) -> DatabaseValue {
        switch v {
        case .integer(let n): n.databaseValue
        case .text(let t): t.databaseValue
        case .blob(let b): b.map { Data($0) }.databaseValue
        }
    }

    /// GRDB's row, read in `AuditEvent.columns` order.
    struct EventRow: AuditRowReader {
        let row: Row
        func integer(_ i: Int) -> Int64 { row[i] as Int64? ?? 0 }
        func text(_ i: Int) -> String? { row[i] }
        func blob(_ i: Int) -> [UInt8]? { (row[i] as Data?).map { [UInt8]($0) } }
    }

    static func event(_ r: Row) -> AuditEvent {
        var e = AuditEvent(row: EventRow(row: r))
        e.position = r.hasColumn("position") ? r["position"] : e.seq
        return e
    }

    /// Events in the global order (`afterSeq` is a position: on SQLite the seq).
    public func auditEvents(_ f: AuditFilter) throws -> [AuditEvent] {
        let pos = positionColumn
        var sql = selectEventWithPosition() + " WHERE \(pos) > ?"
        var args: [any DatabaseValueConvertible] = [f.afterSeq]
        if let v = f.since { sql += " AND time >= ?"; args.append(v) }
        if let v = f.until { sql += " AND time < ?"; args.append(v) }
        if let v = f.user { sql += " AND peer_user = ?"; args.append(v) }
        if let v = f.uid { sql += " AND peer_uid = ?"; args.append(Int64(v)) }
        if let v = f.pathPrefix { sql += " AND (path = ? OR substr(path, 1, CAST(? AS INTEGER)) = ?)"; args += [v, v.utf8.count + 1, v + "/"] }
        if let v = f.action { sql += " AND action = ?"; args.append(v) }
        if let v = f.decision { sql += " AND decision = ?"; args.append(v.rawValue) }
        sql += " ORDER BY \(pos) LIMIT ?"
        args.append(f.limit)
        return try pool.read { db in try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map(Store.event) }
    }

    /// The actions the trail holds (to tell a misspelt filter from one that matches nothing yet).
    public func auditActions() throws -> Set<String> {
        try pool.read { db in Set(try String.fetchAll(db, sql: "SELECT DISTINCT action FROM audit_event")) }
    }

    /// The registered chains of a shared database and how far each was pruned (nil on
    /// SQLite: one chain). A row whose MAC fails is left out: its chain then reads as
    /// not registered, which verify names.
    public func auditInstances() throws -> [String: Int64]? {
        guard pool.isPostgres else { return nil }
        let mac = try recordMAC()
        return try pool.read { db in
            var out: [String: Int64] = [:]
            for r in try Row.fetchAll(db, sql: "SELECT chain, created_at, pruned_through, mac FROM audit_instance") {
                let chain: String = r["chain"]
                if RecordMAC.matches(r["mac"], mac.instance(chain: chain, createdAt: r["created_at"], prunedThrough: r["pruned_through"])) {
                    out[chain] = r["pruned_through"]
                }
            }
            return out
        }
    }

    /// A chain begun before the registry (a database from before chains, or migrated):
    /// registered once, where it starts now, by the instance that owns it.
    public func registerExistingChain(now: Int64) async throws {
        guard pool.isPostgres, let mac = recordMACKey.withLock({ $0 }), mac.digest.isVerified else { return }
        try await pool.write { db in
            guard try Int.fetchOne(db, sql: "SELECT count(*) FROM audit_instance WHERE chain = ?", arguments: [self.chain]) == 0 else { return }
            let (head, _) = try Store.auditHead(db, chain: self.chain)
            guard head > 0 else { return }  // registered with its first event
            let first = try Int64.fetchOne(db, sql: "SELECT min(seq) FROM audit_event WHERE chain = ?", arguments: [self.chain]) ?? head + 1
            let m = mac.instance(chain: self.chain, createdAt: now, prunedThrough: first - 1)
            try db.execute(sql: "INSERT INTO audit_instance (chain, created_at, pruned_through, mac) VALUES (?, ?, ?, ?)",
                           arguments: [self.chain, now, first - 1, Data(m)])
            try Store.digestReplace(db, mac, .instance, old: nil, new: m)
        }
    }

    /// Everything needed to verify: all events and checkpoints of every chain, each
    /// chain in order, the events in the global order.
    public func auditChain() throws -> (events: [AuditEvent], checkpoints: [AuditCheckpoint]) {
        try pool.read { db in
            let events = try Row.fetchAll(db, sql: selectEventWithPosition() + " ORDER BY \(positionColumn)").map(Store.event)
            let cps = try Row.fetchAll(db, sql: Store.selectCheckpoint + " ORDER BY chain, seq").map(Store.checkpoint)
            return (events, cps)
        }
    }

    /// Deletes events up to a checkpoint, which stays as the anchor the rest of the
    /// chain verifies from. Returns the number of events removed.
    /// `willPrune` runs inside the transaction, before anything is deleted (the head
    /// anchor records the prune first, so a prune is never mistaken for tampering).
    public func pruneAudit(throughCheckpoint seq: Int64, guard tokenGuard: TokenGuard? = nil, ticket: AuditTicket,
                           willPrune: @escaping @Sendable (Int64) throws -> Void = { _ in }) async throws -> Int {
        let (n, event) = try await pool.write { db -> (Int, AuditEvent?) in
            try tokenGuard?.check(db)
            guard try Int64.fetchOne(db, sql: "SELECT seq FROM audit_checkpoint WHERE chain = ? AND seq = ?", arguments: [self.chain, seq]) != nil else {
                throw CofferError(.invalidParameter, "there is no checkpoint at seq \(seq)", hint: "prune through a checkpoint: see coffer audit verify")
            }
            try willPrune(seq)
            // the adoption of authenticated records outlives the event that recorded it:
            // the prune's own event (hashed into the chain) says it had happened
            if try Int.fetchOne(db, sql: "SELECT count(*) FROM record_auth") ?? 0 > 0 {
                ticket.update { $0.details["records_authenticated"] = .text("before this prune") }
            }
            if try Int.fetchOne(db, sql: "SELECT count(*) FROM record_digest") ?? 0 > 0 {
                ticket.update { $0.details[Store.digestMarker] = .text("kept before this prune") }
            }
            // this instance's chain only: another's is pruned by its own daemon (whose anchor records it)
            try db.execute(sql: "DELETE FROM audit_event WHERE chain = ? AND seq <= ?", arguments: [self.chain, seq])
            let n = db.changesCount
            if db.isPostgres {
                // the registry records how far this chain was pruned (every host checks it)
                let mac = try self.recordMAC()
                guard let r = try Row.fetchOne(db, sql: "SELECT created_at, pruned_through, mac FROM audit_instance WHERE chain = ?", arguments: [self.chain]),
                      RecordMAC.matches(r["mac"], mac.instance(chain: self.chain, createdAt: r["created_at"], prunedThrough: r["pruned_through"])) else {
                    throw Store.integrityError("the audit instance registry")
                }
                let m = mac.instance(chain: self.chain, createdAt: r["created_at"], prunedThrough: max(seq, r["pruned_through"] as Int64))
                try db.execute(sql: "UPDATE audit_instance SET pruned_through = ?, mac = ? WHERE chain = ?",
                               arguments: [max(seq, r["pruned_through"] as Int64), Data(m), self.chain])
                try Store.digestReplace(db, mac, .instance, old: r["mac"], new: m)
            }
            try db.execute(sql: "DELETE FROM audit_checkpoint WHERE chain = ? AND seq < ?", arguments: [self.chain, seq])
            return (n, try self.commit(ticket, db))
        }
        if let event { ticket.markCommitted(event) }
        return n
    }

    public func auditCheckpoint(seq: Int64) throws -> AuditCheckpoint? {
        try pool.read { db in
            try Row.fetchOne(db, sql: Store.selectCheckpoint + " WHERE chain = ? AND seq = ?", arguments: [chain, seq]).map(Store.checkpoint)
        }
    }

    public func auditSigningKey() throws -> (keyID: String, publicKey: Data, sealed: Data)? {
        try pool.read { db in
            try Row.fetchOne(db, sql: "SELECT key_id, public_key, sealed_secret FROM audit_key ORDER BY created_at LIMIT 1").map {
                ($0["key_id"], $0["public_key"], $0["sealed_secret"])
            }
        }
    }

    public func storeAuditSigningKey(keyID: String, publicKey: Data, sealed: Data, now: Int64) async throws {
        try await pool.write { db in
            try db.execute(sql: "INSERT INTO audit_key (key_id, public_key, sealed_secret, created_at) VALUES (?, ?, ?, ?)",
                           arguments: [keyID, publicKey, sealed, now])
        }
    }
}
