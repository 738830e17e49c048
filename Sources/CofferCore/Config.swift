/// Daemon configuration: built once at start (installed mode: /etc/coffer/cofferd.toml;
/// dev mode: built-in defaults relative to the working directory).
public struct CofferConfig: Sendable, Equatable {
    public enum Durability: String, Sendable, Equatable {
        /// WAL + synchronous=FULL: an acknowledged write survives power loss.
        case full
        /// WAL + synchronous=NORMAL: survives a daemon crash, may lose the last
        /// transactions on power loss.
        case normal
    }

    // [server]
    public var socketPath: String = "/run/coffer/coffer.sock"
    public var socketMode: UInt32 = 0o660
    public var socketGroup: String? = nil
    /// Open connections at once; more wait in the listen backlog.
    public var maxConnections: Int = 512
    /// Open connections of one peer uid at once (the rest are closed at accept), so
    /// that one local user cannot take every connection.
    public var maxConnectionsPerUID: Int = 64
    /// Seconds a connection may sit without a complete request part (cuts slow headers).
    public var idleTimeoutSeconds: Int = 60
    /// Seconds from a request's head to its end (cuts slow bodies).
    public var requestTimeoutSeconds: Int = 30
    /// Bytes of request line and headers.
    public var maxHeaderBytes: Int = 16 * 1024
    /// How requests are served: "event-loop" (reads and health answered on NIO's
    /// event loop, the rest in a task; see DirectChannel) or "hummingbird" (a task per
    /// request, Hummingbird's responder); "epoll-prototype" is issue 16's design (b),
    /// for measurement only (EpollServer).
    public var requestPath: String = "event-loop"
    // [storage]
    public var stateDir: String = "/var/lib/coffer"
    public var databasePath: String? = nil
    public var durability: Durability = .full
    /// Set by `backend = "postgres"` with `[storage.postgres]`: the store is shared there.
    public var postgres: PostgresTarget? = nil
    // [keys]
    public var keyFile: String = "/var/lib/coffer/keys/root.key"
    /// How the root key is held, as the configuration expects it: "key-file",
    /// "passphrase" or "shares" (the database records the truth; a mismatch refuses to start).
    public var unlock = "key-file"
    /// A partial round of Shamir shares is discarded after this long untouched.
    public var unsealRoundSeconds = 600
    /// Start without reading the key: sealed until an admin unseals.
    public var startSealed: Bool = false
    // [access]
    public var adminGroup: String? = "coffer-admin"
    public var adminUIDs: [UInt32] = []
    /// The policy file; when it does not exist, the built-in policy (uid 0,
    /// admin_uids and admin_group are admins) applies.
    public var policyFile: String? = "/etc/coffer/policy.toml"
    // [limits]
    public var maxValueBytes: Int = 64 * 1024
    public var maxVersions: Int = 10
    public var maxListPage: Int = 1000
    // [audit]
    /// Off only for benchmarking the cost of audit; status and health say so.
    public var auditEnabled: Bool = true
    public var auditCheckpointEvents: Int = 1000
    public var auditCheckpointSeconds: Int = 10
    /// "" (off), "file:/path" (one JSON line per event) or "syslog".
    public var auditMirror: String = ""
    /// Largest group-commit batch.
    public var auditMaxBatch: Int = 256
    // [auth]
    /// The PAM service `coffer login` authenticates through (/etc/pam.d/NAME).
    public var pamService: String = "coffer"
    /// Lifetime of a sign-in session token.
    public var sessionTTLSeconds: Int = 8 * 3600
    /// Failures (per uid and per user name) within `failureWindowSeconds` that lock
    /// sign-in for `lockoutSeconds`.
    public var maxLoginFailures: Int = 5
    public var failureWindowSeconds: Int = 15 * 60
    public var lockoutSeconds: Int = 15 * 60
    /// Every failed sign-in answers after at least this long (counted from the last
    /// answer), whatever failed: a wrong password, a wrong code, a locked account.
    public var loginFailureMillis: Int = 2000
    /// How long the daemon waits for the answer to a prompt.
    public var loginPromptTimeoutSeconds: Int = 120
    // [run]: `coffer run` and `coffer build`
    /// Where cofferd mounts the tmpfs of a caller who may not mount (default: `run`
    /// beside the socket: /run/coffer/run, or .coffer/run in dev mode).
    public var runDir: String? = nil
    /// Runs one uid may have at once.
    public var maxRunsPerUID: Int = 16
    /// The longest a run may last; a longer --ttl is cut to it.
    public var maxRunTTLSeconds: Int = 12 * 3600
    /// The largest tmpfs a run may ask for.
    public var maxRunSizeBytes: Int = 16 * 1024 * 1024
    // [ssh]
    /// The KRL that sshd reads through RevokedKeys (default: ssh_revoked.krl in the
    /// state directory); rewritten atomically whenever an elevation with certificates ends.
    public var sshKRLPath: String? = nil
    /// Between SIGHUP and SIGKILL when a session's window ends.
    public var sshSessionGraceSeconds: Int = 5
    // [jwt]
    public var jwtIssuer: String = "coffer"
    // [log]
    public var logLevel: String = "info"
    /// auto (journal under systemd, else text), text, journal or json.
    public var logFormat: String = "auto"
    /// Set by `cofferd dev`; reported by status.
    public var devMode: Bool = false

