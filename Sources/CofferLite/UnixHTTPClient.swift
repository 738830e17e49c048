import CCofferLinux
import CofferCore
#if canImport(Glibc)
import Glibc
#endif

/// A small blocking HTTP/1.1 client over a Unix socket, for the CLI: one process,
/// one connection, no event loop to start (a CLI call per secret stays cheap).
public struct HTTPResult: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]

    public func header(_ name: String) -> String? {
        let n = name.lowercased()
        return headers.first { $0.0.lowercased() == n }?.1
    }
}

public struct ClientError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable { case connect, io, protocolError }
    public var kind: Kind
    public var message: String
    public var hint: String?
    public var description: String { message }

    public init(kind: Kind, message: String, hint: String? = nil) {
        self.kind = kind
        self.message = message
        self.hint = hint
    }
}

public final class UnixHTTPClient {
    public let socketPath: String
    var fd: Int32 = -1
    public var timeoutSeconds: Int = 30 {
        didSet { if fd >= 0 { applyTimeouts(fd) } }
    }

    func applyTimeouts(_ s: Int32) {
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
    /// The largest response body accepted (a hostile or broken peer cannot fill memory).
    public var maxBodyBytes: Int = 64 << 20
    /// When the response being read must be complete (a trickling peer cannot hold us).
    var deadline: UInt64 = 0
    /// Sent as X-Coffer-Token on every request (never on the command line).
    public var token: String?
    /// When set, the server's uid as the kernel reports it (SO_PEERCRED) must be one
    /// of these, checked after connecting and before a byte is sent: a socket found by
    /// path can be swapped between a check of the path and the connect.
    public var trustedServerUIDs: Set<UInt32>?

    public init(socketPath: String) {
        self.socketPath = socketPath
    }

    deinit { if fd >= 0 { close(fd) } }

    func connectIfNeeded() throws(ClientError) {
        if fd >= 0 { return }
        guard socketPath.utf8.count < 108 else {
            throw ClientError(kind: .connect, message: "the socket path \(socketPath) is too long for a Unix socket",
                              hint: "use a shorter path (at most 107 bytes)")
        }
        let s = coffer_unix_connect(socketPath)
        guard s >= 0 else {
            let e = errno
            let reason = String(cString: strerror(e))
            var hint = "is cofferd running? start it with `cofferd dev`, or set COFFER_SOCKET / --socket"
            if e == EACCES {
                var st = stat()
                if stat(socketPath, &st) != 0 && errno == EACCES {
                    hint = "the socket's directory is private to its owner (a dev daemon's is); use a daemon whose socket you may reach, or have its owner serve one with server.socket_mode and socket_group"
                } else if stat(socketPath, &st) == 0, st.st_mode & 0o060 == 0 {
                    hint = "the socket is its owner's alone (mode \(String(st.st_mode & 0o777, radix: 8)), as a dev daemon's is); use a daemon whose socket you may reach, or have its owner set server.socket_mode and socket_group"
                } else if stat(socketPath, &st) == 0, let g = getgrgid(st.st_gid) {
                    hint = "you lack permission on the socket; ask an admin to add you to the group \(String(cString: g.pointee.gr_name))"
                } else {
                    hint = "you lack permission on the socket; ask an admin to add you to the socket's group"
                }
            }
            throw ClientError(kind: .connect, message: "cannot connect to \(socketPath): \(reason)", hint: hint)
        }
        applyTimeouts(s)
        if let trusted = trustedServerUIDs {
            var cred = (pid: Int32(0), uid: UInt32.max, gid: UInt32.max)
            var len = socklen_t(MemoryLayout.size(ofValue: cred))
            let ok = withUnsafeMutableBytes(of: &cred) { getsockopt(s, SOL_SOCKET, SO_PEERCRED, $0.baseAddress, &len) } == 0
            guard ok, trusted.contains(cred.uid) else {
                close(s)
                throw ClientError(kind: .connect, message: "refusing \(socketPath): the process serving it runs as uid \(ok ? String(cred.uid) : "?"), not as you or root",
                                  hint: "someone else may have planted it; pass --socket or COFFER_SOCKET explicitly")
            }
        }
        fd = s
    }

    /// Sends one request and reads one response (Content-Length or chunked);
    /// `whileWaiting` runs between the two, while the server works.
    public func request(_ method: String, _ target: String, headers: [(String, String)] = [], body: [UInt8]? = nil,
                        whileWaiting: (() -> Void)? = nil) throws(ClientError) -> HTTPResult {
        try connectIfNeeded()
        deadline = Self.monotonicNanos() + UInt64(timeoutSeconds) * 1_000_000_000
        var head = "\(method) \(target) HTTP/1.1\r\nHost: coffer\r\nUser-Agent: coffer/\(CofferClientInfo.version)\r\n"
        for (k, v) in headers { head += "\(k): \(v)\r\n" }
        if let token { head += "X-Coffer-Token: \(token)\r\n" }
        if let body {
            head += "Content-Length: \(body.count)\r\n"
        } else if method == "PUT" || method == "POST" {
            head += "Content-Length: 0\r\n"
        }
        head += "\r\n"
        var out = Array(head.utf8)
        if let body { out += body }
        defer { Wipe.bytes(&out) }
        try writeAll(out)
        whileWaiting?()
        return try readResponse(method: method)
    }

    func writeAll(_ bytes: [UInt8]) throws(ClientError) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ClientError(kind: .io, message: "cannot send the request: \(String(cString: strerror(errno)))")
            }
            off += n
        }
    }

    var pending: [UInt8] = []

    static func monotonicNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    func fill() throws(ClientError) -> Bool {
        guard Self.monotonicNanos() < deadline else { throw ClientError(kind: .io, message: "timed out waiting for cofferd (\(timeoutSeconds)s)") }
        guard pending.count <= maxBodyBytes + (64 << 10) else {
            throw ClientError(kind: .protocolError, message: "cofferd's response is larger than \(maxBodyBytes) bytes")
        }
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN { throw ClientError(kind: .io, message: "timed out waiting for cofferd") }
                throw ClientError(kind: .io, message: "cannot read the response: \(String(cString: strerror(errno)))")
            }
            if n == 0 { return false }
            pending += buf[0..<n]
            return true
        }
    }

    func readLine() throws(ClientError) -> String {
        while true {
            if let i = pending.firstIndex(of: 0x0A) {
                var line = Array(pending[0..<i])
                pending.removeFirst(i + 1)
                if line.last == 0x0D { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            guard try fill() else { throw ClientError(kind: .protocolError, message: "cofferd closed the connection") }
            if pending.count > 1 << 20 { throw ClientError(kind: .protocolError, message: "response header too large") }
        }
    }

    func readExactly(_ n: Int) throws(ClientError) -> [UInt8] {
        while pending.count < n {
            guard try fill() else { throw ClientError(kind: .protocolError, message: "cofferd closed the connection mid-response") }
        }
        let out = Array(pending[0..<n])
        pending.removeFirst(n)
        return out
    }

    func readResponse(method: String) throws(ClientError) -> HTTPResult {
        let statusLine = try readLine()
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
            throw ClientError(kind: .protocolError, message: "malformed response from cofferd")
        }
        var headers: [(String, String)] = []
        var headerBytes = 0
        while true {
            let line = try readLine()
            if line.isEmpty { break }
            headerBytes += line.utf8.count
            guard headers.count < 100, headerBytes <= 64 << 10 else { throw ClientError(kind: .protocolError, message: "cofferd sent too many headers") }
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers.append((String(line[..<colon]), trimmed(line[line.index(after: colon)...])))
        }
        var result = HTTPResult(status: status, headers: headers, body: [])
        if method == "HEAD" || status == 204 || status == 304 { return result }
        // framing as RFC 9112 wants it, or no answer: one Content-Length (decimal, the
        // same if repeated), or Transfer-Encoding exactly chunked, never both
        let lengths = headers.filter { $0.0.lowercased() == "content-length" }.map(\.1)
        let codings = headers.filter { $0.0.lowercased() == "transfer-encoding" }.map { $0.1.lowercased() }
        var length: Int?
        if let first = lengths.first {
            guard lengths.allSatisfy({ $0 == first }), !first.isEmpty, first.utf8.count <= 15, first.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                  let n = Int(first) else { throw ClientError(kind: .protocolError, message: "malformed response from cofferd (Content-Length)") }
            length = n
        }
        if !codings.isEmpty {
            guard codings == ["chunked"], length == nil else {
                throw ClientError(kind: .protocolError, message: "malformed response from cofferd (Transfer-Encoding)")
            }
        }
        if let n = length, n > maxBodyBytes { throw ClientError(kind: .protocolError, message: "cofferd's response is larger than \(maxBodyBytes) bytes") }
        if !codings.isEmpty {
            while true {
                let sizeLine = try readLine()
                guard let size = Int(trimmed(sizeLine.split(separator: ";", omittingEmptySubsequences: false)[0]), radix: 16), size >= 0 else {
                    throw ClientError(kind: .protocolError, message: "malformed chunked response")
                }
                if size == 0 {
                    while try !readLine().isEmpty {}
                    break
                }
                guard result.body.count + size <= maxBodyBytes else {
                    throw ClientError(kind: .protocolError, message: "cofferd's response is larger than \(maxBodyBytes) bytes")
                }
                result.body += try readExactly(size)
                guard try readLine().isEmpty else { throw ClientError(kind: .protocolError, message: "malformed chunked response") }
            }
        } else if let n = length {
            result.body = try readExactly(n)
        } else {
            while try fill() {}
            result.body = pending
            pending = []
        }
        return result
    }
}

