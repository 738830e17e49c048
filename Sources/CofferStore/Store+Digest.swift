public import CofferAudit
public import CofferCore
import CofferCrypto
import Foundation
import GRDB
import Synchronization

/// The record digest: what a row's own MAC cannot see is a row *put back* to an older
/// MACed state of itself (a revoked token's earlier row, a destroyed version's earlier
/// row, a head from before a write), a row deleted outright, or one added twice. One
/// MACed row holds the sum (mod 2^256) of every authenticated row's share (its MAC,
/// keyed again), how many rows there are, a generation, and the audit head it was
/// written with; every writing transaction keeps it current. A sum, not an XOR: two
/// copies of one row would cancel out of an XOR.
/// At open the shares are summed again over every row and compared:
///
/// - a row replayed or deleted changes the sum (the shares are unknown without the
///   key, so no set of old rows can be picked to cancel out);
/// - the digest row put back with the rows it covers (every record table rolled back,
///   the trail kept) no longer names the trail's head;
/// - the digest row edited fails its MAC.
///
/// A mismatch cannot say which row: the store is then *suspect*, and every record it
/// serves is refused with `integrity_error` until an admin restores a backup or
/// accepts the records as they are (`coffer operator check --accept`, audited, which
/// refuses while any row fails its own MAC).
public final class RecordDigest: Sendable {
    public enum Kind: String, Sendable, CaseIterable {
        case secret, version, token, elevation, session, key, signing, credential, rotation
        /// The audit chains of a shared (PostgreSQL) database, one row per instance.
        case instance
        var table: String {
            switch self {
            case .instance: "audit_instance"
            case .rotation: "key_rotation"
            case .key: "keyring"
            case .signing: "signing_key"
            case .credential: "credential"
            case .secret: "secret"
            case .version: "secret_version"
            case .token: "token"
            case .elevation: "elevation_request"
            case .session: "ssh_session"
            }
        }
    }

    public enum State: Sendable, Equatable {
        /// Not checked yet, or no digest row (a new or upgraded database before adoption).
        case absent
        case verified
        case suspect(String)
    }

    let state = Mutex<State>(.absent)
    public var current: State { state.withLock { $0 } }
    var isVerified: Bool { state.withLock { $0 == .verified } }
}

extension RecordDigest.Kind {
    /// The kinds this database has (the instance registry is PostgreSQL's only).
    static func stored(_ db: Database) -> [RecordDigest.Kind] {
        db.isPostgres ? allCases : allCases.filter { $0 != .instance }
    }
}

extension Store {
    static func registerDigestMigration(_ m: inout DatabaseMigrator) {
        m.registerMigration("v13-record-digest") { db in
            try db.execute(sql: """
                CREATE TABLE record_digest (
                    id INTEGER PRIMARY KEY CHECK (id = 1),
                    gen INTEGER NOT NULL,
                    acc BLOB NOT NULL CHECK (length(acc) = 32),
                    rows INTEGER NOT NULL,
                    audit_seq INTEGER NOT NULL,
                    audit_hash BLOB NOT NULL,
                    mac BLOB NOT NULL
                ) STRICT;
                ALTER TABLE ssh_session ADD COLUMN mac BLOB;
                ALTER TABLE keyring ADD COLUMN mac BLOB;
                ALTER TABLE signing_key ADD COLUMN mac BLOB;
                ALTER TABLE credential ADD COLUMN mac BLOB;
                ALTER TABLE key_rotation ADD COLUMN mac BLOB;
                """)
        }
        m.registerMigration("v14-audit-chain") { db in
            // one daemon per SQLite file: its one chain is named ''
            try db.execute(sql: """
                ALTER TABLE audit_event ADD COLUMN chain TEXT NOT NULL DEFAULT '' CHECK (chain = '');
                ALTER TABLE audit_checkpoint ADD COLUMN chain TEXT NOT NULL DEFAULT '' CHECK (chain = '');
                ALTER TABLE record_digest ADD COLUMN audit_chain TEXT NOT NULL DEFAULT '' CHECK (audit_chain = '');
                """)
        }
    }

    /// What the migrations make, read back from a fresh in-memory database once.
    static let expectedSchema: Result<[String], any Error> = Result {
        let queue = try DatabaseQueue()
        try migrator.grdb.migrate(queue)
        return try queue.read { try schemaLines(Database(connection: .sqlite($0))) }
    }

