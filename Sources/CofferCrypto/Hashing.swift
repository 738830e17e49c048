internal import CSodium

/// Keyed and unkeyed BLAKE2b, random bytes, and constant-time comparison.
public enum Hashing {
    /// BLAKE2b with an optional key (16...64 bytes) and output of 16...64 bytes.
    public static func blake2b(_ message: [UInt8], key: SecretBytes? = nil, outputLength: Int = 32) -> [UInt8] {
        Sodium.ready()
        precondition((16...64).contains(outputLength), "BLAKE2b output length out of range")
        var out = [UInt8](repeating: 0, count: outputLength)
        if let key {
            key.withUnsafeBytes { k in
                _ = crypto_generichash(&out, outputLength, message, UInt64(message.count),
                                       k.baseAddress!.assumingMemoryBound(to: UInt8.self), k.count)
            }
        } else {
            _ = crypto_generichash(&out, outputLength, message, UInt64(message.count), nil, 0)
        }
        return out
    }

    /// SHA-256 (OpenSSH fingerprints, certificate digests).
    public static func sha256(_ message: [UInt8]) -> [UInt8] {
        Sodium.ready()
        var out = [UInt8](repeating: 0, count: Int(crypto_hash_sha256_BYTES))
        _ = crypto_hash_sha256(&out, message, UInt64(message.count))
        return out
    }

    /// Constant-time equality of two byte arrays (lengths are public).
    public static func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        Sodium.ready()
        guard a.count == b.count else { return false }
        return a.isEmpty || sodium_memcmp(a, b, a.count) == 0
    }

    /// `count` bytes from the operating system CSPRNG.
    public static func randomBytes(_ count: Int) -> [UInt8] {
        Sodium.ready()
        var out = [UInt8](repeating: 0, count: count)
        randombytes_buf(&out, count)
        return out
    }

    /// Overwrites an array's bytes with zeros in a way the optimiser keeps.
    public static func wipe(_ bytes: inout [UInt8]) {
        bytes.withUnsafeMutableBytes { raw in
            if let base = raw.baseAddress, raw.count > 0 { sodium_memzero(base, raw.count) }
        }
    }
}
