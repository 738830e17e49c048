/// A strict reader for the subset of TOML that Coffer's config and policy files use:
/// comments, `[table]`, `[[array.of.tables]]`, dotted table names, `key = value` with
/// basic and literal strings, integers, booleans, (multi-line) arrays and one-line
/// inline tables.
/// Every value remembers its line so that callers can report `file:line`.
/// Anything outside the subset is an error, never silently ignored.
public indirect enum TOMLValue: Sendable, Equatable {
    case string(String)
    case integer(Int64)
    case bool(Bool)
    case array([TOMLValue])
    case table(TOMLTable)
    case tableArray([TOMLTable])

    public var typeName: String {
        switch self {
        case .string: "string"
        case .integer: "integer"
        case .bool: "boolean"
        case .array: "array"
        case .table: "table"
        case .tableArray: "array of tables"
        }
    }
}

public struct TOMLTable: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var value: TOMLValue
        public var line: Int
    }
    public private(set) var keys: [String] = []
    public private(set) var entries: [String: Entry] = [:]
    /// Line of the table header (0 for the root table).
    public var line: Int = 0

    public init(line: Int = 0) { self.line = line }

    public subscript(key: String) -> Entry? { entries[key] }

    mutating func set(_ key: String, _ entry: Entry) {
        if entries[key] == nil { keys.append(key) }
        entries[key] = entry
    }
}

public struct TOMLError: Error, Sendable, Equatable, CustomStringConvertible {
    public var line: Int
    public var message: String
    public var description: String { "line \(line): \(message)" }
}

public enum TOML {
    /// Bounds on what a file may make the parser do (it recurses into arrays and
    /// inline tables, and walks dotted keys): an admin's typo or a hostile file proposed
    /// for review is an error, never a stack overflow or quadratic work.
    public static let maxBytes = 1 << 20
    public static let maxNesting = 32
    public static let maxKeyParts = 16

    public static func parse(_ text: String) throws(TOMLError) -> TOMLTable {
        guard text.utf8.count <= maxBytes else {
            throw TOMLError(line: 0, message: "the file is larger than \(maxBytes / 1024) KiB")
        }
        var parser = Parser(Array(text.utf8))
        return try parser.parseDocument()
    }
}

private struct Parser {
    let b: [UInt8]
    var i = 0
    var line = 1
    var depth = 0

    init(_ bytes: [UInt8]) { b = bytes }

    func fail(_ msg: String) -> TOMLError { TOMLError(line: line, message: msg) }

    var atEnd: Bool { i >= b.count }
    func peek() -> UInt8? { i < b.count ? b[i] : nil }

    mutating func skipSpaces() {
        while let c = peek(), c == 0x20 || c == 0x09 { i += 1 }
    }

    mutating func skipComment() {
        if peek() == UInt8(ascii: "#") {
            while let c = peek(), c != 0x0A { i += 1 }
        }
    }

    /// Skips spaces, comments and newlines (inside arrays and between statements).
    mutating func skipBlank() {
        while true {
            skipSpaces()
            skipComment()
            if peek() == 0x0D { i += 1; continue }
            if peek() == 0x0A { i += 1; line += 1; continue }
            break
        }
    }

    mutating func expectEndOfLine() throws(TOMLError) {
        skipSpaces()
        skipComment()
        if peek() == 0x0D { i += 1 }
        if atEnd { return }
        guard peek() == 0x0A else { throw fail("unexpected text after value") }
    }

    static func isBareKeyByte(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F || c == 0x2D
    }

    mutating func parseKeyPart() throws(TOMLError) -> String {
        skipSpaces()
        if peek() == UInt8(ascii: "\"") { return try parseBasicString() }
        if peek() == UInt8(ascii: "'") { return try parseLiteralString() }
        let start = i
        while let c = peek(), Parser.isBareKeyByte(c) { i += 1 }
        guard i > start else { throw fail("expected a key") }
        return String(decoding: b[start..<i], as: UTF8.self)
    }

    mutating func parseDottedKey() throws(TOMLError) -> [String] {
        var parts = [try parseKeyPart()]
        skipSpaces()
        while peek() == UInt8(ascii: ".") {
            i += 1
            guard parts.count < TOML.maxKeyParts else { throw fail("a dotted key has more than \(TOML.maxKeyParts) parts") }
            parts.append(try parseKeyPart())
            skipSpaces()
        }
        return parts
    }

