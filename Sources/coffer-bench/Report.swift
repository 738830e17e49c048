import Foundation
import Glibc

/// Everything one run measured, and the targets judged against baselines of the same run.
struct Report: Codable {
    struct Row: Codable {
        var scenario: String
        var connections: Int
        var result: LoadResult
    }

    var machine: String
    var duration: Double
    var durability: String
    var smoke: Bool
    var rows: [Row] = []
    var rssIdleKiB: Int?
    var rssPeakKiB: Int?
    var rssAfterKiB: Int?
    struct MemorySample: Codable {
        var requests: Int
        var seconds: Double
        var rssKiB: Int
    }
    var memoryIdleKiB: Int?
    var memorySamples: [MemorySample] = []
    var cliMeanMs: Double?
    /// `coffer login` through PAM (pam_unix), whole process, per sign-in.
    var signInMeanMs: Double?
    /// request → 2 approvals → activate, four CLI processes by three pre-signed-in users.
    var elevationRoundTripMs: Double?
    var redisCliMeanMs: Double?
    /// `coffer run` with 10 secrets of 64 B running /bin/true (private namespaces),
    /// and the same tmpfs work by unshare -m + mount + 10 files + exec /bin/true.
    var runMeanMs: Double?
    var tmpfsBaselineMs: Double?
    /// the median of the alternated pairs' ratios (coffer run / baseline)
    var runMedianRatio: Double?
    /// `runc run` of a busybox container running /bin/true with the OCI hook injecting
    /// 5 secrets, and the same container without the hook.
    var hookRuncMs: Double?
    var plainRuncMs: Double?
    /// Versions re-wrapped per second by `coffer operator rotate` while 32 connections read.
    var rotationPerSecond: Double?
    var rotationSecrets: Int?
    /// `coffer operator unseal` with a passphrase (Argon2id MODERATE), wall time.
    var unsealMs: Double?
    var targets: [String] = []
    var chartWritten = false

    init(machine: String, duration: Double, durability: String, smoke: Bool) {
        self.machine = machine
        self.duration = duration
        self.durability = durability
        self.smoke = smoke
    }

    static func machine() -> String {
        var u = utsname()
        uname(&u)
        let release = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return "\(ProcessInfo.processInfo.activeProcessorCount) cores, Linux \(release)"
    }

    mutating func add(_ scenario: String, _ c: Int, _ r: LoadResult) { rows.append(Row(scenario: scenario, connections: c, result: r)) }

    func find(_ scenario: String, _ c: Int) -> LoadResult? {
        rows.first { $0.scenario == scenario && $0.connections == c }?.result
    }

