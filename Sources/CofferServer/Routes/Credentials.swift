import CofferAPI
import CofferCore
import CofferEngine
import Foundation
import Hummingbird

/// SSH certificates and JWTs for active elevations, the CA and JWKS that other
/// systems trust, and the SSH sessions the PAM hook registers.
extension APIResponder {
    static let credentialEndpoints: [Endpoint] = [
        // Public keys only: answered without identity work and not audited, like health.
        Endpoint("ssh_ca", .exact("/v1/ssh/ca"), [
            .init(.get, "ssh_ca", audited: false, needsPrincipal: false) { r, i throws(CofferError) in try r.sshCA(i) },
        ]),
        Endpoint("jwks", .exact("/v1/jwks"), [
            .init(.get, "jwks", audited: false, needsPrincipal: false) { r, i throws(CofferError) in try r.jwks(i) },
        ]),
        Endpoint("jwks_rotate", .exact("/v1/jwks/rotate"), [
            .init(.post, "jwks_rotate") { r, i throws(CofferError) in try await r.jwksRotate(i) },
        ]),
        Endpoint("ssh_sessions", .exact("/v1/ssh/sessions"), [
            .init(.post, "ssh_session_open") { r, i throws(CofferError) in try await r.sshSessionOpen(i) },
        ]),
        elevationAction("ssh", "ssh_sign") { r, i throws(CofferError) in try await r.sshSign(i) },
        elevationAction("jwt", "jwt_sign") { r, i throws(CofferError) in try await r.jwtSign(i) },
    ]

    func sshCA(_ i: RouteInput) throws(CofferError) -> Response {
        try noQuery(i.request, allowed: [])
        return ErrorMapping.json(SSHCAResponse(publicKey: engine.credentials.caLine, krlPath: engine.credentials.settings.krlPath))
    }

    func jwks(_ i: RouteInput) throws(CofferError) -> Response {
        try noQuery(i.request, allowed: [])
        let keys = try engine.credentials.jwks()
        return ErrorMapping.json(JWKSResponse(keys: keys.map { JWK(x: CredentialService.base64URL($0.publicKey), kid: $0.keyID) }))
    }

    func jwksRotate(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let kid = try await engine.gate.perform(i.ticket, principal, .admin, nil, named: "jwks_rotate") { g async throws(CofferError) in
            try await noBody(i.request, i.context)
            return try await engine.credentials.rotateJWTKey(g)
        }
        return ErrorMapping.json(JWKSRotateResponse(kid: kid))
    }

    func sshSign(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let c = try await engine.gate.perform(i.ticket, principal, .elevate, nil, named: "ssh_sign") { g async throws(CofferError) in
            guard let body: SSHSignRequest = try await decodeBody(i.request, i.context, required: true) else {
                throw CofferError(.invalidJSON, "a JSON body is required")
            }
            return try await engine.credentials.signSSH(g, id: i.param, publicKey: body.publicKey)
        }
        let cert = c.certificate
        return ErrorMapping.json(SSHCertificateResponse(
            certificate: c.line, serial: String(cert.serial), keyID: cert.keyID, principals: cert.principals,
            validAfter: Timestamp.string(millis: Int64(cert.validAfter) * 1000), validBefore: Timestamp.string(millis: Int64(cert.validBefore) * 1000),
            fingerprint: c.fingerprint))
    }

    func jwtSign(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let t = try await engine.gate.perform(i.ticket, principal, .elevate, nil, named: "jwt_sign") { g async throws(CofferError) in
            guard let body: JWTSignRequest = try await decodeBody(i.request, i.context, required: true) else {
                throw CofferError(.invalidJSON, "a JSON body is required")
            }
            let ttl = try body.ttl.map { v throws(CofferError) -> Int in
                guard let s = DurationText.seconds(v) else { throw CofferError(.invalidParameter, "ttl must be a duration like \"5m\"") }
                return s
            }
            return try await engine.credentials.signJWT(g, id: i.param, audience: body.audience, ttlSeconds: ttl)
        }
        return ErrorMapping.json(JWTResponse(token: t.token, jti: t.jti, kid: t.keyID, expiresAt: Timestamp.string(millis: t.expiresAt)))
    }

    func sshSessionOpen(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let r = try await engine.gate.perform(i.ticket, principal, .elevate, nil, named: "ssh_session_open") { g async throws(CofferError) in
            guard let body: SSHSessionRequest = try await decodeBody(i.request, i.context, required: true) else {
                throw CofferError(.invalidJSON, "a JSON body is required")
            }
            return try await engine.credentials.registerSession(g, certificate: body.certificate, user: body.user)
        }
        return ErrorMapping.json(SSHSessionResponse(tracked: r.tracked, elevationID: r.session?.elevationID, serial: r.session.map { String($0.serial) },
                                                    auditSession: r.session?.auditSession))
    }
}
