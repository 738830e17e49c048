public import CofferCore
public import CofferEngine
import Hummingbird
import HummingbirdCore
public import Logging
import NIOCore

/// Builds and runs the HTTP server on the Unix socket until SIGTERM/SIGINT.
public enum CofferServer {
    public static func run(
        config: CofferConfig, engine: SecretEngine, logger: Logger,
        onReady: @escaping @Sendable () -> Void = {}
    ) async throws {
        let guardian = try SocketGuard(socketPath: config.socketPath)
        defer { guardian.release() }
        let socketGID = try socketGroupID(config)
        let responder = APIResponder(engine: engine, principals: PrincipalResolver(), settings: .init(config: config))
        let app = Application(
            responder: responder,
            server: HTTPServerBuilder { responder in
                PeerCredChannel(inner: HTTP1Channel(responder: responder, configuration: .init(idleTimeout: .seconds(60))))
            },
            configuration: .init(address: .unixDomainSocket(path: config.socketPath), serverName: nil),
            onServerRunning: { channel in
                do {
                    try guardian.applyMode(config.socketMode, group: socketGID)
                } catch {
                    // Fail closed: the socket stays owner-only; say why and stop.
                    logger.critical("cannot set the socket's mode", metadata: ["error": "\(error)"])
                    channel.close(promise: nil)
                    return
                }
                logger.info("cofferd ready", metadata: ["socket": "\(config.socketPath)", "socket.mode": "\(String(config.socketMode, radix: 8))"])
                onReady()
            },
            logger: logger
        )
        try await app.runService()
    }

    static func socketGroupID(_ config: CofferConfig) throws(CofferError) -> UInt32? {
        guard let group = config.socketGroup else { return nil }
        guard let gid = PrincipalResolver.gid(ofGroup: group) else {
            throw CofferError(.config, "the socket group '\(group)' does not exist",
                              hint: "create it (groupadd \(group)) or change server.socket_group")
        }
        return gid
    }
}
