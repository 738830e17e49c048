import CCofferLinux
import CofferCore
import CofferCrypto
#if canImport(Glibc)
import Glibc
#endif

/// `coffer run`'s options as plain values: what Runner works from, filled by
/// ArgumentParser (RunOptions) or by the fast path (FastRun) alike.
public struct RunSettings: Equatable, Sendable {
    public var secrets: [String] = []
    public var templates: [String] = []
    public var envFile: String?
    public var dirEnv: [String] = []
    public var env: [String] = []
    public var credentials = false
    public var ttl: String?
    public var size: String?
    public var mount = "auto"
    public var dir = "/run/coffer/secrets"
    public var network = "host"
    public var allowSwap = false
    public var keepChildren = false
    /// Live rotation: cofferd writes each new version of the --secret files while the run lives.
    public var follow = false
    /// SIGHUP (forwarded to the command by the runner) after each update of a followed run.
    public var signal: String?
    public var dryRun = false
    /// [REGISTRY=]PATH: containers auth JSON, or user:password for REGISTRY
    public var registryAuth: [String] = []
    public var command: [String] = []

    public init() {}
}

/// One file of the run.
struct RunFile {
    var name: String
    var bytes: [UInt8]
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    /// For `coffer build`: changes exactly when what the file was made from changes.
    var versionKey: [UInt8]
}

struct SecretSpec {
    var path: SecretPath
    var name: String
    var mode: UInt32 = 0o400
    var uid: UInt32?
    var gid: UInt32?

    /// PATH[=NAME][:mode=0400,uid=N,gid=N]
    init(_ text: String) throws(CofferError) {
        var main = Substring(text)
        var opts: Substring?
        if let colon = text.firstIndex(of: ":") {
            main = text[..<colon]
            opts = text[text.index(after: colon)...]
        }
        var name: String?
        if let eq = main.firstIndex(of: "=") {
            name = String(main[main.index(after: eq)...])
            main = main[..<eq]
        }
        path = try SecretPath(String(main))
        self.name = name ?? String(path.segments.last!)
        try RunNames.checkFileName(self.name)
        var given = Set<String>()
        for opt in (opts.map { $0.split(separator: ",", omittingEmptySubsequences: false) } ?? []) {
            let kv = opt.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { throw CofferError(.invalidParameter, "'\(opt)' in --secret \(text): options are mode=, uid= and gid=") }
            guard given.insert(kv[0]).inserted else { throw CofferError(.invalidParameter, "\(kv[0]) is given twice in --secret \(text)") }
            switch kv[0] {
            case "mode":
                guard kv[1].utf8.count <= 4, let m = UInt32(kv[1], radix: 8), m <= 0o777 else {
                    throw CofferError(.invalidParameter, "mode must be octal 0000...0777, e.g. 0400")
                }
                mode = m
            case "uid", "gid":
                guard kv[1].utf8.count <= 10, kv[1].utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let n = UInt32(kv[1]), n != UInt32.max else {
                    throw CofferError(.invalidParameter, "\(kv[0]) must be a number 0...4294967294")
                }
                if kv[0] == "uid" { uid = n } else { gid = n }
            default:
                throw CofferError(.invalidParameter, "unknown option '\(kv[0])' in --secret \(text)", hint: "options are mode=, uid= and gid=")
            }
        }
    }
}

/// Everything `coffer run` does, in order: check every input, fetch in one request,
/// make the tmpfs and the files, run, report the end.
public struct Runner {
    let global: ClientSettings
    let options: RunSettings
    let build: Bool

    public init(global: ClientSettings, options: RunSettings, build: Bool) {
        self.global = global
        self.options = options
        self.build = build
    }

    enum Mode { case `private`, daemon }

