import Dispatch
import Foundation
import Synchronization

/// Work that reads another process's /proc entries or copies its files (pidfd_getfd,
/// namespace links, a child that enters its mount namespace): the kernel can hold such
/// a call for as long as that process sits in exec with its exec lock taken — and a
/// hostile process can stay there (a close-on-exec FUSE file whose flush is never
/// answered). So it never runs on the shared pool that serves every request: each call
/// gets a thread of its own, and the caller waits at most `timeout`. At most `limit`
/// such threads exist at once, stuck ones included; beyond that the caller gets nil at
/// once, as it does at the timeout (fail closed: the request is refused).
enum OffPool {
    static let inFlight = Atomic<Int>(0)
    static let limit = 32

    final class Once<T: Sendable>: Sendable {
        let slot: Mutex<CheckedContinuation<T?, Never>?>
        init(_ c: CheckedContinuation<T?, Never>) { slot = Mutex(c) }
        /// true when this call resumed the waiter (false: it had been resumed)
        @discardableResult
        func resume(_ v: T?) -> Bool {
            guard let c = slot.withLock({ s -> CheckedContinuation<T?, Never>? in
                let c = s
                s = nil
                return c
            }) else { return false }
            c.resume(returning: v)
            return true
        }
    }

    /// `body`'s result, or nil when it did not end within `timeout` (or too many are
    /// stuck). `abandoned` gets a result that came too late (to close what it holds).
    static func run<T: Sendable>(timeout: Double = 3, _ body: @escaping @Sendable () -> T,
                                 abandoned: (@Sendable (T) -> Void)? = nil) async -> T? {
        guard inFlight.add(1, ordering: .relaxed).newValue <= limit else {
            inFlight.subtract(1, ordering: .relaxed)
            return nil
        }
        return await withCheckedContinuation { (c: CheckedContinuation<T?, Never>) in
            let once = Once(c)
            let thread = Thread {
                let v = body()
                inFlight.subtract(1, ordering: .relaxed)
                if !once.resume(v) { abandoned?(v) }
            }
            thread.stackSize = 1 << 20
            thread.start()
            DispatchQueue.global().asyncAfter(deadline: .now() + timeout) { once.resume(nil) }
        }
    }
}
