import ArgumentParser
import CCofferLinux
import CofferAudit
import CofferCore
import CofferCrypto
import CofferEngine
import CofferServer
import CofferStore
import Foundation
import Logging
import ServiceLifecycle

@main
struct Cofferd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cofferd",
        abstract: "Coffer secrets broker daemon.",
        discussion: "Start with `cofferd dev` for a local broker in the current directory.",
        version: "0.1.0",
        subcommands: [Dev.self, Init.self, Serve.self, Rekey.self, Restore.self, Migrate.self]
    )
}

func fail(_ e: CofferError) -> ExitCode {
    var text = "cofferd: error: \(e.message)\n"
    if let hint = e.hint { text += "cofferd: hint: \(hint)\n" }
    FileHandle.standardError.write(Data(text.utf8))
    return ExitCode(1)
}

func makeLogger(_ level: String, format: String = "auto") -> Logger {
    let f = LogFormat.resolve(format)
    LoggingSystem.bootstrap { label in
        var h = CofferLogHandler(label: label, format: f)
        h.logLevel = Logger.Level(rawValue: level) ?? .info
        return h
    }
    return Logger(label: "cofferd")
}

/// Invariant 8 before anything secret is loaded, and a private umask (invariant 7).
func hardenProcess() throws(CofferError) {
    guard coffer_harden_process() == 0 else {
        throw CofferError(.internal, "cannot make the process non-dumpable: \(String(cString: strerror(errno)))")
    }
    umask(0o077)
}

/// The policy file when it exists; otherwise the built-in policy from [access].
func policies(for config: CofferConfig, logger: Logger) throws(CofferError) -> PolicyStore {
    let fallback = Policy.adminOnly(uids: config.adminUIDs, group: config.adminGroup)
    if !(config.policyFile.map { FileManager.default.fileExists(atPath: $0) } ?? false) {
        logger.notice("no policy file yet; built-in policy: uid 0, access.admin_uids and access.admin_group are admins (a reload or SIGHUP loads the file once it exists)",
                      metadata: ["policy.file": "\(config.policyFile ?? "-")"])
    }
    // the configured path is kept even while missing: a file created after start loads at the next reload
    return try PolicyStore(path: config.policyFile, fallback: fallback, logger: logger)
}

func loadConfig(_ path: String) throws(CofferError) -> CofferConfig {
    let text: String
    do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
        let reason = access(path, F_OK) != 0 ? "it does not exist" : access(path, R_OK) != 0 ? "permission denied" : "\(error.localizedDescription)"
        throw CofferError(.config, "cannot read the config file \(path): \(reason)",
                          hint: "see contrib/cofferd.toml for an example, or run `cofferd dev` for a local broker")
    }
    return try CofferConfig.parse(text, file: path)
}

