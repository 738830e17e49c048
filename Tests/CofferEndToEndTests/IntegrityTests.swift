import Foundation
import Testing

/// Authenticated state (the keys issue, point 4): each edit made with the sqlite3 CLI
/// on a stopped daemon's database, without the key, is an `integrity_error` naming the
/// record when the record is used — never the old or the new value — is audited, and
/// `coffer operator check` lists it.
@Suite(.serialized) struct IntegrityTests {
    /// Starts a daemon, runs `setup`, stops it, applies `sql` with the sqlite3 CLI,
    /// starts it again.
    func tampered(_ setup: (Daemon) throws -> Void, _ sql: String) throws -> Daemon {
        let d = try Daemon()
        try d.start()
        try setup(d)
        d.stop()
        _ = try sqlite(d.dbPath, sql)
        try d.start()
        return d
    }

    func expectIntegrityError(_ d: Daemon, _ r: RunResult, naming record: String, notShowing values: [String],
                              sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.status != 0 && r.stderr.contains("failed its integrity check") && r.stderr.contains(record),
                "\(r.status) \(r.out) \(r.stderr)", sourceLocation: sourceLocation)
        for v in values {
            #expect(!r.out.contains(v) && !r.stderr.contains(v), "\(v) was shown", sourceLocation: sourceLocation)
        }
    }

    func check(_ d: Daemon) throws -> RunResult { try d.coffer(["operator", "check"]) }

    @Test func aRollbackToAnOlderVersionIsCaught() throws {
        let d = try tampered({ (d: Daemon) throws in
            #expect(try d.coffer(["secret", "put", "app/db"], stdin: Array("old-value".utf8)).status == 0)
            #expect(try d.coffer(["secret", "put", "app/db"], stdin: Array("new-value".utf8)).status == 0)
        }, """
            DELETE FROM secret_version WHERE version = 2 AND secret_id = (SELECT id FROM secret WHERE path = 'app/db');
            UPDATE secret SET current_version = 1 WHERE path = 'app/db';
            """)
        expectIntegrityError(d, try d.coffer(["secret", "get", "app/db"]), naming: "the secret app/db", notShowing: ["old-value", "new-value"])
        let (code, body) = try d.curl("GET", "/v1/secrets/data/app/db")
        #expect(code == 500 && errorCode(body) == "integrity_error" && !body.contains("old-value"), "\(code) \(body)")
        // nothing is built on it either: a write to the tampered secret is refused
        #expect(try d.coffer(["secret", "put", "app/db"], stdin: Array("x".utf8)).status != 0)
        let audit = try d.coffer(["audit", "search", "--path", "app/db", "--format", "json"]).out
        #expect(audit.contains("integrity_error"), "the refusal is audited")
        let c = try check(d)
        #expect(c.status == 9 && c.out.contains("secret app/db: head") && !c.out.contains("value"), "\(c.out)")
    }

    @Test func anOldVersionDroppedOrRevivedByHandIsCaught() throws {
        let d = try tampered({ (d: Daemon) throws in
            for v in ["one", "two", "three"] { #expect(try d.coffer(["secret", "put", "app/k"], stdin: Array(v.utf8)).status == 0) }
            #expect(try d.coffer(["secret", "delete", "app/k", "--versions", "2"]).status == 0)
            #expect(try d.coffer(["secret", "put", "app/gone"], stdin: Array("one".utf8)).status == 0)
        }, """
            DELETE FROM secret_version WHERE version = 1 AND secret_id = (SELECT id FROM secret WHERE path = 'app/k');
            UPDATE secret_version SET state = 'active', deleted_at = NULL WHERE version = 2 AND secret_id = (SELECT id FROM secret WHERE path = 'app/k');
            """)
        expectIntegrityError(d, try d.coffer(["secret", "get", "app/k", "--version", "2"]), naming: "version 2 of the secret app/k", notShowing: ["two"])
        expectIntegrityError(d, try d.coffer(["secret", "get", "app/k", "--version", "1"]), naming: "version 1 of the secret app/k", notShowing: ["one"])
        // a row deleted outright changes the record digest: nothing else is served either
        for path in ["app/k", "app/gone"] {
            let r = try d.coffer(["secret", "get", path])
            #expect(r.status != 0 && r.stderr.contains("do not match their authenticated digest") && r.out.isEmpty, "\(r.out) \(r.stderr)")
        }
        let c = try check(d)
        #expect(c.status == 9 && c.out.contains("secret app/k: version 2") && c.out.contains("secret app/k: versions 1...3 are not all there")
                && c.out.contains("records: a record was deleted, added or put back to an older state of itself"), "\(c.out)")
        // the records cannot be accepted while one fails its own MAC
        let a = try d.coffer(["operator", "check", "--accept"])
        #expect(a.status != 0 && a.stderr.contains("fail their own MAC"), "\(a.stderr)")
    }

    // MARK: the record digest: rows put back to an older state of themselves, or deleted

    func tokenRow(_ d: Daemon, _ name: String) throws -> String {
        try sqlite(d.dbPath, "SELECT hex(mac) FROM token WHERE name = '\(name)';")
    }

    /// A revoked token's earlier row (a valid MAC of its own) put back is caught by the
    /// record digest: every record is refused, the check says why, and an admin can
    /// accept the records only by peer credentials, after fixing what they know of.
    @Test func aRevokedTokensEarlierRowPutBackIsCaught() throws {
        let d = try Daemon(sqlite: true)
        try d.start()
        let token = try d.coffer(["token", "create", "--role", "admin", "--ttl", "1h", "--name", "victim"]).out.trimmingCharacters(in: .whitespacesAndNewlines)
        let admin = try d.coffer(["token", "create", "--role", "admin", "--ttl", "1h", "--name", "other"]).out.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try d.coffer(["secret", "put", "app/replay"], stdin: Array("replayed-value".utf8)).status == 0)
        let before = try tokenRow(d, "victim")
        let accessor = try sqlite(d.dbPath, "SELECT accessor FROM token WHERE name = 'victim';")
        #expect(try d.coffer(["token", "revoke", accessor]).status == 0)
        let revoked = try d.curl("GET", "/v1/secrets/data/app/replay", headers: ["X-Coffer-Token: \(token)"])
        #expect(revoked.0 == 401 && errorCode(revoked.1) == "token_revoked", "\(revoked)")
        // accepting the records needs an admin by peer credentials, not a token
        let byToken = try run(Bins.coffer, ["operator", "check", "--accept", "--socket", d.socket], env: ["COFFER_TOKEN": admin])
        #expect(byToken.status != 0 && byToken.stderr.contains("peer credentials"), "\(byToken.stderr)")
        d.stop()
        _ = try sqlite(d.dbPath, "UPDATE token SET revoked_at = NULL, mac = X'\(before)' WHERE name = 'victim';")
        try d.start()
        let (code, body) = try d.curl("GET", "/v1/secrets/data/app/replay", headers: ["X-Coffer-Token: \(token)"])
        #expect(code == 500 && errorCode(body) == "integrity_error" && body.contains("authenticated digest") && !body.contains("replayed-value"),
                "\(code) \(body)")
        let peer = try d.coffer(["secret", "get", "app/replay"])
        #expect(peer.status != 0 && peer.out.isEmpty && peer.stderr.contains("authenticated digest"), "\(peer.stderr)")
        #expect(d.log.contains("the records do not match their authenticated digest"), "\(d.log)")
        #expect((json(try d.curl("GET", "/v1/sys/status").1)["records"] as? String)?.hasPrefix("refused: ") == true)
        #expect(try d.coffer(["audit", "search", "--format", "json"]).out.contains("integrity_error"), "the refusal is audited")
        var c = try check(d)
        #expect(c.status == 9 && c.out.contains("records: a record was deleted, added or put back to an older state of itself")
                && !c.out.contains("token acc_"), "the row's own MAC is valid: \(c.out)")
        // a restart does not launder it
        d.stop()
        try d.start()
        #expect(try d.curl("GET", "/v1/secrets/data/app/replay", headers: ["X-Coffer-Token: \(token)"]).0 == 500)
        // no token works meanwhile; the admin revokes the victim again (a revocation
        // only takes away, so it goes ahead), then accepts
        #expect(try d.curl("GET", "/v1/secrets/data/app/replay", headers: ["X-Coffer-Token: \(admin)"]).0 == 500)
        let again = try d.coffer(["token", "revoke", accessor])
        #expect(again.status == 0, "\(again.stderr)")
        let a = try d.coffer(["operator", "check", "--accept"])
        #expect(a.status == 0 && a.out.contains("accepted:"), "\(a.out) \(a.stderr)")
        c = try check(d)
        #expect(c.status == 0 && c.out.hasPrefix("OK: "), "\(c.out)")
        #expect(try d.coffer(["secret", "get", "app/replay"]).out == "replayed-value")
        #expect(try d.curl("GET", "/v1/secrets/data/app/replay", headers: ["X-Coffer-Token: \(token)"]).0 == 401, "still revoked")
        #expect(try d.curl("GET", "/v1/secrets/data/app/replay", headers: ["X-Coffer-Token: \(admin)"]).0 == 200)
        #expect(try d.coffer(["audit", "search", "--action", "record_digest_accepted"]).out.contains("records:"))
        d.stop()
        try d.start()
        #expect(try check(d).status == 0, "the new digest holds across a restart")
    }

    /// Every record table and the digest row put back together from an older copy,
    /// the trail kept: the digest no longer names the trail's head.
    @Test func theRecordTablesPutBackTogetherAreCaught() throws {
        let d = try Daemon(sqlite: true)
        try d.start()
        #expect(try d.coffer(["secret", "put", "app/older"], stdin: Array("first".utf8)).status == 0)
        d.stop()
        let old = d.dir + "/old.db"
        _ = try sqlite(d.dbPath, "VACUUM INTO '\(old)';")
        try d.start()
        #expect(try d.coffer(["secret", "put", "app/older"], stdin: Array("second".utf8)).status == 0)
        d.stop()
        let tables = ["secret", "secret_version", "token", "elevation_request", "ssh_session", "record_digest"]
        _ = try sqlite(d.dbPath, "ATTACH '\(old)' AS o; " + tables.map { "DELETE FROM \($0); INSERT INTO \($0) SELECT * FROM o.\($0);" }.joined(separator: " "))
        try d.start()
        let r = try d.coffer(["secret", "get", "app/older"])
        #expect(r.status != 0 && r.out.isEmpty && r.stderr.contains("put back to an older copy"), "\(r.out) \(r.stderr)")
        let c = try check(d)
        #expect(c.status == 9 && c.out.contains("records: the records were put back to an older copy"), "\(c.out)")
    }

    /// A table rebuilt by hand without its keys (so that an old row could be added
    /// twice and cancel out), or rows of the wrong type planted under a schema text
    /// edited back to look right: the daemon refuses to start, naming why — it neither
    /// serves them nor crashes on them.
    @Test func aRebuiltTableOrWrongTypesStopTheStart() throws {
        let d = try Daemon(sqlite: true)
        try d.start()
        #expect(try d.coffer(["token", "create", "--role", "admin", "--ttl", "1h", "--name", "t"]).status == 0)
        #expect(try d.coffer(["secret", "put", "app/s"], stdin: Array("s".utf8)).status == 0)
        d.stop()
        let pristine = d.dir + "/pristine.db"
        _ = try sqlite(d.dbPath, "VACUUM INTO '\(pristine)';")
        _ = try sqlite(d.dbPath, """
            PRAGMA foreign_keys = OFF;
            CREATE TABLE token_copy AS SELECT * FROM token;
            INSERT INTO token_copy SELECT * FROM token;
            INSERT INTO token_copy SELECT * FROM token;
            DROP TABLE token;
            ALTER TABLE token_copy RENAME TO token;
            """)
        _ = try d.launch()
        #expect(try d.waitForExit() != 0)
        #expect(d.log.contains("the database schema is not the one Coffer makes"), "\(d.log)")
        // wrong types under a STRICT table's text restored with writable_schema
        try FileManager.default.removeItem(atPath: d.dbPath)
        try FileManager.default.copyItem(atPath: pristine, toPath: d.dbPath)
        _ = try sqlite(d.dbPath, "PRAGMA writable_schema = ON; UPDATE sqlite_master SET sql = replace(sql, ') STRICT', ')') WHERE name = 'secret';")
        _ = try sqlite(d.dbPath, "UPDATE secret SET current_version = 'abc';")
        _ = try sqlite(d.dbPath, "PRAGMA writable_schema = ON; UPDATE sqlite_master SET sql = sql || ' STRICT' WHERE name = 'secret';")
        _ = try d.launch()
        #expect(try d.waitForExit() != 0)
        #expect(d.log.contains("fails SQLite's integrity_check"), "\(d.log)")
        #expect(!d.log.contains("Fatal error"), "\(d.log)")
        // the token accessor index pointed at a forged B-tree in which one accessor
        // leads to another token's row (a revocation by accessor would land there);
        // the schema text is unchanged
        try FileManager.default.removeItem(atPath: d.dbPath)
        try FileManager.default.copyItem(atPath: pristine, toPath: d.dbPath)
        _ = try sqlite(d.dbPath, """
            INSERT INTO token (accessor, hash, roles, paths, name, created_at, expires_at, uses, created_uid, mac)
              SELECT 'acc_forged', randomblob(32), roles, paths, 'other', created_at, expires_at, uses, created_uid, mac FROM token LIMIT 1;
            CREATE TABLE scratch (a TEXT, r INTEGER, PRIMARY KEY (a, r)) WITHOUT ROWID;
            INSERT INTO scratch SELECT accessor, CASE WHEN name = 't' THEN (SELECT rowid FROM token WHERE name = 'other') ELSE rowid END FROM token;
            """)
        _ = try sqlite(d.dbPath, """
            PRAGMA writable_schema = ON;
            UPDATE sqlite_master SET rootpage = CASE name
              WHEN 'sqlite_autoindex_token_1' THEN (SELECT rootpage FROM sqlite_master WHERE name = 'scratch')
              ELSE (SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_token_1') END
            WHERE name IN ('sqlite_autoindex_token_1', 'scratch');
            """)
        _ = try sqlite(d.dbPath, "DROP TABLE scratch;")
        _ = try d.launch()
        #expect(try d.waitForExit() != 0)
        #expect(d.log.contains("fails SQLite's integrity_check"), "\(d.log)")
    }

    /// A JWT signing key planted in the table (retired, with a credential row that
    /// would keep it in the JWKS) is never published: every signing key must open
    /// under the root key to the public key it claims.
    @Test func aPlantedSigningKeyIsNeverPublished() throws {
        let d = try Daemon(sqlite: true)
        try d.start()
        let before = try d.curl("GET", "/v1/jwks").1
        d.stop()
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        _ = try sqlite(d.dbPath, """
            INSERT INTO signing_key (key_id, purpose, state, created_at, retired_at, public_key, root_key_id, sealed)
              VALUES ('a77ac4e7deadbeef', 'jwt', 'retired', \(now), \(now), randomblob(32), (SELECT key_id FROM root_key), randomblob(72));
            """)
        _ = try d.launch()
        #expect(try d.waitForExit() != 0)
        #expect(d.log.contains("a77ac4e7deadbeef"), "\(d.log)")
        _ = try sqlite(d.dbPath, "DELETE FROM signing_key WHERE key_id = 'a77ac4e7deadbeef';")
        try d.start()
        #expect(try d.curl("GET", "/v1/jwks").1 == before)
        // a credential row planted to keep a (real) retired key published: the digest
        #expect(try d.coffer(["jwks", "rotate"]).status == 0)
        d.stop()
        _ = try sqlite(d.dbPath, """
            INSERT INTO credential (id, kind, elevation_id, key_id, issued_at, expires_at, subject, audience)
              VALUES ('jwt-planted', 'jwt', 'el_none', (SELECT key_id FROM signing_key WHERE purpose = 'jwt' ORDER BY created_at LIMIT 1),
                      \(now), \(now + 31_536_000_000), 'root', 'svc');
            """)
        try d.start()
        let (code, body) = try d.curl("GET", "/v1/jwks")
        #expect(code == 500 && errorCode(body) == "integrity_error", "\(code) \(body)")
        let c = try check(d)
        #expect(c.status == 9 && c.out.contains("credential jwt-planted"), "\(c.out)")
    }

    /// A rotated-out data key made active again by hand (so new versions would be
    /// wrapped under a key retired because it leaked): the keyring row fails its MAC,
    /// nothing is written under it, and the check names it.
    @Test func aRotatedOutKeyMadeActiveAgainIsCaught() throws {
        var old = "", new = ""
        let d = try tampered({ (d: Daemon) throws in
            #expect(try d.coffer(["secret", "put", "app/k"], stdin: Array("k1".utf8)).status == 0)
            old = try sqlite(d.dbPath, "SELECT key_id FROM keyring WHERE purpose = 'data' AND state = 'active';")
            #expect(try d.coffer(["keys", "rotate"]).status == 0)
            new = try sqlite(d.dbPath, "SELECT key_id FROM keyring WHERE purpose = 'data' AND state = 'active';")
        }, "UPDATE keyring SET state = 'decrypt-only' WHERE state = 'active' AND purpose = 'data'; UPDATE keyring SET state = 'active' WHERE key_id = (SELECT key_id FROM keyring WHERE purpose = 'data' ORDER BY created_at LIMIT 1);")
        #expect(!old.isEmpty && old != new)
        #expect(try sqlite(d.dbPath, "SELECT key_id FROM keyring WHERE purpose = 'data' AND state = 'active';") == old)
        let put = try d.coffer(["secret", "put", "app/k"], stdin: Array("k2".utf8))
        #expect(put.status != 0 && put.stderr.contains("keyring key"), "\(put.stderr)")
        #expect(try sqlite(d.dbPath, "SELECT count(*) FROM secret_version WHERE key_id = '\(old)';") == "1", "nothing new under the old key")
        let c = try check(d)
        #expect(c.status == 9 && c.out.contains("keyring key \(old)") && c.out.contains("keyring key \(new)"), "\(c.out)")
    }

    /// A rotation row planted by hand (it would block every rotation, or have the
    /// daemon re-wrap and erase keys unasked) is acted on by nothing and named.
    @Test func aPlantedRotationRecordIsNotActedOn() throws {
        var old = ""
        let d = try tampered({ (d: Daemon) throws in
            #expect(try d.coffer(["secret", "put", "app/r"], stdin: Array("r1".utf8)).status == 0)
            old = try sqlite(d.dbPath, "SELECT key_id FROM keyring WHERE purpose = 'data' AND state = 'active';")
            #expect(try d.coffer(["keys", "rotate"]).status == 0)
        }, """
            INSERT INTO key_rotation (id, target_key_id, started_at, started_by, total, done)
              VALUES (1, (SELECT key_id FROM keyring WHERE purpose = 'data' AND state = 'active'), 0, 'root', 1, 0);
            """)
        usleep(2_500_000)  // the rotation job has had two passes
        #expect(try sqlite(d.dbPath, "SELECT state FROM keyring WHERE key_id = '\(old)';") == "decrypt-only", "no key erased on it")
        #expect(try sqlite(d.dbPath, "SELECT count(*) FROM secret_version WHERE key_id = '\(old)';") == "1", "nothing re-wrapped on it")
        #expect(try d.curl("GET", "/v1/sys/status").0 == 200, "status still answers")
        let r = try d.coffer(["operator", "rotate"])
        #expect(r.status != 0 && r.stderr.contains("key rotation record"), "\(r.stderr)")
        let c = try check(d)
        #expect(c.status == 9 && c.out.contains("key rotation record"), "\(c.out)")
    }

    /// A write is not built on a secret whose version was changed by hand (pruning
    /// would erase the evidence): refused, naming the version.
    @Test func aWriteToASecretWithAnEditedVersionIsRefused() throws {
        let d = try tampered({ (d: Daemon) throws in
            #expect(try d.coffer(["secret", "put", "app/w"], stdin: Array("w1".utf8)).status == 0)
            #expect(try d.coffer(["secret", "put", "app/w"], stdin: Array("w2".utf8)).status == 0)
            #expect(try d.coffer(["secret", "delete", "app/w", "--versions", "1"]).status == 0)
        }, "UPDATE secret_version SET state = 'active', deleted_at = NULL WHERE version = 1;")
        let r = try d.coffer(["secret", "put", "app/w"], stdin: Array("w3".utf8))
        #expect(r.status != 0 && r.stderr.contains("version 1 of the secret app/w"), "\(r.stderr)")
        #expect(try sqlite(d.dbPath, "SELECT current_version FROM secret WHERE path = 'app/w';") == "2")
        let status = json(try d.curl("GET", "/v1/sys/status").1)
        #expect(status["records"] as? String == "verified", "an edit the row's own MAC catches leaves the set verified")
    }

    /// The digest row deleted (to have replayed rows accepted as an upgrade) or edited
    /// is not made anew; a forged SSH session row is named by the check.
    @Test func theDigestRowRemovedOrEditedIsNotMadeAnew() throws {
        let removed = try tampered({ (d: Daemon) throws in
            #expect(try d.coffer(["secret", "put", "app/d"], stdin: Array("d".utf8)).status == 0)
        }, "DELETE FROM record_digest;")
        var r = try removed.coffer(["secret", "get", "app/d"])
        #expect(r.status != 0 && r.stderr.contains("the record digest was removed"), "\(r.stderr)")
        #expect(try sqlite(removed.dbPath, "SELECT count(*) FROM record_digest;") == "0")
        let edited = try tampered({ (d: Daemon) throws in
            #expect(try d.coffer(["secret", "put", "app/e"], stdin: Array("e".utf8)).status == 0)
        }, """
            UPDATE record_digest SET gen = gen + 1;
            INSERT INTO ssh_session (serial, elevation_id, audit_session, pid, "user", opened_at) VALUES (1, 'el_forged', 7, 1, 'root', 0);
            """)
        r = try edited.coffer(["secret", "get", "app/e"])
        #expect(r.status != 0 && r.stderr.contains("digest row was changed without the key"), "\(r.stderr)")
        let c = try check(edited)
        #expect(c.status == 9 && c.out.contains("ssh session 1"), "\(c.out)")
    }

    @Test func aTokenEditedByHandIsRefused() throws {
        var tokens: [String] = []
        let d = try tampered({ (d: Daemon) throws in
            for name in ["extended", "promoted", "unbound"] {
                let r = try d.coffer(["token", "create", "--role", "admin", "--ttl", "10m", "--name", name, "--paths", "app/*", "--bind-uid", "0"])
                #expect(r.status == 0)
                tokens.append(r.out.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            #expect(try d.coffer(["secret", "put", "app/t"], stdin: Array("token-read".utf8)).status == 0)
        }, """
            UPDATE token SET expires_at = expires_at + 86400000 WHERE name = 'extended';
            UPDATE token SET paths = '**' WHERE name = 'promoted';
            UPDATE token SET bound_uid = NULL WHERE name = 'unbound';
            """)
        for t in tokens {
            let (code, body) = try d.curl("GET", "/v1/secrets/data/app/t", headers: ["X-Coffer-Token: \(t)"])
            #expect(code == 500 && errorCode(body) == "integrity_error" && body.contains("the token acc_") && !body.contains("token-read"),
                    "\(code) \(body)")
        }
        let c = try check(d)
        #expect(c.status == 9 && c.out.split(separator: "\n").filter { $0.contains("token acc_") }.count == 3, "\(c.out)")
        // an untouched token still works
        let fresh = try d.coffer(["token", "create", "--role", "admin", "--ttl", "10m"]).out.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try d.curl("GET", "/v1/secrets/data/app/t", headers: ["X-Coffer-Token: \(fresh)"]).0 == 200)
    }

    /// Removing a MAC, or the marker of the one-time adoption, does not get a record
    /// accepted: the trail remembers the adoption.
    @Test func removingTheMACsOrTheMarkerDoesNotHelp() throws {
        let d = try tampered({ (d: Daemon) throws in
            #expect(try d.coffer(["secret", "put", "app/m"], stdin: Array("v1".utf8)).status == 0)
            #expect(try d.coffer(["secret", "put", "app/m"], stdin: Array("v2".utf8)).status == 0)
        }, """
            DELETE FROM secret_version WHERE version = 2 AND secret_id = (SELECT id FROM secret WHERE path = 'app/m');
            UPDATE secret SET current_version = 1, mac = NULL, low_version = NULL WHERE path = 'app/m';
            UPDATE secret_version SET mac = NULL;
            DELETE FROM record_auth;
            """)
        expectIntegrityError(d, try d.coffer(["secret", "get", "app/m"]), naming: "the secret app/m", notShowing: ["v1"])
        #expect(d.log.contains("the marker of authenticated records was removed"), "\(d.log)")
        #expect(try check(d).status == 9)
    }

    /// A clean database checks clean, also after deletes, destroys, revocations, uses,
    /// pruned versions and a restart.
    @Test func everyLegitimateChangeKeepsTheMACsValid() throws {
        let d = try Daemon(config: "[limits]\nmax_versions = 3")
        try d.start()
        for i in 1...5 { #expect(try d.coffer(["secret", "put", "ok/a"], stdin: Array("a\(i)".utf8)).status == 0) }
        #expect(try d.coffer(["secret", "delete", "ok/a", "--versions", "4"]).status == 0)
        #expect(try d.coffer(["secret", "undelete", "ok/a", "--versions", "4"]).status == 0)
        #expect(try d.coffer(["secret", "destroy", "ok/a", "--versions", "3"]).status == 0)
        let limited = try d.coffer(["token", "create", "--role", "admin", "--uses", "3"]).out.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try d.curl("GET", "/v1/secrets/data/ok/a", headers: ["X-Coffer-Token: \(limited)"]).0 == 200)
        let parent = try d.coffer(["token", "create", "--role", "admin", "--ttl", "1h", "--name", "parent"]).out
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let child = try run(Bins.coffer, ["token", "create", "--role", "admin", "--ttl", "10m", "--socket", d.socket], env: ["COFFER_TOKEN": parent])
        #expect(child.status == 0, "\(child.stderr)")
        let list = try d.coffer(["token", "list", "--format", "json"]).out
        let tokens = (try JSONSerialization.jsonObject(with: Data(list.utf8)) as? [String: Any])?["tokens"] as? [[String: Any]] ?? []
        let parentAccessor = try #require(tokens.first { $0["name"] as? String == "parent" }?["accessor"] as? String)
        #expect(try d.coffer(["token", "revoke", parentAccessor]).status == 0)
        var c = try check(d)
        #expect(c.status == 0 && c.out.hasPrefix("OK: "), "\(c.out)")
        d.stop()
        try d.start()
        #expect(try d.coffer(["secret", "get", "ok/a"]).out == "a5")
        #expect(try d.coffer(["secret", "get", "ok/a", "--version", "4"]).out == "a4")
        c = try check(d)
        #expect(c.status == 0, "\(c.out)")
    }

    // MARK: what the attack review found (each failed before its fix)

    /// Renaming the event that recorded the adoption does not get edited rows adopted:
    /// adoption runs only on a trail that verifies whole.
    @Test func aRenamedAdoptionEventDoesNotLaunder() throws {
        var token = ""
        let d = try tampered({ (d: Daemon) throws in
            token = try d.coffer(["token", "create", "--role", "admin", "--uses", "1", "--ttl", "10m"]).out.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(try d.coffer(["secret", "put", "app/r"], stdin: Array("r".utf8)).status == 0)
        }, """
            DELETE FROM record_auth;
            UPDATE token SET uses_left = NULL, expires_at = 4102444800000, mac = NULL;
            UPDATE audit_event SET action = 'status' WHERE action = 'records_authenticated';
            """)
        let (code, body) = try d.curl("GET", "/v1/secrets/data/app/r", headers: ["X-Coffer-Token: \(token)"])
        #expect(code == 500 && errorCode(body) == "integrity_error", "\(code) \(body)")
        #expect(d.log.contains("records without a MAC are not adopted"), "\(d.log)")
    }

    /// A trigger planted in the file would run inside the daemon's own transactions
    /// (here: undo every revocation): the daemon refuses to start on it.
    @Test func aPlantedTriggerStopsTheStart() throws {
        let d = try Daemon(sqlite: true)
        try d.start()
        d.stop()
        _ = try sqlite(d.dbPath, """
            CREATE TRIGGER t_unrevoke AFTER UPDATE OF revoked_at ON token WHEN OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL
            BEGIN UPDATE token SET revoked_at = NULL, mac = OLD.mac WHERE accessor = NEW.accessor; END;
            """)
        _ = try d.launch()
        #expect(try d.waitForExit() != 0)
        #expect(d.log.contains("trigger t_unrevoke was not made by Coffer"), "\(d.log)")
    }

    /// A head whose numbers were set absurdly large is an integrity error, for reads and
    /// for the scan, and neither exhausts nor crashes the daemon.
    @Test func absurdVersionNumbersAreNamedNotFatal() throws {
        let d = try tampered({ (d: Daemon) throws in
            #expect(try d.coffer(["secret", "put", "app/big"], stdin: Array("b".utf8)).status == 0)
            #expect(try d.coffer(["secret", "put", "app/neg"], stdin: Array("n".utf8)).status == 0)
        }, """
            UPDATE secret SET current_version = 9223372036854775807 WHERE path = 'app/big';
            UPDATE secret SET low_version = -9223372036854775808 WHERE path = 'app/neg';
            """)
        #expect(try d.coffer(["secret", "versions", "app/big"]).stderr.contains("failed its integrity check"))
        let c = try check(d)
        #expect(c.status == 9 && c.out.contains("secret app/big: head") && c.out.contains("secret app/neg: head"), "\(c.out) \(c.stderr)")
        #expect(try d.curl("GET", "/v1/sys/health").0 == 200, "the daemon is still up")
    }

    /// Revoking the parent of a token edited by hand revokes it without making its
    /// edited row valid again; an edited creator name is caught too.
    @Test func aRevocationDoesNotLaunderAnEditedChild() throws {
        var parentAccessor = ""
        let d = try tampered({ (d: Daemon) throws in
            let parent = try d.coffer(["token", "create", "--role", "admin", "--ttl", "1h", "--name", "parent"]).out.trimmingCharacters(in: .whitespacesAndNewlines)
            let child = try run(Bins.coffer, ["token", "create", "--role", "admin", "--ttl", "10m", "--name", "child", "--socket", d.socket],
                                env: ["COFFER_TOKEN": parent])
            #expect(child.status == 0, "\(child.stderr)")
            let list = try d.coffer(["token", "list", "--format", "json"]).out
            let tokens = (try JSONSerialization.jsonObject(with: Data(list.utf8)) as? [String: Any])?["tokens"] as? [[String: Any]] ?? []
            parentAccessor = tokens.first { $0["name"] as? String == "parent" }?["accessor"] as? String ?? ""
            #expect(try d.coffer(["secret", "put", "app/u"], stdin: Array("u".utf8)).status == 0)
        }, """
            UPDATE token SET expires_at = 4102444800000 WHERE name = 'child';
            UPDATE secret_version SET created_user = 'mallory';
            """)
        #expect(try d.coffer(["token", "revoke", parentAccessor]).status == 0)
        let c = try check(d)
        #expect(c.status == 9 && c.out.contains("token acc_") && c.out.contains("secret app/u: version 1"), "\(c.out)")
    }

    /// After `audit prune` removed the adoption event, its prune event still says the
    /// adoption happened: removing the marker does not get edited rows adopted.
    @Test func aPruneDoesNotOpenTheWayToReadoption() throws {
        let d = try Daemon(sqlite: true, config: "[audit]\ncheckpoint_events = 5")
        try d.start()
        for i in 0..<12 { #expect(try d.coffer(["secret", "put", "app/p\(i)"], stdin: Array("p\(i)".utf8)).status == 0) }
        let through = try sqlite(d.dbPath, "SELECT max(seq) FROM audit_checkpoint WHERE seq < (SELECT max(seq) FROM audit_event);")
        #expect(try d.coffer(["audit", "prune", "--through", through]).status == 0)
        #expect(try sqlite(d.dbPath, "SELECT count(*) FROM audit_event WHERE action = 'records_authenticated';") == "0")
        d.stop()
        _ = try sqlite(d.dbPath, "DELETE FROM record_auth; UPDATE secret SET current_version = 1, mac = NULL WHERE path = 'app/p0';")
        try d.start()
        #expect(try d.coffer(["secret", "get", "app/p0"]).stderr.contains("failed its integrity check"))
    }
}
