public import CofferCore
public import CofferCrypto
public import CofferStore
import Foundation
import Synchronization
public import CofferAudit

/// The root key, unlocked and checked against a database (keys/README.md).
public struct RootKey: Sendable {
    public let keyID: String
    let bytes: SecretBytes

    static let checkPlaintext = Array("coffer-keycheck-v1".utf8)

    public init(_ bytes: SecretBytes) {
        self.bytes = bytes
        // A public, one-way name for the key: keyed BLAKE2b of a constant.
        self.keyID = Hex.encode(Hashing.blake2b(Array("coffer key id v1".utf8), key: bytes, outputLength: 16).prefix(8))
    }

    /// Unlocks against a database: the unlocker must be of the kind that holds the
    /// database's root key, and its key must open it. The database is only read
    /// (read-only connection), so a wrong key leaves the file byte-identical.
    public static func unlock(_ unlocker: any Unlocker, databasePath: String) throws(CofferError) -> Unsealed {
        try unlock(unlocker, database: .sqlite(path: databasePath))
    }

    public static func unlock(_ unlocker: any Unlocker, database: DatabaseLocation) throws(CofferError) -> Unsealed {
        let databasePath = database.description
        let existing: (keyID: String, check: Data)?
        let holder: HolderRecord?
        do {
            existing = try Store.readKeyCheck(location: database)
            holder = existing == nil ? nil : try Store.readHolder(location: database)
        } catch let e as CofferError {
            throw e
        } catch {
            throw CofferError(.storage, "cannot read the database \(databasePath): \(Store.describe(error))")
        }
        guard let existing else {
            // a new database: a new holder (init), or a key file that is the root key
            if let n = unlocker as? NewHolderUnlocker { return n.unsealed }
            guard unlocker.mode == .keyfile else { throw CofferError(.keyFile, "no database at \(databasePath) to unseal") }
            let key = try unlocker.unsealKey(holder: nil)
            return Unsealed(root: RootKey(key), unsealKey: key, holder: nil, enroll: nil)
        }
        let mode = holder?.mode ?? .keyfile
        guard unlocker.mode == mode else {
            throw CofferError(.keyFile, "the database \(databasePath) is held by \(mode.described), not by \(unlocker.mode.described)",
                              hint: mode == .keyfile ? "coffer unseal --key-file FILE" : mode == .passphrase ? "coffer operator unseal (it prompts for the passphrase)"
                                  : "coffer operator unseal --share-file FILE, once per share")
        }
        let key = try unlocker.unsealKey(holder: holder)
        let root = RootKey(holder == nil ? key : try KeyHolder.openRoot(holder!, unsealKey: key))
        guard existing.keyID == root.keyID, root.verify(check: existing.check) else {
            throw CofferError(.keyFile, "the root key from \(unlocker.description) does not unlock the database \(databasePath)",
                              hint: "the database was created with another root key; point keys.key_file at that key")
        }
        return Unsealed(root: root, unsealKey: key, holder: holder, enroll: nil)
    }

    func check() throws(CofferError) -> Data {
        let plain = try Checked.crypto { () throws(CryptoError) in try SecretBytes.copying(RootKey.checkPlaintext) }
        return Data(try Checked.crypto { () throws(CryptoError) in
            try AEAD.seal(plain, key: bytes, associatedData: AssociatedData.keyCheck(keyID: keyID))
        })
    }

    func verify(check: Data) -> Bool {
        guard let opened = try? AEAD.open([UInt8](check), key: bytes, associatedData: AssociatedData.keyCheck(keyID: keyID)) else {
            return false
        }
        return opened.withUnsafeBytes { $0.elementsEqual(RootKey.checkPlaintext) }
    }

    /// A keyring key sealed under this root, bound to (key id, purpose, root key id).
    func seal(_ key: SecretBytes, id: String, purpose: KeyRecord.Purpose) throws(CofferError) -> Data {
        Data(try Checked.crypto { () throws(CryptoError) in
            try AEAD.seal(key, key: bytes, associatedData: AssociatedData.keyringKey(keyID: id, purpose: purpose, rootKeyID: keyID))
        })
    }