    public func execute() throws -> Int32 {
        // 1. every input, before anything is fetched or mounted
        guard !options.command.isEmpty else {
            throw CofferError(.invalidParameter, "no command to run", hint: "coffer run [--secret PATH]… -- COMMAND [ARGS…]")
        }
        let specs = try options.secrets.map { s throws(CofferError) in try SecretSpec(s) }
        var templates: [(name: String, template: SecretTemplate, source: [UInt8])] = []
        for t in options.templates {
            guard let colon = t.lastIndex(of: ":") else { throw CofferError(.invalidParameter, "--template takes SRC:NAME") }
            let src = String(t[..<colon]), name = String(t[t.index(after: colon)...])
            try RunNames.checkFileName(name)
            guard let data = Environment.readFile(src, limit: SecretTemplate.maxBytes), let text = String(validating: data, as: UTF8.self) else {
                throw CofferError(.invalidParameter, "cannot read the template \(src) (UTF-8 text, at most 1 MiB)")
            }
            templates.append((name, try SecretTemplate(parsing: text, name: src), data))
        }
        var envVars: [(variable: String, path: SecretPath)] = []
        for e in options.env {
            guard let eq = e.firstIndex(of: "=") else { throw CofferError(.invalidParameter, "--env takes VAR=PATH") }
            let v = String(e[..<eq])
            try RunNames.checkVariable(v)
            // the run's own variables, and the dynamic loader's (it may print them), are not for values
            guard !["COFFER_SECRETS_DIR", "CREDENTIALS_DIRECTORY", "REGISTRY_AUTH_FILE", Self.insideMarker].contains(v), !options.dirEnv.contains(v),
                  !v.hasPrefix("LD_") else {
                throw CofferError(.invalidParameter, "--env \(v) would replace a variable the run or the dynamic loader uses", hint: "pick another name")
            }
            guard !envVars.contains(where: { $0.variable == v }) else { throw CofferError(.invalidParameter, "--env \(v) is given twice") }
            envVars.append((v, try SecretPath(String(e[e.index(after: eq)...]))))
        }
        for v in options.dirEnv { try RunNames.checkVariable(v) }
        if let n = options.envFile { try RunNames.checkFileName(n) }
        let registryAuth = try options.registryAuth.map { a throws(CofferError) in try RegistryAuth.Source(a) }
        var names = Set<String>()
        for n in specs.map(\.name) + templates.map(\.name) + (options.envFile.map { [$0] } ?? []) + (registryAuth.isEmpty ? [] : [RegistryAuth.fileName]) {
            guard names.insert(n).inserted else { throw CofferError(.invalidParameter, "two files are named \(n)", hint: "give one a name: --secret PATH=NAME") }
        }
        guard !specs.isEmpty || !templates.isEmpty || !envVars.isEmpty || !registryAuth.isEmpty else {
            throw CofferError(.invalidParameter, "no secret to inject", hint: "add --secret PATH (or --template, --env, --registry-auth)")
        }
        let size = try parseSize(options.size)
        guard ["host", "none"].contains(options.network) else {
            throw CofferError(.invalidParameter, "--network must be host or none")
        }
        // --network none: this program runs again inside new namespaces (runIsolated)
        // and asks cofferd from there; `inside` is that second run
        let isolated = options.network == "none"
        let inside = isolated && getpid() == 1 && Environment.get(Self.insideMarker) == "1"
        let mode: Mode
        switch options.mount {
        case "auto": mode = geteuid() == 0 || isolated ? .private : .daemon
        case "private": mode = .private
        case "daemon": mode = .daemon
        default: throw CofferError(.invalidParameter, "--mount must be auto, private or daemon")
        }
        if isolated && mode != .private {
            throw CofferError(.invalidParameter, "--network none makes a private namespace of its own: not with --mount daemon")
        }
        if options.follow && isolated {
            throw CofferError(.invalidParameter, "--follow does not go with --network none", hint: "a run without network keeps the versions it started with")
        }
        if options.follow && specs.isEmpty {
            throw CofferError(.invalidParameter, "--follow rewrites --secret files: give at least one", hint: "templates, --env-file and --env are made once")
        }
        var signal: String?
        if let s = options.signal {
            guard options.follow else { throw CofferError(.invalidParameter, "--signal goes with --follow") }
            guard s == "SIGHUP" || s == "HUP" else {
                throw CofferError(.invalidParameter, "--signal must be SIGHUP", hint: "coffer run forwards SIGHUP to the command; other signals would reach coffer run itself")
            }
            signal = "SIGHUP"
        }
        if isolated && options.keepChildren {
            throw CofferError(.invalidParameter, "--keep-children does not go with --network none", hint: "a run without network ends with everything it started")
        }
        if isolated && geteuid() != 0 && !options.allowSwap && !options.dryRun {
            // (checked before anything is fetched: the kernel allows noswap only to the initial user namespace's mounts)
            throw CofferError(.invalidParameter, "a run without network of a user who is not root makes its tmpfs in a user namespace, where the kernel does not allow noswap",
                              hint: "add --allow-swap (the values may then reach swap: weak), or run it as root")
        }
        if mode == .private && geteuid() != 0 && !isolated {
            throw CofferError(.invalidParameter, "a private mount namespace needs root", hint: "leave --mount at auto: cofferd then mounts the tmpfs for you")
        }
        for s in specs where (s.uid.map { $0 != getuid() } ?? false) || (s.gid.map { $0 != getgid() } ?? false) {
            guard mode == .private && geteuid() == 0 else { throw CofferError(.invalidParameter, "only root gives files to another uid or gid (\(s.name))") }
        }
        if mode == .private { try checkMountPoint(options.dir) }
        var argv = options.command
        if build {
            argv = try buildArguments(argv, specs: specs, templates: templates, dryRun: true)
            // each file's build argument must be its own (a.b and a_b would share one)
            var variables: [String: String] = [:]
            for n in specs.map(\.name) + templates.map(\.name) + (options.envFile.map { [$0] } ?? []) {
                if let other = variables.updateValue(n, forKey: RunNames.variable(for: n)) {
                    throw CofferError(.invalidParameter, "\(other) and \(n) would share the build argument COFFER_SECRET_\(RunNames.variable(for: n))_VERSION",
                                      hint: "rename one: --secret PATH=NAME")
                }
            }
        }
        let exe = try resolveExecutable(argv[0])
        if isolated && !inside && !options.dryRun { return try runIsolated() }
        // from here this process holds values: no core dump of it, no ptrace by its user
        _ = coffer_protect_values()

        // 2. one request for every path
        var paths: [SecretPath] = []
        var seen = Set<String>()
        for p in specs.map(\.path) + templates.flatMap(\.template.paths) + envVars.map(\.path) + registryAuth.map(\.path)
            where seen.insert(p.rawValue).inserted { paths.append(p) }
        let http = try global.http()
        // a private run's namespaces and empty tmpfs are made while cofferd answers (no
        // value is in them until the start is granted; refused, they are discarded)
        var prepared: PreparedRun?
        defer { prepared?.abandon() }
        let prepare = mode == .private && !options.keepChildren && !inside && !options.dryRun
        let follow = options.follow ? RunAPI.Follow(target: Self.canonical(options.dir), files: specs.map {
            RunAPI.Follow.File(path: $0.path.rawValue, name: $0.name, mode: $0.mode, uid: $0.uid ?? getuid(), gid: $0.gid ?? getgid())
        }, signal: signal) : nil
        var started = try RunAPI.start(http, paths: paths.map(\.rawValue), mount: mode == .private ? "private" : "daemon",
                                       sizeBytes: size, ttl: options.ttl, network: options.network, dryRun: options.dryRun, follow: follow,
                                       target: mode == .private ? Self.canonical(options.dir) : nil,
                                       whileWaiting: prepare ? { prepared = PreparedRun(size: size, allowSwap: options.allowSwap) } : nil)
        if options.dryRun {
            return try report(started, specs: specs, templates: templates, envVars: envVars, registryAuth: registryAuth, mode: mode, size: size)
        }
        guard let runID = started.id else { throw ClientError(kind: .io, message: "cofferd started no run") }
        var ended = false
        func end(_ status: Int?, _ fate: String) {
            guard !ended else { return }
            ended = true
            // the command has ended: a daemon that does not answer soon is not waited
            // for (its watch of this process ends the run when it exits)
            http.timeoutSeconds = 5
            if (try? RunAPI.end(http, runID, exitStatus: status, fate: fate)) != nil { return }
            // cofferd closes an idle keep-alive connection after a minute: a long run
            // reports its end over a new one (a repeat of an end that did arrive is a 404)
            guard let fresh = try? global.http() else { return }
            fresh.timeoutSeconds = 5
            try? RunAPI.end(fresh, runID, exitStatus: status, fate: fate)
        }
        do {
            // 3. the files
            var values: [String: [UInt8]] = [:]
            var versions: [String: RunAPI.Secret] = [:]
            for i in started.secrets.indices {
                let s = started.secrets[i]
                guard let v = s.value else { throw ClientError(kind: .io, message: "cofferd sent no value for \(s.path)") }
                values[s.path] = v
                Wipe.bytes(&started.secrets[i].value!)
                started.secrets[i].value = nil
                versions[s.path] = s
                versions[s.path]?.value = nil
            }
            // every path asked for, and only values asked for (a broken or hostile peer
            // must not turn a missing secret into an empty file)
            for p in paths where values[p.rawValue] == nil {
                throw ClientError(kind: .protocolError, message: "cofferd sent no value for \(p)")
            }
            func wipeValues() { for k in Array(values.keys) { Wipe.bytes(&values[k]!) } }
            defer { wipeValues() }
            func versionKey(_ paths: [SecretPath], _ extra: [UInt8]) -> [UInt8] {
                var key = extra
                for p in paths { key += LengthPrefixed.encode("", [Array(p.rawValue.utf8), Array(String(versions[p.rawValue]?.version ?? 0).utf8),
                                                                  Array((versions[p.rawValue]?.createdAt ?? "").utf8)]) }
                return key
            }
            var files: [RunFile] = specs.map { s in
                RunFile(name: s.name, bytes: values[s.path.rawValue] ?? [], mode: s.mode, uid: s.uid ?? getuid(), gid: s.gid ?? getgid(),
                        versionKey: versionKey([s.path], []))
            }
            for t in templates {
                files.append(RunFile(name: t.name, bytes: t.template.render { values[$0.rawValue] ?? [] }, mode: 0o400, uid: getuid(), gid: getgid(),
                                     versionKey: versionKey(t.template.paths, Array(Hashing.blake2b(t.source)))))
            }
            if let name = options.envFile {
                var text: [UInt8] = []
                for s in specs { text += try envLine(RunNames.variable(for: s.name), values[s.path.rawValue] ?? []) }
                files.append(RunFile(name: name, bytes: text, mode: 0o400, uid: getuid(), gid: getgid(), versionKey: versionKey(specs.map(\.path), [])))
            }
            if !registryAuth.isEmpty {
                files.append(RunFile(name: RegistryAuth.fileName, bytes: try RegistryAuth.file(registryAuth, values: values), mode: 0o400,
                                     uid: getuid(), gid: getgid(), versionKey: versionKey(registryAuth.map(\.path), [])))
            }
            defer { for i in files.indices { Hashing.wipe(&files[i].bytes) } }
            let total = files.reduce(0) { $0 + $1.bytes.count + 512 }
            guard total <= size else {
                throw CofferError(.valueTooLarge, "the files need about \(total) bytes; the tmpfs holds \(size)", hint: "raise --size")
            }
            let dir: String
            switch mode {
            case .private:
                dir = Self.canonical(options.dir)
            case .daemon:
                guard let p = started.mountPath else { throw ClientError(kind: .io, message: "cofferd mounted no tmpfs") }
                dir = p
                if started.noswap == false { writeStderr("coffer: warning: the kernel refused noswap: the tmpfs may be swapped out\n") }
            }
            if build {
                // (registry credentials are for pushes and pulls, not a build secret)
                argv = try buildArguments(options.command, specs: specs, templates: templates, dryRun: false, dir: dir,
                                          files: files.filter { registryAuth.isEmpty || $0.name != RegistryAuth.fileName })
            }

            // 4. the environment
            var environment = Environment.all()
            environment[Self.insideMarker] = nil
            environment["COFFER_SECRETS_DIR"] = dir
            for v in options.dirEnv { environment[v] = dir }
            if options.credentials { environment["CREDENTIALS_DIRECTORY"] = dir }
            // buildah, podman and skopeo read push and pull credentials from there
            if !registryAuth.isEmpty { environment["REGISTRY_AUTH_FILE"] = dir + "/" + RegistryAuth.fileName }
            for e in envVars {
                guard let text = String(validating: values[e.path.rawValue] ?? [], as: UTF8.self), !text.contains("\0") else {
                    throw CofferError(.invalidParameter, "\(e.path) is not text: it cannot go in \(e.variable)", hint: "use it as a file")
                }
                environment[e.variable] = text
            }

            // 5. run
            let status = try spawn(exe: exe, argv: argv, environment: environment, files: &files, dir: dir, mode: mode, prepared: prepared,
                                   size: size, ttl: UInt32(clamping: started.ttlSeconds), inside: inside, beforeFork: wipeValues)
            if status.expired {
                end(Int(status.code), "ttl expired: coffer run killed the command")
                if let holder = status.unreaped { _ = coffer_run_reap(holder) }
                throw RunFailure(status: 124, message: "the run's ttl (\(started.ttlSeconds)s) expired: the command was killed", hint: "raise --ttl")
            }
            if let holder = status.unreaped {
                // the command has ended and its namespace's init is exiting: the end is
                // reported while the kernel releases the namespace, then the init reaped
                end(Int(status.code), "the command ended; its private namespace is released with it")
                _ = coffer_run_reap(holder)
            } else {
                end(Int(status.code), mode == .private ? "the private namespace was released" : "the command ended")
            }
            return status.code
        } catch {
            end(nil, "not started: the runner failed")
            throw error
        }
    }

