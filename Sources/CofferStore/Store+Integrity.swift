public import CofferAudit
public import CofferCore
public import CofferCrypto
import Foundation

/// Authenticated state: the rows that decide what a caller gets are MACed with a key
/// only the unlocked keyring has (derived from the token-hash key), so an edit made
/// with `sqlite3` and without the key is detected when the row is used:
///
/// - a secret's head: path, current version and lowest retained version (a rollback
///   that deletes the newest version and sets the head back, or drops an old version);
/// - each version row: path, version, state, creation (time, uid, user name): an
///   undelete or un-destroy by hand; its value is bound to path and version by its
///   AEAD already;
/// - each token: every column but its label (roles, paths, expiry, uses, bound uid,
///   parent, revocation, sign-in time, elevation);
/// - each elevation request with its reviews: every column that is set (role,
///   requester, state, window, approvals needed and given, who closed it).
///
/// What a MAC cannot see — a whole database put back to an older copy of itself, or a
/// row deleted outright — is in the README ("Authenticated state").
public struct RecordMAC: Sendable {
    let key: SecretBytes
    /// Keys each row's contribution to the record digest (see `RecordDigest`).
    let digestKey: SecretBytes
    /// Whether this store's record digest was verified at open (and so is kept).
    let digest = RecordDigest()

    public init(derivedFrom base: SecretBytes) throws {
        var derived = Hashing.blake2b(Array("coffer-record-mac-key-v1".utf8), key: base, outputLength: 32)
        key = try SecretBytes(consuming: &derived)
        var dk = Hashing.blake2b(Array("coffer-record-digest-key-v1".utf8), key: base, outputLength: 32)
        digestKey = try SecretBytes(consuming: &dk)
    }

    func mac(_ label: String, _ fields: [[UInt8]]) -> [UInt8] {
        Hashing.blake2b(LengthPrefixed.encode(label, fields), key: key, outputLength: 32)
    }

    static func text(_ s: String?) -> [UInt8] { s.map { [1] + Array($0.utf8) } ?? [0] }
    static func int(_ v: Int64?) -> [UInt8] { v.map { [1] + Array(String($0).utf8) } ?? [0] }
    static func int(_ v: Int?) -> [UInt8] { int(v.map(Int64.init)) }
    static func blob(_ d: Data?) -> [UInt8] { d.map { [1] + [UInt8]($0) } ?? [0] }

    func head(path: String, current: Int, low: Int?) -> [UInt8] {
        mac("coffer-secret-head-v1", [Self.text(path), Self.int(current), Self.int(low)])
    }

    func version(path: String, _ r: Row) -> [UInt8] {
        mac("coffer-secret-version-v1", [Self.text(path), Self.int(r["version"] as Int64?), Self.text(r["state"]),
                                         Self.int(r["created_at"] as Int64?), Self.int(r["created_uid"] as Int64?),
                                         Self.int(r["size"] as Int64?), Self.text(r["created_user"])])
    }

    func token(_ r: Row) -> [UInt8] {
        mac("coffer-token-v1", [Self.text(r["accessor"]), Self.blob(r["hash"]), Self.text(r["parent"]), Self.text(r["roles"]),
                                Self.text(r["paths"]), Self.int(r["created_at"] as Int64?), Self.int(r["expires_at"] as Int64?),
                                Self.int(r["uses_left"] as Int64?), Self.int(r["uses"] as Int64?), Self.int(r["bound_uid"] as Int64?),
                                Self.int(r["created_uid"] as Int64?), Self.text(r["created_user"]), Self.int(r["revoked_at"] as Int64?),
                                Self.int(r["authenticated_at"] as Int64?), Self.text(r["elevation_id"])])
    }

    /// Every column that is set, by name (a column added later, NULL in old rows,
    /// leaves their MACs valid), then each review the same way.
    func elevation(_ request: Row, reviews: [Row]) -> [UInt8] {
        var fields: [[UInt8]] = []
        for row in [request] + reviews {
            fields.append(Array("row".utf8))
            for (name, value) in row.sorted(by: { $0.0 < $1.0 }) where name != "mac" && !value.isNull {
                fields.append(Array(name.utf8))
                fields.append(Self.value(value))
            }
        }
        return mac("coffer-elevation-v1", fields)
    }

