import CofferCore
import CofferStore
import Dispatch
import Logging
import Synchronization

/// Keeps what this daemon caches (token records, sealed rows, the keyring's data
/// keys) in step with the other instances on a shared PostgreSQL database.
///
/// Every transaction that changes a secret, token or key rewrites the record digest
/// (its sum over every record's MAC, MACed itself, written by Coffer in that
/// transaction: no trigger to switch off), and triggers announce it (NOTIFY) and bump
/// a key generation when keys changed. This daemon LISTENs, and drops its caches when
/// told; and before a request uses a cache it compares the digest's sum (and the key
/// generation) it last saw with the database's: on every such request
/// (max_staleness_ms = 0, the default: a change acknowledged on one host is seen by
/// the next request on any), or at most every max_staleness_ms (the bound should a
/// notification be lost). A failed check fails the request closed (503). SQLite:
/// every change is this daemon's own, and none of this runs.
final class SharedCoherence: Sendable {
    let store: Store
    let maxStalenessNanos: UInt64
    let errors: StoreErrorMapper
    let logger: Logger
    struct State {
        var generation: (records: [UInt8], keys: Int64)?
        var checkedAt: UInt64 = 0
        /// When the schema and the instance lock were last looked at.
        var auditedAt: UInt64 = 0
        /// Set for good once the schema was found changed, or the instance taken over.
        var refused: String?
    }
    /// How often, while requests come, the schema and the instance lock are checked.
    static let auditNanos: UInt64 = 5_000_000_000
    private let state = Mutex(State())
    private let observers = Mutex<[@Sendable (_ keys: Bool) -> Void]>([])
    /// Where notifications are handled, one at a time.
    private let queue = DispatchQueue(label: "coffer.shared-coherence")

    init(store: Store, maxStalenessMillis: Int, errors: StoreErrorMapper, logger: Logger) {
        self.store = store
        self.errors = errors
        self.maxStalenessNanos = UInt64(max(0, maxStalenessMillis)) * 1_000_000
        self.logger = logger
    }

    var enabled: Bool { store.isShared }

    /// Runs after another instance changed what daemons cache (`keys`: keys too).
    func onChange(_ f: @escaping @Sendable (_ keys: Bool) -> Void) { observers.withLock { $0.append(f) } }

    private func changed(keys: Bool) {
        for f in observers.withLock({ $0 }) { f(keys) }
    }

    /// LISTENs (again, after the connection was lost). A failure is logged: the
    /// per-request check still bounds staleness.
    func listen() {
        guard enabled, !store.isListeningForChanges else { return }
        do {
            try store.listenForChanges { [weak self] keys in
                guard let self else { return }
                // the notification may overtake the digest row as this daemon
                // read it: the next check reads it again (what changed is dropped now)
                self.state.withLock { $0.checkedAt = 0 }
                // off PostgreSQL's event loop: the observers read the database
                self.queue.async { self.changed(keys: keys) }
            }
        } catch {
            logger.warning("cannot LISTEN for other instances' changes; checking the database per request",
                           metadata: ["error": "\(error)"])
        }
    }

    /// Every 5 s: a trigger disabled or planted, a function replaced while this daemon
    /// runs (what start refuses), or its instance lock taken by another daemon, and
    /// every request is refused from then on (fail closed; a restart checks again).
    private func audit(_ now: UInt64) throws(CofferError) {
        let due = state.withLock { s -> Bool in
            guard s.refused == nil, now &- s.auditedAt >= Self.auditNanos else { return false }
            s.auditedAt = now
            return true
        }
        if due {
            var why: String?
            if let problem = (try? store.schemaProblems())?.first {
                why = "the database schema was changed while cofferd ran (\(problem))"
            }
            do { try store.ensureInstanceLock() } catch let e as CofferError { why = why ?? e.message } catch {}
            if let why {
                logger.critical("refusing every request: \(why)")
                state.withLock { $0.refused = why }
            }
        }
        if let why = state.withLock({ $0.refused }) {
            throw CofferError(.integrity, why, hint: "see cofferd's log; restart it once the database is restored")
        }
    }

    /// Before any allowed action (the gate): refused once the shared database was found
    /// changed, and the periodic look at it when due.
    func guardShared() throws(CofferError) {
        guard enabled else { return }
        try audit(DispatchTime.now().uptimeNanoseconds)
    }

    /// Before a request uses a cache.
    func check() throws(CofferError) {
        guard enabled else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        try audit(now)
        if maxStalenessNanos > 0, store.isListeningForChanges,
           state.withLock({ $0.generation != nil && now &- $0.checkedAt < maxStalenessNanos }) {
            return
        }
        let g = try errors.call { try store.sharedGeneration() }
        guard let g else { return }
        let (stale, keys) = state.withLock { s -> (Bool, Bool) in
            defer { s.generation = g; s.checkedAt = now }
            guard let seen = s.generation else { return (true, true) }
            return (seen.records != g.records || seen.keys != g.keys, seen.keys != g.keys)
        }
        if stale { changed(keys: keys) }
        if maxStalenessNanos > 0 { listen() }
    }
}
