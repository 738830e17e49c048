/// Domain label, then each field length-prefixed (u32 big-endian): no two different
/// tuples encode alike.
public enum LengthPrefixed {
    public static func encode(_ label: String, _ fields: [[UInt8]]) -> [UInt8] {
        var out = Array(label.utf8)
        for f in fields {
            let n = UInt32(f.count)
            out += [UInt8(n >> 24), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)]
            out += f
        }
        return out
    }

    /// The inverse: the fields after `label`, nil unless `bytes` is exactly such an
    /// encoding.
    public static func decode(_ label: String, _ bytes: [UInt8]) -> [[UInt8]]? {
        let l = Array(label.utf8)
        guard bytes.count >= l.count, bytes.prefix(l.count).elementsEqual(l) else { return nil }
        var i = l.count
        var out: [[UInt8]] = []
        while i < bytes.count {
            guard bytes.count - i >= 4 else { return nil }
            let n = Int(bytes[i]) << 24 | Int(bytes[i + 1]) << 16 | Int(bytes[i + 2]) << 8 | Int(bytes[i + 3])
            i += 4
            guard bytes.count - i >= n else { return nil }
            out.append(Array(bytes[i..<(i + n)]))
            i += n
        }
        return out
    }
}