func serve(_ config: CofferConfig, logger: Logger, reanchorAudit: Bool = false, create: Bool = true, sealed: Bool = false,
           onReady: @escaping @Sendable (_ socket: String) -> Void) async throws {
    // swift-metrics → the registry GET /v1/sys/metrics writes out (once per process)
    CofferMetrics.bootstrap()
    // one daemon per state directory, and per database (which may live elsewhere)
    let lock = try StateLock(stateDir: config.stateDir)
    let dbDir = (config.resolvedDatabasePath as NSString).deletingLastPathComponent
    // (a shared PostgreSQL database has many daemons by design: one per host)
    let dbLock = dbDir == config.stateDir || config.postgres != nil ? nil : try StateLock(stateDir: dbDir)
    defer { withExtendedLifetime((lock, dbLock)) {} }
    let policyStore = try policies(for: config, logger: logger)
    if let pg = config.postgres, case .tcp(let host, _) = pg.endpoint, pg.tls == .disable, !["localhost", "127.0.0.1", "::1"].contains(host) {
        logger.warning("the connection to PostgreSQL is not encrypted (sslmode=verify-full in the URL, or tls = \"verify-full\")",
                       metadata: ["postgres.host": "\(host)"])
    }
    let open: EngineHost.Opener = { unlocker throws(CofferError) in
        try await SecretEngine.open(config: config, unlocker: unlocker, policies: policyStore, logger: logger,
                                    reanchorAudit: reanchorAudit, create: create)
    }
    let keyFile = KeyFileUnlocker(path: config.keyFile)
    let location = config.databaseLocation
    let holder: HolderRecord?
    do { holder = try Store.readHolder(location: location) } catch let e as CofferError { throw e } catch {
        throw CofferError(.storage, "cannot read the database \(location): \(error)")
    }
    let mode = holder?.mode ?? .keyfile
    let expected: HolderRecord.Mode = config.unlock == "passphrase" ? .passphrase : config.unlock == "shares" ? .shares : .keyfile
    if try databaseExists(location), config.unlock != "key-file", mode != expected {
        throw CofferError(.config, "keys.unlock is \"\(config.unlock)\" but the database is held by \(mode.described)",
                          hint: "set keys.unlock to match how `cofferd init` (or the last rekey) made it")
    }
    let roundTimeout = Duration.seconds(config.unsealRoundSeconds)
    let host: EngineHost
    if sealed || mode == .passphrase || mode == .shares {
        // No key is read: the database must exist and be initialised, nothing more.
        try SecretEngine.checkInitialised(database: location)
        host = EngineHost(sealed: open, unlocker: keyFile, policies: policyStore, database: location, roundTimeout: roundTimeout)
        logger.notice("starting sealed: an admin unseals with `coffer operator unseal`", metadata: ["unseal": "\(mode.rawValue)"])
    } else {
        host = EngineHost(engine: try await open(keyFile), opener: open, unlocker: keyFile, database: location, roundTimeout: roundTimeout)
    }
    // Composition happens here, once: the server, the audit writer, the token reaper
    // and the policy reloader in one ServiceGroup; SIGTERM and SIGINT shut them down.
    let (services, socket) = try CofferServer.services(config: config, host: host, logger: logger, onReady: onReady)
    defer { socket?.release() }
    try await ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)).run()
}

func makeDirectory(_ path: String) throws(CofferError) {
    do {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    } catch {
        throw CofferError(.config, "cannot create \(path): \(error.localizedDescription)")
    }
}

struct Dev: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a local broker in a directory: state in ./.coffer, dev key in ./keys/dev, you are admin.")

    @Option(help: "Directory to run in (default: the current directory).")
    var dir: String?

    @Option(help: "Log level.")
    var logLevel: String = "info"

    @Option(help: "Log format: auto (journal under systemd, else text), text, journal or json.")
    var logFormat: String = "auto"

    func run() async throws {
        let root = dir.map { URL(fileURLWithPath: $0).standardizedFileURL.path } ?? FileManager.default.currentDirectoryPath
        let config = CofferConfig.dev(directory: root, uid: getuid())
        let logger = makeLogger(logLevel, format: logFormat)
        do {
            try hardenProcess()
            try makeDirectory(config.stateDir)
            let keyExists = FileManager.default.fileExists(atPath: config.keyFile)
            let dbExists = FileManager.default.fileExists(atPath: config.resolvedDatabasePath)
            if !keyExists {
                guard !dbExists else {
                    throw CofferError(.keyFile, "\(config.keyFile) is missing but \(config.resolvedDatabasePath) exists",
                                      hint: "restore the dev key, or remove ./.coffer to start over (its secrets are lost)")
                }
                try KeyFile.create(at: config.keyFile)
                logger.info("created a dev root key", metadata: ["key.file": "\(config.keyFile)"])
            }
            if let policy = config.policyFile {
                try PolicyStore.writeDevPolicy(at: policy, uid: getuid(), user: PrincipalResolver.userName(getuid()))
            }
            try await serve(config, logger: logger) { socket in
                let text = """

                    cofferd is running in dev mode (state: \(config.stateDir), policy: \(config.policyFile ?? "built-in")).
                    In another shell:
                        export COFFER_SOCKET=\(socket)
                        printf 's3cr3t' | coffer secret put demo/hello
                        coffer secret get demo/hello
                    Stop with Ctrl-C.

                    """
                FileHandle.standardError.write(Data(text.utf8))
            }
        } catch let e as CofferError {
            throw fail(e)
        }
    }
}

