public import CofferAudit
public import CofferCore
public import CofferCrypto
public import CofferStore
import Foundation
import Synchronization
import Logging

/// Versioned secrets behind the gate: every function takes the grant the gate made.
/// Plaintext exists only here and only inside SecretBytes (invariant 1).
public final class SecretsService: Sendable {
    let store: Store
    let keyring: Keyring
    let gate: Gate
    let tokens: TokenService
    let limits: SecretEngine.Limits
    let errors: StoreErrorMapper
    let clock: any WallClock
    let logger: Logger
    let cache = CiphertextCache(limit: 10_000)
    /// Told of every committed write (live rotation of followed runs).
    let writeObservers = Mutex<[@Sendable (SecretPath) -> Void]>([])

    func observeWrites(_ f: @escaping @Sendable (SecretPath) -> Void) { writeObservers.withLock { $0.append(f) } }

    init(store: Store, keyring: Keyring, gate: Gate, tokens: TokenService, limits: SecretEngine.Limits, errors: StoreErrorMapper,
         clock: any WallClock, logger: Logger) {
        self.store = store
        self.keyring = keyring
        self.gate = gate
        self.tokens = tokens
        self.limits = limits
        self.errors = errors
        self.clock = clock
        self.logger = logger
    }

    /// Writes a new version. `value` is consumed into a ciphertext; the caller's copy
    /// is wiped by SecretBytes' deinit.
    public func put(_ g: Grant, _ path: SecretPath, value: SecretBytes, cas: Int?) async throws(CofferError) -> VersionRecord {
        cache.beginWrite(path)
        defer { cache.endWrite(path) }  // after the commit (or a failure): no stale row stays cached
        guard value.count <= limits.maxValueBytes else {
            throw CofferError(.valueTooLarge, "the value is \(value.count) bytes; the limit is \(limits.maxValueBytes)",
                              hint: "raise limits.max_value_bytes (at most 1 MiB)")
        }
        if let cas {
            guard cas >= 0 else { throw CofferError(.invalidVersion, "cas must be 0 or a version number") }
            // A check-and-set answer tells whether the secret exists and its version:
            // only for callers who may read its metadata (no oracle for write-only callers).
            _ = try gate.check(g.ticket, g.principal, .readMetadata, path)
        }
        let keyring = self.keyring
        let p = g.principal
        var record: VersionRecord?
        for attempt in 0..<2 {
            do {
                record = try await store.put(path, cas: cas, maxVersions: limits.maxVersions, author: Author(uid: p.uid, user: p.userName),
                                             now: clock.nowMillis(), guard: tokens.guardFor(p), ticket: g.ticket) { version in
                    do { return try keyring.seal(value, path: path, version: version) } catch {
                        throw CofferError(.internal, "sealing failed")
                    }
                }
                break
            } catch let e as StaleDataKey where attempt == 0 {
                // another host rotated the data key and this one was not told: take the
                // keyring the database has, and seal again
                logger.warning("the data key rotated elsewhere unannounced; reloading the keyring", metadata: ["key.id": "\(e.keyID)"])
                do { try keyring.refreshDataKeys(store: store) } catch { throw errors.map(error) }
            } catch {
                throw errors.map(error)
            }
        }
        guard let record else { throw CofferError(.conflict, "the data key changed while writing", hint: "retry") }
        logger.info("secret written", metadata: ["peer.uid": "\(p.uid)", "secret.path": "\(path)", "secret.version": "\(record.version)"])
        cache.invalidate(path)  // (before observers read it back)
        for f in writeObservers.withLock({ $0 }) { f(path) }
        return record
    }

    public struct ReadResult: Sendable {
        public var path: SecretPath
        public var currentVersion: Int
        public var meta: VersionRecord
        public var value: SecretBytes
    }

