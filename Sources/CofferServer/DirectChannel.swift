import CofferCore
import CofferEngine
import Glibc
import HTTPTypes
import Hummingbird
public import HummingbirdCore
public import Logging
public import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1

/// The event-loop request path (`[server] request_path = "event-loop"`; issue 16,
/// design (a)): each connection's pipeline is NIO's HTTP/1 codec, the same request
/// guard (whole request within the timeout, JSON for a parse error), Hummingbird's
/// idle and quiesce handler, and `DirectHandler`. A request whose handler never
/// waits (a read, health) and whose caller is known by peer credentials runs on the
/// event loop: route, gate, cached sealed row, decrypt, answer built; only its audit
/// event crosses to the writer thread, whose commit sends the answer back to the
/// event loop. Everything else runs through the same responder in a task, as the
/// Hummingbird path does. Peer credentials and the per-uid connection limit are
/// read at accept, exactly as in PeerCredChannel.
public struct DirectChannel: ServerChildChannel {
    public struct Value: ServerChildChannelValue {
        public let channel: any Channel
    }

    let responder: CofferResponder
    let limiter: ConnectionLimiter?
    let decoderLimits: NIOHTTPDecoderLimitConfiguration
    let idleTimeout: Duration
    let requestTimeout: TimeAmount
    let maxBodyBytes: Int
    let host: EngineHost
    let dates = HTTPDateCache()

    public init(responder: CofferResponder, limiter: ConnectionLimiter?, maxHeaderBytes: Int, idleTimeoutSeconds: Int, requestTimeoutSeconds: Int,
                maxBodyBytes: Int, host: EngineHost) {
        self.responder = responder
        self.limiter = limiter
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = maxHeaderBytes
        limits.maxHeaderListSize = maxHeaderBytes
        limits.maxHeaderFieldCount = 100
        self.decoderLimits = limits
        self.idleTimeout = .seconds(idleTimeoutSeconds)
        self.requestTimeout = .seconds(Int64(requestTimeoutSeconds))
        self.maxBodyBytes = maxBodyBytes
        self.host = host
    }

    public func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        PeerCredChannel.admit(channel, limiter: limiter, logger: logger).flatMapThrowing { peer in
            let ops = channel.pipeline.syncOperations
            try ops.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: false, withOutboundHeaderValidation: false,
                                                withEncoderConfiguration: .init(), withDecoderLimitConfiguration: decoderLimits)
            try ops.addHandler(HTTP1ToHTTPServerCodec(secure: false))
            try ops.addHandler(RequestGuardHandler(requestTimeout: requestTimeout, host: host, peer: peer))
            try ops.addHandler(HTTPConnectionStateHandler(idleTimeout: idleTimeout, logger: logger))
            try ops.addHandler(DirectHandler(peer: peer, responder: responder, maxBodyBytes: maxBodyBytes, dates: dates, logger: logger))
            return Value(channel: channel)
        }
    }

    /// The connection is served by its pipeline; this only outlives it.
    public func handle(value: Value, logger: Logger) async {
        try? await value.channel.closeFuture.get()
    }
}