struct Init: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create the database and its root key, held by a key file (0400, never overwritten), a passphrase, or Shamir shares.",
        discussion: """
            --unseal keyfile (default): the root key file at keys.key_file.             --unseal passphrase: a random root key sealed under the passphrase's Argon2id key (asked twice on the terminal             without echo, or one line of stdin with --passphrase-stdin); the daemon then starts sealed.             --unseal shares --shares 5 --threshold 3: a random root key sealed under a key split into shares, printed once             or written to their own 0400 files in --share-dir; the daemon starts sealed.
            """)

    @Option(help: "Config file.")
    var config: String = CofferConfig.defaultPath

    @Option(help: "How the root key is held: keyfile, passphrase or shares.")
    var unseal: String = "keyfile"

    @Option(help: "Shares to make (--unseal shares).")
    var shares: Int?

    @Option(help: "Shares needed to unseal (--unseal shares).")
    var threshold: Int?

    @Option(help: "Write each share to its own 0400 file in this directory (which must exist) instead of printing them.")
    var shareDir: String?

    @Option(help: "Argon2id limits: interactive, moderate (default) or sensitive.")
    var kdf: String = "moderate"

    @Flag(help: "Read the passphrase from one line of standard input.")
    var passphraseStdin = false

    func run() async throws {
        do {
            try hardenProcess()
            let c = try loadConfig(config)
            let logger = makeLogger(c.logLevel)
            try makeDirectory(c.stateDir)
            try makeDirectory((c.keyFile as NSString).deletingLastPathComponent)
            let lock = try StateLock(stateDir: c.stateDir)
            defer { withExtendedLifetime(lock) {} }
            if try databaseExists(c.databaseLocation) {
                throw CofferError(.config, "the database \(c.databaseLocation) already exists; refusing to initialise again",
                                  hint: c.postgres == nil ? nil : "every other host joins with `cofferd serve` and the same key material; only the first runs init")
            }
            // everything that can be refused is checked before the key exists: a bad
            // policy must not leave a key without a database behind
            let policyStore = try policies(for: c, logger: logger)
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            switch unseal {
            case "keyfile", "key-file":
                guard shares == nil, threshold == nil, shareDir == nil, !passphraseStdin else {
                    throw CofferError(.config, "--shares, --threshold, --share-dir and --passphrase-stdin go with --unseal shares or passphrase")
                }
                try KeyFile.create(at: c.keyFile)
                _ = try await SecretEngine.open(config: c, unlocker: KeyFileUnlocker(path: c.keyFile), policies: policyStore, logger: logger)
                print("cofferd: created \(c.keyFile) (mode 0400) and \(c.databaseLocation)")
                print("cofferd: back up the key file offline: without it no secret can be read")
            case "passphrase":
                let limits = try KeyHolder.KDFLimits.named(kdf)
                let pass = try Prompt.passphrase(fromStdin: passphraseStdin)
                let unlocker = try NewHolderUnlocker.passphrase(pass, limits: limits, now: now)
                _ = try await SecretEngine.open(config: c, unlocker: unlocker, policies: policyStore, logger: logger)
                print("cofferd: created \(c.databaseLocation); its root key is sealed under the passphrase (Argon2id, \(kdf) limits)")
                print("cofferd: cofferd serve starts sealed; unseal with `coffer operator unseal`. Without the passphrase no secret can be read")
            case "shares":
                guard let n = shares, let k = threshold else {
                    throw CofferError(.config, "--unseal shares needs --shares N and --threshold K", hint: "for example --shares 5 --threshold 3")
                }
                if let shareDir {
                    var st = stat()
                    guard stat(shareDir, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, access(shareDir, W_OK) == 0 else {
                        throw CofferError(.config, "--share-dir \(shareDir) is not a writable directory")
                    }
                }
                let (unlocker, texts) = try NewHolderUnlocker.shares(threshold: k, count: n, now: now)
                _ = try await SecretEngine.open(config: c, unlocker: unlocker, policies: policyStore, logger: logger)
                print("cofferd: created \(c.databaseLocation); its root key opens with any \(k) of these \(n) shares (shown once):")
                for t in texts {
                    let line = String(decoding: t.text.copyToArray(), as: UTF8.self)
                    if let shareDir {
                        let path = "\(shareDir)/coffer-share-\(t.set)-\(t.index).txt"
                        do throws(CofferError) {
                            try Prompt.writeNew(path, line + "\n")
                            print("cofferd: wrote share \(t.index) to \(path) (0400)")
                        } catch {
                            print("cofferd: cannot write \(path) (\(error.message)); share \(t.index) is here instead:\n\(line)")
                        }
                    } else {
                        print(line)
                    }
                }
                print("cofferd: give each share to its own holder; cofferd serve starts sealed; unseal with `coffer operator unseal`, one share each")
            default:
                throw CofferError(.config, "--unseal must be keyfile, passphrase or shares")
            }
        } catch let e as CofferError {
            throw fail(e)
        }
    }
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy a SQLite store into an empty PostgreSQL database, verified row for row (README, Many hosts).",
        discussion: """
            Reads one consistent snapshot of the SQLite file (the daemon may go on serving it; writes after the \
            snapshot are not copied: stop writes, or migrate again into a new database), copies every table \
            (ciphertext, wrapped keys, tokens' hashes, elevations, the audit trail) in one PostgreSQL transaction, \
            reads it back and commits only when it equals the source. Nothing is decrypted: no key is needed. \
            With --state, the trail's audit.pub and audit.anchor are copied there for the new daemon's state_dir.
            """)

    @Option(help: ArgumentHelp("The SQLite store: sqlite:PATH (its coffer.db).", valueName: "sqlite:PATH"))
    var from: String

    @Option(help: ArgumentHelp("The PostgreSQL database: postgresql://USER@HOST:PORT/DATABASE or postgresql://USER@/DATABASE?host=/run/postgresql.",
                               valueName: "URL"))
    var to: String

    @Option(help: "A file holding the PostgreSQL password (none: the server's own authentication, e.g. peer).")
    var passwordFile: String?

    @Option(help: "A new state directory for the daemon on PostgreSQL: audit.pub and audit.anchor are copied into it.")
    var state: String?

    func run() async throws {
        do {
            try hardenProcess()
            guard from.hasPrefix("sqlite:"), from.count > "sqlite:".count else {
                throw CofferError(.invalidParameter, "--from must be sqlite:PATH", hint: "e.g. --from sqlite:/var/lib/coffer/coffer.db")
            }
            let path = URL(fileURLWithPath: String(from.dropFirst("sqlite:".count))).standardizedFileURL.path
            let url = to.hasPrefix("postgres:postgres") ? String(to.dropFirst("postgres:".count)) : to
            var target = try PostgresTarget.parse(url: url)
            if let passwordFile {
                guard FileManager.default.isReadableFile(atPath: passwordFile) else {
                    throw CofferError(.invalidParameter, "cannot read the password file \(passwordFile)")
                }
                target.passwordFile = URL(fileURLWithPath: passwordFile).standardizedFileURL.path
            }
            let dir = (path as NSString).deletingLastPathComponent
            let carried = ["audit.pub", AuditAnchor.fileName]
            if let state {
                for f in carried where FileManager.default.fileExists(atPath: state + "/" + f) {
                    throw CofferError(.config, "\(state) already holds \(f)", hint: "name a new state directory")
                }
                for f in carried where !FileManager.default.fileExists(atPath: dir + "/" + f) {
                    throw CofferError(.config, "\(dir) has no \(f) beside the database", hint: "the trail's files stay beside coffer.db")
                }
            }
            // read before the snapshot: the anchor then names a checkpoint the copy holds
            let files = state == nil ? [] : carried.map { FileManager.default.contents(atPath: dir + "/" + $0) }
            let report: Store.MigrationReport
            do { report = try Store.migrate(fromSQLite: path, to: target) } catch let e as CofferError { throw e } catch {
                throw CofferError(.storage, "cannot migrate: \(Store.describe(error))", hint: "is the PostgreSQL server up, and the URL right?")
            }
            if let state {
                try makeDirectory(state)
                for (f, data) in zip(carried, files) {
                    guard let data, FileManager.default.createFile(atPath: state + "/" + f, contents: data, attributes: [.posixPermissions: 0o644]) else {
                        throw CofferError(.config, "cannot copy \(f) into \(state)")
                    }
                }
            }
            let rows = report.tables.filter { $0.rows > 0 }.map { "\($0.name) \($0.rows)" }.joined(separator: ", ")
            print("cofferd: copied \(path) into \(target): \(rows)")
            print("cofferd: verified: every row reads back as the source (sha256 \(report.digest))")
            if let state { print("cofferd: audit.pub and audit.anchor are in \(state); use it as storage.state_dir with backend = \"postgres\"") }
        } catch let e as CofferError {
            throw fail(e)
        }
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve the API on the configured Unix socket.")

    @Option(help: "Config file.")
    var config: String = CofferConfig.defaultPath

    @Flag(help: "Accept the audit trail as it stands when its head anchor (audit.anchor) is missing, and anchor it anew (logged).")
    var reanchorAudit = false

    @Flag(help: "Start sealed: read no key; answer health and status, and wait for an admin's `coffer unseal`.")
    var sealed = false

    @Option(help: "Log format: auto (journal under systemd, else text), text, journal or json (overrides log.format).")
    var logFormat: String?

    func run() async throws {
        do {
            try hardenProcess()
            let c = try loadConfig(config)
            let logger = makeLogger(c.logLevel, format: logFormat ?? c.logFormat)
            try StateChecks.installed(configFile: config, c)
            try await serve(c, logger: logger, reanchorAudit: reanchorAudit, create: false, sealed: sealed || c.startSealed) { _ in }
        } catch let e as CofferError {
            throw fail(e)
        }
    }
}

