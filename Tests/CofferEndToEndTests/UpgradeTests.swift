import Foundation
import Testing

/// A database written by the previous release (Fixtures/main-0.1) opens, reads
/// everything, keeps its tokens valid, and its audit trail still verifies after the
/// upgrade added MACs and the head anchor.
@Suite(.serialized) struct UpgradeTests {
    static let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/main-0.1").path

    @Test func aDatabaseOfTheLastReleaseUpgrades() throws {
        let d = try Daemon(sqlite: true, config: "[audit]\ncheckpoint_events = 5", initialise: false)
        let state = d.dir + "/state"
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        for f in ["coffer.db", "audit.pub"] {
            try FileManager.default.copyItem(atPath: Self.fixture + "/" + f, toPath: state + "/" + f)
        }
        chmod(state + "/coffer.db", 0o600)
        try FileManager.default.createDirectory(atPath: (d.keyPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        try? FileManager.default.removeItem(atPath: d.keyPath)
        try FileManager.default.copyItem(atPath: Self.fixture + "/root.key", toPath: d.keyPath)
        chmod(d.keyPath, 0o400)
        try? FileManager.default.removeItem(atPath: d.policyPath)
        try FileManager.default.copyItem(atPath: Self.fixture + "/policy.toml", toPath: d.policyPath)
        try d.start()
        #expect(try d.coffer(["secret", "get", "ci/app/db"]).out == "v2-app")
        #expect(try d.coffer(["secret", "get", "ci/app/db", "--version", "1"]).out == "v1-app")
        #expect(try d.coffer(["secret", "get", "other/x"]).out == "other")
        #expect(try d.coffer(["secret", "get", "other/deleted"]).status != 0)
        // tokens minted before the upgrade still map to their records (the token-hash key is unchanged)
        let token = try String(contentsOfFile: Self.fixture + "/ci.token", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let (code, body) = try d.curl("GET", "/v1/secrets/data/ci/app/db", headers: ["X-Coffer-Token: \(token)"])
        let expires = try #require(ISO8601DateFormatter().date(from: "2026-12-29T12:23:00Z"))
        if Date() < expires {
            #expect(code == 200 && body.contains("v2-app"), "\(code) \(body)")
        } else {
            #expect(errorCode(body) == "token_expired", "\(body)")
        }
        // the old trail (9 events, no MACs) verifies, and so does what follows it
        var v = try d.coffer(["audit", "verify"])
        #expect(v.status == 0, "\(v.out)")
        for i in 0..<7 { _ = try d.coffer(["secret", "put", "new/s\(i)"], stdin: Array("n\(i)".utf8)) }
        v = try d.coffer(["audit", "verify"])
        #expect(v.status == 0, "\(v.out)")
        #expect(try sqlite(d.dbPath, "SELECT count(*) FROM audit_event WHERE seq <= 9 AND mac IS NULL;") == "9")
        #expect(try sqlite(d.dbPath, "SELECT count(*) FROM audit_event WHERE seq > 9 AND mac IS NULL;") == "0")
        d.stop()
        let offline = try run(Bins.coffer, ["audit", "verify", "--db", d.dbPath, "--pubkey", state + "/audit.pub"])
        #expect(offline.status == 0, "\(offline.out) \(offline.stderr)")
        try d.start()
        #expect(try d.coffer(["secret", "get", "new/s3"]).out == "n3")
        #expect(try d.coffer(["audit", "verify"]).status == 0)
        // old events keep the hash encoding they were written with; new ones are format 2
        #expect(try sqlite(d.dbPath, "SELECT count(*) FROM audit_event WHERE seq <= 9 AND format = 1;") == "9")
        #expect(try sqlite(d.dbPath, "SELECT count(*) FROM audit_event WHERE seq > 9 AND format <> 2;") == "0")
        // the root key was the data key then: a root-key change says the old key still
        // opens those versions, and moves new ones to a fresh data key
        d.stop()
        let newKey = d.dir + "/keys/after-upgrade.key"
        let r = try run(Bins.cofferd, ["rekey", "--config", d.configPath, "--new-key-file", newKey])
        #expect(r.status == 0 && r.out.contains("not yet shut out") && r.out.contains("token-hash and audit MAC keys"), "\(r.out) \(r.stderr)")
        var config = try String(contentsOfFile: d.configPath, encoding: .utf8)
        config = config.replacingOccurrences(of: d.keyPath, with: newKey)
        try config.write(toFile: d.configPath, atomically: true, encoding: .utf8)
        try d.start()
        #expect(try d.coffer(["secret", "get", "ci/app/db", "--version", "1"]).out == "v1-app")
        #expect(try d.coffer(["secret", "put", "after/rekey"], stdin: Array("fresh".utf8)).status == 0)
        let legacyID = try sqlite(d.dbPath, "SELECT key_id FROM secret_version v JOIN secret s ON s.id = v.secret_id WHERE s.path = 'ci/app/db' AND v.version = 1;")
        let newID = try sqlite(d.dbPath, "SELECT key_id FROM secret_version v JOIN secret s ON s.id = v.secret_id WHERE s.path = 'after/rekey';")
        #expect(legacyID != newID && !newID.isEmpty)
        #expect(try sqlite(d.dbPath, "SELECT state FROM keyring WHERE key_id = '\(legacyID)';") == "decrypt-only")
        #expect(try d.coffer(["audit", "verify"]).status == 0)
    }

    /// A database of today's schema (Fixtures/main-0.2, every table of the features:
    /// keyring, tokens, runs, signing keys) opens with these binaries and reads the
    /// same: values and version states, the token, the CA and JWKS keys, the trail.
    /// A daemon on a copy of a fixture's database, key, anchor and policy.
    static func daemon(on name: String) throws -> (Daemon, fixture: String) {
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/" + name).path
        let d = try Daemon(sqlite: true, config: "[audit]\ncheckpoint_events = 5", initialise: false)
        let state = d.dir + "/state"
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        for f in ["coffer.db", "audit.pub", "audit.anchor"] {
            try FileManager.default.copyItem(atPath: fixture + "/" + f, toPath: state + "/" + f)
            chmod(state + "/" + f, f == "audit.pub" ? 0o644 : 0o600)
        }
        try FileManager.default.createDirectory(atPath: (d.keyPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        try? FileManager.default.removeItem(atPath: d.keyPath)
        try FileManager.default.copyItem(atPath: fixture + "/root.key", toPath: d.keyPath)
        chmod(d.keyPath, 0o400)
        try? FileManager.default.removeItem(atPath: d.policyPath)
        try FileManager.default.copyItem(atPath: fixture + "/policy.toml", toPath: d.policyPath)
        return (d, fixture)
    }

    /// A database whose records were MACed by a Coffer that kept no record digest
    /// (Fixtures/main-0.3) gets one at its first open, once, audited; its tokens and
    /// secrets read as before, and from then on a replayed row is caught.
    @Test func aDatabaseWithoutARecordDigestGetsOneOnce() throws {
        let (d, fixture) = try Self.daemon(on: "main-0.3")
        try d.start()
        #expect(d.log.contains("record digest made"), "\(d.log)")
        #expect(try d.coffer(["secret", "get", "ci/app/db"]).out == "v3-app")
        #expect(try d.coffer(["secret", "get", "other/x"]).out == "other")
        let keep = try String(contentsOfFile: fixture + "/keep.token", encoding: .utf8)
        let gone = try String(contentsOfFile: fixture + "/gone.token", encoding: .utf8)
        let expires = try #require(ISO8601DateFormatter().date(from: "2026-12-30T10:30:00Z"))
        if Date() < expires {
            #expect(try d.curl("GET", "/v1/secrets/data/other/x", headers: ["X-Coffer-Token: \(keep)"]).0 == 200)
        }
        #expect(try d.curl("GET", "/v1/secrets/data/other/x", headers: ["X-Coffer-Token: \(gone)"]).0 == 401)
        let check = try d.coffer(["operator", "check"])
        #expect(check.status == 0 && check.out.hasPrefix("OK: "), "\(check.out)")
        #expect(try d.coffer(["audit", "search", "--action", "record_digest_adopted"]).out.split(separator: "\n").count == 1)
        #expect(try d.coffer(["audit", "verify"]).status == 0)
        // once: removing it afterwards does not get it made again
        d.stop()
        _ = try sqlite(d.dbPath, "DELETE FROM record_digest;")
        try d.start()
        let r = try d.coffer(["secret", "get", "other/x"])
        #expect(r.status != 0 && r.stderr.contains("the record digest was removed"), "\(r.stderr)")
        #expect(try d.coffer(["audit", "search", "--action", "record_digest_adopted"]).out.split(separator: "\n").count == 1)
    }

    @Test func aDatabaseOfTodaysSchemaReadsTheSame() throws {
        let (d, fixture) = try Self.daemon(on: "main-0.2")
        let state = d.dir + "/state"
        try d.start()
        #expect(try d.coffer(["secret", "get", "ci/app/db"]).out == "v3-app")
        #expect(try d.coffer(["secret", "get", "ci/app/db", "--version", "1"]).out == "v1-app")
        let destroyed = try d.coffer(["secret", "get", "ci/app/db", "--version", "2"])
        #expect(destroyed.status != 0 && destroyed.out.isEmpty, "\(destroyed.stderr)")
        #expect(try d.coffer(["secret", "get", "other/x"]).out == "other")
        #expect(try d.coffer(["secret", "get", "other/deleted"]).status == 4)
        let versions = try d.coffer(["secret", "versions", "ci/app/db"]).out
        #expect(versions.contains("current version 3") && versions.contains("destroyed"), "\(versions)")
        // the token of that day maps to its record (the token-hash key is the same)
        let token = try String(contentsOfFile: fixture + "/ci.token", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let (code, body) = try d.curl("GET", "/v1/secrets/data/ci/app/db", headers: ["X-Coffer-Token: \(token)"])
        let expires = try #require(ISO8601DateFormatter().date(from: "2026-12-30T04:49:00Z"))
        if Date() < expires {
            #expect(code == 200 && body.contains("v3-app"), "\(code) \(body)")
        } else {
            #expect(errorCode(body) == "token_expired", "\(body)")
        }
        // the signing keys (sealed under the root key) are the same keys
        let ca = try String(contentsOfFile: fixture + "/ssh_ca.pub", encoding: .utf8)
        #expect(try d.coffer(["ssh", "ca"]).out == ca)
        let jwks = try String(contentsOfFile: fixture + "/jwks.json", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try d.curl("GET", "/v1/jwks").1.trimmingCharacters(in: .whitespacesAndNewlines) == jwks)
        // the injection of that day is in the trail, which verifies, before and after new events
        #expect(try d.coffer(["audit", "search", "--action", "inject"]).out.contains("ci/app/db"))
        // its records, written before records were MACed, were adopted once, audited
        let check = try d.coffer(["operator", "check"])
        #expect(check.status == 0 && check.out.hasPrefix("OK: "), "\(check.out) \(check.stderr)")
        #expect(try d.coffer(["audit", "search", "--action", "records_authenticated"]).out.contains("secrets:3,tokens:1"))
        #expect(try d.coffer(["audit", "verify"]).status == 0)
        for i in 0..<6 { _ = try d.coffer(["secret", "put", "new/s\(i)"], stdin: Array("n\(i)".utf8)) }
        #expect(try d.coffer(["audit", "verify"]).status == 0)
        d.stop()
        let offline = try run(Bins.coffer, ["audit", "verify", "--db", d.dbPath, "--pubkey", state + "/audit.pub"])
        #expect(offline.status == 0, "\(offline.out) \(offline.stderr)")
    }
}