    static func value(_ v: DatabaseValue) -> [UInt8] {
        switch v.storage {
        case .null: [0]
        case .int64(let i): [1] + Array(String(i).utf8)
        case .double(let d): [2] + Array(String(d.bitPattern).utf8)
        case .string(let s): [3] + Array(s.utf8)
        case .blob(let b): [4] + [UInt8](b)
        }
    }

    /// A chain's registry row (shared database): deleting a whole chain, or its start
    /// without a prune, shows on every host.
    func instance(chain: String, createdAt: Int64, prunedThrough: Int64) -> [UInt8] {
        mac("coffer-audit-instance-v1", [Self.text(chain), Self.int(createdAt), Self.int(prunedThrough)])
    }

    func session(_ r: Row) -> [UInt8] {
        mac("coffer-ssh-session-v1", [Self.int(r["id"] as Int64?), Self.int(r["serial"] as Int64?), Self.text(r["elevation_id"]),
                                      Self.int(r["audit_session"] as Int64?), Self.int(r["pid"] as Int64?), Self.text(r["user"]),
                                      Self.int(r["opened_at"] as Int64?), Self.int(r["ended_at"] as Int64?), Self.text(r["end_reason"])])
    }

    func key(_ r: Row) -> [UInt8] {
        mac("coffer-keyring-key-v1", [Self.text(r["key_id"]), Self.text(r["purpose"]), Self.text(r["state"]), Self.int(r["created_at"] as Int64?)])
    }

    func signingKey(_ r: Row) -> [UInt8] {
        mac("coffer-signing-key-v1", [Self.text(r["key_id"]), Self.text(r["purpose"]), Self.text(r["state"]), Self.int(r["created_at"] as Int64?),
                                      Self.int(r["retired_at"] as Int64?), Self.blob(r["public_key"])])
    }

    func rotation(_ r: Row) -> [UInt8] {
        mac("coffer-key-rotation-v1", [Self.text(r["target_key_id"]), Self.int(r["started_at"] as Int64?), Self.text(r["started_by"]),
                                       Self.int(r["total"] as Int64?)])
    }

    func credential(_ r: Row) -> [UInt8] {
        mac("coffer-credential-v1", [Self.text(r["id"]), Self.text(r["kind"]), Self.int(r["serial"] as Int64?), Self.text(r["elevation_id"]),
                                     Self.text(r["key_id"]), Self.int(r["issued_at"] as Int64?), Self.int(r["expires_at"] as Int64?),
                                     Self.text(r["subject"]), Self.text(r["audience"]), Self.blob(r["digest"])])
    }

    /// One row's share of the record digest: its MAC, keyed again under a key the
    /// database never shows, so the shares cannot be combined by someone who reads MACs.
    func share(_ kind: RecordDigest.Kind, _ rowMAC: Data?) -> [UInt8] {
        // a row without a MAC has a share too (it counts; it fails its own check anyway)
        Hashing.blake2b(LengthPrefixed.encode("coffer-record-share-v1", [Array(kind.rawValue.utf8), Self.blob(rowMAC)]),
                        key: digestKey, outputLength: 32)
    }

    func digestRow(_ d: Store.DigestRow) -> [UInt8] {
        if d.auditChain.isEmpty {
            return mac("coffer-record-digest-v1", [Self.int(d.gen), d.acc, Self.int(d.rows), Self.int(d.auditSeq), d.auditHash])
        }
        return mac("coffer-record-digest-v2", [Self.int(d.gen), d.acc, Self.int(d.rows), Self.int(d.auditSeq), d.auditHash, Array(d.auditChain.utf8)])
    }

    static func matches(_ stored: Data?, _ expected: [UInt8]) -> Bool {
        guard let stored else { return false }
        return Hashing.constantTimeEquals([UInt8](stored), expected)
    }
}

extension Store {
    static func registerIntegrityMigration(_ m: inout DatabaseMigrator) {
        m.registerMigration("v11-record-macs") { db in
            try db.execute(sql: """
                ALTER TABLE secret ADD COLUMN low_version INTEGER;
                ALTER TABLE secret ADD COLUMN mac BLOB;
                ALTER TABLE secret_version ADD COLUMN mac BLOB;
                ALTER TABLE token ADD COLUMN mac BLOB;
                ALTER TABLE elevation_request ADD COLUMN mac BLOB;
                CREATE TABLE record_auth (adopted_at INTEGER NOT NULL) STRICT;
                """)
        }
    }