/// Spaces and tabs off both ends.
func trimmed(_ s: Substring) -> String {
    let u = s.utf8
    var a = u.startIndex, b = u.endIndex
    while a < b, u[a] == 0x20 || u[a] == 0x09 { a = u.index(after: a) }
    while b > a, u[u.index(before: b)] == 0x20 || u[u.index(before: b)] == 0x09 { b = u.index(before: b) }
    return String(s[a..<b])
}

/// An error answer from cofferd, decoded from its JSON error body.
public struct APIError: Error, Sendable, CustomStringConvertible {
    public var status: Int
    public var code: String
    public var message: String
    public var hint: String?
    public var description: String { message }

    public init(status: Int, code: String, message: String, hint: String?) {
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint
    }

    /// From a response that is not 2xx: its `{"error": {code, message, hint}}`, or the status.
    public init(_ r: HTTPResult) {
        if let body = try? JSON.parse(r.body), let e = body["error"], let code = e["code"]?.string, let message = e["message"]?.string {
            self.init(status: r.status, code: code, message: message, hint: e["hint"]?.string)
        } else {
            self.init(status: r.status, code: "http_\(r.status)", message: "cofferd answered HTTP \(r.status)", hint: nil)
        }
    }
}

public enum CofferClientInfo {
    public static let version = "0.1.0"
}

/// Zeroes buffers that held a secret value (explicit_bzero is not elided).
public enum Wipe {
    public static func bytes(_ bytes: inout [UInt8]) {
        bytes.withUnsafeMutableBytes { raw in
            if let base = raw.baseAddress, raw.count > 0 { explicit_bzero(base, raw.count) }
        }
    }
}