    public static let maxValueBytesCeiling = 1024 * 1024
    public static let defaultPath = "/etc/coffer/cofferd.toml"

    public init() {}

    public var resolvedDatabasePath: String { databasePath ?? stateDir + "/coffer.db" }
    /// The SQLite file, or the PostgreSQL database when the backend is postgres.
    public var databaseLocation: DatabaseLocation {
        if let postgres { return .postgres(postgres) }
        return .sqlite(path: resolvedDatabasePath)
    }
    public var resolvedKRLPath: String { sshKRLPath ?? stateDir + "/ssh_revoked.krl" }
    public var resolvedRunDir: String {
        if let runDir { return runDir }
        guard let slash = socketPath.lastIndex(of: "/") else { return "run" }
        return String(socketPath[..<slash]) + "/run"
    }

    /// The largest request body accepted: twice a maximal value as base64, plus room,
    /// so that an oversize value is reported as such (value_too_large) up to that bound.
    public var maxBodyBytes: Int { 2 * ((maxValueBytes + 2) / 3 * 4) + 4096 }

    /// The embedded default for a newcomer, rooted at `directory`.
    public static func dev(directory: String, uid: UInt32) -> CofferConfig {
        var c = CofferConfig()
        c.socketPath = directory + "/.coffer/coffer.sock"
        c.socketMode = 0o600
        c.stateDir = directory + "/.coffer"
        c.keyFile = directory + "/keys/dev/root.key"
        c.adminGroup = nil
        c.adminUIDs = [uid]
        c.policyFile = directory + "/.coffer/policy.toml"
        c.durability = .normal
        c.devMode = true
        return c
    }