    /// The error a failed check gives: it names the record, never a value.
    public static func integrityError(_ record: String) -> CofferError {
        CofferError(.integrity, "\(record) failed its integrity check: it was changed without the key",
                    hint: "nothing was served from it; `coffer operator check` lists every such record (README, Authenticated state)")
    }

    func recordMAC() throws -> RecordMAC {
        guard let m = recordMACKey.withLock({ $0 }) else {
            throw CofferError(.internal, "the record MAC key is not installed")  // fail closed: never reached once open
        }
        return m
    }

    /// The MAC of a run record file's JSON (kept outside the database).
    public func runRecordMAC(_ json: Data) throws -> [UInt8] {
        try recordMAC().mac("coffer-run-record-v1", [[UInt8](json)])
    }

    /// Sets the key that MACs records (once, at open, from the keyring).
    public func installRecordMAC(_ mac: RecordMAC) { recordMACKey.withLock { $0 = mac } }

    // MARK: writing MACs, inside the writing transaction

    /// MACs a secret's head as it now is (current and lowest retained version).
    static func sealHead(_ db: Database, _ mac: RecordMAC, id: Int64, path: String) throws {
        let row = try Row.fetchOne(db, sql: "SELECT current_version, mac FROM secret WHERE id = ?", arguments: [id])
        let current: Int = row?["current_version"] ?? 0
        let low = try Int.fetchOne(db, sql: "SELECT min(version) FROM secret_version WHERE secret_id = ?", arguments: [id])
        let new = mac.head(path: path, current: current, low: low)
        try db.execute(sql: "UPDATE secret SET low_version = ?, mac = ? WHERE id = ?", arguments: [low, Data(new), id])
        try digestReplace(db, mac, .secret, old: row?["mac"], new: new)
    }

    /// MACs the given versions of a secret as they now are.
    static func sealVersions(_ db: Database, _ mac: RecordMAC, id: Int64, path: String, versions: [Int]? = nil) throws {
        let rows = try Row.fetchAll(db, sql: "SELECT version, state, created_at, created_uid, created_user, size, mac FROM secret_version WHERE secret_id = ?",
                                    arguments: [id])
        for r in rows {
            let v: Int = r["version"]
            if let versions, !versions.contains(v) { continue }
            let new = mac.version(path: path, r)
            try db.execute(sql: "UPDATE secret_version SET mac = ? WHERE secret_id = ? AND version = ?", arguments: [Data(new), id, v])
            try digestReplace(db, mac, .version, old: r["mac"], new: new)
        }
    }

    /// Those of the tokens whose MAC matches now: a change made on them (a revocation)
    /// is MACed again only for these, so a change never launders a row edited by hand.
    static func validTokens(_ db: Database, _ mac: RecordMAC, _ accessors: [String]) throws -> Set<String> {
        var valid = Set<String>()
        for a in accessors {
            if let r = try Row.fetchOne(db, sql: "SELECT * FROM token WHERE accessor = ?", arguments: [a]), RecordMAC.matches(r["mac"], mac.token(r)) {
                valid.insert(a)
            }
        }
        return valid
    }

    static func validElevation(_ db: Database, _ mac: RecordMAC, _ id: String) throws -> Bool {
        guard let r = try Row.fetchOne(db, sql: "SELECT * FROM elevation_request WHERE id = ?", arguments: [id]) else { return false }
        let reviews = try Row.fetchAll(db, sql: "SELECT * FROM elevation_review WHERE request_id = ? ORDER BY reviewer_uid", arguments: [id])
        return RecordMAC.matches(r["mac"], mac.elevation(r, reviews: reviews))
    }

    /// MACs the given tokens as they now are.
    static func sealTokens(_ db: Database, _ mac: RecordMAC, _ accessors: [String]) throws {
        for a in accessors {
            guard let r = try Row.fetchOne(db, sql: "SELECT * FROM token WHERE accessor = ?", arguments: [a]) else { continue }
            let new = mac.token(r)
            try db.execute(sql: "UPDATE token SET mac = ? WHERE accessor = ?", arguments: [Data(new), a])
            try digestReplace(db, mac, .token, old: r["mac"], new: new)
        }
    }

