public import CofferAudit
public import CofferCore
import Foundation

/// A request for time-boxed elevation, as stored (kept after it ends: history).
public struct ElevationRecord: Sendable, Equatable {
    public enum State: String, Sendable, CaseIterable {
        case pending, approved, active, ended, expired, revoked, denied, cancelled
        public var isOpen: Bool { self == .pending || self == .approved || self == .active }
    }

    public struct Review: Sendable, Equatable {
        public var uid: UInt32
        public var user: String?
        public var approve: Bool
        public var comment: String?
        public var at: Int64
        public init(uid: UInt32, user: String?, approve: Bool, comment: String?, at: Int64) {
            self.uid = uid
            self.user = user
            self.approve = approve
            self.comment = comment
            self.at = at
        }
    }

    public var id: String
    public var role: String
    public var requesterUID: UInt32
    public var requesterUser: String?
    public var reason: String?
    public var ticket: String?
    public var durationSeconds: Int
    public var state: State
    public var createdAt: Int64
    public var pendingUntil: Int64
    public var approvalsNeeded: Int
    public var denialsNeeded: Int
    public var breakGlass: Bool
    public var approvedAt: Int64?
    public var activatedAt: Int64?
    public var endsAt: Int64?
    public var closedAt: Int64?
    public var closedBy: String?
    public var closeReason: String?
    public var tokenAccessor: String?
    /// A break-glass activation's after-the-fact review.
    public var ackedAt: Int64?
    public var ackedBy: String?
    public var reviews: [Review] = []

    public init(id: String, role: String, requesterUID: UInt32, requesterUser: String?, reason: String?, ticket: String?,
                durationSeconds: Int, state: State, createdAt: Int64, pendingUntil: Int64, approvalsNeeded: Int, denialsNeeded: Int,
                breakGlass: Bool) {
        self.id = id
        self.role = role
        self.requesterUID = requesterUID
        self.requesterUser = requesterUser
        self.reason = reason
        self.ticket = ticket
        self.durationSeconds = durationSeconds
        self.state = state
        self.createdAt = createdAt
        self.pendingUntil = pendingUntil
        self.approvalsNeeded = approvalsNeeded
        self.denialsNeeded = denialsNeeded
        self.breakGlass = breakGlass
    }

    public var approvals: Int { reviews.filter(\.approve).count }
    public var denials: Int { reviews.filter { !$0.approve }.count }
}

/// Why a transition was refused inside its transaction (mapped to a CofferError by
/// the caller: the check and the change are one step).
public struct ElevationRefusal: Error, Sendable {
    public var code: CofferError.Code
    public var message: String
    public init(_ code: CofferError.Code, _ message: String) {
        self.code = code
        self.message = message
    }
}

extension Store {
    static func registerElevationMigration(_ m: inout DatabaseMigrator) {
        m.registerMigration("v8-elevation") { db in
            try db.execute(sql: """
                CREATE TABLE elevation_request (
                    id TEXT PRIMARY KEY NOT NULL,
                    role TEXT NOT NULL,
                    requester_uid INTEGER NOT NULL,
                    requester_user TEXT,
                    reason TEXT,
                    ticket TEXT,
                    duration_seconds INTEGER NOT NULL CHECK (duration_seconds >= 1),
                    state TEXT NOT NULL CHECK (state IN ('pending','approved','active','ended','expired','revoked','denied','cancelled')),
                    created_at INTEGER NOT NULL,
                    pending_until INTEGER NOT NULL,
                    approvals_needed INTEGER NOT NULL,
                    denials_needed INTEGER NOT NULL,
                    break_glass INTEGER NOT NULL DEFAULT 0,
                    approved_at INTEGER,
                    activated_at INTEGER,
                    ends_at INTEGER,
                    closed_at INTEGER,
                    closed_by TEXT,
                    close_reason TEXT,
                    token_accessor TEXT REFERENCES token(accessor) ON DELETE SET NULL
                ) STRICT;
                CREATE INDEX elevation_open ON elevation_request(state) WHERE state IN ('pending','approved','active');
                CREATE TABLE elevation_review (
                    request_id TEXT NOT NULL REFERENCES elevation_request(id),
                    reviewer_uid INTEGER NOT NULL,
                    reviewer_user TEXT,
                    verdict TEXT NOT NULL CHECK (verdict IN ('approve','deny')),
                    comment TEXT,
                    at INTEGER NOT NULL,
                    PRIMARY KEY (request_id, reviewer_uid)
                ) STRICT;
                ALTER TABLE token ADD COLUMN elevation_id TEXT;
                """)
        }
        m.registerMigration("v9-elevation-ack") { db in
            try db.execute(sql: """
                ALTER TABLE elevation_request ADD COLUMN acked_at INTEGER;
                ALTER TABLE elevation_request ADD COLUMN acked_by TEXT;
                """)
        }
    }