    static func schemaLines(_ db: Database) throws -> [String] {
        try Row.fetchAll(db, sql: "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").map {
            "\($0["type"] as String? ?? "?") \($0["name"] as String? ?? "?") on \($0["tbl_name"] as String? ?? "?"): \($0["sql"] as String? ?? "-")"
        }
    }

    /// The database's schema against what the migrations make, then `PRAGMA integrity_check`.
    static func checkSchema(_ db: Database) throws {
        if db.isPostgres {
            // PostgreSQL keeps its own catalog consistent; what it cannot rule out is an
            // object planted beside the tables (a trigger that undoes a revocation)
            if let foreign = try foreignSchemaObjects(db).first {
                throw CofferError(.integrity, "the database schema is not the one Coffer makes (not made by Coffer: \(foreign))",
                                  hint: "drop it; only Coffer's migrations should change the schema")
            }
            if let missing = try missingPostgresObjects(db).first {
                throw CofferError(.integrity, "the database schema is not the one Coffer makes (\(missing))",
                                  hint: "only Coffer's migrations should change the schema; restore a backup")
            }
            return
        }
        let expected = try expectedSchema.get()
        let actual = try schemaLines(db)
        if actual != expected {
            let extra = actual.filter { !expected.contains($0) }
            let missing = expected.filter { !actual.contains($0) }
            let first = (extra.first.map { "not made by Coffer: " + String($0.prefix(200)) })
                ?? (missing.first.map { "missing: " + String($0.prefix(200)) }) ?? "in another order"
            throw CofferError(.integrity, "the database schema is not the one Coffer makes (\(first))",
                              hint: "a table was rebuilt or changed by hand; restore a backup (README, Authenticated state)")
        }
        // integrity_check, not quick_check: an index pointed at other rows (a forged
        // autoindex makes an UPDATE by key land on another row) shows only there
        let problems = try String.fetchAll(db, sql: "PRAGMA integrity_check(5)")
        guard problems == ["ok"] else {
            throw CofferError(.integrity, "the database fails SQLite's integrity_check: \(problems.joined(separator: "; ").prefix(300))",
                              hint: "the file was changed by hand or is damaged; restore a backup")
        }
    }

    /// a += b (mod 2^256), little-endian.
    static func add(_ a: inout [UInt8], _ b: [UInt8]) {
        var carry: UInt16 = 0
        for i in 0..<32 {
            let t = UInt16(a[i]) + UInt16(b[i]) + carry
            a[i] = UInt8(truncatingIfNeeded: t)
            carry = t >> 8
        }
    }

    /// a -= b (mod 2^256), little-endian.
    static func subtract(_ a: inout [UInt8], _ b: [UInt8]) {
        var borrow: Int16 = 0
        for i in 0..<32 {
            var t = Int16(a[i]) - Int16(b[i]) - borrow
            borrow = t < 0 ? 1 : 0
            if t < 0 { t += 256 }
            a[i] = UInt8(t)
        }
    }

    /// Every authenticated row's share, summed, and how many rows there are (a full scan).
    static func digestSum(_ db: Database, _ mac: RecordMAC) throws -> (acc: [UInt8], rows: Int64) {
        var acc = [UInt8](repeating: 0, count: 32)
        var rows: Int64 = 0
        for kind in RecordDigest.Kind.stored(db) {
            let cursor = try Data?.fetchCursor(db, sql: "SELECT mac FROM \(kind.table)")
            while let m = try cursor.next() {
                add(&acc, mac.share(kind, m))
                rows += 1
            }
        }
        return (acc, rows)
    }

    struct DigestRow {
        var gen: Int64
        var acc: [UInt8]
        var rows: Int64
        var auditSeq: Int64
        var auditHash: [UInt8]
        /// The chain whose head `auditSeq`/`auditHash` name (the last to commit).
        var auditChain: String = ""
    }

    /// The digest row: nil when there is none, `.some(nil)` when its MAC fails.
    static func readDigest(_ db: Database, _ mac: RecordMAC) throws -> DigestRow?? {
        guard let r = try Row.fetchOne(db.cachedStatement(sql: "SELECT gen, acc, rows, audit_seq, audit_hash, mac, audit_chain FROM record_digest WHERE id = 1")) else {
            return nil
        }
        let d = DigestRow(gen: r["gen"], acc: [UInt8](r["acc"] as Data), rows: r["rows"], auditSeq: r["audit_seq"], auditHash: [UInt8](r["audit_hash"] as Data),
                          auditChain: r["audit_chain"])
        guard RecordMAC.matches(r["mac"], mac.digestRow(d)) else { return .some(nil) }
        return .some(d)
    }