    /// MACs an elevation request, with its reviews, as it now is.
    static func sealElevation(_ db: Database, _ mac: RecordMAC, _ id: String) throws {
        guard let r = try Row.fetchOne(db, sql: "SELECT * FROM elevation_request WHERE id = ?", arguments: [id]) else { return }
        let reviews = try Row.fetchAll(db, sql: "SELECT * FROM elevation_review WHERE request_id = ? ORDER BY reviewer_uid", arguments: [id])
        let new = mac.elevation(r, reviews: reviews)
        try db.execute(sql: "UPDATE elevation_request SET mac = ? WHERE id = ?", arguments: [Data(new), id])
        try digestReplace(db, mac, .elevation, old: r["mac"], new: new)
    }

    /// MACs an SSH session row as it now is.
    static func sealSession(_ db: Database, _ mac: RecordMAC, _ id: Int64) throws {
        guard let r = try Row.fetchOne(db, sql: "SELECT * FROM ssh_session WHERE id = ?", arguments: [id]) else { return }
        let new = mac.session(r)
        try db.execute(sql: "UPDATE ssh_session SET mac = ? WHERE id = ?", arguments: [Data(new), id])
        try digestReplace(db, mac, .session, old: r["mac"], new: new)
    }

    /// True when `versions` (ascending) are exactly low...current. Checked arithmetic:
    /// the numbers come from a database someone may have edited.
    static func contiguous(_ versions: [Int], low: Int, current: Int) -> Bool {
        guard low >= 1, current >= low else { return false }
        let (span, overflow) = current.subtractingReportingOverflow(low)
        guard !overflow, span < versions.count + 1, span + 1 == versions.count else { return false }
        for (i, v) in versions.enumerated() where v != low + i { return false }
        return true
    }

    // MARK: checking

    func checkElevation(_ db: Database, _ r: Row) throws {
        let id: String = r["id"]
        let reviews = try Row.fetchAll(db, sql: "SELECT * FROM elevation_review WHERE request_id = ? ORDER BY reviewer_uid", arguments: [id])
        guard RecordMAC.matches(r["mac"], try recordMAC().elevation(r, reviews: reviews)) else {
            throw Store.integrityError("the elevation request \(id)")
        }
        try digestGate()
    }

    func checkHead(_ path: String, current: Int, low: Int?, mac stored: Data?) throws {
        guard RecordMAC.matches(stored, try recordMAC().head(path: path, current: current, low: low)) else {
            throw Store.integrityError("the secret \(path)")
        }
    }

    func checkVersion(_ path: String, _ r: Row) throws {
        guard RecordMAC.matches(r["mac"], try recordMAC().version(path: path, r)) else {
            throw Store.integrityError("version \(r["version"] as Int? ?? 0) of the secret \(path)")
        }
    }

    func checkToken(_ r: Row) throws {
        guard RecordMAC.matches(r["mac"], try recordMAC().token(r)) else {
            throw Store.integrityError("the token \(r["accessor"] as String? ?? "?")")
        }
        try digestGate()
    }

    // MARK: adoption and the full scan

    /// Once per database: MACs every record written before records were authenticated
    /// (an upgrade; a new database has none) and records that in `record_auth` and in
    /// the audit trail, in one transaction. Returns nil when already done. If the
    /// marker is gone but the trail says it was done, nothing is adopted: records
    /// without a MAC stay integrity errors (someone removed the marker to have them
    /// accepted).
    /// True once this database's records were adopted.
    public func recordsAdopted() throws -> Bool {
        try pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM record_auth") ?? 0 > 0 }
    }