    /// The command after `--` as the kernel gave it to this process: bytes, since not
    /// every argument is UTF-8 (a String would replace such bytes).
    static func rawCommand() -> [[CChar]]? {
        let v = CommandLine.unsafeArgv
        let argc = Int(CommandLine.argc)
        for i in 1..<max(argc, 1) where v[i].map({ strcmp($0, "--") == 0 }) ?? false {
            return (i + 1..<argc).compactMap { j in v[j].map { Array(UnsafeBufferPointer(start: $0, count: strlen($0) + 1)) } }
        }
        return nil
    }

    /// Marks the second run of a run without network (set only by runIsolated, and
    /// believed only by PID 1 of a PID namespace; cofferd checks the isolation itself).
    static let insideMarker = "COFFER_RUN_INSIDE"

    /// A run without network: this program again, with the same arguments, as PID 1 of
    /// new mount, PID and network namespaces (and, for a caller who is not root, of a
    /// user namespace), so that the process cofferd releases the values to is one that
    /// cannot reach the network — cofferd verifies that from the kernel before it
    /// answers. This process forwards signals and exits with the run's status.
    func runIsolated() throws -> Int32 {
        var environment = Environment.all()
        environment[Self.insideMarker] = "1"
        var cStrings: [UnsafeMutablePointer<CChar>?] = []
        defer { for p in cStrings { free(p) } }
        let argvC = (0..<Int(CommandLine.argc)).map { CommandLine.unsafeArgv[$0].map { strdup($0) } ?? nil } + [nil]
        let envC = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        cStrings = argvC + envC
        var reportFD: Int32 = -1
        let pid = argvC.withUnsafeBufferPointer { a in
            envC.withUnsafeBufferPointer { e in coffer_run_isolated(a.baseAddress, e.baseAddress, geteuid() == 0 ? 0 : 1, &reportFD) }
        }
        guard pid > 0 else {
            let e = errno
            throw CofferError(.invalidParameter, "cannot make namespaces without network: \(String(cString: strerror(e)))",
                              hint: geteuid() == 0 ? nil : "a caller who is not root needs user namespaces (kernel.unprivileged_userns_clone, user.max_user_namespaces)")
        }
        let failure = readSpawnReports(reportFD)
        var expired: Int32 = 0
        let code = coffer_run_wait(pid, 0, &expired)
        if let f = failure {
            let reason = String(cString: strerror(f.err))
            switch Int(f.stage) {
            case COFFER_STAGE_NETWORK: throw CofferError(.invalidParameter, "cannot bring up loopback in the new network namespace: \(reason)")
            case COFFER_STAGE_EXEC: throw CofferError(.invalidParameter, "cannot start coffer again inside the namespaces: \(reason)")
            default: throw CofferError(.invalidParameter, "cannot set up the namespaces without network (stage \(f.stage)): \(reason)")
            }
        }
        return code
    }

