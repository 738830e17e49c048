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
    let anyMask: UInt64

    /// Bounds that keep matching cheap and patterns reviewable (invariant 6). Matching
    /// is linear in path × pattern whatever the pattern (an NFA walk, no backtracking);
    /// these bounds also keep the constant small and are checked at parse time, for
    /// policy files and token paths alike.
    public static let maxSegments = SecretPath.maxDepth
    public static let maxDoubleStars = 4
    public static let maxStarsPerSegment = 8

    public init(_ raw: String) throws(CofferError) {
        guard !raw.isEmpty, raw.utf8.count <= SecretPath.maxLength else {
            throw CofferError(.invalidParameter, "a path pattern must be 1...\(SecretPath.maxLength) bytes")
        }
        var segs: [Segment] = []
        var doubleStars = 0
        for part in raw.split(separator: "/", omittingEmptySubsequences: false) {
            if part.isEmpty { throw CofferError(.invalidParameter, "pattern '\(raw)' has an empty segment") }
            if part == "**" {
                doubleStars += 1
                guard doubleStars <= Self.maxDoubleStars else {
                    throw CofferError(.invalidParameter, "pattern '\(raw.prefix(64))' is too complex: at most \(Self.maxDoubleStars) '**' segments")
                }
                if case .any? = segs.last {
                    throw CofferError(.invalidParameter, "pattern '\(raw.prefix(64))' has two '**' segments in a row", hint: "one '**' already matches any number of segments")
                }
                segs.append(.any)
                continue
            }
            if part.contains("**") { throw CofferError(.invalidParameter, "pattern '\(raw)': '**' must be a whole segment") }
            if part == "." || part == ".." { throw CofferError(.invalidParameter, "pattern '\(raw)' has a '.' or '..' segment") }
            for b in part.utf8 where !(SecretPath.isAllowed(b) || b == UInt8(ascii: "*")) {
                throw CofferError(.invalidParameter, "pattern '\(raw)' has a character outside [A-Za-z0-9._-*/]")
            }
            if part.contains("*") {
                let pieces = part.split(separator: "*", omittingEmptySubsequences: false)
                guard pieces.count - 1 <= Self.maxStarsPerSegment else {
                    throw CofferError(.invalidParameter, "pattern '\(raw.prefix(64))' is too complex: at most \(Self.maxStarsPerSegment) '*' in one segment")
                }
                segs.append(.glob(pieces))
            } else {
                segs.append(.literal(String(part)))
            }
            guard segs.count <= Self.maxSegments else {
                throw CofferError(.invalidParameter, "pattern '\(raw.prefix(64))' has more than \(Self.maxSegments) segments")
            }
        }
        rawValue = raw
        segments = segs
        anyMask = Self.mask(segs)
    }

    public var description: String { rawValue }

    private init(rawValue: String, segments: [Segment]) {
        self.rawValue = rawValue
        self.segments = segments
        self.anyMask = Self.mask(segments)
    }

    /// `**`: every path.
    public static let everything = PathPattern(rawValue: "**", segments: [.any])

    /// Does the pattern match this path ("" is the root, for listing)? An NFA walk:
    /// the set of pattern positions reachable after each path segment, kept as a bit
    /// set (at most 33 positions), so the cost is at most (path segments) × (pattern
    /// segments) segment tests, never exponential, and nothing is allocated.
    public func matches(_ path: String) -> Bool {
        let m = segments.count
        var states: UInt64 = closed(1)
        if !path.isEmpty {
            var rest = path.utf8[...]
            while true {
                let end = rest.firstIndex(of: UInt8(ascii: "/")) ?? rest.endIndex
                let part = Substring(rest[..<end])
                var next: UInt64 = 0
                var bits = states
                while bits != 0 {
                    let i = bits.trailingZeroBitCount
                    bits &= bits - 1
                    guard i < m else { continue }
                    switch segments[i] {
                    case .any: next |= 1 << i  // ** consumes this segment and may take more
                    case .literal(let l): if part == l { next |= 1 << (i + 1) }
                    case .glob(let pieces): if Self.globMatch(pieces, part) { next |= 1 << (i + 1) }
                    }
                }
                guard next != 0 else { return false }
                states = closed(next)
                guard end != rest.endIndex else { break }
                rest = rest[rest.index(after: end)...]
            }
        }
        return states & (1 << m) != 0
    }

    /// A `**` may also take no segment: reaching it means reaching what follows it
    /// (one step suffices: two `**` are never adjacent).
    func closed(_ s: UInt64) -> UInt64 { s | (s & anyMask) << 1 }

    /// Bit i set where segment i is `**`.
    static func mask(_ segments: [Segment]) -> UInt64 {
        var mask: UInt64 = 0
        for (i, seg) in segments.enumerated() { if case .any = seg { mask |= 1 << i } }
        return mask
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
    /// Memoised over (position in self, position in other): polynomial, never
    /// exponential, however many `**` either side has.
    public func isCovered(by other: PathPattern) -> Bool {
        var memo: [Int: Bool] = [:]
        return Self.covered(segments, 0, other.segments, 0, &memo)
    }

    static func covered(_ a: [Segment], _ i: Int, _ b: [Segment], _ j: Int, _ memo: inout [Int: Bool]) -> Bool {
        let key = i * (b.count + 1) + j
        if let known = memo[key] { return known }
        let result: Bool
        if j == b.count {
            result = i == a.count
        } else if case .any = b[j] {
            // b's ** absorbs zero or more of a's segments (any kind)
            result = (i...a.count).contains { covered(a, $0, b, j + 1, &memo) }
        } else if i == a.count {
            result = false
        } else {
            switch (a[i], b[j]) {
            case (.literal(let x), .literal(let y)):
                result = x == y && covered(a, i + 1, b, j + 1, &memo)
            case (.literal(let x), .glob(let parts)):
                result = globMatch(parts, x[...]) && covered(a, i + 1, b, j + 1, &memo)
            case (.glob(let ap), .glob(let bp)):
                // a glob is covered by b's glob only when b is the bare '*' or they are equal
                result = (bp == ["", ""] || ap == bp) && covered(a, i + 1, b, j + 1, &memo)
            default:
                result = false  // a's ** under a non-** segment of b, or a glob under a literal
            }
        }
        memo[key] = result
        return result
    }
}