    /// The request with its reviews, checked against its MAC.
    func elevation(_ db: Database, _ id: String) throws -> ElevationRecord? {
        guard let r = try Row.fetchOne(db, sql: "SELECT * FROM elevation_request WHERE id = ?", arguments: [id]) else { return nil }
        try checkElevation(db, r)
        var e = ElevationRecord(
            id: r["id"], role: r["role"], requesterUID: UInt32(truncatingIfNeeded: r["requester_uid"] as Int64), requesterUser: r["requester_user"],
            reason: r["reason"], ticket: r["ticket"], durationSeconds: r["duration_seconds"],
            state: ElevationRecord.State(rawValue: r["state"]) ?? .revoked, createdAt: r["created_at"], pendingUntil: r["pending_until"],
            approvalsNeeded: r["approvals_needed"], denialsNeeded: r["denials_needed"], breakGlass: (r["break_glass"] as Int64) != 0)
        e.approvedAt = r["approved_at"]
        e.activatedAt = r["activated_at"]
        e.endsAt = r["ends_at"]
        e.closedAt = r["closed_at"]
        e.closedBy = r["closed_by"]
        e.closeReason = r["close_reason"]
        e.tokenAccessor = r["token_accessor"]
        e.ackedAt = r["acked_at"]
        e.ackedBy = r["acked_by"]
        e.reviews = try Row.fetchAll(db, sql: "SELECT * FROM elevation_review WHERE request_id = ? ORDER BY at, reviewer_uid", arguments: [id]).map {
            ElevationRecord.Review(uid: UInt32(truncatingIfNeeded: $0["reviewer_uid"] as Int64), user: $0["reviewer_user"],
                                   approve: ($0["verdict"] as String) == "approve", comment: $0["comment"], at: $0["at"])
        }
        return e
    }

    public func elevation(id: String) throws -> ElevationRecord? { try pool.read { db in try self.elevation(db, id) } }

    /// Requests, newest first: open ones, or all; for one requester, user or role; since a time.
    public func elevations(openOnly: Bool, requesterUID: UInt32?, user: String? = nil, role: String? = nil, since: Int64? = nil,
                           limit: Int = 1000) throws -> [ElevationRecord] {
        try pool.read { db in
            var sql = "SELECT id FROM elevation_request WHERE TRUE"
            var args: [any DatabaseValueConvertible] = []
            if openOnly { sql += " AND state IN ('pending','approved','active')" }
            if let u = requesterUID { sql += " AND requester_uid = ?"; args.append(Int64(u)) }
            if let u = user { sql += " AND requester_user = ?"; args.append(u) }
            if let r = role { sql += " AND role = ?"; args.append(r) }
            if let s = since { sql += " AND created_at >= ?"; args.append(s) }
            sql += " ORDER BY created_at DESC, id LIMIT ?"
            args.append(limit)
            return try String.fetchAll(db, sql: sql, arguments: StatementArguments(args)).compactMap { try self.elevation(db, $0) }
        }
    }

