public import CofferAudit
public import CofferCore
import CofferCrypto
import Logging

/// What the gate hands to the work it lets through: who, the decision, and the
/// audit ticket every store write requires. Only the gate makes grants, so no
/// service function (and no store write) runs without having passed it.
public struct Grant: Sendable {
    public let principal: Principal
    public let decision: Decision
    public let ticket: AuditTicket

    fileprivate init(principal: Principal, decision: Decision, ticket: AuditTicket) {
        self.principal = principal
        self.decision = decision
        self.ticket = ticket
    }
}

/// The one way into the engine, for requests and background jobs alike:
/// principal → decision → (the decision recorded on the audit ticket) → work.
///
/// Where the event is committed: a state-changing work commits it in the same
/// transaction as the change (the store's writes take the ticket); everything else
/// is committed by whoever opened the ticket — the server, before any answer (a
/// read's value leaves only after its event is durable), or the gate itself for
/// calls made without one (background jobs, tests). `performAuditedFirst` commits
/// the event before the work runs, for work whose effect cannot be taken back
/// (a file written on a tmpfs).
public final class Gate: Sendable {
    let policies: PolicyStore
    let audit: AuditLog
    let clock: any WallClock
    let logger: Logger
    /// A shared database found changed under this daemon refuses every action.
    let coherence: SharedCoherence?

    init(policies: PolicyStore, audit: AuditLog, clock: any WallClock, logger: Logger, coherence: SharedCoherence? = nil) {
        self.coherence = coherence
        self.policies = policies
        self.audit = audit
        self.clock = clock
        self.logger = logger
    }

    /// A ticket for an event this process opens itself (a job, or a call with none).
    public func ticket(for p: Principal, action: String, path: String? = nil) -> AuditTicket {
        var draft = AuditEvent.draft(time: clock.nowMillis(), requestID: Hex.encode(Hashing.randomBytes(8)), peerPID: p.pid, peerUID: p.uid,
                                     method: p.systemJob == nil ? "-" : "JOB", action: action, path: path)
        draft.peerUser = p.userName
        draft.tokenAccessor = p.token?.accessor
        return AuditTicket(draft, enabled: audit.settings.enabled)
    }

    /// The decision alone, recorded on the ticket; throws unless it allows. The
    /// server uses it before it reads a body (nothing is parsed for a caller who may
    /// not reach the route).
    public func check(_ ticket: AuditTicket, _ p: Principal, _ action: Action, _ path: SecretPath?) throws(CofferError) -> Decision {
        let d = decide(p, action, path)
        ticket.decided(d)
        switch d.verdict {
        case .allow:
            try coherence?.guardShared()
            return d
        case .deny:
            logger.info("denied", metadata: [
                "peer.uid": "\(p.uid)", "peer.pid": "\(p.pid)", "action": "\(action.rawValue)",
                "secret.path": "\(path?.rawValue ?? "-")", "rule": "\(d.rule)",
            ])
            // The rule that decided depends on policy and identity only, never on what exists.
            throw CofferError(.permissionDenied, "permission denied", hint: "\(action.rawValue) for \(p.displayName): \(d.rule)")
        case .needsApproval(let n):
            throw CofferError(.approvalRequired, "this needs \(n) approval\(n == 1 ? "" : "s") first", hint: d.rule)
        case .needsFreshLogin(let s):
            throw CofferError(.freshLoginRequired, "sign in again: this needs a sign-in within the last \(s)s", hint: d.rule)
        }
    }

    func decide(_ p: Principal, _ action: Action, _ path: SecretPath?) -> Decision {
        if let job = p.systemJob { return .allow("system job \(job)") }  // set only by the daemon itself
        return policies.authorize(p, action, path)
    }

    /// Decide, then run the work with a grant. With no ticket, the gate opens one and
    /// commits its outcome event before returning (or throwing).
    /// The synchronous form, for the read path (no suspension, no thread hop): the
    /// caller's ticket is required, and the caller commits its event.
    public func performNow<T>(_ ticket: AuditTicket, _ p: Principal, _ action: Action, _ path: SecretPath?,
                              _ work: (Grant) throws(CofferError) -> T) throws(CofferError) -> T {
        let d = try check(ticket, p, action, path)
        return try work(Grant(principal: p, decision: d, ticket: ticket))
    }

