public import CofferAudit
public import CofferCore
public import CofferCrypto
public import CofferStore
import Foundation
import GRDB
public import Logging

/// Where a request becomes work: authorize → touch the store → open ciphertext.
/// Plaintext exists only here and only inside SecretBytes (invariant 1).
public final class SecretEngine: Sendable {
    public struct Limits: Sendable {
        public var maxValueBytes: Int
        public var maxVersions: Int
        public var maxListPage: Int
        public init(maxValueBytes: Int, maxVersions: Int, maxListPage: Int) {
            self.maxValueBytes = maxValueBytes
            self.maxVersions = maxVersions
            self.maxListPage = maxListPage
        }
    }

    public let store: Store
    public let keyring: Keyring
    public let policies: PolicyStore
    public let tokens: TokenService
    public let principals: PrincipalResolver
    public let audit: AuditLog
    let cache = CiphertextCache(limit: 10_000)
    public let limits: Limits
    public let logger: Logger
    public let startedAt = Date()

    public init(store: Store, keyring: Keyring, policies: PolicyStore, audit: AuditLog, limits: Limits, logger: Logger) {
        self.store = store
        self.audit = audit
        self.keyring = keyring
        self.policies = policies
        let mapper = StoreErrorMapper(audit: audit, logger: logger)
        let principals = PrincipalResolver()
        self.principals = principals
        self.tokens = TokenService(store: store, hashKey: keyring.tokenHashKey, policies: policies, audit: audit, logger: logger,
                                   mapError: { mapper.map($0) }, principals: principals)
        self.limits = limits
        self.logger = logger
    }