    static func writeDigest(_ db: Database, _ mac: RecordMAC, _ d: DigestRow) throws {
        try db.cachedStatement(sql: """
            INSERT INTO record_digest (id, gen, acc, rows, audit_seq, audit_hash, mac, audit_chain) VALUES (1, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (id) DO UPDATE SET gen = excluded.gen, acc = excluded.acc, rows = excluded.rows, audit_seq = excluded.audit_seq,
                                           audit_hash = excluded.audit_hash, mac = excluded.mac, audit_chain = excluded.audit_chain
            """).execute(arguments: [d.gen, Data(d.acc), d.rows, d.auditSeq, Data(d.auditHash), Data(mac.digestRow(d)), d.auditChain])
    }

    /// Inside a writing transaction: one row's MAC goes from `old` to `new`. `old` nil:
    /// a row inserted in this transaction (MACed for the first time, not yet counted);
    /// `new` nil: the row is deleted. Kept only while the digest is verified: a suspect
    /// digest is never brought up to date, so a restart cannot launder it.
    static func digestReplace(_ db: Database, _ mac: RecordMAC, _ kind: RecordDigest.Kind, old: Data?, new: [UInt8]?) throws {
        guard mac.digest.isVerified else { return }
        if let old, let new, [UInt8](old) == new { return }
        try digestApply(db, mac) { d in
            if let old {
                subtract(&d.acc, mac.share(kind, old))
                d.rows -= 1
            }
            if let new {
                add(&d.acc, mac.share(kind, Data(new)))
                d.rows += 1
            }
        }
    }

    /// Read, check and rewrite the digest row with one change. A digest row that no
    /// longer matches (edited while cofferd ran) makes the store suspect.
    static func digestApply(_ db: Database, _ mac: RecordMAC, _ change: (inout DigestRow) -> Void) throws {
        guard let read = try readDigest(db, mac), var d = read else {
            mac.digest.state.withLock { $0 = .suspect("the record digest was changed or removed while cofferd ran") }
            return
        }
        change(&d)
        d.gen &+= 1
        try writeDigest(db, mac, d)
    }

    /// Inside the transaction that appended events: the digest names the new head.
    func digestFollowAudit(_ db: Database, chain: String, seq: Int64, hash: [UInt8]) throws {
        guard let mac = recordMACKey.withLock({ $0 }), mac.digest.isVerified else { return }
        try Store.digestApply(db, mac) { d in
            d.auditChain = chain
            d.auditSeq = seq
            d.auditHash = hash
        }
    }

    /// At open, before anything is written: the digest row against a full scan and the
    /// trail's head. Sets the store's digest state and returns it.
    @discardableResult
    public func openRecordDigest() throws -> RecordDigest.State {
        let mac = try recordMAC()
        let state: RecordDigest.State = try pool.read { db in
            guard let read = try Store.readDigest(db, mac) else { return .absent }
            guard let d = read else { return .suspect("the record digest row was changed without the key") }
            let sum = try Store.digestSum(db, mac)
            guard Hashing.constantTimeEquals(sum.acc, d.acc), sum.rows == d.rows else {
                return .suspect("a record was deleted, added or put back to an older state of itself")
            }
            // the keys' rows (which key is active, which retired) each against its MAC
            if let bad = try Store.badKeys(db, mac).first { return .suspect("\(bad) failed its integrity check") }
            // the head of the chain that committed last (a rollback of the records alone shows)
            let (seq, hash) = try Store.auditHead(db, chain: d.auditChain)
            guard seq == d.auditSeq, hash == d.auditHash else {
                return .suspect("the records were put back to an older copy (the digest names audit seq \(d.auditSeq), the trail ends at \(seq))")
            }
            return .verified
        }
        mac.digest.state.withLock { $0 = state }
        return state
    }

    public var recordDigestState: RecordDigest.State { recordMACKey.withLock { $0 }?.digest.current ?? .absent }

    public func markRecordDigestSuspect(_ why: String) {
        recordMACKey.withLock { $0 }?.digest.state.withLock { s in if s != .verified { s = .suspect(why) } }
    }

