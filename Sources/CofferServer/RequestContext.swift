public import Hummingbird
public import Logging

/// Per-request context: the peer credentials of the connection (read once per
/// connection in PeerCredChannel) and the request logger.
public struct CofferRequestContext: InitializableFromSource {
    public var peer: PeerCredentials?
    public var logger: Logger

    public init(source: ApplicationRequestContextSource) {
        peer = PeerCredentials.current
        logger = source.logger
    }

    /// For in-process tests of the endpoint tables (no socket, no connection).
    public init(peer: PeerCredentials?, logger: Logger) {
        self.peer = peer
        self.logger = logger
    }
}