    /// The tmpfs size: bytes, or a number with k or m.
    func parseSize(_ text: String?) throws(CofferError) -> Int {
        guard let text else { return 1024 * 1024 }
        var digits = Substring(text)
        var unit = 1
        if let last = text.last, last == "k" || last == "m" {
            unit = last == "k" ? 1024 : 1024 * 1024
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, digits.count <= 7, digits.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let n = Int(digits), n * unit >= 4096,
              n * unit <= 1 << 30 else {
            throw CofferError(.invalidParameter, "--size must be 4k...1024m, e.g. 512k or 2m")
        }
        return n * unit
    }

    /// PATH lookup as the shell does it; a clear error for missing or non-executable.
    func resolveExecutable(_ name: String) throws -> String {
        guard !name.isEmpty else { throw RunFailure(status: 127, message: "the command is empty", hint: "coffer run [--secret PATH]… -- COMMAND [ARGS…]") }
        func check(_ p: String) -> Bool? {
            var st = stat()
            guard stat(p, &st) == 0 else { return nil }
            return (st.st_mode & S_IFMT) == S_IFREG && access(p, X_OK) == 0
        }
        if name.contains("/") {
            switch check(name) {
            case .some(true): return name
            case .some(false): throw RunFailure(status: 126, message: "\(name) is not an executable file", hint: "chmod +x it, or run it through its interpreter")
            case .none: throw RunFailure(status: 127, message: "\(name): no such file", hint: nil)
            }
        }
        var notExecutable: String?
        for d in (Environment.get("PATH") ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":") {
            let p = String(d) + "/" + name
            switch check(p) {
            case .some(true): return p
            case .some(false): notExecutable = p
            case .none: continue
            }
        }
        if let notExecutable { throw RunFailure(status: 126, message: "\(notExecutable) is not an executable file", hint: nil) }
        throw RunFailure(status: 127, message: "\(name): command not found", hint: "give a path, or check PATH")
    }

    static let defaultDir = "/run/coffer/secrets"

    static func canonical(_ dir: String) -> String { "/" + dir.split(separator: "/").joined(separator: "/") }

    /// Where a private run attaches its tmpfs (in its own namespace only): an existing
    /// directory reached without symbolic links, never `/`. The default is made when
    /// missing, each step checked to be a root-owned directory, not a link.
    func checkMountPoint(_ raw: String) throws {
        let parts = raw.split(separator: "/")
        guard raw.hasPrefix("/"), !parts.isEmpty, !parts.contains(where: { $0 == ".." || $0 == "." }) else {
            throw CofferError(.invalidParameter, "--dir must be an absolute path without . or .., and not /")
        }
        let create = Self.canonical(raw) == Self.defaultDir
        var path = ""
        for part in parts {
            path += "/" + part
            var st = stat()
            if lstat(path, &st) != 0 {
                guard create, errno == ENOENT, mkdir(path, 0o755) == 0, lstat(path, &st) == 0 else {
                    throw CofferError(.invalidParameter, "--dir \(raw): \(path) does not exist", hint: "give an existing empty directory")
                }
            }
            guard (st.st_mode & S_IFMT) == S_IFDIR else {
                throw CofferError(.invalidParameter, "--dir \(raw): \(path) is not a directory (symbolic links are not followed)")
            }
            if create && st.st_uid != 0 {
                throw CofferError(.invalidParameter, "\(path) belongs to uid \(st.st_uid), not root", hint: "pass --dir with a directory of your own")
            }
            // root's run: no one else may swap a step of the path for a link to theirs
            // (the command, and live rotation, would then reach their directory)
            if geteuid() == 0 && (st.st_uid != 0 || (st.st_mode & 0o022 != 0 && st.st_mode & S_ISVTX == 0)) {
                throw CofferError(.invalidParameter, "--dir \(raw): \(path) can be changed by uid \(st.st_uid) or others, not root alone",
                                  hint: "give a directory whose every step is root's and writable by root only (or sticky, as /tmp)")
            }
        }
    }

    /// One .env line: bare when the value is plain, else quoted for dotenv readers
    /// (docker compose, python-dotenv, systemd's EnvironmentFile).
    func envLine(_ variable: String, _ value: [UInt8]) throws -> [UInt8] {
        guard let text = String(validating: value, as: UTF8.self), !text.contains("\0") else {
            throw CofferError(.invalidParameter, "a value for --env-file is not text (\(variable))", hint: "inject it as a file")
        }
        let plain = text.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "_./:@%+,-".unicodeScalars.contains($0)) }
        if plain { return Array("\(variable)=\(text)\n".utf8) }
        var q = "\""
        for c in text.unicodeScalars {
            switch c {
            case "\\": q += "\\\\"
            case "\"": q += "\\\""
            case "$": q += "\\$"
            case "`": q += "\\`"
            case "\n": q += "\\n"
            default: q.unicodeScalars.append(c)
            }
        }
        return Array("\(variable)=\(q)\"\n".utf8)
    }

    /// `coffer build`: after `buildah bud|build` or `podman build`, a --secret and a
    /// --build-arg per file.
    func buildArguments(_ command: [String], specs: [SecretSpec], templates: [(name: String, template: SecretTemplate, source: [UInt8])],
                        dryRun: Bool, dir: String = "", files: [RunFile] = []) throws -> [String] {
        let tool = command[0].split(separator: "/").last.map(String.init) ?? command[0]
        guard command.count >= 2, (tool == "buildah" && ["bud", "build", "build-using-dockerfile"].contains(command[1])) || (tool == "podman" && command[1] == "build") else {
            throw CofferError(.invalidParameter, "coffer build runs `buildah bud|build …` or `podman build …`", hint: "for other commands use coffer run")
        }
        if dryRun { return command }
        var added: [String] = []
        for f in files {
            added += ["--secret", "id=\(f.name),src=\(dir)/\(f.name)"]
            let hash = Hex.encode(Hashing.blake2b(Array("coffer-build-v1".utf8) + f.versionKey, outputLength: 16))
            added += ["--build-arg", "COFFER_SECRET_\(RunNames.variable(for: f.name))_VERSION=\(hash)"]
        }
        return [command[0], command[1]] + added + command[2...]
    }

    struct Status {
        var code: Int32
        var expired: Bool
        /// the namespace's init, when the command's status came before it was reaped
        var unreaped: Int32? = nil
    }

    /// Copies the files for the C side and wipes every Swift copy of the values before
    /// the fork (the child would inherit them); the C copies are zeroed by the child
    /// once written and by this process once the child reported.
    func spawn(exe: String, argv: [String], environment: [String: String], files: inout [RunFile], dir: String, mode: Mode,
               prepared: PreparedRun? = nil, size: Int,
               ttl: UInt32, inside: Bool, beforeFork: () -> Void) throws -> Status {
        var cStrings: [UnsafeMutablePointer<CChar>?] = []
        // (the environment may hold values: --env)
        defer { for p in cStrings { if let p { memset(p, 0, strlen(p)) }; free(p) } }
        func c(_ s: String) -> UnsafeMutablePointer<CChar>? {
            let p = strdup(s)
            cStrings.append(p)
            return p
        }
        // the command's own bytes where they are its arguments unchanged (coffer build adds some)
        let rawArgs = argv == options.command ? Self.rawCommand().flatMap { $0.count == argv.count ? $0 : nil } : nil
        let argvC: [UnsafeMutablePointer<CChar>?]
        if let rawArgs {
            argvC = rawArgs.map { bytes -> UnsafeMutablePointer<CChar>? in
                let p = bytes.withUnsafeBufferPointer { strdup($0.baseAddress!) }
                cStrings.append(p)
                return p
            } + [nil]
        } else {
            argvC = argv.map(c) + [nil]
        }
        // (entries the run does not change reach the command byte for byte)
        let envC = Environment.entries(environment).map { bytes -> UnsafeMutablePointer<CChar>? in
            let p = bytes.withUnsafeBufferPointer { strdup($0.baseAddress!) }
            cStrings.append(p)
            return p
        } + [nil]
        let exeC = c(exe), dirC = c(dir)
        // value copies for the C side, zeroed once the child reported (it has its own)
        let spawnFiles = SpawnFiles(files)
        beforeFork()
        for i in files.indices { Wipe.bytes(&files[i].bytes) }
        // whoever may read a file given to another owner must be able to reach it
        let shared = files.contains { $0.uid != getuid() || $0.gid != getgid() }
        var reportFD: Int32 = -1, statusFD: Int32 = -1
        let pid: Int32 = argvC.withUnsafeBufferPointer { a in
            envC.withUnsafeBufferPointer { e in
                spawnFiles.entries.withUnsafeMutableBufferPointer { f in
                    var spec = coffer_run_spec(
                        // inside a run without network, the network and PID namespaces are made already
                        private_mount: mode == .private ? 1 : 0, private_network: options.network == "none" && !inside ? 1 : 0,
                        pid_namespace: mode == .private && !options.keepChildren && !inside ? 1 : 0, allow_swap: options.allowSwap ? 1 : 0,
                        drop_escape_caps: inside && geteuid() == 0 ? 1 : 0, container_pid: 0, container_root: nil,
                        dir: UnsafePointer(dirC), size_bytes: UInt(size), dir_mode: shared ? 0o511 : 0o500,
                        dir_uid: getuid(), dir_gid: getgid(), files: UnsafePointer(f.baseAddress), file_count: Int32(files.count),
                        exe: UnsafePointer(exeC), argv: a.baseAddress, envp: e.baseAddress)
                    if let prepared {
                        (reportFD, statusFD) = (prepared.reportFD, prepared.statusFD)
                        return prepared.feed(&spec)
                    }
                    return coffer_run_spawn(&spec, &reportFD, &statusFD)
                }
            }
        }
        if let prepared, pid <= 0 {
            // the init is gone: what it reported says why
            if let f = readSpawnReports(reportFD) { throw describe(f, files: files, dir: dir) }
            prepared.reap()
            throw ClientError(kind: .io, message: "the run's namespace ended before it was given its files")
        }
        guard pid > 0 else {
            let e = errno
            // a private run's first child is cloned into its namespaces: failing, it is those that failed
            if mode == .private { throw describe(coffer_run_report(kind: Int32(COFFER_RUN_FAILED), stage: Int32(COFFER_STAGE_UNSHARE), err: e, index: -1), files: files, dir: dir) }
            throw ClientError(kind: .io, message: "cannot start the command: \(String(cString: strerror(e)))")
        }
        // what the child reports before the command starts (EOF: it started)
        let failure = readSpawnReports(reportFD) { r in
            if r.kind == Int32(COFFER_RUN_NOTE_SWAP) {
                writeStderr("coffer: warning: the kernel refused noswap (--allow-swap): the tmpfs may be swapped out\n")
            }
        }
        spawnFiles.zero()
        var expired: Int32 = 0, reaped: Int32 = 1
        let code = coffer_run_wait_status(pid, failure == nil ? statusFD : -1, failure == nil ? ttl : 0, &expired, &reaped)
        if failure != nil && statusFD >= 0 { close(statusFD) }
        if let f = failure { throw describe(f, files: files, dir: dir) }
        return Status(code: code, expired: expired != 0, unreaped: reaped == 0 ? pid : nil)
    }

    func describe(_ r: coffer_run_report, files: [RunFile], dir: String) -> any Error {
        let reason = String(cString: strerror(r.err))
        switch Int(r.stage) {
        case COFFER_STAGE_UNSHARE:
            return CofferError(.invalidParameter, "cannot make a private namespace: \(reason)", hint: "coffer run needs root for it; others get a tmpfs from cofferd (--mount daemon)")
        case COFFER_STAGE_NOSWAP:
            return CofferError(.invalidParameter, "the kernel refuses a noswap tmpfs (Linux 6.4 or later has it)", hint: "--allow-swap goes on without it (weak)")
        case COFFER_STAGE_MOUNT, COFFER_STAGE_PRIVATE:
            return CofferError(.invalidParameter, "cannot mount a tmpfs at \(dir): \(reason)")
        case COFFER_STAGE_NETWORK:
            return CofferError(.invalidParameter, "cannot bring up loopback in the private network namespace: \(reason)")
        case COFFER_STAGE_WRITE:
            let name = r.index >= 0 && Int(r.index) < files.count ? files[Int(r.index)].name : dir
            if r.err == ENOSPC { return CofferError(.valueTooLarge, "the tmpfs is full writing \(name)", hint: "raise --size") }
            return CofferError(.invalidParameter, "cannot write \(name) on the tmpfs: \(reason)")
        case COFFER_STAGE_EXEC:
            return RunFailure(status: r.err == ENOENT ? 127 : 126, message: "cannot run \(options.command[0]): \(reason)", hint: nil)
        case COFFER_STAGE_ATTACH:
            return CofferError(.invalidParameter, "cannot attach the tmpfs at \(dir): \(reason)")
        default:
            return CofferError(.invalidParameter, "cannot set up the run (stage \(r.stage)): \(reason)")
        }
    }

    /// The dry run's report: what, where, how, and whether it is secure.
    func report(_ r: RunAPI.Started, specs: [SecretSpec], templates: [(name: String, template: SecretTemplate, source: [UInt8])],
                envVars: [(variable: String, path: SecretPath)], registryAuth: [RegistryAuth.Source], mode: Mode, size: Int) throws -> Int32 {
        let version = { (p: SecretPath) in r.secrets.first { $0.path == p.rawValue } }
        var weak: [String] = []
        let noswap = kernelHasNoswap()
        if !noswap { weak.append("this kernel has no noswap (Linux 6.4+): the tmpfs may be swapped out") }
        if options.network == "none" && geteuid() != 0 { weak.append("a user namespace's tmpfs cannot be noswap: the values may be swapped out") }
        for s in specs where s.mode != 0o400 { weak.append("\(s.name) has mode \(octal4(s.mode)), not 0400") }
        for e in envVars { weak.append("\(e.variable) puts \(e.path) in the environment") }
        if mode == .private && options.keepChildren { weak.append("--keep-children: processes the command leaves may keep the tmpfs alive") }
        let where_ = mode == .private ? "\(options.dir) in a private mount namespace\(options.keepChildren ? "" : " + PID namespace")"
            : "a directory cofferd mounts under its run directory for uid \(getuid())"
        let mountOptions = "tmpfs size=\(size),mode=0700,nosuid,nodev,noexec\(noswap ? ",noswap" : "")"
        if global.format == .json {
            // as JSONEncoder wrote it: sorted keys, absent optionals left out
            func entry(name: String, path: String, version: Int?, mode: String, uid: UInt32, gid: UInt32, allowedBy: String?) -> JSON {
                var m: [(String, JSON)] = []
                if let allowedBy { m.append(("allowedBy", .string(allowedBy))) }
                m += [("gid", .int(Int(gid))), ("mode", .string(mode)), ("name", .string(name)), ("path", .string(path)), ("uid", .int(Int(uid)))]
                if let version { m.append(("version", .int(version))) }
                return .object(m)
            }
            var entries = specs.map { s in
                entry(name: s.name, path: s.path.rawValue, version: version(s.path)?.version, mode: octal4(s.mode), uid: s.uid ?? getuid(),
                      gid: s.gid ?? getgid(), allowedBy: version(s.path)?.allowedBy)
            }
            entries += templates.map { entry(name: $0.name, path: $0.template.paths.map(\.rawValue).joined(separator: ","), version: nil, mode: "0400",
                                             uid: getuid(), gid: getgid(), allowedBy: nil) }
            if !registryAuth.isEmpty {
                entries.append(entry(name: RegistryAuth.fileName, path: registryAuth.map(\.path.rawValue).joined(separator: ","), version: nil, mode: "0400",
                                     uid: getuid(), gid: getgid(), allowedBy: nil))
            }
            let plan = JSON.object([
                ("env", .array(envVars.map { .string("\($0.variable)=\($0.path)") })), ("files", .array(entries)), ("mount", .string(where_)),
                ("network", .string(r.network)), ("options", .string(mountOptions)), ("reasons", .array(weak.map { .string($0) })),
                ("ttlSeconds", .int(r.ttlSeconds)), ("verdict", .string(weak.isEmpty ? "secure" : "weak")),
            ])
            try printLine(plan.pretty)
            return 0
        }
        let shared = specs.contains { ($0.uid.map { $0 != getuid() } ?? false) || ($0.gid.map { $0 != getgid() } ?? false) }
        var lines = ["files (directory \(shared ? "0511" : "0500"), owner uid \(getuid())):"]
        for s in specs {
            let v = version(s.path)
            lines.append("  \(s.name)  <- \(s.path) v\(v.map { String($0.version) } ?? "?")  mode \(octal4(s.mode))  uid \(s.uid ?? getuid()) gid \(s.gid ?? getgid())  (\(v?.allowedBy ?? "?"))")
        }
        for t in templates {
            let used = t.template.paths.map { p in "\(p) v\(version(p).map { String($0.version) } ?? "?")" }.joined(separator: ", ")
            lines.append("  \(t.name)  <- template (\(used.isEmpty ? "no secrets" : used))  mode 0400")
        }
        if let n = options.envFile { lines.append("  \(n)  <- .env of the --secret values  mode 0400") }
        if !registryAuth.isEmpty {
            let from = registryAuth.map { a in "\(a.path) v\(version(a.path).map { String($0.version) } ?? "?")" }.joined(separator: ", ")
            lines.append("  \(RegistryAuth.fileName)  <- registry auth (\(from))  mode 0400  (REGISTRY_AUTH_FILE)")
        }
        for e in envVars { lines.append("env \(e.variable) <- \(e.path) v\(version(e.path).map { String($0.version) } ?? "?")") }
        lines.append("mount: \(where_)")
        lines.append("options: \(mountOptions)")
        lines.append("network: \(r.network)   ttl: \(r.ttlSeconds)s")
        lines.append(weak.isEmpty ? "verdict: secure (tmpfs, noswap, files 0400)" : "verdict: weak")
        for w in weak { lines.append("  - \(w)") }
        try printLine(lines.joined(separator: "\n"))
        return 0
    }

    func kernelHasNoswap() -> Bool {
        var u = utsname()
        uname(&u)
        let release = withUnsafeBytes(of: u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let parts = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        guard parts.count == 2 else { return false }
        return parts[0] > 6 || (parts[0] == 6 && parts[1] >= 4)
    }
}


