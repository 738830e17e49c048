import CofferCore
#if canImport(Glibc)
import Glibc
#endif

public enum OutputFormat: String, CaseIterable, Sendable {
    case text, json
}

/// How a command reaches cofferd: --socket, --format, --token-file as plain values
/// (ArgumentParser's GlobalOptions fills them in coffer-cli, FastRun in the lean front).
public struct ClientSettings: Equatable, Sendable {
    public var socket: String?
    public var format: OutputFormat
    public var tokenFile: String?

    public init(socket: String? = nil, format: OutputFormat = .text, tokenFile: String? = nil) {
        self.socket = socket
        self.format = format
        self.tokenFile = tokenFile
    }

    /// --socket, COFFER_SOCKET, a dev daemon's socket in `.coffer/` of the current
    /// directory or the nearest parent that has one (as git finds its repository: a
    /// command run from a subdirectory of a dev checkout reaches that checkout's
    /// daemon), or the installed one. A discovered socket is used only when it and its
    /// directory belong to the caller (or root) and the directory is not
    /// group/world-writable: anyone could plant a socket in a shared directory and
    /// collect what is sent. The path, and for a discovered socket the uids its server
    /// may run as.
    public func resolveSocket() throws(CofferError) -> (path: String, trusted: Set<UInt32>?) {
        if let socket { return (socket, nil) }
        if let env = Environment.get("COFFER_SOCKET"), !env.isEmpty { return (env, nil) }
        var st = stat()
        let cwd = Environment.currentDirectory()
        var base = cwd
        var found: String?
        let me = getuid()
        while true {
            let candidate = (base == "/" ? "" : base) + "/.coffer/coffer.sock"
            if lstat(candidate, &st) == 0 {
                // above the working directory, another user's .coffer/ is passed over (not
                // refused): anyone may make /tmp/.coffer, and that must not stop every
                // command run below /tmp
                var d = stat()
                let foreign = (st.st_uid != me && st.st_uid != 0)
                    || (lstat(String(candidate.dropLast("/coffer.sock".count)), &d) == 0 && d.st_uid != me && d.st_uid != 0)
                if base == cwd || !foreign { found = candidate; break }
            }
            guard base != "/", let slash = base.lastIndex(of: "/") else { break }
            base = slash == base.startIndex ? "/" : String(base[..<slash])
        }
        guard let local = found else { return ("/run/coffer/coffer.sock", nil) }
        _ = lstat(local, &st)
        let dir = String(local.dropLast("/coffer.sock".count))
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

    /// The HTTP connection to cofferd, with the token (if any) attached.
    public func http() throws(CofferError) -> UnixHTTPClient {
        let (path, trusted) = try resolveSocket()
        let c = UnixHTTPClient(socketPath: path)
        c.token = try token()
        c.trustedServerUIDs = trusted
        return c
    }

    /// The token, never from argv: --token-file, COFFER_TOKEN_FILE, then COFFER_TOKEN.
    public func token() throws(CofferError) -> String? {
        if let file = tokenFile ?? Environment.get("COFFER_TOKEN_FILE").flatMap({ $0.isEmpty ? nil : $0 }) {
            // As ssh does for private keys: a token file anyone but its owner can read
            // or change is refused.
            var st = stat()
            if stat(file, &st) == 0, st.st_mode & 0o077 != 0 {
                throw CofferError(.invalidParameter, "the token file \(file) is readable by others (mode \(String(st.st_mode & 0o7777, radix: 8)))",
                                  hint: "chmod 600 \(file)")
            }
            guard let data = Environment.readFile(file, limit: 1 << 20), let text = String(validating: data, as: UTF8.self) else {
                throw CofferError(.invalidParameter, "cannot read the token file \(file)")
            }
            let t = Environment.trimmingWhitespace(text)
            guard !t.isEmpty else { throw CofferError(.invalidParameter, "the token file \(file) is empty") }
            return try Self.checked(t)
        }
        if let t = Environment.get("COFFER_TOKEN"), !t.isEmpty { return try Self.checked(Environment.trimmingWhitespace(t)) }
        return nil
    }

    /// A token goes into a request header: printable ASCII without spaces only.
    static func checked(_ token: String) throws(CofferError) -> String {
        guard token.utf8.count <= 4096, token.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw CofferError(.invalidParameter, "the token has characters no token has (spaces, control characters, non-ASCII)")
        }
        return token
    }
}

/// The process's surroundings, read without Foundation.
public enum Environment {
    public static func get(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }

    /// Every variable (of a duplicate name the first, as getenv reads it).
    public static func all() -> [String: String] {
        var out: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "="), out[String(s[..<eq])] == nil { out[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            p += 1
        }
        return out
    }

    /// `environment` (a changed copy of `all()`) as the entries for execve, with every
    /// entry it leaves as it was passed on byte for byte: a name or value that is not
    /// UTF-8 (which `all()` can only hold replaced) reaches the command unchanged.
    public static func entries(_ environment: [String: String]) -> [[CChar]] {
        var out: [[CChar]] = []
        var seen = Set<String>()
        var p = environ
        while let entry = p.pointee {
            p += 1
            let raw = Array(UnsafeBufferPointer(start: entry, count: strlen(entry) + 1))
            let bytes = raw.dropLast().map { UInt8(bitPattern: $0) }
            guard let eq = bytes.firstIndex(of: UInt8(ascii: "=")) else { continue }
            // a name that is not UTF-8 is none that coffer sets or removes (`all()` holds it replaced)
            guard let name = String(validating: bytes[..<eq], as: UTF8.self) else {
                if seen.insert(String(decoding: bytes[..<eq], as: UTF8.self)).inserted { out.append(raw) }
                continue
            }
            guard seen.insert(name).inserted, let value = environment[name] else { continue }
            out.append(value == String(decoding: bytes[(eq + 1)...], as: UTF8.self) ? raw : Array("\(name)=\(value)".utf8CString))
        }
        for (name, value) in environment where !seen.contains(name) { out.append(Array("\(name)=\(value)".utf8CString)) }
        return out
    }

    public static func currentDirectory() -> String {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buf, buf.count) != nil else { return "." }
        return buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// A regular file's bytes, at most `limit` of them (nil: unreadable, not a file, or larger).
    public static func readFile(_ path: String, limit: Int) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                return nil
            }
            if n == 0 { return out }
            out += buf[0..<n]
            if out.count > limit { return nil }
        }
    }

    public static func trimmingWhitespace(_ s: String) -> String {
        let u = s.utf8
        let ws: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
        var a = u.startIndex, b = u.endIndex
        while a < b, ws(u[a]) { a = u.index(after: a) }
        while b > a, ws(u[u.index(before: b)]) { b = u.index(before: b) }
        return String(s[a..<b])
    }
}
