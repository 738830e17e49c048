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
            return e.code == .notFound ? notFound : invalid
        case let e as RunFailure:
            report(e.message, hint: e.hint)
            return e.status
        default:
            return nil
        }
    }
}

public func report(_ message: String, hint: String?) {
    var text = "coffer: error: \(printable(message))\n"
    if let hint { text += "coffer: hint: \(printable(hint))\n" }
    writeStderr(text)
}

/// Text from elsewhere (cofferd's messages) as one line without control characters:
/// no forged lines, no terminal escapes.
public func printable(_ s: String) -> String {
    var out = ""
    for u in s.unicodeScalars {
        if u.value < 0x20 || u.value == 0x7F || (0x80...0x9F).contains(u.value) { out += "?" } else { out.unicodeScalars.append(u) }
    }
    return out
}

/// Descriptors 0, 1 and 2 open (on /dev/null when closed): otherwise the first socket
/// opened would become stdout, and a secret printed "to stdout" would go to cofferd.
public func ensureStandardDescriptors() {
    for fd: Int32 in 0...2 where fcntl(fd, F_GETFD) == -1 && errno == EBADF {
        let n = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY)
        if n != fd {
            // the lowest free descriptor is this one; anything else cannot hold
            report("cannot open /dev/null for descriptor \(fd)", hint: nil)
            exit(Exit.failure)
        }
    }
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