/// 0400-style: four octal digits.
func octal4(_ mode: UInt32) -> String {
    let o = String(mode, radix: 8)
    return String(repeating: "0", count: max(0, 4 - o.count)) + o
}

/// The two calls of /v1/runs a run makes, on the lean JSON (the wire types are
/// CofferAPI's RunStartRequest, RunStartResponse and RunEndRequest; the end-to-end
/// tests hold the two to the same daemon).
enum RunAPI {
    struct Secret {
        var path: String
        var version: Int
        var createdAt: String
        var allowedBy: String
        /// Decoded from value_base64 (absent in a dry run); wiped by whoever holds it.
        var value: [UInt8]?
    }

    struct Started {
        var id: String?
        var mountPath: String?
        var noswap: Bool?
        var ttlSeconds: Int
        var network: String
        var secrets: [Secret]
    }

    static func unreadable(_ status: Int) -> ClientError {
        ClientError(kind: .protocolError, message: "cofferd sent a response this coffer cannot read (\(status))")
    }

    /// Live rotation: the tmpfs as its holder sees it, each file, a signal after an update.
    public struct Follow: Sendable {
        public struct File: Sendable {
            public var path: String, name: String, mode: UInt32, uid: UInt32, gid: UInt32
        }
        public var target: String
        public var files: [File]
        public var signal: String?
    }

