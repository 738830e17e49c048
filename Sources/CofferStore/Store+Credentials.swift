public import CofferAudit
public import CofferCore
import Foundation

/// A signing key of the daemon (the SSH user CA, a JWT key): an Ed25519 seed sealed
/// under the root key, its public half in the clear.
public struct SigningKeyRecord: Sendable, Equatable {
    public enum Purpose: String, Sendable, CaseIterable {
        case sshCA = "ssh-ca"
        case jwt
    }
    public enum State: String, Sendable { case active, retired }

    public var keyID: String
    public var purpose: Purpose
    public var state: State
    public var createdAt: Int64
    public var retiredAt: Int64?
    public var publicKey: Data
    public var rootKeyID: String
    public var sealed: Data

    public init(keyID: String, purpose: Purpose, state: State, createdAt: Int64, retiredAt: Int64?, publicKey: Data, rootKeyID: String, sealed: Data) {
        self.keyID = keyID
        self.purpose = purpose
        self.state = state
        self.createdAt = createdAt
        self.retiredAt = retiredAt
        self.publicKey = publicKey
        self.rootKeyID = rootKeyID
        self.sealed = sealed
    }
}

/// A credential issued for an elevation: an OpenSSH certificate or a JWT.
public struct CredentialRecord: Sendable, Equatable {
    public enum Kind: String, Sendable { case ssh, jwt }
    /// The serial (decimal) of a certificate, the jti of a JWT.
    public var id: String
    public var kind: Kind
    public var serial: UInt64?
    public var elevationID: String
    public var keyID: String
    public var issuedAt: Int64
    public var expiresAt: Int64
    /// The certificate's key id, the JWT's sub.
    public var subject: String
    /// Principals (ssh) or the audience (jwt), newline-separated.
    public var audience: String
    /// SHA-256 of the certificate blob (ssh): how a certificate seen by sshd is recognised.
    public var digest: Data?

    public init(id: String, kind: Kind, serial: UInt64?, elevationID: String, keyID: String, issuedAt: Int64, expiresAt: Int64,
                subject: String, audience: String, digest: Data?) {
        self.id = id
        self.kind = kind
        self.serial = serial
        self.elevationID = elevationID
        self.keyID = keyID
        self.issuedAt = issuedAt
        self.expiresAt = expiresAt
        self.subject = subject
        self.audience = audience
        self.digest = digest
    }
}

/// An SSH login made with a Coffer certificate, registered by the PAM session hook.
public struct SSHSessionRecord: Sendable, Equatable {
    public var id: Int64
    public var serial: UInt64
    public var elevationID: String
    /// The kernel's audit session id of the login (pam_loginuid).
    public var auditSession: UInt32
    public var pid: Int32
    public var user: String?
    public var openedAt: Int64
}

extension Store {
    static func registerCredentialMigration(_ m: inout DatabaseMigrator) {
        m.registerMigration("v10-credentials") { db in
            try db.execute(sql: """
                CREATE TABLE signing_key (
                    key_id TEXT PRIMARY KEY NOT NULL CHECK (length(key_id) BETWEEN 8 AND 64),
                    purpose TEXT NOT NULL CHECK (purpose IN ('ssh-ca', 'jwt')),
                    state TEXT NOT NULL CHECK (state IN ('active', 'retired')),
                    created_at INTEGER NOT NULL,
                    retired_at INTEGER,
                    public_key BLOB NOT NULL CHECK (length(public_key) = 32),
                    root_key_id TEXT NOT NULL REFERENCES root_key(key_id),
                    sealed BLOB NOT NULL CHECK (length(sealed) = 72)
                ) STRICT;
                CREATE UNIQUE INDEX signing_key_one_active ON signing_key(purpose) WHERE state = 'active';
                CREATE TABLE credential (
                    id TEXT PRIMARY KEY NOT NULL CHECK (length(id) BETWEEN 1 AND 64),
                    kind TEXT NOT NULL CHECK (kind IN ('ssh', 'jwt')),
                    serial INTEGER UNIQUE CHECK (serial IS NULL OR serial > 0),
                    elevation_id TEXT NOT NULL REFERENCES elevation_request(id),
                    key_id TEXT NOT NULL REFERENCES signing_key(key_id),
                    issued_at INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL,
                    subject TEXT NOT NULL,
                    audience TEXT NOT NULL,
                    digest BLOB UNIQUE CHECK (digest IS NULL OR length(digest) = 32),
                    CHECK ((kind = 'ssh') = (serial IS NOT NULL AND digest IS NOT NULL))
                ) STRICT;
                CREATE INDEX credential_elevation ON credential(elevation_id);
                CREATE INDEX credential_key_expiry ON credential(key_id, expires_at);
                CREATE INDEX credential_ssh_expiry ON credential(expires_at) WHERE kind = 'ssh';
                CREATE TABLE ssh_session (
                    id INTEGER PRIMARY KEY,
                    serial INTEGER NOT NULL REFERENCES credential(serial),
                    elevation_id TEXT NOT NULL REFERENCES elevation_request(id),
                    audit_session INTEGER NOT NULL CHECK (audit_session BETWEEN 0 AND 4294967294),
                    pid INTEGER NOT NULL CHECK (pid > 0),
                    user TEXT,
                    opened_at INTEGER NOT NULL,
                    ended_at INTEGER,
                    end_reason TEXT
                ) STRICT;
                CREATE INDEX ssh_session_open ON ssh_session(elevation_id) WHERE ended_at IS NULL;
                """)
        }
    }