    func open(_ sealed: Data, id: String, purpose: KeyRecord.Purpose) throws(CofferError) -> SecretBytes {
        try Checked.crypto { () throws(CryptoError) in
            try AEAD.open([UInt8](sealed), key: bytes, associatedData: AssociatedData.keyringKey(keyID: id, purpose: purpose, rootKeyID: keyID))
        }
    }

    /// The values the token-hash and audit MAC keys had before the keyring stored
    /// them (derived from the root key): carried over, so that tokens stay valid.
    func legacyDerived(_ purpose: KeyRecord.Purpose) throws(CofferError) -> SecretBytes {
        let label = purpose == .tokenHash ? "coffer token hash key v1" : "coffer audit mac key v1"
        var derived = Hashing.blake2b(Array(label.utf8), key: bytes, outputLength: 32)
        return try Checked.crypto { () throws(CryptoError) in try SecretBytes(consuming: &derived) }
    }

    /// A signing key's seed (the SSH CA, a JWT key), bound to (key id, purpose, root key id).
    func sealSigning(_ seed: SecretBytes, id: String, purpose: SigningKeyRecord.Purpose) throws(CofferError) -> Data {
        Data(try Checked.crypto { () throws(CryptoError) in
            try AEAD.seal(seed, key: bytes, associatedData: AssociatedData.signingKey(keyID: id, purpose: purpose, rootKeyID: keyID))
        })
    }

    func openSigning(_ sealed: Data, id: String, purpose: SigningKeyRecord.Purpose) throws(CofferError) -> SecretBytes {
        try Checked.crypto { () throws(CryptoError) in
            try AEAD.open([UInt8](sealed), key: bytes, associatedData: AssociatedData.signingKey(keyID: id, purpose: purpose, rootKeyID: keyID))
        }
    }

    /// A new signing key of `purpose`: a random seed, sealed under this root.
    func newSigningKey(_ purpose: SigningKeyRecord.Purpose, now: Int64) throws(CofferError) -> SigningKeyRecord {
        let seed = try Checked.crypto { () throws(CryptoError) in try SecretBytes.random(count: 32) }
        let pair = try Checked.crypto { () throws(CryptoError) in try Signing.keyPair(seed: seed) }
        let id = Hex.encode(Hashing.randomBytes(8))
        return SigningKeyRecord(keyID: id, purpose: purpose, state: .active, createdAt: now, retiredAt: nil, publicKey: Data(pair.publicKey),
                                rootKeyID: keyID, sealed: try sealSigning(seed, id: id, purpose: purpose))
    }

    /// Seals the audit signing key (bound to this root key's id).
    func sealAuditKey(_ secret: SecretBytes) throws(CryptoError) -> [UInt8] {
        try AEAD.seal(secret, key: bytes, associatedData: Array("coffer/v1/audit-signing-key".utf8) + Array(keyID.utf8))
    }

    func openAuditKey(_ sealed: [UInt8]) throws(CryptoError) -> SecretBytes {
        try AEAD.open(sealed, key: bytes, associatedData: Array("coffer/v1/audit-signing-key".utf8) + Array(keyID.utf8))
    }
}

/// The root key with the unseal key that opened it and how it is held.
public struct Unsealed: Sendable {
    public let root: RootKey
    /// The unseal key (the root key itself when a key file holds it directly).
    let unsealKey: SecretBytes
    public let holder: HolderRecord?
    /// A new database's holder row, enrolled at its first unlock.
    let enroll: HolderRecord?
}

/// A new database's root key, with how it is held (`cofferd init --unseal
/// passphrase|shares`): enrolled at the first unlock.
public final class NewHolderUnlocker: Unlocker {
    let unsealed: Unsealed
    public var description: String { "a new \(unsealed.enroll?.mode.rawValue ?? "key") holder" }
    public var mode: HolderRecord.Mode { unsealed.enroll?.mode ?? .keyfile }
    public func unsealKey(holder: HolderRecord?) throws(CofferError) -> SecretBytes { unsealed.unsealKey }