    public func adoptRecordMACs(ticket: AuditTicket) async throws -> (secrets: Int, tokens: Int)? {
        let mac = try recordMAC()
        let (result, event) = try await pool.write { db -> ((Int, Int)?, AuditEvent?) in
            guard try Int.fetchOne(db, sql: "SELECT count(*) FROM record_auth") == 0 else { return (nil, nil) }
            if try Int.fetchOne(db, sql: """
                SELECT count(*) FROM audit_event
                WHERE action = 'records_authenticated' OR (action = 'audit_prune' AND instr(details, CAST('records_authenticated' AS BLOB)) > 0)
                """) ?? 0 > 0 {
                throw Store.integrityError("the marker of authenticated records")
            }
            let secrets = try Row.fetchAll(db, sql: "SELECT id, path FROM secret WHERE mac IS NULL")
            for s in secrets {
                try Store.sealVersions(db, mac, id: s["id"], path: s["path"])
                try Store.sealHead(db, mac, id: s["id"], path: s["path"])
            }
            let tokens = try String.fetchAll(db, sql: "SELECT accessor FROM token WHERE mac IS NULL")
            try Store.sealTokens(db, mac, tokens)
            for id in try String.fetchAll(db, sql: "SELECT id FROM elevation_request WHERE mac IS NULL") { try Store.sealElevation(db, mac, id) }
            for id in try Int64.fetchAll(db, sql: "SELECT id FROM ssh_session WHERE mac IS NULL") { try Store.sealSession(db, mac, id) }
            try Store.sealKeys(db, mac, try String.fetchAll(db, sql: "SELECT key_id FROM keyring WHERE mac IS NULL"))
            try Store.sealSigningKeys(db, mac, try String.fetchAll(db, sql: "SELECT key_id FROM signing_key WHERE mac IS NULL"))
            try Store.sealCredentials(db, mac, try String.fetchAll(db, sql: "SELECT id FROM credential WHERE mac IS NULL"))
            if try Int.fetchOne(db, sql: "SELECT count(*) FROM key_rotation WHERE mac IS NULL") ?? 0 > 0 { try Store.sealRotation(db, mac) }
            try db.execute(sql: "INSERT INTO record_auth (adopted_at) VALUES (?)", arguments: [Int64(Date().timeIntervalSince1970 * 1000)])
            ticket.update { $0.path = "secrets:\(secrets.count),tokens:\(tokens.count)"; $0.details[Store.digestMarker] = .text("started") }
            let event = try self.commit(ticket, db)
            // the record digest starts here, over the rows just MACed
            if try Int.fetchOne(db, sql: "SELECT count(*) FROM record_digest") == 0 { try Store.startDigest(db, mac, chain: self.chain) }
            return ((secrets.count, tokens.count), event)
        }
        if let event { ticket.markCommitted(event) }
        return result
    }

    /// Coffer's own objects on PostgreSQL that must be there once its migrations ran
    /// (the generation triggers: without them no host hears of another's changes).
    static func missingPostgresObjects(_ db: Database) throws -> [String] {
        guard try Int.fetchOne(db, sql: "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relname = 'coffer_generation'") == 1
        else { return [] }
        let present = Set(try String.fetchAll(db, sql: """
            SELECT t.tgname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE NOT t.tgisinternal AND n.nspname = current_schema()
            """))
        var missing = generationTables.sorted().map { "coffer_generation_" + $0 }.filter { !present.contains($0) }.map { "trigger \($0) (missing)" }
        if try Int.fetchOne(db, sql: "SELECT count(*) FROM coffer_generation WHERE id = 1") != 1 { missing.append("the generation row (missing)") }
        return missing
    }

    /// What has changed in the schema since the start (PostgreSQL; checked while serving).
    public func schemaProblems() throws -> [String] {
        guard pool.isPostgres else { return [] }
        return try pool.read { db in try Store.foreignSchemaObjects(db) + Store.missingPostgresObjects(db) }
    }

