import CofferStore
import Foundation
import Synchronization

/// Recently used token records by their keyed hash, so a token read does not cost
/// a SQLite read. Only tokens without a use limit are cached (a limited token's
/// count is decremented in the database on every use). Any revocation clears the
/// cache, and a record loaded before a revocation is never inserted after it
/// (generation counter); expiry is checked on every use from the record itself.
final class TokenCache: Sendable {
    struct State {
        /// A token's record, then its ancestors' (parent first).
        var records: [Data: [TokenRecord]] = [:]
        var generation: UInt64 = 0
    }
    private let state = Mutex(State())
    let limit: Int

    init(limit: Int = 10_000) { self.limit = limit }

    var generation: UInt64 { state.withLock { $0.generation } }

    func lookup(_ hash: Data) -> [TokenRecord]? { state.withLock { $0.records[hash] } }

    func insert(_ chain: [TokenRecord], ifGeneration g: UInt64) {
        // limited tokens (or tokens made from one) spend uses in the database each time
        guard let t = chain.first, chain.allSatisfy({ $0.usesLeft == nil && $0.revokedAt == nil }) else { return }
        state.withLock { s in
            guard s.generation == g else { return }
            if s.records.count >= limit { s.records.removeAll(keepingCapacity: true) }
            s.records[t.hash] = chain
        }
    }

    func clear() {
        state.withLock { s in
            s.generation &+= 1
            s.records.removeAll(keepingCapacity: true)
        }
    }
}
