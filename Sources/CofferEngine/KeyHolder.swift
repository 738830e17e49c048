public import CofferCore
public import CofferCrypto
public import CofferStore
import Foundation
import Synchronization

/// How the root key is held (keys/README.md, "Ways to hold the root key"):
///
///     key file ─────────────────────────────────▶ root key   (no holder row)
///     key file / passphrase (Argon2id) / k of n Shamir shares
///         ──▶ unseal key ──seals──▶ root key    (holder row: mode, parameters, sealed root)
///
/// The root key never changes with the holder: a rekey re-seals the root key (or
/// writes it to a key file) and touches no key under it.
public enum KeyHolder {
    /// The public id of an unseal key (same derivation as a root key's id).
    public static func keyID(_ key: SecretBytes) -> String { RootKey(key).keyID }

    static func associatedData(mode: HolderRecord.Mode, unsealKeyID: String, rootKeyID: String, salt: Data?, ops: Int64?, mem: Int64?) -> [UInt8] {
        var fields = [Array(mode.rawValue.utf8), Array(unsealKeyID.utf8), Array(rootKeyID.utf8)]
        if let salt, let ops, let mem { fields += [[UInt8](salt), Array(String(ops).utf8), Array(String(mem).utf8)] }
        return LengthPrefixed.encode("coffer/v1/root-key-holder", fields)
    }

    /// A holder row for `root` under `unsealKey`.
    static func record(_ mode: HolderRecord.Mode, root: RootKey, unsealKey: SecretBytes, now: Int64, salt: Data? = nil, ops: Int64? = nil,
                       mem: Int64? = nil) throws(CofferError) -> HolderRecord {
        let uid = keyID(unsealKey)
        let ad = associatedData(mode: mode, unsealKeyID: uid, rootKeyID: root.keyID, salt: salt, ops: ops, mem: mem)
        let wrapped = try Checked.crypto { () throws(CryptoError) in try AEAD.seal(root.bytes, key: unsealKey, associatedData: ad) }
        return HolderRecord(mode: mode, unsealKeyID: uid, wrapped: Data(wrapped), rootKeyID: root.keyID, createdAt: now, salt: salt, opsLimit: ops,
                            memLimit: mem)
    }

    /// The root key a holder row seals, opened with the unseal key.
    static func openRoot(_ h: HolderRecord, unsealKey: SecretBytes) throws(CofferError) -> SecretBytes {
        let ad = associatedData(mode: h.mode, unsealKeyID: h.unsealKeyID, rootKeyID: h.rootKeyID, salt: h.salt, ops: h.opsLimit, mem: h.memLimit)
        guard keyID(unsealKey) == h.unsealKeyID,
              let root = try? AEAD.open([UInt8](h.wrapped), key: unsealKey, associatedData: ad)
        else {
            throw CofferError(.keyFile, h.mode == .passphrase ? "the passphrase does not unseal this database"
                                                              : "the \(h.mode == .shares ? "shares do" : "key does") not unseal this database")
        }
        return root
    }

    /// Passphrase: a new salt, the given Argon2id limits (checked), the root sealed
    /// under the derived key.
    public static func passphrase(root: RootKey, passphrase: SecretBytes, limits: KDFLimits, now: Int64) throws(CofferError)
        -> (HolderRecord, unsealKey: SecretBytes) {
        try checkPassphrase(passphrase)
        let salt = Hashing.randomBytes(PassphraseKey.saltBytes)
        let key = try derive(passphrase, salt: salt, ops: limits.ops, mem: limits.mem)
        return (try record(.passphrase, root: root, unsealKey: key, now: now, salt: Data(salt), ops: Int64(limits.ops), mem: Int64(limits.mem)), key)
    }

    static func derive(_ passphrase: SecretBytes, salt: [UInt8], ops: UInt64, mem: Int) throws(CofferError) -> SecretBytes {
        guard PassphraseKey.limitsAccepted(ops: ops, mem: mem) else {
            throw CofferError(.integrity, "the stored passphrase limits are outside what cofferd accepts (ops \(ops), memory \(mem) bytes)")
        }
        do { return try PassphraseKey.derive(passphrase, salt: salt, ops: ops, mem: mem) } catch {
            throw CofferError(.internal, "cannot derive the passphrase key (Argon2id needs \(mem / 1_048_576) MiB)")
        }
    }

    public static let minPassphraseBytes = 12
    public static let maxPassphraseBytes = 1024

    static func checkPassphrase(_ p: SecretBytes) throws(CofferError) {
        guard p.count >= minPassphraseBytes else {
            throw CofferError(.invalidParameter, "the passphrase is too short (at least \(minPassphraseBytes) bytes)",
                              hint: "use a long passphrase: several words")
        }
        guard p.count <= maxPassphraseBytes else { throw CofferError(.invalidParameter, "the passphrase is longer than \(maxPassphraseBytes) bytes") }
    }

