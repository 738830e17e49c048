import ArgumentParser
import CofferAPI
import CofferClient
import CofferCore
import Foundation

/// Where `coffer login` keeps the session token: $XDG_CONFIG_HOME/coffer/session or
/// ~/.config/coffer/session (0600 in a 0700 directory).
func defaultSessionFile() -> String {
    let env = ProcessInfo.processInfo.environment
    let base = env["XDG_CONFIG_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? (NSHomeDirectory() + "/.config")
    return base + "/coffer/session"
}

struct LoginCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "login",
        abstract: "Sign in with your own account through PAM; keeps a session token (default 8 h) for elevation.",
        discussion: """
            The account is the one you run as (cofferd takes it from the socket's peer uid). Each prompt PAM asks \
            (a password, then a code if the stack wants one) is shown here; secret prompts do not echo. With \
            --password-stdin, or when stdin is not a terminal, the answers are read from stdin one line each. \
            Answers are never taken from arguments or the environment.
            """)
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Read the answers from stdin, one line per prompt.") var passwordStdin = false
    @Option(help: "Where to keep the session token (default: ~/.config/coffer/session).") var output: String?

    func run() throws {
        try runReporting {
            let path = output ?? defaultSessionFile()
            let (socket, trusted) = try global.resolveSocket()
            let client = CofferClient(socketPath: socket, token: nil, trustedServerUIDs: trusted)  // a sign-in carries no token
            let fromStdin = passwordStdin || isatty(STDIN_FILENO) == 0
            var step = try client.loginStart()
            var rounds = 0
            while let id = step.loginID, let prompts = step.prompts {
                rounds += 1
                guard rounds <= 16 else { throw CofferError(.invalidParameter, "the sign-in asked too many times") }
                var answers: [String] = []
                for p in prompts {
                    if !p.needsAnswer {
                        writeStderr(p.text + "\n")
                        continue
                    }
                    guard let a = fromStdin ? readLine(strippingNewline: true) : Terminal.ask(p.text, echo: p.style == "text") else {
                        throw CofferError(.invalidParameter, "no answer for the prompt '\(p.text.trimmingCharacters(in: .whitespaces))'",
                                          hint: fromStdin ? "give one line per prompt on stdin" : "answer on the terminal")
                    }
                    answers.append(a)
                }
                step = try client.loginAnswer(id: id, answers: answers)
            }
            guard let token = step.token, let info = step.info else { throw CofferError(.invalidParameter, "cofferd gave no session") }
            try SessionFile.write(token, to: path)
            if global.format == .json { return try printJSON(info) }
            try printLine("signed in as \(info.createdBy.user ?? "uid \(info.createdBy.uid)"); session until \(info.expiresAt) in \(path)")
        }
    }
}

struct LogoutCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logout", abstract: "End the session coffer login started, and remove its file.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "The session file (default: ~/.config/coffer/session).") var session: String?

    func run() throws {
        try runReporting {
            let path = session ?? defaultSessionFile()
            guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
                throw CofferError(.invalidParameter, "no session at \(path)", hint: "coffer login first")
            }
            let (socket, trusted) = try global.resolveSocket()
            let client = CofferClient(socketPath: socket, token: text.trimmingCharacters(in: .whitespacesAndNewlines), trustedServerUIDs: trusted)
            let r: RevokeResponse
            do { r = try client.logout() } catch let e as APIError where e.status == 401 {
                unlink(path)  // already over (expired, revoked): nothing to end
                try printLine("the session had already ended; removed \(path)")
                return
            }
            unlink(path)
            if global.format == .json { return try printJSON(r) }
            try printLine("signed out (\(r.revoked.count) token\(r.revoked.count == 1 ? "" : "s") revoked)")
        }
    }
}

enum SessionFile {
    /// Replaces the file atomically: a new 0600 file beside it, then rename.
    static func write(_ token: String, to path: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let tmp = dir + "/.session-" + String(getpid())
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CofferError(.invalidParameter, "cannot create \(tmp): \(String(cString: strerror(errno)))") }
        let bytes = Array((token + "\n").utf8)
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        let ok = n == bytes.count && fsync(fd) == 0
        close(fd)
        guard ok, rename(tmp, path) == 0 else {
            unlink(tmp)
            throw CofferError(.invalidParameter, "cannot write the session file \(path)")
        }
    }
}

/// A prompt on the controlling terminal, echo off for secrets.
enum Terminal {
    static func ask(_ prompt: String, echo: Bool) -> String? {
        let fd = open("/dev/tty", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        _ = prompt.withCString { Glibc.write(fd, $0, strlen($0)) }
        var saved = termios()
        let isTTY = tcgetattr(fd, &saved) == 0
        if isTTY && !echo {
            var quiet = saved
            quiet.c_lflag &= ~tcflag_t(ECHO)
            tcsetattr(fd, TCSAFLUSH, &quiet)
        }
        defer {
            if isTTY && !echo {
                tcsetattr(fd, TCSAFLUSH, &saved)
                _ = Glibc.write(fd, "\n", 1)
            }
        }
        var line: [UInt8] = []
        var c: UInt8 = 0
        while read(fd, &c, 1) == 1 {
            if c == 0x0A { return String(decoding: line, as: UTF8.self) }
            line.append(c)
            if line.count > 1024 { return nil }
        }
        return line.isEmpty ? nil : String(decoding: line, as: UTF8.self)
    }
}
