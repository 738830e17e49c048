import CCofferLinux
import CofferCore
import CofferEngine
import Foundation
import Glibc
import HTTPTypes
import Hummingbird
public import Logging
import NIOCore
public import ServiceLifecycle
import Synchronization

/// Issue 16, design (b), a measured prototype (`[server] request_path =
/// "epoll-prototype"`): a purpose-built loop, one thread per core, each with its own
/// epoll set sharing the listening socket (EPOLLEXCLUSIVE), a small strict HTTP/1.1
/// subset parser (request line, header lines, Content-Length bodies, keep-alive,
/// pipelining one request at a time), and completions from the audit writer (or a
/// task, for what cannot run on the loop) signalled through an eventfd. The same
/// responder answers (`respondNow` on the loop, `respond` in a task); peer
/// credentials and the per-uid connection limit are taken at accept.
///
/// What it does not have, and the Hummingbird and event-loop paths do: the request
/// and idle timeouts, the overall connection limit, socket activation, an audit
/// event for a request it cannot parse, and the fuzzing that NIO's parser has had.
/// It is here to be measured against design (a) in one coffer-bench run, not to
/// serve: cofferd logs a warning when it is configured.
public struct EpollServer: Service {
    let socketPath: String
    let guardian: SocketGuard
    let socketMode: UInt32
    let socketGID: UInt32?
    let responder: CofferResponder
    let limiter: ConnectionLimiter?
    let maxHeaderBytes: Int
    let maxBodyBytes: Int
    let logger: Logger
    let onReady: @Sendable (String) -> Void

    public func run() async throws {
        let fd = try listen()
        defer { close(fd) }
        let threads = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        var loops: [EpollLoop] = []
        for _ in 0..<threads {
            loops.append(try EpollLoop(listenFD: fd, responder: responder, limiter: limiter, maxHeaderBytes: maxHeaderBytes,
                                       maxBodyBytes: maxBodyBytes, logger: logger))
        }
        for (i, loop) in loops.enumerated() {
            let t = Thread { loop.run() }
            t.name = "coffer-epoll-\(i)"
            t.start()
        }
        logger.warning("cofferd ready on the epoll prototype (issue 16, design (b)): for measurement, not for service",
                       metadata: ["socket": "\(socketPath)"])
        onReady(socketPath)
        try? await gracefulShutdown()
        for loop in loops { loop.stop() }
    }

    func listen() throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw CofferError(.config, "cannot make a socket: \(String(cString: strerror(errno)))") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let path = Array(socketPath.utf8)
        guard path.count < MemoryLayout.size(ofValue: addr.sun_path) else { close(fd); throw CofferError(.config, "the socket path is too long") }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: path)
            raw[path.count] = 0
        }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, Glibc.listen(fd, 4096) == 0 else {
            let why = String(cString: strerror(errno))
            close(fd)
            throw CofferError(.config, "cannot listen on \(socketPath): \(why)")
        }
        try guardian.applyMode(socketMode, group: socketGID)
        return fd
    }
}

/// One loop: its thread owns `conns` and everything in them; other threads reach it
/// only through `post` (the inbox and the eventfd).
final class EpollLoop: @unchecked Sendable {
    final class Conn {
        let fd: Int32
        let id: UInt64
        let peer: PeerCredentials
        var input: [UInt8] = []
        var consumed = 0
        var output: [UInt8] = []
        var sent = 0
        var answering = false
        var closeAfter = false
        var isHead = false
        var peerClosed = false
        var interest: UInt32 = 0

        init(fd: Int32, id: UInt64, peer: PeerCredentials) {
            self.fd = fd
            self.id = id
            self.peer = peer
        }
    }

    typealias Delivery = (id: UInt64, head: HTTPResponse, body: [ByteBuffer])

    static let listenTag: UInt64 = 0
    static let wakeTag: UInt64 = 1
    // <sys/epoll.h>, which Glibc's module map leaves out
    static let epollIn: UInt32 = 0x001
    static let epollOut: UInt32 = 0x004
    static let epollRDHup: UInt32 = 0x2000
    static let epollExclusive: UInt32 = 1 << 28
    static let readable = epollIn | epollRDHup
    /// answers waiting for the client past which nothing more is read or parsed
    static let outputBound = 64 * 1024
    static let writable = epollOut

    let ep: Int32
    let wakeFD: Int32
    let listenFD: Int32
    let responder: CofferResponder
    let limiter: ConnectionLimiter?
    let maxHeaderBytes: Int
    let maxBodyBytes: Int
    let logger: Logger
    let dates = HTTPDateCache()
    var conns: [UInt64: Conn] = [:]
    /// what recv reads into (the loop's thread only)
    var chunk = [UInt8](repeating: 0, count: 65536)
    var nextID: UInt64 = 2
    var thread = pthread_t()
    /// answers given on the loop's own thread (health: no audit to wait for)
    var local: [Delivery] = []
    let inbox = Mutex<[Delivery]>([])
    let signalled = Atomic<Bool>(false)
    let stopping = Atomic<Bool>(false)