    /// One request over many paths (an injection): each path needs one of `anyOf`
    /// (tried in order); the first path refused refuses the whole request, named in
    /// the error, and nothing is read. The work gets one grant and, per path, the
    /// action that allowed it.
    public func performEach<T>(_ ticket: AuditTicket, _ p: Principal, anyOf actions: [Action], _ paths: [SecretPath],
                               _ work: (Grant, [Action]) async throws(CofferError) -> T) async throws(CofferError) -> T {
        var chosen: [Action] = []
        let decide = PolicyEvaluator.decider(policies.policy, p)
        for path in paths {
            var first: Decision?
            var allowedBy: Action?
            for a in actions {
                let d = p.systemJob == nil ? decide(a, path) : .allow("system job")
                if d.allowed { allowedBy = a; break }
                if first == nil || first!.verdict == .deny { first = d }
            }
            guard let a = allowedBy else {
                let d = first ?? .deny("default deny")
                ticket.decided(d)
                ticket.update { $0.path = path.rawValue }
                logger.info("denied", metadata: [
                    "peer.uid": "\(p.uid)", "peer.pid": "\(p.pid)", "action": "\(actions.map(\.rawValue).joined(separator: "|"))",
                    "secret.path": "\(path.rawValue)", "rule": "\(d.rule)",
                ])
                switch d.verdict {
                case .needsApproval(let n):
                    throw CofferError(.approvalRequired, "\(path) needs \(n) approval\(n == 1 ? "" : "s") first", hint: d.rule)
                case .needsFreshLogin(let s):
                    throw CofferError(.freshLoginRequired, "\(path): sign in again: this needs a sign-in within the last \(s)s", hint: d.rule)
                default:
                    throw CofferError(.permissionDenied, "permission denied for \(path)",
                                      hint: "\(actions.map(\.rawValue).joined(separator: " or ")) for \(p.displayName): \(d.rule)")
                }
            }
            chosen.append(a)
        }
        let d = Decision.allow(paths.count == 1 ? "\(chosen[0].rawValue) \(paths[0])" : "each of \(paths.count) paths allowed (read or inject)")
        ticket.decided(d)
        return try await work(Grant(principal: p, decision: d, ticket: ticket), chosen)
    }

    /// Commits a request's event now, before work that cannot be taken back (a tmpfs
    /// mounted for the caller): the server's own settle then adds nothing.
    public func settleNow(_ t: AuditTicket) async throws(CofferError) {
        try await settle(t, status: 200, error: nil)
        t.markSettled()
    }

    public func perform<T>(_ ticket: AuditTicket?, _ p: Principal, _ action: Action, _ path: SecretPath?, named name: String? = nil,
                           _ work: (Grant) async throws(CofferError) -> T) async throws(CofferError) -> T {
        let own = ticket == nil
        let t = ticket ?? self.ticket(for: p, action: name ?? action.rawValue, path: path?.rawValue)
        do {
            let d = try check(t, p, action, path)
            let result = try await work(Grant(principal: p, decision: d, ticket: t))
            if own { try await settle(t, status: 200, error: nil) }
            return result
        } catch {
            if own { try? await settle(t, status: error.code.httpStatus, error: error) }
            throw error
        }
    }

    /// For work that cannot be undone: the decision's event is durable before the
    /// work starts ("decide, audit, then act"); the outcome follows as a second event
    /// (`NAME_done`) with the same request id.
    public func performAuditedFirst<T>(_ p: Principal, _ action: Action, _ path: SecretPath?, named name: String,
                                       annotate: ((inout AuditEvent) -> Void)? = nil,
                                       _ work: (Grant) async throws(CofferError) -> T) async throws(CofferError) -> T {
        let intent = ticket(for: p, action: name, path: path?.rawValue)
        if let annotate { intent.update(annotate) }
        let d: Decision
        do { d = try check(intent, p, action, path) } catch {
            try? await settle(intent, status: error.code.httpStatus, error: error)
            throw error
        }
        try await settle(intent, status: 202, error: nil)
        let outcome = ticket(for: p, action: name + "_done", path: path?.rawValue)
        outcome.update { $0.requestID = intent.draft.requestID }
        if let annotate { outcome.update(annotate) }
        outcome.decided(d)
        do {
            let result = try await work(Grant(principal: p, decision: d, ticket: outcome))
            try await settle(outcome, status: 200, error: nil)
            return result
        } catch {
            try? await settle(outcome, status: error.code.httpStatus, error: error)
            throw error
        }
    }

    /// A background job of the daemon (`system:NAME`): its own ticket, its event
    /// committed with its write (or after it).
    public func runAsSystem<T>(_ job: String, action: Action, named name: String,
                               _ work: (Grant) async throws(CofferError) -> T) async throws(CofferError) -> T {
        try await perform(nil, .system(job), action, nil, named: name, work)
    }

    /// Commits a ticket's outcome unless a transaction already did.
    /// `settle` for the event-loop request path: `completion` gets nil once the event
    /// is durable, or the error that must replace the answer (fail closed).
    func settle(_ t: AuditTicket, status: Int, error: CofferError?, completion: @escaping @Sendable (CofferError?) -> Void) {
        if t.settled { return completion(nil) }
        if let e = t.committed {
            audit.committedInTransaction(e)
            return completion(nil)
        }
        audit.append(t.finished(status: status, errorCode: error?.code.rawValue), completion: completion)
    }

    func settle(_ t: AuditTicket, status: Int, error: CofferError?) async throws(CofferError) {
        if t.settled { return }
        if let e = t.committed {
            audit.committedInTransaction(e)
            return
        }
        try await audit.append(t.finished(status: status, errorCode: error?.code.rawValue))
    }
}
