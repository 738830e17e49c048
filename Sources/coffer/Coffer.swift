import ArgumentParser
import CofferAPI
import CofferClient
import CofferCore
import Foundation

/// Exit codes (README, "CLI exit codes").
enum Exit {
    static let ok: Int32 = 0
    static let failure: Int32 = 1
    static let cannotConnect: Int32 = 3
    static let notFound: Int32 = 4
    static let denied: Int32 = 5
    static let conflict: Int32 = 6
    static let invalid: Int32 = 7
    static let unavailable: Int32 = 8
}

@main
struct Coffer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coffer",
        abstract: "Client for cofferd, the Coffer secrets broker.",
        discussion: """
            Talks to cofferd over its Unix socket: --socket, else COFFER_SOCKET, else \
            ./.coffer/coffer.sock when it exists (dev mode), else /run/coffer/coffer.sock.
            Secret values are read from stdin or --file, never from the command line.
            """,
        version: CofferClientInfo.version,
        subcommands: [SecretCommand.self, TokenCommand.self, PolicyCommand.self, AuditCommand.self, KeysCommand.self, UnsealCommand.self, LoginCommand.self, LogoutCommand.self, ElevateCommand.self, RunCommand.self, BuildCommand.self, StatusCommand.self]
    )

    /// Global options may come before the subcommand (`coffer --format json secret get x`):
    /// they are moved behind it, where every leaf command's GlobalOptions parses them.
    static func main() {
        main(hoistGlobalOptions(Array(CommandLine.arguments.dropFirst())))
    }

    static func hoistGlobalOptions(_ args: [String]) -> [String] {
        let globals = ["--socket", "--format", "--token-file"]
        var moved: [String] = []
        var rest: [String] = []
        var i = 0
        while i < args.count {
            let a = args[i]
            if globals.contains(a), i + 1 < args.count {
                moved += [a, args[i + 1]]
                i += 2
            } else if globals.contains(where: { a.hasPrefix($0 + "=") }) {
                moved.append(a)
                i += 1
            } else {
                rest = Array(args[i...])
                break
            }
        }
        // before a `--` (coffer run … -- COMMAND): what follows it is the command's
        if let dd = rest.firstIndex(of: "--") { return Array(rest[..<dd]) + moved + Array(rest[dd...]) }
        return rest + moved
    }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: "Path of cofferd's Unix socket (env COFFER_SOCKET).")
    var socket: String?

    @Option(name: .long, help: "Output format: text or json.")
    var format: OutputFormat = .text

    @Option(name: .long, help: "Read a token from this file (env COFFER_TOKEN_FILE; or COFFER_TOKEN).")
    var tokenFile: String?

    /// --socket, COFFER_SOCKET, a dev daemon's socket in ./.coffer, or the installed
    /// one. A discovered ./.coffer socket is used only when it and its directory
    /// belong to the caller (or root) and the directory is not group/world-writable:
    /// anyone could plant a socket in a shared directory and collect what is sent.
    /// The path, and for a discovered socket the uids its server may run as.
    func resolveSocket() throws -> (path: String, trusted: Set<UInt32>?) {
        if let socket { return (socket, nil) }
        if let env = ProcessInfo.processInfo.environment["COFFER_SOCKET"], !env.isEmpty { return (env, nil) }
        let dir = FileManager.default.currentDirectoryPath + "/.coffer"
        let local = dir + "/coffer.sock"
        var st = stat()
        guard lstat(local, &st) == 0 else { return ("/run/coffer/coffer.sock", nil) }
        let me = getuid()
        var dirStat = stat()
        let problem: String?
        if (st.st_mode & S_IFMT) != S_IFSOCK {
            problem = "it is not a socket"
        } else if st.st_uid != me && st.st_uid != 0 {
            problem = "it belongs to uid \(st.st_uid), not to you or root"
        } else if lstat(dir, &dirStat) != 0 || (dirStat.st_mode & S_IFMT) != S_IFDIR {
            problem = "\(dir) is not a directory"
        } else if dirStat.st_uid != me && dirStat.st_uid != 0 {
            problem = "\(dir) belongs to uid \(dirStat.st_uid), not to you or root"
        } else if dirStat.st_mode & 0o022 != 0 {
            problem = "\(dir) is writable by others (mode \(String(dirStat.st_mode & 0o7777, radix: 8)))"
        } else {
            problem = nil
        }
        if let problem {
            throw CofferError(.invalidParameter, "refusing to use the socket \(local): \(problem)",
                              hint: "a socket someone else planted would receive your secrets and token; pass --socket or COFFER_SOCKET explicitly")
        }
        // the path may be swapped after this check: the server's own uid is checked too
        return (local, [me, 0])
    }

    func client() throws -> CofferClient {
        let (path, trusted) = try resolveSocket()
        return CofferClient(socketPath: path, token: try token(), trustedServerUIDs: trusted)
    }

    /// The token, never from argv: --token-file, COFFER_TOKEN_FILE, then COFFER_TOKEN.
    func token() throws -> String? {
        let env = ProcessInfo.processInfo.environment
        if let file = tokenFile ?? env["COFFER_TOKEN_FILE"].flatMap({ $0.isEmpty ? nil : $0 }) {
            // As ssh does for private keys: a token file anyone but its owner can read
            // or change is refused.
            var st = stat()
            if stat(file, &st) == 0, st.st_mode & 0o077 != 0 {
                throw CofferError(.invalidParameter, "the token file \(file) is readable by others (mode \(String(st.st_mode & 0o7777, radix: 8)))",
                                  hint: "chmod 600 \(file)")
            }
            guard let data = FileManager.default.contents(atPath: file), let text = String(data: data, encoding: .utf8) else {
                throw CofferError(.invalidParameter, "cannot read the token file \(file)")
            }
            let t = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !t.isEmpty else { throw CofferError(.invalidParameter, "the token file \(file) is empty") }
            return t
        }
        if let t = env["COFFER_TOKEN"], !t.isEmpty { return t.trimmingCharacters(in: .whitespacesAndNewlines) }
        return nil
    }
}

