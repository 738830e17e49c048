import CCofferLinux
public import CofferAudit
public import CofferCore
import CofferCrypto
public import CofferStore
import Foundation
import GRDB
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
        var continuation: CheckedContinuation<Void, any Error>
    }

    struct State {
        var pending: [Waiter] = []
        var degraded: String?
        var mirrorError: String?
        var sinceCheckpoint = 0
        var mirrorFD: Int32 = -1
        var writerDone = false
    }

    let store: Store
    let signingKey: SecretBytes
    public let publicKey: [UInt8]
    public let settings: Settings
    let logger: Logger
    private let state = Mutex(State())
    /// Wakes the writer thread (its predicate is `pending` in `state`).
    private let wake = NSCondition()
    private let stopping = Mutex(false)

    init(store: Store, signingKey: SecretBytes, publicKey: [UInt8], settings: Settings, logger: Logger) {
        self.store = store
        self.signingKey = signingKey
        self.publicKey = publicKey
        self.settings = settings
        self.logger = logger
    }

    /// Loads the signing key (sealed under the root key) or creates it on first start,
    /// and writes the public key file beside the database.
    static func open(store: Store, keyring: Keyring, publicKeyFile: String, settings: Settings, logger: Logger) async throws(CofferError) -> AuditLog {
        let ad = Array("coffer/v1/audit-signing-key".utf8) + Array(keyring.keyID.utf8)
        var secret: SecretBytes
        var pub: [UInt8]
        do {
            if let k = try store.auditSigningKey() {
                secret = try AEAD.open([UInt8](k.sealed), key: keyring.root, associatedData: ad)
                pub = [UInt8](k.publicKey)
                guard try Signing.publicKey(of: secret) == pub else { throw CofferError(.integrity, "the audit signing key does not match its public key") }
            } else {
                (pub, secret) = try Signing.keyPair()
                let sealed = try AEAD.seal(secret, key: keyring.root, associatedData: ad)
                try await store.storeAuditSigningKey(keyID: Hex.encode(pub.prefix(8)), publicKey: Data(pub), sealed: Data(sealed), now: SecretEngine.nowMillis())
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
        let log = AuditLog(store: store, signingKey: secret, publicKey: pub, settings: settings, logger: logger)
        log.openMirror()
        return log
    }

    // MARK: appending

    /// Makes one event durable (group commit) or throws 503 audit_unavailable.
    public func append(_ event: AuditEvent) async throws(CofferError) {
        guard settings.enabled else { return }
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
        let key = signingKey
        do {
            let cp = try store.checkpointAuditNow(now: SecretEngine.nowMillis()) { seq, hash, time in
                try AuditCheckpoint.sign(seq: seq, hash: hash, time: time, key: key)
            }
            state.withLock { $0.sinceCheckpoint = 0; $0.degraded = nil }
            return cp
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
            let batch: [Waiter] = state.withLock { s in
                let n = min(s.pending.count, settings.maxBatch)
                let b = Array(s.pending.prefix(n))
                s.pending.removeFirst(n)
                return b
            }
            if batch.isEmpty {
                if stopping.withLock({ $0 }) { break }
                if state.withLock({ $0.sinceCheckpoint }) >= settings.checkpointEvents { _ = try? checkpointNow() }
                continue
            }
            do {
                let committed = try store.appendAuditBlocking(batch.map(\.event))
                let due: Bool = state.withLock { s in
                    s.degraded = nil
                    s.sinceCheckpoint += committed.count
                    return s.sinceCheckpoint >= settings.checkpointEvents
                }
                for w in batch { w.continuation.resume() }
                mirror(committed)
                if due { _ = try? checkpointNow() }
            } catch {
                let reason = AuditLog.describe(error)
                let wasHealthy = state.withLock { s in
                    defer { s.degraded = reason }
                    return s.degraded == nil
                }
                if wasHealthy { logger.critical("audit trail unavailable; refusing requests until it recovers", metadata: ["error": "\(reason)"]) }
                for w in batch { w.continuation.resume(throwing: error) }
            }
        }
        // stopped: fail whatever still waits
        for w in state.withLock({ s in defer { s.pending = [] }; return s.pending }) {
            w.continuation.resume(throwing: CofferError(.auditUnavailable, "shutting down"))
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

    /// After a crash, events committed since the last checkpoint are unsigned. Sign
    /// them at start only if they still chain correctly from that checkpoint; a broken
    /// tail is left unsigned for `audit verify` to report.
    func recoverTail() async throws(CofferError) {
        guard settings.enabled else { return }
        do {
            let head = try store.auditHead()
            guard head.seq > head.lastCheckpoint else { return }
            var f = AuditFilter()
            f.afterSeq = head.lastCheckpoint
            f.limit = Int.max
            let tail = try store.auditEvents(f)
            let anchor = try store.auditCheckpoint(seq: head.lastCheckpoint)?.hash ?? AuditEvent.genesis
            var running = anchor
            var expected = head.lastCheckpoint + 1
            for e in tail {
                guard e.seq == expected, e.prevHash == running, e.computedHash() == e.hash else {
                    logger.critical("the audit chain is broken after the last checkpoint; not signing it", metadata: ["audit.seq": "\(e.seq)"])
                    return
                }
                running = e.hash
                expected += 1
            }
            try checkpointNow()
            logger.notice("signed audit events written since the last checkpoint", metadata: ["audit.events": "\(tail.count)"])
        } catch let e as CofferError {
            throw e
        } catch {
            throw CofferError(.storage, "cannot read the audit trail: \(error)")
        }
    }

    /// nil when healthy; otherwise why the audit trail cannot be written.
    public var degradedReason: String? { state.withLock { $0.degraded } }
    public var mirrorError: String? { state.withLock { $0.mirrorError } }

    static func describe(_ error: any Error) -> String {
        if let e = error as? DatabaseError {
            switch e.resultCode {
            case .SQLITE_FULL: return "the disk is full"
            case .SQLITE_READONLY: return "the database is read-only"
            case .SQLITE_IOERR: return "I/O error"
            default: return "database error \(e.resultCode.rawValue)"
            }
        }
        if let e = error as? CofferError { return e.message }
        return "\(type(of: error))"
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
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        state.withLock { $0.mirrorError = n == bytes.count ? nil : "write failed: \(String(cString: strerror(errno)))" }
    }
}

/// A compact JSON rendering of an event for mirrors and exports.
public enum AuditJSON {
    public static func line(_ e: AuditEvent) -> String {
        var o: [String: Any] = [
            "seq": e.seq, "time_ms": e.time, "request_id": e.requestID, "peer_pid": Int(e.peerPID), "peer_uid": Int(e.peerUID),
            "method": e.method, "action": e.action, "decision": e.decision, "outcome": e.outcome, "status": e.status,
            "prev_hash": Hex.encode(e.prevHash), "hash": Hex.encode(e.hash),
        ]
        if let v = e.peerUser { o["peer_user"] = v }
        if let v = e.tokenAccessor { o["token_accessor"] = v }
        if let v = e.path { o["path"] = v }
        if let v = e.rule { o["rule"] = v }
        if let v = e.errorCode { o["error_code"] = v }
        guard let d = try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys, .withoutEscapingSlashes]) else { return "{}" }
        return String(decoding: d, as: UTF8.self)
    }
}
