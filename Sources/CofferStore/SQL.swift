import Foundation

// The store's own small SQL vocabulary. Every query in CofferStore is written against
// these types, not against an engine's: `Database` runs it on SQLite (GRDB, the
// embedded default) or on PostgreSQL (postgres-nio), and the record MACs, the digest
// and the audit chain above them exist once. The names follow GRDB's, so the SQL
// code reads as it did; inside this module they shadow GRDB's own.

/// One SQL value, in the four storage classes both engines share (PostgreSQL's
/// bigint, text, bytea; booleans are stored as integers in both).
enum DatabaseValue: Sendable, Equatable {
    case null
    case int64(Int64)
    case double(Double)
    case string(String)
    case blob(Data)

    var isNull: Bool { if case .null = self { true } else { false } }
    /// GRDB's spelling, kept so code that switches over a value reads the same.
    var storage: DatabaseValue { self }
}

/// A Swift value that is stored as one SQL value.
protocol DatabaseValueConvertible {
    var databaseValue: DatabaseValue { get }
    /// nil when the stored value is not one of this type (a NULL, or another class).
    static func fromDatabaseValue(_ v: DatabaseValue) -> Self?
}

extension DatabaseValue: DatabaseValueConvertible {
    var databaseValue: DatabaseValue { self }
    static func fromDatabaseValue(_ v: DatabaseValue) -> DatabaseValue? { v }
}

extension Int64: DatabaseValueConvertible {
    var databaseValue: DatabaseValue { .int64(self) }
    static func fromDatabaseValue(_ v: DatabaseValue) -> Int64? { if case .int64(let i) = v { i } else { nil } }
}

extension Int: DatabaseValueConvertible {
    var databaseValue: DatabaseValue { .int64(Int64(self)) }
    static func fromDatabaseValue(_ v: DatabaseValue) -> Int? { if case .int64(let i) = v { Int(exactly: i) } else { nil } }
}

extension Int32: DatabaseValueConvertible {
    var databaseValue: DatabaseValue { .int64(Int64(self)) }
    static func fromDatabaseValue(_ v: DatabaseValue) -> Int32? { if case .int64(let i) = v { Int32(exactly: i) } else { nil } }
}

extension UInt32: DatabaseValueConvertible {
    var databaseValue: DatabaseValue { .int64(Int64(self)) }
    static func fromDatabaseValue(_ v: DatabaseValue) -> UInt32? { if case .int64(let i) = v { UInt32(exactly: i) } else { nil } }
}

extension Bool: DatabaseValueConvertible {
    var databaseValue: DatabaseValue { .int64(self ? 1 : 0) }
    static func fromDatabaseValue(_ v: DatabaseValue) -> Bool? { if case .int64(let i) = v { i != 0 } else { nil } }
}

extension Double: DatabaseValueConvertible {
    var databaseValue: DatabaseValue { .double(self) }
    static func fromDatabaseValue(_ v: DatabaseValue) -> Double? {
        switch v {
        case .double(let d): d
        case .int64(let i): Double(i)
        default: nil
        }
    }
}

extension String: DatabaseValueConvertible {
    var databaseValue: DatabaseValue { .string(self) }
    static func fromDatabaseValue(_ v: DatabaseValue) -> String? { if case .string(let s) = v { s } else { nil } }
}

extension Data: DatabaseValueConvertible {
    var databaseValue: DatabaseValue { .blob(self) }
    static func fromDatabaseValue(_ v: DatabaseValue) -> Data? { if case .blob(let b) = v { b } else { nil } }
}

extension Optional: DatabaseValueConvertible where Wrapped: DatabaseValueConvertible {
    var databaseValue: DatabaseValue { self?.databaseValue ?? .null }
    static func fromDatabaseValue(_ v: DatabaseValue) -> Wrapped?? {
        if case .null = v { return .some(nil) }
        return Wrapped.fromDatabaseValue(v).map { .some($0) }
    }
}

/// A query's arguments, bound in order to its `?` placeholders.
struct StatementArguments: ExpressibleByArrayLiteral {
    var values: [DatabaseValue]

    init(arrayLiteral elements: (any DatabaseValueConvertible)?...) {
        values = elements.map { $0?.databaseValue ?? .null }
    }

    init(_ elements: [any DatabaseValueConvertible]) {
        values = elements.map(\.databaseValue)
    }

    init(_ values: [DatabaseValue]) {
        self.values = values
    }

    var isEmpty: Bool { values.isEmpty }
}

