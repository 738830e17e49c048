import ArgumentParser
import CCofferLinux
import CofferAPI
import CofferClient
import CofferCore
import CofferCrypto
import Foundation

/// The options `coffer run` and `coffer build` share.
struct RunOptions: ParsableArguments {
    @Option(name: .customLong("secret"), help: ArgumentHelp(
        "A secret as a file: PATH[=NAME][:mode=0400,uid=N,gid=N] (NAME: the path's last segment).", valueName: "spec"))
    var secrets: [String] = []

    @Option(name: .customLong("template"), help: ArgumentHelp(
        "Render SRC (a local file with {{ secret \"PATH\" }}) to the file NAME on the tmpfs.", valueName: "SRC:NAME"))
    var templates: [String] = []

    @Option(name: .customLong("env-file"), help: ArgumentHelp("Also write NAME, a .env file with one VAR=value per --secret.", valueName: "NAME"))
    var envFile: String?

    @Option(name: .customLong("dir-env"), help: ArgumentHelp("Also put the directory's path in VAR (besides COFFER_SECRETS_DIR).", valueName: "VAR"))
    var dirEnv: [String] = []

    @Option(name: .customLong("env"), help: ArgumentHelp(
        "Put a value in an environment variable. WARNING: the environment leaks (/proc/PID/environ, child processes, crash reports); prefer files.",
        valueName: "VAR=PATH"))
    var env: [String] = []

    @Flag(name: .customLong("credentials"), help: "Also set CREDENTIALS_DIRECTORY (programs written for systemd credentials work unchanged).")
    var credentials = false

    @Option(name: .customLong("ttl"), help: "End the run (kill the command, remove the tmpfs) after this long, e.g. 30m (capped by cofferd's run.max_ttl).")
    var ttl: String?

    @Option(name: .customLong("size"), help: "The tmpfs's size: bytes, or with k or m (default 1m).")
    var size: String?

    @Option(name: .customLong("mount"), help: "Who makes the tmpfs: auto (root: private, others: daemon), private or daemon.")
    var mount: String = "auto"

    @Option(name: .customLong("dir"), help: "Where a private run mounts its tmpfs inside its own namespace (default /run/coffer/secrets).")
    var dir: String = "/run/coffer/secrets"

    @Option(name: .customLong("network"), help: "host (default) or none: a private network namespace with only loopback (root).")
    var network: String = "host"

    @Flag(name: .customLong("allow-swap"), help: "Go on when the kernel refuses noswap (before Linux 6.4); the report then says weak.")
    var allowSwap = false

    @Flag(name: .customLong("keep-children"), help: "No PID namespace: processes the command leaves behind may outlive it (and keep its tmpfs).")
    var keepChildren = false

    @Flag(name: .customLong("dry-run"), help: "Print what would be injected (no values are fetched) and whether it is secure.")
    var dryRun = false

    @Argument(parsing: .postTerminator, help: ArgumentHelp("The command, after --.", valueName: "command"))
    var command: [String] = []
}

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a command with secrets as files on a private tmpfs.",
        discussion: """
            Fetches the secrets in one request (each path needs read or inject), writes them as \
            files (0400, owned by you) on a tmpfs mounted noswap,nosuid,nodev,noexec, runs the \
            command with COFFER_SECRETS_DIR pointing there, and exits with its status. SIGINT, \
            SIGTERM and SIGHUP are passed on. Nothing of the tmpfs outlives the run.

            As root the tmpfs exists only in a private mount namespace of the command (invisible \
            to every other process), with a PID namespace so nothing the command starts outlives \
            it (--keep-children to allow that). Otherwise cofferd mounts it under its run directory \
            for you and removes it when coffer run exits, even by SIGKILL.

            Examples:
              coffer run --secret ci/app/db-password -- ./migrate
              coffer run --secret ci/npm/token=.npmrc:mode=0440,gid=1000 -- npm ci
              coffer run --template app.conf.tmpl:app.conf --credentials -- ./server
              coffer run --dry-run --secret ci/app/db-password -- ./migrate
            """,
        subcommands: [RunListCommand.self])

    @OptionGroup var global: GlobalOptions
    @OptionGroup var options: RunOptions

    func run() throws {
        try runReporting {
            let status = try Runner(global: global, options: options, build: false).execute()
            throw ExitCode(status)
        }
    }
}

