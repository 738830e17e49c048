import CofferAPI
import CofferCore
import CofferEngine
import Foundation
import HTTPTypes
import Hummingbird
import Synchronization
import NIOCore

/// /v1/sys: health, status, policy reload and explain.
extension APIResponder {
    static let sysEndpoints: [Endpoint] = [
        // Health answers anyone, before any identity work, and is not audited: it must
        // answer while the audit trail cannot.
        Endpoint("health", .exact("/v1/sys/health"), [
            .init(.get, "health", audited: false, needsPrincipal: false, now: { r, i throws(CofferError) in try r.health(i) }),
            .init(.head, "health", audited: false, needsPrincipal: false, now: { r, i throws(CofferError) in try r.health(i) }),
        ]),
        Endpoint("status", .exact("/v1/sys/status"), [.init(.get, "status") { r, i throws(CofferError) in try await r.status(i) }]),
        Endpoint("metrics", .exact("/v1/sys/metrics"), [.init(.get, "metrics") { r, i throws(CofferError) in try await r.metrics(i) }]),
        Endpoint("policy_reload", .exact("/v1/sys/policy/reload"), [
            .init(.post, "policy_reload") { r, i throws(CofferError) in try await r.reloadPolicy(i) },
        ]),
        Endpoint("policy_explain", .exact("/v1/sys/policy/explain"), [
            .init(.post, "policy_explain") { r, i throws(CofferError) in try await r.explain(i) },
        ]),
    ]

    func status(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let s = try await engine.status(principal, ticket: i.ticket)
        let d = engine.decide(principal, .status, nil)
        var status = StatusResponse(
            version: CofferVersion.string, sealed: false, devMode: settings.config.devMode,
            uptimeSeconds: Int(s.uptimeSeconds), secrets: s.secrets, keyID: s.keyID, activeKeyID: s.activeKeyID,
            durability: settings.config.durability.rawValue, maxValueBytes: engine.limits.maxValueBytes,
            maxVersions: engine.limits.maxVersions,
            caller: .init(pid: principal.pid, uid: principal.uid, gid: principal.gid, user: principal.userName, groups: principal.groups),
            decision: d.rule)
        status.unseal = s.holderMode
        status.records = engine.recordsStatus
        if let r = s.rotation {
            status.rotation = RotationInfo(rootKeyID: s.keyID, targetKeyID: r.targetKeyID, done: r.done, total: r.total, finished: false)
        }
        return ErrorMapping.json(status)
    }

    /// Prometheus text format (capability metrics).
    func metrics(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let counts = try await engine.liveCounts(principal, ticket: i.ticket)
        return Self.metricsResponse(CofferMetrics.scrape(counts))
    }

    static func metricsResponse(_ bytes: [UInt8]) -> Response {
        ErrorMapping.bytes(bytes, contentType: "text/plain; version=0.0.4; charset=utf-8")
    }

    func reloadPolicy(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let p = try await engine.reloadPolicy(principal, ticket: i.ticket)
        return ErrorMapping.json(PolicyReloadResponse(source: p.source, roles: p.roles.keys.sorted(), bindings: p.bindings.count))
    }

    func explain(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        // one decision, then the body: nothing of it is parsed for a caller who is no admin
        let (subject, e) = try await engine.gate.perform(i.ticket, principal, .admin, nil, named: "policy_explain") { g async throws(CofferError) in
            guard let body: ExplainRequest = try await decodeBody(i.request, i.context, required: true) else {
                throw CofferError(.invalidJSON, "a JSON body is required")
            }
            let subject = try Subject(body.subject)
            guard let cap = Capability(rawValue: body.capability) else {
                throw CofferError(.invalidParameter, "unknown capability '\(body.capability.prefix(32))'",
                                  hint: Capability.allCases.map(\.rawValue).joined(separator: ", "))
            }
            return (subject, try engine.explanation(g, as: subject, capability: cap, path: body.path))
        }
        return ErrorMapping.json(ExplainResponse(subject: subject.description, uid: e.subject.uid == UInt32.max - 1 ? nil : e.subject.uid,
                                                 roles: e.roles, allowed: e.decision.allowed, rule: e.decision.rule,
                                                 elevation: e.elevation.isEmpty ? nil : e.elevation))
    }

    func health(_ i: RouteInput) throws(CofferError) -> ErrorMapping.Answer {
        try noQuery(i.request, allowed: [])
        let h = engine.health
        let audit = !h.auditEnabled ? "disabled" : h.degraded.map { "unavailable: \($0)" } ?? "ok"
        let key = [h.degraded == nil ? "ok" : "degraded", audit, h.mirror, h.notify]
        // the same state gives the same bytes: encoded once per change, not per probe
        if let body = Self.healthBody.withLock({ $0.key == key ? $0.body : nil }) {
            return ErrorMapping.Answer(head: HTTPResponse(status: .ok, headerFields: [.contentType: "application/json"]), body: body)
        }
        let answer = ErrorMapping.jsonAnswer(HealthResponse(status: key[0], sealed: false, version: CofferVersion.string,
                                                            audit: audit, auditMirror: h.mirror, notify: h.notify))
        Self.healthBody.withLock { $0 = (key, answer.body) }
        return answer
    }

    static let healthBody = Mutex<(key: [String], body: ByteBuffer)>(([], ByteBuffer()))
}
