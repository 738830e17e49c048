#if canImport(Glibc)
import Glibc
#endif

// OpenSSH's wire formats as Coffer writes and reads them: public keys (RFC 4253
// §6.6), user certificates (PROTOCOL.certkeys) and key revocation lists
// (PROTOCOL.krl). Everything here is pure and bounded: what comes from outside (a
// public key line, a certificate in SSH_AUTH_INFO_0) is parsed strictly, never
// trusted beyond its shape; the daemon decides what it signs.

/// RFC 4251 encodings.
public struct SSHWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    public init() {}
    public mutating func byte(_ v: UInt8) { bytes.append(v) }
    public mutating func u32(_ v: UInt32) { for s in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt32(s))) } }
    public mutating func u64(_ v: UInt64) { for s in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt64(s))) } }
    public mutating func string<C: Collection>(_ v: C) where C.Element == UInt8 {
        u32(UInt32(v.count))
        bytes.append(contentsOf: v)
    }
    public mutating func string(_ v: String) { string(Array(v.utf8)) }
    public mutating func raw<C: Collection>(_ v: C) where C.Element == UInt8 { bytes.append(contentsOf: v) }
}

public struct SSHReader: Sendable {
    public struct Malformed: Error, Sendable {}
    let b: [UInt8]
    var i = 0
    public init(_ bytes: [UInt8]) { b = bytes }
    public var atEnd: Bool { i == b.count }
    public mutating func u32() throws(Malformed) -> UInt32 {
        guard b.count - i >= 4 else { throw Malformed() }
        defer { i += 4 }
        return b[i..<i + 4].reduce(0) { $0 << 8 | UInt32($1) }
    }
    public mutating func u64() throws(Malformed) -> UInt64 {
        guard b.count - i >= 8 else { throw Malformed() }
        defer { i += 8 }
        return b[i..<i + 8].reduce(0) { $0 << 8 | UInt64($1) }
    }
    public mutating func string() throws(Malformed) -> [UInt8] {
        let n = Int(try u32())
        guard n <= b.count - i else { throw Malformed() }
        defer { i += n }
        return Array(b[i..<i + n])
    }
    /// A string that must be UTF-8 text.
    public mutating func text() throws(Malformed) -> String {
        let s = try string()
        guard let t = String(validating: s, as: UTF8.self) else { throw Malformed() }
        return t
    }
}