struct BuildCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Run buildah or podman build with secrets for RUN --mount=type=secret.",
        discussion: """
            Like coffer run, and adds to the build command `--secret id=NAME,src=FILE` for each \
            file and `--build-arg COFFER_SECRET_<NAME>_VERSION=<hash>`: a step that declares \
            `ARG COFFER_SECRET_<NAME>_VERSION` is rebuilt when the secret changes and cached \
            while it does not. The hash names the version, never the value.

            Examples:
              coffer build --secret ci/npm/npmrc=npmrc -- buildah bud --isolation chroot --layers -t app .
              coffer build --secret ci/npm/npmrc=npmrc -- podman build -t app .
            """)

    @OptionGroup var global: GlobalOptions
    @OptionGroup var options: RunOptions

    func run() throws {
        try runReporting {
            let status = try Runner(global: global, options: options, build: true).execute()
            throw ExitCode(status)
        }
    }
}

struct RunListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List your live runs (--all: everyone's, for admins).")

    @OptionGroup var global: GlobalOptions
    @Flag(name: .long, help: "Every user's runs (admin).") var all = false

    func run() throws {
        try runReporting {
            let r = try global.client().runs(all: all)
            if global.format == .json { return try printJSON(r) }
            if r.runs.isEmpty { return try printLine("no live runs") }
            for run in r.runs {
                try printLine("\(run.id)  uid \(run.uid)  pid \(run.pid)  \(run.mount)\(run.mountPath.map { " " + $0 } ?? "")  until \(run.expiresAt)  \(run.paths.joined(separator: ","))")
            }
        }
    }
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
struct Runner {
    let global: GlobalOptions
    let options: RunOptions
    let build: Bool

    enum Mode { case `private`, daemon }

    func execute() throws -> Int32 {
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
            guard let data = FileManager.default.contents(atPath: src), data.count <= SecretTemplate.maxBytes,
                  let text = String(data: data, encoding: .utf8) else {
                throw CofferError(.invalidParameter, "cannot read the template \(src) (UTF-8 text, at most 1 MiB)")
            }
            templates.append((name, try SecretTemplate(parsing: text, name: src), Array(data)))
        }
        var envVars: [(variable: String, path: SecretPath)] = []
        for e in options.env {
            guard let eq = e.firstIndex(of: "=") else { throw CofferError(.invalidParameter, "--env takes VAR=PATH") }
            let v = String(e[..<eq])
            try RunNames.checkVariable(v)
            envVars.append((v, try SecretPath(String(e[e.index(after: eq)...]))))
        }
        for v in options.dirEnv { try RunNames.checkVariable(v) }
        if let n = options.envFile { try RunNames.checkFileName(n) }
        var names = Set<String>()
        for n in specs.map(\.name) + templates.map(\.name) + (options.envFile.map { [$0] } ?? []) {
            guard names.insert(n).inserted else { throw CofferError(.invalidParameter, "two files are named \(n)", hint: "give one a name: --secret PATH=NAME") }
        }
        guard !specs.isEmpty || !templates.isEmpty || !envVars.isEmpty else {
            throw CofferError(.invalidParameter, "no secret to inject", hint: "add --secret PATH (or --template, --env)")
        }
        let size = try parseSize(options.size)
        guard ["host", "none"].contains(options.network) else {
            throw CofferError(.invalidParameter, "--network must be host or none")
        }
        let mode: Mode
        switch options.mount {
        case "auto": mode = geteuid() == 0 ? .private : .daemon
        case "private": mode = .private
        case "daemon": mode = .daemon
        default: throw CofferError(.invalidParameter, "--mount must be auto, private or daemon")
        }
        if mode == .private && geteuid() != 0 {
            throw CofferError(.invalidParameter, "a private mount namespace needs root", hint: "leave --mount at auto: cofferd then mounts the tmpfs for you")
        }
        if options.network == "none" && mode != .private {
            throw CofferError(.invalidParameter, "--network none needs a private namespace (root)")
        }
        for s in specs where (s.uid.map { $0 != getuid() } ?? false) || (s.gid.map { $0 != getgid() } ?? false) {
            guard mode == .private else { throw CofferError(.invalidParameter, "only root gives files to another uid or gid (\(s.name))") }
        }
        if mode == .private { try checkMountPoint(options.dir) }
        var argv = options.command
        if build { argv = try buildArguments(argv, specs: specs, templates: templates, dryRun: true) }
        let exe = try resolveExecutable(argv[0])

        // 2. one request for every path
        var paths: [SecretPath] = []
        var seen = Set<String>()
        for p in specs.map(\.path) + templates.flatMap(\.template.paths) + envVars.map(\.path) where seen.insert(p.rawValue).inserted { paths.append(p) }
        let client = try global.client()
        let request = RunStartRequest(secrets: paths.map { RunSecretRef(path: $0.rawValue) }, mount: mode == .private ? "private" : "daemon",
                                      sizeBytes: size, ttl: options.ttl, network: options.network, dryRun: options.dryRun)
        let started = try client.runStart(request)
        if options.dryRun { return try report(started, specs: specs, templates: templates, envVars: envVars, mode: mode, size: size) }
        guard let runID = started.id else { throw ClientError(kind: .io, message: "cofferd started no run") }
        var ended = false
        func end(_ status: Int?, _ fate: String) {
            guard !ended else { return }
            ended = true
            _ = try? client.runEnd(runID, RunEndRequest(exitStatus: status, fate: fate))
        }
        do {
            // 3. the files
            var values: [String: [UInt8]] = [:]
            var versions: [String: RunSecretInfo] = [:]
            for s in started.secrets {
                guard let b64 = s.valueBase64, let data = Data(base64Encoded: b64) else { throw ClientError(kind: .io, message: "cofferd sent no value for \(s.path)") }
                values[s.path] = [UInt8](data)
                versions[s.path] = s
            }
            defer { for k in Array(values.keys) { Hashing.wipe(&values[k]!) } }
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
            if build { argv = try buildArguments(options.command, specs: specs, templates: templates, dryRun: false, dir: dir, files: files) }

            // 4. the environment
            var environment = ProcessInfo.processInfo.environment
            environment["COFFER_SECRETS_DIR"] = dir
            for v in options.dirEnv { environment[v] = dir }
            if options.credentials { environment["CREDENTIALS_DIRECTORY"] = dir }
            for e in envVars {
                guard let text = String(validating: values[e.path.rawValue] ?? [], as: UTF8.self), !text.contains("\0") else {
                    throw CofferError(.invalidParameter, "\(e.path) is not text: it cannot go in \(e.variable)", hint: "use it as a file")
                }
                environment[e.variable] = text
            }

            // 5. run
            let status = try spawn(exe: exe, argv: argv, environment: environment, files: files, dir: dir, mode: mode,
                                   size: size, ttl: UInt32(clamping: started.ttlSeconds))
            if status.expired {
                end(Int(status.code), "ttl expired: coffer run killed the command")
                throw RunFailure(status: 124, message: "the run's ttl (\(started.ttlSeconds)s) expired: the command was killed", hint: "raise --ttl")
            }
            end(Int(status.code), mode == .private ? "the private namespace was released" : "the command ended")
            return status.code
        } catch {
            end(nil, "not started: the runner failed")
            throw error
        }
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
        for d in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":") {
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
        let tool = (command[0] as NSString).lastPathComponent
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

    struct Status { var code: Int32; var expired: Bool }

    func spawn(exe: String, argv: [String], environment: [String: String], files: [RunFile], dir: String, mode: Mode, size: Int,
               ttl: UInt32) throws -> Status {
        var cStrings: [UnsafeMutablePointer<CChar>?] = []
        defer { for p in cStrings { free(p) } }
        func c(_ s: String) -> UnsafeMutablePointer<CChar>? {
            let p = strdup(s)
            cStrings.append(p)
            return p
        }
        let argvC = argv.map(c) + [nil]
        let envC = environment.map { c("\($0.key)=\($0.value)") } + [nil]
        let exeC = c(exe), dirC = c(dir)
        let nameC = files.map { c($0.name) }
        // value copies for the C side, wiped after the fork (the child has its own)
        let buffers = files.map { f -> UnsafeMutableBufferPointer<UInt8> in
            let b = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: max(f.bytes.count, 1))
            _ = b.initialize(from: f.bytes)
            return b
        }
        defer {
            for (i, b) in buffers.enumerated() {
                memset(b.baseAddress!, 0, max(files[i].bytes.count, 1))
                b.deallocate()
            }
        }
        var cFiles = files.enumerated().map { i, f in
            coffer_run_file(name: nameC[i], data: UnsafePointer(buffers[i].baseAddress), length: UInt(f.bytes.count), mode: f.mode, uid: f.uid, gid: f.gid)
        }
        var reportFD: Int32 = -1
        let pid: Int32 = argvC.withUnsafeBufferPointer { a in
            envC.withUnsafeBufferPointer { e in
                cFiles.withUnsafeMutableBufferPointer { f in
                    var spec = coffer_run_spec(
                        private_mount: mode == .private ? 1 : 0, private_network: options.network == "none" ? 1 : 0,
                        pid_namespace: mode == .private && !options.keepChildren ? 1 : 0, allow_swap: options.allowSwap ? 1 : 0,
                        dir: UnsafePointer(dirC), size_bytes: UInt(size), dir_mode: 0o500,
                        dir_uid: getuid(), dir_gid: getgid(), files: UnsafePointer(f.baseAddress), file_count: Int32(files.count),
                        exe: UnsafePointer(exeC), argv: a.baseAddress, envp: e.baseAddress)
                    return coffer_run_spawn(&spec, &reportFD)
                }
            }
        }
        guard pid > 0 else { throw ClientError(kind: .io, message: "cannot start the command: \(String(cString: strerror(errno)))") }
        // what the child reports before the command starts (EOF: it started)
        var failure: coffer_run_report?
        while true {
            var r = coffer_run_report()
            let n = read(reportFD, &r, MemoryLayout<coffer_run_report>.size)
            if n < 0 && errno == EINTR { continue }
            guard n == MemoryLayout<coffer_run_report>.size else { break }
            if r.kind == Int32(COFFER_RUN_NOTE_SWAP) {
                writeStderr("coffer: warning: the kernel refused noswap (--allow-swap): the tmpfs may be swapped out\n")
            } else {
                failure = r
            }
        }
        close(reportFD)
        var expired: Int32 = 0
        let code = coffer_run_wait(pid, failure == nil ? ttl : 0, &expired)
        if let f = failure { throw describe(f, files: files, dir: dir) }
        return Status(code: code, expired: expired != 0)
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
    func report(_ r: RunStartResponse, specs: [SecretSpec], templates: [(name: String, template: SecretTemplate, source: [UInt8])],
                envVars: [(variable: String, path: SecretPath)], mode: Mode, size: Int) throws -> Int32 {
        let version = { (p: SecretPath) in r.secrets.first { $0.path == p.rawValue } }
        var weak: [String] = []
        let noswap = kernelHasNoswap()
        if !noswap { weak.append("this kernel has no noswap (Linux 6.4+): the tmpfs may be swapped out") }
        for s in specs where s.mode != 0o400 { weak.append("\(s.name) has mode \(String(format: "%04o", s.mode)), not 0400") }
        for e in envVars { weak.append("\(e.variable) puts \(e.path) in the environment") }
        if mode == .private && options.keepChildren { weak.append("--keep-children: processes the command leaves may keep the tmpfs alive") }
        let where_ = mode == .private ? "\(options.dir) in a private mount namespace\(options.keepChildren ? "" : " + PID namespace")"
            : "a directory cofferd mounts under its run directory for uid \(getuid())"
        let mountOptions = "tmpfs size=\(size),mode=0700,nosuid,nodev,noexec\(noswap ? ",noswap" : "")"
        if global.format == .json {
            struct Entry: Encodable { var name: String; var path: String; var version: Int?; var mode: String; var uid: UInt32; var gid: UInt32; var allowedBy: String? }
            struct Plan: Encodable { var files: [Entry]; var env: [String]; var mount: String; var options: String; var network: String; var ttlSeconds: Int; var verdict: String; var reasons: [String] }
            var entries = specs.map { s in
                Entry(name: s.name, path: s.path.rawValue, version: version(s.path)?.version, mode: String(format: "%04o", s.mode), uid: s.uid ?? getuid(),
                      gid: s.gid ?? getgid(), allowedBy: version(s.path)?.allowedBy)
            }
            entries += templates.map { Entry(name: $0.name, path: $0.template.paths.map(\.rawValue).joined(separator: ","), version: nil, mode: "0400", uid: getuid(), gid: getgid(), allowedBy: nil) }
            try printJSON(Plan(files: entries, env: envVars.map { "\($0.variable)=\($0.path)" }, mount: where_, options: mountOptions, network: r.network,
                               ttlSeconds: r.ttlSeconds, verdict: weak.isEmpty ? "secure" : "weak", reasons: weak))
            return 0
        }
        var lines = ["files (directory 0500, owner uid \(getuid())):"]
        for s in specs {
            let v = version(s.path)
            lines.append("  \(s.name)  <- \(s.path) v\(v.map { String($0.version) } ?? "?")  mode \(String(format: "%04o", s.mode))  uid \(s.uid ?? getuid()) gid \(s.gid ?? getgid())  (\(v?.allowedBy ?? "?"))")
        }
        for t in templates {
            let used = t.template.paths.map { p in "\(p) v\(version(p).map { String($0.version) } ?? "?")" }.joined(separator: ", ")
            lines.append("  \(t.name)  <- template (\(used.isEmpty ? "no secrets" : used))  mode 0400")
        }
        if let n = options.envFile { lines.append("  \(n)  <- .env of the --secret values  mode 0400") }
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

/// A failure with its own exit status (127: command not found, 126: not executable).
struct RunFailure: Error {
    var status: Int32
    var message: String
    var hint: String?
}
