import Foundation
import CofferClient
import Testing

/// The keyring of many keys, the sealed start and the root-key change, against the
/// real daemon: a second data key is added and both open; a daemon started sealed
/// answers health/status, refuses everything else with 503 `sealed`, and is unsealed
/// by an admin with the key file; tokens and secrets survive both key changes.
@Suite(.serialized) struct KeyringTests {
    @Test func aSecondDataKeyIsAddedAndBothOpen() throws {
        let d = try Daemon(sqlite: true)
        try d.start()
        defer { d.stop() }
        #expect(try d.coffer(["secret", "put", "k/one"], stdin: Array("first".utf8)).status == 0)
        var keys = json(try d.curl("GET", "/v1/sys/keys").1)
        var list = keys["keys"] as? [[String: Any]] ?? []
        #expect(Set(list.compactMap { $0["purpose"] as? String }) == ["data", "token-hash", "audit-mac"], "\(keys)")
        let firstData = try #require(list.first { $0["purpose"] as? String == "data" })
        #expect(firstData["state"] as? String == "active" && firstData["versions"] as? Int == 1)
        // nothing of a key's material is ever shown
        #expect(!(try d.curl("GET", "/v1/sys/keys").1.contains("sealed")))

        let rotated = try d.coffer(["keys", "rotate", "--format", "json"])
        #expect(rotated.status == 0, "\(rotated.stderr)")
        let newID = try #require(json(rotated.out)["id"] as? String)
        #expect(try d.coffer(["secret", "put", "k/two"], stdin: Array("second".utf8)).status == 0)
        #expect(try d.coffer(["secret", "put", "k/one"], stdin: Array("first-v2".utf8)).status == 0)
        keys = json(try d.curl("GET", "/v1/sys/keys").1)
        list = keys["keys"] as? [[String: Any]] ?? []
        let data = list.filter { $0["purpose"] as? String == "data" }
        #expect(data.count == 2)
        #expect(data.first { $0["id"] as? String == firstData["id"] as? String }?["state"] as? String == "decrypt-only")
        #expect(data.first { $0["id"] as? String == newID }?["state"] as? String == "active")
        #expect(data.first { $0["id"] as? String == newID }?["versions"] as? Int == 2)
        // the versions under each key open
        #expect(try d.coffer(["secret", "get", "k/one", "--version", "1"]).out == "first")
        #expect(try d.coffer(["secret", "get", "k/one"]).out == "first-v2")
        #expect(try d.coffer(["secret", "get", "k/two"]).out == "second")
        #expect(try sqlite(d.dbPath, "SELECT count(DISTINCT key_id) FROM secret_version;") == "2")
        // status names the active data key; a non-admin may neither list nor rotate
        #expect(json(try d.curl("GET", "/v1/sys/status").1)["active_key_id"] as? String == newID)
        let (code, body) = try d.curl("POST", "/v1/sys/keys/rotate", as: .nonAdmin)
        #expect(code == 403 && errorCode(body) == "permission_denied", "\(code) \(body)")
        #expect(try d.curl("GET", "/v1/sys/keys", as: .nonAdmin).0 == 403)
        // the rotation is in the trail, and survives a restart
        let events = json(try d.curl("GET", "/v1/audit/events?action=key_rotate").1)["events"] as? [[String: Any]] ?? []
        #expect(events.map { "\($0["decision"] ?? "")/\($0["status"] ?? "")" } == ["allow/200", "deny/403"], "\(events)")
        d.stop()
        try d.start()
        #expect(try d.coffer(["secret", "get", "k/one", "--version", "1"]).out == "first")
        #expect(try d.coffer(["secret", "get", "k/two"]).out == "second")
    }