/// A user's public key, checked for shape: the three types Coffer signs.
public struct SSHPublicKey: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        case ed25519 = "ssh-ed25519"
        case ecdsaP256 = "ecdsa-sha2-nistp256"
        case rsa = "ssh-rsa"
        public var certificateType: String { rawValue + "-cert-v01@openssh.com" }
    }

    public let kind: Kind
    /// The whole public key blob (type string first).
    public let blob: [UInt8]
    /// The blob without its type string: what a certificate carries after its nonce.
    public let fields: [UInt8]
    /// Key size in bits (RSA: the modulus).
    public let bits: Int

    public static let maxLineBytes = 16 * 1024
    public static let rsaBits = 2048...8192

    static func bad(_ message: String) -> CofferError {
        CofferError(.invalidParameter, message, hint: "give an OpenSSH public key line (ssh-ed25519, ecdsa-sha2-nistp256 or ssh-rsa), e.g. ~/.ssh/id_ed25519.pub")
    }

    /// Parses `TYPE BASE64 [COMMENT]` (one line). Private keys, certificates, other
    /// types, trailing bytes and out-of-range sizes are refused.
    public static func parse(_ text: String) throws(CofferError) -> SSHPublicKey {
        guard text.utf8.count <= maxLineBytes else { throw bad("the public key is longer than \(maxLineBytes) bytes") }
        if text.contains("PRIVATE KEY") { throw bad("that is a private key: never send it anywhere; give the .pub file") }
        let lines = text.split(whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" }).filter { !$0.allSatisfy(\.isWhitespace) }
        guard lines.count == 1 else { throw bad("give exactly one public key line") }
        let parts = lines[0].split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true)
        guard parts.count >= 2 else { throw bad("not an OpenSSH public key line") }
        let type = String(parts[0])
        guard let kind = Kind(rawValue: type) else {
            if type.hasSuffix("-cert-v01@openssh.com") { throw bad("that is a certificate, not a public key") }
            throw bad("unsupported key type '\(type.prefix(40))'")
        }
        guard let decoded = Base64.decode(String(parts[1])) else { throw bad("the key's base64 is malformed") }
        return try fromBlob(decoded, expected: kind)
    }

    public static func fromBlob(_ blob: [UInt8], expected: Kind? = nil) throws(CofferError) -> SSHPublicKey {
        var r = SSHReader(blob)
        do {
            let type = try r.text()
            guard let kind = Kind(rawValue: type), expected == nil || expected == kind else { throw bad("the key's type and its blob disagree") }
            let start = r.i
            var bits = 0
            switch kind {
            case .ed25519:
                guard try r.string().count == 32 else { throw bad("an ssh-ed25519 key is 32 bytes") }
                bits = 256
            case .ecdsaP256:
                guard try r.text() == "nistp256" else { throw bad("an ecdsa-sha2-nistp256 key must name the curve nistp256") }
                let point = try r.string()
                guard point.count == 65, point[0] == 4, P256.isOnCurve(Array(point[1..<33]), Array(point[33..<65])) else {
                    throw bad("the ecdsa key is not a point of P-256")
                }
                bits = 256
            case .rsa:
                let e = try r.string()
                let n = try r.string()
                guard Self.mpintIsPositive(e), Self.mpintIsPositive(n), e.count <= 5, e.last! & 1 == 1 else { throw bad("the RSA key's exponent is malformed") }
                let nb = n.drop { $0 == 0 }
                bits = nb.count * 8 - nb.first!.leadingZeroBitCount
                guard rsaBits.contains(bits), nb.last! & 1 == 1 else { throw bad("RSA keys must have \(rsaBits.lowerBound)...\(rsaBits.upperBound) bits") }
                let ev = e.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                guard ev >= 3 else { throw bad("the RSA key's exponent is malformed") }
            }
            guard r.atEnd else { throw bad("the key has bytes after its end") }
            return SSHPublicKey(kind: kind, blob: blob, fields: Array(blob[start...]), bits: bits)
        } catch let e as CofferError {
            throw e
        } catch {
            throw bad("the key's blob is malformed")
        }
    }

    /// A positive mpint in its minimal form (RFC 4251 §5).
    static func mpintIsPositive(_ m: [UInt8]) -> Bool {
        guard let first = m.first, first & 0x80 == 0 else { return false }
        if first == 0 { return m.count >= 2 && m[1] & 0x80 != 0 }
        return true
    }

    /// `SHA256:…` as ssh-keygen -l prints it (the caller supplies SHA-256).
    public static func fingerprint(sha256 digest: [UInt8]) -> String {
        "SHA256:" + String(Base64.encode(digest).prefix { $0 != "=" })
    }
}

/// P-256 on-curve check: y² = x³ − 3x + b (mod p), with 32-bit limbs (small and
/// plain: it runs once per signing request).
enum P256 {
    typealias Num = [UInt32]  // little-endian, 8 limbs
    static let p: Num = limbs("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff")
    static let b: Num = limbs("5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b")

    static func limbs(_ hex: String) -> Num {
        let bytes = Array(hex.utf8)
        var out = Num(repeating: 0, count: 8)
        for k in 0..<8 {
            let chunk = bytes[(56 - 8 * k)..<(64 - 8 * k)]
            out[k] = UInt32(String(decoding: chunk, as: UTF8.self), radix: 16)!
        }
        return out
    }

    static func fromBytes(_ be: [UInt8]) -> Num {
        var out = Num(repeating: 0, count: 8)
        for (k, byte) in be.reversed().enumerated() { out[k / 4] |= UInt32(byte) << UInt32(8 * (k % 4)) }
        return out
    }

    static func less(_ a: Num, _ b: Num) -> Bool {
        for k in stride(from: a.count - 1, through: 0, by: -1) where a[k] != b[k] { return a[k] < b[k] }
        return false
    }

    static func sub(_ a: Num, _ b: Num) -> Num {
        var out = a
        var borrow: Int64 = 0
        for k in 0..<a.count {
            var d = Int64(a[k]) - Int64(b[k]) - borrow
            borrow = d < 0 ? 1 : 0
            if d < 0 { d += 1 << 32 }
            out[k] = UInt32(d)
        }
        return out
    }