    /// Triggers and views, which Coffer never makes ("trigger t_unrevoke").
    static func foreignSchemaObjects(_ db: Database) throws -> [String] {
        if db.isPostgres {
            // the same on PostgreSQL, and rules (which rewrite a statement before it runs)
            // Coffer's own: the generation triggers (pg-v2), each on its table, calling
            // the one function whose body is the one Coffer wrote
            var found = try Row.fetchAll(db, sql: """
                SELECT t.tgname::text AS name, c.relname::text AS tbl, p.proname::text AS fn, t.tgenabled::text AS enabled,
                       t.tgtype::bigint AS type, (t.tgqual IS NULL AND t.tgattr::text = '') AS plain, (pn.nspname = current_schema()) AS fnhome
                FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace pn ON pn.oid = p.pronamespace
                WHERE NOT t.tgisinternal AND n.nspname = current_schema() ORDER BY 1
                """).compactMap { r -> String? in
                    let name: String = r["name"], table: String = r["tbl"], fn: String = r["fn"]
                    // (the function's body is checked below, once)
                    if name == "coffer_generation_" + table, Store.generationTables.contains(table), fn == "coffer_bump_generation",
                       (r["fnhome"] as Int64) == 1 {
                        // disabled, firing on fewer statements, or only under a condition,
                        // it would leave the other hosts' caches stale
                        guard (r["enabled"] as String) == "O" else { return "trigger \(name) (disabled)" }
                        // (statement level, AFTER; INSERT 4, DELETE 8, UPDATE 16, TRUNCATE 32)
                        guard (r["type"] as Int64) == (table == "token" ? 56 : 60), (r["plain"] as Int64) == 1 else { return "trigger \(name) (changed)" }
                        return nil
                    }
                    return "trigger \(name)"
                }
            // the functions Coffer's statements call, with the bodies Coffer gave them
            // (a replaced one would run inside Coffer's own queries and triggers)
            let expected = ["instr": Store.instrFunctionBody, "coffer_bump_generation": Store.generationFunctionBody]
            for r in try Row.fetchAll(db, sql: """
                SELECT p.proname::text AS name, p.prosrc AS src, (p.proconfig IS NULL AND NOT p.prosecdef) AS plain
                FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname = current_schema() AND p.proname IN ('instr', 'coffer_bump_generation') ORDER BY 1
                """) {
                // its body, and no settings of its own (a search_path there would send
                // its statements to other tables and functions)
                let name: String = r["name"], src: String = r["src"]
                if expected[name].map({ src.trimmingCharacters(in: .whitespaces) != $0 }) ?? true || (r["plain"] as Int64) != 1 {
                    found.append("function \(name) (changed)")
                }
            }
            // event triggers run inside any statement of the database
            found += try String.fetchAll(db, sql: "SELECT 'event trigger ' || evtname::text FROM pg_event_trigger ORDER BY 1")
            // objects added to pg_catalog (a superuser's, with allow_system_table_mods):
            // searched before Coffer's schema, a table, view or function there would
            // stand in for Coffer's own (the generation row, audit_event, pg_notify)
            found += try String.fetchAll(db, sql: """
                SELECT 'catalog object ' || relname::text FROM pg_class WHERE relnamespace = 'pg_catalog'::regnamespace AND oid >= 16384
                UNION ALL SELECT 'catalog function ' || proname::text FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace AND oid >= 16384
                UNION ALL SELECT 'catalog operator ' || oprname::text FROM pg_operator WHERE oprnamespace = 'pg_catalog'::regnamespace AND oid >= 16384
                ORDER BY 1
                """)
            // row-level security would hide rows from Coffer's own queries (a revoked
            // token's row, a newer version): Coffer enables it nowhere
            found += try String.fetchAll(db, sql: """
                SELECT 'row security on ' || c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = current_schema() AND (c.relrowsecurity OR c.relforcerowsecurity)
                UNION ALL SELECT 'policy ' || p.polname::text FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
                JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema()
                ORDER BY 1
                """)
            return found + (try String.fetchAll(db, sql: """
                SELECT 'trigger ' || tgname::text FROM pg_trigger WHERE false
                UNION ALL SELECT 'view ' || viewname::text FROM pg_views WHERE schemaname = current_schema()
                UNION ALL SELECT 'rule ' || rulename::text FROM pg_rules WHERE schemaname = current_schema()
                ORDER BY 1
                """))
        }
        return try Row.fetchAll(db, sql: "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view') ORDER BY name")
            .map { "\($0["type"] as String) \($0["name"] as String)" }
    }

    /// Every record whose MAC does not match, named (never a value).
    public func integrityScan() throws -> (checked: Int, bad: [String]) {
        let mac = try recordMAC()
        return try pool.read { db in
            var (checked, bad) = try Store.scanRows(db, mac)
            // the set as a whole: the digest as found at open, then as it is now
            if case .suspect(let why) = mac.digest.current {
                bad.append("records: \(why)")
            } else if mac.digest.current == .verified {
                if let read = try Store.readDigest(db, mac), let d = read {
                    let sum = try Store.digestSum(db, mac)
                    if !Hashing.constantTimeEquals(sum.acc, d.acc) || sum.rows != d.rows {
                        bad.append("records: a record was deleted, added or put back to an older state of itself")
                    }
                } else {
                    bad.append("records: the record digest was changed or removed")
                }
            } else {
                bad.append("records: there is no record digest")
            }
            return (checked, bad)
        }
    }