    @Test func startsSealedAndAnAdminUnsealsWithTheKeyFile() throws {
        let d = try Daemon()
        try d.start()
        #expect(try d.coffer(["secret", "put", "s/x"], stdin: Array("sealed-away".utf8)).status == 0)
        let token = try #require(json(try d.coffer(["token", "create", "--role", "admin", "--ttl", "1h", "--format", "json"]).out)["token"] as? String)
        d.stop()
        // an unrelated key, to try a wrong unseal with
        let wrongKey = d.dir + "/wrong.key"
        let other = try Daemon()
        try FileManager.default.copyItem(atPath: other.keyPath, toPath: wrongKey)
        chmod(wrongKey, 0o400)

        try d.startSealed()
        let health = json(try d.curl("GET", "/v1/sys/health").1)
        #expect(health["sealed"] as? Bool == true && health["unlocked"] as? Bool == false && health["status"] as? String == "sealed", "\(health)")
        let status = json(try d.curl("GET", "/v1/sys/status").1)
        #expect(status["sealed"] as? Bool == true && status["secrets"] == nil, "\(status)")
        var (code, body) = try d.curl("GET", "/v1/secrets/data/s/x")
        #expect(code == 503 && errorCode(body) == "sealed", "\(code) \(body)")
        var r = try d.coffer(["secret", "get", "s/x"])
        #expect(r.status == 8 && r.stderr.contains("coffer: error:") && r.stderr.contains("sealed"), "\(r.status) \(r.stderr)")
        // only an admin, by uid (a token cannot be checked yet), with the right key
        (code, body) = try d.curl("POST", "/v1/sys/unseal", as: .nonAdmin)
        #expect(code == 403, "\(code) \(body)")
        (code, body) = try d.curl("POST", "/v1/sys/unseal", headers: ["X-Coffer-Token: \(token)"])
        #expect(code == 503 && errorCode(body) == "sealed", "\(code) \(body)")
        r = try d.coffer(["unseal", "--key-file", wrongKey])
        #expect(r.status != 0 && r.stderr.contains("does not unlock"), "\(r.stderr)")
        #expect(!r.stderr.contains("coffer-root-key-v1:") && !d.log.contains("coffer-root-key-v1:"))
        (code, body) = try d.curl("POST", "/v1/sys/unseal", body: "{\"key\": \"not a key\"}")
        #expect(code == 422, "\(code) \(body)")
        (code, body) = try d.curl("POST", "/v1/sys/unseal", body: "{\"key\": 1, \"extra\": 2}")
        #expect(code >= 400 && code < 500, "\(code) \(body)")
        #expect(json(try d.curl("GET", "/v1/sys/health").1)["sealed"] as? Bool == true)
        // the right key, sent over the socket
        r = try d.coffer(["unseal", "--key-file", d.keyPath])
        #expect(r.status == 0 && r.out.contains("unsealed"), "\(r.out) \(r.stderr)")
        #expect(json(try d.curl("GET", "/v1/sys/health").1)["sealed"] as? Bool == false)
        #expect(try d.coffer(["secret", "get", "s/x"]).out == "sealed-away")
        (code, body) = try d.curl("GET", "/v1/secrets/data/s/x", headers: ["X-Coffer-Token: \(token)"])
        #expect(code == 200 && body.contains("sealed-away"))
        r = try d.coffer(["unseal"])
        #expect(r.status == 0 && r.out.contains("already unsealed"), "\(r.out)")
        // the unseal is in the trail, by the admin's uid, and the trail verifies
        let events = json(try d.curl("GET", "/v1/audit/events?action=unseal").1)["events"] as? [[String: Any]] ?? []
        let done = events.filter { $0["status"] as? Int == 200 }
        #expect(done.count == 2 && done.allSatisfy { ($0["peer"] as? [String: Any])?["uid"] as? Int == Int(getuid()) }, "\(events)")
        // the attempts made while sealed were kept and appended at unseal: the stranger's 403 too
        #expect(events.contains { $0["status"] as? Int == 403 && ($0["peer"] as? [String: Any])?["uid"] as? Int == Int(TestUser.nonAdmin.uid) }, "\(events)")
        #expect(events.filter { $0["status"] as? Int == 422 }.count >= 2, "\(events)")
        #expect(try d.coffer(["audit", "verify"]).status == 0)
        d.stop()

        // the configured key file, with no key in the request (keys.start_sealed in the config)
        var config = try String(contentsOfFile: d.configPath, encoding: .utf8)
        config = config.replacingOccurrences(of: "[keys]\n", with: "[keys]\nstart_sealed = true\n")
        try config.write(toFile: d.configPath, atomically: true, encoding: .utf8)
        try d.start()
        #expect(json(try d.curl("GET", "/v1/sys/health").1)["sealed"] as? Bool == true)
        (code, body) = try d.curl("POST", "/v1/sys/unseal")
        #expect(code == 200 && json(body)["unsealed_now"] as? Bool == true, "\(code) \(body)")
        #expect(try d.coffer(["secret", "get", "s/x"]).out == "sealed-away")
    }

