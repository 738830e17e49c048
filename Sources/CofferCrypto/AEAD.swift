internal import CSodium

/// XChaCha20-Poly1305 (IETF) with associated data. Sealed form: nonce || ciphertext || tag.
public enum AEAD {
    public static let keyBytes = Int(crypto_aead_xchacha20poly1305_ietf_KEYBYTES)  // 32
    public static let nonceBytes = Int(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES)  // 24
    public static let tagBytes = Int(crypto_aead_xchacha20poly1305_ietf_ABYTES)  // 16

    /// Seals with a fresh random nonce (192 bits: random nonces never collide in practice).
    public static func seal(
        _ plaintext: UnsafeRawBufferPointer, key: SecretBytes, associatedData: [UInt8]
    ) throws(CryptoError) -> [UInt8] {
        Sodium.ready()
        var nonce = [UInt8](repeating: 0, count: nonceBytes)
        randombytes_buf(&nonce, nonceBytes)
        let body = try encrypt(plaintext, key: key, nonce: nonce, associatedData: associatedData)
        return nonce + body
    }

    /// Seals the bytes of another SecretBytes (key wrapping).
    public static func seal(_ plaintext: SecretBytes, key: SecretBytes, associatedData: [UInt8]) throws(CryptoError) -> [UInt8] {
        try plaintext.withUnsafeBytes { (raw) throws(CryptoError) -> [UInt8] in
            try seal(raw, key: key, associatedData: associatedData)
        }
    }

    /// Opens `nonce || ciphertext || tag`; any change to any byte, to the key or to the
    /// associated data gives `.integrity`, never plaintext.
    public static func open(_ sealed: [UInt8], key: SecretBytes, associatedData: [UInt8]) throws(CryptoError) -> SecretBytes {
        guard sealed.count >= nonceBytes + tagBytes else { throw .integrity }
        let nonce = Array(sealed[0..<nonceBytes])
        let body = sealed.withUnsafeBytes { raw in
            Result { () throws(CryptoError) in
                try decrypt(UnsafeRawBufferPointer(rebasing: raw[nonceBytes...]), key: key, nonce: nonce, associatedData: associatedData)
            }
        }
        return try body.get()
    }

    /// Raw encryption with a caller-chosen nonce. Exposed for known-answer tests;
    /// production code uses `seal`, which never reuses a nonce.
    public static func encrypt(
        _ plaintext: UnsafeRawBufferPointer, key: SecretBytes, nonce: [UInt8], associatedData: [UInt8]
    ) throws(CryptoError) -> [UInt8] {
        Sodium.ready()
        guard key.count == keyBytes else { throw .badLength(expected: keyBytes, actual: key.count) }
        guard nonce.count == nonceBytes else { throw .badLength(expected: nonceBytes, actual: nonce.count) }
        var out = [UInt8](repeating: 0, count: plaintext.count + tagBytes)
        var outLen: UInt64 = 0
        let rc = key.withUnsafeBytes { k in
            crypto_aead_xchacha20poly1305_ietf_encrypt(
                &out, &outLen,
                plaintext.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(plaintext.count),
                associatedData, UInt64(associatedData.count),
                nil, nonce, k.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
        guard rc == 0, Int(outLen) == out.count else { throw .integrity }
        return out
    }

    /// Raw decryption of `ciphertext || tag` into guarded memory.
    public static func decrypt(
        _ ciphertext: UnsafeRawBufferPointer, key: SecretBytes, nonce: [UInt8], associatedData: [UInt8]
    ) throws(CryptoError) -> SecretBytes {
        Sodium.ready()
        guard key.count == keyBytes else { throw .badLength(expected: keyBytes, actual: key.count) }
        guard nonce.count == nonceBytes else { throw .badLength(expected: nonceBytes, actual: nonce.count) }
        guard ciphertext.count >= tagBytes else { throw .integrity }
        let out = try SecretBytes(count: ciphertext.count - tagBytes)
        var outLen: UInt64 = 0
        let rc = out.withUnsafeMutableBytes { o in
            key.withUnsafeBytes { k in
                crypto_aead_xchacha20poly1305_ietf_decrypt(
                    o.baseAddress!.assumingMemoryBound(to: UInt8.self), &outLen, nil,
                    ciphertext.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(ciphertext.count),
                    associatedData, UInt64(associatedData.count),
                    nonce, k.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }
        // On failure libsodium leaves the output untouched (zeroed SecretBytes, freed here).
        guard rc == 0, Int(outLen) == out.count else { throw .integrity }
        return out
    }
}