    /// Shares: a random unseal key split k of n; the root sealed under it. The shares'
    /// texts are returned once (they exist nowhere else); their digests are stored.
    public static func shares(root: RootKey, threshold: Int, count: Int, now: Int64) throws(CofferError)
        -> (HolderRecord, shares: [ShareText], unsealKey: SecretBytes) {
        guard (2...16).contains(threshold), (threshold...16).contains(count) else {
            throw CofferError(.invalidParameter, "shares must be 2 to 16, and the threshold 2 to the number of shares (got \(threshold) of \(count))",
                              hint: "for example --shares 5 --threshold 3")
        }
        let key = try Checked.crypto { () throws(CryptoError) in try SecretBytes.random(count: AEAD.keyBytes) }
        let split = try Checked.crypto { () throws(CryptoError) in try Shamir.split(key, threshold: threshold, count: count) }
        let set = Hex.encode(Hashing.randomBytes(4))
        var h = try record(.shares, root: root, unsealKey: key, now: now)
        let texts = split.map { ShareText(set: set, share: $0) }
        h.threshold = threshold
        h.shareCount = count
        h.shareSet = set
        h.shareDigests = split.map { ShareText.digest(set: set, share: $0) }
        return (h, texts, key)
    }

    /// Key file: the root sealed under the key file's key (after a rotation, or a
    /// rekey from shares or a passphrase to a new key file).
    public static func keyFile(root: RootKey, fileKey: SecretBytes, now: Int64) throws(CofferError) -> HolderRecord {
        try record(.keyfile, root: root, unsealKey: fileKey, now: now)
    }

    public struct KDFLimits: Sendable {
        public var ops: UInt64
        public var mem: Int
        public static let moderate = KDFLimits(ops: PassphraseKey.moderateOps, mem: PassphraseKey.moderateMem)
        public static let interactive = KDFLimits(ops: PassphraseKey.interactiveOps, mem: PassphraseKey.interactiveMem)
        public init(ops: UInt64, mem: Int) {
            self.ops = ops
            self.mem = mem
        }
        public static func named(_ s: String) throws(CofferError) -> KDFLimits {
            switch s {
            case "moderate": return .moderate
            case "interactive": return .interactive
            case "sensitive": return KDFLimits(ops: PassphraseKey.maxOps, mem: PassphraseKey.maxMem)
            default: throw CofferError(.invalidParameter, "unknown passphrase limits '\(s)'", hint: "interactive, moderate (default) or sensitive")
            }
        }
    }
}

/// One Shamir share as text: `coffer-share-v1:SET:INDEX:Y:CHECK`, SET the 8 hex digits
/// of the split, INDEX 1-255, Y 64 hex digits, CHECK the first 4 bytes of a BLAKE2b of
/// everything before it, so that a mistyped share is named as mistyped.
public struct ShareText: Sendable {
    public let set: String
    public let index: Int
    /// The share's text (the only place its value lives outside the daemon).
    public let text: SecretBytes

    init(set: String, share: Shamir.Share) {
        self.set = set
        self.index = Int(share.index)
        var body = Array("coffer-share-v1:\(set):\(share.index):".utf8)
        share.value.withUnsafeBytes { y in
            for b in y {
                body.append(KeyFile.hexDigit(b >> 4))
                body.append(KeyFile.hexDigit(b & 0x0F))
            }
        }
        body += Array(":\(Hex.encode(Self.checksum(body)))".utf8)
        self.text = (try? SecretBytes(consuming: &body)) ?? { fatalError("cannot allocate guarded memory for a share") }()
    }

    static func checksum(_ body: [UInt8]) -> [UInt8] {
        Array(Hashing.blake2b(Array("coffer share check v1".utf8) + body, outputLength: 16).prefix(4))
    }

    static func digest(set: String, share: Shamir.Share) -> String {
        let y = share.value.copyToArray()
        return Hex.encode(Hashing.blake2b(LengthPrefixed.encode("coffer/v1/share-digest", [Array(set.utf8), [share.index], y]), outputLength: 32))
    }

