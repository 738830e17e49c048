/// A validated secret path: `segment(/segment)*`, each segment of
/// `[A-Za-z0-9._-]`, never `.` or `..`, no empty segments (invariant 6: bounded).
public struct SecretPath: Hashable, Sendable, Comparable, CustomStringConvertible {
    public static let maxLength = 512
    public static let maxSegmentLength = 128
    public static let maxDepth = 32

    public let rawValue: String

    public init(_ raw: String) throws(CofferError) {
        try SecretPath.validate(raw, allowEmpty: false)
        self.rawValue = raw
    }

    public var description: String { rawValue }
    public var segments: [Substring] { rawValue.split(separator: "/") }
    public static func < (a: SecretPath, b: SecretPath) -> Bool { a.rawValue < b.rawValue }

    public static func isAllowed(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
            return true
        default:
            return false
        }
    }

    /// Validates a path (or, with `allowEmpty`, a list prefix that may be empty).
    static func validate(_ raw: String, allowEmpty: Bool) throws(CofferError) {
        let bytes = Array(raw.utf8)
        if bytes.isEmpty {
            if allowEmpty { return }
            throw CofferError(.invalidPath, "the secret path is empty", hint: "use a path like ci/app/db-password")
        }
        guard bytes.count <= maxLength else {
            throw CofferError(.invalidPath, "the secret path is longer than \(maxLength) bytes")
        }
        var segmentStart = 0
        var depth = 0
        for i in 0...bytes.count {
            if i == bytes.count || bytes[i] == UInt8(ascii: "/") {
                let seg = bytes[segmentStart..<i]
                depth += 1
                if seg.isEmpty {
                    throw CofferError(.invalidPath, "the secret path has an empty segment", hint: "no leading, trailing or double slashes")
                }
                if seg.elementsEqual([UInt8(ascii: ".")]) || seg.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) {
                    throw CofferError(.invalidPath, "the secret path has a '.' or '..' segment")
                }
                if seg.count > maxSegmentLength {
                    throw CofferError(.invalidPath, "a path segment is longer than \(maxSegmentLength) bytes")
                }
                segmentStart = i + 1
            } else if !isAllowed(bytes[i]) {
                throw CofferError(.invalidPath, "the secret path has a character outside [A-Za-z0-9._-/]",
                                  hint: "segments use letters, digits, '.', '_' and '-'")
            }
        }
        guard depth <= maxDepth else {
            throw CofferError(.invalidPath, "the secret path is deeper than \(maxDepth) segments")
        }
    }
}

/// A list prefix: empty (the root) or a valid path, with an optional trailing slash.
public struct SecretPrefix: Hashable, Sendable {
    public let rawValue: String

    public init(_ raw: String) throws(CofferError) {
        var s = raw
        if s.hasSuffix("/") { s.removeLast() }
        try SecretPath.validate(s, allowEmpty: true)
        rawValue = s
    }

    /// The string every path under this prefix starts with ("" or "a/b/").
    public var childPrefix: String { rawValue.isEmpty ? "" : rawValue + "/" }
}

/// Percent-decoding of a URL path component, strict: a malformed escape is an error.
public enum PercentDecoding {
    public static func decode(_ s: Substring) throws(CofferError) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count)
        var it = s.utf8.makeIterator()
        while let b = it.next() {
            if b == UInt8(ascii: "%") {
                guard let h = it.next(), let l = it.next(), let hv = hexValue(h), let lv = hexValue(l) else {
                    throw CofferError(.invalidPath, "the request path has a malformed percent escape")
                }
                out.append(hv << 4 | lv)
            } else {
                out.append(b)
            }
        }
        guard let str = String(validating: out, as: UTF8.self) else {
            throw CofferError(.invalidPath, "the request path is not valid UTF-8")
        }
        return str
    }

    static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return b - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    /// Encodes everything but unreserved characters and '/' (used by the client).
    public static func encodePath(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            if SecretPath.isAllowed(b) || b == UInt8(ascii: "/") {
                out.unicodeScalars.append(Unicode.Scalar(b))
            } else {
                out += "%" + String(b, radix: 16, uppercase: true).leftPad(2)
            }
        }
        return out
    }
}

extension String {
    fileprivate func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}

/// Characters allowed in token accessors in URLs.
public enum SecretPathChars {
    public static func isToken(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x61 && b <= 0x7A) || (b >= 0x41 && b <= 0x5A) || b == UInt8(ascii: "_")
    }
}
