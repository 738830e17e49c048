public import CofferAudit
public import CofferCore
public import CofferCrypto
public import CofferStore
import CCofferLinux
import Foundation
public import Logging

/// The engine: the gate, then one service per feature behind it (secrets, tokens,
/// the audit trail). Every public function here is one gate call around one service
/// call; the server never reaches into the store, and no service runs without a
/// grant. Calls made with a ticket leave their event to the ticket's opener (the
/// server's group commit); calls made without one (jobs, tests) have the gate commit it.
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

    public let gate: Gate
    public let secrets: SecretsService
    public let tokens: TokenService
    public let trail: AuditTrail
    public let keys: KeysService
    public let login: LoginService
    public let elevation: ElevationService
    public let runs: RunService
    public let credentials: CredentialService
    let store: Store
    /// See Store.isLocal: whether requests may read the store on an event loop.
    public var storeIsLocal: Bool { store.isLocal }
    let keyring: Keyring
    let policies: PolicyStore
    let principals: PrincipalResolver
    let coherence: SharedCoherence
    let audit: AuditLog
    let clock: any WallClock
    public let limits: Limits
    public let logger: Logger
    let startedAt: Int64

    init(store: Store, keyring: Keyring, policies: PolicyStore, audit: AuditLog, limits: Limits, login: LoginService.Settings,
         runs: RunService.Settings, credentials: CredentialService.Settings, signingKeys: CredentialService.ActiveKeys,
         maxStalenessMillis: Int = 0, clock: any WallClock, logger: Logger) {
        self.store = store
        self.audit = audit
        self.keyring = keyring
        self.policies = policies
        self.clock = clock
        let errors = StoreErrorMapper(audit: audit, logger: logger)
        let principals = PrincipalResolver()
        self.principals = principals
        let coherence = SharedCoherence(store: store, maxStalenessMillis: maxStalenessMillis, errors: errors, logger: logger)
        self.coherence = coherence
        let gate = Gate(policies: policies, audit: audit, clock: clock, logger: logger, coherence: coherence)
        self.gate = gate
        let tokens = TokenService(store: store, hashKey: keyring.tokenHashKey, policies: policies, errors: errors,
                                  principals: principals, coherence: coherence, clock: clock, logger: logger)
        self.tokens = tokens
        let secrets = SecretsService(store: store, keyring: keyring, gate: gate, tokens: tokens, limits: limits, errors: errors,
                                     clock: clock, logger: logger)
        self.secrets = secrets
        let runService = RunService(settings: runs, gate: gate, secrets: secrets, clock: clock, logger: logger)
        self.runs = runService
        secrets.observeWrites { [weak runService] path in runService?.secretWritten(path) }
        self.trail = AuditTrail(store: store, log: audit, tokens: tokens, errors: errors, logger: logger)
        self.keys = KeysService(store: store, keyring: keyring, tokens: tokens, errors: errors, clock: clock, logger: logger)
        self.login = LoginService(settings: login, tokens: tokens, clock: clock, logger: logger)
        self.elevation = ElevationService(store: store, policies: policies, tokens: tokens, principals: principals, errors: errors,
                                          clock: clock, logger: logger)
        let credentialService = CredentialService(settings: credentials, keys: signingKeys, store: store, keyring: keyring, policies: policies,
                                                  gate: gate, errors: errors, clock: clock, logger: logger)
        self.credentials = credentialService
        elevation.observeClosed { [weak credentialService] e in credentialService?.elevationClosed(e) }
        self.limits = limits
        self.logger = logger
        self.startedAt = clock.nowMillis()
        // another instance changed secrets, tokens or keys: nothing cached survives it,
        // and the keyring takes the data keys the database now has (a rotation there)
        coherence.onChange { [weak tokens, weak secrets, weak keyring, weak runService, weak credentialService, store, logger] keys in
            tokens?.cache.clear()
            secrets?.cache.clear()
            runService?.sharedStateChanged()
            guard keys else { return }
            do {
                try keyring?.refreshDataKeys(store: store)
                try credentialService?.refreshJWTKey()
            } catch {
                logger.error("cannot load the keys another instance changed", metadata: ["error": "\(error)"])
            }
        }
        coherence.listen()
    }

    /// Opens the database, checks the key against it, enrolls the key on first use.
    /// Creates a database only when `create` (init, dev mode); `serve` never does.
    public static func open(config: CofferConfig, unlocker: any Unlocker, policies: PolicyStore, logger: Logger,
                            reanchorAudit: Bool = false, create: Bool = true,
                            clock: any WallClock = SystemWallClock()) async throws(CofferError) -> SecretEngine {
        let location = config.databaseLocation
        if !create {
            // `serve` opens only a database `init` made (a key check enrolled), never
            // an empty file or one whose keyring was erased.
            try checkInitialised(database: location)
        }
        // Unlock first, read-only: a wrong or missing key leaves the database untouched.
        let unsealed = try RootKey.unlock(unlocker, database: location)
        let store: Store
        let keyring: Keyring
        do {
            // The state directory is private to the daemon (invariant 7).
            if case .sqlite(let dbPath) = location {
                try FileManager.default.createDirectory(
                    atPath: (dbPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true,
                    attributes: [.posixPermissions: 0o700])
            }
            store = try Store(location: location, durability: config.durability, instance: try InstanceID.forStore(config))
            keyring = try Keyring.load(unsealed, store: store, now: clock.nowMillis())
            store.installAuditMAC(AuditMAC(key: keyring.auditMACKey))
            store.installRecordMAC(try RecordMAC(derivedFrom: keyring.tokenHashKey))
            // before anything is written: the records as a set, against their digest
            if case .suspect(let why) = try store.openRecordDigest() {
                logger.critical("the records do not match their authenticated digest; every record is refused until an admin acts",
                                metadata: ["problem": "\(why)"])
            }
        } catch let e as CofferError {
            throw e
        } catch {
            throw CofferError(.storage, "cannot open the database \(location): \(Store.describe(error))")
        }
        // this host's files beside the trail: next to the SQLite file, or in the state directory
        let localDir: String
        switch location {
        case .sqlite(let dbPath): localDir = (dbPath as NSString).deletingLastPathComponent
        case .postgres: localDir = config.stateDir
        }
        let audit = try await AuditLog.open(
            store: store, keyring: keyring,
            publicKeyFile: localDir + "/audit.pub",
            anchorFile: localDir + "/" + AuditAnchor.fileName, reanchor: reanchorAudit,
            settings: .init(enabled: config.auditEnabled, checkpointEvents: config.auditCheckpointEvents,
                            checkpointSeconds: config.auditCheckpointSeconds, mirror: config.auditMirror, maxBatch: config.auditMaxBatch),
            clock: clock, logger: logger)
        try await audit.recoverTail()
        let signingKeys = try CredentialService.loadKeys(store: store, root: keyring.root)
        let engine = SecretEngine(
            store: store, keyring: keyring, policies: policies, audit: audit,
            limits: Limits(maxValueBytes: config.maxValueBytes, maxVersions: config.maxVersions, maxListPage: config.maxListPage),
            login: LoginService.Settings(config: config), runs: RunService.Settings(config: config),
            credentials: CredentialService.Settings(config: config), signingKeys: signingKeys,
            maxStalenessMillis: config.postgres?.maxStalenessMillis ?? 0, clock: clock, logger: logger)
        try await engine.authenticateRecords()
        // a chain from before the registry (an upgraded or migrated database): registered now
        do { try await store.registerExistingChain(now: clock.nowMillis()) } catch {
            throw StoreErrorMapper(audit: audit, logger: logger).map(error)
        }
        // the start's checks (the reference schema in memory, integrity_check, the
        // digest's full scan) freed what they allocated: hand it back to the system
        _ = coffer_malloc_trim()
        return engine
    }

    /// Once per database (at its first open by a Coffer that authenticates records):
    /// MACs what was written before, as `system:upgrade`, audited. When the marker of
    /// that step is gone but the trail records it, nothing is adopted: the records
    /// without a MAC stay integrity errors, and the log says why.
    func authenticateRecords() async throws(CofferError) {
        let ticket = gate.ticket(for: .system("upgrade"), action: "records_authenticated")
        do {
            let recordsAdopted = try store.recordsAdopted()
            if recordsAdopted && store.recordDigestState != .absent { return }
            // Adoption MACs whatever the rows say: only on a trail that verifies whole,
            // so that no edited event (the one that recorded an earlier adoption, say)
            // can make it launder edited rows.
            let chain = try store.auditChain()
            if case .bad(let seq, let problem) = AuditVerifier.verifyAll(events: chain.events, checkpoints: chain.checkpoints, publicKey: audit.publicKey,
                                                                          own: store.chain, anchor: audit.anchor, mac: audit.mac,
                                                                          registered: try store.auditInstances()).verdict {
                logger.critical("the audit trail does not verify; records without a MAC are not adopted (nor a record digest made) and stay refused",
                                metadata: ["audit.seq": "\(seq)", "problem": "\(problem)"])
                store.markRecordDigestSuspect("there is no record digest, and the trail does not verify")
                return
            }
            if recordsAdopted {
                // upgraded from a Coffer that MACed rows but kept no digest: one is made
                try await store.adoptRecordDigest(ticket: gate.ticket(for: .system("upgrade"), action: "record_digest_adopted"))
                if store.recordDigestState == .verified { logger.notice("record digest made (rows replayed or deleted are detected from now on)") }
                return
            }
            if let n = try await store.adoptRecordMACs(ticket: ticket) {
                logger.notice("records authenticated (secrets and tokens are MACed from now on)",
                              metadata: ["secrets": "\(n.secrets)", "tokens": "\(n.tokens)"])
            }
        } catch let e as CofferError where e.code == .integrity {
            logger.critical("the marker of authenticated records was removed; records without a MAC are refused",
                            metadata: ["error": "\(e.message)"])
        } catch {
            throw StoreErrorMapper(audit: audit, logger: logger).map(error)
        }
        // fail closed: a database that should have a digest and has none serves nothing
        if store.recordDigestState == .absent { store.markRecordDigestSuspect("there is no record digest") }
    }

    /// Zeroes every key the engine holds, in place (a seal, once nothing uses it).
    public func wipeKeys() {
        credentials.wipeKeys()
        audit.signingKey.wipe()
        store.wipeMACKeys()
        keyring.wipe()
        logger.notice("sealed: every key held in memory was zeroed")
    }

    /// Throws unless `databasePath` is a database `cofferd init` made (read-only).
    public static func checkInitialised(database: DatabaseLocation) throws(CofferError) {
        let databasePath = database.description
        let check: (keyID: String, check: Data)?
        do { check = try Store.readKeyCheck(location: database) } catch {
            throw CofferError(.storage, "cannot read the database \(databasePath)", hint: "is it a Coffer database?")
        }
        guard check != nil else {
            throw CofferError(.config, "\(databasePath) is not an initialised Coffer database; cofferd serve never creates one",
                              hint: "run `cofferd init` for a new installation, or restore the database from a backup")
        }
    }

    /// A root-key change, offline (the caller holds the state lock): the keyring and
    /// the audit signing key are re-sealed under the new key in one transaction.
    /// Secret versions and tokens are untouched. Returns the new root key's id.
    public struct RootKeyChange: Sendable {
        public var newRootKeyID: String
        /// Versions still wrapped by the data key carried over from before the keyring
        /// (the old root key itself), which the old key therefore still opens.
        public var legacyVersions: Int
        /// The token-hash and audit MAC keys were carried over (derived from the old root).
        public var legacyPurposeKeys: Bool
    }

    public static func changeRootKey(config: CofferConfig, from old: KeyFileUnlocker, to new: KeyFileUnlocker,
                                     clock: any WallClock = SystemWallClock()) throws(CofferError) -> RootKeyChange {
        let unsealed = try RootKey.unlock(old, database: config.databaseLocation)
        guard unsealed.holder == nil else {
            throw CofferError(.config, "this database's root key is sealed under its key file (a holder): the offline key-file change does not apply",
                              hint: "on the running daemon: coffer operator rekey --key-file NEW (or coffer operator rotate)")
        }
        let oldRoot = unsealed.root
        let newRoot = RootKey(try new.rootKey())
        let store: Store
        let instance = try InstanceID.forStore(config)
        do { store = try Store(location: config.databaseLocation, durability: config.durability, instance: instance) } catch let e as CofferError {
            throw e
        } catch {
            throw CofferError(.storage, "cannot open the database \(config.databaseLocation): \(error)")
        }
        let keyring = try Keyring.load(unsealed, store: store, now: clock.nowMillis())  // completes a keyring from before first
        // the keyring rows it changes are MACed and the record digest kept, as online
        do {
            store.installRecordMAC(try RecordMAC(derivedFrom: keyring.tokenHashKey))
            if case .suspect(let why) = try store.openRecordDigest() {
                throw CofferError(.integrity, "the database's records do not match their authenticated digest: \(why)",
                                  hint: "nothing was changed; restore a backup (README, Authenticated state)")
            }
        } catch let e as CofferError {
            throw e
        } catch {
            throw CofferError(.storage, "cannot open the database \(config.databaseLocation): \(error)")
        }
        return try Keyring.changeRoot(store: store, from: oldRoot, to: newRoot, now: clock.nowMillis())
    }

    // MARK: who is calling

    /// Resolves the caller: the kernel's peer credentials, plus a token's grant when
    /// one is presented (its roles then replace the peer's).
    public func principal(pid: Int32, uid: UInt32, gid: UInt32, token: String?, ticket: AuditTicket) async throws(CofferError) -> Principal {
        var p = principal(pid: pid, uid: uid, gid: gid, ticket: ticket)
        if let token {
            p.token = try await tokens.authenticate(token, peerUID: uid, ticket: ticket)
            ticket.update { $0.tokenAccessor = p.token?.accessor }
        }
        return p
    }


    /// The caller by its peer credentials alone (no token), recorded on the ticket.
    public func principal(pid: Int32, uid: UInt32, gid: UInt32, ticket: AuditTicket) -> Principal {
        let p = principals.principal(pid: pid, uid: uid, gid: gid)
        ticket.update { $0.peerUser = p.userName }
        return p
    }

    /// What the live policy says, recording nothing (for answers like status).
    public func decide(_ p: Principal, _ action: Action, _ path: SecretPath?) -> Decision { gate.decide(p, action, path) }

    // MARK: secrets

    public func put(_ p: Principal, _ path: SecretPath, value: SecretBytes, cas: Int?, ticket: AuditTicket? = nil) async throws(CofferError) -> VersionRecord {
        try await gate.perform(ticket, p, .write, path) { g async throws(CofferError) in try await secrets.put(g, path, value: value, cas: cas) }
    }

    public func get(_ p: Principal, _ path: SecretPath, version: Int?, ticket: AuditTicket) throws(CofferError) -> SecretsService.ReadResult {
        try gate.performNow(ticket, p, .read, path) { g throws(CofferError) in try secrets.get(g, path, version: version) }
    }

    public func get(_ p: Principal, _ path: SecretPath, version: Int?) async throws(CofferError) -> SecretsService.ReadResult {
        try await gate.perform(nil, p, .read, path) { g async throws(CofferError) in try secrets.get(g, path, version: version) }
    }

    public func metadata(_ p: Principal, _ path: SecretPath, ticket: AuditTicket? = nil) async throws(CofferError) -> SecretRecord {
        try await gate.perform(ticket, p, .readMetadata, path) { g async throws(CofferError) in try secrets.metadata(g, path) }
    }

    public func list(_ p: Principal, _ prefix: SecretPrefix, after: String?, limit: Int?, ticket: AuditTicket? = nil) async throws(CofferError) -> ListPage {
        let asPath = prefix.rawValue.isEmpty ? nil : try SecretPath(prefix.rawValue)
        return try await gate.perform(ticket, p, .list, asPath) { g async throws(CofferError) in try secrets.list(g, prefix, after: after, limit: limit) }
    }

    public func change(_ p: Principal, _ change: Store.VersionChange, _ path: SecretPath, versions: [Int],
                       ticket: AuditTicket? = nil) async throws(CofferError) -> SecretRecord {
        let action: Action = switch change {
        case .delete: .delete
        case .undelete: .undelete
        case .destroy: .destroy
        }
        return try await gate.perform(ticket, p, action, path) { g async throws(CofferError) in
            try await secrets.change(g, change, path, versions: versions)
        }
    }

    public struct StatusInfo: Sendable {
        public var secrets: Int
        public var keyID: String
        public var activeKeyID: String
        public var uptimeSeconds: Double
        public var holderMode: String
        public var rotation: RotationRecord?
    }

    /// How the root key is held (nil: by its key file directly).
    public var keyHolder: HolderRecord? { keyring.holder }
    public var rootKeyID: String { keyring.rootKeyID }

    public func status(_ p: Principal, ticket: AuditTicket? = nil) async throws(CofferError) -> StatusInfo {
        try await gate.perform(ticket, p, .status, nil) { g async throws(CofferError) in
            StatusInfo(secrets: try secrets.count(g), keyID: keyring.rootKeyID, activeKeyID: keyring.activeKeyID,
                       uptimeSeconds: Double(clock.nowMillis() - startedAt) / 1000, holderMode: (keyring.holder?.mode ?? .keyfile).rawValue,
                       rotation: try? keys.rotationStatus())  // a record failing its MAC: `operator check` names it
        }
    }

    public struct LiveCounts: Sendable {
        public var tokens: Int
        public var elevations: [String: Int]
        public var injections: Int
    }

    /// Needs the metrics capability; counts only (no path, no name).
    public func liveCounts(_ p: Principal, ticket: AuditTicket? = nil) async throws(CofferError) -> LiveCounts {
        try await gate.perform(ticket, p, .metrics, nil, named: "metrics") { _ throws(CofferError) in
            let now = clock.nowMillis()
            let counts = try StoreErrorMapper(audit: audit, logger: logger).call { try store.liveCounts(nowMillis: now) }
            return LiveCounts(tokens: counts.tokens, elevations: counts.elevations, injections: runs.live.withLock { $0.count })
        }
    }

    // MARK: tokens

    public func createToken(_ p: Principal, _ req: TokenService.Request, ticket: AuditTicket? = nil) async throws(CofferError) -> TokenService.Created {
        // Minting needs some role (or a valid token); what the token may carry is the
        // token service's narrowing rules.
        try await gate.perform(ticket, p, .status, nil, named: "token_create") { g async throws(CofferError) in try await tokens.create(g, req) }
    }

    /// One's own token needs nothing more; anyone else's needs admin.
    public func lookupToken(_ p: Principal, accessor: String, ticket: AuditTicket? = nil) async throws(CofferError) -> TokenRecord {
        try await gate.perform(ticket, p, accessor == p.token?.accessor ? .ownToken : .admin, nil, named: "token_lookup") { g async throws(CofferError) in
            try tokens.lookup(g, accessor: accessor)
        }
    }

    public func listTokens(_ p: Principal, ticket: AuditTicket? = nil) async throws(CofferError) -> [TokenRecord] {
        try await gate.perform(ticket, p, .admin, nil, named: "token_list") { g async throws(CofferError) in try tokens.list(g) }
    }

    /// One's own token (and its descendants), or any with admin.
    /// One's own token (ownToken), a token one minted (the capability that let one mint
    /// it: holding a role), or anyone's (admin).
    public func revokeToken(_ p: Principal, accessor: String, ticket: AuditTicket? = nil) async throws(CofferError) -> [String] {
        let action: Action = accessor == p.token?.accessor ? .ownToken : minted(by: p, accessor) ? .status : .admin
        return try await gate.perform(ticket, p, action, nil, named: "token_revoke") { g async throws(CofferError) in
            try await tokens.revoke(g, accessor: accessor)
        }
    }

    /// Whether `accessor` was minted by the caller: from the caller's token (any depth
    /// below it), or — for a caller without a token — by its uid, from no token.
    func minted(by p: Principal, _ accessor: String) -> Bool {
        guard let record = try? store.token(accessor: accessor) else { return false }
        guard let own = p.token?.accessor else { return record.parent == nil && record.createdUID == p.uid }
        var parent = record.parent
        for _ in 0..<64 {
            guard let a = parent else { return false }
            if a == own { return true }
            parent = (try? store.token(accessor: a))?.parent
        }
        return false
    }

    /// A background job: tokens that ended more than `retainSeconds` ago are deleted,
    /// as `system:reaper` (one event when there was something to delete).
    @discardableResult
    public func reapTokens(retainSeconds: Int64) async throws(CofferError) -> Int {
        let due = try StoreErrorMapper(audit: audit, logger: logger).call { try store.reapableTokens(before: clock.nowMillis() - retainSeconds * 1000) }
        guard due > 0 else { return 0 }
        return try await gate.runAsSystem("reaper", action: .admin, named: "token_reap") { g async throws(CofferError) in
            try await tokens.reap(g, olderThan: retainSeconds)
        }
    }

    /// What a caller learns about itself: its roles (as the policy names them) and
    /// its token's record.
    public func selfInfo(_ p: Principal) -> (roles: [Policy.Role], token: TokenRecord?) {
        let policy = policies.policy
        let names = p.token?.roles ?? policy.roleNames(for: p)
        let token = p.token.flatMap { try? store.token(accessor: $0.accessor) }
        return (names.compactMap { policy.roles[$0] }, token)
    }

    // MARK: policy

    public func reloadPolicy(_ p: Principal, ticket: AuditTicket? = nil) async throws(CofferError) -> Policy {
        try await gate.perform(ticket, p, .admin, nil, named: "policy_reload") { _ async throws(CofferError) in try policies.reload() }
    }

    public struct Explanation: Sendable {
        public var subject: Principal
        public var roles: [String]
        public var decision: Decision
        /// Roles the subject may ask for, and requests it may review.
        public var elevation: [String]
    }

    /// The decision the live policy would make for a subject, touching no secret.
    public func explain(_ p: Principal, as subject: Subject, capability: Capability, path: String,
                        ticket: AuditTicket? = nil) async throws(CofferError) -> Explanation {
        try await gate.perform(ticket, p, .admin, nil, named: "policy_explain") { g async throws(CofferError) in
            try explanation(g, as: subject, capability: capability, path: path)
        }
    }

    /// The work of explain, for a caller the gate let through (admin).
    public func explanation(_ g: Grant, as subject: Subject, capability: Capability, path: String) throws(CofferError) -> Explanation {
        guard let who = principals.principal(as: subject) else {
            throw CofferError(.notFound, "no such \(subject)")
        }
        let target: String
        if path.isEmpty || path == "/" { target = "" } else { target = try SecretPath(path).rawValue }
        let policy = policies.policy
        let roles = policy.roleNames(for: who)
        var elevation: [String] = []
        for (role, rule) in policy.elevations.sorted(by: { $0.key < $1.key }) {
            if let via = rule.isEligible(who) {
                var s = "\(role): eligible via \(via), "
                s += rule.approvals == 0 ? "no approval needed" : "needs \(rule.approvals) approval\(rule.approvals == 1 ? "" : "s")"
                s += ", at most \(DurationText.format(rule.maxDurationSeconds))"
                if let f = rule.freshLoginSeconds { s += ", sign-in within \(DurationText.format(f))" }
                elevation.append(s)
            }
            if let via = rule.isApprover(who) { elevation.append("\(role): may review requests via \(via)") }
        }
        return Explanation(subject: who, roles: roles, decision: policy.decide(roles: roles, capability: capability, path: target),
                           elevation: elevation)
    }

    // MARK: audit trail

    public func auditEvents(_ p: Principal, _ filter: AuditFilter, ticket: AuditTicket? = nil) async throws(CofferError) -> [AuditEvent] {
        try await gate.perform(ticket, p, .audit, nil, named: "audit_read") { g async throws(CofferError) in try trail.events(g, filter) }
    }

    public func auditVerify(_ p: Principal, ticket: AuditTicket? = nil) async throws(CofferError) -> (verdict: AuditVerdict, instance: String?, latestCheckpoints: [Int64]) {
        try await gate.perform(ticket, p, .audit, nil, named: "audit_verify") { g async throws(CofferError) in try await trail.verify(g) }
    }

    public func auditExport(_ p: Principal, ticket: AuditTicket? = nil) async throws(CofferError) -> (events: [AuditEvent], checkpoints: [AuditCheckpoint]) {
        try await gate.perform(ticket, p, .audit, nil, named: "audit_export") { g async throws(CofferError) in try await trail.export(g) }
    }

    /// Needs audit and admin.
    public func auditPrune(_ p: Principal, through seq: Int64, ticket: AuditTicket? = nil) async throws(CofferError) -> Int {
        try await gate.perform(ticket, p, .audit, nil, named: "audit_prune") { g async throws(CofferError) in
            _ = try gate.check(g.ticket, p, .admin, nil)
            return try await trail.prune(g, through: seq)
        }
    }

    public func auditPublicKey(_ p: Principal, ticket: AuditTicket? = nil) async throws(CofferError) -> [UInt8] {
        try await gate.perform(ticket, p, .audit, nil, named: "audit_pubkey") { _ async throws(CofferError) in trail.publicKey }
    }

    // MARK: elevation

    /// A background job: requests whose window is over expire, as `system:elevation`
    /// (one event each). Returns how many.
    @discardableResult
    public func expireElevations() async -> Int {
        guard let due = try? elevation.due(), !due.isEmpty else { return 0 }
        var n = 0
        for id in due {
            if (try? await gate.runAsSystem("elevation", action: .admin, named: "elevation_expire", { g async throws(CofferError) in
                try await elevation.expire(g, id: id)
            })) != nil { n += 1 }
        }
        return n
    }

    // MARK: keyring

    public func listKeys(_ p: Principal, ticket: AuditTicket? = nil) async throws(CofferError) -> (rootKeyID: String, keys: [KeyRecord]) {
        try await gate.perform(ticket, p, .admin, nil, named: "key_list") { g async throws(CofferError) in try keys.list(g) }
    }

    /// Every record whose MAC does not match (admin): authenticated state, scanned.
    public func integrityCheck(_ p: Principal, ticket: AuditTicket? = nil) async throws(CofferError) -> (checked: Int, bad: [String]) {
        try await gate.perform(ticket, p, .admin, nil, named: "integrity_check") { _ async throws(CofferError) in
            let r = try StoreErrorMapper(audit: audit, logger: logger).call { try store.integrityScan() }
            if !r.bad.isEmpty {
                logger.critical("records changed without the key", metadata: ["count": "\(r.bad.count)", "first": "\(r.bad[0])"])
            }
            return r
        }
    }

    /// The records against their digest, for status: "verified", or why every record
    /// is refused.
    public var recordsStatus: String {
        switch store.recordDigestState {
        case .verified: "verified"
        case .absent: "no digest"
        case .suspect(let why): "refused: " + why
        }
    }

    /// An admin by peer credentials accepts the records as they are (a suspect record
    /// digest is made anew): refused while any row fails its own MAC. Returns the count.
    public func acceptRecords(_ p: Principal, ticket: AuditTicket? = nil) async throws(CofferError) -> Int {
        try await gate.perform(ticket, p, .admin, nil, named: "record_digest_accepted") { g async throws(CofferError) in
            guard p.token == nil else {
                g.ticket.decided(.deny("records accept: an admin by peer credentials, not a token"))
                throw CofferError(.permissionDenied, "accepting the records needs an admin by peer credentials, not a token",
                                  hint: "run it without COFFER_TOKEN")
            }
            let was = store.recordDigestState
            let n = try await StoreErrorMapper(audit: audit, logger: logger).call { try await store.acceptRecordDigest(ticket: g.ticket) }
            logger.critical("records accepted as they are by an admin; the record digest was made anew",
                            metadata: ["records": "\(n)", "was": "\(was)"])
            return n
        }
    }

    public func rotateDataKey(_ p: Principal, ticket: AuditTicket? = nil) async throws(CofferError) -> KeyRecord {
        try await gate.perform(ticket, p, .admin, nil, named: "key_rotate") { g async throws(CofferError) in try await keys.rotateDataKey(g) }
    }

    /// Unseal on an open daemon: nothing to do; admins learn the root key's id. Also
    /// the event of a real unseal (the sealed daemon had no trail to write it to).
    public func confirmUnsealed(_ p: Principal, unlocker: String? = nil, key: (any Unlocker)? = nil,
                                ticket: AuditTicket? = nil) async throws(CofferError) -> String {
        try await gate.perform(ticket, p, .admin, nil, named: "unseal") { g async throws(CofferError) in
            if let unlocker { g.ticket.update { $0.details["unlocker"] = .text(unlocker) } }
            // a key given to an open daemon is checked, not ignored: it must be this unseal key
            if let key {
                // a malformed key is the caller's mistake (422), as when sealed
                guard keyring.opens(with: key) else { throw CofferError(.invalidParameter, "that \(key.mode == .passphrase ? "passphrase" : "key") does not open this database") }
            }
            return keyring.rootKeyID
        }
    }

    // MARK: the server's side of audit

    /// The engine's clock (ms since the epoch): the one "now" of the daemon.
    public func nowMillis() -> Int64 { clock.nowMillis() }

    /// A new request's ticket (enabled unless audit is switched off).
    public func ticket(_ draft: AuditEvent) -> AuditTicket { AuditTicket(draft, enabled: audit.settings.enabled) }

    /// A ticket for a call made outside a request (tools, tests).
    public func ticket(for p: Principal) -> AuditTicket { gate.ticket(for: p, action: "call") }

    /// Commits a request's outcome event (group commit) unless its write already did;
    /// throws 503 audit_unavailable when it cannot be made durable (fail closed).
    public func settle(_ ticket: AuditTicket, status: Int, error: CofferError?) async throws(CofferError) {
        try await gate.settle(ticket, status: status, error: error)
    }

    /// `settle` without a task (the event-loop request path); see Gate.settle.
    public func settle(_ ticket: AuditTicket, status: Int, error: CofferError?, completion: @escaping @Sendable (CofferError?) -> Void) {
        gate.settle(ticket, status: status, error: error, completion: completion)
    }

    /// A refusal below the request layer (an unparseable request): recorded, not waited for.
    public func recordRefusal(_ event: AuditEvent) { audit.enqueue(event) }

    public struct Health: Sendable {
        public var degraded: String?
        public var auditEnabled: Bool
        public var mirror: String  // off, ok, failing: …
        public var notify: String  // off, ok, failing: …
    }

    public var health: Health {
        Health(degraded: audit.degradedReason, auditEnabled: audit.settings.enabled,
               mirror: audit.settings.mirror.isEmpty ? "off" : audit.mirrorError.map { "failing: \($0)" } ?? "ok",
               notify: elevation.notifier.status(configured: elevation.hooksConfigured))
    }

    /// The audit writer's service (run by the daemon's ServiceGroup).
    public func runAuditWriter() async { await audit.run() }

    public var policyStore: PolicyStore { policies }
}