    /// A random root key held by a passphrase.
    public static func passphrase(_ p: SecretBytes, limits: KeyHolder.KDFLimits, now: Int64) throws(CofferError) -> NewHolderUnlocker {
        let root = RootKey(try Checked.crypto { () throws(CryptoError) in try SecretBytes.random(count: AEAD.keyBytes) })
        let (h, key) = try KeyHolder.passphrase(root: root, passphrase: p, limits: limits, now: now)
        return NewHolderUnlocker(Unsealed(root: root, unsealKey: key, holder: h, enroll: h))
    }

    /// A random root key held by k of n shares; the shares' texts are returned once.
    public static func shares(threshold: Int, count: Int, now: Int64) throws(CofferError) -> (NewHolderUnlocker, [ShareText]) {
        let root = RootKey(try Checked.crypto { () throws(CryptoError) in try SecretBytes.random(count: AEAD.keyBytes) })
        let (h, texts, key) = try KeyHolder.shares(root: root, threshold: threshold, count: count, now: now)
        return (NewHolderUnlocker(Unsealed(root: root, unsealKey: key, holder: h, enroll: h)), texts)
    }

    init(_ u: Unsealed) { self.unsealed = u }
}

extension HolderRecord.Mode {
    public var described: String {
        switch self {
        case .keyfile: "a key file"
        case .passphrase: "a passphrase"
        case .shares: "Shamir shares"
        }
    }
}

/// The keyring: keys with ids and states, each sealed under the root key
/// (keys/README.md):
///
///     root key (key file) ──seals──▶ keyring keys: data keys (one active, older ones
///                                    decrypt-only or retired), the token-hash key,
///                                    the audit MAC key; and the audit signing key
///     active data key ──seals──▶ data key per secret version (random) ──seals──▶ value
///
/// Values are XChaCha20-Poly1305 with associated data binding (secret path,
/// version, key id) — invariant 2. A root-key change re-seals the keyring and
/// touches no version and no token.
public final class Keyring: Sendable {
    struct Held {
        var root: RootKey
        var unsealKey: SecretBytes
        var holder: HolderRecord?
    }
    let held: Mutex<Held>
    /// The current root key (a rotation makes a new one).
    public var root: RootKey { held.withLock { $0.root } }
    public var holder: HolderRecord? { held.withLock { $0.holder } }
    /// Key of the keyed BLAKE2b under which tokens are stored.
    public let tokenHashKey: SecretBytes
    /// Key of the audit events' MACs: only the daemon can make an event the daemon
    /// will later sign.
    public let auditMACKey: SecretBytes
    struct DataKeys {
        var active: (id: String, key: SecretBytes)
        var open: [String: SecretBytes]  // active and decrypt-only
        /// Set by `wipe`: nothing is sealed or opened any more.
        var wiped = false
    }
    let dataKeys: Mutex<DataKeys>

    public var rootKeyID: String { root.keyID }
    public var activeKeyID: String { dataKeys.withLock { $0.active.id } }

    init(held: Held, tokenHashKey: SecretBytes, auditMACKey: SecretBytes, dataKeys: DataKeys) {
        self.held = Mutex(held)
        self.tokenHashKey = tokenHashKey
        self.auditMACKey = auditMACKey
        self.dataKeys = Mutex(dataKeys)
    }

