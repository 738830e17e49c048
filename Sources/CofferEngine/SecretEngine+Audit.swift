public import CofferAudit
public import CofferCore
public import CofferStore
import Foundation

/// Reading, verifying and pruning the audit trail (capability `audit`).
extension SecretEngine {
    public func auditEvents(_ p: Principal, _ filter: AuditFilter) throws(CofferError) -> [AuditEvent] {
        try authorize(p, .audit, nil)
        return try storeCall { try store.auditEvents(filter) }
    }

    /// Signs the current head, then walks the whole chain.
    public func auditVerify(_ p: Principal) async throws(CofferError) -> AuditVerdict {
        try authorize(p, .audit, nil)
        // A trail that cannot be signed (tampered) is still verified, to name the problem.
        _ = try? audit.checkpointNow()
        let chain = try storeCall { try store.auditChain() }
        return AuditVerifier.verify(events: chain.events, checkpoints: chain.checkpoints, publicKey: audit.publicKey,
                                    anchor: audit.anchor, mac: audit.mac)
    }

    /// Signs the current head first, so that an archive ends with a checkpoint.
    public func auditExport(_ p: Principal) async throws(CofferError) -> (events: [AuditEvent], checkpoints: [AuditCheckpoint]) {
        try authorize(p, .audit, nil)
        try audit.checkpointNow()
        return try storeCall { try store.auditChain() }
    }

    /// Removes events up to a checkpoint (needs audit and admin); the remaining
    /// chain still verifies from that checkpoint.
    public func auditPrune(_ p: Principal, through seq: Int64) async throws(CofferError) -> Int {
        try authorize(p, .audit, nil)
        try authorize(p, .admin, nil)
        guard seq >= 1 else { throw CofferError(.invalidParameter, "through_seq must be a checkpoint's sequence number (1 or more)") }
        let log = audit
        let n = try await storeCall {
            try await store.pruneAudit(throughCheckpoint: seq, guard: tokenGuard(p)) { s in try log.recordPrune(through: s) }
        }
        logger.notice("audit trail pruned", metadata: ["audit.through": "\(seq)", "audit.removed": "\(n)", "peer.uid": "\(p.uid)"])
        return n
    }

    public func auditPublicKey(_ p: Principal) throws(CofferError) -> [UInt8] {
        try authorize(p, .audit, nil)
        return audit.publicKey
    }
}
