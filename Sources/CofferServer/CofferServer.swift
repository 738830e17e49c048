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
        config: CofferConfig, host: EngineHost, logger: Logger,
        onReady: @escaping @Sendable (_ socket: String) -> Void = { _ in }
    ) throws -> (services: [any Service], socket: SocketGuard?) {
        let inherited = try SocketActivation.inheritedSocket()
        let responder = CofferResponder(host: host, settings: .init(config: config), logger: logger)
        let limiter = ConnectionLimiter(perUID: config.maxConnectionsPerUID)
        // Invariant 6: bounded headers, idle connections and slow requests.
        let limits = HTTP1Channel.Configuration.DecoderConfiguration(
            maxHeaderFieldSize: config.maxHeaderBytes, maxHeaderListSize: config.maxHeaderBytes, maxHeaderFieldCount: 100)
        if config.requestPath == "epoll-prototype", inherited == nil {
            let guardian = try SocketGuard(socketPath: config.socketPath)
            let server = EpollServer(socketPath: config.socketPath, guardian: guardian, socketMode: config.socketMode, socketGID: try socketGroupID(config),
                                     responder: responder, limiter: limiter, maxHeaderBytes: config.maxHeaderBytes, maxBodyBytes: config.maxBodyBytes,
                                     logger: logger, onReady: onReady)
            return (background(host: host, logger: logger) + [server], guardian)
        }
        // (the prototype binds its own path: with a socket from systemd, the event loop serves)
        if config.requestPath != "hummingbird" {
            let direct = DirectChannel(responder: responder, limiter: limiter, maxHeaderBytes: config.maxHeaderBytes,
                                       idleTimeoutSeconds: config.idleTimeoutSeconds, requestTimeoutSeconds: config.requestTimeoutSeconds,
                                       maxBodyBytes: config.maxBodyBytes, host: host)
            return try assemble(config: config, host: host, responder: responder, logger: logger, inherited: inherited, onReady: onReady,
                                child: { _ in direct })
        }
        return try assemble(config: config, host: host, responder: responder, logger: logger, inherited: inherited, onReady: onReady) { responder in
            PeerCredChannel(inner: HTTP1Channel(responder: responder, configuration: .init(
                additionalChannelHandlers: [RequestGuardHandler(requestTimeout: .seconds(Int64(config.requestTimeoutSeconds)), host: host)],
                idleTimeout: .seconds(Int64(config.idleTimeoutSeconds)),
                httpDecoderConfiguration: limits)), limiter: limiter)
        }
    }

    /// The server (on the configured path, or on the socket systemd passed) with its
    /// background services, for either request path's child channel.
    static func assemble<Child: ServerChildChannel>(
        config: CofferConfig, host: EngineHost, responder: CofferResponder, logger: Logger, inherited: CInt?,
        onReady: @escaping @Sendable (_ socket: String) -> Void, child channel: @escaping @Sendable (@escaping HTTPChannelHandler.Responder) -> Child
    ) throws -> (services: [any Service], socket: SocketGuard?) {
        let background = background(host: host, logger: logger)
        if let fd = inherited {
            // Socket activation: the .socket unit owns the path, its mode and group.
            let path = SocketActivation.path(of: fd) ?? "fd \(fd)"
            let server = InheritedSocketServer(fd: fd, child: channel(httpResponder(responder, logger: logger)),
                                               maxConnections: config.maxConnections, logger: logger) {
                logger.info("cofferd ready", metadata: ["socket": "\(path)", "socket.activated": "true"])
                SystemdNotify.ready("serving on \(path) (socket-activated)")
                onReady(path)
            }
            return (background + [server], nil)
        }
        let guardian = try SocketGuard(socketPath: config.socketPath)
        let socketGID = try socketGroupID(config)
        let app = Application(
            responder: responder,
            server: HTTPServerBuilder { responder in channel(responder) },
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
                SystemdNotify.ready("serving on \(config.socketPath)")
                onReady(config.socketPath)
            },
            logger: logger
        )
        return (background + [app], guardian)
    }

    /// What runs beside the server, whichever request path serves.
    static func background(host: EngineHost, logger: Logger) -> [any Service] {
        [AuditService(host: host), RotationWatch(host: host), TokenReaper(host: host, logger: logger), ElevationClock(host: host), RunWatch(host: host),
         CredentialWatch(host: host, logger: logger), SystemdNotifier(), PolicyReloader(policies: host.policies, logger: logger)]
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
            logger.notice("SIGHUP: reloading the policy", metadata: ["policy.file": "\(policies.path ?? "-")"])
            SystemdNotify.reloading()
            _ = try? policies.reload()  // PolicyStore logs success and refusal
            SystemdNotify.send("READY=1\nSTATUS=serving; policy reloaded")
        }
    }
}

