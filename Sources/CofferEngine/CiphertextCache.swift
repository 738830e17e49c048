import CofferCore
import CofferStore
import Synchronization

/// Sealed rows of recently read versions, so a hot read does not touch SQLite.
/// Holds ciphertext and wrapped keys only (never plaintext), bounded in entries, and
/// filled only with rows that just opened successfully.
///
/// Invalidation: every state change of a path calls `invalidate` after its commit and
/// bumps a generation; a reader that loaded a row from the database inserts it only
/// if no invalidation happened since it started, so a stale row never lands after
/// the write that replaced it.
final class CiphertextCache: Sendable {
    struct Entry {
        var current: Int
        var versions: [Int: StoredVersion]
    }
    struct State {
        var entries: [String: Entry] = [:]
        var generation: UInt64 = 0
        /// Paths with a write under way: between its commit and its invalidation a
        /// reader could load the new row from the database while another inserts the
        /// old one it loaded before (and then read that, backwards); so no lookup and
        /// no insert for such a path until the write is done.
        var writing: [String: Int] = [:]
    }

    private let state = Mutex(State())
    let limit: Int

    init(limit: Int) { self.limit = limit }

    var generation: UInt64 { state.withLock { $0.generation } }

    func lookup(_ path: SecretPath, _ version: Int?) -> (current: Int, stored: StoredVersion)? {
        state.withLock { s in
            guard s.writing[path.rawValue] == nil, let e = s.entries[path.rawValue], let v = e.versions[version ?? e.current] else { return nil }
            return (e.current, v)
        }
    }

    func insert(_ path: SecretPath, current: Int, _ stored: StoredVersion, ifGeneration g: UInt64) {
        state.withLock { s in
            guard s.generation == g, s.writing[path.rawValue] == nil else { return }
            if s.entries[path.rawValue] == nil && s.entries.count >= limit {
                // bounded: drop an arbitrary eighth (cheap, and hot paths come back)
                for k in s.entries.keys.prefix(max(1, limit / 8)) { s.entries[k] = nil }
            }
            var e = s.entries[path.rawValue] ?? Entry(current: current, versions: [:])
            guard e.current == current else { return }
            if e.versions.count >= 16 { e.versions.removeAll() }
            e.versions[stored.meta.version] = stored
            s.entries[path.rawValue] = e
        }
    }

    /// A write of `path` begins (before its transaction): readers go to the database.
    func beginWrite(_ path: SecretPath) {
        state.withLock { s in
            s.writing[path.rawValue, default: 0] += 1
            s.generation &+= 1
            s.entries[path.rawValue] = nil
        }
    }

    /// The write is over (committed or not): invalidated, and cached again from now on.
    func endWrite(_ path: SecretPath) {
        state.withLock { s in
            s.generation &+= 1
            s.entries[path.rawValue] = nil
            let n = (s.writing[path.rawValue] ?? 1) - 1
            s.writing[path.rawValue] = n > 0 ? n : nil
        }
    }

    /// Everything (another instance changed secrets or keys).
    func clear() {
        state.withLock { s in
            s.generation &+= 1
            s.entries.removeAll(keepingCapacity: true)
        }
    }

    func invalidate(_ path: SecretPath) {
        state.withLock { s in
            s.generation &+= 1
            s.entries[path.rawValue] = nil
        }
    }
}
