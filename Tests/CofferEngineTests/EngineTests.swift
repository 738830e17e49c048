import CofferCore
import CofferCrypto
@testable import CofferEngine
import CofferStore
import Foundation
import GRDB
import Logging
import Testing

let admin = Principal(pid: 1, uid: 1000, gid: 1000, userName: "alice", groups: [1000])
let outsider = Principal(pid: 2, uid: 2000, gid: 2000, userName: "mallory", groups: [2000])

/// A fresh state directory with a key file and an engine over a real SQLite file.
final class Fixture {
    let dir: String
    var config: CofferConfig

    init(maxVersions: Int = 10, maxValueBytes: Int = 64 * 1024) throws {
        dir = NSTemporaryDirectory() + "coffer-engine-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        config = CofferConfig.dev(directory: dir, uid: 1000)
        config.maxVersions = maxVersions
        config.maxValueBytes = maxValueBytes
        try KeyFile.create(at: config.keyFile)
    }

    deinit { try? FileManager.default.removeItem(atPath: dir) }

    func engine(keyFile: String? = nil, clock: any WallClock = SystemWallClock()) async throws(CofferError) -> SecretEngine {
        let e = try await SecretEngine.open(
            config: config, unlocker: KeyFileUnlocker(path: keyFile ?? config.keyFile),
            policies: PolicyStore(path: nil, fallback: Policy.adminOnly(uids: [1000], group: nil), logger: Logger(label: "test")),
            logger: Logger(label: "test"), clock: clock)
        // the audit writer the daemon's ServiceGroup runs: calls made without a ticket
        // wait for their event to be committed
        Task.detached { await e.runAuditWriter() }
        return e
    }
}

func bytes(_ s: String) throws -> SecretBytes { try SecretBytes.copying(Array(s.utf8)) }
func text(_ s: SecretBytes) -> String { String(decoding: s.copyToArray(), as: UTF8.self) }

func expectCode(_ code: CofferError.Code, _ body: () async throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) async {
    do {
        try await body()
        Issue.record("expected \(code), got success", sourceLocation: sourceLocation)
    } catch let e as CofferError {
        #expect(e.code == code, "\(e.message)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected \(code), got \(error)", sourceLocation: sourceLocation)
    }
}

@Suite struct EngineTests {
    @Test func putGetVersionsAndMetadata() async throws {
        let f = try Fixture()
        let e = try await f.engine()
        let p = try SecretPath("ci/app/db")
        #expect(try await e.put(admin, p, value: bytes("one"), cas: nil).version == 1)
        #expect(try await e.put(admin, p, value: bytes("two"), cas: nil).version == 2)
        #expect(text(try await e.get(admin, p, version: nil).value) == "two")
        #expect(text(try await e.get(admin, p, version: 1).value) == "one")
        let m = try await e.metadata(admin, p)
        #expect(m.currentVersion == 2)
        #expect(m.versions.map(\.version) == [1, 2])
        #expect(m.versions[0].createdUID == 1000 && m.versions[0].createdUser == "alice")
        #expect(m.versions[1].size == 3)
        await expectCode(.notFound) { _ = try await e.get(admin, p, version: 3) }
        await expectCode(.notFound) { _ = try await e.get(admin, try SecretPath("ci/app/none"), version: nil) }
        await expectCode(.invalidVersion) { _ = try await e.get(admin, p, version: 0) }
    }

    @Test func binaryAndEmptyValues() async throws {
        let f = try Fixture()
        let e = try await f.engine()
        let p = try SecretPath("bin")
        let all = (0...255).map { UInt8($0) }
        _ = try await e.put(admin, p, value: SecretBytes.copying(all), cas: nil)
        #expect(try await e.get(admin, p, version: nil).value.copyToArray() == all)
        _ = try await e.put(admin, p, value: SecretBytes.copying([]), cas: nil)
        #expect(try await e.get(admin, p, version: nil).value.count == 0)
    }

    @Test func checkAndSet() async throws {
        let f = try Fixture()
        let e = try await f.engine()
        let p = try SecretPath("cas/x")
        #expect(try await e.put(admin, p, value: bytes("a"), cas: 0).version == 1)
        await expectCode(.casMismatch) { _ = try await e.put(admin, p, value: bytes("b"), cas: 0) }
        await expectCode(.casMismatch) { _ = try await e.put(admin, p, value: bytes("b"), cas: 2) }
        #expect(try await e.metadata(admin, p).currentVersion == 1)
        #expect(text(try await e.get(admin, p, version: nil).value) == "a")
        #expect(try await e.put(admin, p, value: bytes("b"), cas: 1).version == 2)
    }

