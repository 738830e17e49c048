import CofferClient
import Foundation
import Glibc

/// Closed-loop load: `connections` threads, each with one keep-alive connection,
/// each sending its next request as soon as the answer arrives, for `seconds`.
struct LoadResult: Codable {
    var requests: Int
    var errors: Int
    var seconds: Double
    var rps: Double
    var p50us: Double
    var p99us: Double
    var p999us: Double
    var cpuUsPerRequest: Double?
    /// the audit writer during the measurement: events per group commit, µs per commit
    var auditBatch: Double?
    var auditCommitUs: Double?
}

/// One request kind: builds the bytes of a request and checks an answer.
protocol Workload: Sendable {
    func makeConnection(socket: String) throws -> any BenchConnection
}

protocol BenchConnection {
    /// Sends one request and reads its answer; false when the answer is an error.
    mutating func roundTrip(_ i: Int) throws -> Bool
}

/// HTTP/1.1 keep-alive requests through the CLI's own client.
struct HTTPWorkload: Workload {
    /// method, target, body for request number i
    let make: @Sendable (Int) -> (String, String, [UInt8]?)
    let token: String?
    let expect: Int

    func makeConnection(socket: String) throws -> any BenchConnection {
        let c = UnixHTTPClient(socketPath: socket)
        c.token = token
        return HTTPConnection(client: c, make: make, expect: expect)
    }
}

struct HTTPConnection: BenchConnection {
    let client: UnixHTTPClient
    let make: @Sendable (Int) -> (String, String, [UInt8]?)
    let expect: Int
    mutating func roundTrip(_ i: Int) throws -> Bool {
        let (m, t, b) = make(i)
        return try client.request(m, t, body: b).status == expect
    }
}

/// Redis GET over its Unix socket with a minimal RESP exchange (same syscall
/// pattern as the HTTP client: one write, reads until the reply is complete).
struct RedisWorkload: Workload {
    let key: String
    func makeConnection(socket: String) throws -> any BenchConnection {
        try RedisConnection(socket: socket, key: key)
    }
}

struct RedisConnection: BenchConnection {
    let fd: Int32
    let request: [UInt8]
    var buf = [UInt8](repeating: 0, count: 65536)

    init(socket: String, key: String) throws {
        request = Array("*2\r\n$3\r\nGET\r\n$\(key.utf8.count)\r\n\(key)\r\n".utf8)
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in socket.utf8.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw BenchError("cannot connect to redis at \(socket)") }
    }

    mutating func roundTrip(_ i: Int) throws -> Bool {
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        // "$N\r\n" + N bytes + "\r\n"
        var got = 0
        var need = -1
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, $0.count - got, 0) }
            guard n > 0 else { throw BenchError("redis closed the connection") }
            got += n
            if need < 0, let crlf = buf[0..<got].firstIndex(of: 0x0A) {
                guard buf[0] == UInt8(ascii: "$"), let len = Int(String(decoding: buf[1..<(crlf - 1)], as: UTF8.self)) else { return false }
                need = crlf + 1 + len + 2
            }
            if need >= 0 && got >= need { return true }
        }
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ s: String) { description = s }
}

final class Collector: @unchecked Sendable {
    private let lock = NSLock()
    private var latencies: [UInt64] = []
    private var errors = 0
    private var failures: [String] = []

    func add(_ l: [UInt64], errors e: Int, failure: String?) {
        lock.withLock {
            latencies += l
            errors += e
            if let failure { failures.append(failure) }
        }
    }

    func result() -> ([UInt64], Int, [String]) { lock.withLock { (latencies, errors, failures) } }
}

func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// CPU time (user + system) of a process in microseconds, from /proc.
func processCPUMicros(_ pid: Int32) -> Double? {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return nil }
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    guard fields.count > 13, let u = Double(fields[11]), let s = Double(fields[12]) else { return nil }
    return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK))) * 1_000_000
}

func processMemoryKiB(_ pid: Int32, _ field: String) -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in status.split(separator: "\n") where line.hasPrefix(field + ":") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    }
    return nil
}

/// `also`: more daemons' sockets; the connections go round the sockets (two
/// instances on one shared database take half each).
func runLoad(_ w: any Workload, socket: String, also: [String] = [], connections: Int, seconds: Double, serverPID: Int32?) -> LoadResult {
    let sockets = [socket] + also
    let collector = Collector()
    let deadline = monotonicNanos() + UInt64(seconds * 1e9)
    let cpuBefore = serverPID.flatMap(processCPUMicros)
    let start = monotonicNanos()
    let group = DispatchGroup()
    for t in 0..<connections {
        group.enter()
        Thread.detachNewThread {
            defer { group.leave() }
            var lat: [UInt64] = []
            lat.reserveCapacity(200_000)
            var errors = 0
            var conn: any BenchConnection
            do { conn = try w.makeConnection(socket: sockets[t % sockets.count]) } catch {
                collector.add([], errors: 1, failure: "\(error)")
                return
            }
            var i = t * 1_000_000
            while true {
                let t0 = monotonicNanos()
                if t0 >= deadline { break }
                do {
                    if try !conn.roundTrip(i) { errors += 1 }
                } catch {
                    errors += 1
                    collector.add(lat, errors: errors, failure: "\(error)")
                    return
                }
                lat.append(monotonicNanos() - t0)
                i += 1
            }
            collector.add(lat, errors: errors, failure: nil)
        }
    }
    group.wait()
    let elapsed = Double(monotonicNanos() - start) / 1e9
    let cpuAfter = serverPID.flatMap(processCPUMicros)
    var (lat, errors, _) = collector.result()
    lat.sort()
    func pct(_ p: Double) -> Double {
        guard !lat.isEmpty else { return 0 }
        return Double(lat[min(lat.count - 1, Int(Double(lat.count) * p))]) / 1000
    }
    var cpu: Double?
    if let a = cpuBefore, let b = cpuAfter, !lat.isEmpty { cpu = (b - a) / Double(lat.count) }
    return LoadResult(requests: lat.count, errors: errors, seconds: elapsed, rps: Double(lat.count) / elapsed,
                      p50us: pct(0.5), p99us: pct(0.99), p999us: pct(0.999), cpuUsPerRequest: cpu)
}
