import Glibc

/// One way to make a raw system call: retried on EINTR, failing with its errno.
public enum Syscall {
    public struct Failure: Error, Sendable {
        public let errno: Int32
        public var reason: String { String(cString: strerror(errno)) }
    }

    @discardableResult
    public static func retrying<T: FixedWidthInteger>(_ call: () -> T) throws(Failure) -> T {
        while true {
            let r = call()
            if r >= 0 { return r }
            let e = errno
            guard e == EINTR else { throw Failure(errno: e) }
        }
    }
}
