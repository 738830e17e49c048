import CCofferLinux
public import CofferCore
import Glibc
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Synchronization

/// systemd socket activation (sd_listen_fds(3), spoken directly): systemd, or
/// `systemd-socket-activate`, binds the socket and passes it as fd 3 with
/// LISTEN_PID and LISTEN_FDS set. cofferd then serves that socket as it is: its
/// path, mode and group are the .socket unit's, and cofferd never unlinks it.
public enum SocketActivation {
    /// The listening socket passed to this process, or nil when none was. Exactly one
    /// AF_UNIX stream socket that is listening is accepted; anything else is a
    /// configuration error (fail closed rather than serve something unexpected).
    public static func inheritedSocket() throws(CofferError) -> CInt? {
        guard let pidText = getenv("LISTEN_PID").map({ String(cString: $0) }),
              let countText = getenv("LISTEN_FDS").map({ String(cString: $0) }) else { return nil }
        // the variables describe the process systemd started; a child that inherited
        // them (cofferd run from a script that was itself activated) must not take fd 3
        guard let pid = Int32(pidText), pid == getpid() else { return nil }
        unsetenv("LISTEN_PID")
        unsetenv("LISTEN_FDS")
        unsetenv("LISTEN_FDNAMES")
        guard let count = Int(countText), count == 1 else {
            throw CofferError(.config, "systemd passed \(countText) sockets; cofferd serves exactly one",
                              hint: "give cofferd.socket a single ListenStream= line")
        }
        let fd: CInt = 3
        guard intOption(fd, SO_DOMAIN) == AF_UNIX, intOption(fd, SO_TYPE) == CInt(SOCK_STREAM.rawValue), intOption(fd, SO_ACCEPTCONN) == 1 else {
            throw CofferError(.config, "the socket systemd passed is not a listening Unix stream socket",
                              hint: "cofferd.socket needs ListenStream=/path/to/coffer.sock")
        }
        // an abstract socket (ListenStream=@name) has no file mode or group: anyone on
        // the host could connect, so the socket's access control would be gone
        guard let path = path(of: fd), path.hasPrefix("/") else {
            throw CofferError(.config, "the socket systemd passed has no path (abstract or unnamed): it would have no file mode or group",
                              hint: "cofferd.socket needs ListenStream=/path/to/coffer.sock")
        }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)  // never handed on to a run's child
        return fd
    }

    /// The path the socket is bound to (for logs and status), if it has one.
    public static func path(of fd: CInt) -> String? {
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) == 0 }
        }
        guard ok, address.sun_family == sa_family_t(AF_UNIX) else { return nil }
        return withUnsafeBytes(of: address.sun_path) { raw in
            let bytes = raw.prefix(while: { $0 != 0 })
            return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
        }
    }

    static func intOption(_ fd: CInt, _ name: CInt) -> CInt? {
        var value: CInt = 0
        var length = socklen_t(MemoryLayout<CInt>.size)
        return getsockopt(fd, SOL_SOCKET, name, &value, &length) == 0 ? value : nil
    }
}

/// Serves an inherited listening socket with the same child channel (peer
/// credentials, limits, HTTP/1.1) and the same responder as the path-bound server;
/// Hummingbird's Application binds paths only, so this is its accept loop over a
/// descriptor (NIO's `bind(_ socket:)`), with the same graceful quiescing and the same
/// cap on open connections.
struct InheritedSocketServer<Child: ServerChildChannel>: Service {
    let fd: CInt
    let child: Child
    let maxConnections: Int
    let logger: Logger
    let onRunning: @Sendable () -> Void

    func run() async throws {
        let quiescing = ServerQuiescingHelper(group: MultiThreadedEventLoopGroup.singleton)
        let child = self.child
        let logger = self.logger
        let cap = maxConnections
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ConnectionCap(limit: cap))
                    try channel.pipeline.syncOperations.addHandler(quiescing.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .bind(NIOBSDSocket.Handle(fd)) { channel in child.setup(channel: channel, logger: logger) }
        onRunning()
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                do {
                    try await server.executeThenClose { inbound in
                        for try await connection in inbound {
                            group.addTask { await child.handle(value: connection, logger: logger) }
                        }
                    }
                } catch {
                    logger.error("the inherited socket failed", metadata: ["error": "\(error)"])
                }
            }
        } onGracefulShutdown: {
            let done = server.channel.eventLoop.makePromise(of: Void.self)
            quiescing.initiateShutdown(promise: done)
        }
    }
}

/// At most `limit` open connections: past it the server channel stops accepting
/// until one closes (what Hummingbird's MaximumAvailableConnections does for the
/// path-bound server), so the kernel's backlog holds the rest.
final class ConnectionCap: ChannelDuplexHandler {
    typealias InboundIn = any Channel
    typealias InboundOut = any Channel
    typealias OutboundIn = Never

    let limit: Int
    var open = 0
    var readPending = false

    init(limit: Int) { self.limit = limit }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let child = unwrapInboundIn(data)
        open += 1
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        child.closeFuture.whenComplete { _ in
            loop.execute {
                let (cap, context) = bound.value
                cap.open -= 1
                if cap.readPending, cap.open < cap.limit {
                    cap.readPending = false
                    context.read()
                }
            }
        }
        context.fireChannelRead(data)
    }

    func read(context: ChannelHandlerContext) {
        if open >= limit {
            readPending = true
        } else {
            context.read()
        }
    }
}

/// Hummingbird's request handling for a child channel: the request context, the
/// responder, the Date header, the write.
func httpResponder(_ responder: CofferResponder, logger: Logger) -> HTTPChannelHandler.Responder {
    let dates = HTTPDateCache()
    return { request, writer, _ in
        let context = CofferRequestContext(peer: PeerCredentials.current, logger: logger)
        var response: Response
        do {
            response = try await responder.respond(to: request, context: context)
        } catch let error as HTTPParserError {
            throw error
        } catch {
            response = Response(status: .internalServerError)
        }
        response.headers[.date] = dates.now()
        do {
            try await writer.write(response: response.head, body: response.body)
        } catch is HTTPParserError {
            throw ResponseWriteFailed()  // not a parser error: that would answer twice
        }
    }
}

struct ResponseWriteFailed: Error {}

/// The IMF-fixdate of the current second (RFC 9110), formatted once a second.
final class HTTPDateCache: Sendable {
    private let cached = Mutex<(second: Int, text: String)>((-1, ""))

    func now() -> String {
        var t = time(nil)
        return cached.withLock { c in
            if c.second != t {
                var parts = tm()
                gmtime_r(&t, &parts)
                var buffer = [CChar](repeating: 0, count: 40)
                let n = strftime(&buffer, buffer.count, "%a, %d %b %Y %H:%M:%S GMT", &parts)
                c = (t, String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self))
            }
            return c.text
        }
    }
}
