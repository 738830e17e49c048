import CofferAPI
import CofferCore
import Foundation
import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Sits between the HTTP codec and the request handler, per connection:
///
/// - a request must arrive whole (head to end) within `requestTimeout`, or the
///   connection is closed: a client trickling its body cannot hold a connection
///   (headers trickled byte by byte are cut by the idle timeout, since no part is
///   decoded until they are complete);
/// - the bare `400` the HTTP layer sends for a request it cannot parse is given the
///   same JSON error body as every other error.
final class RequestGuardHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    let requestTimeout: TimeAmount
    var deadline: Scheduled<Void>?
    var rewritingParseError = false

    static let parseErrorBody: ByteBuffer = {
        let e = CofferError(.malformedRequest, "the request is not valid HTTP/1.1", hint: "the connection is closed")
        let data = (try? JSONEncoder().encode(ErrorBody(e))) ?? Data()
        return ByteBuffer(bytes: data)
    }()

    init(requestTimeout: TimeAmount) { self.requestTimeout = requestTimeout }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            deadline?.cancel()
            let channel = context.channel
            deadline = context.eventLoop.scheduleTask(in: requestTimeout) { channel.close(promise: nil) }
        case .end:
            deadline?.cancel()
            deadline = nil
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var head) where head.status == .badRequest && head.headerFields[.contentLength] == "0"
            && head.headerFields[.connection] == "close":
            // Only the HTTP layer's parse-error answer has this shape; ours carry a body.
            rewritingParseError = true
            head.headerFields[.contentLength] = String(Self.parseErrorBody.readableBytes)
            head.headerFields[.contentType] = "application/json"
            context.write(wrapOutboundOut(.head(head)), promise: promise)
        case .end(let trailers) where rewritingParseError:
            rewritingParseError = false
            context.write(wrapOutboundOut(.body(Self.parseErrorBody)), promise: nil)
            context.write(wrapOutboundOut(.end(trailers)), promise: promise)
        default:
            context.write(data, promise: promise)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
        context.fireChannelInactive()
    }
}