    /// Parses a config file. Unknown tables or keys, wrong types and out-of-range
    /// values are errors naming `file:line` (fail closed on a typo).
    public static func parse(_ text: String, file: String) throws(CofferError) -> CofferConfig {
        let root: TOMLTable
        do { root = try TOML.parse(text) } catch {
            throw CofferError(.config, "\(file):\(error.line): \(error.message)")
        }
        var c = CofferConfig()
        var r = TableReader(table: root, file: file, name: "")
        try r.allowOnly(["server", "storage", "keys", "access", "limits", "audit", "auth", "run", "log", "ssh", "jwt"])
        if var t = try r.table("server") {
            try t.allowOnly(["socket", "socket_mode", "socket_group", "max_connections", "max_connections_per_uid", "idle_timeout",
                             "request_timeout", "max_header_bytes", "request_path"])
            if let v = try t.integer("max_connections", in: 1...100_000) { c.maxConnections = Int(v) }
            if let v = try t.integer("max_connections_per_uid", in: 1...100_000) { c.maxConnectionsPerUID = Int(v) }
            if let v = try t.integer("idle_timeout", in: 1...86400) { c.idleTimeoutSeconds = Int(v) }
            if let v = try t.integer("request_timeout", in: 1...3600) { c.requestTimeoutSeconds = Int(v) }
            if let v = try t.integer("max_header_bytes", in: 1024...1_048_576) { c.maxHeaderBytes = Int(v) }
            if let v = try t.string("socket") { c.socketPath = v }
            if let v = try t.string("socket_mode") {
                guard let m = UInt32(v, radix: 8), m <= 0o777 else {
                    throw t.error("socket_mode", "socket_mode must be an octal mode like \"0660\"")
                }
                c.socketMode = m
            }
            if let v = try t.string("socket_group") { c.socketGroup = v.isEmpty ? nil : v }
            if let v = try t.string("request_path") {
                guard ["event-loop", "hummingbird", "epoll-prototype"].contains(v) else {
                    throw t.error("request_path", "request_path must be \"event-loop\" or \"hummingbird\" (\"epoll-prototype\" is for coffer-bench only)")
                }
                c.requestPath = v
            }
        }
        if var t = try r.table("storage") {
            try t.allowOnly(["state_dir", "database", "durability", "backend", "postgres"])
            if let v = try t.string("state_dir") { c.stateDir = v }
            if let v = try t.string("database") { c.databasePath = v }
            let backend = try t.string("backend") ?? "sqlite"
            guard ["sqlite", "postgres"].contains(backend) else { throw t.error("backend", "backend must be \"sqlite\" or \"postgres\"") }
            let pg = try t.table("postgres")
            switch (backend, pg) {
            case ("postgres", nil):
                throw t.error("backend", "backend = \"postgres\" needs a [storage.postgres] table with url, or socket, user and database")
            case ("sqlite", .some):
                throw t.error("postgres", "[storage.postgres] is set but backend is \"sqlite\"; set backend = \"postgres\" to use it")
            case (_, .some(var p)):
                try p.allowOnly(["url", "socket", "user", "database", "password_file", "pool_size", "tls", "tls_ca_file", "max_staleness_ms", "schema"])
                var target: PostgresTarget
                if let url = try p.string("url") {
                    guard try p.string("socket") == nil else { throw p.error("socket", "set url or socket, not both") }
                    let parameters: Set<String>
                    do { (target, parameters) = try PostgresTarget.parseNamingParameters(url: url) } catch {
                        throw p.error("url", error.message + (error.hint.map { " (\($0))" } ?? ""))
                    }
                    // TLS is set in one place: the URL's sslmode, or tls here (not both)
                    if try p.string("tls") != nil, parameters.contains("sslmode") {
                        throw p.error("tls", "the URL sets sslmode; set TLS there or with tls, not both")
                    }
                    if try p.string("tls_ca_file") != nil, parameters.contains("sslrootcert") {
                        throw p.error("tls_ca_file", "the URL sets sslrootcert; set the CA there or with tls_ca_file, not both")
                    }
                    let user = try p.string("user"), database = try p.string("database")
                    if user != nil || database != nil {
                        throw p.error("url", "the URL names the user and database; remove user and database here")
                    }
                } else if let socket = try p.string("socket") {
                    guard socket.hasPrefix("/") else { throw p.error("socket", "socket must be an absolute path (the socket file or its directory)") }
                    guard let user = try p.string("user"), !user.isEmpty else { throw p.error("socket", "a socket needs user = \"...\"") }
                    guard let db = try p.string("database"), !db.isEmpty else { throw p.error("socket", "a socket needs database = \"...\"") }
                    guard PostgresTarget.validName(user), PostgresTarget.validName(db) else {
                        throw p.error("user", "user and database must be 1 to 63 bytes without control characters")
                    }
                    target = PostgresTarget(endpoint: .socket(path: PostgresTarget.socketFile(socket)), user: user, database: db)
                } else {
                    throw p.error("url", "[storage.postgres] needs url, or socket with user and database")
                }
                if let v = try p.string("password_file") {
                    guard v.hasPrefix("/") else { throw p.error("password_file", "password_file must be an absolute path") }
                    target.passwordFile = v
                }
                if let v = try p.integer("pool_size", in: 1...256) { target.poolSize = Int(v) }
                if let v = try p.integer("max_staleness_ms", in: 0...60_000) { target.maxStalenessMillis = Int(v) }
                if let v = try p.string("tls") {
                    guard let mode = PostgresTarget.TLS(rawValue: v) else { throw p.error("tls", "tls must be \"disable\", \"require\" or \"verify-full\"") }
                    target.tls = mode
                }
                if let v = try p.string("tls_ca_file") { target.caFile = v }
                if target.tls != .disable, case .socket = target.endpoint { throw p.error("tls", "TLS over a Unix socket is not supported") }
                if let ca = target.caFile {
                    guard target.tls != .disable else { throw p.error("tls_ca_file", "a CA file is set but TLS is off (tls = \"disable\")") }
                    guard ca.hasPrefix("/") else { throw p.error("tls_ca_file", "tls_ca_file must be an absolute path") }
                }
                if let v = try p.string("schema") {
                    guard PostgresTarget.validName(v), v.utf8.allSatisfy({ $0 != UInt8(ascii: "\"") }) else {
                        throw p.error("schema", "schema must be 1 to 63 bytes without control characters or quotes")
                    }
                    target.schema = v
                }
                c.postgres = target
            default:
                break
            }
            if let v = try t.string("durability") {
                guard let d = Durability(rawValue: v) else { throw t.error("durability", "durability must be \"full\" or \"normal\"") }
                c.durability = d
            }
        }
        if var t = try r.table("keys") {
            try t.allowOnly(["unlock", "key_file", "start_sealed", "unseal_round_timeout"])
            if let v = try t.string("unlock") {
                guard ["key-file", "passphrase", "shares"].contains(v) else {
                    throw t.error("unlock", "unlock must be \"key-file\", \"passphrase\" or \"shares\" (as `cofferd init --unseal` made the database)")
                }
                c.unlock = v
            }
            if let v = try t.string("unseal_round_timeout") {
                guard let s = DurationText.seconds(v), s >= 5, s <= 86400 else {
                    throw t.error("unseal_round_timeout", "'keys.unseal_round_timeout' must be a duration like \"10m\" (5s to 1d)")
                }
                c.unsealRoundSeconds = s
            }
            if let v = try t.string("key_file") { c.keyFile = v }
            if let v = try t.bool("start_sealed") { c.startSealed = v }
        }
        if var t = try r.table("access") {
            try t.allowOnly(["admin_group", "admin_uids", "policy_file"])
            if let v = try t.string("policy_file") { c.policyFile = v.isEmpty ? nil : v }
            if let v = try t.string("admin_group") { c.adminGroup = v.isEmpty ? nil : v }
            if let v = try t.integers("admin_uids") {
                guard v.allSatisfy({ $0 >= 0 && $0 <= Int64(UInt32.max) }) else { throw t.error("admin_uids", "uids must be 0...4294967295") }
                c.adminUIDs = v.map { UInt32($0) }
            }
        }
        if var t = try r.table("limits") {
            try t.allowOnly(["max_value_bytes", "max_versions", "max_list_page"])
            if let v = try t.integer("max_value_bytes", in: 1...Int64(maxValueBytesCeiling)) { c.maxValueBytes = Int(v) }
            if let v = try t.integer("max_versions", in: 1...1000) { c.maxVersions = Int(v) }
            if let v = try t.integer("max_list_page", in: 1...10000) { c.maxListPage = Int(v) }
        }
        if var t = try r.table("auth") {
            try t.allowOnly(["pam_service", "session_ttl", "max_failures", "failure_window", "lockout", "failure_delay_ms", "prompt_timeout"])
            if let v = try t.string("pam_service") {
                guard !v.isEmpty, v.utf8.count <= 64, v.utf8.allSatisfy({ SecretPathChars.isToken($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") }),
                      !v.hasPrefix(".") else {
                    throw t.error("pam_service", "'auth.pam_service' must be a PAM service name like \"coffer\"")
                }
                c.pamService = v
            }
            func duration(_ key: String, max: Int) throws(CofferError) -> Int? {
                guard let v = try t.string(key) else { return nil }
                guard let s = DurationText.seconds(v), s <= max else { throw t.error(key, "'auth.\(key)' must be a duration like \"15m\" (at most \(DurationText.format(max)))") }
                return s
            }
            if let v = try duration("session_ttl", max: 7 * 86400) { c.sessionTTLSeconds = v }
            if let v = try duration("failure_window", max: 86400) { c.failureWindowSeconds = v }
            if let v = try duration("lockout", max: 86400) { c.lockoutSeconds = v }
            if let v = try duration("prompt_timeout", max: 3600) { c.loginPromptTimeoutSeconds = v }
            if let v = try t.integer("max_failures", in: 1...1000) { c.maxLoginFailures = Int(v) }
            if let v = try t.integer("failure_delay_ms", in: 0...60000) { c.loginFailureMillis = Int(v) }
        }
        if var t = try r.table("audit") {
            try t.allowOnly(["enabled", "checkpoint_events", "checkpoint_seconds", "mirror", "max_batch"])
            if let e = t.table["enabled"] {
                guard case .bool(let b) = e.value else { throw t.error("enabled", "'audit.enabled' must be true or false") }
                c.auditEnabled = b
            }
            if let v = try t.integer("checkpoint_events", in: 1...1_000_000) { c.auditCheckpointEvents = Int(v) }
            if let v = try t.integer("checkpoint_seconds", in: 1...86400) { c.auditCheckpointSeconds = Int(v) }
            if let v = try t.integer("max_batch", in: 1...10000) { c.auditMaxBatch = Int(v) }
            if let v = try t.string("mirror") {
                guard v.isEmpty || v == "syslog" || (v.hasPrefix("file:/") && v.count > 6) else {
                    throw t.error("mirror", "mirror must be \"\", \"syslog\" or \"file:/absolute/path\"")
                }
                c.auditMirror = v
            }
        }
        if var t = try r.table("run") {
            try t.allowOnly(["dir", "max_per_uid", "max_ttl", "max_size_bytes"])
            if let v = try t.string("dir") {
                guard v.hasPrefix("/"), v.count > 1, !v.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) else {
                    throw t.error("dir", "'run.dir' must be an absolute path without . or ..")
                }
                c.runDir = v
            }
            if let v = try t.integer("max_per_uid", in: 1...1000) { c.maxRunsPerUID = Int(v) }
            if let v = try t.integer("max_size_bytes", in: 4096...(1 << 30)) { c.maxRunSizeBytes = Int(v) }
            if let v = try t.string("max_ttl") {
                guard let s = DurationText.seconds(v), s >= 1, s <= 7 * 86400 else {
                    throw t.error("max_ttl", "'run.max_ttl' must be a duration like \"12h\" (at most 7d)")
                }
                c.maxRunTTLSeconds = s
            }
        }
        if var t = try r.table("ssh") {
            try t.allowOnly(["krl_path", "session_grace"])
            if let v = try t.string("krl_path") {
                guard v.hasPrefix("/"), v.count > 1, !v.hasSuffix("/"), !v.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) else {
                    throw t.error("krl_path", "'ssh.krl_path' must be an absolute file path without . or ..")
                }
                c.sshKRLPath = v
            }
            if let v = try t.string("session_grace") {
                guard let s = DurationText.seconds(v), s <= 300 else {
                    throw t.error("session_grace", "'ssh.session_grace' must be a duration like \"5s\" (at most 5m)")
                }
                c.sshSessionGraceSeconds = s
            }
        }
        if var t = try r.table("jwt") {
            try t.allowOnly(["issuer"])
            if let v = try t.string("issuer") {
                guard SSHCertificate.isValidName(v, max: 256) || (v.utf8.count <= 256 && !v.isEmpty && v.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F }) else {
                    throw t.error("issuer", "'jwt.issuer' must be printable ASCII (at most 256 bytes), e.g. a URL")
                }
                c.jwtIssuer = v
            }
        }
        if var t = try r.table("log") {
            try t.allowOnly(["level", "format"])
            if let v = try t.string("format") {
                guard ["auto", "text", "journal", "json"].contains(v) else { throw t.error("format", "format must be auto, text, journal or json") }
                c.logFormat = v
            }
            if let v = try t.string("level") {
                guard ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(v) else {
                    throw t.error("level", "level must be one of trace, debug, info, notice, warning, error, critical")
                }
                c.logLevel = v
            }
        }
        return c
    }
}

