import Foundation

/// The state of one secret version (KV v2 semantics).
public enum VersionState: String, Sendable, Codable {
    case active, deleted, destroyed
}

/// Metadata of one version. Never holds plaintext (the store holds only ciphertext).
public struct VersionRecord: Sendable, Equatable {
    public var version: Int
    /// Milliseconds since the Unix epoch.
    public var createdAt: Int64
    public var createdUID: UInt32
    public var createdUser: String?
    public var size: Int
    public var state: VersionState
    public var deletedAt: Int64?
    public var keyID: String
}

/// A version's sealed material as the engine produced it.
public struct SealedVersion: Sendable {
    public var keyID: String
    public var wrappedKey: Data
    public var ciphertext: Data
    public var size: Int

    public init(keyID: String, wrappedKey: Data, ciphertext: Data, size: Int) {
        self.keyID = keyID
        self.wrappedKey = wrappedKey
        self.ciphertext = ciphertext
        self.size = size
    }
}

/// A version as read back: metadata plus sealed material (nil once destroyed).
public struct StoredVersion: Sendable {
    public var meta: VersionRecord
    public var wrappedKey: Data?
    public var ciphertext: Data?
}

/// A secret's metadata with all its retained versions, oldest first.
public struct SecretRecord: Sendable, Equatable {
    public var path: String
    public var currentVersion: Int
    public var createdAt: Int64
    public var updatedAt: Int64
    public var versions: [VersionRecord]
}

/// Who wrote a version.
public struct Author: Sendable {
    public var uid: UInt32
    public var user: String?
    public init(uid: UInt32, user: String?) {
        self.uid = uid
        self.user = user
    }
}

/// A page of list results: immediate children of a prefix ("name" or "folder/").
public struct ListPage: Sendable, Equatable {
    public var keys: [String]
    /// Pass as `after` to get the next page; nil on the last page.
    public var nextAfter: String?
}
