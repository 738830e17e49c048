import Foundation
import Testing

/// Every CLI command against a real daemon, with exit codes (README "CLI exit codes").
@Suite(.serialized) struct CLITests {
    /// `coffer secret get` is answered by the lean front (FastGet) unless it is a form
    /// the front leaves to coffer-cli; both must act alike (COFFER_CLI_FAST=0 forces
    /// ArgumentParser's path).
    @Test func theFastSecretGetAgreesWithArgumentParser() throws {
        let d = try Daemon()
        try d.start()
        let binary: [UInt8] = [0, 1, 2, 0xff, 0x0a, 0x80]
        #expect(try d.coffer(["secret", "put", "ci/app/db"], stdin: Array("first".utf8)).status == 0)
        #expect(try d.coffer(["secret", "put", "ci/app/db"], stdin: binary).status == 0)
        let cases: [[String]] = [
            ["secret", "get", "ci/app/db"], ["secret", "get", "ci/app/db", "--version", "1"], ["secret", "get", "--version=1", "ci/app/db"],
            ["--socket", d.socket, "secret", "get", "ci/app/db"], ["secret", "get", "ci/app/db", "--format", "text"],
            ["secret", "get", "ci/app/none"], ["secret", "get", "ci/app/db", "--version", "9"], ["secret", "get", "ci/app/db", "--version", "0"],
            ["secret", "get", "ci/../db"], ["secret", "get", "/abs"], ["secret", "get", "ci/app/db", "--version", "x"],
            ["secret", "get", "ci/app/db", "--version", "-1"], ["secret", "get", "ci/app/db", "--format", "json"], ["secret", "get"],
            ["secret", "get", "a", "b"], ["secret", "get", "--help"], ["secret", "get", "ci/app/db", "--token-file", d.dir + "/no-such-file"],
            ["secret", "get", "ci/app/db", "--socket", d.dir + "/no.sock"],
        ]
        for args in cases {
            let fast = try run(Bins.coffer, args, env: ["COFFER_SOCKET": d.socket])
            let slow = try run(Bins.coffer, args, env: ["COFFER_SOCKET": d.socket, "COFFER_CLI_FAST": "0"])
            #expect(fast.status == slow.status, "\(args): \(fast.status) vs \(slow.status): \(fast.stderr) | \(slow.stderr)")
            #expect(fast.stdout == slow.stdout, "\(args)")
            #expect(fast.stderr == slow.stderr, "\(args)")
        }
        #expect(try run(Bins.coffer, cases[0], env: ["COFFER_SOCKET": d.socket]).stdout == binary)
        #expect(try run(Bins.coffer, cases[2], env: ["COFFER_SOCKET": d.socket]).stdout == Array("first".utf8))
        #expect(try run(Bins.coffer, cases[5], env: ["COFFER_SOCKET": d.socket]).status == 4)
        #expect(try run(Bins.coffer, cases[7], env: ["COFFER_SOCKET": d.socket]).status == 7)
        #expect(try run(Bins.coffer, cases[17], env: ["COFFER_SOCKET": d.socket]).status == 3)
    }

    @Test func everyCommand() throws {
        let d = try Daemon()
        try d.start()

        // put from stdin and from --file; get raw and by version
        var r = try d.coffer(["secret", "put", "ci/app/db"], stdin: Array("first".utf8))
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.out.contains("ci/app/db: version 1 written"))
        let file = d.dir + "/value.bin"
        let binary: [UInt8] = [0, 1, 2, 0xff, 0x0a, 0x80]
        FileManager.default.createFile(atPath: file, contents: Data(binary))
        r = try d.coffer(["secret", "put", "ci/app/db", "--file", file])
        #expect(r.status == 0 && r.out.contains("version 2"), "\(r.stderr)")
        r = try d.coffer(["secret", "get", "ci/app/db"])
        #expect(r.status == 0 && r.stdout == binary)
        r = try d.coffer(["secret", "get", "ci/app/db", "--version", "1"])
        #expect(r.stdout == Array("first".utf8))

        // --format json carries value, base64 and metadata
        r = try d.coffer(["--format", "json", "secret", "get", "ci/app/db", "--version", "1"])
        let j = json(r.out)
        #expect(j["value"] as? String == "first")
        #expect(j["value_base64"] as? String == Data("first".utf8).base64EncodedString())
        #expect((j["metadata"] as? [String: Any])?["version"] as? Int == 1)
        r = try d.coffer(["secret", "get", "ci/app/db", "--format", "json"])
        #expect(json(r.out)["value"] == nil, "binary values have no text form")
        #expect(json(r.out)["value_base64"] as? String == Data(binary).base64EncodedString())

