import CofferAudit
public import CofferCore
import CofferCrypto
public import CofferStore
import Foundation
import Logging
import Synchronization

/// Time-boxed elevation (PIM): an eligible caller asks for a role for a while, with
/// a reason; approvers review; the requester activates and gets a token carrying the
/// role for exactly the window; ending, revoking or expiry takes it back at once.
/// Every rule is checked inside the transaction that makes the transition, so
/// concurrent reviews count exactly and each transition is one event.
public final class ElevationService: Sendable {
    let store: Store
    let policies: PolicyStore
    let tokens: TokenService
    let errors: StoreErrorMapper
    let clock: any WallClock
    let logger: Logger
    public let notifier: Notifier

    let principals: PrincipalResolver
    static let maxOpenPerRequester = 16
    let closedObservers = Mutex<[@Sendable (ElevationRecord) -> Void]>([])

    /// Called after a transition that closed an active request (ended, revoked,
    /// expired): its credentials are revoked and its sessions ended.
    func observeClosed(_ f: @escaping @Sendable (ElevationRecord) -> Void) { closedObservers.withLock { $0.append(f) } }

    init(store: Store, policies: PolicyStore, tokens: TokenService, principals: PrincipalResolver, errors: StoreErrorMapper,
         clock: any WallClock, logger: Logger) {
        self.principals = principals
        self.notifier = Notifier(logger: logger)
        self.store = store
        self.policies = policies
        self.tokens = tokens
        self.errors = errors
        self.clock = clock
        self.logger = logger
    }

    public struct Request: Sendable {
        public var role: String
        public var durationSeconds: Int
        public var reason: String?
        public var ticket: String?
        /// Self-approval where the rule allows break-glass (with a reason), flagged for review.
        public var breakGlass: Bool
        public init(role: String, durationSeconds: Int, reason: String?, ticket: String?, breakGlass: Bool = false) {
            self.role = role
            self.durationSeconds = durationSeconds
            self.reason = reason
            self.ticket = ticket
            self.breakGlass = breakGlass
        }
    }

    func rule(_ role: String) throws(CofferError) -> ElevationRule {
        guard let r = policies.policy.elevations[role] else {
            throw CofferError(.notFound, "role '\(role.prefix(64))' cannot be asked for", hint: "the policy's [[elevation]] entries name the roles that can")
        }
        return r
    }

    /// The step-up check: a sign-in (PAM) within the rule's window, carried by the
    /// request's session token.
    func requireFreshLogin(_ p: Principal, _ rule: ElevationRule, now: Int64) throws(CofferError) {
        guard let window = rule.freshLoginSeconds else { return }
        guard let at = p.token?.authenticatedAt, now - at <= Int64(window) * 1000 else {
            throw CofferError(.freshLoginRequired, "sign in again: this needs a sign-in within the last \(DurationText.format(window))",
                              hint: "coffer login, then repeat (elevate commands use the session it keeps)")
        }
    }

    /// Free text shown to approvers: printable only (no control, format, line or
    /// paragraph separators — nothing that can steer a terminal or reorder text), not
    /// blank, at most `max` characters.
    static func text(_ s: String?, _ name: String, max: Int) throws(CofferError) -> String? {
        guard let s, !s.isEmpty else { return nil }
        let bad: Set<Unicode.GeneralCategory> = [.control, .format, .lineSeparator, .paragraphSeparator, .unassigned, .privateUse, .surrogate]
        guard s.count <= max, s.utf8.count <= max * 4, !s.unicodeScalars.contains(where: { bad.contains($0.properties.generalCategory) }) else {
            throw CofferError(.invalidParameter, "\(name) must be at most \(max) printable characters (no control or formatting characters)")
        }
        guard s.unicodeScalars.contains(where: { !$0.properties.isWhitespace && $0.properties.generalCategory != .spaceSeparator }) else {
            return nil  // blank: no text at all
        }
        return s
    }