    /// Loads the keyring from an open database, completing it first when needed: the
    /// root key is enrolled in a new database; keys carried over from before the
    /// keyring are sealed; missing purpose keys are added (random in a new database,
    /// their former derived values in an existing one).
    public static func load(_ unsealed: Unsealed, store: Store, now: Int64) throws(CofferError) -> Keyring {
        let root = unsealed.root
        do {
            let checks = try store.rootKeyChecks()
            if checks.isEmpty {
                try store.addRootKeyCheck(keyID: root.keyID, check: root.check(), now: now)
                if let h = unsealed.enroll { try store.enrollHolder(h) }
            } else {
                guard checks.contains(where: { $0.keyID == root.keyID && root.verify(check: $0.check) }) else {
                    throw CofferError(.keyFile, "the database is bound to another root key")
                }
            }
            var records = try store.keyRecords()
            let fresh = store.createdNow
            // a keyring is completed only for a new database or one from before the
            // keyring (whose root key is its data key); an emptied one is refused
            if !fresh, !checks.isEmpty, records.isEmpty || (unsealed.holder != nil && Set(records.map(\.purpose)).count < KeyRecord.Purpose.allCases.count) {
                throw CofferError(.integrity, "the keyring was emptied or lost keys (rows deleted from the database)",
                                  hint: "restore the database from a backup")
            }
            var seal: [(keyID: String, sealed: Data)] = []
            var add: [KeyRecord] = []
            for r in records where r.sealed == nil && r.state != .retired {
                // a data key carried over from before the keyring: the root key itself
                guard r.keyID == root.keyID, r.purpose == .data else {
                    throw CofferError(.integrity, "keyring key \(r.keyID) has no sealed material")
                }
                seal.append((r.keyID, try root.seal(root.bytes, id: r.keyID, purpose: .data)))
            }
            for purpose in KeyRecord.Purpose.allCases where !records.contains(where: { $0.purpose == purpose }) {
                let key: SecretBytes = purpose == .data || fresh
                    ? try Checked.crypto { () throws(CryptoError) in try SecretBytes.random(count: AEAD.keyBytes) }
                    : try root.legacyDerived(purpose)
                let id = Hex.encode(Hashing.randomBytes(8))
                add.append(KeyRecord(keyID: id, purpose: purpose, state: .active, createdAt: now, rootKeyID: root.keyID,
                                     sealed: try root.seal(key, id: id, purpose: purpose)))
            }
            if !seal.isEmpty || !add.isEmpty {
                try store.completeKeyring(seal: seal, add: add)
                records = try store.keyRecords()
            }
            // the SSH user CA and the first JWT key, made once
            let signing = try store.signingKeys()
            let missing = try SigningKeyRecord.Purpose.allCases.filter { p in !signing.contains { $0.purpose == p && $0.state == .active } }
                .map { p throws(CofferError) in try root.newSigningKey(p, now: now) }
            if !missing.isEmpty { try store.addSigningKeys(missing) }
            return try Keyring(held: Held(root: root, unsealKey: unsealed.unsealKey, holder: try store.holder()), records: records)
        } catch let e as CofferError {
            throw e
        } catch {
            throw CofferError(.storage, "cannot load the keyring: \(error)")
        }
    }

    convenience init(held: Held, records: [KeyRecord]) throws(CofferError) {
        let root = held.root
        func opened(_ r: KeyRecord) throws(CofferError) -> SecretBytes {
            guard let sealed = r.sealed, r.rootKeyID == root.keyID else {
                throw CofferError(.keyFile, "keyring key \(r.keyID) is not sealed under this root key")
            }
            return try root.open(sealed, id: r.keyID, purpose: r.purpose)
        }
        func active(_ p: KeyRecord.Purpose) throws(CofferError) -> KeyRecord {
            guard let r = records.first(where: { $0.purpose == p && $0.state == .active }) else {
                throw CofferError(.integrity, "the keyring has no active \(p.rawValue) key")
            }
            return r
        }
        let activeData = try active(.data)
        var open: [String: SecretBytes] = [:]
        for r in records where r.purpose == .data && r.state != .retired { open[r.keyID] = try opened(r) }
        self.init(held: held, tokenHashKey: try opened(try active(.tokenHash)), auditMACKey: try opened(try active(.auditMAC)),
                  dataKeys: DataKeys(active: (activeData.keyID, open[activeData.keyID]!), open: open))
    }