    init(listenFD: Int32, responder: CofferResponder, limiter: ConnectionLimiter?, maxHeaderBytes: Int, maxBodyBytes: Int, logger: Logger) throws {
        self.listenFD = listenFD
        self.responder = responder
        self.limiter = limiter
        self.maxHeaderBytes = maxHeaderBytes
        self.maxBodyBytes = maxBodyBytes
        self.logger = logger
        ep = coffer_epoll_create()
        wakeFD = coffer_eventfd()
        guard ep >= 0, wakeFD >= 0,
              coffer_epoll_ctl(ep, 1, listenFD, Self.epollIn | Self.epollExclusive, Self.listenTag) == 0,
              coffer_epoll_ctl(ep, 1, wakeFD, Self.epollIn, Self.wakeTag) == 0 else {
            throw CofferError(.config, "cannot set up epoll: \(String(cString: strerror(errno)))")
        }
    }

    func stop() {
        stopping.store(true, ordering: .releasing)
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    /// From any thread: an answer for connection `id` (dropped if it has closed since).
    func post(_ d: Delivery) {
        if pthread_equal(pthread_self(), thread) != 0 {
            local.append(d)
            return
        }
        inbox.withLock { $0.append(d) }
        if !signalled.exchange(true, ordering: .acquiringAndReleasing) {
            var one: UInt64 = 1
            _ = write(wakeFD, &one, 8)
        }
    }

    func run() {
        thread = pthread_self()
        var tags = [UInt64](repeating: 0, count: 256)
        var events = [UInt32](repeating: 0, count: 256)
        while !stopping.load(ordering: .acquiring) {
            let n = coffer_epoll_wait(ep, &tags, &events, 256, 1000)
            if n < 0 { break }
            for i in 0..<Int(n) {
                switch tags[i] {
                case Self.listenTag: acceptAll()
                case Self.wakeTag: drainInbox()
                default:
                    guard let c = conns[tags[i]] else { continue }
                    if events[i] & Self.writable != 0 { flush(c) }
                    if events[i] & ~Self.writable != 0, !readAvailable(c) { continue }
                    process(c)
                }
            }
        }
        for c in conns.values { shut(c) }
        close(ep)
        close(wakeFD)
    }

    func acceptAll() {
        while true {
            let fd = coffer_accept_nonblock(listenFD)
            if fd < 0 { return }  // EAGAIN: another loop took it, or none left
            var cred = coffer_ucred()
            guard coffer_peercred(fd, &cred) == 0 else { close(fd); continue }
            let peer = PeerCredentials(pid: cred.pid, uid: cred.uid, gid: cred.gid)
            if let limiter, !limiter.acquire(peer.uid) { close(fd); continue }
            let c = Conn(fd: fd, id: nextID, peer: peer)
            nextID += 1
            c.interest = Self.readable
            guard coffer_epoll_ctl(ep, 1, fd, c.interest, c.id) == 0 else {
                limiter?.release(peer.uid)
                close(fd)
                continue
            }
            conns[c.id] = c
        }
    }

    func drainInbox() {
        var n: UInt64 = 0
        _ = read(wakeFD, &n, 8)
        signalled.store(false, ordering: .releasing)  // before taking: a later post wakes again
        let items = inbox.withLock { i in defer { i = [] }; return i }
        for d in items {
            guard let c = conns[d.id] else { continue }
            deliver(c, d)
            process(c)
        }
    }

    /// false: the connection was closed.
    func readAvailable(_ c: Conn) -> Bool {
        let cap = maxHeaderBytes + maxBodyBytes + 65536
        while c.input.count - c.consumed < cap {
            let n = chunk.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                c.input.append(contentsOf: chunk[0..<n])
                continue
            }
            if n == 0 { c.peerClosed = true; break }
            if errno == EAGAIN || errno == EINTR { break }
            shut(c)
            return false
        }
        return true
    }

