import CCofferLinux
public import CofferAudit
public import CofferCore
import CofferCrypto
public import CofferStore
import CoreMetrics
import Foundation
public import Logging
import Synchronization

/// The audit trail's writer (invariant 4).
///
/// - Group commit: requests hand their event to `append` and wait; one writer thread
///   commits whatever is pending in one transaction (bounded by `maxBatch`), so the
///   batch grows with load and adds no delay when idle. Each request waits for its batch.
/// - Fail closed, never wedge: a failed commit fails every request in that batch
///   with 503 audit_unavailable and marks the log degraded; the next commit that
///   succeeds clears it. Nothing blocks health or status.
/// - Checkpoints: the chain head is signed (Ed25519) every `checkpointEvents` events
///   and every `checkpointSeconds` while the head moves, and at shutdown.
public final class AuditLog: Sendable {
    public struct Settings: Sendable {
        public var enabled: Bool
        public var checkpointEvents: Int
        public var checkpointSeconds: Int
        public var mirror: String
        public var maxBatch: Int
        public init(enabled: Bool, checkpointEvents: Int, checkpointSeconds: Int, mirror: String, maxBatch: Int) {
            self.enabled = enabled
            self.checkpointEvents = checkpointEvents
            self.checkpointSeconds = checkpointSeconds
            self.mirror = mirror
            self.maxBatch = maxBatch
        }
    }

    struct Waiter {
        var event: AuditEvent
        /// nil for events nobody waits for (a connection the HTTP layer refused).
        var continuation: CheckedContinuation<Void, any Error>?
        /// or a callback (the event-loop request path: no task waits)
        var completion: (@Sendable ((any Error)?) -> Void)? = nil

        func resume() {
            continuation?.resume()
            completion?(nil)
        }

        func resume(throwing error: any Error) {
            continuation?.resume(throwing: error)
            completion?(error)
        }
    }

    struct State {
        var pending: [Waiter] = []
        var degraded: String?
        var mirrorError: String?
        var sinceCheckpoint = 0
        var mirrorFD: Int32 = -1
        var writerDone = false
        /// The signed head anchor as last written beside the database.
        var anchor: AuditAnchor
        /// Sticky: the trail fails verification (edited outside cofferd); nothing more
        /// is signed until an operator restores it.
        var tampered: String?
    }

    let store: Store
    let signingKey: SecretBytes
    public let publicKey: [UInt8]
    public let settings: Settings
    let logger: Logger
    let anchorFile: String
    public let mac: AuditMAC
    let clock: any WallClock
    private let state: Mutex<State>
    /// Wakes the writer thread (its predicate is `pending` in `state`).
    private let wake = NSCondition()
    /// One checkpoint at a time: the writer thread, the timer and backup/verify all
    /// sign, and a signer that read the anchor before another moved it would find
    /// "the anchored checkpoint was rewritten" and mark a sound trail tampered
    /// (found under a 100k-write seeding at durability normal).
    private let checkpointGate = NSLock()
    private let stopping = Mutex(false)

    init(store: Store, signingKey: SecretBytes, publicKey: [UInt8], settings: Settings, logger: Logger,
         anchorFile: String, anchor: AuditAnchor, mac: AuditMAC, clock: any WallClock) {
        self.store = store
        self.signingKey = signingKey
        self.publicKey = publicKey
        self.settings = settings
        self.logger = logger
        self.anchorFile = anchorFile
        self.mac = mac
        self.clock = clock
        self.state = Mutex(State(anchor: anchor))
    }

