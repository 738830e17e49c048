import ArgumentParser
import CofferClient
import CofferCore

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

    @Option(name: .customLong("registry-auth"), help: ArgumentHelp(
        "Registry credentials for buildah/podman/skopeo as auth.json on the tmpfs (REGISTRY_AUTH_FILE); the value: auth JSON, or user:password for REGISTRY.",
        valueName: "[REGISTRY=]PATH"))
    var registryAuth: [String] = []

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

    @Flag(name: .customLong("follow"), help: "Live rotation: cofferd rewrites each --secret file (new file, then rename: never half written) when its secret gets a new version, while the run lives.")
    var follow = false

    @Option(name: .customLong("signal"), help: "With --follow: SIGHUP to the command after each update.")
    var signal: String?

    @Argument(parsing: .postTerminator, help: ArgumentHelp("The command, after --.", valueName: "command"))
    var command: [String] = []
}

extension RunOptions {
    /// The same, apart from how it was parsed.
    var settings: RunSettings {
        var s = RunSettings()
        s.secrets = secrets
        s.templates = templates
        s.envFile = envFile
        s.dirEnv = dirEnv
        s.env = env
        s.credentials = credentials
        s.ttl = ttl.map(DurationText.fromCommandLine)
        s.size = size
        s.mount = mount
        s.dir = dir
        s.network = network
        s.allowSwap = allowSwap
        s.keepChildren = keepChildren
        s.dryRun = dryRun
        s.follow = follow
        s.signal = signal
        s.registryAuth = registryAuth
        s.command = command
        return s
    }
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
            let status = try Runner(global: global.settings, options: options.settings, build: false).execute()
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
            let status = try Runner(global: global.settings, options: options.settings, build: true).execute()
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


struct InjectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inject",
        abstract: "Live injections (coffer run, containers) as the kernel shows them.",
        subcommands: [List.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "list",
            abstract: "Every live injection: its secrets and versions, its tmpfs's mount options, each file's owner and mode, and a verdict.",
            discussion: """
                cofferd reads each run's tmpfs from the mount namespace of the process that
                holds it (never the runner's word): "secure" is a tmpfs Coffer made, noswap,
                read-only, nosuid/nodev/noexec, every file 0400; "weak" says why not.
                --all shows every user's (admin).
                """)

        @OptionGroup var global: GlobalOptions
        @Flag(name: .long, help: "Every user's injections (admin).") var all = false

        func run() throws {
            try runReporting {
                let r = try global.client().injections(all: all)
                if global.format == .json { return try printJSON(r) }
                if r.injections.isEmpty { return try printLine("no live injections") }
                var lines: [String] = []
                for x in r.injections {
                    lines.append("\(x.id)  \(x.label ?? "run")  uid \(x.uid)  pid \(x.pid)  \(x.mount)  \(x.target ?? "?")\(x.follow ? "  follow" : "")  \(x.verdict.uppercased())")
                    lines.append("  secrets: " + x.secrets.map { "\($0.path) v\($0.version.map(String.init) ?? "?")" }.joined(separator: ", "))
                    if let t = x.fsType {
                        lines.append("  mount: \(t) \(x.source ?? "") \(x.mountOptions.joined(separator: ",")) (\(x.superOptions.joined(separator: ",")))")
                    }
                    for f in x.files { lines.append("  file: \(f.name) \(f.mode) uid \(f.uid) gid \(f.gid) \(f.size) bytes") }
                    for why in x.reasons { lines.append("  weak: \(why)") }
                }
                try printLine(lines.joined(separator: "\n"))
            }
        }
    }
}
