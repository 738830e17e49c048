internal import CSodium

/// Argon2id (libsodium `crypto_pwhash`): a passphrase stretched into a 32-byte key.
public enum PassphraseKey {
    public static let saltBytes = Int(crypto_pwhash_SALTBYTES)  // 16
    /// libsodium's MODERATE limits (the default for a new passphrase).
    public static let moderateOps = UInt64(crypto_pwhash_OPSLIMIT_MODERATE)
    public static let moderateMem = Int(crypto_pwhash_MEMLIMIT_MODERATE)
    /// INTERACTIVE: the lowest limits cofferd accepts (tests, small machines).
    public static let interactiveOps = UInt64(crypto_pwhash_OPSLIMIT_INTERACTIVE)
    public static let interactiveMem = Int(crypto_pwhash_MEMLIMIT_INTERACTIVE)
    /// The highest limits cofferd accepts from a stored row: a database edited to ask
    /// for more would otherwise make every unseal attempt a denial of service.
    public static let maxOps = UInt64(crypto_pwhash_OPSLIMIT_SENSITIVE)
    public static let maxMem = Int(crypto_pwhash_MEMLIMIT_SENSITIVE)

    public static func limitsAccepted(ops: UInt64, mem: Int) -> Bool {
        (interactiveOps...maxOps).contains(ops) && (interactiveMem...maxMem).contains(mem)
    }

    /// The key for `passphrase` (its bytes are read in place, never copied out).
    public static func derive(_ passphrase: SecretBytes, salt: [UInt8], ops: UInt64, mem: Int) throws(CryptoError) -> SecretBytes {
        Sodium.ready()
        guard salt.count == saltBytes else { throw .badLength(expected: saltBytes, actual: salt.count) }
        guard limitsAccepted(ops: ops, mem: mem), passphrase.count > 0 else { throw .integrity }
        let out = try SecretBytes(count: AEAD.keyBytes)
        let rc = out.withUnsafeMutableBytes { o in
            passphrase.withUnsafeBytes { p in
                crypto_pwhash(o.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(o.count),
                              p.baseAddress!.assumingMemoryBound(to: CChar.self), UInt64(p.count),
                              salt, ops, mem, crypto_pwhash_ALG_ARGON2ID13)
            }
        }
        guard rc == 0 else { throw .allocation }  // libsodium fails only when it cannot get the memory
        return out
    }
}

/// Shamir's secret sharing over GF(2^8) (the AES field, x^8+x^4+x^3+x+1), byte by
/// byte: any `threshold` shares give the secret back, fewer say nothing about it
/// (each byte's polynomial has random coefficients). Field arithmetic is branch-free
/// and table-free, so its timing does not depend on the secret.
public enum Shamir {
    public struct Share: Sendable {
        /// The x coordinate, 1...255.
        public let index: UInt8
        /// One y per secret byte.
        public let value: SecretBytes
        public init(index: UInt8, value: SecretBytes) {
            self.index = index
            self.value = value
        }
    }

    static func mul(_ a: UInt8, _ b: UInt8) -> UInt8 {
        var a = a, b = b, p: UInt8 = 0
        for _ in 0..<8 {
            p ^= a & (0 &- (b & 1))
            let hi = a >> 7
            a = (a << 1) ^ (0x1B & (0 &- hi))
            b >>= 1
        }
        return p
    }

    /// a^254 = a^-1 (0 for 0), by square-and-multiply over a fixed exponent.
    static func inverse(_ a: UInt8) -> UInt8 {
        var result: UInt8 = 1, base = a
        var e = 254
        while e > 0 {
            if e & 1 == 1 { result = mul(result, base) }
            base = mul(base, base)
            e >>= 1
        }
        return result
    }

    /// Splits `secret` into `count` shares, any `threshold` of which rebuild it.
    public static func split(_ secret: SecretBytes, threshold: Int, count: Int) throws(CryptoError) -> [Share] {
        guard (2...255).contains(threshold), (threshold...255).contains(count) else { throw .badLength(expected: threshold, actual: count) }
        let n = secret.count
        let shares = try (1...count).map { i throws(CryptoError) in Share(index: UInt8(i), value: try SecretBytes(count: n)) }
        let coefficients = try SecretBytes.random(count: n * (threshold - 1))
        secret.withUnsafeBytes { s in
            coefficients.withUnsafeBytes { c in
                for share in shares {
                    let x = share.index
                    share.value.withUnsafeMutableBytes { out in
                        for j in 0..<n {
                            // Horner: a_{k-1} x^{k-1} + ... + a_1 x + s
                            var y: UInt8 = 0
                            for d in stride(from: threshold - 2, through: 0, by: -1) {
                                y = mul(y, x) ^ c[j * (threshold - 1) + d]
                            }
                            out[j] = mul(y, x) ^ s[j]
                        }
                    }
                }
            }
        }
        return shares
    }

    /// The secret at x = 0 (Lagrange). Shares must have distinct non-zero indexes and
    /// one length; `threshold` of them give the secret, fewer give an unrelated value.
    public static func combine(_ shares: [Share]) throws(CryptoError) -> SecretBytes {
        guard let n = shares.first?.value.count, shares.allSatisfy({ $0.value.count == n && $0.index != 0 }),
              Set(shares.map(\.index)).count == shares.count else { throw .integrity }
        let out = try SecretBytes(count: n)
        // basis_i(0) = prod_{j != i} x_j / (x_j - x_i); in GF(2^8) minus is xor
        let basis: [UInt8] = shares.map { si in
            var num: UInt8 = 1, den: UInt8 = 1
            for sj in shares where sj.index != si.index {
                num = mul(num, sj.index)
                den = mul(den, sj.index ^ si.index)
            }
            return mul(num, inverse(den))
        }
        out.withUnsafeMutableBytes { o in
            for (k, share) in shares.enumerated() {
                share.value.withUnsafeBytes { y in
                    for j in 0..<n { o[j] ^= mul(basis[k], y[j]) }
                }
            }
        }
        return out
    }
}

extension SecretBytes {
    /// Zeroes the bytes in place (the buffer stays allocated): for key material
    /// that must be gone at once, while references to it may still exist.
    public func wipe() {
        withUnsafeMutableBytes { raw in
            if let base = raw.baseAddress, raw.count > 0 { sodium_memzero(base, raw.count) }
        }
    }
}
