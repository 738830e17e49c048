import CofferAudit
import CofferCore
import Foundation

/// A token as stored: only the keyed hash of the token, never the token.
public struct TokenRecord: Sendable, Equatable {
    public var accessor: String
    public var hash: Data
    public var parent: String?
    public var roles: [String]
    public var paths: [String]
    public var name: String?
    public var createdAt: Int64
    public var expiresAt: Int64
    public var usesLeft: Int?
    public var uses: Int
    public var boundUID: UInt32?
    public var createdUID: UInt32
    public var createdUser: String?
    public var revokedAt: Int64?
    /// A sign-in session: when its holder last authenticated through PAM (step-up
    /// checks compare against it). nil for other tokens.
    public var authenticatedAt: Int64?
    /// The elevation request a token was issued for (its role is held through it).
    public var elevationID: String?

    public init(accessor: String, hash: Data, parent: String?, roles: [String], paths: [String], name: String?,
                createdAt: Int64, expiresAt: Int64, usesLeft: Int?, uses: Int, boundUID: UInt32?,
                createdUID: UInt32, createdUser: String?, revokedAt: Int64?, authenticatedAt: Int64? = nil, elevationID: String? = nil) {
        self.accessor = accessor
        self.hash = hash
        self.parent = parent
        self.roles = roles
        self.paths = paths
        self.name = name
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.usesLeft = usesLeft
        self.uses = uses
        self.boundUID = boundUID
        self.createdUID = createdUID
        self.createdUser = createdUser
        self.revokedAt = revokedAt
        self.authenticatedAt = authenticatedAt
        self.elevationID = elevationID
    }
}

extension Store {
    /// The chain of tokens a request was authorized with, checked again inside the
    /// write transaction that acts on it: a token (or an ancestor) revoked or expired
    /// after the request's head arrived cannot authorize its body (check and action
    /// are atomic, SQLite having one writer).
    public struct TokenGuard: Sendable {
        public var chain: [String]
        public var now: Int64

        /// nil when the request carried no token.
        public init?(_ chain: [String]?, now: Int64) {
            guard let chain, !chain.isEmpty else { return nil }
            self.chain = chain
            self.now = now
        }

        func check(_ db: Database) throws {
            let marks = Array(repeating: "?", count: chain.count).joined(separator: ",")
            var args: [any DatabaseValueConvertible] = chain
            args.append(now)
            let live = try Int.fetchOne(db, sql: "SELECT count(*) FROM token WHERE accessor IN (\(marks)) AND revoked_at IS NULL AND expires_at > ?",
                                        arguments: StatementArguments(args)) ?? 0
            guard live == chain.count else {
                throw CofferError(.tokenRevoked, "the token was revoked or expired before the request completed")
            }
        }
    }

    static func registerTokenMigration(_ m: inout DatabaseMigrator) {
        m.registerMigration("v2-tokens") { db in
            try db.execute(sql: """
                CREATE TABLE token (
                    accessor TEXT PRIMARY KEY NOT NULL,
                    hash BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),
                    parent TEXT REFERENCES token(accessor),
                    roles TEXT NOT NULL,
                    paths TEXT NOT NULL,
                    name TEXT,
                    created_at INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL,
                    uses_left INTEGER CHECK (uses_left IS NULL OR uses_left >= 0),
                    uses INTEGER NOT NULL DEFAULT 0,
                    bound_uid INTEGER,
                    created_uid INTEGER NOT NULL,
                    created_user TEXT,
                    revoked_at INTEGER
                ) STRICT;
                CREATE INDEX token_parent ON token(parent);
                """)
        }
        m.registerMigration("v7-token-sign-in") { db in
            try db.execute(sql: "ALTER TABLE token ADD COLUMN authenticated_at INTEGER")
        }
    }