    /// Opens the database, checks the key against it, enrolls the key on first use.
    public static func open(config: CofferConfig, unlocker: any Unlocker, policies: PolicyStore, logger: Logger,
                            reanchorAudit: Bool = false) async throws(CofferError) -> SecretEngine {
        let dbPath = config.resolvedDatabasePath
        // Unlock first, read-only: a wrong or missing key leaves the database untouched.
        let keyring = try Keyring.unlock(unlocker, databasePath: dbPath)
        let store: Store
        do {
            // The state directory is private to the daemon (invariant 7).
            try FileManager.default.createDirectory(
                atPath: (dbPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true,
                attributes: [.posixPermissions: 0o700])
            store = try Store(path: dbPath, durability: config.durability, auditMAC: AuditMAC(key: keyring.auditMACKey))
            try keyring.enroll(in: store, now: nowMillis())
        } catch let e as CofferError {
            throw e
        } catch {
            throw CofferError(.storage, "cannot open the database \(dbPath): \(error)")
        }
        let audit = try await AuditLog.open(
            store: store, keyring: keyring,
            publicKeyFile: (dbPath as NSString).deletingLastPathComponent + "/audit.pub",
            anchorFile: (dbPath as NSString).deletingLastPathComponent + "/" + AuditAnchor.fileName, reanchor: reanchorAudit,
            settings: .init(enabled: config.auditEnabled, checkpointEvents: config.auditCheckpointEvents,
                            checkpointSeconds: config.auditCheckpointSeconds, mirror: config.auditMirror, maxBatch: config.auditMaxBatch),
            logger: logger)
        try await audit.recoverTail()
        return SecretEngine(
            store: store, keyring: keyring, policies: policies, audit: audit,
            limits: Limits(maxValueBytes: config.maxValueBytes, maxVersions: config.maxVersions, maxListPage: config.maxListPage),
            logger: logger)
    }

    // MARK: authorization

    /// The one authorization call; a denial is 403 whether or not the path exists,
    /// so a denial is no oracle for what exists.
    public func authorize(_ p: Principal, _ action: Action, _ path: SecretPath?) throws(CofferError) {
        let d = policies.authorize(p, action, path)
        AuditScope.current?.decided(d)
        guard d.allowed else {
            logger.info("denied", metadata: [
                "peer.uid": "\(p.uid)", "peer.pid": "\(p.pid)", "action": "\(action.rawValue)",
                "secret.path": "\(path?.rawValue ?? "-")", "rule": "\(d.rule)",
            ])
            // The rule that decided depends on policy and identity only, never on what exists.
            throw CofferError(.permissionDenied, "permission denied", hint: "\(action.rawValue) for \(p.displayName): \(d.rule)")
        }
    }

    // MARK: use cases

    /// Writes a new version. `value` is consumed into a ciphertext; the caller's copy
    /// is wiped by SecretBytes' deinit.
    public func put(_ p: Principal, _ path: SecretPath, value: SecretBytes, cas: Int?) async throws(CofferError) -> VersionRecord {
        try authorize(p, .write, path)
        defer { cache.invalidate(path) }  // after the commit (or a failure): no stale row stays cached
        guard value.count <= limits.maxValueBytes else {
            throw CofferError(.valueTooLarge, "the value is \(value.count) bytes; the limit is \(limits.maxValueBytes)",
                              hint: "raise limits.max_value_bytes (at most 1 MiB)")
        }
        if let cas {
            guard cas >= 0 else { throw CofferError(.invalidVersion, "cas must be 0 or a version number") }
            // A check-and-set answer tells whether the secret exists and its version:
            // only for callers who may read its metadata (no oracle for write-only callers).
            try authorize(p, .readMetadata, path)
            AuditScope.current?.update { $0.action = "write" }
        }
        let keyring = self.keyring
        let record = try await storeCall {
            try await store.put(path, cas: cas, maxVersions: limits.maxVersions, author: Author(uid: p.uid, user: p.userName),
                                now: SecretEngine.nowMillis(), guard: tokenGuard(p), audit: auditScopeForWrite()) { version in
                do { return try keyring.seal(value, path: path, version: version) } catch {
                    throw CofferError(.internal, "sealing failed")
                }
            }
        }
        logger.info("secret written", metadata: ["peer.uid": "\(p.uid)", "secret.path": "\(path)", "secret.version": "\(record.version)"])
        return record
    }

    public struct ReadResult: Sendable {
        public var path: SecretPath
        public var currentVersion: Int
        public var meta: VersionRecord
        public var value: SecretBytes
    }

    public func get(_ p: Principal, _ path: SecretPath, version: Int?) throws(CofferError) -> ReadResult {
        try authorize(p, .read, path)
        if let version, version < 1 { throw CofferError(.invalidVersion, "version must be 1 or more") }
        let generation = cache.generation
        let cached = cache.lookup(path, version)
        let found: (current: Int, stored: StoredVersion?)
        if let cached {
            found = (cached.current, cached.stored)
        } else {
            guard let row = try storeCall({ try store.version(path, version) }) else {
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
        let value: SecretBytes
        do {
            value = try keyring.open(wrappedKey: wrapped, ciphertext: ct, path: path, version: stored.meta.version, keyID: stored.meta.keyID)
        } catch {
            logger.error("integrity check failed", metadata: ["secret.path": "\(path)", "secret.version": "\(stored.meta.version)"])
            throw CofferError(.integrity, "version \(stored.meta.version) of \(path) failed its integrity check",
                              hint: "the stored ciphertext was altered or moved; restore the database from a backup")
        }
        if cached == nil { cache.insert(path, current: current, stored, ifGeneration: generation) }
        try recheckToken(p)  // the token is checked at the moment of reading
        return ReadResult(path: path, currentVersion: current, meta: stored.meta, value: value)
    }

    public func metadata(_ p: Principal, _ path: SecretPath) throws(CofferError) -> SecretRecord {
        try authorize(p, .readMetadata, path)
        guard let rec = try storeCall({ try store.secret(path) }) else {
            throw CofferError(.notFound, "no secret at \(path)")
        }
        return rec
    }

    public func list(_ p: Principal, _ prefix: SecretPrefix, after: String?, limit: Int?) throws(CofferError) -> ListPage {
        let asPath = prefix.rawValue.isEmpty ? nil : try SecretPath(prefix.rawValue)
        try authorize(p, .list, asPath)
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
        let decide = PolicyEvaluator.decider(policies.policy, p)
        let base = prefix.childPrefix
        let visible = { (key: String) -> Bool in
            let isFolder = key.hasSuffix("/")
            guard let child = try? SecretPath(base + (isFolder ? String(key.dropLast()) : key)) else { return false }
            if decide(.list, child).allowed { return true }
            return !isFolder && (decide(.read, child).allowed || decide(.write, child).allowed)
        }
        return try storeCall { try store.list(prefix, after: after, limit: n, visible: visible) }
    }

    public func change(_ p: Principal, _ change: Store.VersionChange, _ path: SecretPath, versions: [Int]) async throws(CofferError) -> SecretRecord {
        let action: Action = switch change {
        case .delete: .delete
        case .undelete: .undelete
        case .destroy: .destroy
        }
        try authorize(p, action, path)
        guard versions.allSatisfy({ $0 >= 1 }) else { throw CofferError(.invalidVersion, "versions must be 1 or more") }
        guard versions.count <= 1000 else { throw CofferError(.invalidVersion, "at most 1000 versions at once") }
        let now = SecretEngine.nowMillis()
        defer { cache.invalidate(path) }  // also when the change failed halfway
        let rec = try await storeCall { try await store.change(change, path, versions: versions, now: now, guard: tokenGuard(p), audit: auditScopeForWrite()) }
        logger.info("secret versions changed", metadata: [
            "peer.uid": "\(p.uid)", "secret.path": "\(path)", "change": "\(action.rawValue)", "versions": "\(versions)",
        ])
        return rec
    }

    public struct StatusInfo: Sendable {
        public var secrets: Int
        public var keyID: String
        public var uptimeSeconds: Double
    }

    public func status(_ p: Principal) throws(CofferError) -> StatusInfo {
        try authorize(p, .status, nil)
        let n = try storeCall { try store.secretCount() }
        return StatusInfo(secrets: n, keyID: keyring.keyID, uptimeSeconds: Date().timeIntervalSince(startedAt))
    }

    public func decide(_ p: Principal, _ action: Action, _ path: SecretPath?) -> Decision {
        policies.authorize(p, action, path)
    }

    // MARK: helpers

    /// The caller's token chain, to be checked again inside the write transaction.
    func tokenGuard(_ p: Principal) -> Store.TokenGuard? { Store.TokenGuard(p.token?.chain, now: SecretEngine.nowMillis()) }

    /// Reads check the token at the moment of reading: if any token was revoked since
    /// this one was authenticated (the revocation generation moved), the chain is
    /// looked up again before the value leaves.
    func recheckToken(_ p: Principal) throws(CofferError) {
        guard let t = p.token, tokens.cache.generation != t.epoch else { return }
        let now = SecretEngine.nowMillis()
        for a in t.chain {
            guard let r = try storeCall({ try store.token(accessor: a) }) else { throw CofferError(.tokenUnknown, "the token is not valid") }
            if r.revokedAt != nil { throw CofferError(.tokenRevoked, "the token was revoked") }
            if now >= r.expiresAt { throw CofferError(.tokenExpired, "the token expired") }
        }
    }

    static func nowMillis() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

    /// The request's audit scope when audit is on: state changes commit its event
    /// in their own transaction.
    func auditScopeForWrite() -> AuditScope? { audit.settings.enabled ? AuditScope.current : nil }

    /// Store errors become CofferError; database details go to the log, not the caller.
    func storeCall<T>(_ body: () throws -> T) throws(CofferError) -> T {
        do { return try body() } catch let e as CofferError { throw e } catch {
            throw mapStoreError(error)
        }
    }

    func storeCall<T>(_ body: () async throws -> T) async throws(CofferError) -> T {
        let result: T
        do { result = try await body() } catch let e as CofferError { throw e } catch {
            throw mapStoreError(error)
        }
        if let e = AuditScope.current?.committed { audit.committedInTransaction(e) }
        return result
    }

    /// A write the disk refuses is a write the audit trail cannot record: fail closed
    /// with 503 audit_unavailable and mark the log degraded.
    func mapStoreError(_ error: any Error) -> CofferError {
        StoreErrorMapper(audit: audit, logger: logger).map(error)
    }
}

struct StoreErrorMapper: Sendable {
    let audit: AuditLog
    let logger: Logger

    func map(_ error: any Error) -> CofferError {
        if let e = error as? CofferError { return e }
        if let db = error as? DatabaseError, [.SQLITE_FULL, .SQLITE_IOERR, .SQLITE_READONLY].contains(db.resultCode) {
            let reason = AuditLog.describe(error)
            audit.writeFailed(reason)
            logger.error("database write failed", metadata: ["error": "\(reason)"])
            return CofferError(.auditUnavailable, "the audit trail cannot record this request, so it was not served",
                               hint: "see cofferd's health and log; it recovers by itself when the database can be written again")
        }
        logger.error("database error", metadata: ["error": "\(error)"])
        return CofferError(.storage, "the database could not complete the request")
    }
}