/// Runs the audit trail's group-commit loop and checkpoint timer (once the engine
/// is open: a sealed daemon has no trail yet); signs a final checkpoint on shutdown.
public struct AuditService: Service {
    let host: EngineHost

    public func run() async throws {
        try await cancelWhenGracefulShutdown {
            await host.whileOpen { engine in await engine.runAuditWriter() }
        }
    }
}

/// Expires elevation requests whose window is over (pending, approved, active),
/// every few seconds, as `system:elevation`: a window ends on time, and its token
/// (already expired with it) is revoked with everything made from it.
public struct ElevationClock: Service {
    let host: EngineHost
    static let interval = Duration.seconds(2)

    public func run() async throws {
        try await cancelWhenGracefulShutdown {
            await host.whileOpen { engine in
                while !Task.isCancelled {
                    await engine.expireElevations()
                    try? await Task.sleep(for: Self.interval)
                }
            }
        }
    }
}

/// Watches runs (`coffer run`): at start it adopts the runs whose runner lives and
/// removes stale mounts; then, every 250 ms, it ends runs whose runner exited (also
/// by SIGKILL) or whose TTL passed, unmounting what cofferd mounted.
public struct RunWatch: Service {
    let host: EngineHost
    static let interval = Duration.milliseconds(250)

    public func run() async throws {
        try await cancelWhenGracefulShutdown {
            await host.whileOpen { engine in
                await engine.runs.recover()
                while !Task.isCancelled {
                    await engine.runs.sweep()
                    try? await Task.sleep(for: Self.interval)
                }
            }
        }
    }
}

/// SSH credentials: at start it writes the KRL (sshd refuses every key while its
/// RevokedKeys file is missing); then, every second, it ends the SSH sessions whose
/// elevation is over (the moment an elevation is ended or revoked, too), and
/// retries a KRL write that failed.
public struct CredentialWatch: Service {
    let host: EngineHost
    let logger: Logger
    static let interval = Duration.seconds(1)

    public func run() async throws {
        let logger = self.logger
        try await cancelWhenGracefulShutdown {
            await host.whileOpen { engine in
                do throws(CofferError) { try engine.credentials.writeKRL() } catch {
                    logger.error("cannot write the SSH KRL", metadata: ["error": "\(error.message)"])
                }
                var tick = 0
                while !Task.isCancelled {
                    engine.credentials.retryKRLIfNeeded()
                    await engine.credentials.endDueSessions()
                    tick += 1
                    if tick % 10 == 0 { await engine.credentials.tidyCgroups() }
                    try? await Task.sleep(for: Self.interval)
                }
            }
        }
    }
}

/// Key rotations: re-wraps every version under the rotation's data key in the
/// background (resuming one a killed daemon left), then erases the keys it freed.
public struct RotationWatch: Service {
    let host: EngineHost
    static let interval = Duration.seconds(1)

    public func run() async throws {
        try await cancelWhenGracefulShutdown {
            await host.whileOpen { engine in
                while !Task.isCancelled {
                    await engine.runRotation()
                    try? await Task.sleep(for: Self.interval)
                }
            }
        }
    }
}

/// Deletes tokens that ended (expired, revoked, used up) more than a week ago, once
/// an hour, as `system:reaper`: each run that deletes leaves its own audit event.
public struct TokenReaper: Service {
    let host: EngineHost
    let logger: Logger
    static let interval = Duration.seconds(3600)
    static let retainSeconds: Int64 = 7 * 86400

    public func run() async throws {
        let logger = self.logger
        try await cancelWhenGracefulShutdown {
            await host.whileOpen { engine in
                while !Task.isCancelled {
                    do throws(CofferError) {
                        let n = try await engine.reapTokens(retainSeconds: Self.retainSeconds)
                        if n > 0 { logger.info("reaped ended tokens", metadata: ["tokens": "\(n)"]) }
                    } catch {
                        logger.warning("token reaping failed", metadata: ["error.code": "\(error.code.rawValue)"])
                    }
                    try? await Task.sleep(for: Self.interval)
                }
            }
        }
    }
}
