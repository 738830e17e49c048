#if canImport(Glibc)
import Glibc
#endif

/// Where the store lives: the embedded SQLite file (the default), or a PostgreSQL
/// database that several cofferd instances share (README, "Many hosts").
public enum DatabaseLocation: Sendable, Equatable, CustomStringConvertible {
    case sqlite(path: String)
    case postgres(PostgresTarget)

    /// For messages and logs: never a password (none is ever part of a target).
    public var description: String {
        switch self {
        case .sqlite(let path): path
        case .postgres(let t): t.description
        }
    }

    public var isPostgres: Bool { if case .postgres = self { true } else { false } }
}

/// A PostgreSQL server and database, as `[storage.postgres]` names it. The password
/// (when the server asks for one) is read from `password_file` at connect time, so
/// it is in no config value, URL, argv or log line.
public struct PostgresTarget: Sendable, Equatable, CustomStringConvertible {
    public enum Endpoint: Sendable, Equatable {
        case tcp(host: String, port: Int)
        /// The socket file itself (`.../.s.PGSQL.5432`).
        case socket(path: String)
    }

    public enum TLS: String, Sendable, Equatable {
        /// Plain connections (a Unix socket, or a trusted network).
        case disable
        /// TLS required, the server's certificate not checked (as libpq's sslmode=require).
        case require
        /// TLS required, the certificate checked against `ca_file` (or the system
        /// roots) and the host name (sslmode=verify-full).
        case verifyFull = "verify-full"
    }

    public var endpoint: Endpoint
    public var user: String
    public var database: String
    public var passwordFile: String?
    public var tls: TLS
    public var caFile: String?
    /// Connections this daemon keeps open; each request holds one for its transaction.
    public var poolSize: Int
    /// How stale what this daemon caches (token records, sealed rows, keys) may be
    /// when another instance changes them: 0 checks the shared generation on every
    /// request that would use a cache (a change acknowledged on one host is seen on
    /// the next request anywhere); more relies on LISTEN/NOTIFY and checks at most
    /// this often (the bound should a notification be lost).
    public var maxStalenessMillis: Int = 0
    /// The schema Coffer's tables live in: every connection sets its search_path to
    /// it (a search_path set on the database or role cannot point Coffer elsewhere).
    public var schema: String = "public"

    public init(endpoint: Endpoint, user: String, database: String, passwordFile: String? = nil, tls: TLS = .disable,
                caFile: String? = nil, poolSize: Int = 8) {
        self.endpoint = endpoint
        self.user = user
        self.database = database
        self.passwordFile = passwordFile
        self.tls = tls
        self.caFile = caFile
        self.poolSize = poolSize
    }

    public var description: String {
        switch endpoint {
        case .tcp(let host, let port): "postgresql://\(user)@\(host):\(port)/\(database)"
        case .socket(let path): "postgresql://\(user)@/\(database)?host=\(path)"
        }
    }

    /// The socket file for a socket path that names the directory (as libpq's host=/dir).
    public static func socketFile(_ path: String, port: Int = 5432) -> String {
        var st = stat()
        if stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR {
            return (path.hasSuffix("/") ? path : path + "/") + ".s.PGSQL.\(port)"
        }
        return path
    }