    static func start(_ http: UnixHTTPClient, paths: [String], mount: String, sizeBytes: Int, ttl: String?, network: String,
                      dryRun: Bool, holderPID: Int32? = nil, label: String? = nil, follow: Follow? = nil, target: String? = nil,
                      whileWaiting: (() -> Void)? = nil) throws -> Started {
        var body: [(String, JSON)] = [("secrets", .array(paths.map { .object([("path", .string($0))]) })), ("mount", .string(mount)),
                                      ("size_bytes", .int(sizeBytes))]
        if let ttl { body.append(("ttl", .string(ttl))) }
        body += [("network", .string(network)), ("dry_run", .bool(dryRun))]
        if let holderPID { body.append(("holder_pid", .int(Int(holderPID)))) }
        if let label { body.append(("label", .string(label))) }
        if let target { body.append(("target", .string(target))) }
        if let follow {
            var f: [(String, JSON)] = [("target", .string(follow.target)), ("files", .array(follow.files.map { file in
                .object([("path", .string(file.path)), ("name", .string(file.name)), ("mode", .int(Int(file.mode))),
                         ("uid", .int(Int(file.uid))), ("gid", .int(Int(file.gid)))])
            }))]
            if let signal = follow.signal { f.append(("signal", .string(signal))) }
            body.append(("follow", .object(f)))
        }
        let r = try http.request("POST", "/v1/runs", headers: [("Content-Type", "application/json")], body: Array(JSON.object(body).text.utf8),
                                 whileWaiting: whileWaiting)
        guard (200..<300).contains(r.status) else { throw APIError(r) }
        var raw = r.body
        defer { Wipe.bytes(&raw) }
        guard let json = try? JSON.parse(raw), let ttlSeconds = json["ttl_seconds"]?.int, let network = json["network"]?.string,
              let list = json["secrets"]?.array else { throw unreadable(r.status) }
        var secrets: [Secret] = []
        for s in list {
            guard let path = s["path"]?.string, let version = s["version"]?.int, let createdAt = s["created_at"]?.string,
                  let allowedBy = s["allowed_by"]?.string else { throw unreadable(r.status) }
            var value: [UInt8]?
            if let b64 = s["value_base64"]?.string {
                guard let v = Base64.decode(b64) else { throw unreadable(r.status) }
                value = v
            }
            guard !secrets.contains(where: { $0.path == path }) else { throw unreadable(r.status) }
            secrets.append(Secret(path: path, version: version, createdAt: createdAt, allowedBy: allowedBy, value: value))
        }
        // a run id goes into a URL: only what cofferd makes ([A-Za-z0-9_])
        if let id = json["id"]?.string, id.isEmpty || id.utf8.count > 64 || !id.utf8.allSatisfy({ SecretPath.isAllowed($0) && $0 != UInt8(ascii: ".") && $0 != UInt8(ascii: "-") }) {
            throw unreadable(r.status)
        }
        return Started(id: json["id"]?.string, mountPath: json["mount_path"]?.string, noswap: json["noswap"]?.bool, ttlSeconds: ttlSeconds,
                       network: network, secrets: secrets)
    }

