import ArgumentParser
import CofferClient
import Foundation
import Glibc

/// coffer-bench: measures a release cofferd against baselines measured in the same
/// run (ratios, not absolute times: the machine is shared and noisy). It builds
/// nothing: build first with `swift build -c release`.
@main
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coffer-bench",
        abstract: "Benchmark cofferd against its no-op route, itself without audit, and Redis GET.")

    @Option(help: "Folder with the cofferd and coffer binaries to measure.")
    var bin: String = ".build/release"
    @Option(help: "Folder for results.json, results.md and results.png.")
    var out: String = "bench-results"
    @Option(help: "Seconds per measurement.")
    var duration: Double = 5
    @Option(help: "Concurrent connections, comma-separated.")
    var connections: String = "1,8,32,64"
    @Option(help: "Secret counts for the scale scenario, comma-separated (empty: skip).")
    var scale: String = "1000,100000,1000000"
    @Option(help: "storage.durability of the measured daemon.")
    var durability: String = "full"
    @Option(help: "Secrets stored for the rotation scenario.")
    var rotationSecrets = 100_000

    @Option(help: "Run only the scenarios with these names (comma-separated, or semicolon-separated when a name holds a comma), e.g. \"read 64 B\".")
    var only: String?
    @Option(help: "Requests for the memory run: a fresh daemon under the 90/10 read/write mix at 32 connections, its RSS sampled every 10 s (0: skip), e.g. 2000000.")
    var memoryRequests = 0
    @Flag(help: "A few seconds in all: 1 and 8 connections, 1 s each, no scale, few CLI runs (CI).")
    var smoke = false

    mutating func run() throws {
        if smoke {
            duration = 1
            connections = "1,8"
            scale = ""
        }
        let conns = connections.split(separator: ",").compactMap { Int($0) }
        let bin = URL(fileURLWithPath: self.bin).standardizedFileURL.path
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        var report = Report(machine: Report.machine(), duration: duration, durability: durability, smoke: smoke)

        let audited = try Daemon(bin: bin, name: "audited", extra: "[storage]\ndurability = \"\(durability)\"\n")
        defer { audited.stop() }
        let unaudited = try Daemon(bin: bin, name: "noaudit", extra: "[storage]\ndurability = \"\(durability)\"\n[audit]\nenabled = false\n")
        defer { unaudited.stop() }
        // the default request path is the event loop (issue 16, design (a)); Hummingbird's
        // responder, the default before it, beside it
        let hummingbird = try Daemon(bin: bin, name: "hummingbird", extra: "[storage]\ndurability = \"\(durability)\"\n",
                                     serverExtra: "request_path = \"hummingbird\"")
        defer { hummingbird.stop() }
        // issue 16's design (b), a purpose-built epoll loop, measured beside it
        let epoll = try Daemon(bin: bin, name: "epoll", extra: "[storage]\ndurability = \"\(durability)\"\n",
                               serverExtra: "request_path = \"epoll-prototype\"")
        defer { epoll.stop() }
        let redis = Redis.start()
        defer { redis?.stop() }
        // issue 17: the same daemon on PostgreSQL, and a second instance (another
        // host's daemon) on the same database
        let wantsPostgres = only.map { $0.contains("PostgreSQL") } ?? !smoke
        let postgres = wantsPostgres ? BenchPostgres.start() : nil
        defer { postgres?.stop() }
        var onPostgres: Daemon?
        var secondInstance: Daemon?
        var relaxed: Daemon?
        if let postgres {
            try postgres.createDatabase("bench")
            onPostgres = try Daemon(bin: bin, name: "postgres", extra: postgres.storage("bench", durability: durability))
            secondInstance = try Daemon(bin: bin, name: "postgres-2", extra: postgres.storage("bench", durability: durability), joining: onPostgres)
            // the same database, caches trusted for up to 100 ms between generation checks
            // (LISTEN/NOTIFY tells sooner): what the per-request check costs
            relaxed = try Daemon(bin: bin, name: "postgres-relaxed", extra: postgres.storage("bench", durability: durability) + "max_staleness_ms = 100\n",
                                 joining: onPostgres)
        } else if wantsPostgres {
            print("PostgreSQL 15 is not installed (apt-get install postgresql): its rows are left out")
        }
        defer { onPostgres?.stop(); secondInstance?.stop(); relaxed?.stop() }
        report.rssIdleKiB = processMemoryKiB(audited.pid, "VmRSS")

        for d in [audited, unaudited, hummingbird, epoll] + (onPostgres.map { [$0] } ?? []) {
            try d.put("bench/s64", String(repeating: "a", count: 64))
            try d.put("bench/s4k", String(repeating: "b", count: 4096))
            try d.put("ci/app/db", "x")
            for i in 0..<100 { try d.put("bench/list/k\(i)", "v") }
        }
        try redis?.set("bench:s64", String(repeating: "a", count: 64))
        let token = try audited.token(role: "admin")

        let read64 = HTTPWorkload(make: { _ in ("GET", "/v1/secrets/data/bench/s64", nil) }, token: nil, expect: 200)
        let scenarios: [(String, any Workload, Daemon?)] = [
            ("noop (health)", HTTPWorkload(make: { _ in ("GET", "/v1/sys/health", nil) }, token: nil, expect: 200), audited),
            ("read 64 B", read64, audited),
            ("read 64 B, audit off", read64, unaudited),
            ("noop (health), Hummingbird path", HTTPWorkload(make: { _ in ("GET", "/v1/sys/health", nil) }, token: nil, expect: 200), hummingbird),
            ("read 64 B, Hummingbird path", read64, hummingbird),
            ("noop (health), epoll prototype", HTTPWorkload(make: { _ in ("GET", "/v1/sys/health", nil) }, token: nil, expect: 200), epoll),
            ("read 64 B, epoll prototype", read64, epoll),
            ("read 4 KiB", HTTPWorkload(make: { _ in ("GET", "/v1/secrets/data/bench/s4k", nil) }, token: nil, expect: 200), audited),
            ("read 64 B, token", HTTPWorkload(make: { _ in ("GET", "/v1/secrets/data/bench/s64", nil) }, token: token, expect: 200), audited),
            ("write 64 B", HTTPWorkload(make: { i in ("PUT", "/v1/secrets/data/bench/w/\(i % 1000)", Array(#"{"value":"\#(String(repeating: "w", count: 64))"}"#.utf8)) }, token: nil, expect: 200), audited),
            ("list 100", HTTPWorkload(make: { _ in ("GET", "/v1/secrets/list/bench/list", nil) }, token: nil, expect: 200), audited),
            ("mix 90/10", HTTPWorkload(make: { i in i % 10 == 0
                ? ("PUT", "/v1/secrets/data/bench/m/\(i % 1000)", Array(#"{"value":"m"}"#.utf8))
                : ("GET", "/v1/secrets/data/bench/s64", nil) }, token: nil, expect: 200), audited),
            ("denied read", HTTPWorkload(make: { _ in ("GET", "/v1/secrets/data/other/x", nil) }, token: try audited.token(role: "narrow"), expect: 403), audited),
        ] + (onPostgres.map { pg in [
            ("read 64 B, PostgreSQL", read64, pg),
            ("write 64 B, PostgreSQL", HTTPWorkload(make: { i in ("PUT", "/v1/secrets/data/bench/w/\(i % 1000)", Array(#"{"value":"\#(String(repeating: "w", count: 64))"}"#.utf8)) }, token: nil, expect: 200), pg),
            ("mix 90/10, PostgreSQL", HTTPWorkload(make: { i in i % 10 == 0
                ? ("PUT", "/v1/secrets/data/bench/m/\(i % 1000)", Array(#"{"value":"m"}"#.utf8))
                : ("GET", "/v1/secrets/data/bench/s64", nil) }, token: nil, expect: 200), pg),
            ("read 64 B, PostgreSQL, max_staleness_ms 100", read64, relaxed!),
            // the same connections spread over two instances on the one database
            ("read 64 B, PostgreSQL, 2 instances", read64, pg),
            ("write 64 B, PostgreSQL, 2 instances", HTTPWorkload(make: { i in ("PUT", "/v1/secrets/data/bench/w/\(i % 1000)", Array(#"{"value":"\#(String(repeating: "w", count: 64))"}"#.utf8)) }, token: nil, expect: 200), pg),
        ] } ?? [])
        // (";" separates names when one of them holds a comma: "read 64 B, audit off")
        let selected = only.map { list in Set(list.split(separator: list.contains(";") ? ";" : ",").map { String($0) }) }
        for (name, w, d) in scenarios where selected?.contains(name) ?? true {
            for c in conns {
                let before = d!.auditTotals()
                let pair = name.hasSuffix(", 2 instances") ? secondInstance : nil
                var r = runLoad(w, socket: d!.socket, also: pair.map { [$0.socket] } ?? [], connections: pair == nil ? c : max(c, 2),
                                seconds: duration, serverPID: pair == nil ? d!.pid : nil)
                if let b = before, let a = d!.auditTotals(), a.commits > b.commits {
                    r.auditBatch = (a.events - b.events) / (a.commits - b.commits)
                    r.auditCommitUs = (a.seconds - b.seconds) / (a.commits - b.commits) * 1e6
                }
                report.add(name, c, r)
                print(padded(name, 24) + String(format: "%3d conn  %9.0f req/s  p50 %7.0f µs  p99 %7.0f µs  errors %d", c, r.rps, r.p50us, r.p99us, r.errors)
                      + (r.auditBatch.map { String(format: "  audit %.1f ev/commit, %.0f µs/commit", $0, r.auditCommitUs ?? 0) } ?? ""))
            }
        }
        // credentials for an active elevation: an OpenSSH certificate, a JWT (each a
        // write: the credential's row and its audit event commit together)
        let credentialRows = ["certificate issue", "JWT issue"].filter { selected?.contains($0) ?? true }
        if !credentialRows.isEmpty {
            let cd = try Daemon(bin: bin, name: "credentials", extra: "[storage]\ndurability = \"\(durability)\"\n", policyExtra: """
                [role.deploy]
                [[role.deploy.rule]]
                path = "deploy/**"
                capabilities = ["read"]
                [[elevation]]
                role = "deploy"
                eligible = ["uid:\(getuid())"]
                approvals = 0
                max_duration = "2h"
                reason = "optional"
                ssh = { principals = ["deploy"] }
                jwt = { audiences = ["bench"], max_ttl = "1h" }
                """)
            defer { cd.stop() }
            let client = CofferClient(socketPath: cd.socket)
            let id = try client.elevationRequest(.init(role: "deploy", duration: "2h", reason: nil, ticket: nil)).id
            _ = try client.activateElevation(id)
            let key = #"{"public_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIADBYxmSZDpUQVhzyCUcjUEKD5goTEx1FiRwq7oh38p9 bench"}"#
            let workloads: [String: HTTPWorkload] = [
                "certificate issue": HTTPWorkload(make: { _ in ("POST", "/v1/elevation/requests/\(id)/ssh", Array(key.utf8)) }, token: nil, expect: 200),
                "JWT issue": HTTPWorkload(make: { _ in ("POST", "/v1/elevation/requests/\(id)/jwt", Array(#"{"audience":"bench","ttl":"5m"}"#.utf8)) },
                                          token: nil, expect: 200),
            ]
            for name in credentialRows {
                for c in conns {
                    let r = runLoad(workloads[name]!, socket: cd.socket, connections: c, seconds: duration, serverPID: cd.pid)
                    report.add(name, c, r)
                    print(padded(name, 24) + String(format: "%3d conn  %9.0f req/s  p50 %7.0f µs  p99 %7.0f µs  errors %d", c, r.rps, r.p50us, r.p99us, r.errors))
                }
            }
        }
        if let redis, selected?.contains("redis GET 64 B") ?? true {
            for c in conns {
                let r = runLoad(RedisWorkload(key: "bench:s64"), socket: redis.socket, connections: c, seconds: duration, serverPID: redis.pid)
                report.add("redis GET 64 B", c, r)
                print(padded("redis GET 64 B", 24) + String(format: "%3d conn  %9.0f req/s  p50 %7.0f µs  p99 %7.0f µs  errors %d", c, r.rps, r.p50us, r.p99us, r.errors))
            }
        }
        report.rssPeakKiB = processMemoryKiB(audited.pid, "VmHWM")
        report.rssAfterKiB = processMemoryKiB(audited.pid, "VmRSS")

        // memory under sustained load (issue 16): RSS against requests served
        if memoryRequests > 0 {
            let m = try Daemon(bin: bin, name: "memory", extra: "[storage]\ndurability = \"\(durability)\"\n")
            defer { m.stop() }
            try m.put("bench/s64", String(repeating: "a", count: 64))
            let mix = HTTPWorkload(make: { i in i % 10 == 0
                ? ("PUT", "/v1/secrets/data/bench/m/\(i % 1000)", Array(#"{"value":"m"}"#.utf8))
                : ("GET", "/v1/secrets/data/bench/s64", nil) }, token: nil, expect: 200)
            report.memoryIdleKiB = processMemoryKiB(m.pid, "VmRSS")
            var served = 0
            let started = monotonicNanos()
            while served < memoryRequests {
                let r = runLoad(mix, socket: m.socket, connections: 32, seconds: 10, serverPID: m.pid)
                served += r.requests
                let rss = processMemoryKiB(m.pid, "VmRSS") ?? 0
                report.memorySamples.append(.init(requests: served, seconds: Double(monotonicNanos() - started) / 1e9, rssKiB: rss))
                print(String(format: "memory: %9d requests  %5.0f s  RSS %6.1f MiB  errors %d", served, Double(monotonicNanos() - started) / 1e9,
                             Double(rss) / 1024, r.errors))
            }
        }

        // whole-process CLI latency against redis-cli
        let runs = smoke ? 10 : 100
        if let redis, let cli = Redis.which("redis-cli") {
            let (cliMs, redisMs, _) = try timePair(
                (audited.bin + "/coffer", ["secret", "get", "bench/s64"], ["COFFER_SOCKET": audited.socket]),
                (cli, ["-s", redis.socket, "GET", "bench:s64"], [:]), runs: runs)
            report.cliMeanMs = cliMs
            report.redisCliMeanMs = redisMs
        } else {
            report.cliMeanMs = try timeCommand(audited.bin + "/coffer", ["secret", "get", "bench/s64"], env: ["COFFER_SOCKET": audited.socket], runs: runs)
        }
        print(String(format: "coffer secret get: %.2f ms per process; redis-cli GET: %@", report.cliMeanMs ?? 0,
                     report.redisCliMeanMs.map { String(format: "%.2f ms", $0) } ?? "n/a"))

        // PIM: sign-in and the elevation round trip (root only: it makes users and a PAM service)
        if selected?.contains("pim") ?? true, let (signIn, roundTrip) = try PIMBench.run(bin: bin, runs: smoke ? 3 : 20) {
            report.signInMeanMs = signIn
            report.elevationRoundTripMs = roundTrip
            print(String(format: "sign-in (coffer login, PAM): %.1f ms per process; elevation round trip (request, 2 approvals, activate): %.1f ms", signIn, roundTrip))
        }

        // coffer run against the same tmpfs work done by hand (root only: namespaces)
        if selected?.contains("run") ?? true, geteuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare") {
            let value = String(repeating: "r", count: 64)
            for i in 0..<10 { try audited.put("bench/run/s\(i)", value) }
            let dir = audited.dir + "/run-secrets"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let secrets = (0..<10).flatMap { ["--secret", "bench/run/s\($0)"] }
            let n = smoke ? 5 : 100
            let files = (0..<10).map { "printf %s \(value) > \(dir)/s\($0)" }.joined(separator: " && ")
            let (runMs, baseMs, runMedian) = try timePair(
                (audited.bin + "/coffer", ["run", "--dir", dir] + secrets + ["--", "/bin/true"], ["COFFER_SOCKET": audited.socket]),
                ("/usr/bin/unshare", ["-m", "--propagation", "private", "/bin/sh", "-c",
                 "mount -t tmpfs -o size=1m,mode=0700,nosuid,nodev,noexec,noswap coffer-bench \(dir) && \(files) && exec /bin/true"], [:]),
                runs: n)
            report.runMeanMs = runMs
            report.tmpfsBaselineMs = baseMs
            report.runMedianRatio = runMedian
            print(String(format: "coffer run (10 secrets, /bin/true): %.2f ms per process; unshare+mount+10 files+exec: %.2f ms",
                         report.runMeanMs ?? 0, report.tmpfsBaselineMs ?? 0))
        }

        // the OCI hook: runc run with it (5 secrets) against the same container without it
        if selected?.contains("hook") ?? true, geteuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/sbin/runc"),
           FileManager.default.isExecutableFile(atPath: "/bin/busybox") {
            for i in 0..<5 { try audited.put("bench/hook/s\(i)", String(repeating: "h", count: 64)) }
            let spec = (0..<5).map { "bench/hook/s\($0)" }.joined(separator: ",")
            let plain = try ociBundle(audited, name: "plain", hook: nil)
            let hooked = try ociBundle(audited, name: "hooked", hook: (bin + "/coffer", spec))
            let n = smoke ? 3 : 40
            let id = "coffer-bench-\(getpid())"
            let (hookMs, plainMs, _) = try timePair(("/usr/sbin/runc", ["run", "--bundle", hooked, id + "-h"], [:]),
                                                 ("/usr/sbin/runc", ["run", "--bundle", plain, id + "-p"], [:]), runs: n)
            report.hookRuncMs = hookMs
            report.plainRuncMs = plainMs
            print(String(format: "runc run with the OCI hook (5 secrets): %.1f ms; without: %.1f ms", hookMs, plainMs))
        }

        // keys: a rotation's re-wrap under a 32-connection read load, and a passphrase unseal
        if selected?.contains("rotation") ?? true {
            let n = smoke ? 2_000 : rotationSecrets
            let k = try KeysBench.run(bin: bin, secrets: n, duration: duration)
            report.add("read 64 B before rotation", 32, k.before)
            report.add("read 64 B during rotation", 32, k.during)
            report.rotationPerSecond = k.rewrapPerSecond
            report.rotationSecrets = k.secrets
            report.unsealMs = k.unsealMs
            print(String(format: "rotation of %d versions: %.0f re-wrapped/s; reads @32 before %.0f req/s, during %.0f req/s (%.2fx); passphrase unseal (Argon2id MODERATE): %.0f ms",
                         k.secrets, k.rewrapPerSecond, k.before.rps, k.during.rps, k.during.rps / max(k.before.rps, 1), k.unsealMs))
        }

        // scale: the same read with many secrets stored
        for n in scale.split(separator: ",").compactMap({ Int($0) }) {
            let d = try Daemon(bin: bin, name: "scale\(n)", extra: "[storage]\ndurability = \"normal\"\n")
            try d.seed(n)
            try d.put("bench/s64", String(repeating: "a", count: 64))
            let r = runLoad(read64, socket: d.socket, connections: 32, seconds: duration, serverPID: d.pid)
            report.add("read 64 B with \(n) secrets", 32, r)
            print(String(format: "read with %8d secrets: %9.0f req/s  p50 %7.0f µs", n, r.rps, r.p50us))
            d.stop()
        }

        report.evaluateTargets()
        for line in report.targets { print(line) }
        try report.write(to: out)
        print("results: \(out)/results.json, results.md\(report.chartWritten ? ", results.png" : "")")
    }
}

/// Mean wall time of a whole process (posix_spawn + wait, no Foundation overhead).
/// One process, from spawn to exit, in nanoseconds (stdout and stderr to /dev/null).
func timeOnce(_ exe: String, _ args: [String], envStrings: [String]) throws -> UInt64 {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    defer { posix_spawn_file_actions_destroy(&actions) }
    let argv = ([exe] + args).map { strdup($0) } + [nil]
    let envp = envStrings.map { strdup($0) } + [nil]
    defer { (argv + envp).forEach { free($0) } }
    var pid: pid_t = 0
    let t0 = monotonicNanos()
    guard posix_spawn(&pid, exe, &actions, nil, argv, envp) == 0 else { throw BenchError("cannot run \(exe)") }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    let elapsed = monotonicNanos() - t0
    guard status == 0 else { throw BenchError("\(exe) \(args) failed") }
    return elapsed
}

func environmentStrings(_ env: [String: String]) -> [String] {
    var environment = ProcessInfo.processInfo.environment
    for (k, v) in env { environment[k] = v }
    return environment.map { "\($0.key)=\($0.value)" }
}

/// Mean milliseconds per process.
func timeCommand(_ exe: String, _ args: [String], env: [String: String], runs: Int) throws -> Double {
    let envStrings = environmentStrings(env)
    var total: UInt64 = 0
    for _ in 0..<runs { total += try timeOnce(exe, args, envStrings: envStrings) }
    return Double(total) / Double(runs) / 1e6
}

/// A command and its baseline, alternated run by run (so both see the same machine:
/// a noisy neighbour or a frequency change weighs on both alike), as mean
/// milliseconds per process each, and the median of the pairs' ratios (one stall of
/// a shared machine moves a mean, not a median).
func timePair(_ a: (exe: String, args: [String], env: [String: String]), _ b: (exe: String, args: [String], env: [String: String]),
              runs: Int) throws -> (Double, Double, Double) {
    let envA = environmentStrings(a.env), envB = environmentStrings(b.env)
    var ta: UInt64 = 0, tb: UInt64 = 0
    var ratios: [Double] = []
    for i in 0..<runs {
        // and which goes first alternates too
        var x: UInt64 = 0, y: UInt64 = 0
        if i % 2 == 0 {
            x = try timeOnce(a.exe, a.args, envStrings: envA)
            y = try timeOnce(b.exe, b.args, envStrings: envB)
        } else {
            y = try timeOnce(b.exe, b.args, envStrings: envB)
            x = try timeOnce(a.exe, a.args, envStrings: envA)
        }
        ta += x
        tb += y
        ratios.append(Double(x) / Double(max(y, 1)))
    }
    ratios.sort()
    let median = ratios.isEmpty ? 0 : ratios[ratios.count / 2]
    return (Double(ta) / Double(runs) / 1e6, Double(tb) / Double(runs) / 1e6, median)
}

func padded(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }

/// A runc bundle in the daemon's folder: a busybox rootfs, `runc spec`'s config running
/// /bin/true, and with `hook` the OCI hook at createRuntime and poststop injecting SPEC.
func ociBundle(_ d: Daemon, name: String, hook: (coffer: String, spec: String)?) throws -> String {
    let bundle = d.dir + "/oci-" + name
    let rootfs = bundle + "/rootfs"
    for sub in ["bin", "proc", "sys", "dev", "run", "tmp"] {
        try FileManager.default.createDirectory(atPath: rootfs + "/" + sub, withIntermediateDirectories: true)
    }
    try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: rootfs + "/bin/busybox")
    try FileManager.default.createSymbolicLink(atPath: rootfs + "/bin/true", withDestinationPath: "busybox")
    let spec = Process()
    spec.executableURL = URL(fileURLWithPath: "/usr/sbin/runc")
    spec.arguments = ["spec", "--bundle", bundle]
    try spec.run()
    spec.waitUntilExit()
    guard spec.terminationStatus == 0 else { throw BenchError("runc spec failed") }
    let url = URL(fileURLWithPath: bundle + "/config.json")
    guard var config = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any],
          var process = config["process"] as? [String: Any] else { throw BenchError("runc spec wrote no config") }
    process["terminal"] = false
    process["args"] = ["/bin/true"]
    config["process"] = process
    if let hook {
        config["annotations"] = ["io.coffer.secrets": hook.spec]
        let entry = { (stage: String) -> [String: Any] in
            ["path": hook.coffer, "args": ["coffer", "oci-hook", stage], "env": ["COFFER_SOCKET=\(d.socket)"], "timeout": 20]
        }
        config["hooks"] = ["createRuntime": [entry("createRuntime")], "poststop": [entry("poststop")]]
    }
    try JSONSerialization.data(withJSONObject: config).write(to: url)
    return bundle
}
