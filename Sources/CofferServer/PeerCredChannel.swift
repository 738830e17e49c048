import CCofferLinux
import Glibc
import Synchronization
public import HummingbirdCore
public import Logging
public import NIOCore

/// The kernel's answer about who is on the other end of a connection (SO_PEERCRED).
public struct PeerCredentials: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32

    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }

    /// Set around the handling of one connection; read once by the request context.
    @TaskLocal public static var current: PeerCredentials?
}

/// Wraps HTTP1Channel: reads SO_PEERCRED once per accepted connection, on the event
/// loop, before any byte of HTTP is parsed. A connection whose credentials cannot be
/// read is closed (fail closed).
public struct PeerCredChannel: ServerChildChannel {
    public struct Value: ServerChildChannelValue {
        let inner: HTTP1Channel.Value
        let peer: PeerCredentials
        public var channel: any Channel { inner.channel }
    }

    let inner: HTTP1Channel
    let limiter: ConnectionLimiter?

    public init(inner: HTTP1Channel, limiter: ConnectionLimiter? = nil) {
        self.inner = inner
        self.limiter = limiter
    }

    public func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        Self.admit(channel, limiter: limiter, logger: logger).flatMap { peer in
            inner.setup(channel: channel, logger: logger).map { Value(inner: $0, peer: peer) }
        }
    }

    /// The connection's peer as the kernel names it, admitted under the per-uid limit
    /// (also for DirectChannel): failed, and the connection closed, otherwise.
    static func admit(_ channel: any Channel, limiter: ConnectionLimiter?, logger: Logger) -> EventLoopFuture<PeerCredentials> {
        guard let provider = channel as? any SocketOptionProvider else {
            return channel.eventLoop.makeFailedFuture(PeerCredError.unavailable)
        }
        let future: EventLoopFuture<coffer_ucred> = provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        return future.flatMapThrowing { cred in
            // uid (uid_t)-1 means "no credentials": never trust it.
            guard cred.uid != UInt32.max else { throw PeerCredError.unavailable }
            if let limiter {
                // One uid cannot take every connection (invariant 6): past its share the
                // connection is closed before any byte is read.
                guard limiter.acquire(cred.uid) else {
                    logger.warning("connection refused: too many from one uid", metadata: ["peer.uid": "\(cred.uid)", "peer.pid": "\(cred.pid)"])
                    channel.close(promise: nil)
                    throw PeerCredError.tooManyConnections
                }
                channel.closeFuture.whenComplete { _ in limiter.release(cred.uid) }
            }
            return PeerCredentials(pid: cred.pid, uid: cred.uid, gid: cred.gid)
        }
    }

    public func handle(value: Value, logger: Logger) async {
        await PeerCredentials.$current.withValue(value.peer) {
            await inner.handle(value: value.inner, logger: logger)
        }
    }
}

enum PeerCredError: Error { case unavailable, tooManyConnections }

/// Open connections per peer uid, bounded.
public final class ConnectionLimiter: Sendable {
    let perUID: Int
    private let counts = Mutex<[UInt32: Int]>([:])

    public init(perUID: Int) { self.perUID = perUID }

    func acquire(_ uid: UInt32) -> Bool {
        counts.withLock { c in
            let n = c[uid, default: 0]
            guard n < perUID else { return false }
            c[uid] = n + 1
            return true
        }
    }

    func release(_ uid: UInt32) {
        counts.withLock { c in
            let n = c[uid, default: 1] - 1
            c[uid] = n > 0 ? n : nil
        }
    }
}

extension coffer_ucred: @unchecked @retroactive Sendable {}