struct Restore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restore a backup (coffer operator backup) into a new state directory, checked before it is kept.",
        discussion: """
            Needs the key material of the Coffer that made it (keys.key_file of --config). The database is written \
            to --state (default: the config's storage.state_dir; it must hold no database), opened with the key, and \
            kept only if the manifest's signature verifies with that database's own audit key, its trail reaches \
            the manifest's head and verifies, and every record's MAC matches; otherwise nothing is left behind.
            """)

    @Argument(help: "The backup file.")
    var file: String

    @Option(help: "Config file (its key file opens the backup).")
    var config: String = CofferConfig.defaultPath

    @Option(help: "The new state directory (overrides storage.state_dir).")
    var state: String?

    @Flag(help: "The backup's root key is held by a passphrase: read it from one line of standard input.")
    var passphraseStdin = false

    @Option(help: "The backup's root key is held by shares: a file holding one (repeat up to the threshold).")
    var shareFile: [String] = []

    /// How the restored database is opened: the config's key file, or what its holder needs.
    func unlocker(_ c: CofferConfig, database: String) throws(CofferError) -> any Unlocker {
        if passphraseStdin { return PassphraseUnlocker(passphrase: try Prompt.passphrase(fromStdin: true)) }
        if !shareFile.isEmpty {
            guard let h = try? Store.readHolder(path: database), h.mode == .shares, let set = h.shareSet else {
                throw CofferError(.invalidParameter, "the backup's root key is not held by shares")
            }
            var texts: [[UInt8]] = []
            for f in shareFile {
                guard let d = FileManager.default.contents(atPath: f) else { throw CofferError(.invalidParameter, "cannot read \(f)") }
                texts.append([UInt8](d))
            }
            return try SharesUnlocker(texts: texts, holder: h, set: set)
        }
        return KeyFileUnlocker(path: c.keyFile)
    }

    func run() async throws {
        do {
            try hardenProcess()
            var c = try loadConfig(config)
            if let state {
                c.stateDir = URL(fileURLWithPath: state).standardizedFileURL.path
                c.databasePath = nil
            }
            let logger = makeLogger(c.logLevel)
            guard let data = FileManager.default.contents(atPath: file) else {
                throw CofferError(.invalidParameter, "cannot read \(file)")
            }
            let parsed = try BackupFile.decode([UInt8](data))
            guard Hex.encode(Hashing.sha256(parsed.database)) == parsed.manifest.sha256 else {
                throw CofferError(.integrity, "the database in \(file) does not match its manifest (changed after the backup)")
            }
            try makeDirectory(c.stateDir)
            let lock = try StateLock(stateDir: c.stateDir)
            defer { withExtendedLifetime(lock) {} }
            guard c.postgres == nil else {
                throw CofferError(.config, "cofferd restore writes a SQLite database; this configuration uses PostgreSQL",
                                  hint: "restore PostgreSQL with its own tools (pg_restore, a base backup); README, Many hosts")
            }
            let db = c.resolvedDatabasePath
            let made = [db, db + "-wal", db + "-shm", c.stateDir + "/audit.pub", c.stateDir + "/" + AuditAnchor.fileName]
            guard !made.contains(where: { FileManager.default.fileExists(atPath: $0) }) else {
                throw CofferError(.config, "\(c.stateDir) already holds a Coffer database; restore into a new state directory",
                                  hint: "cofferd restore FILE --state NEWDIR")
            }
            let fd = open(db, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw CofferError(.config, "cannot create \(db): \(String(cString: strerror(errno)))") }
            let written = parsed.database.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            let synced = fsync(fd) == 0
            close(fd)
            do throws(CofferError) {
                guard written == parsed.database.count, synced else { throw CofferError(.config, "cannot write \(db)") }
                try await Self.openAndCheck(c, parsed, unlocker: try unlocker(c, database: db), logger: logger)
            } catch {
                for f in made { unlink(f) }
                throw error
            }
            let m = parsed.manifest
            print("cofferd: restored \(m.secrets) secrets, \(m.versions) versions and \(m.tokens) tokens into \(c.stateDir) (audit head seq \(m.auditHeadSeq), backup of \(Timestamp.string(millis: m.createdAt)))")
            if let policy = m.policy {
                let path = c.stateDir + "/policy.toml"
                try Prompt.writeNew(path, policy, mode: 0o600)
                print("cofferd: the policy as it was at the backup is in \(path) (compare it with access.policy_file, or point that at it)")
            }
            print("cofferd: start it with storage.state_dir = \"\(c.stateDir)\" and the same key material")
        } catch let e as CofferError {
            throw fail(e)
        }
    }

    static func openAndCheck(_ c: CofferConfig, _ parsed: BackupFile.Parsed, unlocker: any Unlocker, logger: Logger) async throws(CofferError) {
        let store = try policies(for: c, logger: logger)
        let engine: SecretEngine
        do {
            engine = try await SecretEngine.open(config: c, unlocker: unlocker, policies: store,
                                                 logger: logger, reanchorAudit: true, create: false)
        } catch {
            guard error.code == .keyFile else { throw error }
            throw CofferError(.integrity, "the backup was made by another Coffer: \(unlocker.description) does not open it (\(error.message))",
                              hint: "restore with the key file of the Coffer that made it (--config pointing at it)")
        }
        try await engine.checkRestored(parsed)
    }
}