    @Test func concurrentCheckAndSetHasOneWinner() async throws {
        let f = try Fixture()
        let e = try await f.engine()
        let p = try SecretPath("cas/race")
        _ = try await e.put(admin, p, value: bytes("0"), cas: 0)
        let wins = await withTaskGroup(of: Bool.self) { g in
            for i in 0..<16 {
                g.addTask { (try? await e.put(admin, p, value: bytes("\(i)"), cas: 1)) != nil }
            }
            return await g.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(wins == 1)
        #expect(try await e.metadata(admin, p).currentVersion == 2)
    }

    @Test func maxVersionsPrunesOldest() async throws {
        let f = try Fixture(maxVersions: 3)
        let e = try await f.engine()
        let p = try SecretPath("rot")
        for i in 1...5 { _ = try await e.put(admin, p, value: bytes("v\(i)"), cas: nil) }
        let m = try await e.metadata(admin, p)
        #expect(m.versions.map(\.version) == [3, 4, 5])
        #expect(m.currentVersion == 5)
        await expectCode(.notFound) { _ = try await e.get(admin, p, version: 2) }
        #expect(text(try await e.get(admin, p, version: 3).value) == "v3")
    }

    @Test func deleteUndeleteDestroy() async throws {
        let f = try Fixture()
        let e = try await f.engine()
        let p = try SecretPath("life")
        for i in 1...3 { _ = try await e.put(admin, p, value: bytes("v\(i)"), cas: nil) }
        var m = try await e.change(admin, .delete, p, versions: [])
        #expect(m.versions.map(\.state) == [.active, .active, .deleted])
        #expect(m.versions[2].deletedAt != nil)
        await expectCode(.notFound) { _ = try await e.get(admin, p, version: nil) }
        m = try await e.change(admin, .delete, p, versions: [1])
        #expect(m.versions.map(\.state) == [.deleted, .active, .deleted])
        m = try await e.change(admin, .undelete, p, versions: [1, 3])
        #expect(m.versions.map(\.state) == [.active, .active, .active])
        #expect(text(try await e.get(admin, p, version: nil).value) == "v3")
        m = try await e.change(admin, .destroy, p, versions: [2])
        #expect(m.versions.map(\.state) == [.active, .destroyed, .active])
        await expectCode(.notFound) { _ = try await e.get(admin, p, version: 2) }
        // undelete cannot bring back a destroyed version
        m = try await e.change(admin, .undelete, p, versions: [2])
        #expect(m.versions[1].state == .destroyed)
        // unknown versions: error, nothing changes
        await expectCode(.notFound) { _ = try await e.change(admin, .delete, p, versions: [1, 9]) }
        #expect(try await e.metadata(admin, p).versions[0].state == .active)
        // destroy without versions erases every version
        m = try await e.change(admin, .destroy, p, versions: [])
        #expect(m.versions.allSatisfy { $0.state == .destroyed })
        let nulls = try await e.store.sqlitePool!.read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM secret_version WHERE ciphertext IS NULL AND wrapped_key IS NULL")
        }
        #expect(nulls == 3)
        await expectCode(.notFound) { _ = try await e.change(admin, .delete, try SecretPath("nope"), versions: []) }
    }

    @Test func listsImmediateChildrenWithPaging() async throws {
        let f = try Fixture()
        let e = try await f.engine()
        for p in ["a", "a-b", "a/x", "a/y/z", "b/c", "b0", "ci/app/db", "ci/app/key", "ci/web/tls"] {
            _ = try await e.put(admin, try SecretPath(p), value: bytes("v"), cas: nil)
        }
        #expect(try await e.list(admin, try SecretPrefix(""), after: nil, limit: nil).keys == ["a", "a-b", "a/", "b/", "b0", "ci/"])
        #expect(try await e.list(admin, try SecretPrefix("ci"), after: nil, limit: nil).keys == ["app/", "web/"])
        #expect(try await e.list(admin, try SecretPrefix("ci/app/"), after: nil, limit: nil).keys == ["db", "key"])
        #expect(try await e.list(admin, try SecretPrefix("zzz"), after: nil, limit: nil).keys == [])
        // paging: every key exactly once, in order
        var seen: [String] = []
        var after: String?
        repeat {
            let page = try await e.list(admin, try SecretPrefix(""), after: after, limit: 2)
            #expect(page.keys.count <= 2)
            seen += page.keys
            after = page.nextAfter
        } while after != nil
        #expect(seen == ["a", "a-b", "a/", "b/", "b0", "ci/"])
        await expectCode(.invalidParameter) { _ = try await e.list(admin, try SecretPrefix(""), after: nil, limit: 0) }
        await expectCode(.invalidParameter) { _ = try await e.list(admin, try SecretPrefix(""), after: nil, limit: 100_000) }
        await expectCode(.invalidParameter) { _ = try await e.list(admin, try SecretPrefix(""), after: "a/b", limit: nil) }
    }

