import CofferCore
#if canImport(Glibc)
import Glibc
#endif

/// Exit codes (README, "CLI exit codes").
public enum Exit {
    public static let ok: Int32 = 0
    public static let failure: Int32 = 1
    public static let cannotConnect: Int32 = 3
    public static let notFound: Int32 = 4
    public static let denied: Int32 = 5
    public static let conflict: Int32 = 6
    public static let invalid: Int32 = 7
    public static let unavailable: Int32 = 8

    /// The exit code of a failure, having said it on stderr (`coffer: error:` + hint);
    /// nil for an error this does not know (the caller reports it).
    public static func reporting(_ error: any Error) -> Int32? {
        switch error {
        case let e as APIError:
            report(e.message, hint: e.hint)
            switch e.status {
            case 401, 403: return denied
            case 404: return notFound
            case 409: return conflict
            case 400..<500: return invalid
            case 503: return unavailable
            default: return failure
            }
        case let e as ClientError:
            report(e.message, hint: e.hint)
            return e.kind == .connect ? cannotConnect : failure
        case let e as CofferError:
            report(e.message, hint: e.hint)
            return invalid
        case let e as RunFailure:
            report(e.message, hint: e.hint)
            return e.status
        default:
            return nil
        }
    }
}

public func report(_ message: String, hint: String?) {
    var text = "coffer: error: \(message)\n"
    if let hint { text += "coffer: hint: \(hint)\n" }
    writeStderr(text)
}

public func writeStderr(_ s: String) {
    let bytes = Array(s.utf8)
    _ = bytes.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
}

public func writeStdout(_ bytes: [UInt8]) throws(ClientError) {
    var off = 0
    while off < bytes.count {
        let n = bytes.withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress! + off, $0.count - off) }
        if n < 0 {
            if errno == EINTR { continue }
            throw ClientError(kind: .io, message: "cannot write to stdout: \(String(cString: strerror(errno)))")
        }
        off += n
    }
}

public func printLine(_ s: String) throws(ClientError) { try writeStdout(Array((s + "\n").utf8)) }

/// A failure with its own exit status (127: command not found, 126: not executable, 124: ttl).
public struct RunFailure: Error, Sendable {
    public var status: Int32
    public var message: String
    public var hint: String?

    public init(status: Int32, message: String, hint: String?) {
        self.status = status
        self.message = message
        self.hint = hint
    }
}
