import CofferClient
import Foundation
import Testing

/// What an outside attack on the first round of fixes found, each reproduced here:
/// a shared use budget, an erased trail taken for a fresh one, an empty database
/// served, a swapped socket, a policy in a writable directory, a writer's version
/// oracle, and lenient numbers.
@Suite(.serialized) struct AttackRegressionTests {
    /// A tree of tokens never does more than its root's --uses.
    @Test func usesAreSharedByTheWholeTree() throws {
        let d = try NarrowingFixture.daemon()
        let (_, parent, _) = try NarrowingFixture.mint(d, #"{"roles":["admin"],"uses":3,"ttl":"5m"}"#)
        let (code, child, _) = try NarrowingFixture.mint(d, #"{"roles":["ci-build"],"ttl":"1m"}"#, token: parent)  // use 1
        #expect(code == 200)
        var ok = 0
        for t in [child, child, child, parent, parent, parent] {
            if try d.curl("GET", "/v1/secrets/data/ci/app/db", headers: ["X-Coffer-Token: \(t)"]).0 == 200 { ok += 1 }
        }
        #expect(ok == 2, "a 3-use token and its child did \(ok + 1) things")
    }

    /// Emptying every audit table (the signing key too) and deleting the anchor is
    /// not a fresh install; nor is an empty database file.
    @Test func anErasedTrailOrAnEmptyDatabaseIsNotAFreshStart() throws {
        let d = try Daemon()
        try d.start()
        _ = try d.coffer(["secret", "put", "e/x"], stdin: Array("v".utf8))
        d.stop()
        _ = try sqlite(d.dbPath, "DELETE FROM audit_event; DELETE FROM audit_checkpoint; DELETE FROM audit_key;")
        try FileManager.default.removeItem(atPath: d.dir + "/state/audit.anchor")
        _ = try d.launch()
        #expect(try d.waitForExit() != 0)
        #expect(d.log.contains("audit signing key is missing") || d.log.contains("anchor"), "\(d.log)")
        // an empty file where the database was
        for f in ["coffer.db", "coffer.db-wal", "coffer.db-shm"] { try? FileManager.default.removeItem(atPath: d.dir + "/state/" + f) }
        FileManager.default.createFile(atPath: d.dbPath, contents: Data(), attributes: [.posixPermissions: 0o600])
        _ = try d.launch()
        #expect(try d.waitForExit() != 0)
        #expect(d.log.contains("not an initialised Coffer database"), "\(d.log)")
        #expect(fileBytes(d.dbPath).isEmpty, "serve initialised it")
    }

    /// The CLI checks who serves a discovered socket, not only who owns the file.
    @Test func aDiscoveredSocketServedByAnotherUidIsRefused() throws {
        let user = TestUser.nonAdmin
        let dir = NSTemporaryDirectory() + "coffer-peer-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir + "/.coffer", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        chown(dir + "/.coffer", user.uid, user.gid)
        let sock = dir + "/.coffer/coffer.sock"
        let capture = dir + "/captured"
        FileManager.default.createFile(atPath: capture, contents: nil, attributes: [.posixPermissions: 0o666])
        let (exe, args) = user.wrap("/usr/bin/socat", ["UNIX-LISTEN:\(sock)", "OPEN:\(capture),append"])
        let listener = Process()
        listener.executableURL = URL(fileURLWithPath: exe)
        listener.arguments = args
        listener.standardInput = FileHandle.nullDevice
        listener.standardOutput = FileHandle.nullDevice
        listener.standardError = FileHandle.nullDevice
        try listener.run()
        defer {
            kill(listener.processIdentifier, SIGKILL)
            listener.waitUntilExit()
        }
        for _ in 0..<100 where !FileManager.default.fileExists(atPath: sock) { usleep(20_000) }
        // make both the socket file and its directory look like root's
        chown(sock, 0, 0)
        chown(dir + "/.coffer", 0, 0)
        let r = try run(Bins.coffer, ["token", "lookup"], env: ["COFFER_TOKEN": "cfr_" + String(repeating: "A", count: 43)], cwd: dir, timeout: 15)
        #expect(r.status != 0)
        #expect(r.stderr.contains("coffer: error:") && r.stderr.contains("uid \(user.uid)"), "\(r.stderr)")
        usleep(200_000)
        #expect(fileBytes(capture).isEmpty, "the planted server received \(fileBytes(capture).count) bytes")
    }

    /// A policy file in a directory others can write is refused (it could be swapped
    /// for a symlink to another policy).
    @Test func filesInWritableDirectoriesAreRefused() throws {
        let d = try Daemon()
        let etc = d.dir + "/etc"
        try FileManager.default.createDirectory(atPath: etc, withIntermediateDirectories: true)
        chmod(etc, 0o777)
        try NarrowingFixture.policy.write(toFile: etc + "/policy.toml", atomically: true, encoding: .utf8)
        let text = try String(contentsOfFile: d.configPath, encoding: .utf8).replacingOccurrences(of: d.policyPath, with: etc + "/policy.toml")
        try text.write(toFile: d.configPath, atomically: true, encoding: .utf8)
        _ = try d.launch()
        #expect(try d.waitForExit() != 0)
        #expect(d.log.contains("others can write"), "\(d.log)")
        chmod(etc, 0o755)
        try d.start()
    }

    /// A write-only caller's answer does not say which version it wrote.
    @Test func aWriterLearnsNoVersion() throws {
        let d = try NarrowingFixture.daemon()
        let (code, body) = try d.curl("PUT", "/v1/secrets/data/w/x", body: #"{"value":"again"}"#, as: NarrowingFixture.writer)
        #expect(code == 200 && json(body)["version"] == nil && json(body)["metadata"] == nil, "\(body)")
        let root = try d.curl("PUT", "/v1/secrets/data/w/x", body: #"{"value":"root"}"#)
        #expect(json(root.1)["version"] as? Int == 3, "\(root.1)")
    }

    /// Numbers and durations are read strictly.
    @Test func numbersAreStrict() throws {
        let d = try Daemon()
        try d.start()
        _ = try d.coffer(["secret", "put", "n/x"], stdin: Array("v".utf8))
        for q in ["/v1/secrets/data/n/x?version=+1", "/v1/secrets/list/n?limit=+1", "/v1/audit/events?after=+1", "/v1/audit/events?uid=+0",
                  "/v1/audit/events?since=2026-02-30T00:00:00Z", "/v1/audit/events?since=2026-11-29T00:00:00+99:99",
                  "/v1/audit/events?uid=4294967295"] {
            #expect(try d.curl("GET", q).0 == 422, "\(q)")
        }
        #expect(try d.curl("GET", "/v1/audit/events?since=2026-11-29T00:00:00Z").0 == 200)
        for body in [#"{"roles":["admin"],"ttl":"1h1h"}"#, #"{"roles":["admin"],"ttl":"30m2h"}"#, #"{"roles":["admin","admin"]}"#,
                     #"{"roles":["admin"],"bind_uid":4294967295}"#] {
            #expect(try d.curl("POST", "/v1/tokens", body: body).0 == 422, "\(body)")
        }
        #expect(try d.curl("POST", "/v1/tokens", body: #"{"roles":["admin"],"ttl":"2h30m"}"#).0 == 200)
    }
}
