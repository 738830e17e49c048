public import CofferAudit
public import CofferCore
public import CofferStore
import Foundation
import Logging

/// Reading, verifying, exporting and pruning the audit trail, behind the gate.
public final class AuditTrail: Sendable {
    let store: Store
    let log: AuditLog
    let tokens: TokenService
    let errors: StoreErrorMapper
    let logger: Logger

    init(store: Store, log: AuditLog, tokens: TokenService, errors: StoreErrorMapper, logger: Logger) {
        self.store = store
        self.log = log
        self.tokens = tokens
        self.errors = errors
        self.logger = logger
    }

    public func events(_ g: Grant, _ filter: AuditFilter) throws(CofferError) -> [AuditEvent] {
        try errors.call { try store.auditEvents(filter) }
    }

    public func actions(_ g: Grant) throws(CofferError) -> Set<String> {
        try errors.call { try store.auditActions() }
    }

    /// Signs the current head, then walks the whole chain (with the anchor and the
    /// MACs: only the daemon can check those).
    /// Also gives the seqs of the newest checkpoints (what a prune takes).
    /// Every instance's chain is verified; a problem names its instance (nil: the one
    /// chain of a SQLite store). The checkpoints listed are this instance's.
    public func verify(_ g: Grant) async throws(CofferError) -> (verdict: AuditVerdict, instance: String?, latestCheckpoints: [Int64]) {
        // A trail that cannot be signed (tampered) is still verified, to name the problem.
        _ = try? log.checkpointNow()
        let chain = try errors.call { try store.auditChain() }
        let registered = try errors.call { try store.auditInstances() }
        let own = store.chain
        let v = AuditVerifier.verifyAll(events: chain.events, checkpoints: chain.checkpoints, publicKey: log.publicKey,
                                        own: own, anchor: log.anchor, mac: log.mac, registered: registered)
        return (v.verdict, v.instance, chain.checkpoints.filter { $0.chain == own }.suffix(10).map(\.seq))
    }

    /// This daemon's instance id ("" on SQLite).
    public var instance: String { store.chain }

    /// Signs the current head first, so that an archive ends with a checkpoint.
    public func export(_ g: Grant) async throws(CofferError) -> (events: [AuditEvent], checkpoints: [AuditCheckpoint]) {
        try log.checkpointNow()
        return try errors.call { try store.auditChain() }
    }

    /// Removes events up to a checkpoint; the head anchor records it first.
    public func prune(_ g: Grant, through seq: Int64) async throws(CofferError) -> Int {
        guard seq >= 1 else { throw CofferError(.invalidParameter, "through_seq must be a checkpoint's sequence number (1 or more)") }
        let log = self.log
        let p = g.principal
        let n = try await errors.call {
            try await store.pruneAudit(throughCheckpoint: seq, guard: tokens.guardFor(p), ticket: g.ticket) { s in try log.recordPrune(through: s) }
        }
        logger.notice("audit trail pruned", metadata: ["audit.through": "\(seq)", "audit.removed": "\(n)", "peer.uid": "\(p.uid)"])
        return n
    }

    public var publicKey: [UInt8] { log.publicKey }
}