    /// Parses and dispatches what is complete, one request at a time.
    func process(_ c: Conn) {
        // answers a client does not read stop the parsing (and, in updateInterest, the reading)
        while !c.answering && conns[c.id] != nil && c.output.count - c.sent < Self.outputBound {
            switch HTTPSubset.parse(c.input, from: c.consumed, maxHeaderBytes: maxHeaderBytes, maxBodyBytes: maxBodyBytes) {
            case .incomplete:
                if c.peerClosed && c.output.count == c.sent { shut(c); return }
                updateInterest(c)
                return
            case .refused(let error):
                c.answering = true
                c.closeAfter = true
                c.consumed = c.input.count
                let a = ErrorMapping.answer(error)
                deliver(c, (c.id, a.head, [a.body]))
            case .request(let head, let body, let used, let keepAlive):
                c.consumed += used
                if c.consumed == c.input.count {
                    c.input.removeAll(keepingCapacity: true)
                    c.consumed = 0
                }
                c.answering = true
                c.closeAfter = !keepAlive
                c.isHead = head.method == .head
                dispatch(c, head, body)
                for d in local { if let c = conns[d.id] { deliver(c, d) } }
                local.removeAll(keepingCapacity: true)
            }
        }
        if conns[c.id] != nil { updateInterest(c) }
    }

    func dispatch(_ c: Conn, _ head: HTTPRequest, _ body: ByteBuffer) {
        let request = Request(head: head, body: RequestBody(buffer: body))
        let context = CofferRequestContext(peer: c.peer, logger: logger)
        let id = c.id
        if responder.respondNow(to: request, context: context, completion: { [self] a in post((id, a.head, [a.body])) }) { return }
        let responder = self.responder
        Task {
            var response: Response
            do { response = try await responder.respond(to: request, context: context) } catch { response = Response(status: .internalServerError) }
            let collector = BodyCollector()
            do { try await response.body.write(collector) } catch { response = Response(status: .internalServerError); collector.buffers = [] }
            self.post((id, response.head, collector.buffers))
        }
    }

    func deliver(_ c: Conn, _ d: Delivery) {
        c.answering = false
        var head = d.head
        let length = d.body.reduce(0) { $0 + $1.readableBytes }
        if head.headerFields[.contentLength] == nil { head.headerFields[.contentLength] = String(length) }
        head.headerFields[.date] = dates.now()
        if c.closeAfter { head.headerFields[.connection] = "close" }
        var out = "HTTP/1.1 \(head.status.code) \(head.status.reasonPhrase)\r\n"
        for f in head.headerFields { out += "\(f.name.rawName): \(f.value)\r\n" }
        out += "\r\n"
        c.output.append(contentsOf: out.utf8)
        if !c.isHead { for b in d.body { c.output.append(contentsOf: b.readableBytesView) } }
        flush(c)
    }

    func flush(_ c: Conn) {
        while c.sent < c.output.count {
            let n = c.output.withUnsafeBytes { send(c.fd, $0.baseAddress! + c.sent, $0.count - c.sent, Int32(MSG_NOSIGNAL)) }
            if n > 0 { c.sent += n; continue }
            if n < 0 && (errno == EAGAIN || errno == EINTR) { updateInterest(c); return }
            shut(c)
            return
        }
        c.output.removeAll(keepingCapacity: true)
        c.sent = 0
        if !c.answering && c.closeAfter { shut(c); return }
        updateInterest(c)
    }

    func updateInterest(_ c: Conn) {
        guard conns[c.id] != nil else { return }
        let cap = maxHeaderBytes + maxBodyBytes + 65536
        var want: UInt32 = c.peerClosed || c.input.count - c.consumed >= cap || c.output.count - c.sent >= Self.outputBound ? 0 : Self.readable
        if c.sent < c.output.count { want |= Self.writable }
        if want != c.interest {
            c.interest = want
            _ = coffer_epoll_ctl(ep, 3, c.fd, want, c.id)
        }
    }

    func shut(_ c: Conn) {
        guard conns.removeValue(forKey: c.id) != nil else { return }
        _ = coffer_epoll_ctl(ep, 2, c.fd, 0, 0)
        close(c.fd)
        limiter?.release(c.peer.uid)
    }
}

/// The strict HTTP/1.1 subset the prototype reads: `METHOD SP /target SP HTTP/1.x`,
/// header lines `name: value` of visible ASCII (no folding, no bare LF, at most
/// 100), a body only by one Content-Length (no Transfer-Encoding). Anything else is
/// refused, and the connection closed after the refusal.
enum HTTPSubset {
    enum Parsed {
        case incomplete
        case refused(CofferError)
        case request(HTTPRequest, ByteBuffer, used: Int, keepAlive: Bool)
    }

