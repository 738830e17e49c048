public import CofferAudit
public import CofferCore
import CofferCrypto
import CofferStore
import Foundation

/// What a backup says of itself, signed with the audit key of the Coffer that made it.
public struct BackupManifest: Codable, Sendable, Equatable {
    public var format: Int
    public var createdAt: Int64
    public var rootKeyID: String
    public var keyIDs: [String]
    public var auditHeadSeq: Int64
    public var auditHeadHash: String
    public var secrets: Int
    public var versions: Int
    public var tokens: Int
    /// SHA-256 of the database bytes that follow.
    public var sha256: String
    /// The policy file's text as it was (signed with the rest); nil when the daemon
    /// runs on its built-in policy.
    public var policy: String?

    enum CodingKeys: String, CodingKey {
        case format, createdAt = "created_at", rootKeyID = "root_key_id", keyIDs = "key_ids", auditHeadSeq = "audit_head_seq"
        case auditHeadHash = "audit_head_hash", secrets, versions, tokens, sha256, policy
    }
}

/// A backup file: a first line naming the format, the manifest (one JSON line), its
/// Ed25519 signature (hex, one line), then a consistent snapshot of the database
/// (`VACUUM INTO`): ciphertext, wrapped keys, policy-independent state and the audit
/// trail — never a value or a key in the clear.
public enum BackupFile {
    static let magic = Array("coffer-backup-v1\n".utf8)

    /// What the signature covers: a domain label, then the manifest line.
    public static func signedMessage(_ manifestJSON: [UInt8]) -> [UInt8] { Array("coffer-backup-manifest-v1\n".utf8) + manifestJSON }

    static func encode(manifestJSON: [UInt8], signature: [UInt8], database: [UInt8]) -> [UInt8] {
        magic + manifestJSON + [0x0A] + Array(Hex.encode(signature).utf8) + [0x0A] + database
    }

    public struct Parsed: Sendable {
        public var manifestJSON: [UInt8]
        public var manifest: BackupManifest
        public var signature: [UInt8]
        public var database: [UInt8]
    }

    /// Splits a backup file; says what is wrong with one that is not.
    public static func decode(_ bytes: [UInt8]) throws(CofferError) -> Parsed {
        guard bytes.starts(with: magic) else {
            throw CofferError(.invalidParameter, "not a Coffer backup (it does not start with coffer-backup-v1)")
        }
        var i = magic.count
        func line() throws(CofferError) -> [UInt8] {
            guard let end = bytes[i...].prefix(1 << 20).firstIndex(of: 0x0A) else {
                throw CofferError(.invalidParameter, "the backup's header is cut short")
            }
            defer { i = end + 1 }
            return Array(bytes[i..<end])
        }
        let manifestJSON = try line()
        let signatureText = try line()
        guard let manifest = try? JSONDecoder().decode(BackupManifest.self, from: Data(manifestJSON)), manifest.format == 1 else {
            throw CofferError(.invalidParameter, "the backup's manifest is unreadable")
        }
        guard let signature = Hex.decode(String(decoding: signatureText, as: UTF8.self)), signature.count == 64 else {
            throw CofferError(.invalidParameter, "the backup's signature is unreadable")
        }
        return Parsed(manifestJSON: manifestJSON, manifest: manifest, signature: signature, database: Array(bytes[i...]))
    }
}

extension SecretEngine {
    /// A consistent online snapshot, with its signed manifest (admin, audited). The
    /// head is signed first, so the snapshot's trail ends in a checkpoint or close to one.
    public func backup(_ p: Principal, ticket: AuditTicket? = nil) async throws(CofferError) -> (file: [UInt8], manifest: BackupManifest) {
        try await gate.perform(ticket, p, .admin, nil, named: "backup") { _ async throws(CofferError) in
            _ = try? audit.checkpointNow()
            let dir = (store.path as NSString).deletingLastPathComponent
            let tmp = dir + "/.backup-" + Hex.encode(Hashing.randomBytes(8)) + ".db"
            defer { unlink(tmp) }
            let (database, manifest): ([UInt8], BackupManifest) = try StoreErrorMapper(audit: audit, logger: logger).call {
                let summary = try store.snapshot(to: tmp)
                let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: tmp)))
                // the manifest describes the snapshot itself, read from it
                let m = BackupManifest(
                    format: 1, createdAt: clock.nowMillis(), rootKeyID: keyring.rootKeyID,
                    keyIDs: summary.keyIDs, auditHeadSeq: summary.auditHeadSeq, auditHeadHash: Hex.encode([UInt8](summary.auditHeadHash)),
                    secrets: summary.secrets, versions: summary.versions, tokens: summary.tokens,
                    sha256: Hex.encode(Hashing.sha256(bytes)),
                    policy: policyStore.path.flatMap { path in
                        FileManager.default.contents(atPath: path).flatMap { $0.count <= 1 << 20 ? String(data: $0, encoding: .utf8) : nil }
                    })
                return (bytes, m)
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            let json: [UInt8]
            do { json = [UInt8](try encoder.encode(manifest)) } catch { throw CofferError(.internal, "cannot encode the backup manifest") }
            let signature: [UInt8]
            do { signature = try Signing.sign(BackupFile.signedMessage(json), secretKey: audit.signingKey) } catch {
                throw CofferError(.internal, "cannot sign the backup manifest")
            }
            return (BackupFile.encode(manifestJSON: json, signature: signature, database: database), manifest)
        }
    }

    /// After a restore opened this engine on a backup's database: the manifest must be
    /// signed by this database's own audit key and describe this very trail, and the
    /// trail must verify. Throws with the reason otherwise.
    public func checkRestored(_ parsed: BackupFile.Parsed) async throws(CofferError) {
        guard Signing.verify(parsed.signature, message: BackupFile.signedMessage(parsed.manifestJSON), publicKey: audit.publicKey) else {
            throw CofferError(.integrity, "the backup's manifest is not signed by the audit key of the database it carries",
                              hint: "the manifest was changed, or the database was swapped for another")
        }
        let head = try StoreErrorMapper(audit: audit, logger: logger).call {
            try store.auditEventHash(seq: parsed.manifest.auditHeadSeq)
        }
        guard parsed.manifest.auditHeadSeq == 0 || (head.map { Hex.encode([UInt8]($0)) } == parsed.manifest.auditHeadHash) else {
            throw CofferError(.integrity, "the backup's trail does not reach the head its manifest names")
        }
        let chain = try StoreErrorMapper(audit: audit, logger: logger).call { try store.auditChain() }
        if case .bad(let seq, let problem) = AuditVerifier.verify(events: chain.events, checkpoints: chain.checkpoints, publicKey: audit.publicKey,
                                                                   anchor: audit.anchor, mac: audit.mac) {
            throw CofferError(.integrity, "the backup's audit trail does not verify at seq \(seq): \(problem)")
        }
        let scan = try StoreErrorMapper(audit: audit, logger: logger).call { try store.integrityScan() }
        guard scan.bad.isEmpty else {
            throw CofferError(.integrity, "\(scan.bad.count) records of the backup fail their MACs, the first: \(scan.bad[0])")
        }
    }
}
