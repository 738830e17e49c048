public import CofferAudit
public import CofferCore
import CofferCrypto
public import CofferStore
import Foundation
import Synchronization

/// The daemon's engine, or the promise of one. A sealed daemon has no root key and so
/// no engine (no keyring, no token-hash key, no audit keys): it answers health and
/// status, refuses everything else with 503 `sealed`, and lets an admin (by peer
/// credentials and the live policy: tokens cannot be checked yet) unseal it — with the
/// key file, a passphrase, or one Shamir share per call until the threshold.
///
/// An open daemon can be sealed again (`coffer operator seal`): new requests are
/// refused at once, the requests in flight finish (each holds a lease on the engine),
/// the background jobs stop (the audit writer last, signing a final checkpoint), and
/// every key the engine held is zeroed in place.
public final class EngineHost: Sendable {
    public typealias Opener = @Sendable (any Unlocker) async throws(CofferError) -> SecretEngine

    enum Phase {
        case sealed
        case unsealing
        case open(SecretEngine)
        case sealing(SecretEngine)
    }

    struct State {
        var phase: Phase
        /// Requests holding the open engine.
        var requests = 0
        /// Background jobs running on the open engine.
        var background = 0
        /// Bumped at each open: a job learns that the engine it ran on was sealed.
        var generation = 0
        var round: ShareRound?
        var openWaiters: [AsyncStream<SecretEngine>.Continuation] = []
        var sealWaiters: [AsyncStream<Void>.Continuation] = []
    }

    private let state: Mutex<State>
    private let opener: Opener?
    /// The unlocker the configuration names (the key file), used when the unseal
    /// request brings no key of its own.
    public let configuredUnlocker: (any Unlocker)?
    public let policies: PolicyStore
    /// The database (read-only while sealed: how its root key is held).
    let database: DatabaseLocation?
    let roundTimeout: Duration
    let principals = PrincipalResolver()
    /// What was asked while sealed (no trail to write to yet): appended to the
    /// trail as soon as it opens, oldest first; bounded, with a count of the dropped.
    private let sealedEvents = Mutex<(events: [AuditEvent], dropped: Int)>(([], 0))
    static let maxSealedEvents = 1000
    let limiter = UnsealLimiter()
    /// How long a seal waits for the requests in flight before it goes on.
    static let drainTimeout = Duration.seconds(10)

    /// An engine that is open from the start.
    public convenience init(engine: SecretEngine, opener: Opener? = nil, unlocker: (any Unlocker)? = nil, database: DatabaseLocation? = nil,
                            roundTimeout: Duration = .seconds(600)) {
        self.init(phase: .open(engine), opener: opener, unlocker: unlocker, policies: engine.policyStore, database: database,
                  roundTimeout: roundTimeout)
    }

    /// A sealed daemon: `opener` builds the engine from an unlocker's root key.
    public convenience init(sealed opener: @escaping Opener, unlocker: (any Unlocker)?, policies: PolicyStore, database: DatabaseLocation? = nil,
                            roundTimeout: Duration = .seconds(600)) {
        self.init(phase: .sealed, opener: opener, unlocker: unlocker, policies: policies, database: database, roundTimeout: roundTimeout)
    }

    private init(phase: Phase, opener: Opener?, unlocker: (any Unlocker)?, policies: PolicyStore, database: DatabaseLocation?, roundTimeout: Duration) {
        var s = State(phase: phase)
        if case .open = phase { s.generation = 1 }
        self.state = Mutex(s)
        self.opener = opener
        self.configuredUnlocker = unlocker
        self.policies = policies
        self.database = database
        self.roundTimeout = roundTimeout
    }

    /// The engine, nil while sealed (or sealing).
    public var engine: SecretEngine? {
        state.withLock { if case .open(let e) = $0.phase { return e }; return nil }
    }

    public var isSealed: Bool { engine == nil }

    // MARK: leases

