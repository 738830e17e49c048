import CofferAPI
import CofferAudit
import CofferCore
import CofferEngine
import CofferStore
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// What /v1/tokens answers about tokens and about the caller.
extension APIResponder {
    func selfInfo(_ p: Principal) -> SelfResponse {
        selfInfoBody(p)
    }

    func selfInfoBody(_ p: Principal) -> SelfResponse {
        let policy = engine.policies.policy
        let names = p.token?.roles ?? policy.roleNames(for: p)
        let roles = names.compactMap { policy.roles[$0] }.map { r in
            SelfResponse.RoleInfo(name: r.name, maxTTL: r.maxTTL.map(DurationText.format), rules: r.rules.map(\.name))
        }
        var token: TokenInfo?
        if let t = p.token, let rec = try? engine.store.token(accessor: t.accessor) { token = Self.tokenInfo(rec) }
        return SelfResponse(uid: p.uid, user: p.userName, groups: p.groupNames, token: token, roles: roles)
    }

    static func tokenInfo(_ t: TokenRecord) -> TokenInfo {
        let now = Int64((Date().timeIntervalSince1970 * 1000).rounded())
        let state = t.revokedAt != nil ? "revoked" : now >= t.expiresAt ? "expired" : t.usesLeft == 0 ? "exhausted" : "active"
        return TokenInfo(
            accessor: t.accessor, name: t.name, roles: t.roles, paths: t.paths, parent: t.parent,
            createdAt: Timestamp.string(millis: t.createdAt), createdBy: CreatedBy(uid: t.createdUID, user: t.createdUser),
            expiresAt: Timestamp.string(millis: t.expiresAt), ttlRemainingSeconds: max(0, Int((t.expiresAt - now) / 1000)),
            usesLeft: t.usesLeft, uses: t.uses, boundUID: t.boundUID, state: state)
    }

    func health(_ request: Request) throws(CofferError) -> Response {
        try allow(request.method, [.get, .head], "GET")
        try noQuery(request, allowed: [])
        let degraded = engine.audit.degradedReason
        let audit = !engine.audit.settings.enabled ? "disabled" : degraded.map { "unavailable: \($0)" } ?? "ok"
        let mirror = engine.audit.settings.mirror.isEmpty ? "off" : engine.audit.mirrorError.map { "failing: \($0)" } ?? "ok"
        return ErrorMapping.json(HealthResponse(status: degraded == nil ? "ok" : "degraded", unlocked: true, version: CofferVersion.string,
                                                audit: audit, auditMirror: mirror))
    }
}
