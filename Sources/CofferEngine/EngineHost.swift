public import CofferAudit
public import CofferCore
import Foundation
import Synchronization

/// The daemon's engine, or the promise of one: a daemon told to start sealed has no
/// root key and so no engine (no keyring, no token-hash key, no audit keys). It
/// answers health and status, refuses everything else with 503 `sealed`, and lets an
/// admin (by peer credentials and the live policy: tokens cannot be checked yet)
/// unseal it with an `Unlocker`. Once open it stays open.
public final class EngineHost: Sendable {
    public typealias Opener = @Sendable (any Unlocker) async throws(CofferError) -> SecretEngine

    enum State {
        case sealed
        case unsealing
        case open(SecretEngine)
    }

    private let state: Mutex<State>
    private let opener: Opener?
    /// The unlocker the configuration names (the key file), used when the unseal
    /// request brings no key of its own.
    public let configuredUnlocker: (any Unlocker)?
    public let policies: PolicyStore
    let principals = PrincipalResolver()
    /// What was asked while sealed (no trail to write to yet): appended to the
    /// trail as soon as it opens, oldest first; bounded, with a count of the dropped.
    private let sealedEvents = Mutex<(events: [AuditEvent], dropped: Int)>(([], 0))
    static let maxSealedEvents = 1000
    private let openedStream: AsyncStream<SecretEngine>
    private let openedContinuation: AsyncStream<SecretEngine>.Continuation

    /// An engine that is open from the start.
    public convenience init(engine: SecretEngine) {
        self.init(state: .open(engine), opener: nil, unlocker: nil, policies: engine.policyStore)
    }

    /// A sealed daemon: `opener` builds the engine from an unlocker's root key.
    public convenience init(sealed opener: @escaping Opener, unlocker: (any Unlocker)?, policies: PolicyStore) {
        self.init(state: .sealed, opener: opener, unlocker: unlocker, policies: policies)
    }

    private init(state: State, opener: Opener?, unlocker: (any Unlocker)?, policies: PolicyStore) {
        self.state = Mutex(state)
        self.opener = opener
        self.configuredUnlocker = unlocker
        self.policies = policies
        (openedStream, openedContinuation) = AsyncStream.makeStream(of: SecretEngine.self, bufferingPolicy: .bufferingNewest(1))
        if case .open(let e) = state {
            openedContinuation.yield(e)
            openedContinuation.finish()
        }
    }

    /// The engine, nil while sealed.
    public var engine: SecretEngine? {
        state.withLock { if case .open(let e) = $0 { return e }; return nil }
    }

    public var isSealed: Bool { engine == nil }

    /// Waits until the engine is open (nil if the task is cancelled first: shutdown).
    public func opened() async -> SecretEngine? {
        if let e = engine { return e }
        for await e in openedStream { return e }
        return engine
    }

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

    /// Opens the engine with the unlocker's root key (one attempt at a time; a wrong
    /// key leaves the daemon sealed and the database untouched).
    public func unseal(with unlocker: any Unlocker) async throws(CofferError) -> (engine: SecretEngine, wasSealed: Bool) {
        let go: Bool = state.withLock { s in
            switch s {
            case .open: return false
            case .unsealing: return false
            case .sealed:
                s = .unsealing
                return true
            }
        }
        if !go {
            if let e = engine { return (e, false) }
            throw CofferError(.sealed, "another unseal is in progress", hint: "try again in a moment")
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
            state.withLock { $0 = .open(e) }
            openedContinuation.yield(e)
            openedContinuation.finish()
            return (e, true)
        } catch {
            state.withLock { $0 = .sealed }
            throw error
        }
    }
}