    mutating func parseDocument() throws(TOMLError) -> TOMLTable {
        var root = TOMLTable()
        // The path of the table that key/value lines currently go into.
        var current: [String] = []
        var currentIsArrayElement = false
        var definedTables: Set<[String]> = []
        while true {
            skipBlank()
            if atEnd { break }
            if peek() == UInt8(ascii: "[") {
                i += 1
                let isArray = peek() == UInt8(ascii: "[")
                if isArray { i += 1 }
                let name = try parseDottedKey()
                guard peek() == UInt8(ascii: "]") else { throw fail("expected ']' after table name") }
                i += 1
                if isArray {
                    guard peek() == UInt8(ascii: "]") else { throw fail("expected ']]' after table name") }
                    i += 1
                }
                try expectEndOfLine()
                if isArray {
                    try Parser.appendTableArray(&root, name, line: line, fail: fail)
                } else {
                    guard !definedTables.contains(name) else { throw fail("table [\(name.joined(separator: "."))] defined twice") }
                    definedTables.insert(name)
                    try Parser.ensureTable(&root, name, line: line, fail: fail)
                }
                current = name
                currentIsArrayElement = isArray
                continue
            }
            let keyLine = line
            let key = try parseDottedKey()
            guard key.count == 1 else { throw fail("dotted keys are not supported here; use a [table]") }
            skipSpaces()
            guard peek() == UInt8(ascii: "=") else { throw fail("expected '=' after key '\(key[0])'") }
            i += 1
            skipSpaces()
            let value = try parseValue()
            try expectEndOfLine()
            try Parser.insert(&root, table: current, intoLastArrayElement: currentIsArrayElement,
                              key: key[0], entry: .init(value: value, line: keyLine), fail: fail)
        }
        return root
    }

    static func ensureTable(_ t: inout TOMLTable, _ path: [String], line: Int, fail: (String) -> TOMLError) throws(TOMLError) {
        guard let head = path.first else { return }
        var child: TOMLTable
        switch t[head]?.value {
        case nil: child = TOMLTable(line: line)
        case .table(let existing): child = existing
        default: throw fail("'\(head)' is already a value, not a table")
        }
        try ensureTable(&child, Array(path.dropFirst()), line: line, fail: fail)
        t.set(head, .init(value: .table(child), line: t[head]?.line ?? line))
    }

    static func appendTableArray(_ t: inout TOMLTable, _ path: [String], line: Int, fail: (String) -> TOMLError) throws(TOMLError) {
        guard let head = path.first else { return }
        if path.count == 1 {
            var arr: [TOMLTable]
            switch t[head]?.value {
            case nil: arr = []
            case .tableArray(let existing): arr = existing
            default: throw fail("'\(head)' is already defined and is not an array of tables")
            }
            arr.append(TOMLTable(line: line))
            t.set(head, .init(value: .tableArray(arr), line: t[head]?.line ?? line))
            return
        }
        var child: TOMLTable
        switch t[head]?.value {
        case nil: child = TOMLTable(line: line)
        case .table(let existing): child = existing
        default: throw fail("'\(head)' is not a table")
        }
        try appendTableArray(&child, Array(path.dropFirst()), line: line, fail: fail)
        t.set(head, .init(value: .table(child), line: t[head]?.line ?? line))
    }

    static func insert(
        _ t: inout TOMLTable, table path: [String], intoLastArrayElement: Bool, key: String,
        entry: TOMLTable.Entry, fail: (String) -> TOMLError
    ) throws(TOMLError) {
        if path.isEmpty {
            guard t[key] == nil else { throw fail("key '\(key)' defined twice") }
            t.set(key, entry)
            return
        }
        let head = path[0]
        let rest = Array(path.dropFirst())
        switch t[head]?.value {
        case .table(var child):
            try insert(&child, table: rest, intoLastArrayElement: intoLastArrayElement, key: key, entry: entry, fail: fail)
            t.set(head, .init(value: .table(child), line: t[head]!.line))
        case .tableArray(var arr) where !arr.isEmpty:
            var last = arr.removeLast()
            try insert(&last, table: rest, intoLastArrayElement: intoLastArrayElement, key: key, entry: entry, fail: fail)
            arr.append(last)
            t.set(head, .init(value: .tableArray(arr), line: t[head]!.line))
        default:
            throw fail("internal: table '\(head)' missing")
        }
    }

    mutating func parseValue() throws(TOMLError) -> TOMLValue {
        guard let c = peek() else { throw fail("expected a value") }
        switch c {
        case UInt8(ascii: "\""): return .string(try parseBasicString())
        case UInt8(ascii: "'"): return .string(try parseLiteralString())
        case UInt8(ascii: "["), UInt8(ascii: "{"):
            guard depth < TOML.maxNesting else { throw fail("arrays and inline tables nest deeper than \(TOML.maxNesting)") }
            depth += 1
            defer { depth -= 1 }
            return c == UInt8(ascii: "[") ? try parseArray() : try parseInlineTable()
        case UInt8(ascii: "t"), UInt8(ascii: "f"):
            if b[i...].starts(with: Array("true".utf8)) { i += 4; return .bool(true) }
            if b[i...].starts(with: Array("false".utf8)) { i += 5; return .bool(false) }
            throw fail("expected a value")
        case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return .integer(try parseInteger())
        default:
            throw fail("unsupported value (strings, integers, booleans and arrays are allowed)")
        }
    }