    static func add(_ a: Num, _ b: Num) -> Num {  // mod p, inputs < p
        var out = Num(repeating: 0, count: 9)
        var carry: UInt64 = 0
        for k in 0..<8 {
            let s = UInt64(a[k]) + UInt64(b[k]) + carry
            out[k] = UInt32(truncatingIfNeeded: s)
            carry = s >> 32
        }
        out[8] = UInt32(carry)
        let p9 = p + [0]
        if !less(out, p9) { out = sub(out, p9) }
        return Array(out[0..<8])
    }

    static func mul(_ a: Num, _ b: Num) -> Num {  // mod p, bit-serial reduction
        var prod = [UInt64](repeating: 0, count: 16)
        for i in 0..<8 {
            var carry: UInt64 = 0
            for j in 0..<8 {
                let t = UInt64(a[i]) * UInt64(b[j]) + prod[i + j] + carry
                prod[i + j] = t & 0xffff_ffff
                carry = t >> 32
            }
            prod[i + 8] += carry
        }
        var r = Num(repeating: 0, count: 9)
        let p9 = p + [0]
        for bit in stride(from: 511, through: 0, by: -1) {
            var c: UInt32 = UInt32((prod[bit / 32] >> UInt64(bit % 32)) & 1)
            for k in 0..<9 {
                let next = r[k] >> 31
                r[k] = r[k] << 1 | c
                c = next
            }
            if !less(r, p9) { r = sub(r, p9) }
        }
        return Array(r[0..<8])
    }

    static func isOnCurve(_ xb: [UInt8], _ yb: [UInt8]) -> Bool {
        let x = fromBytes(xb), y = fromBytes(yb)
        guard less(x, p), less(y, p) else { return false }
        let three = add(add(x, x), x)
        // a − b (mod p) as a + (p − b): below 2p, so add's one subtraction suffices
        let rhs = add(add(mul(mul(x, x), x), sub(p, three)), b)
        return mul(y, y) == rhs
    }
}

/// What a user certificate says (PROTOCOL.certkeys), for signing and for reading.
public struct SSHCertificate: Sendable, Equatable {
    public var key: SSHPublicKey
    public var serial: UInt64
    public var keyID: String
    public var principals: [String]
    public var validAfter: UInt64
    public var validBefore: UInt64
    /// name → value (force-command, source-address); encoded sorted by name.
    public var criticalOptions: [String: String]
    /// Flag extensions (permit-pty …); encoded sorted.
    public var extensions: [String]

    public init(key: SSHPublicKey, serial: UInt64, keyID: String, principals: [String], validAfter: UInt64, validBefore: UInt64,
                criticalOptions: [String: String], extensions: [String]) {
        self.key = key
        self.serial = serial
        self.keyID = keyID
        self.principals = principals
        self.validAfter = validAfter
        self.validBefore = validBefore
        self.criticalOptions = criticalOptions
        self.extensions = extensions
    }

    public static let userType: UInt32 = 1

    /// Everything the CA signs: the certificate up to (and with) the signature key.
    public func toBeSigned(nonce: [UInt8], caKeyBlob: [UInt8]) -> [UInt8] {
        var w = SSHWriter()
        w.string(key.kind.certificateType)
        w.string(nonce)
        w.raw(key.fields)
        w.u64(serial)
        w.u32(Self.userType)
        w.string(keyID)
        var p = SSHWriter()
        for name in principals { p.string(name) }
        w.string(p.bytes)
        w.u64(validAfter)
        w.u64(validBefore)
        var o = SSHWriter()
        for name in criticalOptions.keys.sorted() {
            o.string(name)
            var v = SSHWriter()
            v.string(criticalOptions[name]!)
            o.string(v.bytes)
        }
        w.string(o.bytes)
        var e = SSHWriter()
        for name in Set(extensions).sorted() {
            e.string(name)
            e.string([UInt8]())
        }
        w.string(e.bytes)
        w.string([UInt8]())  // reserved
        w.string(caKeyBlob)
        return w.bytes
    }

    /// The signed blob: `toBeSigned` followed by the Ed25519 signature.
    public static func assemble(toBeSigned: [UInt8], ed25519Signature: [UInt8]) -> [UInt8] {
        var s = SSHWriter()
        s.string("ssh-ed25519")
        s.string(ed25519Signature)
        var w = SSHWriter()
        w.raw(toBeSigned)
        w.string(s.bytes)
        return w.bytes
    }

    /// An Ed25519 public key as an OpenSSH blob.
    public static func ed25519Blob(_ publicKey: [UInt8]) -> [UInt8] {
        var w = SSHWriter()
        w.string("ssh-ed25519")
        w.string(publicKey)
        return w.bytes
    }