    /// Parses a share's text (whitespace around it ignored). The errors name what is
    /// wrong (format, checksum) and never echo the share.
    public static func parse(_ raw: [UInt8]) throws(CofferError) -> (set: String, share: Shamir.Share) {
        var t = raw[...]
        while let f = t.first, f == 0x20 || f == 0x0A || f == 0x0D || f == 0x09 { t = t.dropFirst() }
        while let l = t.last, l == 0x20 || l == 0x0A || l == 0x0D || l == 0x09 { t = t.dropLast() }
        let parts = t.split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0].elementsEqual("coffer-share-v1".utf8), parts[1].count == 8, parts[3].count == 64, parts[4].count == 8,
              let set = String(bytes: parts[1], encoding: .utf8), set.allSatisfy(\.isHexDigit), set == set.lowercased(),
              let idxText = String(bytes: parts[2], encoding: .utf8), idxText.count <= 3, idxText.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), idxText.first != "0", let idx = UInt8(idxText), idx > 0,
              let check = String(bytes: parts[4], encoding: .utf8), let checkBytes = Hex.decode(check)
        else {
            throw CofferError(.invalidParameter, "that is not a Coffer share (expected coffer-share-v1:SET:INDEX:VALUE:CHECK)",
                              hint: "give the share exactly as cofferd printed it")
        }
        let body = Array(t.prefix(t.count - 9))  // without ":CHECK"
        guard Hashing.constantTimeEquals(checksum(body), checkBytes) else {
            throw CofferError(.invalidParameter, "share \(idx) of set \(set) is mistyped (its checksum does not match)",
                              hint: "check the share character by character")
        }
        let value: SecretBytes
        do { value = try SecretBytes(count: 32) } catch { throw CofferError(.internal, "cannot allocate guarded memory for a share") }
        var ok = true
        let y = Array(parts[3])
        value.withUnsafeMutableBytes { out in
            for i in 0..<32 {
                let hi = KeyFile.hexValue(y[2 * i]), lo = KeyFile.hexValue(y[2 * i + 1])
                if hi > 15 || lo > 15 { ok = false }
                out[i] = (hi << 4) | (lo & 0x0F)
            }
        }
        guard ok else { throw CofferError(.invalidParameter, "share \(idx) of set \(set) has a character that is not a hex digit") }
        return (set, Shamir.Share(index: idx, value: value))
    }
}

/// How the daemon obtains its unseal key (and through it the root key).
public protocol Unlocker: Sendable {
    var description: String { get }
    var mode: HolderRecord.Mode { get }
    /// The unseal key: a key file's key; a passphrase's Argon2id key under the
    /// holder's salt and limits; the key that shares rebuild.
    func unsealKey(holder: HolderRecord?) throws(CofferError) -> SecretBytes
}

/// A passphrase (typed at `coffer operator unseal`, or read by `cofferd init`).
public final class PassphraseUnlocker: Unlocker {
    let passphrase: SecretBytes
    public init(passphrase: SecretBytes) { self.passphrase = passphrase }
    public var description: String { "passphrase" }
    public var mode: HolderRecord.Mode { .passphrase }
    public func unsealKey(holder: HolderRecord?) throws(CofferError) -> SecretBytes {
        guard let h = holder, h.mode == .passphrase, let salt = h.salt, let ops = h.opsLimit, let mem = h.memLimit, ops > 0, mem > 0 else {
            throw CofferError(.keyFile, "this database is not held by a passphrase")
        }
        return try KeyHolder.derive(passphrase, salt: [UInt8](salt), ops: UInt64(ops), mem: Int(mem))
    }
}

/// The key k shares rebuilt (the daemon's unseal round collects them).
public final class SharesUnlocker: Unlocker {
    let key: SecretBytes
    public init(key: SecretBytes) { self.key = key }
    /// Threshold shares given at once (a rekey's proof), each checked as in a round.
    public convenience init(texts: [[UInt8]], holder: HolderRecord, set: String) throws(CofferError) {
        var round = ShareRound(set: set, startedAt: .now)
        for t in texts { try round.add(try ShareText.parse(t), holder: holder, uid: 0) }
        self.init(key: try round.combine())
    }
    public var description: String { "shares" }
    public var mode: HolderRecord.Mode { .shares }
    public func unsealKey(holder: HolderRecord?) throws(CofferError) -> SecretBytes { key }
}

/// A round of shares toward an unseal: one share per call from any admin, until the
/// threshold; `reset` discards it, and it expires after `ttl` untouched.
public struct ShareRound: Sendable {
    public var set: String
    var shares: [Shamir.Share] = []
    public var contributors: [UInt32] = []
    public var startedAt: ContinuousClock.Instant
    public var count: Int { shares.count }

    /// Adds a share after checking it against the holder: the right split (set),
    /// one of its digests, not already given.
    mutating func add(_ parsed: (set: String, share: Shamir.Share), holder h: HolderRecord, uid: UInt32) throws(CofferError) {
        let idx = parsed.share.index
        guard parsed.set == h.shareSet else {
            throw CofferError(.invalidParameter, "share \(idx) belongs to another split (set \(parsed.set)), not this database's (set \(h.shareSet ?? "-"))",
                              hint: "shares from another `cofferd init` or an earlier rekey do not open this database")
        }
        guard let digests = h.shareDigests, Int(idx) <= digests.count,
              Hashing.constantTimeEquals(Array(ShareText.digest(set: parsed.set, share: parsed.share).utf8), Array(digests[Int(idx) - 1].utf8))
        else {
            throw CofferError(.invalidParameter, "share \(idx) of set \(parsed.set) is not one of this database's shares",
                              hint: "it has a valid checksum but another value: was it edited along with its checksum?")
        }
        guard !shares.contains(where: { $0.index == idx }) else {
            throw CofferError(.invalidParameter, "share \(idx) was already given in this round", hint: "the next share must be another one")
        }
        shares.append(parsed.share)
        contributors.append(uid)
    }

    func combine() throws(CofferError) -> SecretBytes {
        try Checked.crypto { () throws(CryptoError) in try Shamir.combine(shares) }
    }
}
