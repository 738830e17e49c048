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
}