    /// Loads the signing key (sealed under the root key) or creates it on first start,
    /// and writes the public key file beside the database.
    static func open(store: Store, keyring: Keyring, publicKeyFile: String, anchorFile: String, reanchor: Bool,
                     settings: Settings, clock: any WallClock, logger: Logger) async throws(CofferError) -> AuditLog {
        var secret: SecretBytes
        var pub: [UInt8]
        var createdKey = false
        do {
            if let k = try store.auditSigningKey() {
                secret = try keyring.root.openAuditKey([UInt8](k.sealed))
                pub = [UInt8](k.publicKey)
                guard try Signing.publicKey(of: secret) == pub else { throw CofferError(.integrity, "the audit signing key does not match its public key") }
            } else {
                // Only a database created by this very open may get a first audit key:
                // a missing key in an existing database means its trail was erased.
                guard store.createdAuditNow else {
                    throw CofferError(.integrity, "the audit signing key is missing from the database; its audit trail was erased",
                                      hint: "restore the database from a backup")
                }
                (pub, secret) = try Signing.keyPair()
                createdKey = true
                let sealed = try keyring.root.sealAuditKey(secret)
                try await store.storeAuditSigningKey(keyID: Hex.encode(pub.prefix(8)), publicKey: Data(pub), sealed: Data(sealed), now: clock.nowMillis())
            }
        } catch let e as CofferError {
            throw e
        } catch is CryptoError {
            throw CofferError(.integrity, "the audit signing key failed its integrity check")
        } catch {
            throw CofferError(.storage, "cannot load the audit signing key: \(error)")
        }
        let text = AuditKeyFile.encode(pub)
        if (try? String(contentsOfFile: publicKeyFile, encoding: .utf8)) != text {
            do { try text.write(toFile: publicKeyFile, atomically: true, encoding: .utf8) } catch {
                throw CofferError(.config, "cannot write the audit public key to \(publicKeyFile)")
            }
            chmod(publicKeyFile, 0o644)
        }
        let anchor = try loadAnchor(store: store, file: anchorFile, fresh: createdKey, reanchor: reanchor, publicKey: pub, key: secret,
                                    now: clock.nowMillis(), logger: logger)
        let log = AuditLog(store: store, signingKey: secret, publicKey: pub, settings: settings, logger: logger,
                           anchorFile: anchorFile, anchor: anchor, mac: AuditMAC(key: keyring.auditMACKey), clock: clock)
        if reanchor { try log.writeAnchor(anchor) }
        let marker = anchorFile + ".tampered"
        if let why = try? String(contentsOfFile: marker, encoding: .utf8) {
            throw CofferError(.integrity, "the audit trail was found changed behind cofferd: \(why.trimmingCharacters(in: .whitespacesAndNewlines))",
                              hint: "restore the database from a backup, then remove \(marker)")
        }
        log.openMirror()
        return log
    }

    /// The head anchor beside the database. A fresh trail gets the genesis anchor; a
    /// trail upgraded to MACs (or re-anchored by an operator) is anchored where it
    /// stands, its events so far marked legacy. A missing or forged anchor of an
    /// existing trail refuses the start: truncation could not be detected otherwise.
    static func loadAnchor(store: Store, file: String, fresh: Bool, reanchor: Bool, publicKey: [UInt8], key: SecretBytes,
                           now: Int64, logger: Logger) throws(CofferError) -> AuditAnchor {
        let existing = try AuditAnchor.load(file: file)
        if let existing, !reanchor {
            guard existing.isValid(publicKey: publicKey) else {
                throw CofferError(.integrity, "the audit head anchor \(file) is not signed by this trail's key",
                                  hint: "restore it (and the database) from a backup")
            }
            return existing
        }
        // a new instance on a shared database starts a chain of its own: nothing of it
        // is in the database yet, so there is nothing a missing anchor could hide
        let newInstance = !store.chain.isEmpty && ((try? store.auditChainIsEmpty()) ?? false)
        guard (fresh && store.createdNow) || reanchor || store.upgradedToAuditMAC || newInstance else {
            throw CofferError(.integrity, "the audit head anchor \(file) is missing, so a truncated trail could not be detected",
                              hint: "restore it from a backup; or, having checked the trail, start once with --reanchor-audit")
        }
        do {
            let head = try store.auditHead()
            let base = try store.auditCheckpoint(seq: head.lastCheckpoint)
            let first = try store.firstAuditSeq()
            let legacy = fresh || newInstance ? 0 : head.seq
            let a = try AuditAnchor(seq: base?.seq ?? 0, hash: base?.hash ?? AuditEvent.genesis,
                                    prunedThrough: max(0, (first ?? head.seq + 1) - 1), legacyThrough: legacy,
                                    time: now).signed(with: key)
            if reanchor {
                logger.warning("the audit trail was re-anchored by the operator", metadata: ["audit.seq": "\(head.seq)"])
            } else {
                try writeAnchorFile(a, to: file)
            }
            return a
        } catch let e as CofferError {
            throw e
        } catch {
            throw CofferError(.storage, "cannot anchor the audit trail: \(error)")
        }
    }