    /// Approvals that still count: reviewers who are approvers of the role now.
    func standing(_ e: ElevationRecord, _ rule: ElevationRule) -> Int {
        e.reviews.filter { r in
            r.approve && rule.isApprover(principals.principal(pid: 0, uid: r.uid, gid: UInt32.max)) != nil
        }.count
    }

    public func request(_ g: Grant, _ req: Request) async throws(CofferError) -> ElevationRecord {
        let p = g.principal
        let now = clock.nowMillis()
        let rule = try rule(req.role)
        guard let via = rule.isEligible(p) else {
            throw CofferError(.permissionDenied, "you are not eligible for role '\(req.role)'", hint: "eligible: " + rule.eligible.map(\.description).joined(separator: ", "))
        }
        try requireFreshLogin(p, rule, now: now)
        guard req.durationSeconds >= 60, req.durationSeconds <= rule.maxDurationSeconds else {
            throw CofferError(.invalidParameter, "the duration must be 1m...\(DurationText.format(rule.maxDurationSeconds)) for role '\(req.role)'")
        }
        let reason = try Self.text(req.reason, "reason", max: 512)
        if req.breakGlass {
            guard rule.breakGlass else { throw CofferError(.permissionDenied, "role '\(req.role)' has no break-glass", hint: "ask for approval instead") }
            guard reason != nil else { throw CofferError(.invalidParameter, "break-glass needs a reason", hint: "--reason TEXT") }
        }
        if rule.reasonRequired && reason == nil { throw CofferError(.invalidParameter, "role '\(req.role)' needs a reason", hint: "--reason TEXT") }
        let ticket = try Self.text(req.ticket, "ticket", max: 128)
        if rule.ticketPattern != nil {
            guard let ticket, rule.ticketMatches(ticket) else {
                throw CofferError(.invalidParameter, "role '\(req.role)' needs a ticket matching \(rule.ticketPattern!)", hint: "--ticket OPS-123")
            }
        }
        let open = try errors.call { try store.elevations(openOnly: true, requesterUID: p.uid, limit: Self.maxOpenPerRequester + 1) }
        guard open.count < Self.maxOpenPerRequester else {
            throw CofferError(.permissionDenied, "you have \(open.count) open requests", hint: "cancel or finish some first")
        }
        var e = ElevationRecord(
            id: "el_" + Hex.encode(Hashing.randomBytes(8)), role: req.role, requesterUID: p.uid, requesterUser: p.userName, reason: reason,
            ticket: ticket, durationSeconds: req.durationSeconds, state: rule.approvals == 0 || req.breakGlass ? .approved : .pending, createdAt: now,
            pendingUntil: now + Int64(rule.pendingTTLSeconds) * 1000, approvalsNeeded: rule.approvals, denialsNeeded: rule.denials,
            breakGlass: req.breakGlass)
        if e.state == .approved { e.approvedAt = now }
        g.ticket.update {
            $0.path = e.id
            $0.details[AuditDetails.elevationID] = .text(e.id)
            $0.details["role"] = .text(e.role)
            $0.details["eligible_via"] = .text(via.description)
            if req.breakGlass { $0.details["break_glass"] = .text("self-approved; to be reviewed") }
            $0.details["duration_seconds"] = .number(Int64(req.durationSeconds))
            if let reason { $0.details["reason"] = .text(reason) }
            if let ticket { $0.details["ticket"] = .text(ticket) }
        }
        let record = e
        try await errors.call { try await store.insertElevation(record, ticket: g.ticket) }
        notify(e)
        logger.info("elevation requested", metadata: ["elevation.id": "\(e.id)", "role": "\(e.role)", "peer.uid": "\(p.uid)"])
        return e
    }

    public enum Verdict: Sendable { case approve, deny }

