import Foundation
import Testing

/// The newcomer's frictions (issue "Operating Coffer"), each with the command that
/// showed it.
@Suite struct OperationsTests {
    /// `--version` is the root's only: on a subcommand it is an unknown option (a
    /// destroy that printed the version and destroyed nothing was the worst surprise).
    @Test func versionIsTheRootsAloneAndUsageErrorsSpeakLikeTheRest() throws {
        let d = try Daemon()
        try d.start()
        #expect(try d.coffer(["secret", "put", "scratch/x"], stdin: Array("v1".utf8)).status == 0)
        let v = try run(Bins.coffer, ["--version"])
        #expect(v.status == 0 && v.out.split(separator: ".").count == 3, "\(v.out)")
        for verb in ["destroy", "delete", "versions"] {
            let r = try d.coffer(["secret", verb, "scratch/x", "--version", "1"])
            #expect(r.status == 64 && r.stderr.hasPrefix("coffer: error: ") && r.stderr.contains("--version") && !r.out.contains(v.out), "\(verb): \(r.status) \(r.out) \(r.stderr)")
        }
        #expect(try d.coffer(["secret", "get", "scratch/x"]).out == "v1")
        let help = try d.coffer(["secret", "get", "--help"])
        #expect(help.out.split(separator: "\n").filter { $0.trimmingCharacters(in: .whitespaces).hasPrefix("--version") }.count == 1,
                "--version listed once among the options: \(help.out)")
        let bad = try d.coffer(["token", "create", "--bogus"])
        #expect(bad.status == 64 && bad.stderr.hasPrefix("coffer: error: ") && !bad.stderr.contains("Error:"), "\(bad.stderr)")
    }

    /// A policy file created after the daemon started loads at the next reload (and
    /// at SIGHUP, which says so in the log); before it exists the reload says why.
    @Test func aPolicyFileCreatedAfterStartLoads() throws {
        let d = try Daemon()
        try d.start()
        #expect(!FileManager.default.fileExists(atPath: d.policyPath))
        var r = try d.coffer(["policy", "reload"])
        #expect(r.status != 0 && r.stderr.contains("does not exist"), "\(r.stderr)")
        try """
            [role.admin]
            [[role.admin.rule]]
            path = "**"
            capabilities = ["read", "list", "write", "admin", "audit"]
            [role.ci-build]
            [[role.ci-build.rule]]
            path = "ci/**"
            capabilities = ["read"]
            [[bind]]
            subjects = ["uid:0"]
            roles = ["admin"]
            """.write(toFile: d.policyPath, atomically: true, encoding: .utf8)
        r = try d.coffer(["policy", "reload"])
        #expect(r.status == 0, "\(r.stderr)")
        r = try d.coffer(["token", "create", "--role", "ci-build", "--ttl", "10m"])
        #expect(r.status == 0, "the new policy's role: \(r.stderr)")
        // SIGHUP reloads too, and says so
        try (try String(contentsOfFile: d.policyPath, encoding: .utf8) + "\n[role.extra]\n").write(toFile: d.policyPath, atomically: true, encoding: .utf8)
        kill(d.pid!, SIGHUP)
        #expect(CredentialTests.waitFor(5) { d.log.contains("SIGHUP: reloading the policy") && d.log.contains("policy reloaded") }, "\(d.log.suffix(600))")
    }

    /// Offline verify of a live daemon's database: its newest events are not signed
    /// yet. That is said as such (exit 10), not as tampering (exit 9); once the
    /// daemon stops (it signs its head) the same check passes.
    @Test func offlineVerifyOfALiveDatabaseIsNoFalseAlarm() throws {
        let d = try Daemon(config: "[audit]\ncheckpoint_seconds = 3600\ncheckpoint_events = 100000\n")
        try d.start()
        for i in 0..<3 { _ = try d.coffer(["secret", "put", "ops/s\(i)"], stdin: Array("v".utf8)) }
        var r = try run(Bins.coffer, ["audit", "verify", "--db", d.dbPath, "--pubkey", d.dir + "/state/audit.pub"])
        #expect(r.status == 10 && r.out.hasPrefix("UNSIGNED TAIL") && !r.out.contains("BAD"), "\(r.status) \(r.out) \(r.stderr)")
        d.stop()
        r = try run(Bins.coffer, ["audit", "verify", "--db", d.dbPath, "--pubkey", d.dir + "/state/audit.pub"])
        #expect(r.status == 0 && r.out.hasPrefix("OK"), "\(r.out)")
    }

    /// Smaller frictions: an empty value from a forgotten pipe, an export over an
    /// existing archive, `--since 1h`.
    @Test func smallFrictions() throws {
        let d = try Daemon()
        try d.start()
        var r = try d.coffer(["secret", "put", "ops/empty"])
        #expect(r.status == 7 && r.stderr.contains("the value is empty") && r.stderr.contains("--allow-empty"), "\(r.stderr)")
        #expect(try d.coffer(["secret", "get", "ops/empty"]).status == 4, "nothing was stored")
        #expect(try d.coffer(["secret", "put", "ops/empty", "--allow-empty"]).status == 0)
        let archive = d.dir + "/archive.jsonl"
        try "keep me\n".write(toFile: archive, atomically: true, encoding: .utf8)
        r = try d.coffer(["audit", "export", "--output", archive])
        #expect(r.status == 7 && r.stderr.contains("must not exist"), "\(r.stderr)")
        #expect(try String(contentsOfFile: archive, encoding: .utf8) == "keep me\n")
        r = try d.coffer(["audit", "search", "--since", "1h", "--format", "json"])
        #expect(r.status == 0 && r.out.contains("ops/empty"), "\(r.status) \(r.stderr)")
        r = try d.coffer(["audit", "search", "--since", "1x"])
        #expect(r.status != 0)
    }

    /// Another user's `.coffer/` above the working directory is passed over (anyone
    /// may plant /tmp/.coffer); in the working directory itself it is refused loudly.
    @Test func aPlantedSocketAboveIsPassedOverAndRefusedHere() throws {
        var template = Array("/tmp/cfplant.XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestError.failed("mkdtemp") }
        let dir = String(cString: p)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        chmod(dir, 0o777)
        let mallory = TestUser.nonAdmin
        let (exe, args) = mallory.wrap("/usr/bin/python3", ["-c", "import os, socket; os.mkdir('\(dir)/.coffer', 0o755); socket.socket(socket.AF_UNIX).bind('\(dir)/.coffer/coffer.sock')"])
        #expect(try run(exe, args).status == 0)
        try FileManager.default.createDirectory(atPath: dir + "/work", withIntermediateDirectories: true)
        let below = try run(Bins.coffer, ["status"], cwd: dir + "/work")
        #expect(below.status == 3 && below.stderr.contains("/run/coffer/coffer.sock") && !below.stderr.contains("refusing"), "\(below.stderr)")
        let here = try run(Bins.coffer, ["status"], cwd: dir)
        #expect(here.status == 7 && here.stderr.contains("refusing to use the socket"), "\(here.stderr)")
    }

    /// `cofferd init` names why it cannot read the config.
    @Test func aConfigThatCannotBeReadSaysWhy() throws {
        let r = try run(Bins.cofferd, ["init", "--config", "/nonexistent/cofferd.toml"])
        #expect(r.status != 0 && r.stderr.contains("cannot read the config file /nonexistent/cofferd.toml: it does not exist"), "\(r.stderr)")
    }
}
