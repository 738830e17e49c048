public import CofferCore
import Synchronization

/// The audit event of one request as it takes shape: the server opens it with the
/// caller and the route, the engine adds the decision, and either a state-changing
/// transaction commits it with the change, or the server hands it to group commit.
public final class AuditScope: Sendable {
    struct State {
        var draft: AuditEvent
        var committed: AuditEvent?
    }
    private let state: Mutex<State>

    /// The scope of the request being handled (set by the server around each request).
    @TaskLocal public static var current: AuditScope?

    public init(_ draft: AuditEvent) { state = Mutex(State(draft: draft, committed: nil)) }

    public var draft: AuditEvent { state.withLock { $0.draft } }
    public var committed: AuditEvent? { state.withLock { $0.committed } }

    /// Records what the request turned out to be and how it was decided.
    public func decided(_ d: Decision, action: String? = nil, path: String? = nil) {
        state.withLock {
            $0.draft.decision = d.allowed ? "allow" : "deny"
            $0.draft.rule = d.rule
            if let action { $0.draft.action = action }
            if let path { $0.draft.path = path }
        }
    }

    public func update(_ body: (inout AuditEvent) -> Void) { state.withLock { body(&$0.draft) } }

    /// The event with its outcome filled in.
    public func finished(status: Int, errorCode: String?) -> AuditEvent {
        state.withLock {
            var e = $0.draft
            e.status = status
            e.outcome = (200..<300).contains(status) ? "ok" : "error"
            e.errorCode = errorCode
            return e
        }
    }

    /// Called after the transaction that carried the event committed.
    public func markCommitted(_ e: AuditEvent) { state.withLock { $0.committed = e } }
}