    public func review(_ g: Grant, id: String, _ verdict: Verdict, comment: String?) async throws(CofferError) -> ElevationRecord {
        let p = g.principal
        let now = clock.nowMillis()
        let comment = try Self.text(comment, "comment", max: 512)
        let policy = policies.policy
        let minimum: Int64 = now
        // who counts is decided now, outside the transaction (it reads the user database)
        // (reviews made concurrently come from current approvers: they count)
        let lost: Set<UInt32> = try errors.call { try store.elevation(id: id) }.flatMap { e in
            policy.elevations[e.role].map { rule in
                Set(e.reviews.filter { $0.approve && rule.isApprover(principals.principal(pid: 0, uid: $0.uid, gid: UInt32.max)) == nil }.map(\.uid))
            }
        } ?? []
        return try await change(g, id: id, now: now) { e throws(ElevationRefusal) in
            guard let rule = policy.elevations[e.role] else { throw ElevationRefusal(.permissionDenied, "role '\(e.role)' can no longer be asked for") }
            guard rule.isApprover(p) != nil || e.requesterUID == p.uid else { throw ElevationRefusal(.notFound, "no such elevation request") }
            guard e.requesterUID != p.uid else { throw ElevationRefusal(.permissionDenied, "you cannot review your own request") }
            guard e.state == .pending else { throw ElevationRefusal(.invalidParameter, "the request is \(e.state.rawValue), not pending") }
            guard e.pendingUntil > minimum else { throw ElevationRefusal(.invalidParameter, "the request expired") }
            guard !e.reviews.contains(where: { $0.uid == p.uid }) else { throw ElevationRefusal(.casMismatch, "you already reviewed this request") }
            do throws(CofferError) { try self.requireFreshLogin(p, rule, now: now) } catch { throw ElevationRefusal(error.code, error.message) }
            var c = Store.ElevationChange()
            c.review = .init(uid: p.uid, user: p.userName, approve: verdict == .approve, comment: comment, at: now)
            // approvals from reviewers who are no longer approvers do not count
            let approvals = e.reviews.filter { $0.approve && !lost.contains($0.uid) }.count + (verdict == .approve ? 1 : 0)
            let denials = e.denials + (verdict == .deny ? 1 : 0)
            if denials >= e.denialsNeeded {
                c.state = .denied
                c.closedAt = now
                c.closedBy = p.userName ?? "uid:\(p.uid)"
            } else if approvals >= e.approvalsNeeded {
                c.state = .approved
                c.approvedAt = now
                c.pendingUntil = now + Int64(rule.pendingTTLSeconds) * 1000  // a window to activate in
            }
            return c
        }
    }

    /// The after-the-fact review of a break-glass elevation: an approver of the role
    /// (not the requester) or an admin.
    public func ack(_ g: Grant, id: String, isAdmin: Bool) async throws(CofferError) -> ElevationRecord {
        let p = g.principal
        let now = clock.nowMillis()
        let policy = policies.policy
        return try await change(g, id: id, now: now) { e throws(ElevationRefusal) in
            let approver = policy.elevations[e.role]?.isApprover(p) != nil
            guard isAdmin || approver || e.requesterUID == p.uid else { throw ElevationRefusal(.notFound, "no such elevation request") }
            guard e.requesterUID != p.uid else { throw ElevationRefusal(.permissionDenied, "you cannot review your own break-glass") }
            guard isAdmin || approver else { throw ElevationRefusal(.permissionDenied, "only the role's approvers or an admin review break-glass") }
            guard e.breakGlass else { throw ElevationRefusal(.invalidParameter, "this was no break-glass elevation") }
            guard e.ackedAt == nil else { throw ElevationRefusal(.casMismatch, "already reviewed by \(e.ackedBy ?? "-")") }
            var c = Store.ElevationChange()
            c.ackedAt = now
            c.ackedBy = p.userName ?? "uid:\(p.uid)"
            return c
        }
    }

    public struct Report: Sendable {
        public struct Line: Sendable {
            public var role: String
            public var user: String
            public var activations: Int
            public var heldSeconds: Int
            public var approvers: [String]
        }
        public var lines: [Line]
        public var unreviewedBreakGlass: [ElevationRecord]
    }

