@testable import CofferCrypto
import Testing

@Suite struct ShamirTests {
    /// The field: multiplication agrees with the AES reference (FIPS-197 §4.2: {57}·{83} = {c1}),
    /// and every non-zero element has an inverse.
    @Test func fieldArithmetic() {
        #expect(Shamir.mul(0x57, 0x83) == 0xC1)
        #expect(Shamir.mul(0x57, 0x13) == 0xFE)
        for a in 1...255 { #expect(Shamir.mul(UInt8(a), Shamir.inverse(UInt8(a))) == 1) }
        #expect(Shamir.inverse(0) == 0)
    }

    /// Any k of n shares rebuild the secret, for many (k, n) and random secrets.
    @Test(arguments: [(2, 2), (2, 3), (3, 5), (5, 5), (4, 9), (10, 16)])
    func anyThresholdSubsetRebuilds(_ kn: (Int, Int)) throws {
        let (k, n) = kn
        for _ in 0..<8 {
            let secret = try SecretBytes.random(count: 32)
            let shares = try Shamir.split(secret, threshold: k, count: n)
            #expect(shares.count == n)
            #expect(Set(shares.map(\.index)).count == n)
            for _ in 0..<10 {
                let subset = Array(shares.shuffled().prefix(k + Int.random(in: 0...(n - k))))
                #expect(try Shamir.combine(subset).constantTimeEquals(secret))
            }
        }
    }

    /// k-1 shares say nothing: for a fixed set of k-1 shares, every candidate value
    /// of a secret byte is consistent with some k-th share (so the k-1 shares fit every
    /// secret equally), and what k-1 shares combine to is not the secret.
    @Test func belowThresholdRevealsNothing() throws {
        let secret = try SecretBytes.copying(Array(repeating: 0xA5, count: 4))
        let k = 3
        let shares = try Shamir.split(secret, threshold: k, count: 5)
        let known = Array(shares.prefix(k - 1))
        var reachable = Set<UInt8>()
        for y in 0...255 {
            let candidate = Shamir.Share(index: 5, value: try SecretBytes.copying([UInt8(y), 0, 0, 0]))
            reachable.insert(try Shamir.combine(known + [candidate]).copyToArray()[0])
        }
        #expect(reachable.count == 256)
        // and the shares' bytes are spread over the field across splits of the same secret
        var firstBytes = Set<UInt8>()
        for _ in 0..<200 { firstBytes.insert(try Shamir.split(secret, threshold: k, count: 5)[0].value.copyToArray()[0]) }
        #expect(firstBytes.count > 100)
        // fewer shares than the threshold combine to something else (a false match has odds 2^-32)
        #expect(try !Shamir.combine(known).constantTimeEquals(secret))
    }

    @Test func refusesBadInput() throws {
        let secret = try SecretBytes.random(count: 32)
        #expect(throws: CryptoError.self) { try Shamir.split(secret, threshold: 1, count: 3) }
        #expect(throws: CryptoError.self) { try Shamir.split(secret, threshold: 4, count: 3) }
        #expect(throws: CryptoError.self) { try Shamir.split(secret, threshold: 2, count: 256) }
        let shares = try Shamir.split(secret, threshold: 2, count: 3)
        #expect(throws: CryptoError.self) { try Shamir.combine([shares[0], shares[0]]) }
        #expect(throws: CryptoError.self) { try Shamir.combine([]) }
    }
}

@Suite struct PassphraseKeyTests {
    /// Argon2id through libsodium: deterministic for (passphrase, salt, limits),
    /// different for any change of them; limits outside the accepted range refused.
    @Test func derivesAndBindsEveryInput() throws {
        let pass = try SecretBytes.copying(Array("correct horse battery staple".utf8))
        let salt = [UInt8](repeating: 7, count: PassphraseKey.saltBytes)
        let ops = PassphraseKey.interactiveOps, mem = PassphraseKey.interactiveMem
        let a = try PassphraseKey.derive(pass, salt: salt, ops: ops, mem: mem)
        #expect(try PassphraseKey.derive(pass, salt: salt, ops: ops, mem: mem).constantTimeEquals(a))
        #expect(try !PassphraseKey.derive(pass, salt: [UInt8](repeating: 8, count: 16), ops: ops, mem: mem).constantTimeEquals(a))
        #expect(try !PassphraseKey.derive(pass, salt: salt, ops: ops + 1, mem: mem).constantTimeEquals(a))
        let other = try SecretBytes.copying(Array("correct horse battery stapler".utf8))
        #expect(try !PassphraseKey.derive(other, salt: salt, ops: ops, mem: mem).constantTimeEquals(a))
        #expect(throws: CryptoError.self) { try PassphraseKey.derive(pass, salt: salt, ops: PassphraseKey.maxOps + 1, mem: mem) }
        #expect(throws: CryptoError.self) { try PassphraseKey.derive(pass, salt: salt, ops: ops, mem: 1024) }
        #expect(throws: CryptoError.self) { try PassphraseKey.derive(pass, salt: [1, 2], ops: ops, mem: mem) }
    }
}