    /// Runs a request on the open engine, holding a lease a seal waits for; nil
    /// (without running) when there is no open engine.
    public func withEngine<R>(_ body: (SecretEngine) async throws -> R) async rethrows -> R? {
        let engine: SecretEngine? = state.withLock { s in
            guard case .open(let e) = s.phase else { return nil }
            s.requests += 1
            return e
        }
        guard let engine else { return nil }
        defer { state.withLock { $0.requests -= 1 } }
        return try await body(engine)
    }

    /// `withEngine` for a caller that is not a task: the open engine with a lease
    /// taken (nil, none taken, when sealed); `endLease()` once the answer is out.
    public func leaseEngine() -> SecretEngine? {
        state.withLock { s in
            guard case .open(let e) = s.phase else { return nil }
            s.requests += 1
            return e
        }
    }

    public func endLease() { state.withLock { $0.requests -= 1 } }

    /// Waits until the engine is open (nil if the task is cancelled first: shutdown).
    public func opened() async -> SecretEngine? {
        let (stream, continuation) = AsyncStream.makeStream(of: SecretEngine.self, bufferingPolicy: .bufferingNewest(1))
        let ready: SecretEngine? = state.withLock { s in
            if case .open(let e) = s.phase { return e }
            s.openWaiters.append(continuation)
            return nil
        }
        if let ready { return ready }
        for await e in stream { return e }
        return nil
    }