/// One request at a time (NIO's pipelining assistance holds the next until the
/// answer's end is written): collected whole, answered on the event loop when it
/// can be, else by the responder in a task; the answer written with the same
/// headers the Hummingbird path writes (Content-Length, Date, request id).
///
/// Backpressure: answers are written without waiting for the socket, so while the
/// channel is not writable (answers past the high-water mark wait for a client that
/// does not read them) no more is read from the socket: a client pipelining
/// requests it never reads the answers to holds at most that much of the daemon's
/// memory (found by an attack: 1M pipelined health requests took RSS to 673 MB).
final class DirectHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    let peer: PeerCredentials
    let responder: CofferResponder
    let maxBodyBytes: Int
    let dates: HTTPDateCache
    let logger: Logger
    var head: HTTPRequest?
    var body = ByteBuffer()
    /// a request is being answered
    var answering = false
    /// the client closed its side: close ours once the answer is out
    var inputClosed = false
    /// the bytes after the request being answered are not HTTP: 400 once it is out
    var parseErrorPending = false
    /// that 400 is on its way (it closes the connection itself)
    var refusing = false
    /// that 400 is written; the connection waits for the client's end to close
    var refusalSent = false
    /// an answer that closes the connection was written: nothing after it is read
    var closing = false
    /// a read asked for while the channel was not writable
    var readHeld = false
    /// a whole request not yet answered because the answers before it wait for the
    /// client (pipelined requests are what is read at once, answers can be 1000 ×
    /// larger: holding the answering, not only the reading, bounds the memory)
    var held: (HTTPRequest, ByteBuffer)?

    init(peer: PeerCredentials, responder: CofferResponder, maxBodyBytes: Int, dates: HTTPDateCache, logger: Logger) {
        self.peer = peer
        self.responder = responder
        self.maxBodyBytes = maxBodyBytes
        self.dates = dates
        self.logger = logger
    }

    func read(context: ChannelHandlerContext) {
        guard context.channel.isWritable else {
            readHeld = true
            return
        }
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let (h, b) = held {
            held = nil
            dispatch(context: context, head: h, body: b)
        }
        if context.channel.isWritable && readHeld {
            readHeld = false
            context.read()
        }
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // after a refusal or an answer that closes, what the client sent on is not served
        guard !closing && !refusing else { return }
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body.clear()
        case .body(var chunk):
            // past the bound only one byte more is kept: enough for the handler's own
            // check to refuse it (413), nothing for a client to fill memory with
            let room = maxBodyBytes + 1 - body.readableBytes
            if chunk.readableBytes > room {
                if room > 0, let part = chunk.readSlice(length: room) { body.writeImmutableBuffer(part) }
            } else {
                body.writeBuffer(&chunk)
            }
        case .end:
            guard let h = head else { return }
            head = nil
            answering = true
            if context.channel.isWritable {
                dispatch(context: context, head: h, body: body)
            } else {
                // the answers before it wait for the client: this one is answered
                // when they have gone out (NIO holds the next request until then)
                held = (h, body)
            }
            body = ByteBuffer()
        }
    }

    func dispatch(context: ChannelHandlerContext, head: HTTPRequest, body: ByteBuffer) {
        let request = Request(head: head, body: RequestBody(buffer: body))
        let requestContext = CofferRequestContext(peer: peer, logger: logger)
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        let isHead = head.method == .head
        let close = head.headerFields[.connection]?.lowercased() == "close"
        let deliver: @Sendable (HTTPResponse, [ByteBuffer]) -> Void = { head, buffers in
            loop.execute {
                let (handler, context) = bound.value
                handler.write(context: context, head: head, buffers: buffers, isHead: isHead, close: close)
            }
        }
        if responder.respondNow(to: request, context: requestContext, completion: { answer in deliver(answer.head, [answer.body]) }) {
            return
        }
        let responder = self.responder
        Task {
            var response: Response
            do {
                response = try await responder.respond(to: request, context: requestContext)
            } catch {
                response = Response(status: .internalServerError)
            }
            let collector = BodyCollector()
            var buffers: [ByteBuffer]
            do {
                try await response.body.write(collector)
                buffers = collector.buffers
            } catch {
                response = Response(status: .internalServerError)
                buffers = []
            }
            deliver(response.head, buffers)
        }
    }

    func write(context: ChannelHandlerContext, head: HTTPResponse, buffers: [ByteBuffer], isHead: Bool, close: Bool) {

        var head = head
        let length = buffers.reduce(0) { $0 + $1.readableBytes }
        if head.headerFields[.contentLength] == nil { head.headerFields[.contentLength] = String(length) }
        head.headerFields[.date] = dates.now()
        if close { head.headerFields[.connection] = "close" }
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if !isHead {
            for b in buffers where b.readableBytes > 0 { context.write(wrapOutboundOut(.body(b)), promise: nil) }
        }
        let channel = context.channel
        answering = false
        let closing = close || inputClosed
        if closing { self.closing = true }
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if closing { channel.close(promise: nil) }
        }
        if parseErrorPending && !closing && !answering {
            parseErrorPending = false
            refuseLater(context: context)
        }
    }

    /// The 400 on the next turn of the loop: never from inside the write of another
    /// answer (the pipelining handler delivers what it held back from there).
    func refuseLater(context: ChannelHandlerContext) {
        guard !refusing && !closing else { return }
        refusing = true
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context) = bound.value
            handler.refuseUnparseable(context: context)
        }
    }

    /// 400 with the JSON error body (RequestGuardHandler writes it, as for the
    /// Hummingbird path's own answer), then the connection is closed.
    func refuseUnparseable(context: ChannelHandlerContext) {
        // a client that has gone is not refused (nor is a refusal recorded for it)
        guard context.channel.isActive else { return context.close(promise: nil) }
        let head = HTTPResponse(status: .badRequest, headerFields: [.connection: "close", .contentLength: "0"])
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        let channel = context.channel
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            // Closed with unread bytes (the rest of a request too big to parse), the
            // socket would be reset and the 400 lost: shut the output, let the client's
            // end arrive (what it still sends is dropped), close after 2 s at most.
            bound.value.refusalSent = true
            if bound.value.inputClosed { return channel.close(promise: nil) }
            channel.close(mode: .output, promise: nil)
            channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
        }
    }

    /// A client that half-closes (shutdown of its write side, as `socat` and `nc` do)
    /// gets the answer to what it sent, then the connection is closed.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {

        if let e = event as? ChannelEvent, e == .inputClosed {
            inputClosed = true
            // on the next turn: this may be delivered from inside an answer's write
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.execute {
                let (handler, context) = bound.value
                // (RequestGuardHandler holds the close until the answers written have gone out)
                if (!handler.answering && handler.head == nil && !handler.refusing) || handler.refusalSent { context.close(promise: nil) }
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// A request the HTTP layer cannot parse: 400 with the JSON error body (written
    /// by RequestGuardHandler), then the connection is closed, as on the Hummingbird path.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {

        // one refusal per connection, none after an answer that closes it; the decoder
        // reports the bytes that arrive after its error too (dataReceivedInErrorState),
        // which must not close the connection before the 400 is out
        guard !refusing && !closing && !parseErrorPending else { return }
        guard error is HTTPParserError else { return context.close(promise: nil) }
        // answered in order: after the request in hand, if there is one
        if answering {
            parseErrorPending = true
        } else {
            refuseLater(context: context)
        }
    }
}

/// Collects an answer's body (answers are small and whole: JSON, a value, an
/// export bounded by its route).
final class BodyCollector: ResponseBodyWriter, @unchecked Sendable {
    var buffers: [ByteBuffer] = []

    func write(_ buffer: ByteBuffer) async throws { buffers.append(buffer) }

    func finish(_ trailingHeaders: HTTPFields?) async throws {}
}