    static func isTokenByte(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
        default: "!#$%&'*+-.^_`|~".utf8.contains(b)
        }
    }

    static func parse(_ input: [UInt8], from start: Int, maxHeaderBytes: Int, maxBodyBytes: Int) -> Parsed {
        input.withUnsafeBufferPointer { all in
            let bad = { (why: String) in Parsed.refused(CofferError(.malformedRequest, "the request is not valid HTTP/1.1: \(why)", hint: "the connection is closed")) }
            let end = all.count
            // the end of the header block
            var i = start
            var headerEnd = -1
            let limit = min(end, start + maxHeaderBytes + 4)
            while i + 3 < limit {
                if all[i] == 13 && all[i + 1] == 10 && all[i + 2] == 13 && all[i + 3] == 10 { headerEnd = i; break }
                i += 1
            }
            if headerEnd < 0 {
                return end - start > maxHeaderBytes + 4 ? bad("the header block is too large") : .incomplete
            }
            // lines
            var lines: [Range<Int>] = []
            var lineStart = start
            var j = start
            while j < headerEnd {
                if all[j] == 13 {
                    guard all[j + 1] == 10 else { return bad("a bare CR") }
                    lines.append(lineStart..<j)
                    j += 2
                    lineStart = j
                    continue
                }
                j += 1
            }
            lines.append(lineStart..<headerEnd)
            guard lines.count <= 101 else { return bad("too many header fields") }
            // request line
            let rl = lines[0]
            var parts: [Range<Int>] = []
            var p = rl.lowerBound
            var q = p
            while q < rl.upperBound {
                if all[q] == 32 { parts.append(p..<q); p = q + 1 }
                q += 1
            }
            parts.append(p..<rl.upperBound)
            guard parts.count == 3, (1...20).contains(parts[0].count), parts[0].allSatisfy({ (65...90).contains(all[$0]) }) else { return bad("the request line") }
            guard (1...8192).contains(parts[1].count), all[parts[1].lowerBound] == UInt8(ascii: "/"),
                  parts[1].allSatisfy({ (0x21...0x7E).contains(all[$0]) }) else { return bad("the request target") }
            let version = String(decoding: all[parts[2]], as: UTF8.self)
            guard version == "HTTP/1.1" || version == "HTTP/1.0" else { return bad("the HTTP version") }
            guard let method = HTTPRequest.Method(String(decoding: all[parts[0]], as: UTF8.self)) else { return bad("the method") }
            var fields = HTTPFields()
            var contentLength: Int?
            var keepAlive = version == "HTTP/1.1"
            var authority: String?
            for line in lines.dropFirst() {
                guard let colon = line.first(where: { all[$0] == UInt8(ascii: ":") }), colon > line.lowerBound,
                      (line.lowerBound..<colon).allSatisfy({ isTokenByte(all[$0]) }) else { return bad("a header field name") }
                var v0 = colon + 1
                var v1 = line.upperBound
                while v0 < v1 && (all[v0] == 32 || all[v0] == 9) { v0 += 1 }
                while v1 > v0 && (all[v1 - 1] == 32 || all[v1 - 1] == 9) { v1 -= 1 }
                guard (v0..<v1).allSatisfy({ all[$0] == 9 || (0x20...0x7E).contains(all[$0]) }) else { return bad("a header field value") }
                let name = String(decoding: all[line.lowerBound..<colon], as: UTF8.self)
                let value = String(decoding: all[v0..<v1], as: UTF8.self)
                guard let fieldName = HTTPField.Name(name) else { return bad("a header field name") }
                switch fieldName {
                case .transferEncoding:
                    return bad("Transfer-Encoding is not accepted; send a Content-Length")
                case .contentLength:
                    guard !value.isEmpty, value.utf8.count <= 12, value.utf8.allSatisfy({ (48...57).contains($0) }), let n = Int(value),
                          contentLength == nil || contentLength == n else { return bad("the Content-Length") }
                    contentLength = n
                case .connection:
                    let tokens = value.lowercased().split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                    if tokens.contains("close") { keepAlive = false } else if tokens.contains("keep-alive") { keepAlive = true }
                default:
                    if name.lowercased() == "host" {
                        // the authority, as NIO's conversion makes it (not a field)
                        guard authority == nil else { return bad("two Host fields") }
                        authority = value
                        continue
                    }
                }
                fields.append(HTTPField(name: fieldName, value: value))
            }
            let length = contentLength ?? 0
            guard length <= maxBodyBytes else {
                return .refused(CofferError(.bodyTooLarge, "the request body is larger than \(maxBodyBytes) bytes", hint: "the connection is closed"))
            }
            let bodyStart = headerEnd + 4
            guard end - bodyStart >= length else { return .incomplete }
            let body = ByteBuffer(bytes: all[bodyStart..<(bodyStart + length)])
            let head = HTTPRequest(method: method, scheme: nil, authority: authority, path: String(decoding: all[parts[1]], as: UTF8.self), headerFields: fields)
            return .request(head, body, used: bodyStart + length - start, keepAlive: keepAlive)
        }
    }
}
