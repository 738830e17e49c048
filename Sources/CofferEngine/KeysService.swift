public import CofferCore
public import CofferCrypto
public import CofferStore
import Foundation
import Logging

/// The keyring behind the gate: listing its keys and adding a new active data key.
/// (Root-key changes happen offline, `cofferd rekey`: the daemon holds one root.)
public final class KeysService: Sendable {
    let store: Store
    let keyring: Keyring
    let tokens: TokenService
    let errors: StoreErrorMapper
    let clock: any WallClock
    let logger: Logger

    init(store: Store, keyring: Keyring, tokens: TokenService, errors: StoreErrorMapper, clock: any WallClock, logger: Logger) {
        self.store = store
        self.keyring = keyring
        self.tokens = tokens
        self.errors = errors
        self.clock = clock
        self.logger = logger
    }

    /// Every key with its state (never its material), and the root key's id.
    public func list(_ g: Grant) throws(CofferError) -> (rootKeyID: String, keys: [KeyRecord]) {
        let keys = try errors.call { try store.keyRecords() }
        return (keyring.rootKeyID, keys.map { var k = $0; k.sealed = nil; return k })
    }

    /// A new active data key; the one before turns decrypt-only (what it sealed still opens).
    public func rotateDataKey(_ g: Grant) async throws(CofferError) -> KeyRecord {
        if let r = try errors.call({ try store.rotation() }) {
            throw CofferError(.conflict, "a rotation is running (\(r.done) of \(r.total) versions re-wrapped)", hint: "add a data key once it is done")
        }
        let record: KeyRecord
        g.ticket.update { $0.details["purpose"] = .text(KeyRecord.Purpose.data.rawValue) }
        do {
            record = try await keyring.addDataKey(store: store, guard: tokens.guardFor(g.principal), ticket: g.ticket, now: clock.nowMillis())
        } catch {
            throw errors.map(error)
        }
        logger.notice("new active data key", metadata: ["key.id": "\(record.keyID)", "peer.uid": "\(g.principal.uid)"])
        var r = record
        r.sealed = nil
        return r
    }
}

// MARK: how the root key is held

extension KeysService {
    /// What a rekey makes.
    public enum RekeyTarget: Sendable {
        case passphrase(SecretBytes, KeyHolder.KDFLimits)
        case shares(threshold: Int, count: Int)
        case keyFile
    }

    public struct RekeyResult: Sendable {
        public var holder: HolderRecord
        /// Shares' texts (shares), or a new key file's text (keyfile): shown once.
        public var shares: [ShareText] = []
        public var keyText: SecretBytes?
    }

    /// Changes how the root key is held, proven by the current material. The root key
    /// and everything under it stay as they are: one row changes, with its event.
    public func rekey(_ g: Grant, current: any Unlocker, to target: RekeyTarget) async throws(CofferError) -> RekeyResult {
        guard keyring.opens(with: current) else {
            throw CofferError(.invalidParameter, "the current \(current.mode == .passphrase ? "passphrase" : current.mode == .shares ? "shares" : "key") does not match how this database is held",
                              hint: "prove the current holder: its key file, its passphrase, or threshold shares")
        }
        let root = keyring.root
        let now = clock.nowMillis()
        var result: RekeyResult
        let newKey: SecretBytes
        switch target {
        case .passphrase(let p, let limits):
            let (h, key) = try KeyHolder.passphrase(root: root, passphrase: p, limits: limits, now: now)
            result = RekeyResult(holder: h)
            newKey = key
        case .shares(let threshold, let count):
            let (h, texts, key) = try KeyHolder.shares(root: root, threshold: threshold, count: count, now: now)
            result = RekeyResult(holder: h, shares: texts)
            newKey = key
        case .keyFile:
            let key = try Checked.crypto { () throws(CryptoError) in try SecretBytes.random(count: AEAD.keyBytes) }
            result = RekeyResult(holder: try KeyHolder.keyFile(root: root, fileKey: key, now: now), keyText: KeyFile.text(key))
            newKey = key
        }
        let before = keyring.held.withLock { $0.holder?.unsealKeyID ?? $0.root.keyID }
        g.ticket.update {
            $0.details["mode"] = .text(result.holder.mode.rawValue)
            $0.details["unseal_key_id"] = .text(result.holder.unsealKeyID)
            if let t = result.holder.threshold, let n = result.holder.shareCount {
                $0.details["threshold"] = .number(Int64(t))
                $0.details["shares"] = .number(Int64(n))
            }
        }
        do {
            try await store.replaceHolder(result.holder, expectedUnsealKeyID: before, guard: tokens.guardFor(g.principal), ticket: g.ticket)
        } catch {
            throw errors.map(error)
        }
        keyring.held.withLock { h in
            h.unsealKey = newKey
            h.holder = result.holder
        }
        logger.notice("root key holder changed", metadata: ["mode": "\(result.holder.mode.rawValue)", "peer.uid": "\(g.principal.uid)"])
        return result
    }
}