    /// Writes the anchor atomically (temporary file, fsync, rename).
    static func writeAnchorFile(_ a: AuditAnchor, to file: String) throws(CofferError) {
        let tmp = file + ".tmp"
        unlink(tmp)
        let fd = Glibc.open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o644)
        guard fd >= 0 else { throw CofferError(.storage, "cannot write \(tmp): \(String(cString: strerror(errno)))") }
        let bytes = Array(a.text.utf8)
        let n = (try? Syscall.retrying { bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } }) ?? -1
        let synced = fsync(fd) == 0
        close(fd)
        guard n == bytes.count, synced, rename(tmp, file) == 0 else {
            unlink(tmp)
            throw CofferError(.storage, "cannot write the audit head anchor \(file)")
        }
    }

    func writeAnchor(_ a: AuditAnchor) throws(CofferError) {
        try AuditLog.writeAnchorFile(a, to: anchorFile)
        state.withLock { $0.anchor = a }
    }

    public var anchor: AuditAnchor { state.withLock { $0.anchor } }

    /// Whether the trail was found changed (sticky until restored).
    var isTampered: Bool { state.withLock { $0.tampered != nil } }

    /// Checks what is about to be signed: the anchored checkpoint is still there and
    /// unchanged, the newest checkpoint is validly signed, and every event after it
    /// chains from it and carries this daemon's MAC (events before the anchor's
    /// `legacyThrough` predate MACs). Never signs a head it cannot prove it wrote.
    func verifyBasis(_ b: Store.CheckpointBasis) throws(CofferError) {
        let anchor = self.anchor
        func bad(_ seq: Int64, _ problem: String) -> CofferError {
            CofferError(.integrity, "the audit trail fails verification at seq \(seq): \(problem)",
                        hint: "it was changed outside cofferd; nothing more is signed until it is restored from a backup")
        }
        if anchor.seq > 0 {
            guard let a = b.anchored else { throw bad(anchor.seq, "the anchored checkpoint is missing (truncated)") }
            guard a.hash == anchor.hash else { throw bad(anchor.seq, "the anchored checkpoint was rewritten") }
        }
        if let base = b.base {
            guard base.seq >= anchor.seq else { throw bad(base.seq, "the trail ends before its anchored checkpoint (truncated)") }
            guard base.isValid(publicKey: publicKey) else { throw bad(base.seq, "a checkpoint has a bad signature") }
        } else if anchor.seq > 0 {
            throw bad(anchor.seq, "the checkpoints were removed")
        }
        // a head this process committed itself needs no re-reading (see CheckpointBasis)
        guard !b.headIsTrusted else { return }
        var running = b.base?.hash ?? AuditEvent.genesis
        var expected = (b.base?.seq ?? 0) + 1
        guard b.tail.last?.seq ?? b.base?.seq ?? 0 == b.head.seq else { throw bad(b.head.seq, "the events up to the head are not all there") }
        for e in b.tail {
            guard e.seq == expected else { throw bad(expected, "event \(expected) is missing") }
            guard e.prevHash == running, e.computedHash() == e.hash else { throw bad(e.seq, "the chain does not hold") }
            guard e.seq <= anchor.legacyThrough || mac.isValid(e) else { throw bad(e.seq, "the event was not written by this cofferd") }
            running = e.hash
            expected += 1
        }
    }

    // MARK: appending

    /// Makes one event durable (group commit) or throws 503 audit_unavailable.
    public func append(_ event: AuditEvent) async throws(CofferError) {
        guard settings.enabled else { return }
        if let t = state.withLock({ $0.tampered }) {
            throw CofferError(.auditUnavailable, "the audit trail cannot record this request, so it was not served: \(t)")
        }
        do {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                state.withLock { $0.pending.append(Waiter(event: event, continuation: c)) }
                signalWriter()
            }
        } catch {
            throw CofferError(.auditUnavailable, "the audit trail cannot record this request, so it was not served",
                              hint: "see cofferd's health and log; it recovers by itself when the database can be written again")
        }
    }

    /// `append` for a caller that is not a task: `completion` runs on the writer thread
    /// once the event is durable (nil) or could not be made so (503 audit_unavailable).
    public func append(_ event: AuditEvent, completion: @escaping @Sendable (CofferError?) -> Void) {
        guard settings.enabled else { return completion(nil) }
        if let t = state.withLock({ $0.tampered }) {
            return completion(CofferError(.auditUnavailable, "the audit trail cannot record this request, so it was not served: \(t)"))
        }
        state.withLock { $0.pending.append(Waiter(event: event, continuation: nil, completion: { error in
            completion(error == nil ? nil : CofferError(.auditUnavailable, "the audit trail cannot record this request, so it was not served",
                                                         hint: "see cofferd's health and log; it recovers by itself when the database can be written again"))
        })) }
        signalWriter()
    }

    /// Queues an event for the next batch without waiting for it: for refusals made
    /// below the request layer (an unparseable request), where nothing is answered
    /// that depends on the event.
    public func enqueue(_ event: AuditEvent) {
        guard settings.enabled else { return }
        state.withLock { $0.pending.append(Waiter(event: event, continuation: nil)) }
        signalWriter()
    }

    /// Events committed inside a state-changing transaction: mirrored and counted here.
    public func committedInTransaction(_ e: AuditEvent) {
        state.withLock { $0.degraded = nil; $0.sinceCheckpoint += 1 }
        mirror([e])
        if state.withLock({ $0.sinceCheckpoint }) >= settings.checkpointEvents { signalWriter() }
    }

    /// A state-changing transaction could not be written: the log is degraded.
    public func writeFailed(_ reason: String) {
        state.withLock { $0.degraded = reason }
    }

    /// Runs until cancelled (graceful shutdown): the writer thread commits batches,
    /// a timer signs the head; at the end a final checkpoint is signed.
    public func run() async {
        let writer = Thread { [self] in self.writerLoop() }
        writer.name = "coffer-audit"
        writer.start()
        await checkpointTimer()
        stopping.withLock { $0 = true }
        signalWriter(all: true)
        while !state.withLock({ $0.writerDone }) { try? await Task.sleep(for: .milliseconds(5)) }
        if let cp = try? checkpointNow() { logger.info("audit head signed at shutdown", metadata: ["audit.seq": "\(cp.seq)"]) }
    }

    func signalWriter(all: Bool = false) {
        wake.lock()
        if all { wake.broadcast() } else { wake.signal() }
        wake.unlock()
    }

    /// Signs the head if it moved, with a blocking call: from the writer thread, the
    /// timer, verify/export, and at shutdown (when the task is cancelled and async
    /// database calls would refuse). A failure marks the log degraded; a success
    /// clears it, which is how a degraded log notices the disk is writable again when
    /// no request comes.
    @discardableResult
    public func checkpointNow() throws(CofferError) -> AuditCheckpoint? {
        guard settings.enabled else { return nil }
        if let t = state.withLock({ $0.tampered }) { throw CofferError(.auditUnavailable, t) }
        checkpointGate.lock()
        defer { checkpointGate.unlock() }
        let key = signingKey
        let anchorSeq = anchor.seq
        do {
            let cp = try store.checkpointAuditNow(anchorSeq: anchorSeq) { basis in
                try self.verifyBasis(basis)
                return try AuditCheckpoint.sign(seq: basis.head.seq, hash: basis.head.hash, time: clock.nowMillis(), chain: store.chain, key: key)
            }
            // Only a real write proves the trail writable again: a timer with nothing to
            // sign must not clear "degraded" while requests still fail.
            if let cp {
                state.withLock { $0.sinceCheckpoint = 0; $0.degraded = nil }
                var a = anchor
                (a.seq, a.hash, a.time) = (cp.seq, cp.hash, cp.time)
                try writeAnchor(try a.signed(with: key))
            }
            return cp
        } catch let e as CofferError where e.code == .integrity {
            markTampered(e.message)
            throw CofferError(.auditUnavailable, e.message, hint: e.hint)
        } catch let e as AuditTrailChanged {
            markTampered(e.message)
            throw CofferError(.auditUnavailable, e.message, hint: "restore the database from a backup")
        } catch {
            let reason = AuditLog.describe(error)
            state.withLock { $0.degraded = reason }
            logger.error("cannot sign the audit head", metadata: ["error": "\(reason)"])
            throw CofferError(.auditUnavailable, "cannot write an audit checkpoint: \(reason)")
        }
    }

    /// The group-commit loop on its own thread: it blocks in SQLite, not a task of
    /// the cooperative pool, and needs no thread hop to reach the writer connection.
    func writerLoop() {
        while true {
            wake.lock()
            while state.withLock({ $0.pending.isEmpty && $0.sinceCheckpoint < settings.checkpointEvents }) && !stopping.withLock({ $0 }) {
                wake.wait()
            }
            wake.unlock()
            let (batch, left): ([Waiter], Int) = state.withLock { s in
                let n = min(s.pending.count, settings.maxBatch)
                let b = Array(s.pending.prefix(n))
                s.pending.removeFirst(n)
                return (b, s.pending.count)
            }
            if batch.isEmpty {
                if stopping.withLock({ $0 }) { break }
                if state.withLock({ $0.sinceCheckpoint }) >= settings.checkpointEvents { _ = try? checkpointNow() }
                continue
            }
            AuditMetrics.queueDepth.record(left)
            do {
                let started = DispatchTime.now().uptimeNanoseconds
                let committed = try store.appendAuditBlocking(batch.map(\.event))
                AuditMetrics.commitTime.recordNanoseconds(DispatchTime.now().uptimeNanoseconds - started)
                AuditMetrics.batchSize.record(committed.count)
                let due: Bool = state.withLock { s in
                    s.degraded = nil
                    s.sinceCheckpoint += committed.count
                    return s.sinceCheckpoint >= settings.checkpointEvents
                }
                for w in batch { w.resume() }
                mirror(committed)
                if due { _ = try? checkpointNow() }
            } catch {
                if let e = error as? AuditTrailChanged { markTampered(e.message) }
                let reason = AuditLog.describe(error)
                let wasHealthy = state.withLock { s in
                    defer { s.degraded = reason }
                    return s.degraded == nil
                }
                AuditMetrics.failedCommits.increment()
                if wasHealthy { logger.critical("audit trail unavailable; refusing requests until it recovers", metadata: ["error": "\(reason)"]) }
                for w in batch { w.resume(throwing: error) }
            }
        }
        // stopped: fail whatever still waits
        for w in state.withLock({ s in defer { s.pending = [] }; return s.pending }) {
            w.resume(throwing: CofferError(.auditUnavailable, "shutting down"))
        }
        state.withLock { $0.writerDone = true }
    }

    func checkpointTimer() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(settings.checkpointSeconds))
            if Task.isCancelled { break }
            _ = try? checkpointNow()
        }
    }

    /// At start: the trail must match its head anchor, and events committed since the
    /// last checkpoint (after a crash) are signed only if they verify (chain and MAC).
    /// A trail that fails refuses the start: the daemon never signs what it cannot
    /// prove it wrote.
    func recoverTail() async throws(CofferError) {
        guard settings.enabled else { return }
        do {
            let basis = try store.checkpointBasis(anchorSeq: anchor.seq)
            if let first = try store.firstAuditSeq(), first - 1 > anchor.prunedThrough {
                throw CofferError(.integrity, "the audit trail fails verification: events \(anchor.prunedThrough + 1)...\(first - 1) were deleted without prune",
                                  hint: "restore the database from a backup")
            }
            try verifyBasis(basis)
            try store.trustAuditHead()
            guard !basis.tail.isEmpty else { return }
            try checkpointNow()
            logger.notice("signed audit events written since the last checkpoint", metadata: ["audit.events": "\(basis.tail.count)"])
        } catch let e as CofferError {
            throw e
        } catch {
            throw CofferError(.storage, "cannot read the audit trail: \(error)")
        }
    }

    /// Sticky until an operator restores the trail: nothing more is signed or
    /// appended, and a marker beside the database makes a restart refuse too (a
    /// restart must not accept a trail found changed).
    func markTampered(_ why: String) {
        let first = state.withLock { s -> Bool in
            defer { s.tampered = why }
            return s.tampered == nil
        }
        guard first else { return }
        logger.critical("the audit trail was changed behind cofferd; refusing to sign or append", metadata: ["error": "\(why)"])
        try? (why + "\n").write(toFile: anchorFile + ".tampered", atomically: true, encoding: .utf8)
    }

    /// Before a prune deletes anything: the anchor records how far events were pruned.
    func recordPrune(through seq: Int64) throws(CofferError) {
        var a = anchor
        a.prunedThrough = max(a.prunedThrough, seq)
        a.time = clock.nowMillis()
        try writeAnchor(try Checked.crypto { () throws(CryptoError) in try a.signed(with: signingKey) })
    }

    /// nil when healthy; otherwise why the audit trail cannot be written.
    public var degradedReason: String? { state.withLock { $0.tampered ?? $0.degraded } }
    public var mirrorError: String? { state.withLock { $0.mirrorError } }

    static func describe(_ error: any Error) -> String {
        if let e = error as? CofferError { return e.message }
        if let e = error as? AuditTrailChanged { return e.message }
        return Store.describe(error)
    }

    // MARK: mirror

    func openMirror() {
        guard settings.mirror.hasPrefix("file:") else { return }
        let path = String(settings.mirror.dropFirst(5))
        let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        state.withLock {
            $0.mirrorFD = fd
            if fd < 0 { $0.mirrorError = "cannot open \(path): \(String(cString: strerror(errno)))" }
        }
    }

    /// One JSON line per committed event. A failing mirror never blocks a request; it
    /// is reported in health.
    func mirror(_ events: [AuditEvent]) {
        guard !settings.mirror.isEmpty, !events.isEmpty else { return }
        if settings.mirror == "syslog" {
            for e in events { coffer_syslog(LOG_INFO, AuditJSON.line(e)) }
            return
        }
        let fd = state.withLock { $0.mirrorFD }
        guard fd >= 0 else { return }
        let bytes = Array(events.map { AuditJSON.line($0) + "\n" }.joined().utf8)
        let n = (try? Syscall.retrying { bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } }) ?? -1
        state.withLock { $0.mirrorError = n == bytes.count ? nil : "write failed: \(String(cString: strerror(errno)))" }
    }
}

/// The mirror's and syslog's line: the event's one JSON form (as on the wire).
public enum AuditJSON {
    public static func line(_ e: AuditEvent) -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let d = try? enc.encode(e) else { return "{}" }
        return String(decoding: d, as: UTF8.self)
    }
}

/// The group commit, measured (swift-metrics: the daemon bootstraps Prometheus;
/// elsewhere these go nowhere).
enum AuditMetrics {
    static let batchSize = Recorder(label: "coffer_audit_batch_events")
    static let commitTime = Timer(label: "coffer_audit_commit_duration_seconds")
    static let queueDepth = Gauge(label: "coffer_audit_queue_depth")
    static let failedCommits = Counter(label: "coffer_audit_failed_commits_total")
}