    /// The refusal a suspect digest gives every record it would serve.
    public func digestGate() throws {
        guard let mac = recordMACKey.withLock({ $0 }) else { return }
        if case .suspect(let why) = mac.digest.current { throw Store.digestError(why) }
    }

    static func digestError(_ why: String) -> CofferError {
        CofferError(.integrity, "the database's records do not match their authenticated digest: \(why)",
                    hint: "nothing is served from them; restore a backup, or review them and run `coffer operator check --accept` (README, Authenticated state)")
    }

    /// Inside the transaction that commits `ticket`'s event: the digest row from a full
    /// scan, naming the head that event makes; the store trusts it once that commits.
    static func startDigest(_ db: Database, _ mac: RecordMAC, chain: String) throws {
        let (seq, hash) = try Store.auditHead(db, chain: chain)
        let gen = (try Int64.fetchOne(db, sql: "SELECT gen FROM record_digest WHERE id = 1") ?? 0) &+ 1
        let sum = try digestSum(db, mac)
        try writeDigest(db, mac, DigestRow(gen: gen, acc: sum.acc, rows: sum.rows, auditSeq: seq, auditHash: hash, auditChain: chain))
        db.afterNextTransaction(onCommit: { _ in mac.digest.state.withLock { $0 = .verified } })
    }

    /// An upgraded database whose records are MACed but which has no digest yet: made
    /// once, audited (the caller has verified the whole trail first). Refused when the
    /// trail records that a digest was made before — the row was deleted to have
    /// replayed rows accepted — and the store then stays suspect.
    public func adoptRecordDigest(ticket: AuditTicket) async throws {
        let mac = try recordMAC()
        guard mac.digest.current == .absent else { return }
        let event = try await pool.write { db -> AuditEvent? in
            guard try Int.fetchOne(db, sql: "SELECT count(*) FROM record_digest") == 0 else { return nil }
            if try Store.trailRecordsDigest(db) {
                mac.digest.state.withLock { $0 = .suspect("the record digest was removed") }
                return nil
            }
            // SSH session and keyring rows were not MACed before the digest: adopted with it
            let sessions = try Int64.fetchAll(db, sql: "SELECT id FROM ssh_session WHERE mac IS NULL")
            for id in sessions { try Store.sealSession(db, mac, id) }
            try Store.sealKeys(db, mac, try String.fetchAll(db, sql: "SELECT key_id FROM keyring WHERE mac IS NULL"))
            try Store.sealSigningKeys(db, mac, try String.fetchAll(db, sql: "SELECT key_id FROM signing_key WHERE mac IS NULL"))
            try Store.sealCredentials(db, mac, try String.fetchAll(db, sql: "SELECT id FROM credential WHERE mac IS NULL"))
            if try Int.fetchOne(db, sql: "SELECT count(*) FROM key_rotation WHERE mac IS NULL") ?? 0 > 0 { try Store.sealRotation(db, mac) }
            ticket.update { $0.details[Store.digestMarker] = .text("started"); $0.path = "ssh_sessions:\(sessions.count)" }
            let event = try self.commit(ticket, db)
            try Store.startDigest(db, mac, chain: self.chain)
            return event
        }
        if let event { ticket.markCommitted(event) }
    }

    /// The detail every event that starts a digest carries (and a prune that removed
    /// such an event): its presence in the trail means a digest row must exist.
    static let digestMarker = "record_digest"

    static func trailRecordsDigest(_ db: Database) throws -> Bool {
        try Int.fetchOne(db, sql: "SELECT count(*) FROM audit_event WHERE instr(details, CAST('\(digestMarker)' AS BLOB)) > 0") ?? 0 > 0
    }

    /// An admin accepts the records as they are now: only when every row passes its own
    /// MAC (so nothing edited is laundered), in one transaction with its event.
    public func acceptRecordDigest(ticket: AuditTicket) async throws -> Int {
        let mac = try recordMAC()
        let (n, event) = try await pool.write { db -> (Int, AuditEvent?) in
            let bad = try Store.badRows(db, mac)
            guard bad.isEmpty else {
                throw CofferError(.conflict, "\(bad.count) record(s) fail their own MAC, so the records cannot be accepted as they are (first: \(bad[0]))",
                                  hint: "restore a backup; `coffer operator check` lists them")
            }
            let n = try RecordDigest.Kind.stored(db).reduce(0) { $0 + (try Int.fetchOne(db, sql: "SELECT count(*) FROM \($1.table)") ?? 0) }
            ticket.update { $0.path = "records:\(n)"; $0.details[Store.digestMarker] = .text("started") }
            let event = try self.commit(ticket, db)
            try Store.startDigest(db, mac, chain: self.chain)
            return (n, event)
        }
        if let event { ticket.markCommitted(event) }
        return n
    }

