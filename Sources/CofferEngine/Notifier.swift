public import CofferCore
import Foundation
import Logging
import Synchronization

/// Runs notification hooks off the request path: each command gets one JSON
/// document on stdin, and is killed after `timeout`. A failing or hanging hook never
/// blocks a request; its last failure shows in health until a run succeeds.
public final class Notifier: Sendable {
    let timeout: Duration
    let logger: Logger
    /// Per command (its argv): its last failure, cleared by its next success.
    let state = Mutex<(failures: [String: String], running: Int)>(([:], 0))
    static let maxRunning = 16

    init(timeout: Duration = .seconds(10), logger: Logger) {
        self.timeout = timeout
        self.logger = logger
    }

    /// "off" (no hook configured), "ok", or "failing: REASON".
    public func status(configured: Bool) -> String {
        guard configured else { return "off" }
        return state.withLock { $0.failures.values.sorted().first.map { "failing: \($0)" } ?? "ok" }
    }

    func post(_ commands: [[String]], _ document: [UInt8]) {
        for argv in commands {
            let admitted = state.withLock { s -> Bool in
                guard s.running < Self.maxRunning else { s.failures[argv.joined(separator: " ")] = "too many hooks still running"; return false }
                s.running += 1
                return true
            }
            guard admitted else { continue }
            Task.detached { [self] in
                let failure = await self.run(argv, document)
                self.state.withLock { s in
                    s.running -= 1
                    s.failures[argv.joined(separator: " ")] = failure
                }
                if let failure { self.logger.warning("notify hook failed", metadata: ["command": "\(argv[0])", "error": "\(failure)"]) }
            }
        }
    }

    func run(_ argv: [String], _ document: [UInt8]) async -> String? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: argv[0])
        p.arguments = Array(argv.dropFirst())
        p.environment = ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]  // nothing of the daemon's environment
        let input = Pipe()
        p.standardInput = input
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        do { try p.run() } catch { return "cannot start \(argv[0])" }
        let writer = input.fileHandleForWriting
        try? writer.write(contentsOf: Data(document))
        try? writer.close()
        let deadline = ContinuousClock.now + timeout
        while p.isRunning {
            if ContinuousClock.now >= deadline {
                p.terminate()
                kill(p.processIdentifier, SIGKILL)
                return "\(argv[0]) timed out"
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return p.terminationStatus == 0 ? nil : "\(argv[0]) exited with \(p.terminationStatus)"
    }
}
