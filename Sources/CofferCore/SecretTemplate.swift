/// A config-file template for `coffer run --template`: text with `{{ secret "PATH" }}`
/// (the secret's value) and `{{ "TEXT" }}` (TEXT itself, e.g. `{{ "{{" }}` for two
/// braces). Nothing else: an unknown function, a malformed path, an unclosed `{{`
/// are errors with line and column, found before anything is fetched or mounted.
public struct SecretTemplate: Sendable, Equatable {
    public enum Part: Sendable, Equatable {
        case text(String)
        case secret(SecretPath)
    }

    public let parts: [Part]
    public static let maxBytes = 1024 * 1024

    /// Every secret the template uses, in order of first use.
    public var paths: [SecretPath] {
        var seen = Set<String>()
        var out: [SecretPath] = []
        for case .secret(let p) in parts where seen.insert(p.rawValue).inserted { out.append(p) }
        return out
    }

    public init(parsing text: String, name: String) throws(CofferError) {
        guard text.utf8.count <= Self.maxBytes else { throw CofferError(.invalidParameter, "\(name): a template is at most 1 MiB") }
        var parts: [Part] = []
        var literal = ""
        let chars = Array(text.unicodeScalars)
        var i = 0
        var line = 1
        var column = 1
        func fail(_ message: String, _ l: Int, _ c: Int) -> CofferError {
            CofferError(.invalidParameter, "\(name):\(l):\(c): \(message)", hint: "templates know {{ secret \"PATH\" }} and {{ \"TEXT\" }}")
        }
        func advance(_ n: Int = 1) {
            for _ in 0..<n where i < chars.count {
                if chars[i] == "\n" { line += 1; column = 1 } else { column += 1 }
                i += 1
            }
        }
        func skipSpace() { while i < chars.count, chars[i] == " " || chars[i] == "\t" { advance() } }
        func stringLiteral() throws(CofferError) -> String {
            let (l, c) = (line, column)
            guard i < chars.count, chars[i] == "\"" else { throw fail("expected a string in double quotes", l, c) }
            advance()
            var s = ""
            while i < chars.count, chars[i] != "\"" {
                guard chars[i] != "\n", chars[i] != "\\" else { throw fail("a string has no escapes and no line breaks", line, column) }
                s.unicodeScalars.append(chars[i])
                advance()
            }
            guard i < chars.count else { throw fail("unclosed string", l, c) }
            advance()
            return s
        }
        while i < chars.count {
            if chars[i] == "{", i + 1 < chars.count, chars[i + 1] == "{" {
                let (l, c) = (line, column)
                advance(2)
                skipSpace()
                if i < chars.count, chars[i] == "\"" {
                    literal += try stringLiteral()
                } else {
                    var word = ""
                    while i < chars.count, chars[i].properties.isAlphabetic || chars[i] == "_" { word.unicodeScalars.append(chars[i]); advance() }
                    guard !word.isEmpty else { throw fail("expected secret \"PATH\" after {{", l, c) }
                    guard word == "secret" else { throw fail("unknown function '\(word)'", l, c) }
                    skipSpace()
                    let raw = try stringLiteral()
                    let path: SecretPath
                    do { path = try SecretPath(raw) } catch { throw fail("'\(raw)' is not a secret path: \(error.message)", l, c) }
                    if !literal.isEmpty { parts.append(.text(literal)); literal = "" }
                    parts.append(.secret(path))
                }
                skipSpace()
                guard i + 1 < chars.count, chars[i] == "}", chars[i + 1] == "}" else { throw fail("expected }} to close the {{ opened here", l, c) }
                advance(2)
            } else if chars[i] == "}", i + 1 < chars.count, chars[i + 1] == "}" {
                throw fail("}} without {{ (write {{ \"}}\" }} for the text)", line, column)
            } else {
                literal.unicodeScalars.append(chars[i])
                advance()
            }
        }
        if !literal.isEmpty { parts.append(.text(literal)) }
        self.parts = parts
    }

    /// The rendered bytes; `value` gives each secret's bytes.
    public func render(_ value: (SecretPath) -> [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        for part in parts {
            switch part {
            case .text(let t): out += Array(t.utf8)
            case .secret(let p): out += value(p)
            }
        }
        return out
    }
}

/// Names of files on a run's tmpfs and of environment variables.
public enum RunNames {
    /// One path segment of `[A-Za-z0-9._-]`, not `.` or `..`, at most 128 bytes.
    public static func checkFileName(_ name: String) throws(CofferError) {
        let b = Array(name.utf8)
        guard !b.isEmpty, b.count <= 128, name != ".", name != "..", b.allSatisfy(SecretPath.isAllowed) else {
            throw CofferError(.invalidParameter, "'\(printable(name))' is not a file name for the tmpfs",
                              hint: "one name of letters, digits, '.', '_' and '-' (no '/', not '.' or '..')")
        }
    }

    /// `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes.
    public static func checkVariable(_ name: String) throws(CofferError) {
        let b = Array(name.utf8)
        let ok = !b.isEmpty && b.count <= 128 && b.enumerated().allSatisfy { i, c in
            (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F || (i > 0 && c >= 0x30 && c <= 0x39)
        }
        guard ok else { throw CofferError(.invalidParameter, "'\(printable(name))' is not an environment variable name") }
    }

    /// NAME as a variable: upper case, anything else than a letter or digit becomes `_`.
    public static func variable(for name: String) -> String {
        var out = String(name.uppercased().unicodeScalars.map { s -> Character in
            (("A"..."Z").contains(s) || ("0"..."9").contains(s)) ? Character(s) : "_"
        })
        if let f = out.unicodeScalars.first, ("0"..."9").contains(f) { out = "_" + out }
        return out
    }

    static func printable(_ s: String) -> String {
        String(s.unicodeScalars.prefix(64).map { $0.properties.generalCategory == .control ? "?" : Character($0) })
    }
}
