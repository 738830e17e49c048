public import CofferCore
public import CofferCrypto
public import CofferStore
import Foundation

/// The unlocked root key and the key hierarchy under it (keys/README.md):
///
///     root key (32 B, key file) ──seals──▶ data key per secret version (32 B, random)
///                                          ──seals──▶ the version's value
///
/// Both seals are XChaCha20-Poly1305 with associated data binding
/// (secret path, version, key id) — invariant 2.
public final class Keyring: Sendable {
    public let keyID: String
    let root: SecretBytes
    /// Key of the keyed BLAKE2b under which tokens are stored (derived, never stored).
    public let tokenHashKey: SecretBytes
    /// Key of the audit events' MACs (derived, never stored): only the daemon can make
    /// an event the daemon will later sign.
    public let auditMACKey: SecretBytes

    static let checkPlaintext = Array("coffer-keycheck-v1".utf8)

    public init(root: SecretBytes) throws(CryptoError) {
        self.root = root
        // A public, one-way name for the key: keyed BLAKE2b of a constant.
        self.keyID = Hex.encode(Hashing.blake2b(Array("coffer key id v1".utf8), key: root, outputLength: 16).prefix(8))
        var derived = Hashing.blake2b(Array("coffer token hash key v1".utf8), key: root, outputLength: 32)
        self.tokenHashKey = try SecretBytes(consuming: &derived)
        var macKey = Hashing.blake2b(Array("coffer audit mac key v1".utf8), key: root, outputLength: 32)
        self.auditMACKey = try SecretBytes(consuming: &macKey)
    }

    /// Unlocks against a database: the key must be the one the database was created
    /// with. The database is only read (read-only connection), so a wrong key leaves
    /// the file byte-identical.
    public static func unlock(_ unlocker: any Unlocker, databasePath: String) throws(CofferError) -> Keyring {
        let root = try unlocker.rootKey()
        let keyring = try Checked.crypto { () throws(CryptoError) in try Keyring(root: root) }
        let existing: (keyID: String, check: Data)?
        do { existing = try Store.readKeyCheck(path: databasePath) } catch {
            throw CofferError(.storage, "cannot read the database \(databasePath): \(error)")
        }
        if let existing {
            guard existing.keyID == keyring.keyID, keyring.verify(check: existing.check) else {
                throw CofferError(.keyFile, "the root key from \(unlocker.description) does not unlock the database \(databasePath)",
                                  hint: "the database was created with another root key; point keys.key_file at that key")
            }
        }
        return keyring
    }

    /// Records this key in a database that has none yet (first start).
    public func enroll(in store: Store, now: Int64) throws {
        let known = try store.keyChecks()
        if known.contains(where: { $0.keyID == keyID }) { return }
        guard known.isEmpty else {
            throw CofferError(.keyFile, "the database is bound to another root key")
        }
        let plain = try Checked.crypto { () throws(CryptoError) in try SecretBytes.copying(Keyring.checkPlaintext) }
        let check = try Checked.crypto { () throws(CryptoError) in
            try AEAD.seal(plain, key: root, associatedData: AssociatedData.keyCheck(keyID: keyID))
        }
        try store.addKeyCheck(keyID: keyID, check: Data(check), now: now)
    }

    func verify(check: Data) -> Bool {
        guard let opened = try? AEAD.open([UInt8](check), key: root, associatedData: AssociatedData.keyCheck(keyID: keyID)) else {
            return false
        }
        return opened.withUnsafeBytes { $0.elementsEqual(Keyring.checkPlaintext) }
    }

    /// Seals a value for (path, version): a fresh data key seals the value, the root
    /// key seals the data key; both bound to (path, version, key id).
    public func seal(_ value: SecretBytes, path: SecretPath, version: Int) throws(CryptoError) -> SealedVersion {
        let dataKey = try SecretBytes.random(count: AEAD.keyBytes)
        let wrapped = try AEAD.seal(dataKey, key: root, associatedData: AssociatedData.dataKey(path: path, version: version, keyID: keyID))
        let ciphertext = try AEAD.seal(value, key: dataKey, associatedData: AssociatedData.value(path: path, version: version, keyID: keyID))
        return SealedVersion(keyID: keyID, wrappedKey: Data(wrapped), ciphertext: Data(ciphertext), size: value.count)
    }

    /// Opens a stored version; any mismatch of path, version, key id or bytes fails
    /// with `.integrity`.
    public func open(wrappedKey: Data, ciphertext: Data, path: SecretPath, version: Int, keyID storedKeyID: String) throws(CryptoError) -> SecretBytes {
        guard storedKeyID == keyID else { throw .integrity }
        let dataKey = try AEAD.open([UInt8](wrappedKey), key: root, associatedData: AssociatedData.dataKey(path: path, version: version, keyID: keyID))
        return try AEAD.open([UInt8](ciphertext), key: dataKey, associatedData: AssociatedData.value(path: path, version: version, keyID: keyID))
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