    static func badRows(_ db: Database, _ mac: RecordMAC) throws -> [String] { try scanRows(db, mac).bad }

    /// Every row against its own MAC (and the schema against what Coffer makes).
    static func scanRows(_ db: Database, _ mac: RecordMAC) throws -> (checked: Int, bad: [String]) {
        do {
            var bad: [String] = []
            do { try Store.checkSchema(db) } catch let e as CofferError { bad.append("schema: " + e.message) }
            var checked = 0
            for s in try Row.fetchAll(db, sql: "SELECT id, path, current_version, low_version, mac FROM secret ORDER BY path") {
                let path: String = s["path"]
                checked += 1
                if !RecordMAC.matches(s["mac"], mac.head(path: path, current: s["current_version"], low: s["low_version"])) {
                    bad.append("secret \(path): head")
                }
                let versions = try Row.fetchAll(db, sql: """
                    SELECT version, state, created_at, created_uid, created_user, size, mac FROM secret_version WHERE secret_id = ? ORDER BY version
                    """, arguments: [s["id"] as Int64])
                let low: Int? = s["low_version"]
                let current: Int = s["current_version"]
                if let low, !Store.contiguous(versions.map { $0["version"] as Int }, low: low, current: current) {
                    bad.append("secret \(path): versions \(low)...\(current) are not all there")
                }
                for v in versions {
                    checked += 1
                    if !RecordMAC.matches(v["mac"], mac.version(path: path, v)) { bad.append("secret \(path): version \(v["version"] as Int)") }
                }
            }
            for t in try Row.fetchAll(db, sql: "SELECT * FROM token ORDER BY accessor") {
                checked += 1
                if !RecordMAC.matches(t["mac"], mac.token(t)) { bad.append("token \(t["accessor"] as String)") }
            }
            for e in try Row.fetchAll(db, sql: "SELECT * FROM elevation_request ORDER BY created_at, id") {
                checked += 1
                let id: String = e["id"]
                let reviews = try Row.fetchAll(db, sql: "SELECT * FROM elevation_review WHERE request_id = ? ORDER BY reviewer_uid", arguments: [id])
                if !RecordMAC.matches(e["mac"], mac.elevation(e, reviews: reviews)) { bad.append("elevation request \(id)") }
            }
            bad += try Store.badKeys(db, mac)
            checked += try Int.fetchOne(db, sql: "SELECT (SELECT count(*) FROM keyring) + (SELECT count(*) FROM signing_key)") ?? 0
            for r in try Row.fetchAll(db, sql: "SELECT * FROM key_rotation") {
                checked += 1
                if !RecordMAC.matches(r["mac"], mac.rotation(r)) { bad.append("key rotation record") }
            }
            if db.isPostgres {
                for r in try Row.fetchAll(db, sql: "SELECT chain, created_at, pruned_through, mac FROM audit_instance ORDER BY chain") {
                    checked += 1
                    let chain: String = r["chain"]
                    if !RecordMAC.matches(r["mac"], mac.instance(chain: chain, createdAt: r["created_at"], prunedThrough: r["pruned_through"])) {
                        bad.append("audit instance '\(chain)'")
                    }
                }
            }
            for r in try Row.fetchAll(db, sql: "SELECT * FROM credential ORDER BY id") {
                checked += 1
                if !RecordMAC.matches(r["mac"], mac.credential(r)) { bad.append("credential \(r["id"] as String)") }
            }
            for r in try Row.fetchAll(db, sql: "SELECT * FROM ssh_session ORDER BY id") {
                checked += 1
                if !RecordMAC.matches(r["mac"], mac.session(r)) { bad.append("ssh session \(r["id"] as Int64)") }
            }
            return (checked, bad)
        }
    }
}

extension Store {
    /// A seal: the record MAC key is zeroed and both MAC keys uninstalled, so that
    /// nothing MACed can be written or read any more through this store.
    public func wipeMACKeys() {
        recordMACKey.withLock { m in
            m?.key.wipe()
            m = nil
        }
        auditMAC.withLock { $0 = nil }
    }
}
