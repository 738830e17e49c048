import CofferAudit
import CofferStore
public import CofferCore
import Foundation
import Logging

/// Store errors become CofferError; database details go to the log, not the caller.
/// A write the disk refuses is a write the audit trail cannot record: fail closed
/// with 503 audit_unavailable and mark the log degraded.
struct StoreErrorMapper: Sendable {
    let audit: AuditLog
    let logger: Logger

    func map(_ error: any Error) -> CofferError {
        if let e = error as? CofferError { return e }
        if let e = error as? AuditTrailChanged {
            audit.markTampered(e.message)
            return CofferError(.auditUnavailable, "the audit trail cannot record this request, so it was not served",
                               hint: "it was changed behind cofferd; see cofferd's health and log")
        }
        if case .unwritable = Store.classify(error) {
            let reason = AuditLog.describe(error)
            audit.writeFailed(reason)
            logger.error("database write failed", metadata: ["error": "\(reason)"])
            return CofferError(.auditUnavailable, "the audit trail cannot record this request, so it was not served",
                               hint: "see cofferd's health and log; it recovers by itself when the database can be written again")
        }
        logger.error("database error", metadata: ["error": "\(Store.describe(error))"])
        return CofferError(.storage, "the database could not complete the request")
    }

    func call<T>(_ body: () throws -> T) throws(CofferError) -> T {
        do { return try body() } catch { throw map(error) }
    }

    func call<T>(_ body: () async throws -> T) async throws(CofferError) -> T {
        do { return try await body() } catch { throw map(error) }
    }
}