    /// A new active data key (the one before turns decrypt-only): new values are
    /// sealed under it, older ones still open. Committed with its audit event.
    func addDataKey(store: Store, guard tokenGuard: Store.TokenGuard?, ticket: AuditTicket, now: Int64) async throws -> KeyRecord {
        let key = try Checked.crypto { () throws(CryptoError) in try SecretBytes.random(count: AEAD.keyBytes) }
        let id = Hex.encode(Hashing.randomBytes(8))
        let record = KeyRecord(keyID: id, purpose: .data, state: .active, createdAt: now, rootKeyID: root.keyID,
                               sealed: try root.seal(key, id: id, purpose: .data))
        ticket.update { $0.details["key_id"] = .text(id) }  // the event names the key it made
        try await store.addActiveKey(record, guard: tokenGuard, ticket: ticket)
        dataKeys.withLock {
            $0.open[id] = key
            $0.active = (id, key)
        }
        return record
    }

    /// Another instance changed the keyring (a data key rotated there): the data keys
    /// as the database has them now. New values are sealed under the active one on
    /// every host. A key sealed under a root key this host does not hold is left out
    /// (its values fail closed here until this host has that key material).
    func refreshDataKeys(store: Store) throws {
        // a rotation there made a new root key: the holder in the database seals it
        // under the unseal key this host holds too (the same key material everywhere)
        if let h = try store.holder(), h.rootKeyID != root.keyID {
            let unsealKey = held.withLock { $0.unsealKey }
            let newRoot = RootKey(try KeyHolder.openRoot(h, unsealKey: unsealKey))
            guard try store.rootKeyChecks().contains(where: { $0.keyID == newRoot.keyID && newRoot.verify(check: $0.check) }) else {
                throw CofferError(.integrity, "the key holder names a root key the database has no check for")
            }
            held.withLock { $0.root = newRoot; $0.holder = h }
        }
        let records = try store.keyRecords()
        let root = self.root
        guard let activeRecord = records.first(where: { $0.purpose == .data && $0.state == .active }) else {
            throw CofferError(.integrity, "the keyring has no active data key")
        }
        let current = dataKeys.withLock { $0.open }
        var open: [String: SecretBytes] = [:]
        for r in records where r.purpose == .data && r.state != .retired {
            if let k = current[r.keyID] { open[r.keyID] = k; continue }
            guard let sealed = r.sealed, r.rootKeyID == root.keyID else { continue }
            open[r.keyID] = try root.open(sealed, id: r.keyID, purpose: .data)
        }
        guard let activeKey = open[activeRecord.keyID] else {
            throw CofferError(.keyFile, "the active data key \(activeRecord.keyID) is sealed under a root key this host does not hold")
        }
        dataKeys.withLock { d in
            guard !d.wiped else { return }
            d.open = open
            d.active = (activeRecord.keyID, activeKey)
        }
    }

    /// Whether the data key `keyID` is open here.
    func holds(_ keyID: String) -> Bool { dataKeys.withLock { $0.open[keyID] != nil } }

    /// Seals a value for (path, version): a fresh data key seals the value, the
    /// active keyring key seals the data key; both bound to (path, version, key id).
    public func seal(_ value: SecretBytes, path: SecretPath, version: Int) throws(CryptoError) -> SealedVersion {
        guard let (keyID, kek) = dataKeys.withLock({ $0.wiped ? nil : $0.active }) else { throw .integrity }
        let dataKey = try SecretBytes.random(count: AEAD.keyBytes)
        let wrapped = try AEAD.seal(dataKey, key: kek, associatedData: AssociatedData.dataKey(path: path, version: version, keyID: keyID))
        let ciphertext = try AEAD.seal(value, key: dataKey, associatedData: AssociatedData.value(path: path, version: version, keyID: keyID))
        return SealedVersion(keyID: keyID, wrappedKey: Data(wrapped), ciphertext: Data(ciphertext), size: value.count)
    }