    static func end(_ http: UnixHTTPClient, _ id: String, exitStatus: Int?, fate: String) throws {
        var body: [(String, JSON)] = []
        if let exitStatus { body.append(("exit_status", .int(exitStatus))) }
        body.append(("fate", .string(fate)))
        let r = try http.request("POST", "/v1/runs/" + PercentDecoding.encodePath(id) + "/end", headers: [("Content-Type", "application/json")],
                                 body: Array(JSON.object(body).text.utf8))
        guard (200..<300).contains(r.status) else { throw APIError(r) }
    }
}

/// `--registry-auth [REGISTRY=]PATH`: push and pull credentials for buildah, podman
/// and skopeo as a containers-auth file (auth.json) on the run's tmpfs, named by
/// REGISTRY_AUTH_FILE — never in ~/.docker/config.json or $XDG_RUNTIME_DIR/containers.
/// A stored value is either such a file ({"auths": {"HOST": {"auth": base64(user:password)}}})
/// or `user:password` for the REGISTRY given.
enum RegistryAuth {
    static let fileName = "auth.json"

    struct Source {
        var registry: String?
        var path: SecretPath

        init(_ text: String) throws(CofferError) {
            var p = Substring(text)
            if let eq = text.firstIndex(of: "=") {
                let r = String(text[..<eq])
                guard RegistryAuth.isRegistry(r) else {
                    throw CofferError(.invalidParameter, "--registry-auth \(text): '\(r)' is not a registry (HOST[:PORT][/PATH])")
                }
                registry = r
                p = text[text.index(after: eq)...]
            }
            path = try SecretPath(String(p))
        }
    }

    /// HOST[:PORT][/PATH]: starts with a letter, digit or [ (IPv6), no empty or .. part.
    static func isRegistry(_ r: String) -> Bool {
        guard let first = r.utf8.first, r.utf8.count <= 255 else { return false }
        let alnum = { (b: UInt8) in (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) }
        return (alnum(first) || first == UInt8(ascii: "["))
            && r.utf8.allSatisfy { alnum($0) || "-._:/[]".utf8.contains($0) }
            && !r.split(separator: "/", omittingEmptySubsequences: false).contains { $0.isEmpty || $0 == ".." || $0 == "." }
    }

