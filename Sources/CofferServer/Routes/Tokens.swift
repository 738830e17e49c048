import CofferAPI
import CofferCore
import CofferEngine
import CofferStore
import Foundation
import Hummingbird

/// /v1/tokens: mint, list, look up and revoke scoped tokens.
extension APIResponder {
    static let tokenEndpoints: [Endpoint] = [
        Endpoint("token", .exact("/v1/tokens"), [
            .init(.get, "token_list") { r, i throws(CofferError) in try await r.listTokens(i) },
            .init(.post, "token_create") { r, i throws(CofferError) in try await r.createToken(i) },
        ]),
        Endpoint("token_lookup", .prefix("/v1/tokens/", suffix: "", param: .accessor), [
            .init(.get, "token_lookup") { r, i throws(CofferError) in try await r.lookupToken(i) },
        ]),
        Endpoint("token_revoke", .prefix("/v1/tokens/", suffix: "/revoke", param: .accessor), [
            .init(.post, "token_revoke") { r, i throws(CofferError) in try await r.revokeToken(i) },
        ]),
    ]

    func listTokens(_ i: RouteInput) async throws(CofferError) -> Response {
        try noQuery(i.request, allowed: [])
        let list = try await engine.listTokens(try i.caller, ticket: i.ticket)
        return ErrorMapping.json(TokenListResponse(tokens: list.map { tokenInfo($0) }))
    }

    /// Only a caller holding some role (or a valid token) may mint; the body is parsed
    /// inside the gate's work, after that decision.
    func createToken(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let created = try await engine.gate.perform(i.ticket, principal, .status, nil, named: "token_create") { g async throws(CofferError) in
            guard let body: CreateTokenRequest = try await decodeBody(i.request, i.context, required: true) else {
                throw CofferError(.invalidJSON, "a JSON body is required")
            }
            var ttl: Int?
            if let t = body.ttl {
                guard let secs = DurationText.seconds(t) else {
                    throw CofferError(.invalidParameter, "ttl must be a duration like \"30m\" or \"1h\"")
                }
                ttl = secs
            }
            return try await engine.tokens.create(g, .init(
                roles: body.roles, ttlSeconds: ttl, uses: body.uses, bindUID: body.bindUID, paths: body.paths ?? [], name: body.name))
        }
        return ErrorMapping.json(CreateTokenResponse(token: created.token, info: tokenInfo(created.record)))
    }

    func lookupToken(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        if i.param == "self" { return ErrorMapping.json(selfInfo(principal)) }
        return ErrorMapping.json(tokenInfo(try await engine.lookupToken(principal, accessor: i.param, ticket: i.ticket)))
    }

    func revokeToken(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        var target = i.param
        if target == "self" {
            guard let own = principal.token?.accessor else {
                throw CofferError(.invalidParameter, "no token was presented", hint: "set COFFER_TOKEN or --token-file")
            }
            target = own
        }
        return ErrorMapping.json(RevokeResponse(revoked: try await engine.revokeToken(principal, accessor: target, ticket: i.ticket)))
    }

    /// What a caller learns about itself: uid, groups, its token, its roles' rules.
    func selfInfo(_ p: Principal) -> SelfResponse {
        let (roles, record) = engine.selfInfo(p)
        return SelfResponse(uid: p.uid, user: p.userName, groups: p.groupNames, token: record.map { tokenInfo($0) },
                            roles: roles.map { SelfResponse.RoleInfo(name: $0.name, maxTTL: $0.maxTTL.map(DurationText.format), rules: $0.rules.map(\.name)) })
    }

    func tokenInfo(_ t: TokenRecord) -> TokenInfo {
        let now = engine.nowMillis()
        let state = t.revokedAt != nil ? "revoked" : now >= t.expiresAt ? "expired" : t.usesLeft == 0 ? "exhausted" : "active"
        return TokenInfo(
            accessor: t.accessor, name: t.name, roles: t.roles, paths: t.paths, parent: t.parent,
            createdAt: Timestamp.string(millis: t.createdAt), createdBy: CreatedBy(uid: t.createdUID, user: t.createdUser),
            expiresAt: Timestamp.string(millis: t.expiresAt), ttlRemainingSeconds: max(0, Int((t.expiresAt - now) / 1000)),
            usesLeft: t.usesLeft, uses: t.uses, boundUID: t.boundUID, state: state,
            authenticatedAt: t.authenticatedAt.map { Timestamp.string(millis: $0) })
    }

}
