import CCofferLinux
import CofferCore
#if canImport(Glibc)
import Glibc
#endif

/// `coffer run` and `coffer build` without ArgumentParser.
///
/// A run is one process start away from the command it wraps, so its start-up counts:
/// building ArgumentParser's command tree walks the type metadata of every command
/// (several milliseconds in a binary this size, more than the run's own work). This
/// parser knows exactly the documented grammar — `run|build [OPTION]… -- COMMAND…` with
/// `--opt VALUE` or `--opt=VALUE` — and gives up (nil) on anything else: help, `run list`,
/// an unknown or repeated option, a value that looks like an option, no `--`. What it
/// gives up on goes to ArgumentParser, which parses and reports as before, so the two
/// never disagree on what they both accept (the end-to-end tests compare them, with
/// `COFFER_CLI_FAST=0` turning this path off).
public enum FastRun {
    public struct Parsed: Equatable, Sendable {
        public var build: Bool
        public var global: ClientSettings
        public var options: RunSettings
    }

    public static func parse(_ args: [String]) -> Parsed? {
        guard let sub = args.first, sub == "run" || sub == "build" else { return nil }
        var global = ClientSettings()
        var o = RunSettings()
        var seen = Set<String>()
        var i = 1
        while i < args.count {
            let arg = args[i]
            if arg == "--" {
                o.command = Array(args[(i + 1)...])
                return Parsed(build: sub == "build", global: global, options: o)
            }
            guard arg.hasPrefix("--") else { return nil }
            let (name, attached) = OptionScan.split(arg)
            switch name {
            case "--credentials", "--allow-swap", "--keep-children", "--dry-run", "--follow":
                guard attached == nil, seen.insert(name).inserted else { return nil }
                switch name {
                case "--credentials": o.credentials = true
                case "--allow-swap": o.allowSwap = true
                case "--keep-children": o.keepChildren = true
                case "--follow": o.follow = true
                default: o.dryRun = true
                }
                i += 1
                continue
            case "--secret", "--template", "--dir-env", "--env", "--registry-auth",
                 "--env-file", "--ttl", "--size", "--mount", "--dir", "--network", "--signal", "--socket", "--format", "--token-file":
                break
            default:
                return nil
            }
            guard let v = OptionScan.value(args, &i, attached: attached) else { return nil }
            switch name {
            case "--secret": o.secrets.append(v)
            case "--template": o.templates.append(v)
            case "--dir-env": o.dirEnv.append(v)
            case "--env": o.env.append(v)
            case "--registry-auth": o.registryAuth.append(v)
            default:
                // single values: a repeated one is ArgumentParser's to judge
                guard seen.insert(name).inserted else { return nil }
                switch name {
                case "--env-file": o.envFile = v
                case "--ttl": o.ttl = DurationText.fromCommandLine(v)
                case "--size": o.size = v
                case "--mount": o.mount = v
                case "--dir": o.dir = v
                case "--signal": o.signal = v
                case "--network": o.network = v
                case "--socket": global.socket = v
                case "--token-file": global.tokenFile = v
                default:
                    guard let f = OutputFormat(rawValue: v) else { return nil }
                    global.format = f
                }
            }
        }
        return nil
    }

    /// Runs what `parse` accepted and exits as `coffer run` does.
    public static func execute(_ p: Parsed) -> Never {
        do {
            exit(try Runner(global: p.global, options: p.options, build: p.build).execute())
        } catch {
            if let code = Exit.reporting(error) { exit(code) }
            report("\(error)", hint: nil)
            exit(Exit.failure)
        }
    }

    /// Global options may come before the subcommand (`coffer --format json secret get x`):
    /// they are moved behind it, where every leaf command parses them (before a `--`:
    /// what follows it is the command's).
    public static func hoistGlobalOptions(_ args: [String]) -> [String] {
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
        if let dd = rest.firstIndex(of: "--") { return Array(rest[..<dd]) + moved + Array(rest[dd...]) }
        return rest + moved
    }
}

/// `coffer secret get PATH [--version N]` without ArgumentParser: the call a build makes
/// once per secret, so its start-up counts as a run's does. Only the raw-bytes form
/// (text format): `--format json`, help and anything unknown go to ArgumentParser.
public enum FastGet {
    public struct Parsed: Equatable, Sendable {
        public var global: ClientSettings
        public var path: String
        public var version: Int?
    }

    public static func parse(_ args: [String]) -> Parsed? {
        guard args.count >= 3, args[0] == "secret", args[1] == "get" else { return nil }
        var global = ClientSettings()
        var path: String?
        var version: Int?
        var seen = Set<String>()
        var i = 2
        while i < args.count {
            let arg = args[i]
            if !arg.hasPrefix("-") {
                guard path == nil else { return nil }
                path = arg
                i += 1
                continue
            }
            guard arg.hasPrefix("--"), arg != "--" else { return nil }
            let (name, attached) = OptionScan.split(arg)
            guard ["--version", "--socket", "--token-file", "--format"].contains(name), seen.insert(name).inserted,
                  let v = OptionScan.value(args, &i, attached: attached) else { return nil }
            switch name {
            case "--version":
                guard let n = Int(v) else { return nil }
                version = n
            case "--socket": global.socket = v
            case "--token-file": global.tokenFile = v
            default:
                guard v == "text" else { return nil }
            }
        }
        guard let path else { return nil }
        return Parsed(global: global, path: path, version: version)
    }

    /// Prints the value's bytes and exits as `coffer secret get` does.
    public static func execute(_ p: Parsed) -> Never {
        _ = coffer_protect_values()
        do {
            _ = try SecretPath(p.path)
            if let v = p.version, v < 1 { throw CofferError(.invalidVersion, "--version must be 1 or more") }
            let http = try p.global.http()
            var target = "/v1/secrets/data/" + PercentDecoding.encodePath(p.path)
            if let v = p.version { target += "?version=\(v)" }
            var r = try http.request("GET", target, headers: [("Accept", "application/octet-stream")])
            defer { Wipe.bytes(&r.body) }
            guard r.status == 200 else { throw APIError(r) }
            guard r.header("Content-Type")?.lowercased().hasPrefix("application/octet-stream") == true,
                  p.version.map({ String($0) == r.header("Coffer-Version") }) ?? true else {
                throw ClientError(kind: .protocolError, message: "cofferd sent a response this coffer cannot read (200)")
            }
            try writeStdout(r.body)
        } catch {
            if let code = Exit.reporting(error) { exit(code) }
            report("\(error)", hint: nil)
            exit(Exit.failure)
        }
        exit(Exit.ok)
    }
}

/// The two ways an option takes its value, as ArgumentParser reads them.
enum OptionScan {
    /// `--name=value` split at its first `=`; `--name` alone has no attached value.
    static func split(_ arg: String) -> (name: String, attached: String?) {
        guard let eq = arg.firstIndex(of: "=") else { return (arg, nil) }
        return (String(arg[..<eq]), String(arg[arg.index(after: eq)...]))
    }

    /// The value of the option at args[i] — attached, or the next argument — with i
    /// moved past it; nil when there is none, or when it looks like an option
    /// (ArgumentParser does not take such a value: the caller leaves it to say so).
    static func value(_ args: [String], _ i: inout Int, attached: String?) -> String? {
        let v: String
        if let attached {
            // `--opt=` gives no value: ArgumentParser says so
            guard !attached.isEmpty else { return nil }
            v = attached
            i += 1
        } else {
            guard i + 1 < args.count else { return nil }
            v = args[i + 1]
            i += 2
        }
        return v.hasPrefix("-") ? nil : v
    }
}