    @Test func aRootKeyChangeKeepsSecretsAndTokens() throws {
        let d = try Daemon()
        try d.start()
        #expect(try d.coffer(["secret", "put", "r/db"], stdin: Array("v-one".utf8)).status == 0)
        _ = try d.coffer(["keys", "rotate"])
        #expect(try d.coffer(["secret", "put", "r/db"], stdin: Array("v-two".utf8)).status == 0)
        let token = try #require(json(try d.coffer(["token", "create", "--role", "admin", "--ttl", "1h", "--format", "json"]).out)["token"] as? String)
        let rootBefore = json(try d.curl("GET", "/v1/sys/keys").1)["root_key_id"] as? String
        let caBefore = try d.curl("GET", "/v1/ssh/ca").1
        let jwksBefore = try d.curl("GET", "/v1/jwks").1
        // refused while the daemon runs
        let newKey = d.dir + "/keys/root2.key"
        var r = try run(Bins.cofferd, ["rekey", "--config", d.configPath, "--new-key-file", newKey])
        #expect(r.status != 0 && r.stderr.contains("another cofferd"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: newKey))
        d.stop()
        // a key where serve would refuse it (a directory another user owns): nothing is re-sealed
        let untrusted = d.dir + "/theirs"
        try FileManager.default.createDirectory(atPath: untrusted, withIntermediateDirectories: false)
        chown(untrusted, TestUser.nonAdmin.uid, TestUser.nonAdmin.gid)
        r = try run(Bins.cofferd, ["rekey", "--config", d.configPath, "--new-key-file", untrusted + "/k.key"])
        #expect(r.status != 0 && r.stderr.contains("owned by uid"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: untrusted + "/k.key"))
        r = try run(Bins.cofferd, ["rekey", "--config", d.configPath, "--new-key-file", newKey])
        #expect(r.status == 0 && r.out.contains("no longer opens the database"), "\(r.stderr)")
        // the old key no longer opens the database
        let old = try d.launch()
        #expect(try d.waitForExit() != 0)
        #expect(old.terminationStatus != 0 && d.log.contains("does not unlock"))
        var config = try String(contentsOfFile: d.configPath, encoding: .utf8)
        config = config.replacingOccurrences(of: d.keyPath, with: newKey)
        try config.write(toFile: d.configPath, atomically: true, encoding: .utf8)
        try d.start()
        let keys = json(try d.curl("GET", "/v1/sys/keys").1)
        #expect(keys["root_key_id"] as? String != rootBefore)
        #expect(try d.coffer(["secret", "get", "r/db", "--version", "1"]).out == "v-one")
        #expect(try d.coffer(["secret", "get", "r/db"]).out == "v-two")
        let (code, body) = try d.curl("GET", "/v1/secrets/data/r/db", headers: ["X-Coffer-Token: \(token)"])
        #expect(code == 200 && body.contains("v-two"), "\(code) \(body)")
        // the audit trail still verifies and is still signed by the same key
        #expect(try d.coffer(["audit", "verify"]).status == 0)
        // the SSH CA and the JWT key were re-sealed, not replaced: sshd and services keep trusting them
        #expect(try d.curl("GET", "/v1/ssh/ca").1 == caBefore)
        #expect(try d.curl("GET", "/v1/jwks").1 == jwksBefore)
    }
}

extension Daemon {
    /// Starts `cofferd serve --sealed` and waits until health answers.
    func startSealed() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Bins.cofferd)
        p.arguments = ["serve", "--config", configPath, "--sealed"]
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        h.seekToEndOfFile()
        p.standardOutput = h
        p.standardError = h
        p.standardInput = FileHandle.nullDevice
        try p.run()
        adopt(p)
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if (try? CofferClient(socketPath: socket).health()) != nil { return }
            usleep(20_000)
        }
        throw TestError.failed("cofferd did not answer: \(log)")
    }
}
