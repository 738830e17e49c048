public import CofferCore
import Synchronization

/// The audit event of one request or job as it takes shape: the server (or the
/// gate, for a background job) opens it with the caller and the route, the gate
/// records the decision, and either a state-changing transaction commits it with
/// the change (every store write takes a ticket: no state changes without its
/// event), or its opener hands it to group commit before anything is answered.
public final class AuditTicket: Sendable {
    struct State {
        var draft: AuditEvent
        var committed: AuditEvent?
        var settled = false
    }
    private let state: Mutex<State>
    /// false only when audit is switched off (benchmarking its cost): writes then
    /// append nothing.
    public let enabled: Bool

    public init(_ draft: AuditEvent, enabled: Bool = true) {
        state = Mutex(State(draft: draft, committed: nil))
        self.enabled = enabled
    }

    public var draft: AuditEvent { state.withLock { $0.draft } }
    public var committed: AuditEvent? { state.withLock { $0.committed } }

    /// Records how the request was decided.
    public func decided(_ d: Decision) {
        state.withLock {
            $0.draft.decision = AuditDecision(d)
            $0.draft.rule = d.rule
        }
    }

    public func update(_ body: (inout AuditEvent) -> Void) { state.withLock { body(&$0.draft) } }

    /// The event with its outcome filled in.
    public func finished(status: Int, errorCode: String?) -> AuditEvent {
        state.withLock {
            var e = $0.draft
            e.status = status
            e.outcome = AuditOutcome(status: status)
            e.errorCode = errorCode
            return e
        }
    }

    /// Committed early by its opener (`Gate.settleNow`): later settles add nothing.
    public var settled: Bool { state.withLock { $0.settled } }
    public func markSettled() { state.withLock { $0.settled = true } }

    /// Called after the transaction that carried the event committed.
    public func markCommitted(_ e: AuditEvent) { state.withLock { $0.committed = e } }
}