struct Rekey: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Change the root key (daemon stopped): re-seal the keyring under a new key file; secrets and tokens stay valid.",
        discussion: """
            Creates --new-key-file (mode 0400, never overwritten), re-seals every keyring key and the audit signing key \
            under it in one transaction, and removes the old key's check. Afterwards point keys.key_file at the new file; \
            the old key no longer opens the database. Keep the old file until the daemon has started with the new one.
            """)

    @Option(help: "Config file.")
    var config: String = CofferConfig.defaultPath

    @Option(help: "Where to create the new root key file.")
    var newKeyFile: String

    func run() async throws {
        do {
            try hardenProcess()
            let c = try loadConfig(config)
            try StateChecks.installed(configFile: config, c)
            // the same locks as serve: refuses while a daemon runs on this state or database
            let lock = try StateLock(stateDir: c.stateDir)
            let dbDir = (c.resolvedDatabasePath as NSString).deletingLastPathComponent
            let dbLock = dbDir == c.stateDir || c.postgres != nil ? nil : try StateLock(stateDir: dbDir)
            defer { withExtendedLifetime((lock, dbLock)) {} }
            // the old key must open the database before a new one is made
            _ = try RootKey.unlock(KeyFileUnlocker(path: c.keyFile), database: c.databaseLocation).root
            try KeyFile.create(at: newKeyFile)
            let change: SecretEngine.RootKeyChange
            do {
                // where serve would refuse the key, nothing is re-sealed under it
                try FileTrust.check(newKeyFile, "new key file")
                change = try SecretEngine.changeRootKey(config: c, from: KeyFileUnlocker(path: c.keyFile), to: KeyFileUnlocker(path: newKeyFile))
            } catch {
                unlink(newKeyFile)
                throw error
            }
            print("cofferd: the keyring is now sealed under \(newKeyFile) (root key id \(change.newRootKeyID)); set keys.key_file to it")
            if change.legacyVersions == 0 && !change.legacyPurposeKeys {
                print("cofferd: the old key file \(c.keyFile) no longer opens the database")
            } else {
                print("cofferd: the old key no longer unlocks the database, but it is not yet shut out: this database predates the keyring,")
                print("cofferd: so the old key is still the data key of \(change.legacyVersions) secret versions (now decrypt-only; new versions use a new data key)")
                if change.legacyPurposeKeys { print("cofferd: and the token-hash and audit MAC keys are still derivable from it (they are carried over so tokens stay valid)") }
                print("cofferd: keep the old key file as secret as the new one; rewrite or destroy those versions to end its reach")
            }
        } catch let e as CofferError {
            throw fail(e)
        }
    }
}