    /// Opens a stored version; any mismatch of path, version, key id or bytes, or a
    /// retired key, fails with `.integrity`.
    public func open(wrappedKey: Data, ciphertext: Data, path: SecretPath, version: Int, keyID: String) throws(CryptoError) -> SecretBytes {
        guard let kek = dataKeys.withLock({ $0.open[keyID] }) else { throw .integrity }
        let dataKey = try AEAD.open([UInt8](wrappedKey), key: kek, associatedData: AssociatedData.dataKey(path: path, version: version, keyID: keyID))
        return try AEAD.open([UInt8](ciphertext), key: dataKey, associatedData: AssociatedData.value(path: path, version: version, keyID: keyID))
    }

    /// A root-key change (offline: the daemon is stopped): every keyring key and the
    /// audit signing key re-sealed under `newRoot`. Versions and tokens stay as they are.
    /// Every key sealed under `old`, sealed again under `newRoot`: the keyring's keys
    /// (erased ones, which have no material, are skipped), the audit signing key and
    /// the SSH/JWT signing keys. Shared by a root-key change and a rotation.
    static func resealAll(from old: RootKey, to newRoot: RootKey, records: [KeyRecord],
                          auditKey: (keyID: String, publicKey: Data, sealed: Data)?, signing: [SigningKeyRecord]) throws
        -> (keys: [(keyID: String, sealed: Data)], audit: Data?, signing: [(keyID: String, sealed: Data)]) {
        var keys: [(keyID: String, sealed: Data)] = []
        for r in records {
            guard let sealed = r.sealed else { continue }  // erased (retired) keys
            guard r.rootKeyID == old.keyID else { throw CofferError(.integrity, "keyring key \(r.keyID) is not sealed under the current root key") }
            keys.append((r.keyID, try newRoot.seal(try old.open(sealed, id: r.keyID, purpose: r.purpose), id: r.keyID, purpose: r.purpose)))
        }
        var audit: Data?
        if let k = auditKey {
            let secret = try Checked.crypto { () throws(CryptoError) in try old.openAuditKey([UInt8](k.sealed)) }
            audit = Data(try Checked.crypto { () throws(CryptoError) in try newRoot.sealAuditKey(secret) })
        }
        var signed: [(keyID: String, sealed: Data)] = []
        for k in signing {
            guard k.rootKeyID == old.keyID else { throw CofferError(.integrity, "signing key \(k.keyID) is not sealed under the current root key") }
            signed.append((k.keyID, try newRoot.sealSigning(try old.openSigning(k.sealed, id: k.keyID, purpose: k.purpose), id: k.keyID,
                                                             purpose: k.purpose)))
        }
        return (keys, audit, signed)
    }

    static func changeRoot(store: Store, from old: RootKey, to newRoot: RootKey, now: Int64) throws(CofferError) -> SecretEngine.RootKeyChange {
        guard old.keyID != newRoot.keyID else { throw CofferError(.keyFile, "the new root key is the current one") }
        do {
            var records = try store.keyRecords()
            // The data key carried over from before the keyring is the old root key
            // itself: it must not stay the active one (new versions get a fresh key).
            let legacy = records.first { $0.keyID == old.keyID && $0.purpose == .data }
            var fresh: KeyRecord?
            if let legacy, legacy.state == .active {
                let key = try Checked.crypto { () throws(CryptoError) in try SecretBytes.random(count: AEAD.keyBytes) }
                let id = Hex.encode(Hashing.randomBytes(8))
                fresh = KeyRecord(keyID: id, purpose: .data, state: .active, createdAt: now, rootKeyID: old.keyID,
                                  sealed: try old.seal(key, id: id, purpose: .data))
                records.append(fresh!)
            }
            let resealed = try resealAll(from: old, to: newRoot, records: records, auditKey: try store.auditSigningKey(), signing: try store.signingKeys())
            try store.replaceRootKey(oldID: old.keyID, newID: newRoot.keyID, check: newRoot.check(), now: now, keys: resealed.keys,
                                     auditKey: resealed.audit, demoteLegacy: fresh.map { (legacy: old.keyID, fresh: $0) },
                                     signingKeys: resealed.signing)
            // keys derived from the root before the keyring: same values, so the old key still derives them
            let legacyPurpose = try [KeyRecord.Purpose.tokenHash, .auditMAC].contains { p in
                guard let r = records.first(where: { $0.purpose == p && $0.state == .active }), let sealed = r.sealed else { return false }
                let stored = try old.open(sealed, id: r.keyID, purpose: p)
                let derived = try old.legacyDerived(p)
                return stored.withUnsafeBytes { a in derived.withUnsafeBytes { b in a.elementsEqual(b) } }
            }
            return .init(newRootKeyID: newRoot.keyID, legacyVersions: legacy?.versions ?? 0, legacyPurposeKeys: legacyPurpose)
        } catch let e as CofferError {
            throw e
        } catch {
            throw CofferError(.storage, "cannot change the root key: \(error)")
        }
    }
}