    /// MACs keyring rows as they now are (which key is active, decrypt-only or retired:
    /// the state an edit would use to wrap new versions under a rotated-out key).
    /// Without a record MAC key (the keyring completed before the first adoption)
    /// nothing is written: the adoption MACs them.
    static func sealKeys(_ db: Database, _ mac: RecordMAC?, _ ids: [String]) throws {
        guard let mac else { return }
        for id in ids {
            guard let r = try Row.fetchOne(db, sql: "SELECT key_id, purpose, state, created_at, mac FROM keyring WHERE key_id = ?", arguments: [id])
            else { continue }
            let new = mac.key(r)
            try db.execute(sql: "UPDATE keyring SET mac = ? WHERE key_id = ?", arguments: [Data(new), id])
            try digestReplace(db, mac, .key, old: r["mac"], new: new)
        }
    }

    /// MACs signing-key rows (SSH CA, JWT) as they now are: which is active, which
    /// retired and when, and the public key a verifier is given.
    static func sealSigningKeys(_ db: Database, _ mac: RecordMAC?, _ ids: [String]) throws {
        guard let mac else { return }
        for id in ids {
            guard let r = try Row.fetchOne(db, sql: "SELECT * FROM signing_key WHERE key_id = ?", arguments: [id]) else { continue }
            let new = mac.signingKey(r)
            try db.execute(sql: "UPDATE signing_key SET mac = ? WHERE key_id = ?", arguments: [Data(new), id])
            try digestReplace(db, mac, .signing, old: r["mac"], new: new)
        }
    }

    /// MACs issued-credential rows (what a retired key signed and until when: it keeps
    /// that key in the JWKS; SSH serials and certificate digests).
    static func sealCredentials(_ db: Database, _ mac: RecordMAC, _ ids: [String]) throws {
        for id in ids {
            guard let r = try Row.fetchOne(db, sql: "SELECT * FROM credential WHERE id = ?", arguments: [id]) else { continue }
            let new = mac.credential(r)
            try db.execute(sql: "UPDATE credential SET mac = ? WHERE id = ?", arguments: [Data(new), id])
            try digestReplace(db, mac, .credential, old: r["mac"], new: new)
        }
    }

    /// MACs the rotation row as it now is (its target and who started it, not its
    /// progress: a planted row would have the daemon re-wrap and erase keys unasked).
    static func sealRotation(_ db: Database, _ mac: RecordMAC) throws {
        guard let r = try Row.fetchOne(db, sql: "SELECT * FROM key_rotation WHERE id = 1") else { return }
        let new = mac.rotation(r)
        try db.execute(sql: "UPDATE key_rotation SET mac = ? WHERE id = 1", arguments: [Data(new)])
        try digestReplace(db, mac, .rotation, old: r["mac"], new: new)
    }

    /// Deletes the rotation row, leaving the digest with it.
    static func deleteRotation(_ db: Database, _ mac: RecordMAC) throws {
        guard let r = try Row.fetchOne(db, sql: "SELECT mac FROM key_rotation WHERE id = 1") else { return }
        try db.execute(sql: "DELETE FROM key_rotation")
        try digestReplace(db, mac, .rotation, old: r["mac"] as Data? ?? Data(), new: nil)
    }

    /// Keyring and signing-key rows whose MAC does not match, named.
    static func badKeys(_ db: Database, _ mac: RecordMAC) throws -> [String] {
        try Row.fetchAll(db, sql: "SELECT key_id, purpose, state, created_at, mac FROM keyring ORDER BY key_id")
            .filter { !RecordMAC.matches($0["mac"], mac.key($0)) }.map { "keyring key " + ($0["key_id"] as String) }
            + Row.fetchAll(db, sql: "SELECT * FROM signing_key ORDER BY key_id")
            .filter { !RecordMAC.matches($0["mac"], mac.signingKey($0)) }.map { "signing key " + ($0["key_id"] as String) }
    }
}
