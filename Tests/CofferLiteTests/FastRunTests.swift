import Testing
@testable import CofferLite

@Suite struct FastRunTests {
    @Test func takesTheDocumentedGrammar() throws {
        let p = try #require(FastRun.parse(["run", "--secret", "a/b", "--secret=c/d=n:mode=0440", "--template", "t:x", "--env", "V=a/b",
                                            "--dir-env", "D", "--env-file", "e", "--credentials", "--ttl", "5m", "--size=2m", "--mount", "private",
                                            "--dir", "/s", "--network", "none", "--allow-swap", "--keep-children", "--socket", "/x.sock",
                                            "--format", "json", "--token-file", "/t", "--registry-auth", "r:5000=a/b", "--", "cmd", "--secret", "--", "x"]))
        #expect(!p.build)
        #expect(p.options.secrets == ["a/b", "c/d=n:mode=0440"])
        #expect(p.options.templates == ["t:x"] && p.options.env == ["V=a/b"] && p.options.dirEnv == ["D"] && p.options.envFile == "e")
        #expect(p.options.registryAuth == ["r:5000=a/b"])
        #expect(p.options.credentials && p.options.allowSwap && p.options.keepChildren && !p.options.dryRun)
        #expect(p.options.ttl == "5m" && p.options.size == "2m" && p.options.mount == "private" && p.options.dir == "/s" && p.options.network == "none")
        #expect(p.global == ClientSettings(socket: "/x.sock", format: .json, tokenFile: "/t"))
        // what follows -- is the command's, options or not
        #expect(p.options.command == ["cmd", "--secret", "--", "x"])
        let b = try #require(FastRun.parse(["build", "--secret", "a/b", "--", "buildah", "bud", "."]))
        #expect(b.build && b.options.command == ["buildah", "bud", "."])
        // defaults as RunOptions has them
        let d = try #require(FastRun.parse(["run", "--", "x"]))
        #expect(d.options == { var s = RunSettings(); s.command = ["x"]; return s }())
    }

    /// What it does not know goes to ArgumentParser, which parses and reports.
    @Test func leavesEverythingElseToArgumentParser() {
        let declined: [[String]] = [
            [], ["secret", "get", "a"], ["run"], ["run", "list"], ["run", "--help"], ["run", "-h"], ["build", "--help"],
            ["run", "--secret", "a"],                        // no --
            ["run", "--secret"],                             // no value
            ["run", "--bogus", "--", "x"],                   // unknown option
            ["run", "--ttl", "1m", "--ttl", "2m", "--", "x"], // a single option twice
            ["run", "--dry-run", "--dry-run", "--", "x"],
            ["run", "--credentials=yes", "--", "x"],          // a flag with a value
            ["run", "--ttl", "-5", "--", "x"],                // a value like an option
            ["run", "--secret=-x", "--", "x"],
            ["run", "--format", "yaml", "--", "x"],
            ["run", "positional", "--", "x"],
            ["run", "-s", "a", "--", "x"],
            ["run", "--ttl=", "--", "x"],                     // an empty attached value: ArgumentParser says it is missing
        ]
        for args in declined { #expect(FastRun.parse(args) == nil, "\(args)") }
    }

    @Test func hoistsGlobalOptionsBehindTheSubcommandButBeforeTheCommand() {
        #expect(FastRun.hoistGlobalOptions(["--socket", "/s", "--format=json", "run", "--secret", "a", "--", "x", "--socket", "y"])
                == ["run", "--secret", "a", "--socket", "/s", "--format=json", "--", "x", "--socket", "y"])
        #expect(FastRun.hoistGlobalOptions(["--format", "json", "secret", "get", "a"]) == ["secret", "get", "a", "--format", "json"])
        #expect(FastRun.hoistGlobalOptions(["--socket"]) == ["--socket"])
    }

    @Test func secretGetTakesPathVersionAndConnectionOptionsOnly() throws {
        let p = try #require(FastGet.parse(["secret", "get", "--version=3", "a/b", "--socket", "/s", "--format", "text"]))
        #expect(p == FastGet.Parsed(global: ClientSettings(socket: "/s"), path: "a/b", version: 3))
        for args in [["secret", "get"], ["secret", "get", "a", "b"], ["secret", "get", "a", "--format", "json"], ["secret", "get", "--help"],
                     ["secret", "get", "a", "--version", "x"], ["secret", "get", "a", "--version", "-1"], ["secret", "get", "--", "a"],
                     ["secret", "get", "a", "--version", "1", "--version", "2"], ["secret", "list", "a"], ["secret", "get", "-a"]] {
            #expect(FastGet.parse(args) == nil, "\(args)")
        }
    }
}
