public import CofferCore
import CofferCrypto
import Foundation
import GRDB

/// `cofferd migrate`: a SQLite store copied into an empty PostgreSQL database, row for
/// row (ciphertext, wrapped keys, tokens' hashes, elevations, credentials, the audit
/// trail and its checkpoints, the record MACs and digest), from one read snapshot of
/// the SQLite file (a daemon may go on serving it meanwhile), in one PostgreSQL
/// transaction that reads every table back and compares it with the source before it
/// commits. Nothing is decrypted or re-signed: the copy needs no key.
extension Store {
    public struct MigrationReport: Sendable {
        /// Rows copied, per table, in copy order.
        public var tables: [(name: String, rows: Int)]
        /// SHA-256 over every row of every table (names and values), the same on both sides.
        public var digest: String
    }

    /// Tables in an order their foreign keys allow.
    static let copyOrder = ["root_key", "keyring", "secret", "secret_version", "token", "audit_key", "audit_event", "audit_checkpoint",
                            "elevation_request", "elevation_review", "signing_key", "credential", "ssh_session", "record_auth",
                            "key_holder", "key_rotation", "record_digest"]

    public static func migrate(fromSQLite path: String, to target: PostgresTarget) throws -> MigrationReport {
        guard FileManager.default.fileExists(atPath: path) else {
            throw CofferError(.config, "there is no SQLite database at \(path)", hint: "name the coffer.db file: --from sqlite:/var/lib/coffer/coffer.db")
        }
        var config = GRDB.Configuration()
        config.readonly = true
        config.busyMode = .timeout(5)
        let source = try DatabasePool(path: path, configuration: config)
        defer { try? source.close() }
        // one read transaction: a consistent snapshot while the daemon goes on writing
        let tables: [(String, [Row])] = try source.read { g in
            let applied = try migrator.grdb.appliedIdentifiers(g)
            guard applied.count == migrator.migrations.count else {
                throw CofferError(.config, "\(path) is from an older cofferd (its schema is not the current one)",
                                  hint: "start this cofferd on it once (it migrates the file), then migrate")
            }
            let db = Database(connection: .sqlite(g))
            // exactly the schema Coffer makes, and a sound file: column names go into the
            // INSERTs, so none may come from a file edited by hand
            if let foreign = try foreignSchemaObjects(db).first {
                throw CofferError(.integrity, "\(path) holds \(foreign), which Coffer never makes; nothing was copied")
            }
            try checkSchema(db)
            var out: [(String, [Row])] = []
            for t in copyOrder {
                var rows = try Row.fetchAll(db, sql: "SELECT * FROM \(t)")
                if t == "token" { rows = try parentsFirst(rows) }
                out.append((t, rows))
            }
            return out
        }
        let pg = try PostgresPool(target)
        // nothing planted there, before Coffer's schema is made (an event trigger would run in it)
        if let foreign = try pg.read({ db in try foreignSchemaObjects(db) }).first {
            throw CofferError(.integrity, "the PostgreSQL database \(target) holds \(foreign), which Coffer never makes; nothing was copied",
                              hint: "migrate into a new, empty database")
        }
        _ = try migratePostgres(pg)
        let sourceDigest = digest(tables)
        try pg.write { db in
            if let foreign = try foreignSchemaObjects(db).first {
                throw CofferError(.integrity, "the PostgreSQL database \(target) holds \(foreign), which Coffer never makes; nothing was copied",
                                  hint: "migrate into a new, empty database")
            }
            guard try Int.fetchOne(db, sql: "SELECT count(*) FROM root_key") == 0 else {
                throw CofferError(.config, "the PostgreSQL database \(target) already holds a Coffer store; nothing was copied",
                                  hint: "migrate into a new, empty database")
            }
            for (t, rows) in tables {
                for r in rows {
                    let cols = r.columns.map { "\"\($0)\"" }.joined(separator: ", ")
                    let marks = Array(repeating: "?", count: r.columns.count).joined(separator: ", ")
                    try db.execute(sql: "INSERT INTO \(t) (\(cols)) VALUES (\(marks))", arguments: StatementArguments(r.values))
                }
            }
            // new rows' ids continue after the copied ones
            for t in ["secret", "ssh_session"] {
                try db.execute(sql: "SELECT setval(pg_get_serial_sequence('\(t)', 'id'), coalesce((SELECT max(id) FROM \(t)), 0) + 1, false)")
            }
            // read back inside the transaction: what commits is exactly what was read
            var back: [(String, [Row])] = []
            // the source's columns (PostgreSQL adds its own: the events' global order)
            for (t, rows) in tables {
                let cols = rows.first.map { $0.columns.map { "\"\($0)\"" }.joined(separator: ", ") } ?? "*"
                back.append((t, try Row.fetchAll(db, sql: "SELECT \(cols) FROM \(t)")))
            }
            for ((t, a), (_, b)) in zip(tables, back) where canonical(a) != canonical(b) {
                throw CofferError(.integrity, "the copy of table \(t) does not read back as the source (\(a.count) rows, \(b.count) read back); nothing was committed")
            }
            guard digest(back) == sourceDigest else {
                throw CofferError(.integrity, "the copy does not read back as the source; nothing was committed")
            }
        }
        return MigrationReport(tables: tables.map { ($0.0, $0.1.count) }, digest: sourceDigest)
    }

    /// Tokens ordered so that every parent comes before its children (the foreign key).
    static func parentsFirst(_ rows: [Row]) throws -> [Row] {
        var placed = Set<String>()
        var out: [Row] = []
        var rest = rows
        while !rest.isEmpty {
            let before = rest.count
            rest.removeAll { r in
                let parent: String? = r["parent"]
                guard parent.map({ placed.contains($0) }) ?? true else { return false }
                placed.insert(r["accessor"])
                out.append(r)
                return true
            }
            guard rest.count < before else { throw CofferError(.integrity, "a token names a parent that is not in the database") }
        }
        return out
    }

    /// Every row as sorted name=value pairs, the rows sorted: the same set of rows
    /// compares equal whatever the engine's column or row order.
    static func canonical(_ rows: [Row]) -> [[UInt8]] {
        rows.map { r in
            var fields: [[UInt8]] = []
            for (name, value) in r.sorted(by: { $0.0 < $1.0 }) {
                fields.append(Array(name.utf8))
                fields.append(RecordMAC.value(value))
            }
            return LengthPrefixed.encode("row", fields)
        }.sorted { $0.lexicographicallyPrecedes($1) }
    }

    static func digest(_ tables: [(String, [Row])]) -> String {
        var all: [UInt8] = []
        for (t, rows) in tables {
            all += LengthPrefixed.encode("table", [Array(t.utf8)])
            for r in canonical(rows) { all += r }
        }
        return Hex.encode(Hashing.sha256(all))
    }
}