    /// The auth.json of every source (the values never appear in an error).
    static func file(_ sources: [Source], values: [String: [UInt8]]) throws(CofferError) -> [UInt8] {
        var auths: [(String, JSON)] = []
        func add(_ host: String, _ entry: JSON, from path: SecretPath) throws(CofferError) {
            guard !auths.contains(where: { $0.0 == host }) else {
                throw CofferError(.invalidParameter, "two --registry-auth give credentials for \(host) (the second from \(path))")
            }
            auths.append((host, entry))
        }
        for s in sources {
            var value = values[s.path.rawValue] ?? []
            defer { Wipe.bytes(&value) }
            // what looks like JSON must be JSON (a truncated auth file is no user:password)
            if value.first(where: { $0 != 0x20 && $0 != 0x0A && $0 != 0x0D && $0 != 0x09 }) == UInt8(ascii: "{") {
                guard let json = try? JSON.parse(value), case .object = json else {
                    throw CofferError(.invalidParameter, "\(s.path) starts like JSON but is not valid JSON")
                }
                guard s.registry == nil else {
                    throw CofferError(.invalidParameter, "\(s.path) holds an auth file: give it without REGISTRY= (its hosts are in it)")
                }
                guard let auths = json["auths"], case .object(let entries) = auths, !entries.isEmpty else {
                    throw CofferError(.invalidParameter, "\(s.path) is JSON but no containers auth file: {\"auths\": {\"HOST\": {\"auth\": \"…\"}}} expected")
                }
                for (host, entry) in entries {
                    guard isRegistry(host) else { throw CofferError(.invalidParameter, "\(s.path): an entry is not for a registry (HOST[:PORT][/PATH])") }
                    if let token = entry["identitytoken"]?.string, entry["auth"] == nil {
                        // an OAuth refresh token, as containers-auth.json(5) keeps it
                        guard !token.isEmpty, token.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                            throw CofferError(.invalidParameter, "\(s.path): an identitytoken is not printable text")
                        }
                        try add(host, .object([("identitytoken", .string(token))]), from: s.path)
                        continue
                    }
                    guard let a = entry["auth"]?.string, let decoded = Base64.decode(a), let colon = decoded.firstIndex(of: UInt8(ascii: ":")),
                          colon > 0 else {
                        throw CofferError(.invalidParameter, "\(s.path): the entry for a registry has no valid \"auth\" (base64 of user:password)")
                    }
                    try add(host, .object([("auth", .string(a))]), from: s.path)
                }
            } else {
                var text = value
                while let last = text.last, last == 0x0A || last == 0x0D { text.removeLast() }
                defer { Wipe.bytes(&text) }
                guard let colon = text.firstIndex(of: UInt8(ascii: ":")), colon > 0, !text.contains(0x0A), !text.contains(0), String(validating: text, as: UTF8.self) != nil else {
                    throw CofferError(.invalidParameter, "\(s.path) is neither a containers auth file (JSON) nor user:password")
                }
                guard let registry = s.registry else {
                    throw CofferError(.invalidParameter, "\(s.path) holds user:password: say for which registry", hint: "--registry-auth REGISTRY=\(s.path)")
                }
                try add(registry, .object([("auth", .string(Base64.encode(text)))]), from: s.path)
            }
        }
        return Array(JSON.object([("auths", .object(auths))]).text.utf8)
    }
}

extension RunAPI {
    /// The live runs of the caller: id and label.
    static func list(_ http: UnixHTTPClient) throws -> [(id: String, label: String?)] {
        let r = try http.request("GET", "/v1/runs")
        guard (200..<300).contains(r.status) else { throw APIError(r) }
        guard let json = try? JSON.parse(r.body), let runs = json["runs"]?.array else { throw unreadable(r.status) }
        return runs.compactMap { run in run["id"]?.string.map { ($0, run["label"]?.string) } }
    }
}

/// The files of a run as the C spawner takes them: names and value copies outside
/// Swift's heap, zeroed by `zero()` (once the child has its own) and on release.
/// A private run's namespaces made ahead (coffer_run_prepare): fed once with the
/// rest of the run, or abandoned (killed and reaped) when the start is refused.
final class PreparedRun {
    let pid: Int32
    let reportFD: Int32
    let statusFD: Int32
    private var feedFD: Int32
    private var done = false

    /// nil when the namespaces could not be made ahead: the run then makes them after
    /// the start, as without this, and fails there with the reason.
    init?(size: Int, allowSwap: Bool) {
        var feed: Int32 = -1, report: Int32 = -1, status: Int32 = -1
        let pid = coffer_run_prepare(UInt(size), allowSwap ? 1 : 0, &feed, &report, &status)
        guard pid > 0 else { return nil }
        (self.pid, feedFD, reportFD, statusFD) = (pid, feed, report, status)
    }

    /// Sends the spec; the pid, or -1 when the init is gone.
    func feed(_ spec: inout coffer_run_spec) -> Int32 {
        done = true
        let fd = feedFD
        feedFD = -1
        return coffer_run_feed(pid, fd, &spec) == 0 ? pid : -1
    }

    func reap() { _ = coffer_run_reap(pid) }

    /// Unfed: killed and reaped (nothing of it was ever visible outside it).
    func abandon() {
        guard !done else { return }
        done = true
        _ = coffer_run_abandon(pid, feedFD, reportFD, statusFD)
    }
}

final class SpawnFiles {
    private var names: [UnsafeMutablePointer<CChar>?]
    private var buffers: [UnsafeMutableBufferPointer<UInt8>]
    var entries: [coffer_run_file]

    init(_ files: [RunFile]) {
        names = files.map { strdup($0.name) }
        buffers = files.map { f in
            let b = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: max(f.bytes.count, 1))
            _ = b.initialize(from: f.bytes)
            return b
        }
        entries = []
        for (i, f) in files.enumerated() {
            entries.append(coffer_run_file(name: names[i], data: UnsafePointer(buffers[i].baseAddress), length: UInt(f.bytes.count),
                                           mode: f.mode, uid: f.uid, gid: f.gid))
        }
    }

    func zero() {
        for b in buffers { memset(b.baseAddress!, 0, b.count) }
    }

    deinit {
        zero()
        for b in buffers { b.deallocate() }
        for n in names { free(n) }
    }
}

/// What the spawner's child reports before its work is done (EOF: it is): notes go
/// to `note`, the failure (if any) is returned. The descriptor is closed.
func readSpawnReports(_ fd: Int32, note: (coffer_run_report) -> Void = { _ in }) -> coffer_run_report? {
    var failure: coffer_run_report?
    while true {
        var r = coffer_run_report()
        let n = read(fd, &r, MemoryLayout<coffer_run_report>.size)
        if n < 0 && errno == EINTR { continue }
        guard n == MemoryLayout<coffer_run_report>.size else { break }
        if r.kind == Int32(COFFER_RUN_FAILED) { failure = r } else { note(r) }
    }
    close(fd)
    return failure
}
