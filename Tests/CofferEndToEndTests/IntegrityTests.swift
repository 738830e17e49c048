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
        #expect(try d.coffer(["secret", "get", "app/k"]).out == "three", "the untouched current version still reads")
        #expect(try d.coffer(["secret", "get", "app/gone"]).out == "one", "other secrets are unaffected")
        let c = try check(d)
        #expect(c.status == 9 && c.out.contains("secret app/k: version 2") && c.out.contains("secret app/k: versions 1...3 are not all there"), "\(c.out)")
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
        let d = try Daemon()
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
        let d = try Daemon(config: "[audit]\ncheckpoint_events = 5")
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