/// The passphrase of `cofferd init --unseal passphrase`: twice on the terminal without
/// echo, or one line of stdin; never on the command line.
enum Prompt {
    static func passphrase(fromStdin: Bool) throws(CofferError) -> SecretBytes {
        var first: [UInt8]
        if fromStdin {
            guard let l = readLine(strippingNewline: true) else { throw CofferError(.config, "expected the passphrase on standard input") }
            first = Array(l.utf8)
        } else {
            guard let a = ask("Passphrase: "), let b = ask("Repeat it: ") else {
                throw CofferError(.config, "no terminal to ask the passphrase on", hint: "--passphrase-stdin")
            }
            guard a == b else { throw CofferError(.config, "the two passphrases differ") }
            first = Array(a.utf8)
        }
        guard first.count >= KeyHolder.minPassphraseBytes, first.count <= KeyHolder.maxPassphraseBytes else {
            throw CofferError(.config, "the passphrase must be \(KeyHolder.minPassphraseBytes) to \(KeyHolder.maxPassphraseBytes) bytes",
                              hint: "use several words")
        }
        do { return try SecretBytes(consuming: &first) } catch { throw CofferError(.internal, "cannot allocate guarded memory") }
    }

    static func ask(_ prompt: String) -> String? {
        let fd = open("/dev/tty", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        _ = prompt.withCString { write(fd, $0, strlen($0)) }
        var saved = termios()
        let isTTY = tcgetattr(fd, &saved) == 0
        if isTTY {
            var quiet = saved
            quiet.c_lflag &= ~tcflag_t(ECHO)
            tcsetattr(fd, TCSAFLUSH, &quiet)
        }
        defer {
            if isTTY {
                tcsetattr(fd, TCSAFLUSH, &saved)
                _ = write(fd, "\n", 1)
            }
        }
        var line: [UInt8] = []
        var ch: UInt8 = 0
        while read(fd, &ch, 1) == 1 {
            if ch == 0x0A { break }
            line.append(ch)
            if line.count > KeyHolder.maxPassphraseBytes { return nil }
        }
        return String(decoding: line, as: UTF8.self)
    }

    static func writeNew(_ path: String, _ text: String, mode: mode_t = 0o400) throws(CofferError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        guard fd >= 0 else { throw CofferError(.config, "cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == bytes.count, fsync(fd) == 0 else {
            unlink(path)
            throw CofferError(.config, "cannot write \(path)")
        }
    }
}

/// Whether the database exists: the SQLite file, or an initialised PostgreSQL database.
func databaseExists(_ location: DatabaseLocation) throws(CofferError) -> Bool {
    switch location {
    case .sqlite(let path): return FileManager.default.fileExists(atPath: path)
    case .postgres:
        do { return try Store.readKeyCheck(location: location) != nil } catch let e as CofferError { throw e } catch {
            throw CofferError(.storage, "cannot read the database \(location): \(Store.describe(error))",
                              hint: "is the PostgreSQL server up, and does [storage.postgres] name it?")
        }
    }
}