// MARK: rotation

extension KeysService {
    /// A new root key version and a new active data key, at once (new writes use them);
    /// the background job then re-wraps every version under the new data key and
    /// erases the data keys nothing needs any more. One rotation at a time.
    public func rotate(_ g: Grant) async throws(CofferError) -> RotationRecord {
        if let r = try errors.call({ try store.rotation() }) {
            throw CofferError(.conflict, "a rotation is already running (\(r.done) of \(r.total) versions re-wrapped)",
                              hint: "its progress is in `coffer status`; start another once it is done")
        }
        let now = clock.nowMillis()
        let (old, unsealKey, holder) = keyring.held.withLock { ($0.root, $0.unsealKey, $0.holder) }
        let newRoot = RootKey(try Checked.crypto { () throws(CryptoError) in try SecretBytes.random(count: AEAD.keyBytes) })
        let records: [KeyRecord]
        let auditKey: (keyID: String, publicKey: Data, sealed: Data)?
        let signing: [SigningKeyRecord]
        do {
            records = try store.keyRecords()
            auditKey = try store.auditSigningKey()
            signing = try store.signingKeys()
        } catch {
            throw errors.map(error)
        }
        let resealed: (keys: [(keyID: String, sealed: Data)], audit: Data?, signing: [(keyID: String, sealed: Data)])
        do {
            resealed = try Keyring.resealAll(from: old, to: newRoot, records: records, auditKey: auditKey, signing: signing)
        } catch let e as CofferError {
            throw e
        } catch {
            throw errors.map(error)
        }
        // the holder now seals the new root (a bare key file becomes a keyfile holder:
        // the same file opens the new root)
        var newHolder: HolderRecord
        if let h = holder {
            newHolder = try KeyHolder.record(h.mode, root: newRoot, unsealKey: unsealKey, now: h.createdAt, salt: h.salt, ops: h.opsLimit, mem: h.memLimit)
            newHolder.threshold = h.threshold
            newHolder.shareCount = h.shareCount
            newHolder.shareSet = h.shareSet
            newHolder.shareDigests = h.shareDigests
        } else {
            newHolder = try KeyHolder.keyFile(root: newRoot, fileKey: unsealKey, now: now)
        }
        let dataKey = try Checked.crypto { () throws(CryptoError) in try SecretBytes.random(count: AEAD.keyBytes) }
        let dataKeyID = Hex.encode(Hashing.randomBytes(8))
        let record = KeyRecord(keyID: dataKeyID, purpose: .data, state: .active, createdAt: now, rootKeyID: newRoot.keyID,
                               sealed: try newRoot.seal(dataKey, id: dataKeyID, purpose: .data))
        g.ticket.update {
            $0.details["root_key_id"] = .text(newRoot.keyID)
            $0.details["previous_root_key_id"] = .text(old.keyID)
            $0.details["key_id"] = .text(dataKeyID)
        }
        let rotation: RotationRecord
        do {
            rotation = try await store.rotateRoot(
                oldID: old.keyID, newID: newRoot.keyID, check: try newRoot.check(), now: now, keys: resealed.keys, auditKey: resealed.audit,
                signingKeys: resealed.signing, holder: newHolder, expectedUnsealKeyID: holder?.unsealKeyID ?? old.keyID, newDataKey: record,
                startedBy: g.principal.userName ?? "uid \(g.principal.uid)", guard: tokens.guardFor(g.principal), ticket: g.ticket)
        } catch {
            throw errors.map(error)
        }
        keyring.held.withLock { h in
            h.root = newRoot
            h.holder = newHolder
        }
        keyring.dataKeys.withLock { d in
            d.open[dataKeyID] = dataKey
            d.active = (dataKeyID, dataKey)
        }
        logger.notice("key rotation started", metadata: ["root_key.id": "\(newRoot.keyID)", "key.id": "\(dataKeyID)", "versions": "\(rotation.total)"])
        return rotation
    }