    mutating func parseInteger() throws(TOMLError) -> Int64 {
        var negative = false
        if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") {
            negative = peek() == UInt8(ascii: "-")
            i += 1
        }
        var radix: Int64 = 10
        if peek() == UInt8(ascii: "0"), i + 1 < b.count, b[i + 1] == UInt8(ascii: "o") {
            radix = 8
            i += 2
        }
        var value: Int64 = 0
        var digits = 0
        while let c = peek() {
            if c == UInt8(ascii: "_") { i += 1; continue }
            guard c >= 0x30 && c <= 0x39 else { break }
            let d = Int64(c - 0x30)
            guard d < radix else { throw fail("digit out of range for an octal number") }
            let (m, o1) = value.multipliedReportingOverflow(by: radix)
            let (s, o2) = m.addingReportingOverflow(d)
            guard !o1 && !o2 else { throw fail("integer out of range") }
            value = s
            digits += 1
            i += 1
        }
        guard digits > 0 else { throw fail("expected digits") }
        if let c = peek(), c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: ":") || Parser.isBareKeyByte(c) {
            throw fail("unsupported number (integers only)")
        }
        return negative ? -value : value
    }

    /// `{ key = value, ... }` on one line (TOML 1.0: no newline, no trailing comma).
    mutating func parseInlineTable() throws(TOMLError) -> TOMLValue {
        i += 1  // {
        var t = TOMLTable(line: line)
        skipSpaces()
        if peek() == UInt8(ascii: "}") { i += 1; return .table(t) }
        while true {
            let key = try parseDottedKey()
            guard key.count == 1 else { throw fail("dotted keys are not supported in inline tables") }
            skipSpaces()
            guard peek() == UInt8(ascii: "=") else { throw fail("expected '=' after key '\(key[0])'") }
            i += 1
            skipSpaces()
            guard peek() != 0x0A, peek() != 0x0D else { throw fail("an inline table must be on one line") }
            let keyLine = line
            let value = try parseValue()
            guard t[key[0]] == nil else { throw fail("key '\(key[0])' defined twice") }
            t.set(key[0], .init(value: value, line: keyLine))
            skipSpaces()
            if peek() == UInt8(ascii: ",") { i += 1; skipSpaces(); continue }
            guard peek() == UInt8(ascii: "}") else { throw fail("expected ',' or '}' in inline table") }
            i += 1
            return .table(t)
        }
    }

    mutating func parseArray() throws(TOMLError) -> TOMLValue {
        i += 1  // [
        var items: [TOMLValue] = []
        while true {
            skipBlank()
            guard let c = peek() else { throw fail("unterminated array") }
            if c == UInt8(ascii: "]") { i += 1; return .array(items) }
            items.append(try parseValue())
            skipBlank()
            if peek() == UInt8(ascii: ",") { i += 1; continue }
            skipBlank()
            guard peek() == UInt8(ascii: "]") else { throw fail("expected ',' or ']' in array") }
        }
    }

    mutating func parseLiteralString() throws(TOMLError) -> String {
        i += 1
        let start = i
        while let c = peek(), c != UInt8(ascii: "'") {
            guard c != 0x0A else { throw fail("unterminated string") }
            i += 1
        }
        guard !atEnd else { throw fail("unterminated string") }
        let s = String(decoding: b[start..<i], as: UTF8.self)
        i += 1
        return s
    }

    mutating func parseBasicString() throws(TOMLError) -> String {
        i += 1
        var out: [UInt8] = []
        while true {
            guard let c = peek() else { throw fail("unterminated string") }
            i += 1
            switch c {
            case UInt8(ascii: "\""):
                guard let s = String(validating: out, as: UTF8.self) else { throw fail("string is not valid UTF-8") }
                return s
            case 0x0A:
                throw fail("unterminated string")
            case UInt8(ascii: "\\"):
                guard let e = peek() else { throw fail("unterminated string") }
                i += 1
                switch e {
                case UInt8(ascii: "\""): out.append(0x22)
                case UInt8(ascii: "\\"): out.append(0x5C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "u"):
                    guard i + 4 <= b.count, let v = UInt32(String(decoding: b[i..<i + 4], as: UTF8.self), radix: 16),
                          let scalar = Unicode.Scalar(v) else { throw fail("bad \\u escape") }
                    i += 4
                    out.append(contentsOf: Array(String(Character(scalar)).utf8))
                default: throw fail("unsupported escape sequence")
                }
            default:
                if c < 0x20 && c != 0x09 { throw fail("control character in string") }
                out.append(c)
            }
        }
    }
}
