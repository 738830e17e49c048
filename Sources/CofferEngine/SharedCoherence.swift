import CofferCore
import CofferStore
import Dispatch
import Logging
import Synchronization

/// Keeps what this daemon caches (token records, sealed rows, the keyring's data
/// keys) in step with the other instances on a shared PostgreSQL database.
///
/// Every transaction that changes a secret, token or key bumps one generation row,
/// in the database, in that transaction (triggers), and announces it (NOTIFY). This
/// daemon LISTENs, and drops its caches when told; and before a request uses a cache
/// it compares the generation it last saw with the database's: on every such request
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
        var generation: Int64?
        var checkedAt: UInt64 = 0
    }
    private let state = Mutex(State())
    private let observers = Mutex<[@Sendable () -> Void]>([])
    /// Where notifications are handled, one at a time.
    private let queue = DispatchQueue(label: "coffer.shared-coherence")

    init(store: Store, maxStalenessMillis: Int, errors: StoreErrorMapper, logger: Logger) {
        self.store = store
        self.errors = errors
        self.maxStalenessNanos = UInt64(max(0, maxStalenessMillis)) * 1_000_000
        self.logger = logger
    }

    var enabled: Bool { store.isShared }

    /// Runs after another instance changed what daemons cache.
    func onChange(_ f: @escaping @Sendable () -> Void) { observers.withLock { $0.append(f) } }

    private func changed() {
        for f in observers.withLock({ $0 }) { f() }
    }

    /// LISTENs (again, after the connection was lost). A failure is logged: the
    /// per-request check still bounds staleness.
    func listen() {
        guard enabled, !store.isListeningForChanges else { return }
        do {
            try store.listenForChanges { [weak self] in
                guard let self else { return }
                // the notification may overtake the generation row as this daemon
                // read it: forget it, so that the next check reads it again
                self.state.withLock { $0.generation = nil; $0.checkedAt = 0 }
                // off PostgreSQL's event loop: the observers read the database
                self.queue.async { self.changed() }
            }
        } catch {
            logger.warning("cannot LISTEN for other instances' changes; checking the shared generation per request",
                           metadata: ["error": "\(error)"])
        }
    }

    /// Before a request uses a cache.
    func check() throws(CofferError) {
        guard enabled else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        if maxStalenessNanos > 0, store.isListeningForChanges,
           state.withLock({ $0.generation != nil && now &- $0.checkedAt < maxStalenessNanos }) {
            return
        }
        let g = try errors.call { try store.sharedGeneration() }
        let stale = state.withLock { s -> Bool in
            defer { s.generation = g; s.checkedAt = now }
            return s.generation != g
        }
        if stale { changed() }
        if maxStalenessNanos > 0 { listen() }
    }
}