    @Test func valueLimit() async throws {
        let f = try Fixture(maxValueBytes: 16)
        let e = try await f.engine()
        _ = try await e.put(admin, try SecretPath("ok"), value: SecretBytes.random(count: 16), cas: nil)
        await expectCode(.valueTooLarge) { _ = try await e.put(admin, try SecretPath("big"), value: try SecretBytes.random(count: 17), cas: nil) }
        #expect(try await e.metadata(admin, try SecretPath("ok")).currentVersion == 1)
        await expectCode(.notFound) { _ = try await e.metadata(admin, try SecretPath("big")) }
    }

    /// Reads served from the ciphertext cache never go stale: a reader racing 100
    /// writes only ever sees versions move forward, and after each state change the
    /// next read reflects it.
    @Test func cachedReadsFollowEveryWrite() async throws {
        let f = try Fixture(maxVersions: 1000)
        let e = try await f.engine()
        let p = try SecretPath("hot/key")
        _ = try await e.put(admin, p, value: bytes("v1"), cas: nil)
        let stale = try await withThrowingTaskGroup(of: Int.self) { g in
            g.addTask {
                for i in 2...100 {
                    _ = try await e.put(admin, p, value: try bytes("v\(i)"), cas: nil)
                    // read-your-write, through the cache
                    guard text(try await e.get(admin, p, version: nil).value) == "v\(i)" else { return 1 }
                }
                return 0
            }
            for _ in 0..<3 {
                g.addTask {
                    var last = 0
                    var backwards = 0
                    for _ in 0..<400 {
                        let v = try await e.get(admin, p, version: nil).meta.version
                        if v < last { backwards += 1 }
                        last = v
                    }
                    return backwards
                }
            }
            return try await g.reduce(0, +)
        }
        #expect(stale == 0)
        #expect(text(try await e.get(admin, p, version: nil).value) == "v100")
        #expect(text(try await e.get(admin, p, version: 7).value) == "v7")
        _ = try await e.change(admin, .delete, p, versions: [])
        await expectCode(.notFound) { _ = try await e.get(admin, p, version: nil) }
        _ = try await e.change(admin, .destroy, p, versions: [7])
        await expectCode(.notFound) { _ = try await e.get(admin, p, version: 7) }
    }

    @Test func outsidersAreDeniedEverythingAndChangeNothing() async throws {
        let f = try Fixture()
        let e = try await f.engine()
        let p = try SecretPath("guarded")
        _ = try await e.put(admin, p, value: bytes("v"), cas: nil)
        let before = try await e.metadata(admin, p)
        await expectCode(.permissionDenied) { _ = try await e.get(outsider, p, version: nil) }
        await expectCode(.permissionDenied) { _ = try await e.get(outsider, try SecretPath("does/not/exist"), version: nil) }
        await expectCode(.permissionDenied) { _ = try await e.put(outsider, p, value: try bytes("x"), cas: nil) }
        await expectCode(.permissionDenied) { _ = try await e.metadata(outsider, p) }
        await expectCode(.permissionDenied) { _ = try await e.list(outsider, try SecretPrefix(""), after: nil, limit: nil) }
        await expectCode(.permissionDenied) { _ = try await e.change(outsider, .delete, p, versions: []) }
        await expectCode(.permissionDenied) { _ = try await e.change(outsider, .undelete, p, versions: []) }
        await expectCode(.permissionDenied) { _ = try await e.change(outsider, .destroy, p, versions: []) }
        await expectCode(.permissionDenied) { _ = try await e.status(outsider) }
        #expect(try await e.metadata(admin, p) == before)
    }
}