    /// For access reviews: who held which role, how often, how long, approved by
    /// whom; break-glass activations not yet reviewed.
    public func report(_ g: Grant, since: Int64?) throws(CofferError) -> Report {
        let all = try errors.call { try store.elevations(openOnly: false, requesterUID: nil, since: since, limit: 100_000) }
        let now = clock.nowMillis()
        var lines: [String: Report.Line] = [:]
        for e in all {
            guard let start = e.activatedAt else { continue }
            let end = min(e.closedAt ?? e.endsAt ?? now, e.endsAt ?? now, now)
            let who = e.requesterUser ?? "uid:\(e.requesterUID)"
            var l = lines["\(e.role)\u{0}\(who)"] ?? Report.Line(role: e.role, user: who, activations: 0, heldSeconds: 0, approvers: [])
            l.activations += 1
            l.heldSeconds += Int(max(0, end - start) / 1000)
            for r in e.reviews where r.approve {
                let name = r.user ?? "uid:\(r.uid)"
                if !l.approvers.contains(name) { l.approvers.append(name) }
            }
            if e.breakGlass && !l.approvers.contains("break-glass") { l.approvers.append("break-glass") }
            lines["\(e.role)\u{0}\(who)"] = l
        }
        return Report(lines: lines.values.sorted { ($0.role, $0.user) < ($1.role, $1.user) },
                      unreviewedBreakGlass: all.filter { $0.breakGlass && $0.activatedAt != nil && $0.ackedAt == nil })
    }

    public func history(_ g: Grant, since: Int64?, user: String?, role: String?, isAdmin: Bool) throws(CofferError) -> [ElevationRecord] {
        let p = g.principal
        return try errors.call { try store.elevations(openOnly: false, requesterUID: nil, user: user, role: role, since: since) }
            .filter { visible(p, $0, isAdmin: isAdmin) }
    }

    public func cancel(_ g: Grant, id: String) async throws(CofferError) -> ElevationRecord {
        let p = g.principal
        let now = clock.nowMillis()
        return try await change(g, id: id, now: now) { e throws(ElevationRefusal) in
            guard e.requesterUID == p.uid else { throw ElevationRefusal(.notFound, "no such elevation request") }
            guard e.state == .pending || e.state == .approved else { throw ElevationRefusal(.invalidParameter, "the request is \(e.state.rawValue)") }
            var c = Store.ElevationChange()
            c.state = .cancelled
            c.closedAt = now
            c.closedBy = p.userName ?? "uid:\(p.uid)"
            return c
        }
    }

    /// The requester only: a token carrying the role, bound to the requester's uid,
    /// valid until the window ends. Returns the token (shown once).
    public func activate(_ g: Grant, id: String) async throws(CofferError) -> (ElevationRecord, TokenService.Created) {
        let p = g.principal
        let now = clock.nowMillis()
        let policy = policies.policy
        let token = TokenService.mint()
        let hash = tokens.hash(token)
        let accessor = "acc_" + Hex.encode(Hashing.randomBytes(12))
        // the event names the token it mints (the link outlives the token row)
        g.ticket.update { $0.details["token"] = .text(accessor) }
        let stillApproved = try errors.call { try store.elevation(id: id) }.flatMap { e in
            policy.elevations[e.role].map { e.breakGlass || e.approvalsNeeded == 0 || standing(e, $0) >= e.approvalsNeeded }
        } ?? false
        @Sendable func record(_ e: ElevationRecord, _ ends: Int64) -> TokenRecord {
            TokenRecord(accessor: accessor, hash: hash, parent: nil, roles: [e.role], paths: [], name: "elevation \(e.id)",
                        createdAt: now, expiresAt: ends, usesLeft: nil, uses: 0, boundUID: p.uid, createdUID: p.uid,
                        createdUser: p.userName, revokedAt: nil, authenticatedAt: p.token?.authenticatedAt, elevationID: e.id)
        }
        let e = try await change(g, id: id, now: now) { e throws(ElevationRefusal) in
            guard e.requesterUID == p.uid else { throw ElevationRefusal(.notFound, "no such elevation request") }
            guard e.state == .approved else { throw ElevationRefusal(.invalidParameter, "the request is \(e.state.rawValue), not approved") }
            guard stillApproved else {
                throw ElevationRefusal(.permissionDenied, "some approvers are no longer approvers of role '\(e.role)': ask again")
            }
            guard e.pendingUntil > now else { throw ElevationRefusal(.invalidParameter, "the request expired before it was activated") }
            guard let rule = policy.elevations[e.role], rule.isEligible(p) != nil else {
                throw ElevationRefusal(.permissionDenied, "you are no longer eligible for role '\(e.role)'")
            }
            do throws(CofferError) { try self.requireFreshLogin(p, rule, now: now) } catch { throw ElevationRefusal(error.code, error.message) }
            var c = Store.ElevationChange()
            let ends = now + Int64(min(e.durationSeconds, rule.maxDurationSeconds)) * 1000
            c.state = .active
            c.activatedAt = now
            c.endsAt = ends
            c.token = record(e, ends)
            return c
        }
        return (e, TokenService.Created(token: token, record: record(e, e.endsAt ?? now)))
    }