    static func tokenRecord(_ r: Row) -> TokenRecord {
        let roles: String = r["roles"]
        let paths: String = r["paths"]
        return TokenRecord(
            accessor: r["accessor"], hash: r["hash"], parent: r["parent"],
            roles: roles.split(separator: "\n").map(String.init), paths: paths.split(separator: "\n").map(String.init),
            name: r["name"], createdAt: r["created_at"], expiresAt: r["expires_at"], usesLeft: r["uses_left"],
            uses: r["uses"], boundUID: (r["bound_uid"] as Int64?).map { UInt32(truncatingIfNeeded: $0) },
            createdUID: UInt32(truncatingIfNeeded: r["created_uid"] as Int64), createdUser: r["created_user"],
            revokedAt: r["revoked_at"], authenticatedAt: r["authenticated_at"], elevationID: r["elevation_id"])
    }

    /// Inserts a token; returns its use limit as stored. A child of a limited token
    /// may not have more uses than its parent has left (it gets those by default).
    @discardableResult
    public func insertToken(_ t: TokenRecord, guard tokenGuard: TokenGuard? = nil, ticket: AuditTicket) async throws -> Int? {
        let mac = try recordMAC()
        let (event, uses) = try await pool.write { db -> (AuditEvent?, Int?) in
            var t = t
            try tokenGuard?.check(db)
            if let parent = t.parent, let left = try Int.fetchOne(db, sql: "SELECT uses_left FROM token WHERE accessor = ?", arguments: [parent]) {
                guard left > 0 else {
                    throw CofferError(.permissionDenied, "your token has no uses left to give to a token made from it")
                }
                if let asked = t.usesLeft, asked > left {
                    throw CofferError(.permissionDenied, "your token has \(left) uses left; a token made from it cannot have more",
                                      hint: "ask for --uses \(left) or fewer")
                }
                t.usesLeft = t.usesLeft ?? left
            }
            try db.execute(sql: """
                INSERT INTO token (accessor, hash, parent, roles, paths, name, created_at, expires_at, uses_left, uses,
                                   bound_uid, created_uid, created_user, revoked_at, authenticated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, NULL, ?)
                """, arguments: [t.accessor, t.hash, t.parent, t.roles.joined(separator: "\n"), t.paths.joined(separator: "\n"),
                                 t.name, t.createdAt, t.expiresAt, t.usesLeft, t.boundUID.map { Int64($0) },
                                 Int64(t.createdUID), t.createdUser, t.authenticatedAt])
            try Store.sealTokens(db, mac, [t.accessor])
            return (try self.commit(ticket, db), t.usesLeft)
        }
        if let event { ticket.markCommitted(event) }
        return uses
    }

    /// The token with this hash, checked against its MAC.
    public func token(hash: Data) throws -> TokenRecord? {
        try pool.read { db in
            guard let row = try Row.fetchOne(db.cachedStatement(sql: "SELECT * FROM token WHERE hash = ?"), arguments: [hash]) else { return nil }
            try self.checkToken(row)
            return Store.tokenRecord(row)
        }
    }

