import CofferCrypto
import Testing

func hex(_ s: String) -> [UInt8] {
    let u = Array(s.utf8)
    func v(_ c: UInt8) -> UInt8 { c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x61 + 10 }
    return stride(from: 0, to: u.count, by: 2).map { v(u[$0]) << 4 | v(u[$0 + 1]) }
}

func toHex(_ b: [UInt8]) -> String { b.map { String($0 >> 4, radix: 16) + String($0 & 15, radix: 16) }.joined() }

/// draft-irtf-cfrg-xchacha-03, appendix A.3.1 (the published AEAD_XChaCha20_Poly1305 vector).
enum DraftVector {
    static let key = hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
    static let nonce = hex("404142434445464748494a4b4c4d4e4f5051525354555657")
    static let aad = hex("50515253c0c1c2c3c4c5c6c7")
    static let plaintext = Array("Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".utf8)
    static let ciphertext = hex(
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
            + "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
            + "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
            + "21f9664c97637da9768812f615c68b13b52e")
    static let tag = hex("c0875924c1c7987947deafd8780acf49")
}

@Suite struct AEADTests {
    @Test func publishedVectorEncrypts() throws {
        let key = try SecretBytes.copying(DraftVector.key)
        let out = try DraftVector.plaintext.withUnsafeBytes {
            try AEAD.encrypt($0, key: key, nonce: DraftVector.nonce, associatedData: DraftVector.aad)
        }
        #expect(toHex(out) == toHex(DraftVector.ciphertext + DraftVector.tag))
    }

    @Test func publishedVectorDecrypts() throws {
        let key = try SecretBytes.copying(DraftVector.key)
        let sealed = DraftVector.nonce + DraftVector.ciphertext + DraftVector.tag
        let opened = try AEAD.open(sealed, key: key, associatedData: DraftVector.aad)
        #expect(opened.copyToArray() == DraftVector.plaintext)
    }

    @Test func everyFlippedByteOfSealedDataFailsWithIntegrity() throws {
        let key = try SecretBytes.copying(DraftVector.key)
        let sealed = DraftVector.nonce + DraftVector.ciphertext + DraftVector.tag
        for i in sealed.indices {
            for bit in [0x01, 0x80] as [UInt8] {
                var bad = sealed
                bad[i] ^= bit
                #expect(throws: CryptoError.integrity) { try AEAD.open(bad, key: key, associatedData: DraftVector.aad) }
            }
        }
    }

    @Test func everyFlippedByteOfAssociatedDataFailsWithIntegrity() throws {
        let key = try SecretBytes.copying(DraftVector.key)
        let sealed = DraftVector.nonce + DraftVector.ciphertext + DraftVector.tag
        for i in DraftVector.aad.indices {
            var ad = DraftVector.aad
            ad[i] ^= 0x01
            #expect(throws: CryptoError.integrity) { try AEAD.open(sealed, key: key, associatedData: ad) }
        }
        #expect(throws: CryptoError.integrity) { try AEAD.open(sealed, key: key, associatedData: []) }
        #expect(throws: CryptoError.integrity) { try AEAD.open(sealed, key: key, associatedData: DraftVector.aad + [0]) }
    }

    @Test func wrongKeyAndTruncationFail() throws {
        let sealed = DraftVector.nonce + DraftVector.ciphertext + DraftVector.tag
        var k = DraftVector.key
        k[31] ^= 1
        let wrong = try SecretBytes.copying(k)
        #expect(throws: CryptoError.integrity) { try AEAD.open(sealed, key: wrong, associatedData: DraftVector.aad) }
        let key = try SecretBytes.copying(DraftVector.key)
        #expect(throws: CryptoError.integrity) { try AEAD.open(Array(sealed.dropLast()), key: key, associatedData: DraftVector.aad) }
        #expect(throws: CryptoError.integrity) { try AEAD.open(Array(sealed.prefix(39)), key: key, associatedData: DraftVector.aad) }
    }