/// Runs a command body and turns every failure into `coffer: error:` + hint + exit code.
func runReporting(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as APIError {
        report(e.message, hint: e.hint)
        switch e.status {
        case 401, 403: throw ExitCode(Exit.denied)
        case 404: throw ExitCode(Exit.notFound)
        case 409: throw ExitCode(Exit.conflict)
        case 400..<500: throw ExitCode(Exit.invalid)
        case 503: throw ExitCode(Exit.unavailable)
        default: throw ExitCode(Exit.failure)
        }
    } catch let e as ClientError {
        report(e.message, hint: e.hint)
        throw ExitCode(e.kind == .connect ? Exit.cannotConnect : Exit.failure)
    } catch let e as CofferError {
        report(e.message, hint: e.hint)
        throw ExitCode(Exit.invalid)
    } catch let e as RunFailure {
        report(e.message, hint: e.hint)
        throw ExitCode(e.status)
    } catch let e as ExitCode {
        throw e
    }
}

func report(_ message: String, hint: String?) {
    var text = "coffer: error: \(message)\n"
    if let hint { text += "coffer: hint: \(hint)\n" }
    writeStderr(text)
}

func writeStderr(_ s: String) {
    let bytes = Array(s.utf8)
    _ = bytes.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
}

func writeStdout(_ bytes: [UInt8]) throws {
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

func printJSON<T: Encodable>(_ value: T) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    try writeStdout(Array(e.encode(value)) + [0x0A])
}

func printLine(_ s: String) throws { try writeStdout(Array((s + "\n").utf8)) }

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show whether cofferd is up, and who you are to it.")

    @OptionGroup var global: GlobalOptions

    func run() throws {
        try runReporting {
            let client = try global.client()
            let s = try client.status()
            if global.format == .json { return try printJSON(s) }
            try printLine("""
                cofferd:       \(s.version)\(s.devMode ? " (dev mode)" : "")
                unlocked:      \(s.unlocked)\(s.sealed ? "  (sealed: an admin unseals it with coffer unseal)" : "")
                uptime:        \(s.uptimeSeconds)s
                secrets:       \(s.secrets.map(String.init) ?? "-")
                root key id:   \(s.keyID ?? "-")
                data key id:   \(s.activeKeyID ?? "-")
                durability:    \(s.durability)
                max value:     \(s.maxValueBytes) bytes
                max versions:  \(s.maxVersions)
                you:           uid \(s.caller.uid)\(s.caller.user.map { " (\($0))" } ?? ""), gid \(s.caller.gid), pid \(s.caller.pid)
                access:        \(s.decision)
                """)
        }
    }
}