    /// The requester ends it early, or an admin revokes it (`asAdmin`, with a reason):
    /// the token and every token made from it stop at once.
    public func close(_ g: Grant, id: String, asAdmin: Bool, reason: String?) async throws(CofferError) -> ElevationRecord {
        let p = g.principal
        let now = clock.nowMillis()
        let why = try Self.text(reason, "reason", max: 512)
        if asAdmin && why == nil { throw CofferError(.invalidParameter, "revoking needs a reason", hint: "--reason TEXT") }
        defer { tokens.cache.clear() }
        return try await change(g, id: id, now: now) { e throws(ElevationRefusal) in
            if asAdmin {
                guard e.state.isOpen else { throw ElevationRefusal(.invalidParameter, "the request is \(e.state.rawValue)") }
            } else {
                guard e.requesterUID == p.uid else { throw ElevationRefusal(.notFound, "no such elevation request") }
                guard e.state == .active else { throw ElevationRefusal(.invalidParameter, "the request is \(e.state.rawValue), not active") }
            }
            var c = Store.ElevationChange()
            c.state = asAdmin ? .revoked : .ended
            c.closedAt = now
            c.closedBy = p.userName ?? "uid:\(p.uid)"
            c.closeReason = why
            c.revokeToken = true
            return c
        }
    }

    /// The daemon's job: pending and approved requests past their window expire, and
    /// active ones past their end (their token has expired with them; it is revoked too).
    func expire(_ g: Grant, id: String) async throws(CofferError) -> ElevationRecord {
        let now = clock.nowMillis()
        defer { tokens.cache.clear() }
        // read before the transaction (no read inside a write)
        let revoked = (try? store.elevation(id: id)).flatMap { $0 }.map { tokenRevoked($0) } ?? false
        return try await change(g, id: id, now: now) { e throws(ElevationRefusal) in
            var c = Store.ElevationChange()
            c.closedAt = now
            c.closedBy = "system:elevation"
            if e.state == .active, revoked {
                // its token was revoked directly: the window is over
                c.state = .ended
                c.closeReason = "its token was revoked"
                c.revokeToken = true
                return c
            }
            let due = (e.state == .pending || e.state == .approved) ? e.pendingUntil <= now : e.state == .active && (e.endsAt ?? 0) <= now
            guard due else { throw ElevationRefusal(.invalidParameter, "not due") }
            c.state = .expired
            c.revokeToken = e.state == .active
            return c
        }
    }

    func due() throws(CofferError) -> [String] { try errors.call { try store.dueElevations(now: clock.nowMillis()) } }

    func tokenRevoked(_ e: ElevationRecord) -> Bool {
        guard let a = e.tokenAccessor, let t = try? store.token(accessor: a) else { return false }
        return t.revokedAt != nil
    }

