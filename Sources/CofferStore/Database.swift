import Foundation
import GRDB

/// One connection inside a transaction (or a read), on either engine. Passed to the
/// closures of `SQLPool.read` and `write`; never kept past them.
struct Database {
    enum Connection {
        case sqlite(GRDB.Database)
        case postgres(PostgresSession)
    }

    let connection: Connection

    var isPostgres: Bool { if case .postgres = connection { true } else { false } }

    func execute(sql: String, arguments: StatementArguments = []) throws {
        try run(sql, arguments, cached: false)
    }

    /// The same SQL text, prepared once per connection.
    func cachedStatement(sql: String) throws -> Statement {
        Statement(db: self, sql: sql)
    }

    /// Rows changed by the last INSERT, UPDATE or DELETE.
    var changesCount: Int {
        switch connection {
        case .sqlite(let g): g.changesCount
        case .postgres(let s): s.changes
        }
    }

    /// Runs once the current transaction has committed (not at all if it rolls back).
    func afterNextTransaction(onCommit: @escaping @Sendable (Database) -> Void) {
        switch connection {
        case .sqlite(let g): g.afterNextTransaction(onCommit: { onCommit(Database(connection: .sqlite($0))) })
        case .postgres(let s): s.onCommit.append(onCommit)
        }
    }

    func run(_ sql: String, _ arguments: StatementArguments, cached: Bool) throws {
        switch connection {
        case .sqlite(let g):
            if cached {
                try g.cachedStatement(sql: sql).execute(arguments: Database.grdbArguments(arguments))
            } else {
                try g.execute(sql: sql, arguments: Database.grdbArguments(arguments))
            }
        case .postgres(let s):
            try s.run(sql, arguments)
        }
    }

    func fetchRows(_ sql: String, _ arguments: StatementArguments, cached: Bool, limit: Int?) throws -> [Row] {
        switch connection {
        case .sqlite(let g):
            let stmt = cached ? try g.cachedStatement(sql: sql) : try g.makeStatement(sql: sql)
            let names = stmt.columnNames
            let cursor = try GRDB.Row.fetchCursor(stmt, arguments: Database.grdbArguments(arguments))
            var out: [Row] = []
            while let r = try cursor.next() {
                out.append(Row(columns: names, values: r.databaseValues.map(Database.value)))
                if let limit, out.count >= limit { break }
            }
            return out
        case .postgres(let s):
            let rows = try s.query(sql, arguments)
            if let limit, rows.count > limit { return Array(rows.prefix(limit)) }
            return rows
        }
    }

    // MARK: SQLite (GRDB) values

    static func grdbArguments(_ a: StatementArguments) -> GRDB.StatementArguments {
        if a.values.isEmpty { return GRDB.StatementArguments() }
        return GRDB.StatementArguments(a.values.map { v -> (any GRDB.DatabaseValueConvertible)? in
            switch v {
            case .null: nil
            case .int64(let i): i
            case .double(let d): d
            case .string(let s): s
            case .blob(let b): b
            }
        })
    }

    static func value(_ v: GRDB.DatabaseValue) -> DatabaseValue {
        switch v.storage {
        case .null: .null
        case .int64(let i): .int64(i)
        case .double(let d): .double(d)
        case .string(let s): .string(s)
        case .blob(let b): .blob(b)
        }
    }
}

/// The store's connections: GRDB's pool in WAL mode (one writer, readers beside it),
/// or a pool of PostgreSQL connections.
final class SQLPool: Sendable {
    enum Engine: Sendable {
        case sqlite(GRDB.DatabasePool)
        case postgres(PostgresPool)
    }

    let engine: Engine

    init(_ engine: Engine) { self.engine = engine }

    var isPostgres: Bool { if case .postgres = engine { true } else { false } }

    func read<T>(_ body: (Database) throws -> T) throws -> T {
        switch engine {
        case .sqlite(let p): try p.read { try body(Database(connection: .sqlite($0))) }
        case .postgres(let p): try p.read(body)
        }
    }

    func write<T>(_ body: (Database) throws -> T) throws -> T {
        switch engine {
        case .sqlite(let p): try p.write { try body(Database(connection: .sqlite($0))) }
        case .postgres(let p): try p.write(body)
        }
    }

    func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        switch engine {
        case .sqlite(let p): try await p.write { try body(Database(connection: .sqlite($0))) }
        case .postgres(let p): try await PostgresPool.offload { try p.write(body) }
        }
    }

    func writeWithoutTransaction<T>(_ body: (Database) throws -> T) throws -> T {
        switch engine {
        case .sqlite(let p): try p.writeWithoutTransaction { try body(Database(connection: .sqlite($0))) }
        case .postgres(let p): try p.writeWithoutTransaction(body)
        }
    }

    /// The SQLite pool, for what only SQLite has (VACUUM INTO, WAL checkpoints).
    var sqlite: GRDB.DatabasePool? {
        switch engine {
        case .sqlite(let p): p
        case .postgres: nil
        }
    }
}

extension DatabaseMigrator {
    /// The same migrations as GRDB runs them (its table of applied identifiers).
    var grdb: GRDB.DatabaseMigrator {
        var m = GRDB.DatabaseMigrator()
        for (id, body) in migrations {
            m.registerMigration(id) { try body(Database(connection: .sqlite($0))) }
        }
        return m
    }
}