    /// A background job's life: runs `body` on the engine each time it opens, and
    /// cancels it when the engine is sealed (the seal waits for it to return).
    /// Returns when the calling task is cancelled (shutdown).
    public func whileOpen(_ body: @escaping @Sendable (SecretEngine) async -> Void) async {
        while !Task.isCancelled {
            guard await opened() != nil else { return }
            let (stream, continuation) = AsyncStream.makeStream(of: Void.self)
            let engine: SecretEngine? = state.withLock { s in
                guard case .open(let e) = s.phase else { return nil }
                s.background += 1
                s.sealWaiters.append(continuation)
                return e
            }
            guard let engine else { continue }
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await body(engine) }
                group.addTask { for await _ in stream {} }  // ends at a seal (or on cancellation)
                _ = await group.next()
                group.cancelAll()
            }
            state.withLock { $0.background -= 1 }
        }
    }

    // MARK: sealed requests

    /// Holds an event of a request answered while sealed, for the trail to come.
    public func recordWhileSealed(_ event: AuditEvent) {
        sealedEvents.withLock { s in
            if s.events.count < Self.maxSealedEvents { s.events.append(event) } else { s.dropped += 1 }
        }
    }

    /// What the live policy decides for a peer's admin capability (who may unseal).
    public func unsealDecision(pid: Int32, uid: UInt32, gid: UInt32, action: Action = .admin) -> (Principal, Decision) {
        let p = principals.principal(pid: pid, uid: uid, gid: gid)
        return (p, policies.authorize(p, action, nil))
    }

    /// How the database's root key is held (read-only; nil: by its key file).
    public func holder() throws(CofferError) -> HolderRecord? {
        guard let database else { return nil }
        do { return try Store.readHolder(location: database) } catch let e as CofferError { throw e } catch {
            throw CofferError(.storage, "cannot read the database: \(error)")
        }
    }

    // MARK: unseal

    /// Where an unseal stands.
    public struct Progress: Sendable {
        public var sealed: Bool
        public var unsealedNow: Bool
        public var engine: SecretEngine?
        /// Shares given so far in this round, and how many open the database.
        public var shares: Int?
        public var threshold: Int?
        public var mode: HolderRecord.Mode
        public init(sealed: Bool, unsealedNow: Bool, engine: SecretEngine?, shares: Int? = nil, threshold: Int? = nil, mode: HolderRecord.Mode) {
            self.sealed = sealed
            self.unsealedNow = unsealedNow
            self.engine = engine
            self.shares = shares
            self.threshold = threshold
            self.mode = mode
        }
    }

    /// One Shamir share toward an unseal. Checked (format, checksum, split, digest,
    /// duplicate) before it joins the round; the share that completes the round opens
    /// the engine. A round untouched for `roundTimeout` is discarded.
    public func unseal(share text: [UInt8], uid: UInt32) async throws(CofferError) -> Progress {
        try limiter.admit()
        guard let h = try holder(), h.mode == .shares, let threshold = h.threshold, let set = h.shareSet else {
            limiter.failed()
            throw CofferError(.invalidParameter, "this database is not held by Shamir shares", hint: "coffer operator unseal (it asks for what it needs)")
        }
        let parsed: (set: String, share: Shamir.Share)
        do { parsed = try ShareText.parse(text) } catch {
            limiter.failed()
            throw error
        }
        let now = ContinuousClock.now
        let ready: ShareRound? = try state.withLock { (s) throws(CofferError) -> ShareRound? in
            switch s.phase {
            case .open: return nil
            case .sealing, .unsealing:
                throw CofferError(.sealed, "a seal or an unseal is in progress", hint: "give the share again in a moment")
            case .sealed: break
            }
            if let r = s.round, r.startedAt + roundTimeout < now || r.set != set { s.round = nil }
            var round = s.round ?? ShareRound(set: set, startedAt: now)
            do throws(CofferError) { try round.add(parsed, holder: h, uid: uid) } catch {
                limiter.failed()
                throw error
            }
            round.startedAt = now
            if round.count >= threshold {
                s.round = nil
                return round
            }
            s.round = round
            return nil
        }
        guard let ready else {
            if let e = engine { return Progress(sealed: false, unsealedNow: false, engine: e, mode: .shares) }
            let given = state.withLock { $0.round?.count ?? 0 }
            return Progress(sealed: true, unsealedNow: false, engine: nil, shares: given, threshold: threshold, mode: .shares)
        }
        let key = try ready.combine()
        let (e, now2) = try await open(with: SharesUnlocker(key: key))
        return Progress(sealed: false, unsealedNow: now2, engine: e, shares: threshold, threshold: threshold, mode: .shares)
    }

    /// Discards a partial round of shares; returns how many it held.
    public func resetRound() -> Int {
        state.withLock { s in
            defer { s.round = nil }
            return s.round?.count ?? 0
        }
    }

    /// The partial round, if any (expired rounds count as none).
    public func roundProgress() -> Int {
        state.withLock { s in
            if let r = s.round, r.startedAt + roundTimeout < .now { s.round = nil }
            return s.round?.count ?? 0
        }
    }

    /// Opens the engine with an unlocker (a key file, a key's text, a passphrase).
    /// Rate limited: failed attempts spend a budget that refills slowly.
    public func unseal(with unlocker: any Unlocker) async throws(CofferError) -> (engine: SecretEngine, wasSealed: Bool) {
        if let e = engine { return (e, false) }
        try limiter.admit()
        return try await open(with: unlocker)
    }

    /// Opens the engine (one attempt at a time; a wrong key leaves the daemon sealed
    /// and the database untouched).
    private func open(with unlocker: any Unlocker) async throws(CofferError) -> (engine: SecretEngine, wasSealed: Bool) {
        // an unseal right after a seal waits for the seal to finish (it drains requests
        // and stops the jobs first: seconds at most)
        let deadline = ContinuousClock.now + Self.drainTimeout + .seconds(15)
        while state.withLock({ if case .sealing = $0.phase { return true }; return false }), ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        let go: Bool = state.withLock { s in
            guard case .sealed = s.phase else { return false }
            s.phase = .unsealing
            return true
        }
        if !go {
            if let e = engine { return (e, false) }
            throw CofferError(.sealed, "another unseal or a seal is in progress", hint: "try again in a moment")
        }
        guard let opener else { throw CofferError(.internal, "no way to open the engine") }
        do {
            let e = try await opener(unlocker)
            let (held, dropped) = sealedEvents.withLock { s in
                defer { s = ([], 0) }
                return (s.events, s.dropped)
            }
            for ev in held { e.recordRefusal(ev) }
            if dropped > 0 {
                var summary = AuditEvent.draft(time: e.nowMillis(), requestID: "sealed", peerPID: 0, peerUID: UInt32.max, method: "-",
                                               action: "sealed_requests_dropped", path: nil, status: 503, errorCode: CofferError.Code.sealed.rawValue)
                summary.details["dropped"] = .number(Int64(dropped))
                e.recordRefusal(summary)
            }
            let waiters = state.withLock { s in
                s.phase = .open(e)
                s.generation += 1
                s.round = nil
                defer { s.openWaiters = [] }
                return s.openWaiters
            }
            for w in waiters {
                w.yield(e)
                w.finish()
            }
            return (e, true)
        } catch {
            if error.code == .keyFile || error.code == .invalidParameter { limiter.failed() }
            state.withLock { $0.phase = .sealed }
            throw error
        }
    }

    /// Rekey's proof of the current holder spends the same budget as unseal.
    public func admitUnsealAttempt() throws(CofferError) { try limiter.admit() }
    public func unsealAttemptFailed() { limiter.failed() }

    // MARK: seal

    /// Seals an open engine: refuses new requests now; returns at once. The rest
    /// (drain, stop the jobs, zero the keys) happens in `finishSeal`, which the
    /// caller runs once its own request is answered.
    public func beginSeal() throws(CofferError) -> SecretEngine {
        try state.withLock { (s) throws(CofferError) -> SecretEngine in
            guard case .open(let e) = s.phase else { throw CofferError(.sealed, "cofferd is not open") }
            guard opener != nil else {
                throw CofferError(.invalidParameter, "this daemon cannot be unsealed again once sealed", hint: "it was started without a way to open")
            }
            s.phase = .sealing(e)
            return e
        }
    }

    /// Waits for the requests in flight (at most `drainTimeout`), stops the background
    /// jobs, zeroes every key the engine held, and leaves the daemon sealed.
    public func finishSeal(_ engine: SecretEngine) async {
        let deadline = ContinuousClock.now + Self.drainTimeout
        while state.withLock({ $0.requests }) > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        let waiters = state.withLock { s in
            defer { s.sealWaiters = [] }
            return s.sealWaiters
        }
        for w in waiters { w.finish() }
        while state.withLock({ $0.background }) > 0, ContinuousClock.now < deadline + .seconds(10) {
            try? await Task.sleep(for: .milliseconds(5))
        }
        engine.wipeKeys()
        state.withLock { $0.phase = .sealed }
    }
}

/// Unseal attempts that fail spend a budget (10, one back every 6 s): a passphrase
/// or share cannot be guessed faster than ten a minute, whoever asks.
final class UnsealLimiter: Sendable {
    static let capacity = 10.0
    static let refillSeconds = 6.0
    private let state = Mutex<(tokens: Double, at: ContinuousClock.Instant)>((10, .now))

    private func refill(_ s: inout (tokens: Double, at: ContinuousClock.Instant)) {
        let now = ContinuousClock.now
        let elapsed = now - s.at
        let secs = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        s.tokens = min(Self.capacity, s.tokens + secs / Self.refillSeconds)
        s.at = now
    }

    func admit() throws(CofferError) {
        let wait: Int? = state.withLock { s in
            refill(&s)
            return s.tokens >= 1 ? nil : Int(((1 - s.tokens) * Self.refillSeconds).rounded(.up))
        }
        if let wait {
            throw CofferError(.rateLimited, "too many failed unseal attempts", hint: "try again in \(wait) s")
        }
    }

    func failed() {
        state.withLock { s in
            refill(&s)
            s.tokens = max(0, s.tokens - 1)
        }
    }
}