    static func signingKey(_ r: Row) -> SigningKeyRecord {
        SigningKeyRecord(keyID: r["key_id"], purpose: SigningKeyRecord.Purpose(rawValue: r["purpose"]) ?? .jwt,
                         state: SigningKeyRecord.State(rawValue: r["state"]) ?? .retired, createdAt: r["created_at"], retiredAt: r["retired_at"],
                         publicKey: r["public_key"], rootKeyID: r["root_key_id"], sealed: r["sealed"])
    }

    public func signingKeys() throws -> [SigningKeyRecord] {
        try pool.read { db in try Row.fetchAll(db, sql: "SELECT * FROM signing_key ORDER BY created_at, key_id").map(Store.signingKey) }
    }

    static func insertSigningKey(_ db: Database, _ k: SigningKeyRecord) throws {
        try db.execute(sql: """
            INSERT INTO signing_key (key_id, purpose, state, created_at, retired_at, public_key, root_key_id, sealed) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [k.keyID, k.purpose.rawValue, k.state.rawValue, k.createdAt, k.retiredAt, k.publicKey, k.rootKeyID, k.sealed])
    }

    /// Keys made when the database first meets this version (no request: no event).
    public func addSigningKeys(_ keys: [SigningKeyRecord]) throws {
        let mac = recordMACKey.withLock { $0 }  // none before the first adoption, which MACs them
        try pool.write { db in
            for k in keys {
                // another process may have added one first: the unique index keeps one active
                guard try Int.fetchOne(db, sql: "SELECT count(*) FROM signing_key WHERE purpose = ? AND state = 'active'",
                                       arguments: [k.purpose.rawValue]) == 0 else { continue }
                try Store.insertSigningKey(db, k)
                try Store.sealSigningKeys(db, mac, [k.keyID])
            }
        }
    }

    /// A new active key of its purpose; the one before is retired (still published
    /// while what it signed is valid). One transaction with its event.
    public func rotateSigningKey(_ k: SigningKeyRecord, now: Int64, guard tokenGuard: TokenGuard?, ticket: AuditTicket) async throws {
        let mac = try recordMAC()
        let event = try await pool.write { db -> AuditEvent? in
            try tokenGuard?.check(db)
            let retired = try String.fetchAll(db, sql: "SELECT key_id FROM signing_key WHERE purpose = ? AND state = 'active'", arguments: [k.purpose.rawValue])
            try db.execute(sql: "UPDATE signing_key SET state = 'retired', retired_at = ? WHERE purpose = ? AND state = 'active'",
                           arguments: [now, k.purpose.rawValue])
            try Store.insertSigningKey(db, k)
            try Store.sealSigningKeys(db, mac, retired + [k.keyID])
            return try self.commit(ticket, db)
        }
        if let event { ticket.markCommitted(event) }
    }

    /// The latest expiry of what a key signed (an index lookup per key).
    /// Only rows whose MAC holds count (a row planted to keep a key published does not).
    public func lastExpiry(keyID: String) throws -> Int64? {
        let mac = try recordMAC()
        return try pool.read { db in
            // newest expiry first: the first row whose MAC holds is the answer (one MAC, as a rule)
            let rows = try Row.fetchCursor(db, sql: "SELECT * FROM credential WHERE key_id = ? ORDER BY expires_at DESC", arguments: [keyID])
            while let r = try rows.next() {
                if RecordMAC.matches(r["mac"], mac.credential(r)) { return r["expires_at"] }
            }
            return nil
        }
    }

    static func credential(_ r: Row) -> CredentialRecord {
        CredentialRecord(id: r["id"], kind: CredentialRecord.Kind(rawValue: r["kind"]) ?? .jwt,
                         serial: (r["serial"] as Int64?).map { UInt64($0) }, elevationID: r["elevation_id"], keyID: r["key_id"],
                         issuedAt: r["issued_at"], expiresAt: r["expires_at"], subject: r["subject"], audience: r["audience"], digest: r["digest"])
    }

    /// Issues a credential for an elevation: `make` sees the request as it is inside
    /// the transaction (and may refuse with ElevationRefusal), so the request cannot end
    /// between the check and the issue; the row and its event commit together.
    public func issueCredential(elevationID: String, guard tokenGuard: TokenGuard?, ticket: AuditTicket,
                                make: @escaping @Sendable (ElevationRecord) throws -> CredentialRecord) async throws -> CredentialRecord {
        let mac = try recordMAC()
        let (record, event) = try await pool.write { db -> (CredentialRecord, AuditEvent?) in
            try tokenGuard?.check(db)
            guard let e = try self.elevation(db, elevationID) else { throw ElevationRefusal(.notFound, "no such elevation request") }
            let c = try make(e)
            try db.execute(sql: """
                INSERT INTO credential (id, kind, serial, elevation_id, key_id, issued_at, expires_at, subject, audience, digest)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [c.id, c.kind.rawValue, c.serial.map { Int64(bitPattern: $0) }, c.elevationID, c.keyID, c.issuedAt, c.expiresAt,
                                 c.subject, c.audience, c.digest])
            try Store.sealCredentials(db, mac, [c.id])
            return (c, try self.commit(ticket, db))
        }
        if let event { ticket.markCommitted(event) }
        return record
    }

    /// Serials of certificates whose elevation was ended or revoked and that have not
    /// yet expired (with a margin): the KRL's content.
    public func revokedSerials(now: Int64) throws -> [UInt64] {
        try pool.read { db in
            try Int64.fetchAll(db, sql: """
                SELECT c.serial FROM credential c JOIN elevation_request e ON e.id = c.elevation_id
                WHERE c.kind = 'ssh' AND c.expires_at > ? AND e.state IN ('ended', 'revoked')
                ORDER BY c.serial
                """, arguments: [now - 300_000]).map { UInt64(bitPattern: $0) }
        }
    }

    /// The certificate key ids ("coffer:REQUEST:USER") of every elevation that was
    /// activated and is over (or whose MAC fails: revoked rather than trusted), within
    /// the longest a certificate of it can still be valid. Taken from the MACed
    /// elevation rows, not the credential rows: an edited serial does not keep a
    /// certificate out of the KRL.
    public func revokedKeyIDs(now: Int64) throws -> [String] {
        let mac = try recordMAC()
        return try pool.read { db in
            var ids: [String] = []
            for r in try Row.fetchAll(db, sql: """
                SELECT * FROM elevation_request WHERE activated_at IS NOT NULL AND coalesce(ends_at, 0) > ?
                """, arguments: [now - 300_000]) {
                let id: String = r["id"]
                let reviews = try Row.fetchAll(db, sql: "SELECT * FROM elevation_review WHERE request_id = ? ORDER BY reviewer_uid", arguments: [id])
                let trusted = RecordMAC.matches(r["mac"], mac.elevation(r, reviews: reviews))
                guard !trusted || (r["state"] as String) != "active" else { continue }
                let user = (r["requester_user"] as String?) ?? "uid:\(r["requester_uid"] as Int64)"
                ids.append("coffer:\(id):\(user)")
            }
            return ids
        }
    }

    public func credentials(elevationID: String) throws -> [CredentialRecord] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM credential WHERE elevation_id = ? ORDER BY issued_at", arguments: [elevationID]).map(Store.credential)
        }
    }

    /// Registers a login made with the certificate whose digest is given, if Coffer
    /// issued it and its elevation is active now (checked in the same transaction).
    public func registerSession(digest: Data, auditSession: UInt32, pid: Int32, user: String?, now: Int64, ticket: AuditTicket,
                                annotate: @escaping @Sendable (CredentialRecord) -> Void) async throws -> SSHSessionRecord? {
        let mac = try recordMAC()
        let (session, event) = try await pool.write { db -> (SSHSessionRecord?, AuditEvent?) in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM credential WHERE digest = ? AND kind = 'ssh'", arguments: [digest]) else {
                return (nil, nil)
            }
            let c = Store.credential(row)
            annotate(c)
            guard let e = try self.elevation(db, c.elevationID), e.state == .active, (e.endsAt ?? 0) > now, c.expiresAt > now else {
                throw ElevationRefusal(.permissionDenied, "the elevation of this certificate is not active")
            }
            // the same login registered again (the hook run twice): the one row it has
            if let id = try Int64.fetchOne(db, sql: "SELECT id FROM ssh_session WHERE audit_session = ? AND serial = ? AND ended_at IS NULL",
                                           arguments: [Int64(auditSession), Int64(bitPattern: c.serial!)]) {
                return (SSHSessionRecord(id: id, serial: c.serial!, elevationID: c.elevationID, auditSession: auditSession, pid: pid, user: user,
                                         openedAt: now), try self.commit(ticket, db))
            }
            guard let newID = try Int64.fetchOne(db, sql: """
                INSERT INTO ssh_session (serial, elevation_id, audit_session, pid, "user", opened_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id
                """, arguments: [Int64(bitPattern: c.serial!), c.elevationID, Int64(auditSession), Int64(pid), user, now])
            else { throw SQLError(message: "INSERT returned no id") }
            let s = SSHSessionRecord(id: newID, serial: c.serial!, elevationID: c.elevationID, auditSession: auditSession, pid: pid,
                                     user: user, openedAt: now)
            try Store.sealSession(db, mac, s.id)
            return (s, try self.commit(ticket, db))
        }
        if let event { ticket.markCommitted(event) }
        return session
    }

    /// Open sessions whose elevation is no longer active or whose window is over, and
    /// the rows among them (or among those ended in the last day) that fail their MAC:
    /// those are named, never acted on (their pid and audit session cannot be trusted,
    /// and a session "ended" by hand may still run).
    public func sessionsToEnd(now: Int64) throws -> (due: [SSHSessionRecord], tampered: [Int64]) {
        let mac = try recordMAC()
        return try pool.read { db in
            var due: [SSHSessionRecord] = [], tampered: [Int64] = []
            for r in try Row.fetchAll(db, sql: """
                SELECT s.* FROM ssh_session s JOIN elevation_request e ON e.id = s.elevation_id
                WHERE (s.ended_at IS NULL OR s.ended_at >= ?) AND (e.state <> 'active' OR e.ends_at <= ?)
                """, arguments: [now &- 86_400_000, now]) {
                guard RecordMAC.matches(r["mac"], mac.session(r)) else {
                    tampered.append(r["id"])
                    continue
                }
                guard (r["ended_at"] as Int64?) == nil else { continue }
                due.append(SSHSessionRecord(id: r["id"], serial: UInt64(bitPattern: r["serial"]), elevationID: r["elevation_id"],
                                            auditSession: UInt32(truncatingIfNeeded: r["audit_session"] as Int64),
                                            pid: Int32(truncatingIfNeeded: r["pid"] as Int64), user: r["user"], openedAt: r["opened_at"]))
            }
            return (due, tampered)
        }
    }

    public func endSession(id: Int64, now: Int64, reason: String, ticket: AuditTicket) async throws {
        let mac = try recordMAC()
        let event = try await pool.write { db -> AuditEvent? in
            try db.execute(sql: "UPDATE ssh_session SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL", arguments: [now, reason, id])
            if db.changesCount > 0 { try Store.sealSession(db, mac, id) }
            return try self.commit(ticket, db)
        }
        if let event { ticket.markCommitted(event) }
    }
}
