internal import CSodium

/// Ed25519 signatures (audit checkpoints). The 64-byte secret key lives in SecretBytes.
public enum Signing {
    public static let publicKeyBytes = Int(crypto_sign_PUBLICKEYBYTES)  // 32
    public static let secretKeyBytes = Int(crypto_sign_SECRETKEYBYTES)  // 64
    public static let signatureBytes = Int(crypto_sign_BYTES)  // 64

    /// A fresh key pair from the CSPRNG.
    public static func keyPair() throws(CryptoError) -> (publicKey: [UInt8], secretKey: SecretBytes) {
        Sodium.ready()
        var pk = [UInt8](repeating: 0, count: publicKeyBytes)
        let sk = try SecretBytes(count: secretKeyBytes)
        _ = sk.withUnsafeMutableBytes { crypto_sign_keypair(&pk, $0.baseAddress!.assumingMemoryBound(to: UInt8.self)) }
        return (pk, sk)
    }

    /// The key pair of a 32-byte seed (what the keyring stores of a signing key:
    /// the 64-byte secret key is derived again at load).
    public static func keyPair(seed: SecretBytes) throws(CryptoError) -> (publicKey: [UInt8], secretKey: SecretBytes) {
        Sodium.ready()
        guard seed.count == Int(crypto_sign_SEEDBYTES) else { throw .badLength(expected: Int(crypto_sign_SEEDBYTES), actual: seed.count) }
        var pk = [UInt8](repeating: 0, count: publicKeyBytes)
        let sk = try SecretBytes(count: secretKeyBytes)
        seed.withUnsafeBytes { s in
            _ = sk.withUnsafeMutableBytes {
                crypto_sign_seed_keypair(&pk, $0.baseAddress!.assumingMemoryBound(to: UInt8.self), s.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }
        return (pk, sk)
    }

    /// The public half of a secret key (libsodium keeps it in the last 32 bytes).
    public static func publicKey(of secretKey: SecretBytes) throws(CryptoError) -> [UInt8] {
        guard secretKey.count == secretKeyBytes else { throw .badLength(expected: secretKeyBytes, actual: secretKey.count) }
        var pk = [UInt8](repeating: 0, count: publicKeyBytes)
        _ = secretKey.withUnsafeBytes { crypto_sign_ed25519_sk_to_pk(&pk, $0.baseAddress!.assumingMemoryBound(to: UInt8.self)) }
        return pk
    }

    /// Detached signature over `message`.
    public static func sign(_ message: [UInt8], secretKey: SecretBytes) throws(CryptoError) -> [UInt8] {
        Sodium.ready()
        guard secretKey.count == secretKeyBytes else { throw .badLength(expected: secretKeyBytes, actual: secretKey.count) }
        var sig = [UInt8](repeating: 0, count: signatureBytes)
        _ = secretKey.withUnsafeBytes {
            crypto_sign_detached(&sig, nil, message, UInt64(message.count), $0.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
        return sig
    }

    /// True only for a valid signature by `publicKey` over exactly `message`.
    public static func verify(_ signature: [UInt8], message: [UInt8], publicKey: [UInt8]) -> Bool {
        Sodium.ready()
        guard signature.count == signatureBytes, publicKey.count == publicKeyBytes else { return false }
        return crypto_sign_verify_detached(signature, message, UInt64(message.count), publicKey) == 0
    }
}