/// One result row: its values by column name (as GRDB reads them: a missing column
/// reads as NULL) or by position.
struct Row: Sequence {
    /// Shared by every row of one result.
    let columns: [String]
    let values: [DatabaseValue]

    func value(_ name: String) -> DatabaseValue {
        // a handful of columns: a scan beats hashing
        for i in columns.indices where columns[i] == name { return values[i] }
        return .null
    }

    subscript<T: DatabaseValueConvertible>(_ name: String) -> T {
        Row.decode(value(name), name)
    }

    func hasColumn(_ name: String) -> Bool { columns.contains(name) }

    subscript<T: DatabaseValueConvertible>(_ index: Int) -> T {
        Row.decode(index < values.count ? values[index] : .null, "#\(index)")
    }

    /// A value of the wrong type is a schema the migrations did not make: like GRDB,
    /// a programming error (every table is STRICT or typed, and checked at open).
    static func decode<T: DatabaseValueConvertible>(_ v: DatabaseValue, _ name: String) -> T {
        guard let t = T.fromDatabaseValue(v) else { fatalError("column \(name) does not hold a \(T.self)") }
        return t
    }

    func makeIterator() -> Zip2Sequence<[String], [DatabaseValue]>.Iterator {
        zip(columns, values).makeIterator()
    }
}

/// Rows read ahead, walked like GRDB's cursor.
final class RowCursor<Element> {
    private var items: [Element]
    private var index = 0
    init(_ items: [Element]) { self.items = items }
    func next() throws -> Element? {
        guard index < items.count else { return nil }
        defer { index += 1 }
        return items[index]
    }
}

/// A statement prepared once per connection (SQLite) or named once per session
/// (PostgreSQL), for the hot paths.
struct Statement {
    let db: Database
    let sql: String
    func execute(arguments: StatementArguments = []) throws {
        try db.run(sql, arguments, cached: true)
    }
}

extension DatabaseValueConvertible {
    static func fetchOne(_ db: Database, sql: String, arguments: StatementArguments = []) throws -> Self? {
        guard let row = try db.fetchRows(sql, arguments, cached: false, limit: 1).first, let v = row.values.first else { return nil }
        if case .null = v { return nil }
        return try convert(v)
    }

    static func fetchAll(_ db: Database, sql: String, arguments: StatementArguments = []) throws -> [Self] {
        try db.fetchRows(sql, arguments, cached: false, limit: nil).map { try convert($0.values.first ?? .null) }
    }

    static func fetchCursor(_ db: Database, sql: String, arguments: StatementArguments = []) throws -> RowCursor<Self> {
        RowCursor(try fetchAll(db, sql: sql, arguments: arguments))
    }

    private static func convert(_ v: DatabaseValue) throws -> Self {
        guard let t = fromDatabaseValue(v) else { throw SQLError(message: "a value is not a \(Self.self)") }
        return t
    }
}

extension Row {
    static func fetchOne(_ db: Database, sql: String, arguments: StatementArguments = []) throws -> Row? {
        try db.fetchRows(sql, arguments, cached: false, limit: 1).first
    }

    static func fetchAll(_ db: Database, sql: String, arguments: StatementArguments = []) throws -> [Row] {
        try db.fetchRows(sql, arguments, cached: false, limit: nil)
    }

    static func fetchCursor(_ db: Database, sql: String, arguments: StatementArguments = []) throws -> RowCursor<Row> {
        RowCursor(try fetchAll(db, sql: sql, arguments: arguments))
    }

    static func fetchOne(_ stmt: Statement, arguments: StatementArguments = []) throws -> Row? {
        try stmt.db.fetchRows(stmt.sql, arguments, cached: true, limit: 1).first
    }

    static func fetchAll(_ stmt: Statement, arguments: StatementArguments = []) throws -> [Row] {
        try stmt.db.fetchRows(stmt.sql, arguments, cached: true, limit: nil)
    }
}

/// A store-level database error that is neither engine's own (a value of the wrong
/// type, a session that is gone).
struct SQLError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// Named schema migrations, each plain SQL run once, in order. Both engines record
/// which have run; PostgreSQL has its own list (it starts at the current schema).
struct DatabaseMigrator {
    private(set) var migrations: [(id: String, body: @Sendable (Database) throws -> Void)] = []

    mutating func registerMigration(_ id: String, _ body: @escaping @Sendable (Database) throws -> Void) {
        migrations.append((id, body))
    }
}
