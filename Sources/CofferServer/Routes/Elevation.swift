import CofferAPI
import CofferCore
import CofferEngine
import CofferStore
import Foundation
import Hummingbird

/// /v1/elevation: time-boxed elevation requests, reviews, activation and ending.
extension APIResponder {
    static func elevationAction(_ suffix: String, _ name: String, _ handler: @escaping Endpoint.Handler) -> Endpoint {
        Endpoint(name, .prefix("/v1/elevation/requests/", suffix: "/" + suffix, param: .accessor), [.init(.post, name, handler)])
    }

    static let elevationEndpoints: [Endpoint] = [
        Endpoint("elevation_requests", .exact("/v1/elevation/requests"), [
            .init(.post, "elevation_request") { r, i throws(CofferError) in try await r.elevationRequest(i) },
            .init(.get, "elevation_list") { r, i throws(CofferError) in try await r.elevationList(i) },
        ]),
        Endpoint("elevation_show", .prefix("/v1/elevation/requests/", suffix: "", param: .accessor), [
            .init(.get, "elevation_show") { r, i throws(CofferError) in try await r.elevationShow(i) },
        ]),
        elevationAction("approve", "elevation_approve") { r, i throws(CofferError) in try await r.elevationReview(i, .approve) },
        elevationAction("deny", "elevation_deny") { r, i throws(CofferError) in try await r.elevationReview(i, .deny) },
        elevationAction("cancel", "elevation_cancel") { r, i throws(CofferError) in try await r.elevationSimple(i, "elevation_cancel") },
        elevationAction("activate", "elevation_activate") { r, i throws(CofferError) in try await r.elevationActivate(i) },
        elevationAction("end", "elevation_end") { r, i throws(CofferError) in try await r.elevationSimple(i, "elevation_end") },
        elevationAction("revoke", "elevation_revoke") { r, i throws(CofferError) in try await r.elevationRevoke(i) },
        elevationAction("ack", "elevation_ack") { r, i throws(CofferError) in try await r.elevationAck(i) },
        Endpoint("elevation_report", .exact("/v1/elevation/report"), [
            .init(.get, "elevation_report") { r, i throws(CofferError) in try await r.elevationReport(i) },
        ]),
    ]

    func elevationAck(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let e = try await engine.gate.perform(i.ticket, principal, .elevate, nil, named: "elevation_ack") { g async throws(CofferError) in
            try await noBody(i.request, i.context)
            return try await engine.elevation.ack(g, id: i.param, isAdmin: isAdmin(principal))
        }
        return ErrorMapping.json(elevationInfo(e))
    }