    mutating func evaluateTargets() {
        let c = rows.contains { $0.connections == 32 } ? 32 : (rows.map(\.connections).max() ?? 1)
        func line(_ ok: Bool, _ text: String) { targets.append("\(ok ? "PASS" : "FAIL")  \(text)") }
        if let r = find("read 64 B", c), let noop = find("noop (health)", c) {
            let x = r.rps / noop.rps
            line(x >= 0.6, String(format: "audited 64 B reads at %d conn = %.2f × the no-op route (target ≥ 0.6)", c, x))
        }
        if let r = find("read 64 B", c), let off = find("read 64 B, audit off", c) {
            line(r.rps / off.rps >= 0.8, String(format: "audited 64 B reads at %d conn = %.2f × the same daemon with audit off (target ≥ 0.8)", c, r.rps / off.rps))
        }
        if let r = find("read 64 B", c), let redis = find("redis GET 64 B", c) {
            let x = r.rps / redis.rps
            line(x >= 0.3, String(format: "audited 64 B reads at %d conn = %.2f × Redis GET (target ≥ 0.3; %@ the first goal of 0.5)", c, x, (x >= 0.5 ? "meets" : "short of") as NSString))
        }
        if let r = find("read 64 B", c) {
            line(r.p99us <= 2000, String(format: "p99 of audited reads at %d conn = %.0f µs (target ≤ 2000 µs)", c, r.p99us))
        }
        // the experimental request paths, measured in the same run (issue 16)
        for (name, label) in [("read 64 B, Hummingbird path", "Hummingbird path"), ("read 64 B, epoll prototype", "epoll prototype")] {
            guard let e = find(name, c) else { continue }
            var text = "INFO  " + label + String(format: ": audited 64 B reads at %d conn = %.0f req/s, p99 %.0f µs", c, e.rps, e.p99us)
            if let r = find("read 64 B", c) { text += String(format: "; %.2f × the default (event-loop) path", e.rps / r.rps) }
            if let redis = find("redis GET 64 B", c) { text += String(format: "; %.2f × Redis GET", e.rps / redis.rps) }
            if let off = find("read 64 B, audit off", c) { text += String(format: "; %.2f × audit off", e.rps / off.rps) }
            targets.append(text)
        }
        // issue 17: the same daemon on PostgreSQL beside SQLite, in the same run
        for (pg, lite) in [("read 64 B, PostgreSQL", "read 64 B"), ("write 64 B, PostgreSQL", "write 64 B"), ("mix 90/10, PostgreSQL", "mix 90/10"),
                           ("read 64 B, PostgreSQL, 2 instances", "read 64 B"), ("write 64 B, PostgreSQL, 2 instances", "write 64 B")] {
            guard let p = find(pg, c), let l = find(lite, c) else { continue }
            targets.append("INFO  " + String(format: "%@ at %d conn = %.0f req/s, p99 %.0f µs: %.2f × SQLite (%.0f req/s)",
                                             pg as NSString, c, p.rps, p.p99us, p.rps / l.rps, l.rps))
        }
        for (two, one) in [("read 64 B, PostgreSQL, 2 instances", "read 64 B, PostgreSQL"), ("write 64 B, PostgreSQL, 2 instances", "write 64 B, PostgreSQL"),
                           ("read 64 B, PostgreSQL, max_staleness_ms 100", "read 64 B, PostgreSQL")] {
            guard let p = find(two, c), let o = find(one, c) else { continue }
            targets.append("INFO  " + String(format: "%@ at %d conn: %.2f × %@", two as NSString, c, p.rps / o.rps, one as NSString))
        }
        let scaled = rows.filter { $0.scenario.hasPrefix("read 64 B with ") }
        if let small = scaled.first, let large = scaled.last, scaled.count > 1 {
            let x = large.result.p50us / small.result.p50us
            line(x <= 1.5, String(format: "p50 with the most secrets = %.2f × p50 with the fewest (target ≤ 1.5)", x))
        }
        if let cli = cliMeanMs, let redis = redisCliMeanMs {
            line(cli <= 2 * redis, String(format: "coffer secret get, whole process = %.2f × redis-cli GET (target ≤ 2)", cli / redis))
        }
        if let run = runMeanMs, let base = tmpfsBaselineMs {
            line(run <= 1.5 * base, String(format: "coffer run, 10 secrets, /bin/true = %.2f × unshare+mount+10 files+exec (target ≤ 1.5)", run / base))
            if let m = runMedianRatio {
                targets.append(String(format: "INFO  coffer run: median of the alternated pairs' ratios = %.2f ×", m))
            }
        }
        if let hook = hookRuncMs, let plain = plainRuncMs {
            line(hook - plain <= 20, String(format: "OCI hook, 5 secrets: runc run + %.1f ms (%.1f vs %.1f ms; target ≤ 20 ms added)", hook - plain, hook, plain))
        }
        if let idle = rssIdleKiB {
            line(idle <= 32 * 1024, String(format: "daemon RSS idle = %.1f MiB (target ≤ 32 MiB)", Double(idle) / 1024))
        }
        if let idle = memoryIdleKiB, let last = memorySamples.last {
            // within 10 % of idle, or a plateau: the second half of the run grows by under 2 %
            let over = Double(last.rssKiB) / Double(idle) - 1
            let half = memorySamples.suffix(max(1, memorySamples.count / 2))
            let growth = Double(half.map(\.rssKiB).max() ?? 0) / Double(half.first?.rssKiB ?? 1) - 1
            let text = String(format: "daemon RSS after %d requests (%.0f s) = %.1f MiB, %.0f%% over idle %.1f MiB; second half of the run %+.1f%%",
                              last.requests, last.seconds, Double(last.rssKiB) / 1024, over * 100, Double(idle) / 1024, growth * 100)
            line(over <= 0.10 || (last.seconds >= 600 && growth < 0.02), text + " (target ≤ 10% over idle, or a plateau over ≥ 10 minutes)")
        }
        if let idle = rssIdleKiB, let after = rssAfterKiB {
            let total = rows.filter { !$0.scenario.hasPrefix("redis") && !$0.scenario.contains("audit off") }.reduce(0) { $0 + $1.result.requests }
            targets.append(String(format: "INFO  daemon RSS after %d requests = %.1f MiB (%.0f%% over idle; peak %.1f MiB)", total,
                                  Double(after) / 1024, (Double(after) / Double(idle) - 1) * 100, Double(rssPeakKiB ?? 0) / 1024))
        }
    }