    @Test func sealUsesFreshNoncesAndRoundTrips() throws {
        let key = try SecretBytes.random(count: 32)
        let msg = Array("hello".utf8)
        let a = try msg.withUnsafeBytes { try AEAD.seal($0, key: key, associatedData: [1]) }
        let b = try msg.withUnsafeBytes { try AEAD.seal($0, key: key, associatedData: [1]) }
        #expect(a != b)
        #expect(a.count == AEAD.nonceBytes + msg.count + AEAD.tagBytes)
        #expect(try AEAD.open(a, key: key, associatedData: [1]).copyToArray() == msg)
        #expect(try AEAD.open(b, key: key, associatedData: [1]).copyToArray() == msg)
    }

    @Test func keysOfTheWrongLengthAreRefused() throws {
        let short = try SecretBytes.random(count: 16)
        #expect(throws: CryptoError.badLength(expected: 32, actual: 16)) {
            try [1, 2, 3].withUnsafeBytes { try AEAD.seal($0, key: short, associatedData: []) }
        }
    }
}

@Suite struct HashingTests {
    // RFC 7693, appendix A: BLAKE2b-512("abc").
    @Test func blake2bKnownAnswer() {
        #expect(toHex(Hashing.blake2b(Array("abc".utf8), outputLength: 64)) ==
            "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d17d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923")
        #expect(toHex(Hashing.blake2b([], outputLength: 64)) ==
            "786a02f742015903c6c6fd852552d272912f4740e15847618a86e217f71f5419d25e1031afee585313896444934eb04b903a685b1448b755d56f701afe9be2ce")
    }

    @Test func keyedHashDependsOnKey() throws {
        let k1 = try SecretBytes.random(count: 32)
        let k2 = try SecretBytes.random(count: 32)
        let m = Array("token".utf8)
        #expect(Hashing.blake2b(m, key: k1) == Hashing.blake2b(m, key: k1))
        #expect(Hashing.blake2b(m, key: k1) != Hashing.blake2b(m, key: k2))
        #expect(Hashing.blake2b(m, key: k1) != Hashing.blake2b(m))
    }

    @Test func constantTimeEquality() throws {
        #expect(Hashing.constantTimeEquals([1, 2, 3], [1, 2, 3]))
        #expect(!Hashing.constantTimeEquals([1, 2, 3], [1, 2, 4]))
        #expect(!Hashing.constantTimeEquals([1, 2, 3], [1, 2]))
        let a = try SecretBytes.copying([9, 9])
        #expect(a.constantTimeEquals(try SecretBytes.copying([9, 9])))
        #expect(!a.constantTimeEquals(try SecretBytes.copying([9, 8])))
    }

    @Test func secretBytesWipesTheSourceArray() throws {
        var source: [UInt8] = [1, 2, 3, 4]
        let s = try SecretBytes(consuming: &source)
        #expect(source.isEmpty)
        #expect(s.copyToArray() == [1, 2, 3, 4])
        #expect(String(describing: s).contains("1") == false)
    }

    @Test func randomBytesDiffer() throws {
        #expect(Hashing.randomBytes(32) != Hashing.randomBytes(32))
        #expect(try SecretBytes.random(count: 32).copyToArray() != SecretBytes.random(count: 32).copyToArray())
    }
}

@Suite struct SigningTests {
    // RFC 8032, section 7.1, TEST 2 (one-byte message 0x72).
    @Test func rfc8032Vector() throws {
        let seed = hex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
        let pk = hex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
        // libsodium's 64-byte secret key is seed || public key
        let sk = try SecretBytes.copying(seed + pk)
        #expect(try Signing.publicKey(of: sk) == pk)
        let sig = try Signing.sign([0x72], secretKey: sk)
        #expect(toHex(sig) == "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00")
        #expect(Signing.verify(sig, message: [0x72], publicKey: pk))
    }

    @Test func tamperingFailsVerification() throws {
        let (pk, sk) = try Signing.keyPair()
        let msg = Array("checkpoint 42".utf8)
        let sig = try Signing.sign(msg, secretKey: sk)
        #expect(Signing.verify(sig, message: msg, publicKey: pk))
        for i in sig.indices {
            var bad = sig
            bad[i] ^= 1
            #expect(!Signing.verify(bad, message: msg, publicKey: pk))
        }
        #expect(!Signing.verify(sig, message: msg + [0], publicKey: pk))
        let (other, _) = try Signing.keyPair()
        #expect(!Signing.verify(sig, message: msg, publicKey: other))
    }
}
