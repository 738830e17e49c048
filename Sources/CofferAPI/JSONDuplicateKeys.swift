import Foundation

/// Finds a key that appears twice in one JSON object. Foundation's decoder keeps the
/// first of two equal keys silently, so `{"value":"a","value":"b"}` would mean
/// different things to different readers; the API refuses such bodies instead.
/// A single pass over the bytes, linear in the body size; depth is bounded by the
/// body limit and the decoder's own nesting limit. Assumes nothing about validity:
/// malformed JSON returns nil here and is reported by the decoder.
public enum JSONDuplicateKeys {
    public static func first(in bytes: some Collection<UInt8>) -> String? {
        let b = Array(bytes)
        var i = 0
        // one set of keys per open object; nil for arrays
        var stack: [Set<[UInt8]>?] = []
        var expectKey = false
        while i < b.count {
            let c = b[i]
            switch c {
            case UInt8(ascii: "{"):
                stack.append([])
                expectKey = true
                i += 1
            case UInt8(ascii: "["):
                stack.append(nil)
                expectKey = false
                i += 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                if !stack.isEmpty { stack.removeLast() }
                expectKey = false
                i += 1
            case UInt8(ascii: ","):
                if let top = stack.last { expectKey = top != nil }
                i += 1
            case UInt8(ascii: "\""):
                let start = i + 1
                var j = start
                var escaped = false
                while j < b.count, b[j] != UInt8(ascii: "\"") {
                    if b[j] == UInt8(ascii: "\\") { escaped = true; j += 1 }
                    j += 1
                }
                guard j < b.count else { return nil }
                if expectKey, stack.last != nil {
                    var key = Array(b[start..<j])
                    if escaped {
                        // compare keys as the decoder will see them (\u0061 == a)
                        guard let s = try? JSONDecoder().decode(String.self, from: Data(b[(start - 1)...j])) else { return nil }
                        key = Array(s.utf8)
                    }
                    if stack[stack.count - 1]!.insert(key).inserted == false {
                        return String(decoding: key.prefix(64), as: UTF8.self)
                    }
                    expectKey = false
                }
                i = j + 1
            default:
                i += 1
            }
        }
        return nil
    }
}