    public func rotationStatus() throws(CofferError) -> RotationRecord? { try errors.call { try store.rotation() } }
}

extension SecretEngine {
    /// How many versions one transaction of the rotation re-wraps.
    static let rewrapBatch = 256

    /// The rotation's background job: re-wraps, in batches, every version not under
    /// the rotation's data key (resuming where a killed daemon stopped: each batch is
    /// one transaction), then erases the data keys nothing needs. Returns when no
    /// rotation is left; the caller polls for the next.
    public func runRotation() async {
        guard let rotation = try? store.rotation() else { return }
        // many instances on one database: one of them re-wraps (a lock in the
        // database, lost with its connection if it dies: another resumes the job)
        guard (try? store.claimRotationJob()) == true else { return }
        defer { store.releaseRotationJob() }
        if store.isShared {
            // this host's keyring must hold the rotation's key before it seals under it
            try? keyring.refreshDataKeys(store: store)
            logger.notice("rotation: this instance re-wraps", metadata: ["instance": "\(store.chain)", "key.id": "\(rotation.targetKeyID)"])
        }
        var cursor: (Int64, Int) = (0, 0)
        var failed = 0
        while !Task.isCancelled {
            let rows: [RewrapRow]
            do { rows = try store.rewrapBatch(target: rotation.targetKeyID, after: cursor, limit: Self.rewrapBatch) } catch {
                logger.error("rotation: cannot read the next versions", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .seconds(1))
                continue
            }
            guard let last = rows.last else { break }
            cursor = (last.secretID, last.version)
            var rewrapped: [(old: RewrapRow, keyID: String, wrappedKey: Data, ciphertext: Data)] = []
            for r in rows {
                guard let path = try? SecretPath(r.path) else { failed += 1; continue }
                do {
                    let value = try keyring.open(wrappedKey: r.wrappedKey, ciphertext: r.ciphertext, path: path, version: r.version, keyID: r.keyID)
                    let sealed = try keyring.seal(value, path: path, version: r.version)
                    guard sealed.keyID == rotation.targetKeyID else {
                        logger.error("rotation: the active data key is not the rotation's; stopping", metadata: ["key.id": "\(sealed.keyID)"])
                        return
                    }
                    rewrapped.append((r, sealed.keyID, sealed.wrappedKey, sealed.ciphertext))
                } catch {
                    failed += 1
                    logger.critical("rotation: a version does not open; it stays under its key", metadata: ["secret.path": "\(r.path)", "version": "\(r.version)"])
                }
            }
            do {
                _ = try await store.storeRewrapped(rewrapped)
                for r in rewrapped { if let p = try? SecretPath(r.old.path) { secrets.cache.invalidate(p) } }
            } catch {
                logger.error("rotation: a batch failed; it is retried", metadata: ["error": "\(error)"])
                cursor = (0, 0)
                try? await Task.sleep(for: .seconds(1))
            }
        }
        guard !Task.isCancelled else { return }
        if failed > 0 {
            logger.critical("rotation: versions that do not open keep their old key; the rotation stays unfinished", metadata: ["versions": "\(failed)"])
            try? await Task.sleep(for: .seconds(60))
            return
        }
        let ticket = gate.ticket(for: .system("rotation"), action: "key_rotation_finished")
        do {
            let erased = try await store.finishRotation(ticket: ticket)
            logger.notice("key rotation finished", metadata: ["erased_keys": "\(erased.joined(separator: ","))"])
            // readers that fetched a row just before its re-wrap still open it for a moment
            try? await Task.sleep(for: .seconds(5))
            keyring.dataKeys.withLock { d in
                for id in erased { d.open[id] = nil }  // zeroed when the last reader lets go
            }
        } catch {
            logger.error("rotation: cannot finish", metadata: ["error": "\(error)"])
            try? await Task.sleep(for: .seconds(1))
        }
    }
}
