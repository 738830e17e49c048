import CofferAPI
import CofferAuth
import CofferCore
import CofferEngine
import Foundation
import Hummingbird

/// /v1/auth: sign-in through PAM with the caller's own account, and sign-out.
extension APIResponder {
    static let authEndpoints: [Endpoint] = [
        Endpoint("auth_login", .exact("/v1/auth/login"), [.init(.post, "auth_login") { r, i throws(CofferError) in try await r.loginStart(i) }]),
        Endpoint("auth_login_answer", .prefix("/v1/auth/login/", suffix: "", param: .accessor), [
            .init(.post, "auth_login") { r, i throws(CofferError) in try await r.loginAnswer(i) },
        ]),
        Endpoint("auth_logout", .exact("/v1/auth/logout"), [.init(.post, "auth_logout") { r, i throws(CofferError) in try await r.logout(i) }]),
    ]

    func loginStart(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let step = try await engine.gate.perform(i.ticket, principal, .signIn, nil, named: "auth_login") { g async throws(CofferError) in
            try await noBody(i.request, i.context)  // the account is the peer's: nothing to say
            return try await engine.login.start(g)
        }
        return loginResponse(step)
    }

    func loginAnswer(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let step = try await engine.gate.perform(i.ticket, principal, .signIn, nil, named: "auth_login") { g async throws(CofferError) in
            guard let body: LoginAnswerRequest = try await decodeBody(i.request, i.context, required: true) else {
                throw CofferError(.invalidJSON, "a JSON body is required")
            }
            return try await engine.login.answer(g, id: i.param, answers: body.answers)
        }
        return loginResponse(step)
    }

    func loginResponse(_ step: LoginService.Step) -> Response {
        switch step {
        case .prompts(let id, let prompts):
            return ErrorMapping.json(LoginResponse(loginID: id, prompts: prompts.map { LoginPrompt(style: $0.style.rawValue, text: $0.text) },
                                                   token: nil, info: nil))
        case .signedIn(let created):
            return ErrorMapping.json(LoginResponse(loginID: nil, prompts: nil, token: created.token, info: tokenInfo(created.record)))
        }
    }

    /// Ends the session the request carries (its token and every token made from it).
    func logout(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        guard let token = principal.token else {
            throw CofferError(.invalidParameter, "no session token given", hint: "coffer logout uses the session file coffer login wrote")
        }
        let revoked = try await engine.revokeToken(principal, accessor: token.accessor, ticket: i.ticket)
        return ErrorMapping.json(RevokeResponse(revoked: revoked))
    }
}