    /// A user or database name: no control characters (a NUL would be cut off on the
    /// wire, and names are shown in messages), at most 63 bytes (PostgreSQL's limit).
    public static func validName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 63 && !s.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }
    }

    /// %XX decoding for the parts of a URL (CofferCore has no Foundation).
    static func percentDecoded(_ s: Substring) -> String? {
        var out: [UInt8] = []
        var it = Array(s.utf8)[...]
        while let b = it.popFirst() {
            if b == UInt8(ascii: "%") {
                guard it.count >= 2, let v = UInt8(String(decoding: it.prefix(2), as: UTF8.self), radix: 16) else { return nil }
                out.append(v)
                it = it.dropFirst(2)
            } else {
                out.append(b)
            }
        }
        return String(validating: out, as: UTF8.self)
    }

    /// Parses `postgresql://user@host:port/database?sslmode=...&sslrootcert=...`, or with
    /// `host=/dir` for a socket directory (libpq's forms). A password in the URL is
    /// refused: it would sit in the config file and in every message that names the URL.
    public static func parse(url: String) throws(CofferError) -> PostgresTarget { try parseNamingParameters(url: url).target }

    /// The same, and the names of the parameters the URL set (decoded).
    public static func parseNamingParameters(url: String) throws(CofferError) -> (target: PostgresTarget, parameters: Set<String>) {
        let hint = "write it as postgresql://USER@HOST:PORT/DATABASE, or postgresql://USER@/DATABASE?host=/run/postgresql"
        let schemes = ["postgresql://", "postgres://"]
        guard let scheme = schemes.first(where: { url.hasPrefix($0) }) else {
            throw CofferError(.config, "the PostgreSQL URL is not a postgresql:// URL", hint: hint)
        }
        guard !url.contains("#") else { throw CofferError(.config, "the PostgreSQL URL has a fragment (#...)", hint: hint) }
        var rest = Substring(url.dropFirst(scheme.count))
        var query: Substring = ""
        if let q = rest.firstIndex(of: "?") { query = rest[rest.index(after: q)...]; rest = rest[..<q] }
        guard let slash = rest.firstIndex(of: "/") else { throw CofferError(.config, "the PostgreSQL URL names no database", hint: hint) }
        let authority = rest[..<slash]
        guard let database = percentDecoded(rest[rest.index(after: slash)...]), !database.isEmpty, !database.contains("/") else {
            throw CofferError(.config, "the PostgreSQL URL names no database", hint: hint)
        }
        guard let at = authority.lastIndex(of: "@") else { throw CofferError(.config, "the PostgreSQL URL names no user", hint: hint) }
        let userInfo = authority[..<at]
        if userInfo.contains(":") {
            throw CofferError(.config, "the PostgreSQL URL holds a password", hint: "put it in a file named by password_file (mode 0600), not in the URL")
        }
        guard let user = percentDecoded(userInfo), !user.isEmpty else { throw CofferError(.config, "the PostgreSQL URL names no user", hint: hint) }
        if user.contains(":") {
            throw CofferError(.config, "the PostgreSQL URL holds a password", hint: "put it in a file named by password_file (mode 0600), not in the URL")
        }
        guard validName(user), validName(database) else {
            throw CofferError(.config, "the PostgreSQL user or database name holds a control character", hint: hint)
        }
        var hostPart = authority[authority.index(after: at)...]
        var port = 5432
        if let colon = hostPart.lastIndex(of: ":"), !hostPart.hasSuffix("]") {
            guard let p = Int(hostPart[hostPart.index(after: colon)...]), (1...65535).contains(p) else {
                throw CofferError(.config, "the PostgreSQL port must be 1...65535", hint: hint)
            }
            port = p
            hostPart = hostPart[..<colon]
        }
        if hostPart.hasPrefix("[") != hostPart.hasSuffix("]") || hostPart.dropFirst().dropLast().contains("[") || hostPart.dropFirst().dropLast().contains("]") {
            throw CofferError(.config, "the PostgreSQL URL's host is malformed (an IPv6 address goes in [...])", hint: hint)
        }
        let host = String(hostPart.trimmingPrefix("[").prefix(while: { $0 != "]" }))
        var items: [(name: String, value: String?)] = []
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = percentDecoded(kv[0]) else { throw CofferError(.config, "the PostgreSQL URL has a malformed parameter", hint: hint) }
            items.append((name, kv.count > 1 ? percentDecoded(kv[1]) : nil))
        }
        var tls = TLS.disable
        var caFile: String?
        var socketDir: String?
        var seen: Set<String> = []
        for item in items {
            // twice (sslmode=verify-full&sslmode=disable): which one wins is a trap
            guard seen.insert(item.name).inserted else {
                throw CofferError(.config, "the PostgreSQL URL sets '\(item.name)' twice", hint: hint)
            }
            switch item.name {
            case "sslmode":
                switch item.value ?? "" {
                case "disable": tls = .disable
                case "require": tls = .require
                case "verify-full": tls = .verifyFull
                default: throw CofferError(.config, "sslmode must be disable, require or verify-full", hint: hint)
                }
            case "sslrootcert": caFile = item.value
            case "host": socketDir = item.value
            default: throw CofferError(.config, "the PostgreSQL URL has an unknown parameter '\(item.name)'", hint: "known: sslmode, sslrootcert, host")
            }
        }
        let endpoint: Endpoint
        if let socketDir {
            guard socketDir.hasPrefix("/") else { throw CofferError(.config, "host= must name an absolute socket directory", hint: hint) }
            guard host.isEmpty else { throw CofferError(.config, "the PostgreSQL URL names both a host and a socket", hint: hint) }
            endpoint = .socket(path: socketFile(socketDir, port: port))
        } else if !host.isEmpty {
            endpoint = .tcp(host: host, port: port)
        } else {
            throw CofferError(.config, "the PostgreSQL URL names no host and no socket directory", hint: hint)
        }
        if tls != .disable, case .socket = endpoint {
            throw CofferError(.config, "TLS over a Unix socket is not supported", hint: "use sslmode=disable with a socket")
        }
        return (PostgresTarget(endpoint: endpoint, user: user, database: database, tls: tls, caFile: caFile), seen)
    }
}
