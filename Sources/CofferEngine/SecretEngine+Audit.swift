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
        try audit.checkpointNow()
        let chain = try storeCall { try store.auditChain() }
        return AuditVerifier.verify(events: chain.events, checkpoints: chain.checkpoints, publicKey: audit.publicKey)
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
        let n = try await storeCall { try await store.pruneAudit(throughCheckpoint: seq) }
        logger.notice("audit trail pruned", metadata: ["audit.through": "\(seq)", "audit.removed": "\(n)", "peer.uid": "\(p.uid)"])
        return n
    }

    public func auditPublicKey(_ p: Principal) throws(CofferError) -> [UInt8] {
        try authorize(p, .audit, nil)
        return audit.publicKey
    }
}