    /// The token with this accessor, checked against its MAC.
    public func token(accessor: String) throws -> TokenRecord? {
        try pool.read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM token WHERE accessor = ?", arguments: [accessor]) else { return nil }
            try self.checkToken(row)
            return Store.tokenRecord(row)
        }
    }

    /// Whether a token with this accessor exists (unchecked: a revocation, which only
    /// takes away, goes ahead on a database whose records are suspect).
    public func tokenExists(accessor: String) throws -> Bool {
        try pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM token WHERE accessor = ?", arguments: [accessor]) ?? 0 > 0 }
    }

    /// Live and recently ended tokens, newest first (bounded).
    public func tokens(limit: Int) throws -> [TokenRecord] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM token ORDER BY created_at DESC, accessor LIMIT ?", arguments: [limit]).map(Store.tokenRecord)
        }
    }

    /// Takes one use of a limited token atomically: true if a use was left. Exact
    /// under concurrency (one writer; the decrement is conditional).
    /// The ticket is the request's: the use is recorded in its event (committed by
    /// group commit with the request's outcome).
    /// Every limited token of a chain gives one use, or none does (one transaction):
    /// a token made from a limited token spends its parent's uses too, so a tree of
    /// tokens never does more than its root allowed.
    public func consumeTokenUse(accessors: [String], ticket: AuditTicket) async throws -> Bool {
        let mac = try recordMAC()
        return try await pool.write { db in
            for a in accessors {
                // the count spent is the one the MAC vouches for
                guard let row = try Row.fetchOne(db, sql: "SELECT * FROM token WHERE accessor = ?", arguments: [a]) else { throw TokenUsesSpent() }
                try self.checkToken(row)
                try db.execute(sql: "UPDATE token SET uses_left = uses_left - 1, uses = uses + 1 WHERE accessor = ? AND uses_left > 0",
                               arguments: [a])
                guard db.changesCount == 1 else { throw TokenUsesSpent() }
                try Store.sealTokens(db, mac, [a])
            }
            return true
        }
    }

    /// Revokes a token and every token created from it (recursively). Returns the
    /// accessors newly revoked.
    public func revokeToken(accessor: String, now: Int64, guard tokenGuard: TokenGuard? = nil, ticket: AuditTicket) async throws -> [String] {
        let mac = try recordMAC()
        let (revoked, event) = try await pool.write { db -> ([String], AuditEvent?) in
            try tokenGuard?.check(db)
            let tree = try String.fetchAll(db, sql: """
                WITH RECURSIVE tree(a) AS (
                    SELECT accessor FROM token WHERE accessor = ?
                    UNION SELECT t.accessor FROM token t JOIN tree ON t.parent = tree.a
                )
                SELECT a FROM tree
                """, arguments: [accessor])
            let valid = try Store.validTokens(db, mac, tree)
            var revoked: [String] = []
            for a in tree {
                try db.execute(sql: "UPDATE token SET revoked_at = ? WHERE accessor = ? AND revoked_at IS NULL", arguments: [now, a])
                if db.changesCount == 1 { revoked.append(a) }
            }
            // revoked either way; MACed again only where the MAC held (no laundering)
            try Store.sealTokens(db, mac, revoked.filter { valid.contains($0) })
            return (revoked, try self.commit(ticket, db))
        }
        if let event { ticket.markCommitted(event) }
        return revoked
    }
}

/// A limited token of the chain had no use left.
public struct TokenUsesSpent: Error {}

extension Store {
    static let reapCondition = "(expires_at < ?1 OR (revoked_at IS NOT NULL AND revoked_at < ?1))"

    /// Tokens that ended (expired or revoked) before `cutoff`, and have no child that
    /// has not.
    public func reapableTokens(before cutoff: Int64) throws -> Int {
        try pool.read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM token WHERE \(Store.reapCondition)", arguments: [cutoff]) ?? 0
        }
    }

    /// Deletes them (a background job's write: its ticket names `system:reaper`).
    public func reapTokens(before cutoff: Int64, ticket: AuditTicket) async throws -> Int {
        let mac = try recordMAC()
        let (n, event) = try await pool.write { db -> (Int, AuditEvent?) in
            let reaped = """
                SELECT accessor FROM token WHERE \(Store.reapCondition)
                  AND accessor NOT IN (SELECT parent FROM token WHERE parent IS NOT NULL AND NOT \(Store.reapCondition))
                """
            // their elevation requests lose the link (ON DELETE SET NULL): MACed again below
            let requests = try String.fetchAll(db, sql: "SELECT id FROM elevation_request WHERE token_accessor IN (\(reaped))", arguments: [cutoff])
                .filter { try Store.validElevation(db, mac, $0) }
            try db.execute(sql: "DELETE FROM token WHERE accessor IN (\(reaped))", arguments: [cutoff])
            let n = db.changesCount
            for id in requests { try Store.sealElevation(db, mac, id) }
            ticket.update { $0.path = "tokens:\(n)" }
            return (n, try self.commit(ticket, db))
        }
        if let event { ticket.markCommitted(event) }
        return n
    }
}