    public func get(_ g: Grant, _ path: SecretPath, version: Int?) throws(CofferError) -> ReadResult {
        if let version, version < 1 { throw CofferError(.invalidVersion, "version must be 1 or more") }
        try tokens.coherence.check()
        let generation = cache.generation
        let cached = cache.lookup(path, version)
        let found: (current: Int, stored: StoredVersion?)
        if let cached {
            found = (cached.current, cached.stored)
        } else {
            guard let row = try errors.call({ try store.version(path, version) }) else {
                throw CofferError(.notFound, "no secret at \(path)")
            }
            found = row
        }
        let current = found.current
        guard let stored = found.stored else {
            throw CofferError(.notFound, "\(path) has no version \(version ?? current)", hint: "see coffer secret versions \(path)")
        }
        switch stored.meta.state {
        case .deleted:
            throw CofferError(.notFound, "version \(stored.meta.version) of \(path) is deleted",
                              hint: "coffer secret undelete \(path) --versions \(stored.meta.version)")
        case .destroyed:
            throw CofferError(.notFound, "version \(stored.meta.version) of \(path) is destroyed")
        case .active:
            break
        }
        guard let wrapped = stored.wrappedKey, let ct = stored.ciphertext else {
            throw CofferError(.integrity, "version \(stored.meta.version) of \(path) has no ciphertext")
        }
        // a key this host has not opened yet (a rotation elsewhere it was not told of)
        if store.isShared, !keyring.holds(stored.meta.keyID) { try? keyring.refreshDataKeys(store: store) }
        let value: SecretBytes
        do {
            value = try keyring.open(wrappedKey: wrapped, ciphertext: ct, path: path, version: stored.meta.version, keyID: stored.meta.keyID)
        } catch {
            logger.error("integrity check failed", metadata: ["secret.path": "\(path)", "secret.version": "\(stored.meta.version)"])
            throw CofferError(.integrity, "version \(stored.meta.version) of \(path) failed its integrity check",
                              hint: "the stored ciphertext was altered or moved; restore the database from a backup")
        }
        if cached == nil { cache.insert(path, current: current, stored, ifGeneration: generation) }
        try tokens.recheck(g.principal)  // the token is checked at the moment of reading
        return ReadResult(path: path, currentVersion: current, meta: stored.meta, value: value)
    }

    /// The version a read would return, without opening it (a dry run's plan).
    public func peek(_ g: Grant, _ path: SecretPath, version: Int?) throws(CofferError) -> VersionRecord {
        if let version, version < 1 { throw CofferError(.invalidVersion, "version must be 1 or more") }
        guard let row = try errors.call({ try store.version(path, version) }) else { throw CofferError(.notFound, "no secret at \(path)") }
        guard let stored = row.stored, stored.meta.state == .active else {
            throw CofferError(.notFound, "\(path) has no readable version \(version ?? row.current)")
        }
        return stored.meta
    }

    public func metadata(_ g: Grant, _ path: SecretPath) throws(CofferError) -> SecretRecord {
        guard let rec = try errors.call({ try store.secret(path) }) else {
            throw CofferError(.notFound, "no secret at \(path)")
        }
        return rec
    }

    public func list(_ g: Grant, _ prefix: SecretPrefix, after: String?, limit: Int?) throws(CofferError) -> ListPage {
        let n = limit ?? limits.maxListPage
        guard (1...limits.maxListPage).contains(n) else {
            throw CofferError(.invalidParameter, "limit must be 1...\(limits.maxListPage)")
        }
        if let after, !after.isEmpty {
            let bare = after.hasSuffix("/") ? String(after.dropLast()) : after
            guard !bare.contains("/") else { throw CofferError(.invalidParameter, "after must be one key from a previous page") }
            _ = try SecretPath(bare)
        }
        // Names are shown only where the caller may list (folders) or list, read or
        // write (secrets): a listing is no oracle for what lies elsewhere.
        let decide = PolicyEvaluator.decider(gate.policies.policy, g.principal)
        let base = prefix.childPrefix
        let visible = { (key: String) -> Bool in
            let isFolder = key.hasSuffix("/")
            guard let child = try? SecretPath(base + (isFolder ? String(key.dropLast()) : key)) else { return false }
            if decide(.list, child).allowed { return true }
            return !isFolder && (decide(.read, child).allowed || decide(.write, child).allowed)
        }
        return try errors.call { try store.list(prefix, after: after, limit: n, visible: visible) }
    }

    public func change(_ g: Grant, _ change: Store.VersionChange, _ path: SecretPath, versions: [Int]) async throws(CofferError) -> SecretRecord {
        guard versions.allSatisfy({ $0 >= 1 }) else { throw CofferError(.invalidVersion, "versions must be 1 or more") }
        guard versions.count <= 1000 else { throw CofferError(.invalidVersion, "at most 1000 versions at once") }
        let now = clock.nowMillis()
        cache.beginWrite(path)
        defer { cache.endWrite(path) }  // also when the change failed halfway
        let p = g.principal
        let rec = try await errors.call {
            try await store.change(change, path, versions: versions, now: now, guard: tokens.guardFor(p), ticket: g.ticket)
        }
        logger.info("secret versions changed", metadata: [
            "peer.uid": "\(p.uid)", "secret.path": "\(path)", "change": "\(change)", "versions": "\(versions)",
        ])
        return rec
    }

    public func count(_ g: Grant) throws(CofferError) -> Int {
        try errors.call { try store.secretCount() }
    }
}
