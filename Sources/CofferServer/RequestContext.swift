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
}
