public import CofferCore
public import CofferEngine
import Hummingbird
import HummingbirdCore
public import Logging
import NIOCore
public import ServiceLifecycle
import UnixSignals

/// Builds the HTTP server on the Unix socket. The executable composes it with the
/// other services into one ServiceGroup (`services(...)`).
public enum CofferServer {
    /// The services of a daemon, in start order (they shut down in reverse: the server
    /// first, the audit writer last), and the socket's guard to release at exit.
    public static func services(
        config: CofferConfig, engine: SecretEngine, logger: Logger,
        onReady: @escaping @Sendable () -> Void = {}
    ) throws -> (services: [any Service], socket: SocketGuard) {
        let guardian = try SocketGuard(socketPath: config.socketPath)
        let socketGID = try socketGroupID(config)
        let responder = APIResponder(engine: engine, settings: .init(config: config))
        let limiter = ConnectionLimiter(perUID: config.maxConnectionsPerUID)
        let app = Application(
            responder: responder,
            server: HTTPServerBuilder { responder in
                // Invariant 6: bounded headers, idle connections and slow requests.
                let limits = HTTP1Channel.Configuration.DecoderConfiguration(
                    maxHeaderFieldSize: config.maxHeaderBytes, maxHeaderListSize: config.maxHeaderBytes, maxHeaderFieldCount: 100)
                return PeerCredChannel(inner: HTTP1Channel(responder: responder, configuration: .init(
                    additionalChannelHandlers: [RequestGuardHandler(requestTimeout: .seconds(Int64(config.requestTimeoutSeconds)), engine: engine)],
                    idleTimeout: .seconds(Int64(config.idleTimeoutSeconds)),
                    httpDecoderConfiguration: limits)), limiter: limiter)
            },
            configuration: .init(
                // A deep listen queue: connections over a uid's share are accepted and
                // closed at once, so a connect flood from one uid is drained instead of
                // filling a short queue that others then cannot enter.
                address: .unixDomainSocket(path: config.socketPath), serverName: nil, backlog: 4096,
                availableConnectionsDelegate: MaximumAvailableConnections(config.maxConnections)),
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
        return ([AuditService(engine: engine), PolicyReloader(policies: engine.policyStore, logger: logger), app], guardian)
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

/// Reloads the policy file on SIGHUP. An invalid file is refused (logged) and the
/// previous policy stays in force.
public struct PolicyReloader: Service {
    let policies: PolicyStore
    let logger: Logger

    public func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            _ = try? policies.reload()  // PolicyStore logs success and refusal
        }
    }
}

/// Runs the audit trail's group-commit loop and checkpoint timer; signs a final
/// checkpoint on shutdown.
public struct AuditService: Service {
    let engine: SecretEngine

    public func run() async throws {
        try await cancelWhenGracefulShutdown { await engine.runAuditWriter() }
    }
}
