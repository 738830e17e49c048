import CofferAPI
import CofferCrypto
import NIOCore

/// The JSON of the hottest answer (a secret read), written straight into the answer's
/// buffer: the same bytes Foundation's JSONEncoder writes with `.sortedKeys` and
/// `.withoutEscapingSlashes` (EndpointTableTests compares the two), without its
/// machinery, which was 10 % of an audited read's CPU on the event-loop path, and
/// without the value's copies (array, String, Data, base64 String) in the heap: the
/// value goes from guarded memory into the buffer once as text and once as base64.
enum AnswerJSON {
    /// `SecretResponse` with the value read from `value` (its text only when UTF-8).
    static func secret(path: String, value: SecretBytes, currentVersion: Int, metadata m: VersionMetadata) -> ByteBuffer {
        value.withUnsafeBytes { raw in
            var b = ByteBuffer()
            b.reserveCapacity(200 + path.utf8.count * 2 + raw.count * 3)
            b.writeStaticString("{\"current_version\":")
            b.writeDecimal(currentVersion)
            b.writeStaticString(",\"metadata\":{\"created_at\":")
            b.writeJSONString(m.createdAt.utf8)
            b.writeStaticString(",\"created_by\":{\"uid\":")
            b.writeDecimal(Int(m.createdBy.uid))
            if let user = m.createdBy.user {
                b.writeStaticString(",\"user\":")
                b.writeJSONString(user.utf8)
            }
            b.writeStaticString("}")
            if let deleted = m.deletedAt {
                b.writeStaticString(",\"deleted_at\":")
                b.writeJSONString(deleted.utf8)
            }
            b.writeStaticString(",\"size\":")
            b.writeDecimal(m.size)
            b.writeStaticString(",\"state\":")
            b.writeJSONString(m.state.utf8)
            b.writeStaticString(",\"version\":")
            b.writeDecimal(m.version)
            b.writeStaticString("},\"path\":")
            b.writeJSONString(path.utf8)
            if isUTF8(raw) {
                b.writeStaticString(",\"value\":")
                b.writeJSONString(raw)
            }
            b.writeStaticString(",\"value_base64\":\"")
            b.writeBase64(raw)
            b.writeStaticString("\"}")
            return b
        }
    }

    /// Whether the bytes are well-formed UTF-8 (the standard library's own decoder:
    /// no overlong forms, no surrogates, nothing past U+10FFFF).
    static func isUTF8(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var it = bytes.makeIterator()
        var decoder = UTF8()
        while true {
            switch decoder.decode(&it) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }
}

extension ByteBuffer {
    mutating func writeDecimal(_ n: Int) {
        writeString(String(n))
    }

    /// A JSON string of well-formed UTF-8, escaped as JSONEncoder escapes it:
    /// `"` and `\`, the short forms \b \f \n \r \t, every other control character
    /// as \u00xx; `/` and everything from 0x7F up as is.
    mutating func writeJSONString<C: Collection>(_ utf8: C) where C.Element == UInt8 {
        writeInteger(UInt8(ascii: "\""))
        let hex: StaticString = "0123456789abcdef"
        for c in utf8 {
            switch c {
            case UInt8(ascii: "\""): writeStaticString("\\\"")
            case UInt8(ascii: "\\"): writeStaticString("\\\\")
            case 0x08: writeStaticString("\\b")
            case 0x0C: writeStaticString("\\f")
            case 0x0A: writeStaticString("\\n")
            case 0x0D: writeStaticString("\\r")
            case 0x09: writeStaticString("\\t")
            case 0..<0x20:
                writeStaticString("\\u00")
                writeInteger(hex.utf8Start[Int(c >> 4)])
                writeInteger(hex.utf8Start[Int(c & 15)])
            default: writeInteger(c)
            }
        }
        writeInteger(UInt8(ascii: "\""))
    }

    /// Standard base64 (RFC 4648 §4, padded).
    mutating func writeBase64(_ bytes: UnsafeRawBufferPointer) {
        let table: StaticString = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        let t = table.utf8Start
        var i = 0
        let n = bytes.count
        writeWithUnsafeMutableBytes(minimumWritableBytes: (n + 2) / 3 * 4) { out in
            var o = 0
            while i + 3 <= n {
                let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
                out[o] = t[Int(v >> 18 & 63)]; out[o + 1] = t[Int(v >> 12 & 63)]
                out[o + 2] = t[Int(v >> 6 & 63)]; out[o + 3] = t[Int(v & 63)]
                i += 3
                o += 4
            }
            switch n - i {
            case 1:
                let v = UInt32(bytes[i]) << 16
                out[o] = t[Int(v >> 18 & 63)]; out[o + 1] = t[Int(v >> 12 & 63)]
                out[o + 2] = UInt8(ascii: "="); out[o + 3] = UInt8(ascii: "=")
                o += 4
            case 2:
                let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
                out[o] = t[Int(v >> 18 & 63)]; out[o + 1] = t[Int(v >> 12 & 63)]
                out[o + 2] = t[Int(v >> 6 & 63)]; out[o + 3] = UInt8(ascii: "=")
                o += 4
            default: break
            }
            return o
        }
    }
}