        // check-and-set
        r = try d.coffer(["secret", "put", "ci/app/db", "--cas", "1"], stdin: Array("x".utf8))
        #expect(r.status == 6)
        #expect(r.stderr.hasPrefix("coffer: error: check-and-set failed"))
        #expect(r.stderr.contains("coffer: hint:"))
        r = try d.coffer(["secret", "put", "ci/app/db", "--cas", "2"], stdin: Array("third".utf8))
        #expect(r.status == 0)

        // list with folders, prefix and paging
        _ = try d.coffer(["secret", "put", "ci/web/tls"], stdin: Array("t".utf8))
        _ = try d.coffer(["secret", "put", "top"], stdin: Array("t".utf8))
        r = try d.coffer(["secret", "list"])
        #expect(r.out == "ci/\ntop\n")
        r = try d.coffer(["secret", "list", "ci"])
        #expect(r.out == "app/\nweb/\n")
        r = try d.coffer(["secret", "list", "ci/app/"])
        #expect(r.out == "db\n")
        r = try d.coffer(["secret", "list", "--limit", "1", "--format", "json"])
        #expect(json(r.out)["keys"] as? [String] == ["ci/"])
        #expect(json(r.out)["next_after"] as? String == "ci/")

        // versions, delete, undelete, destroy
        r = try d.coffer(["secret", "versions", "ci/app/db"])
        #expect(r.status == 0)
        #expect(r.out.contains("current version 3"))
        #expect(r.out.split(separator: "\n").count == 5)  // header lines + 3 versions
        r = try d.coffer(["secret", "delete", "ci/app/db"])
        #expect(r.status == 0 && r.out.contains("deleted"))
        r = try d.coffer(["secret", "get", "ci/app/db"])
        #expect(r.status == 4)
        #expect(r.stderr.contains("coffer: error: version 3 of ci/app/db is deleted"))
        #expect(r.stderr.contains("coffer: hint: coffer secret undelete ci/app/db --versions 3"))
        r = try d.coffer(["secret", "undelete", "ci/app/db", "--versions", "3"])
        #expect(r.status == 0)
        #expect(try d.coffer(["secret", "get", "ci/app/db"]).stdout == Array("third".utf8))
        r = try d.coffer(["secret", "delete", "ci/app/db", "--versions", "1,2"])
        let states = try d.coffer(["--format", "json", "secret", "versions", "ci/app/db"])
        let vs = (json(states.out)["versions"] as? [[String: Any]])?.map { $0["state"] as? String }
        #expect(vs == ["deleted", "deleted", "active"])
        r = try d.coffer(["secret", "destroy", "ci/app/db", "--versions", "2"])
        #expect(r.status == 0 && r.out.contains("destroyed"))
        r = try d.coffer(["secret", "undelete", "ci/app/db", "--versions", "2"])
        #expect(try d.coffer(["secret", "get", "ci/app/db", "--version", "2"]).status == 4)
        r = try d.coffer(["secret", "destroy", "ci/app/db"])
        #expect(try d.coffer(["secret", "get", "ci/app/db"]).status == 4)

        // status
        r = try d.coffer(["status"])
        #expect(r.status == 0)
        #expect(r.out.contains("unlocked:      true"))
        #expect(r.out.contains("access:        status: holds role admin"))
        r = try d.coffer(["status", "--format", "json"])
        #expect(json(r.out)["unlocked"] as? Bool == true)
        #expect(json(r.out)["secrets"] as? Int == 3)

        // input errors: local validation, server validation, not found, usage
        r = try d.coffer(["secret", "get", "a/../b"])
        #expect(r.status == 7 && r.stderr.hasPrefix("coffer: error:"))
        r = try d.coffer(["secret", "get", "nope"])
        #expect(r.status == 4 && r.stderr.hasPrefix("coffer: error: no secret at nope"))
        r = try d.coffer(["secret", "delete", "top", "--versions", "7"])
        #expect(r.status == 4)
        r = try d.coffer(["secret", "delete", "top", "--versions", "x"])
        #expect(r.status == 64, "usage errors exit 64")
        r = try d.coffer(["secret", "put", "big"], stdin: [UInt8](repeating: 65, count: 70_000))
        #expect(r.status == 7 && r.stderr.contains("limit is 65536"))
        r = try d.coffer(["secret", "get"])
        #expect(r.status == 64)
    }

    @Test func cannotConnectGivesAHint() throws {
        let r = try run(Bins.coffer, ["status", "--socket", "/tmp/definitely-not-a-coffer.sock"])
        #expect(r.status == 3)
        #expect(r.stderr.hasPrefix("coffer: error: cannot connect to /tmp/definitely-not-a-coffer.sock"))
        #expect(r.stderr.contains("coffer: hint: is cofferd running?"))
    }
}
