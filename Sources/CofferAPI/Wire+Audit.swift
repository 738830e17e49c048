public import CofferAudit

// Wire types of /v1/audit.

/// One line of `GET /v1/audit/export`: an event or a checkpoint.
public struct AuditExportLine: Codable, Sendable {
    public var event: AuditEvent?
    public var checkpoint: AuditCheckpoint?
    public init(event: AuditEvent) { self.event = event }
    public init(checkpoint: AuditCheckpoint) { self.checkpoint = checkpoint }
}

public struct AuditEventsResponse: Codable, Sendable {
    public var events: [AuditEvent]
    public var nextAfter: Int64?
    enum CodingKeys: String, CodingKey { case events, nextAfter = "next_after" }
    public init(events: [AuditEvent], nextAfter: Int64?) {
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
    /// The seqs of the newest signed checkpoints (at most 10): what `audit prune` takes.
    public var latestCheckpoints: [Int64]?
    public var badSeq: Int64?
    public var problem: String?
    /// The instance whose chain has the problem (absent: the one chain of a SQLite store).
    public var instance: String?
    enum CodingKeys: String, CodingKey {
        case ok, count, headSeq = "head_seq", headHash = "head_hash", checkpoints, latestCheckpoints = "latest_checkpoints", badSeq = "bad_seq", problem,
             instance
    }
    public init(ok: Bool, count: Int?, headSeq: Int64?, headHash: String?, checkpoints: Int?, badSeq: Int64?, problem: String?,
                latestCheckpoints: [Int64]? = nil) {
        self.ok = ok
        self.latestCheckpoints = latestCheckpoints
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