/// Typed, strict access to a TOML table with `file:line` errors. Shared by the
/// config and (later) the policy file.
public struct TableReader {
    public let table: TOMLTable
    public let file: String
    public let name: String

    public init(table: TOMLTable, file: String, name: String) {
        self.table = table
        self.file = file
        self.name = name
    }

    func qualified(_ key: String) -> String { name.isEmpty ? key : "\(name).\(key)" }

    public func error(_ key: String, _ message: String) -> CofferError {
        CofferError(.config, "\(file):\(table[key]?.line ?? table.line): \(message)")
    }

    public mutating func allowOnly(_ allowed: Set<String>) throws(CofferError) {
        for k in table.keys where !allowed.contains(k) {
            throw CofferError(.config, "\(file):\(table[k]!.line): unknown key '\(qualified(k))'",
                              hint: "allowed here: \(allowed.sorted().joined(separator: ", "))")
        }
    }

    public func table(_ key: String) throws(CofferError) -> TableReader? {
        guard let e = table[key] else { return nil }
        guard case .table(let t) = e.value else { throw error(key, "'\(qualified(key))' must be a table") }
        return TableReader(table: t, file: file, name: qualified(key))
    }

    public func string(_ key: String) throws(CofferError) -> String? {
        guard let e = table[key] else { return nil }
        guard case .string(let s) = e.value else { throw error(key, "'\(qualified(key))' must be a string, not \(e.value.typeName)") }
        return s
    }

