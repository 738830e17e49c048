// Wire types of /v1/audit.

/// One audit event on the wire.
public struct AuditEventWire: Codable, Sendable {
    public var seq: Int64
    public var time: String
    public var requestID: String
    public var peer: Peer
    public var tokenAccessor: String?
    public var method: String
    public var action: String
    public var path: String?
    public var decision: String
    public var rule: String?
    public var outcome: String
    public var status: Int
    public var errorCode: String?
    public var prevHash: String
    public var hash: String

    public struct Peer: Codable, Sendable {
        public var pid: Int32
        public var uid: UInt32
        public var user: String?
        public init(pid: Int32, uid: UInt32, user: String?) {
            self.pid = pid
            self.uid = uid
            self.user = user
        }
    }

    enum CodingKeys: String, CodingKey {
        case seq, time, requestID = "request_id", peer, tokenAccessor = "token_accessor", method, action, path, decision, rule,
             outcome, status, errorCode = "error_code", prevHash = "prev_hash", hash
    }

    public init(seq: Int64, time: String, requestID: String, peer: Peer, tokenAccessor: String?, method: String, action: String,
                path: String?, decision: String, rule: String?, outcome: String, status: Int, errorCode: String?, prevHash: String, hash: String) {
        self.seq = seq
        self.time = time
        self.requestID = requestID
        self.peer = peer
        self.tokenAccessor = tokenAccessor
        self.method = method
        self.action = action
        self.path = path
        self.decision = decision
        self.rule = rule
        self.outcome = outcome
        self.status = status
        self.errorCode = errorCode
        self.prevHash = prevHash
        self.hash = hash
    }
}

public struct AuditEventsResponse: Codable, Sendable {
    public var events: [AuditEventWire]
    public var nextAfter: Int64?
    enum CodingKeys: String, CodingKey { case events, nextAfter = "next_after" }
    public init(events: [AuditEventWire], nextAfter: Int64?) {
        self.events = events
        self.nextAfter = nextAfter
    }
}

public struct AuditVerifyResponse: Codable, Sendable {
    public var ok: Bool
    public var count: Int?
    public var headSeq: Int64?
    public var headHash: String?
    public var checkpoints: Int?
    public var badSeq: Int64?
    public var problem: String?
    enum CodingKeys: String, CodingKey {
        case ok, count, headSeq = "head_seq", headHash = "head_hash", checkpoints, badSeq = "bad_seq", problem
    }
    public init(ok: Bool, count: Int?, headSeq: Int64?, headHash: String?, checkpoints: Int?, badSeq: Int64?, problem: String?) {
        self.ok = ok
        self.count = count
        self.headSeq = headSeq
        self.headHash = headHash
        self.checkpoints = checkpoints
        self.badSeq = badSeq
        self.problem = problem
    }
}

public struct AuditPruneRequest: Codable, Sendable {
    public var throughSeq: Int64
    enum CodingKeys: String, CodingKey, CaseIterable { case throughSeq = "through_seq" }
    public init(throughSeq: Int64) { self.throughSeq = throughSeq }
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        throughSeq = try decoder.container(keyedBy: CodingKeys.self).decode(Int64.self, forKey: .throughSeq)
    }
}

public struct AuditPruneResponse: Codable, Sendable {
    public var removed: Int
    public init(removed: Int) { self.removed = removed }
}