    /// What a caller may see: its own requests, those it may review, or all (admin).
    public func visible(_ p: Principal, _ e: ElevationRecord, isAdmin: Bool) -> Bool {
        isAdmin || e.requesterUID == p.uid || policies.policy.elevations[e.role]?.isApprover(p) != nil
    }

    public func list(_ g: Grant, openOnly: Bool, mine: Bool, isAdmin: Bool) throws(CofferError) -> [ElevationRecord] {
        let p = g.principal
        let all = try errors.call { try store.elevations(openOnly: openOnly, requesterUID: mine ? p.uid : nil) }
        return all.filter { visible(p, $0, isAdmin: isAdmin) }
    }

    public func show(_ g: Grant, id: String, isAdmin: Bool) throws(CofferError) -> ElevationRecord {
        guard let e = try errors.call({ try store.elevation(id: id) }), visible(g.principal, e, isAdmin: isAdmin) else {
            throw CofferError(.notFound, "no such elevation request")
        }
        return e
    }

    /// One JSON document per state change for the rule's hooks (never a token).
    func notify(_ e: ElevationRecord) {
        guard let hooks = policies.policy.elevations[e.role]?.notify, !hooks.isEmpty else { return }
        var doc: [String: Any] = [
            "request_id": e.id, "role": e.role, "state": e.state.rawValue, "duration_seconds": e.durationSeconds,
            "requester": ["uid": Int(e.requesterUID), "user": e.requesterUser ?? ""],
            "reviews": e.reviews.map { ["reviewer": $0.user ?? "uid:\($0.uid)", "verdict": $0.approve ? "approve" : "deny", "comment": $0.comment ?? ""] },
            "at": Timestamp.string(millis: clock.nowMillis()),
        ]
        if let r = e.reason { doc["reason"] = r }
        if let t = e.ticket { doc["ticket"] = t }
        if let end = e.endsAt { doc["ends_at"] = Timestamp.string(millis: end) }
        guard let data = try? JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
        notifier.post(hooks, Array(data) + [0x0A])
    }

    /// Whether any elevation rule has hooks (health says "off" otherwise).
    public var hooksConfigured: Bool { policies.policy.elevations.values.contains { !$0.notify.isEmpty } }

    /// The rules a role grants (what approvers see).
    public func grants(of role: String) -> [Policy.Rule] { policies.policy.roles[role]?.rules ?? [] }

    func change(_ g: Grant, id: String, now: Int64,
                _ decide: @escaping @Sendable (ElevationRecord) throws(ElevationRefusal) -> Store.ElevationChange) async throws(CofferError) -> ElevationRecord {
        guard id.hasPrefix("el_"), id.utf8.count <= 64 else { throw CofferError(.notFound, "no such elevation request") }
        g.ticket.update {
            $0.path = id
            $0.details[AuditDetails.elevationID] = .text(id)
        }
        do {
            let ticket = g.ticket
            let e = try await store.changeElevation(id: id, now: now, ticket: ticket, decide: { e in try decide(e) }, annotate: { e in
                ticket.update {
                    $0.details["state"] = .text(e.state.rawValue)
                    $0.details["role"] = .text(e.role)
                    let approvers = e.reviews.filter(\.approve).map { $0.user ?? "uid:\($0.uid)" }
                    if !approvers.isEmpty { $0.details[AuditDetails.approvers] = .list(approvers) }
                }
            })
            logger.info("elevation changed", metadata: ["elevation.id": "\(id)", "state": "\(e.state.rawValue)", "peer.uid": "\(g.principal.uid)"])
            notify(e)
            if e.activatedAt != nil, !e.state.isOpen { for f in closedObservers.withLock({ $0 }) { f(e) } }
            return e
        } catch let r as ElevationRefusal {
            throw CofferError(r.code, r.message)
        } catch {
            throw errors.map(error)
        }
    }
}
