import CCofferLinux
import CofferAPI
import CofferAudit
import CofferCore
import CofferCrypto
import CofferEngine
import Glibc
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
///   same JSON error body as every other error;
/// - a close waits (5 s at most) until the answers already written have gone out:
///   closing drops what is unsent, and both request paths close a half-closed
///   connection once its last request is answered, often before a slow reader has
///   taken the answers (found by an attack: pipelined 64 KiB reads, then a half-close).
final class RequestGuardHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    let requestTimeout: TimeAmount
    /// Where a refused unparseable request is recorded (invariant 4: HTTP-level
    /// refusals leave an event too).
    let host: EngineHost?
    /// The peer, when the channel knew it before building this handler (the
    /// event-loop path); else it is read from the socket when a refusal is recorded.
    var peer: PeerCredentials?
    var deadline: Scheduled<Void>?
    var rewritingParseError = false
    /// the last answer's end as written, and a close waiting for it
    var lastEnd: EventLoopFuture<Void>?
    var deferredClose: EventLoopFuture<Void>?
    static let closeWait = TimeAmount.seconds(5)

    static let parseErrorBody: ByteBuffer = {
        let e = CofferError(.malformedRequest, "the request is not valid HTTP/1.1", hint: "the connection is closed")
        let data = (try? JSONEncoder().encode(ErrorBody(e))) ?? Data()
        return ByteBuffer(bytes: data)
    }()

    init(requestTimeout: TimeAmount, host: EngineHost? = nil, peer: PeerCredentials? = nil) {
        self.requestTimeout = requestTimeout
        self.host = host
        self.peer = peer
    }

    /// The peer is read once, while the connection is there: read when a refusal is
    /// recorded, the socket may already be closed (an event without its peer).
    func handlerAdded(context: ChannelHandlerContext) {
        guard peer == nil, let provider = context.channel as? any SocketOptionProvider else { return }
        let future: EventLoopFuture<coffer_ucred> = provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        future.whenSuccess { cred in
            if bound.value.peer == nil, cred.uid != UInt32.max { bound.value.peer = PeerCredentials(pid: cred.pid, uid: cred.uid, gid: cred.gid) }
        }
    }

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
            // a refusal the client is no longer there to receive is not recorded
            if context.channel.isActive { recordParseError(context.channel) }
            head.headerFields[.contentLength] = String(Self.parseErrorBody.readableBytes)
            head.headerFields[.contentType] = "application/json"
            context.write(wrapOutboundOut(.head(head)), promise: promise)
        case .end(let trailers) where rewritingParseError:
            rewritingParseError = false
            context.write(wrapOutboundOut(.body(Self.parseErrorBody)), promise: nil)
            context.write(wrapOutboundOut(.end(trailers)), promise: endPromise(context, promise))
        case .end:
            context.write(data, promise: endPromise(context, promise))
        default:
            context.write(data, promise: promise)
        }
    }

    /// The promise an answer's end is written with, kept as the last one.
    func endPromise(_ context: ChannelHandlerContext, _ promise: EventLoopPromise<Void>?) -> EventLoopPromise<Void> {
        let p = promise ?? context.eventLoop.makePromise()
        lastEnd = p.futureResult
        return p
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all, let last = lastEnd else { return context.close(mode: mode, promise: promise) }
        if let waiting = deferredClose {
            waiting.cascade(to: promise)
            return
        }
        let done = context.eventLoop.makePromise(of: Void.self)
        deferredClose = done.futureResult
        done.futureResult.cascade(to: promise)
        context.flush()
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let cap = context.eventLoop.scheduleTask(in: Self.closeWait) { bound.value.close(mode: .all, promise: nil) }
        last.whenComplete { _ in
            cap.cancel()
            bound.value.close(mode: .all, promise: done)
        }
    }

    /// One event per refused request, with the peer the kernel named (given, or read
    /// when the handler was added; read now only if that had not answered yet).
    func recordParseError(_ channel: any Channel) {
        guard let engine = host?.engine else { return }  // sealed: no trail to write
        func record(pid: Int32?, uid: UInt32?) {
            engine.recordRefusal(AuditEvent.draft(
                time: engine.nowMillis(), requestID: Hex.encode(Hashing.randomBytes(8)), peerPID: pid ?? 0,
                peerUID: uid ?? UInt32.max, method: "-", action: "malformed_request", path: nil, status: 400,
                errorCode: CofferError.Code.malformedRequest.rawValue))
        }
        if let peer { return record(pid: peer.pid, uid: peer.uid) }
        guard let provider = channel as? any SocketOptionProvider else { return }
        let future: EventLoopFuture<coffer_ucred> = provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        future.whenComplete { result in
            let cred = try? result.get()
            record(pid: cred?.pid, uid: cred?.uid)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
        context.fireChannelInactive()
    }
}
