/// A policy path pattern: segments joined by '/', where a segment is a literal,
/// contains `*` (any characters within that one segment), or is exactly `**`
/// (any number of segments, including none). `ci/*/db`, `ci/**`, `app-*/key`.
public struct PathPattern: Hashable, Sendable, CustomStringConvertible {
    enum Segment: Hashable, Sendable {
        case literal(String)
        case glob([Substring])  // the parts between '*'s
        case any  // **
    }

    public let rawValue: String
    let segments: [Segment]

    public init(_ raw: String) throws(CofferError) {
        guard !raw.isEmpty, raw.utf8.count <= SecretPath.maxLength else {
            throw CofferError(.invalidParameter, "a path pattern must be 1...\(SecretPath.maxLength) bytes")
        }
        var segs: [Segment] = []
        for part in raw.split(separator: "/", omittingEmptySubsequences: false) {
            if part.isEmpty { throw CofferError(.invalidParameter, "pattern '\(raw)' has an empty segment") }
            if part == "**" { segs.append(.any); continue }
            if part.contains("**") { throw CofferError(.invalidParameter, "pattern '\(raw)': '**' must be a whole segment") }
            if part == "." || part == ".." { throw CofferError(.invalidParameter, "pattern '\(raw)' has a '.' or '..' segment") }
            for b in part.utf8 where !(SecretPath.isAllowed(b) || b == UInt8(ascii: "*")) {
                throw CofferError(.invalidParameter, "pattern '\(raw)' has a character outside [A-Za-z0-9._-*/]")
            }
            if part.contains("*") {
                segs.append(.glob(part.split(separator: "*", omittingEmptySubsequences: false)))
            } else {
                segs.append(.literal(String(part)))
            }
        }
        rawValue = raw
        segments = segs
    }

    public var description: String { rawValue }

    private init(rawValue: String, segments: [Segment]) {
        self.rawValue = rawValue
        self.segments = segments
    }

    /// `**`: every path.
    public static let everything = PathPattern(rawValue: "**", segments: [.any])

    /// Does the pattern match this path ("" is the root, for listing)?
    public func matches(_ path: String) -> Bool {
        let parts = path.isEmpty ? [] : path.split(separator: "/", omittingEmptySubsequences: false)
        return Self.match(segments[...], parts[...])
    }

    static func match(_ p: ArraySlice<Segment>, _ s: ArraySlice<Substring>) -> Bool {
        guard let first = p.first else { return s.isEmpty }
        switch first {
        case .any:
            // ** takes zero or more segments
            var rest = s
            while true {
                if match(p.dropFirst(), rest) { return true }
                guard !rest.isEmpty else { return false }
                rest = rest.dropFirst()
            }
        case .literal(let l):
            guard let head = s.first, head == l else { return false }
            return match(p.dropFirst(), s.dropFirst())
        case .glob(let parts):
            guard let head = s.first, globMatch(parts, head) else { return false }
            return match(p.dropFirst(), s.dropFirst())
        }
    }

    /// `parts` are the pieces between '*': the first must be a prefix, the last a
    /// suffix, the middle ones appear in order.
    static func globMatch(_ parts: [Substring], _ s: Substring) -> Bool {
        guard let first = parts.first, let last = parts.last, parts.count >= 2 else { return false }
        guard s.hasPrefix(first) else { return false }
        var rest = s.dropFirst(first.count)
        for mid in parts.dropFirst().dropLast() where !mid.isEmpty {
            guard let r = rest.firstRange(of: mid) else { return false }
            rest = rest[r.upperBound...]
        }
        return rest.count >= last.count && rest.hasSuffix(last)
    }

    /// Conservative containment: true only if every path this pattern matches is
    /// also matched by `other` (used so that a token can only narrow its creator's).
    public func isCovered(by other: PathPattern) -> Bool {
        Self.covered(segments[...], other.segments[...])
    }

    static func covered(_ a: ArraySlice<Segment>, _ b: ArraySlice<Segment>) -> Bool {
        guard let bf = b.first else { return a.isEmpty }
        if case .any = bf {
            // b's ** absorbs zero or more of a's segments (any kind)
            var rest = a
            while true {
                if covered(rest, b.dropFirst()) { return true }
                guard !rest.isEmpty else { return false }
                rest = rest.dropFirst()
            }
        }
        guard let af = a.first else { return false }
        switch (af, bf) {
        case (.literal(let x), .literal(let y)):
            return x == y && covered(a.dropFirst(), b.dropFirst())
        case (.literal(let x), .glob(let parts)):
            return globMatch(parts, x[...]) && covered(a.dropFirst(), b.dropFirst())
        case (.glob(let ap), .glob(let bp)):
            // a glob is covered by b's glob only when b is the bare '*' or they are equal
            return (bp == ["", ""] || ap == bp) && covered(a.dropFirst(), b.dropFirst())
        default:
            return false  // a's ** under a non-** segment of b, or a glob under a literal
        }
    }
}

/// Durations in policy and tokens: "90s", "30m", "1h", "2h30m", "7d".
public enum DurationText {
    public static func seconds(_ s: String) -> Int? {
        guard !s.isEmpty else { return nil }
        var total = 0
        var number = 0
        var digits = 0
        for c in s {
            if let d = c.wholeNumberValue, c.isASCII {
                number = number &* 10 &+ d
                digits += 1
                guard digits <= 9 else { return nil }
                continue
            }
            guard digits > 0 else { return nil }
            let unit: Int
            switch c {
            case "s": unit = 1
            case "m": unit = 60
            case "h": unit = 3600
            case "d": unit = 86400
            default: return nil
            }
            total += number * unit
            number = 0
            digits = 0
        }
        guard digits == 0, total > 0 else { return nil }
        return total
    }

    public static func format(_ seconds: Int) -> String {
        var s = seconds
        var out = ""
        for (unit, name) in [(86400, "d"), (3600, "h"), (60, "m"), (1, "s")] where s >= unit {
            out += "\(s / unit)\(name)"
            s %= unit
        }
        return out.isEmpty ? "0s" : out
    }
}