    public func insertElevation(_ e: ElevationRecord, ticket: AuditTicket) async throws {
        let mac = try recordMAC()
        let event = try await pool.write { db -> AuditEvent? in
            try db.execute(sql: """
                INSERT INTO elevation_request (id, role, requester_uid, requester_user, reason, ticket, duration_seconds, state, created_at,
                                               pending_until, approvals_needed, denials_needed, break_glass, approved_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [e.id, e.role, Int64(e.requesterUID), e.requesterUser, e.reason, e.ticket, e.durationSeconds, e.state.rawValue,
                                 e.createdAt, e.pendingUntil, e.approvalsNeeded, e.denialsNeeded, e.breakGlass ? 1 : 0, e.approvedAt])
            try Store.sealElevation(db, mac, e.id)
            return try self.commit(ticket, db)
        }
        if let event { ticket.markCommitted(event) }
    }

    /// One transition, checked and made in one transaction with its audit event:
    /// `decide` sees the request as it is now (and may throw ElevationRefusal) and
    /// returns what to write.
    public struct ElevationChange: Sendable {
        public var state: ElevationRecord.State?
        public var review: ElevationRecord.Review?
        public var approvedAt: Int64?
        public var pendingUntil: Int64?
        public var activatedAt: Int64?
        public var endsAt: Int64?
        public var closedAt: Int64?
        public var closedBy: String?
        public var closeReason: String?
        public var token: TokenRecord?
        public var ackedAt: Int64?
        public var ackedBy: String?
        /// Revoke the request's token and every token made from it.
        public var revokeToken: Bool = false
        public init() {}
    }

    public func changeElevation(id: String, now: Int64, ticket: AuditTicket,
                                decide: @escaping @Sendable (ElevationRecord) throws -> ElevationChange,
                                annotate: @escaping @Sendable (ElevationRecord) -> Void = { _ in }) async throws -> ElevationRecord {
        let mac = try recordMAC()
        let (after, event) = try await pool.write { db -> (ElevationRecord, AuditEvent?) in
            guard let before = try self.elevation(db, id) else { throw ElevationRefusal(.notFound, "no such elevation request") }
            let c = try decide(before)
            if let r = c.review {
                try db.execute(sql: "INSERT INTO elevation_review (request_id, reviewer_uid, reviewer_user, verdict, comment, at) VALUES (?, ?, ?, ?, ?, ?)",
                               arguments: [id, Int64(r.uid), r.user, r.approve ? "approve" : "deny", r.comment, r.at])
            }
            if let t = c.token {
                try db.execute(sql: """
                    INSERT INTO token (accessor, hash, parent, roles, paths, name, created_at, expires_at, uses_left, uses,
                                       bound_uid, created_uid, created_user, revoked_at, authenticated_at, elevation_id)
                    VALUES (?, ?, NULL, ?, '', ?, ?, ?, NULL, 0, ?, ?, ?, NULL, ?, ?)
                    """, arguments: [t.accessor, t.hash, t.roles.joined(separator: "\n"), t.name, t.createdAt, t.expiresAt,
                                     t.boundUID.map { Int64($0) }, Int64(t.createdUID), t.createdUser, t.authenticatedAt, id])
                try Store.sealTokens(db, mac, [t.accessor])
            }
            if c.revokeToken, let a = before.tokenAccessor {
                let tree = try String.fetchAll(db, sql: """
                    WITH RECURSIVE tree(a) AS (SELECT ? UNION SELECT t.accessor FROM token t JOIN tree ON t.parent = tree.a) SELECT a FROM tree
                    """, arguments: [a])
                let valid = try Store.validTokens(db, mac, tree)
                let revoked = try String.fetchAll(db, sql: """
                    WITH RECURSIVE tree(a) AS (SELECT ? UNION SELECT t.accessor FROM token t JOIN tree ON t.parent = tree.a)
                    UPDATE token SET revoked_at = ? WHERE accessor IN (SELECT a FROM tree) AND revoked_at IS NULL RETURNING accessor
                    """, arguments: [a, now])
                try Store.sealTokens(db, mac, revoked.filter { valid.contains($0) })
            }
            try db.execute(sql: """
                UPDATE elevation_request SET state = coalesce(?, state), approved_at = coalesce(?, approved_at),
                    pending_until = coalesce(?, pending_until),
                    activated_at = coalesce(?, activated_at), ends_at = coalesce(?, ends_at), closed_at = coalesce(?, closed_at),
                    closed_by = coalesce(?, closed_by), close_reason = coalesce(?, close_reason), token_accessor = coalesce(?, token_accessor),
                    acked_at = coalesce(?, acked_at), acked_by = coalesce(?, acked_by)
                WHERE id = ?
                """, arguments: [c.state?.rawValue, c.approvedAt, c.pendingUntil, c.activatedAt, c.endsAt, c.closedAt, c.closedBy, c.closeReason,
                                 c.token?.accessor, c.ackedAt, c.ackedBy, id])
            try Store.sealElevation(db, mac, id)
            let after = try self.elevation(db, id)!
            annotate(after)  // the event says what the transition made, in the same commit
            return (after, try self.commit(ticket, db))
        }
        if let event { ticket.markCommitted(event) }
        return after
    }

    /// Open requests whose time is up (pending past pending_until, active past ends_at).
    public func dueElevations(now: Int64) throws -> [String] {
        try pool.read { db in
            try String.fetchAll(db, sql: """
                SELECT id FROM elevation_request
                WHERE (state IN ('pending','approved') AND pending_until <= ?) OR (state = 'active' AND ends_at <= ?)
                   OR (state = 'active' AND token_accessor IN (SELECT accessor FROM token WHERE revoked_at IS NOT NULL))
                """, arguments: [now, now])
        }
    }

    /// The elevation a token was issued for (nil: none).
    public func elevationID(ofToken accessor: String) throws -> String? {
        try pool.read { db in try String.fetchOne(db, sql: "SELECT elevation_id FROM token WHERE accessor = ?", arguments: [accessor]) }
    }
}
