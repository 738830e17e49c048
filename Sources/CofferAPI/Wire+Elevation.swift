public import Foundation

// Wire types of /v1/elevation.

public struct ElevationRequestBody: Codable, Sendable {
    public var role: String
    /// A duration like "1h".
    public var duration: String
    public var reason: String?
    public var ticket: String?
    public var breakGlass: Bool?
    enum CodingKeys: String, CodingKey, CaseIterable { case role, duration, reason, ticket, breakGlass = "break_glass" }
    public init(role: String, duration: String, reason: String?, ticket: String?, breakGlass: Bool? = nil) {
        self.role = role
        self.duration = duration
        self.reason = reason
        self.ticket = ticket
        self.breakGlass = breakGlass
    }
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        role = try c.decode(String.self, forKey: .role)
        duration = try c.decode(String.self, forKey: .duration)
        reason = try c.decodeIfPresent(String.self, forKey: .reason)
        ticket = try c.decodeIfPresent(String.self, forKey: .ticket)
        breakGlass = try c.decodeIfPresent(Bool.self, forKey: .breakGlass)
    }
}

/// approve, deny (`comment`), revoke (`reason`): all optional but revoke's reason.
public struct ElevationActionBody: Codable, Sendable {
    public var comment: String?
    public var reason: String?
    enum CodingKeys: String, CodingKey, CaseIterable { case comment, reason }
    public init(comment: String? = nil, reason: String? = nil) {
        self.comment = comment
        self.reason = reason
    }
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        comment = try c.decodeIfPresent(String.self, forKey: .comment)
        reason = try c.decodeIfPresent(String.self, forKey: .reason)
    }
}

public struct ElevationInfo: Codable, Sendable {
    public struct Person: Codable, Sendable {
        public var uid: UInt32
        public var user: String?
        public init(uid: UInt32, user: String?) {
            self.uid = uid
            self.user = user
        }
    }
    public struct Review: Codable, Sendable {
        public var reviewer: Person
        public var verdict: String
        public var comment: String?
        public var at: String
        public init(reviewer: Person, verdict: String, comment: String?, at: String) {
            self.reviewer = reviewer
            self.verdict = verdict
            self.comment = comment
            self.at = at
        }
    }
    public struct Grant: Codable, Sendable {
        public var path: String
        public var capabilities: [String]
        public var effect: String
        public init(path: String, capabilities: [String], effect: String) {
            self.path = path
            self.capabilities = capabilities
            self.effect = effect
        }
    }

    public var id: String
    public var role: String
    public var state: String
    public var requester: Person
    public var reason: String?
    public var ticket: String?
    public var durationSeconds: Int
    public var createdAt: String
    public var pendingUntil: String
    public var approvalsNeeded: Int
    public var approvals: Int
    public var denialsNeeded: Int
    public var denials: Int
    public var approvedAt: String?
    public var activatedAt: String?
    public var endsAt: String?
    public var closedAt: String?
    public var closedBy: String?
    public var closeReason: String?
    public var reviews: [Review]
    public var breakGlass: Bool = false
    public var ackedAt: String?
    public var ackedBy: String?
    /// What the role grants (from the policy): what approvers approve.
    public var grants: [Grant]

    enum CodingKeys: String, CodingKey {
        case id, role, state, requester, reason, ticket, durationSeconds = "duration_seconds", createdAt = "created_at",
             pendingUntil = "pending_until", approvalsNeeded = "approvals_needed", approvals, denialsNeeded = "denials_needed", denials,
             approvedAt = "approved_at", activatedAt = "activated_at", endsAt = "ends_at", closedAt = "closed_at", closedBy = "closed_by",
             closeReason = "close_reason", reviews, grants, breakGlass = "break_glass", ackedAt = "acked_at", ackedBy = "acked_by"
    }

    public init(id: String, role: String, state: String, requester: Person, reason: String?, ticket: String?, durationSeconds: Int,
                createdAt: String, pendingUntil: String, approvalsNeeded: Int, approvals: Int, denialsNeeded: Int, denials: Int,
                approvedAt: String?, activatedAt: String?, endsAt: String?, closedAt: String?, closedBy: String?, closeReason: String?,
                reviews: [Review], grants: [Grant]) {
        self.id = id
        self.role = role
        self.state = state
        self.requester = requester
        self.reason = reason
        self.ticket = ticket
        self.durationSeconds = durationSeconds
        self.createdAt = createdAt
        self.pendingUntil = pendingUntil
        self.approvalsNeeded = approvalsNeeded
        self.approvals = approvals
        self.denialsNeeded = denialsNeeded
        self.denials = denials
        self.approvedAt = approvedAt
        self.activatedAt = activatedAt
        self.endsAt = endsAt
        self.closedAt = closedAt
        self.closedBy = closedBy
        self.closeReason = closeReason
        self.reviews = reviews
        self.grants = grants
    }
}

public struct ElevationReportResponse: Codable, Sendable {
    public struct Line: Codable, Sendable {
        public var role: String
        public var user: String
        public var activations: Int
        public var heldSeconds: Int
        public var approvers: [String]
        enum CodingKeys: String, CodingKey { case role, user, activations, heldSeconds = "held_seconds", approvers }
        public init(role: String, user: String, activations: Int, heldSeconds: Int, approvers: [String]) {
            self.role = role
            self.user = user
            self.activations = activations
            self.heldSeconds = heldSeconds
            self.approvers = approvers
        }
    }
    public var held: [Line]
    public var unreviewedBreakGlass: [ElevationInfo]
    enum CodingKeys: String, CodingKey { case held, unreviewedBreakGlass = "unreviewed_break_glass" }
    public init(held: [Line], unreviewedBreakGlass: [ElevationInfo]) {
        self.held = held
        self.unreviewedBreakGlass = unreviewedBreakGlass
    }
}

public struct ElevationListResponse: Codable, Sendable {
    public var requests: [ElevationInfo]
    /// true when the list stopped at its limit (the newest 1000): narrow it.
    public var truncated: Bool?
    public init(requests: [ElevationInfo], truncated: Bool? = nil) {
        self.requests = requests
        self.truncated = truncated
    }
}

/// `POST /v1/elevation/requests/{id}/activate`: the token, shown once.
public struct ElevationActivateResponse: Codable, Sendable {
    public var request: ElevationInfo
    public var token: String
    public var info: TokenInfo
    public init(request: ElevationInfo, token: String, info: TokenInfo) {
        self.request = request
        self.token = token
        self.info = info
    }
}
