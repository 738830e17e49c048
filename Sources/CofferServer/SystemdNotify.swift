import Foundation
import Glibc
import Logging
import ServiceLifecycle

/// systemd's notify protocol, spoken directly (no libsystemd): one datagram per
/// state to $NOTIFY_SOCKET (a path, or an abstract name after '@'). Nothing is sent
/// when the variable is unset (not under systemd, or Type=simple).
public enum SystemdNotify {
    public static var socketPath: String? {
        guard let p = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"], !p.isEmpty, p.utf8.count < 108 else { return nil }
        return p
    }

    @discardableResult
    public static func send(_ state: String) -> Bool {
        guard let path = socketPath else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }  // abstract namespace
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let payload = Array(state.utf8)
        let sent = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, payload, payload.count, Int32(MSG_NOSIGNAL), $0, length) }
        }
        return sent == payload.count
    }

    /// READY=1 with a status line and this process as the main one.
    public static func ready(_ status: String) { send("READY=1\nSTATUS=\(status)\nMAINPID=\(getpid())") }

    /// RELOADING=1 with the monotonic time systemd asks for (Type=notify-reload).
    public static func reloading() {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        send("RELOADING=1\nMONOTONIC_USEC=\(Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1000)")
    }

    /// The watchdog interval systemd expects pings within (WatchdogSec), if any and
    /// if meant for this process.
    static var watchdogInterval: Duration? {
        let env = ProcessInfo.processInfo.environment
        guard let usec = env["WATCHDOG_USEC"].flatMap({ Int64($0) }), usec > 0 else { return nil }
        if let pid = env["WATCHDOG_PID"].flatMap({ Int32($0) }), pid != getpid() { return nil }
        return .microseconds(usec / 2)
    }
}

/// Under systemd: watchdog pings at half the interval while serving, and STOPPING=1
/// as soon as a graceful shutdown begins. (READY=1 is sent when the socket is bound
/// and the engine open: CofferServer's onReady.)
public struct SystemdNotifier: Service {
    public init() {}

    public func run() async throws {
        // never return before shutdown: a service of the group that ends ends the daemon
        guard SystemdNotify.socketPath != nil else {
            try? await gracefulShutdown()
            return
        }
        await withGracefulShutdownHandler {
            guard let interval = SystemdNotify.watchdogInterval else {
                try? await gracefulShutdown()
                return
            }
            while !Task.isShuttingDownGracefully && !Task.isCancelled {
                SystemdNotify.send("WATCHDOG=1")
                try? await Task.sleep(for: interval)
            }
        } onGracefulShutdown: {
            SystemdNotify.send("STOPPING=1")
        }
    }
}