    func markdown() -> String {
        var s = "Machine: \(machine); \(duration) s per cell; durability \(durability)\(smoke ? "; smoke run" : "").\n\n"
        s += "| scenario | conn | req/s | p50 µs | p99 µs | p99.9 µs | errors | daemon CPU µs/req |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
        for r in rows {
            let x = r.result
            s += String(format: "| %@ | %d | %.0f | %.0f | %.0f | %.0f | %d | %@ |\n", r.scenario as NSString, r.connections, x.rps, x.p50us, x.p99us,
                        x.p999us, x.errors, x.cpuUsPerRequest.map { String(format: "%.1f", $0) } ?? "–")
        }
        if let cli = cliMeanMs { s += String(format: "\n`coffer secret get` whole process: %.2f ms", cli) }
        if let v = signInMeanMs { s += String(format: "\nsign-in (`coffer login`, PAM pam_unix), whole process: %.1f ms", v) }
        if let v = elevationRoundTripMs { s += String(format: "\nelevation round trip (request, 2 approvals, activate; 4 CLI processes): %.1f ms", v) }
        if let r = redisCliMeanMs { s += String(format: "; `redis-cli GET`: %.2f ms", r) }
        if let v = runMeanMs, let b = tmpfsBaselineMs {
            s += String(format: "\n`coffer run` (10 secrets of 64 B, /bin/true), whole process: %.2f ms; unshare -m + mount tmpfs + 10 files + exec: %.2f ms", v, b)
            if let m = runMedianRatio { s += String(format: " (median ratio of the pairs %.2f ×)", m) }
        }
        if let h = hookRuncMs, let p = plainRuncMs {
            s += String(format: "\n`runc run` (busybox, /bin/true) with the OCI hook injecting 5 secrets: %.1f ms; without the hook: %.1f ms", h, p)
        }
        if let r = rotationPerSecond, let n = rotationSecrets {
            s += String(format: "\n`coffer operator rotate` with %d versions, 32 connections reading: %.0f versions re-wrapped per second", n, r)
        }
        if let u = unsealMs { s += String(format: "\npassphrase unseal (Argon2id MODERATE, 256 MiB), whole request: %.0f ms", u) }
        s += "\n\n" + targets.map { "    " + $0 }.joined(separator: "\n") + "\n"
        return s
    }

    mutating func write(to dir: String) throws {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        try e.encode(self).write(to: URL(fileURLWithPath: dir + "/results.json"))
        try markdown().write(toFile: dir + "/results.md", atomically: true, encoding: .utf8)
        chartWritten = writeChart(dir)
    }

    /// Throughput and p99 by concurrency, Coffer against its baselines (gnuplot, if installed).
    func writeChart(_ dir: String) -> Bool {
        guard let gnuplot = ["/usr/bin/gnuplot"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            print("gnuplot not found (apt-get install gnuplot-nox): no chart")
            return false
        }
        let series = ["noop (health)", "read 64 B", "read 64 B, audit off", "redis GET 64 B"].filter { s in rows.contains { $0.scenario == s } }
        var data = ""
        for s in series {
            data += "# \(s)\n"
            for r in rows where r.scenario == s { data += "\(r.connections) \(r.result.rps) \(r.result.p99us)\n" }
            data += "\n\n"
        }
        let dat = dir + "/results.dat"
        try? data.write(toFile: dat, atomically: true, encoding: .utf8)
        var script = """
            set terminal png size 1100,450
            set output '\(dir)/results.png'
            set multiplot layout 1,2
            set logscale x 2
            set xlabel 'connections'
            set key left top
            set title 'throughput (req/s)'
            plot
            """
        script += series.enumerated().map { " '\(dat)' index \($0.offset) using 1:2 with linespoints title '\($0.element)'" }.joined(separator: ",") + "\n"
        script += "set title 'p99 latency (µs)'\nplot"
        script += series.enumerated().map { " '\(dat)' index \($0.offset) using 1:3 with linespoints title '\($0.element)'" }.joined(separator: ",") + "\n"
        script += "unset multiplot\n"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: gnuplot)
        let pipe = Pipe()
        p.standardInput = pipe
        try? p.run()
        pipe.fileHandleForWriting.write(Data(script.utf8))
        try? pipe.fileHandleForWriting.close()
        p.waitUntilExit()
        return p.terminationStatus == 0
    }
}
