public import CofferCore
public import CofferCrypto
import Foundation

/// Events carry a MAC under a key only the daemon holds (derived from the root key):
/// anyone who can write the database can recompute the public hash chain, but not
/// the MACs, so the daemon never signs a checkpoint over events it did not write.
public struct AuditMAC: Sendable {
    let key: SecretBytes

    public init(key: SecretBytes) { self.key = key }

    /// BLAKE2b-256 keyed, over a domain label and the event's hash (which covers
    /// every field and the previous hash).
    public func mac(_ hash: [UInt8]) -> [UInt8] {
        Hashing.blake2b(Array("coffer-audit-mac-v1".utf8) + hash, key: key, outputLength: 32)
    }

    public func isValid(_ e: AuditEvent) -> Bool {
        guard let m = e.mac else { return false }
        return Hashing.constantTimeEquals(m, mac(e.hash))
    }
}

/// The head anchor, kept outside the database (a file beside it): a signed statement
/// "the trail reached checkpoint `seq` with head `hash`; events up to
/// `prunedThrough` were removed by prune; events up to `legacyThrough` predate
/// MACs". It lets the verifier and the daemon detect a trail truncated back to an
/// earlier checkpoint, events deleted without prune, and emptied tables, none of
/// which the chain alone can show.
public struct AuditAnchor: Sendable, Equatable {
    public var seq: Int64
    public var hash: [UInt8]
    public var prunedThrough: Int64
    public var legacyThrough: Int64
    public var time: Int64
    public var signature: [UInt8]

    public init(seq: Int64, hash: [UInt8], prunedThrough: Int64, legacyThrough: Int64, time: Int64, signature: [UInt8] = []) {
        self.seq = seq
        self.hash = hash
        self.prunedThrough = prunedThrough
        self.legacyThrough = legacyThrough
        self.time = time
        self.signature = signature
    }

    public static let fileName = "audit.anchor"

    var message: [UInt8] {
        LengthPrefixed.encode("coffer-audit-anchor-v1", [
            Array(String(seq).utf8), hash, Array(String(prunedThrough).utf8), Array(String(legacyThrough).utf8), Array(String(time).utf8),
        ])
    }

    public func signed(with key: SecretBytes) throws(CryptoError) -> AuditAnchor {
        var a = self
        a.signature = try Signing.sign(message, secretKey: key)
        return a
    }

    public func isValid(publicKey: [UInt8]) -> Bool { Signing.verify(signature, message: message, publicKey: publicKey) }

    public var text: String {
        "coffer-audit-anchor-v1 seq=\(seq) hash=\(Hex.encode(hash)) pruned=\(prunedThrough) legacy=\(legacyThrough) time=\(time) sig=\(Hex.encode(signature))\n"
    }

    public init?(text: String) {
        let parts = text.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: " ")
        guard parts.count == 7, parts[0] == "coffer-audit-anchor-v1" else { return nil }
        var f: [String: String] = [:]
        for p in parts.dropFirst() {
            let kv = p.split(separator: "=", maxSplits: 1)
            guard kv.count == 2 else { return nil }
            f[String(kv[0])] = String(kv[1])
        }
        guard let seq = f["seq"].flatMap({ Int64($0) }), seq >= 0, let hash = f["hash"].flatMap(Hex.decode), hash.count == 32,
              let pruned = f["pruned"].flatMap({ Int64($0) }), pruned >= 0, let legacy = f["legacy"].flatMap({ Int64($0) }), legacy >= 0,
              let time = f["time"].flatMap({ Int64($0) }), let sig = f["sig"].flatMap(Hex.decode), sig.count == 64 else { return nil }
        self.init(seq: seq, hash: hash, prunedThrough: pruned, legacyThrough: legacy, time: time, signature: sig)
    }

    /// Reads the anchor beside a database; nil when there is no file.
    public static func load(beside databasePath: String) throws(CofferError) -> AuditAnchor? {
        try load(file: (databasePath as NSString).deletingLastPathComponent + "/" + fileName)
    }

    /// Reads the anchor file; nil when there is none.
    public static func load(file path: String) throws(CofferError) -> AuditAnchor? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8), let a = AuditAnchor(text: text) else {
            throw CofferError(.integrity, "the audit head anchor \(path) is unreadable")
        }
        return a
    }
}