/// Associated data: a domain label, then each field length-prefixed (u32 big-endian),
/// so no two different tuples encode alike.
enum AssociatedData {
    static func encode(_ label: String, _ fields: [[UInt8]]) -> [UInt8] { LengthPrefixed.encode(label, fields) }

    static func versionBytes(_ v: Int) -> [UInt8] { Array(String(v).utf8) }

    static func dataKey(path: SecretPath, version: Int, keyID: String) -> [UInt8] {
        encode("coffer/v1/data-key", [Array(path.rawValue.utf8), versionBytes(version), Array(keyID.utf8)])
    }

    static func value(path: SecretPath, version: Int, keyID: String) -> [UInt8] {
        encode("coffer/v1/value", [Array(path.rawValue.utf8), versionBytes(version), Array(keyID.utf8)])
    }

    static func keyCheck(keyID: String) -> [UInt8] {
        encode("coffer/v1/key-check", [Array(keyID.utf8)])
    }

    static func signingKey(keyID: String, purpose: SigningKeyRecord.Purpose, rootKeyID: String) -> [UInt8] {
        encode("coffer/v1/signing-key", [Array(keyID.utf8), Array(purpose.rawValue.utf8), Array(rootKeyID.utf8)])
    }

    static func keyringKey(keyID: String, purpose: KeyRecord.Purpose, rootKeyID: String) -> [UInt8] {
        encode("coffer/v1/keyring-key", [Array(keyID.utf8), Array(purpose.rawValue.utf8), Array(rootKeyID.utf8)])
    }
}

/// Converts typed crypto failures to the engine's error.
enum Checked {
    static func crypto<T>(_ body: () throws(CryptoError) -> T) throws(CofferError) -> T {
        do { return try body() } catch {
            switch error {
            case .integrity: throw CofferError(.integrity, "an integrity check failed")
            case .allocation: throw CofferError(.internal, "cannot allocate guarded memory")
            case .badLength: throw CofferError(.internal, "a key of the wrong length")
            }
        }
    }
}

extension Keyring {
    /// Whether an unlocker's key is this keyring's unseal key (constant time); a
    /// malformed key or a holder of another kind is a caller's mistake (false).
    func opens(with unlocker: any Unlocker) -> Bool {
        let (holder, current) = held.withLock { ($0.holder, $0.unsealKey) }
        guard unlocker.mode == (holder?.mode ?? .keyfile), let given = try? unlocker.unsealKey(holder: holder) else { return false }
        return given.constantTimeEquals(current)
    }

    /// Zeroes every key this keyring holds, in place (`coffer operator seal`): called
    /// once nothing uses the engine any more.
    func wipe() {
        held.withLock { h in
            h.root.bytes.wipe()
            h.unsealKey.wipe()
        }
        tokenHashKey.wipe()
        auditMACKey.wipe()
        dataKeys.withLock { d in
            for (_, k) in d.open { k.wipe() }
            d.active.key.wipe()
            d.open = [:]
            d.wiped = true
        }
    }
}
