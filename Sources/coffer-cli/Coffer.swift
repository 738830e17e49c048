import ArgumentParser
import CofferAPI
import CofferClient
import CofferCore
import Foundation

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
        subcommands: [SecretCommand.self, TokenCommand.self, PolicyCommand.self, AuditCommand.self, KeysCommand.self, OperatorCommand.self, UnsealCommand.self, LoginCommand.self, LogoutCommand.self, ElevateCommand.self, SSHCommand.self, JWKSCommand.self, RunCommand.self, BuildCommand.self, PodmanDriverCommand.self, InjectCommand.self, StatusCommand.self]
    )

    /// Global options may come before the subcommand: FastRun.hoistGlobalOptions.
    /// (`coffer run` and `coffer build` are parsed by the lean `coffer` front first:
    /// what reaches this binary is what the front hands on.)
    ///
    /// `--version` is the root's alone (`coffer --version`): given to ArgumentParser as
    /// the command's version it would also answer `coffer secret destroy P --version 1`
    /// by printing the version and destroying nothing. Usage errors are reported as
    /// every other error is: `coffer: error:` on stderr, exit 64.
    static func main() {
        ensureStandardDescriptors()
        let args = FastRun.hoistGlobalOptions(Array(CommandLine.arguments.dropFirst()))
        if args == ["--version"] {
            print(CofferClientInfo.version)
            return
        }
        do {
            var command = try parseAsRoot(args)
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .success || error is ExitCode { exit(withError: error) }
            var message = fullMessage(for: error)
            if message.hasPrefix("Error: ") { message.removeFirst("Error: ".count) }
            var lines = message.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            let first = lines.isEmpty ? "invalid usage" : lines.removeFirst()
            let rest = lines.joined(separator: "\n").trimmingCharacters(in: .whitespacesAndNewlines)
            FileHandle.standardError.write(Data(("coffer: error: \(first)\n" + (rest.isEmpty ? "" : "coffer: hint: \(rest)\n")).utf8))
            Foundation.exit(code.rawValue)
        }
    }
}

extension OutputFormat: ExpressibleByArgument {}

struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: "Path of cofferd's Unix socket (env COFFER_SOCKET).")
    var socket: String?

    @Option(name: .long, help: "Output format: text or json.")
    var format: OutputFormat = .text

    @Option(name: .long, help: "Read a token from this file (env COFFER_TOKEN_FILE; or COFFER_TOKEN).")
    var tokenFile: String?

    /// The same, apart from how it was parsed.
    var settings: ClientSettings { ClientSettings(socket: socket, format: format, tokenFile: tokenFile) }

    func resolveSocket() throws -> (path: String, trusted: Set<UInt32>?) { try settings.resolveSocket() }

    func client() throws -> CofferClient {
        let (path, trusted) = try settings.resolveSocket()
        return CofferClient(socketPath: path, token: try settings.token(), trustedServerUIDs: trusted)
    }
}

/// Runs a command body and turns every failure into `coffer: error:` + hint + exit code.
func runReporting(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as ExitCode {
        throw e
    } catch {
        guard let code = Exit.reporting(error) else { throw error }
        throw ExitCode(code)
    }
}

func printJSON<T: Encodable>(_ value: T) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    try writeStdout(Array(e.encode(value)) + [0x0A])
}


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
                socket:        \(client.http.socketPath)
                unlocked:      \(s.unlocked)\(s.sealed ? "  (sealed: an admin unseals it with coffer operator unseal)" : "")
                held by:       \(s.unseal ?? "keyfile")\(s.threshold.map { "  (\(s.sharesGiven ?? 0) of \($0) shares given)" } ?? "")\(s.rotation.map { "\nrotation:      \($0.done) of \($0.total) versions re-wrapped under \($0.targetKeyID)" } ?? "")\(s.records.map { "\nrecords:       \($0)" } ?? "")
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