@Suite struct KeyAndIntegrityTests {
    func sha(_ path: String) throws -> [UInt8] {
        Hashing.blake2b([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))), outputLength: 32)
    }

    @Test func wrongOrMissingKeyRefusesAndLeavesTheDatabaseUntouched() async throws {
        let f = try Fixture()
        do {
            let e = try await f.engine()
            _ = try await e.put(admin, try SecretPath("x"), value: bytes("v"), cas: nil)
            try e.store.checkpoint()
        }
        let db = f.config.resolvedDatabasePath
        let before = try sha(db)
        let other = f.dir + "/other.key"
        try KeyFile.create(at: other)
        await expectCode(.keyFile) { _ = try await f.engine(keyFile: other) }
        await expectCode(.keyFile) { _ = try await f.engine(keyFile: f.dir + "/missing.key") }
        // a key file readable by others is refused before it is used
        let loose = f.dir + "/loose.key"
        try KeyFile.create(at: loose)
        chmod(loose, 0o644)
        await expectCode(.keyFile) { _ = try await f.engine(keyFile: loose) }
        // garbage
        let junk = f.dir + "/junk.key"
        FileManager.default.createFile(atPath: junk, contents: Data("coffer-root-key-v1:zz".utf8), attributes: [.posixPermissions: 0o400])
        await expectCode(.keyFile) { _ = try await f.engine(keyFile: junk) }
        #expect(try sha(db) == before)
        // and the right key still opens it
        #expect(text(try await f.engine().get(admin, try SecretPath("x"), version: nil).value) == "v")
    }

    @Test func keyFileIsCreatedOnceWithMode0400() throws {
        let f = try Fixture()
        var st = stat()
        #expect(stat(f.config.keyFile, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o400)
        #expect(throws: CofferError.self) { try KeyFile.create(at: f.config.keyFile) }
        let k1 = try KeyFile.load(from: f.config.keyFile)
        let k2 = try KeyFile.load(from: f.config.keyFile)
        #expect(k1.constantTimeEquals(k2))
        #expect(k1.count == 32)
    }

    @Test func everyTamperedByteOfWrappedKeyOrCiphertextIsAnIntegrityError() async throws {
        let f = try Fixture()
        let e = try await f.engine()
        let p = try SecretPath("tamper/me")
        _ = try await e.put(admin, p, value: bytes("secret-value"), cas: nil)
        let (wrapped, ct) = try await e.store.sqlitePool!.read { db -> (Data, Data) in
            let r = try Row.fetchOne(db, sql: "SELECT wrapped_key, ciphertext FROM secret_version")!
            return (r["wrapped_key"], r["ciphertext"])
        }
        for column in ["wrapped_key", "ciphertext"] {
            let original = column == "wrapped_key" ? wrapped : ct
            for i in stride(from: 0, to: original.count, by: 1) {
                var bad = original
                bad[bad.startIndex + i] ^= 0x20
                let tampered = bad
                try await e.store.sqlitePool!.write { db in
                    try db.execute(sql: "UPDATE secret_version SET \(column) = ?", arguments: [tampered])
                }
                await expectCode(.integrity) { _ = try await e.get(admin, p, version: nil) }
            }
            try await e.store.sqlitePool!.write { db in
                try db.execute(sql: "UPDATE secret_version SET \(column) = ?", arguments: [original])
            }
        }
        #expect(text(try await e.get(admin, p, version: nil).value) == "secret-value")
    }

    @Test func ciphertextBoundToPathVersionAndKey() throws {
        let k = try Keyring.ephemeral()
        let p = try SecretPath("a/b")
        let s = try k.seal(try bytes("v"), path: p, version: 1)
        #expect(text(try k.open(wrappedKey: s.wrappedKey, ciphertext: s.ciphertext, path: p, version: 1, keyID: k.activeKeyID)) == "v")
        #expect(throws: CryptoError.integrity) { try k.open(wrappedKey: s.wrappedKey, ciphertext: s.ciphertext, path: try SecretPath("a/c"), version: 1, keyID: k.activeKeyID) }
        #expect(throws: CryptoError.integrity) { try k.open(wrappedKey: s.wrappedKey, ciphertext: s.ciphertext, path: p, version: 2, keyID: k.activeKeyID) }
        #expect(throws: CryptoError.integrity) { try k.open(wrappedKey: s.wrappedKey, ciphertext: s.ciphertext, path: p, version: 1, keyID: "0000000000000000") }
        let other = try Keyring.ephemeral()
        #expect(throws: CryptoError.integrity) { try other.open(wrappedKey: s.wrappedKey, ciphertext: s.ciphertext, path: p, version: 1, keyID: other.activeKeyID) }
        // a ciphertext from another version of the same path does not open under this version's key
        let s2 = try k.seal(try bytes("w"), path: p, version: 2)
        #expect(throws: CryptoError.integrity) { try k.open(wrappedKey: s.wrappedKey, ciphertext: s2.ciphertext, path: p, version: 1, keyID: k.activeKeyID) }
    }
}

extension Keyring {
    /// A keyring in memory only: random root, one random data key.
    static func ephemeral() throws -> Keyring {
        let id = Hex.encode(Hashing.randomBytes(8))
        let data = try SecretBytes.random(count: 32)
        let root = try SecretBytes.random(count: 32)
        return Keyring(held: .init(root: RootKey(root), unsealKey: root, holder: nil), tokenHashKey: try SecretBytes.random(count: 32),
                       auditMACKey: try SecretBytes.random(count: 32), dataKeys: .init(active: (id, data), open: [id: data]))
    }
}