    /// What a certificate blob from outside claims (SSH_AUTH_INFO_0): parsed for
    /// shape only; whether Coffer made it is decided by looking it up.
    public struct Claimed: Sendable {
        public var serial: UInt64
        public var keyID: String
        public var signatureKey: [UInt8]
    }

    public static func read(_ blob: [UInt8]) -> Claimed? {
        var r = SSHReader(blob)
        do throws(SSHReader.Malformed) {
            let type = try r.text()
            guard let kind = SSHPublicKey.Kind.allCases.first(where: { $0.certificateType == type }) else { return nil }
            _ = try r.string()  // nonce
            switch kind {
            case .ed25519: _ = try r.string()
            case .ecdsaP256, .rsa: _ = try r.string(); _ = try r.string()
            }
            let serial = try r.u64()
            _ = try r.u32()
            let keyID = try r.text()
            _ = try r.string()
            _ = try r.u64()
            _ = try r.u64()
            _ = try r.string()
            _ = try r.string()
            _ = try r.string()
            let signatureKey = try r.string()
            _ = try r.string()
            guard r.atEnd else { return nil }
            return Claimed(serial: serial, keyID: keyID, signatureKey: signatureKey)
        } catch {
            return nil
        }
    }

    /// Principals, option values and extension names Coffer accepts in a rule:
    /// printable ASCII, no spaces or commas (sshd splits on them).
    public static func isValidName(_ s: String, max: Int = 256) -> Bool {
        !s.isEmpty && s.utf8.count <= max && s.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ",") }
    }

    public static let knownExtensions: Set<String> = [
        "permit-X11-forwarding", "permit-agent-forwarding", "permit-port-forwarding", "permit-pty", "permit-user-rc", "no-touch-required",
    ]

    /// `source-address`: a comma-separated list of addresses or CIDR blocks.
    public static func isValidSourceAddress(_ s: String) -> Bool {
        let items = s.split(separator: ",", omittingEmptySubsequences: false)
        guard !items.isEmpty, items.count <= 64, s.utf8.count <= 2048 else { return false }
        return items.allSatisfy { item in
            let parts = item.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count <= 2 else { return false }
            let addr = String(parts[0])
            var buf = [UInt8](repeating: 0, count: 16)
            let v4 = inet_pton(AF_INET, addr, &buf) == 1
            let v6 = !v4 && inet_pton(AF_INET6, addr, &buf) == 1
            guard v4 || v6 else { return false }
            guard parts.count == 2 else { return true }
            guard let bits = Int(parts[1]), parts[1].allSatisfy(\.isNumber) else { return false }
            return (0...(v4 ? 32 : 128)).contains(bits)
        }
    }
}

/// Key revocation lists (PROTOCOL.krl): one certificates section for Coffer's CA
/// with the revoked serials.
public enum SSHKRL {
    public static let magic: UInt64 = 0x5353_484b_524c_0a00  // "SSHKRL\n\0"

    public static func encode(version: UInt64, generatedAt: UInt64, caKeyBlob: [UInt8], serials: [UInt64], keyIDs: [String] = [],
                              comment: String = "coffer") -> [UInt8] {
        var w = SSHWriter()
        w.u64(magic)
        w.u32(1)  // format version
        w.u64(version)
        w.u64(generatedAt)
        w.u64(0)  // flags
        w.string([UInt8]())  // reserved
        w.string(comment)
        let list = Array(Set(serials.filter { $0 != 0 })).sorted()
        let ids = Array(Set(keyIDs.filter { !$0.isEmpty })).sorted()
        if !list.isEmpty || !ids.isEmpty {
            var section = SSHWriter()
            section.string(caKeyBlob)
            section.string([UInt8]())  // reserved
            if !list.isEmpty {
                section.byte(0x20)  // KRL_SECTION_CERT_SERIAL_LIST
                var serialList = SSHWriter()
                for s in list { serialList.u64(s) }
                section.string(serialList.bytes)
            }
            if !ids.isEmpty {
                section.byte(0x23)  // KRL_SECTION_CERT_KEY_ID
                var idList = SSHWriter()
                for id in ids { idList.string(id) }
                section.string(idList.bytes)
            }
            w.byte(1)  // KRL_SECTION_CERTIFICATES
            w.string(section.bytes)
        }
        return w.bytes
    }
}
