import Glibc
import Synchronization

/// The one source of "now" (milliseconds since the epoch), passed in: token expiry,
/// audit times and background jobs read it, so tests can move time.
public protocol WallClock: Sendable {
    func nowMillis() -> Int64
}

/// The real clock.
public struct SystemWallClock: WallClock {
    public init() {}
    public func nowMillis() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}

/// A clock tests move by hand.
public final class ManualWallClock: WallClock {
    private let now: Mutex<Int64>
    public init(_ start: Int64) { now = Mutex(start) }
    public func nowMillis() -> Int64 { now.withLock { $0 } }
    public func advance(seconds: Int64) { now.withLock { $0 += seconds * 1000 } }
}