    public func bool(_ key: String) throws(CofferError) -> Bool? {
        guard let e = table[key] else { return nil }
        guard case .bool(let b) = e.value else { throw error(key, "'\(qualified(key))' must be true or false, not \(e.value.typeName)") }
        return b
    }

    public func integer(_ key: String, in range: ClosedRange<Int64>) throws(CofferError) -> Int64? {
        guard let e = table[key] else { return nil }
        guard case .integer(let v) = e.value else { throw error(key, "'\(qualified(key))' must be an integer, not \(e.value.typeName)") }
        guard range.contains(v) else { throw error(key, "'\(qualified(key))' must be in \(range.lowerBound)...\(range.upperBound)") }
        return v
    }

    public func integers(_ key: String) throws(CofferError) -> [Int64]? {
        guard let e = table[key] else { return nil }
        guard case .array(let items) = e.value else { throw error(key, "'\(qualified(key))' must be an array of integers") }
        var out: [Int64] = []
        for item in items {
            guard case .integer(let v) = item else { throw error(key, "'\(qualified(key))' must be an array of integers") }
            out.append(v)
        }
        return out
    }

    public func strings(_ key: String) throws(CofferError) -> [String]? {
        guard let e = table[key] else { return nil }
        guard case .array(let items) = e.value else { throw error(key, "'\(qualified(key))' must be an array of strings") }
        var out: [String] = []
        for item in items {
            guard case .string(let v) = item else { throw error(key, "'\(qualified(key))' must be an array of strings") }
            out.append(v)
        }
        return out
    }
}