/// Durations in policy and tokens: "90s", "30m", "1h", "2h30m", "7d".
public enum DurationText {
    /// The longest duration accepted anywhere (ten years): every caller's bound is
    /// below it, and nothing computed from it can overflow.
    public static let maxSeconds = 10 * 365 * 86400

    /// Parses with checked arithmetic: nil for anything malformed, zero, or longer
    /// than `maxSeconds` (never a trap, whatever the digits).
    public static func seconds(_ s: String) -> Int? {
        guard !s.isEmpty, s.utf8.count <= 32 else { return nil }
        var total = 0
        var number = 0
        var digits = 0
        var lastUnit = Int.max  // units in falling order, each once: "2h30m", never "1h1h" or "30m2h"
        for c in s {
            if let d = c.wholeNumberValue, c.isASCII {
                digits += 1
                guard digits <= 9 else { return nil }
                number = number * 10 + d  // at most 9 digits: cannot overflow
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
            guard unit < lastUnit else { return nil }
            lastUnit = unit
            let (part, o1) = number.multipliedReportingOverflow(by: unit)
            let (sum, o2) = total.addingReportingOverflow(part)
            guard !o1, !o2, sum <= maxSeconds else { return nil }
            total = sum
            number = 0
            digits = 0
        }
        guard digits == 0, total > 0 else { return nil }
        return total
    }

    /// A duration as typed on the command line: a bare number is seconds (`--ttl 30`
    /// is `30s`); anything else is passed on as written (and checked where it is used).
    /// Files and the API keep the unit required.
    public static func fromCommandLine(_ s: String) -> String {
        !s.isEmpty && s.utf8.count <= 9 && s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) ? s + "s" : s
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