    /// Access reviews: the audit capability (who held what is audit material).
    func elevationReport(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: ["since"])
        let r = try await engine.gate.perform(i.ticket, principal, .audit, nil, named: "elevation_report") { g async throws(CofferError) in
            let since = try i.request.uri.queryParameters["since"].map { v throws(CofferError) in try Self.parseTime(String(v), "since") }
            return try engine.elevation.report(g, since: since)
        }
        return ErrorMapping.json(ElevationReportResponse(
            held: r.lines.map { .init(role: $0.role, user: $0.user, activations: $0.activations, heldSeconds: $0.heldSeconds, approvers: $0.approvers) },
            unreviewedBreakGlass: r.unreviewedBreakGlass.map(elevationInfo)))
    }

    func elevationInfo(_ e: ElevationRecord) -> ElevationInfo {
        func t(_ v: Int64?) -> String? { v.map { Timestamp.string(millis: $0) } }
        var info = ElevationInfo(
            id: e.id, role: e.role, state: e.state.rawValue, requester: .init(uid: e.requesterUID, user: e.requesterUser), reason: e.reason,
            ticket: e.ticket, durationSeconds: e.durationSeconds, createdAt: Timestamp.string(millis: e.createdAt),
            pendingUntil: Timestamp.string(millis: e.pendingUntil), approvalsNeeded: e.approvalsNeeded, approvals: e.approvals,
            denialsNeeded: e.denialsNeeded, denials: e.denials, approvedAt: t(e.approvedAt), activatedAt: t(e.activatedAt), endsAt: t(e.endsAt),
            closedAt: t(e.closedAt), closedBy: e.closedBy, closeReason: e.closeReason,
            reviews: e.reviews.map { .init(reviewer: .init(uid: $0.uid, user: $0.user), verdict: $0.approve ? "approve" : "deny", comment: $0.comment,
                                           at: Timestamp.string(millis: $0.at)) },
            grants: engine.elevation.grants(of: e.role).map { .init(path: $0.pattern.rawValue, capabilities: $0.capabilities.map(\.rawValue).sorted(),
                                                                    effect: $0.effect.rawValue) })
        info.breakGlass = e.breakGlass
        info.ackedAt = t(e.ackedAt)
        info.ackedBy = e.ackedBy
        return info
    }

    func isAdmin(_ p: Principal) -> Bool { engine.decide(p, .admin, nil).allowed }

    func elevationRequest(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let e = try await engine.gate.perform(i.ticket, principal, .elevate, nil, named: "elevation_request") { g async throws(CofferError) in
            guard let body: ElevationRequestBody = try await decodeBody(i.request, i.context, required: true) else {
                throw CofferError(.invalidJSON, "a JSON body is required")
            }
            guard let secs = DurationText.seconds(body.duration) else {
                throw CofferError(.invalidParameter, "duration must be like \"30m\" or \"1h\"")
            }
            return try await engine.elevation.request(g, .init(role: body.role, durationSeconds: secs, reason: body.reason, ticket: body.ticket,
                                                               breakGlass: body.breakGlass ?? false))
        }
        return ErrorMapping.json(elevationInfo(e))
    }

    func elevationList(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: ["state", "mine", "user", "role", "since"])
        let list = try await engine.gate.perform(i.ticket, principal, .elevate, nil, named: "elevation_list") { g async throws(CofferError) in
            let q = i.request.uri.queryParameters
            let state = q["state"].map(String.init) ?? "open"
            guard state == "open" || state == "all" else { throw CofferError(.invalidParameter, "state must be open or all") }
            let mine = q["mine"].map(String.init) ?? "false"
            guard mine == "true" || mine == "false" else { throw CofferError(.invalidParameter, "mine must be true or false") }
            if q["user"] != nil || q["role"] != nil || q["since"] != nil {
                // history: every request, filtered
                guard state == "all", mine == "false" else { throw CofferError(.invalidParameter, "user, role and since go with state=all") }
                let since = try q["since"].map { v throws(CofferError) in try Self.parseTime(String(v), "since") }
                return try engine.elevation.history(g, since: since, user: q["user"].map { String($0.prefix(256)) },
                                                    role: q["role"].map { String($0.prefix(64)) }, isAdmin: isAdmin(principal))
            }
            return try engine.elevation.list(g, openOnly: state == "open", mine: mine == "true", isAdmin: isAdmin(principal))
        }
        return ErrorMapping.json(ElevationListResponse(requests: list.map(elevationInfo), truncated: list.count >= 1000 ? true : nil))
    }

    func elevationShow(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let e = try await engine.gate.perform(i.ticket, principal, .elevate, nil, named: "elevation_show") { g async throws(CofferError) in
            try engine.elevation.show(g, id: i.param, isAdmin: isAdmin(principal))
        }
        return ErrorMapping.json(elevationInfo(e))
    }

    func elevationReview(_ i: RouteInput, _ verdict: ElevationService.Verdict) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let name = verdict == .approve ? "elevation_approve" : "elevation_deny"
        let e = try await engine.gate.perform(i.ticket, principal, .elevate, nil, named: name) { g async throws(CofferError) in
            let body: ElevationActionBody? = try await decodeBody(i.request, i.context, required: false)
            if body?.reason != nil { throw CofferError(.unknownField, "a review takes a comment, not a reason") }
            return try await engine.elevation.review(g, id: i.param, verdict, comment: body?.comment)
        }
        return ErrorMapping.json(elevationInfo(e))
    }

    func elevationSimple(_ i: RouteInput, _ name: String) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let e = try await engine.gate.perform(i.ticket, principal, .elevate, nil, named: name) { g async throws(CofferError) in
            try await noBody(i.request, i.context)
            return name == "elevation_cancel" ? try await engine.elevation.cancel(g, id: i.param)
                : try await engine.elevation.close(g, id: i.param, asAdmin: false, reason: nil)
        }
        return ErrorMapping.json(elevationInfo(e))
    }

    func elevationActivate(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let (e, created) = try await engine.gate.perform(i.ticket, principal, .elevate, nil, named: "elevation_activate") { g async throws(CofferError) in
            try await noBody(i.request, i.context)
            return try await engine.elevation.activate(g, id: i.param)
        }
        return ErrorMapping.json(ElevationActivateResponse(request: elevationInfo(e), token: created.token, info: tokenInfo(created.record)))
    }

    func elevationRevoke(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let e = try await engine.gate.perform(i.ticket, principal, .admin, nil, named: "elevation_revoke") { g async throws(CofferError) in
            let body: ElevationActionBody? = try await decodeBody(i.request, i.context, required: true)
            if body?.comment != nil { throw CofferError(.unknownField, "revoke takes a reason, not a comment") }
            return try await engine.elevation.close(g, id: i.param, asAdmin: true, reason: body?.reason)
        }
        return ErrorMapping.json(elevationInfo(e))
    }
}
