import CofferAudit
public import CofferCore
public import CofferStore
import Foundation

/// Tokens and policy: the use cases behind /v1/tokens and /v1/sys/policy.
extension SecretEngine {
    /// Resolves the caller: the kernel's peer credentials, plus a token's grant when
    /// one is presented (its roles then replace the peer's).
    public func principal(pid: Int32, uid: UInt32, gid: UInt32, token: String?) async throws(CofferError) -> Principal {
        var p = principals.principal(pid: pid, uid: uid, gid: gid)
        AuditScope.current?.update { $0.peerUser = p.userName }
        if let token {
            p.token = try await tokens.authenticate(token, peerUID: uid, now: SecretEngine.nowMillis())
            AuditScope.current?.update { $0.tokenAccessor = p.token?.accessor }
        }
        return p
    }

    public func createToken(_ p: Principal, _ req: TokenService.Request) async throws(CofferError) -> TokenService.Created {
        try await tokens.create(by: p, req, now: SecretEngine.nowMillis())
    }

    /// Self (accessor nil, or the caller's own) needs nothing; anyone else's needs admin.
    public func lookupToken(_ p: Principal, accessor: String) throws(CofferError) -> TokenRecord {
        if accessor != p.token?.accessor { try authorize(p, .admin, nil) }
        guard let t = try storeCall({ try store.token(accessor: accessor) }) else {
            throw CofferError(.notFound, "no token with accessor \(accessor.prefix(64))")
        }
        return t
    }

    public func listTokens(_ p: Principal) throws(CofferError) -> [TokenRecord] {
        try authorize(p, .admin, nil)
        return try storeCall { try store.tokens(limit: 1000) }
    }

    /// Revokes a token and its descendants: one's own token, or any with admin.
    public func revokeToken(_ p: Principal, accessor: String) async throws(CofferError) -> [String] {
        if accessor != p.token?.accessor { try authorize(p, .admin, nil) }
        guard try storeCall({ try store.token(accessor: accessor) }) != nil else {
            throw CofferError(.notFound, "no token with accessor \(accessor.prefix(64))")
        }
        defer { tokens.cache.clear() }  // a revoked token must stop working at once
        let revoked = try await storeCall { try await store.revokeToken(accessor: accessor, now: SecretEngine.nowMillis(), guard: tokenGuard(p), audit: auditScopeForWrite()) }
        logger.info("token revoked", metadata: ["token.accessor": "\(accessor)", "peer.uid": "\(p.uid)", "token.cascade": "\(revoked.count)"])
        return revoked
    }

    public func reloadPolicy(_ p: Principal) throws(CofferError) -> Policy {
        try authorize(p, .admin, nil)
        return try policies.reload()
    }

    public struct Explanation: Sendable {
        public var subject: Principal
        public var roles: [String]
        public var decision: Decision
    }

    /// The decision the live policy would make for a subject, touching no secret.
    public func explain(_ p: Principal, as subject: Subject, capability: Capability, path: String) throws(CofferError) -> Explanation {
        try authorize(p, .admin, nil)
        guard let who = principals.principal(as: subject) else {
            throw CofferError(.notFound, "no such \(subject)")
        }
        let target: String
        if path.isEmpty || path == "/" { target = "" } else { target = try SecretPath(path).rawValue }
        let policy = policies.policy
        let roles = policy.roleNames(for: who)
        return Explanation(subject: who, roles: roles, decision: policy.decide(roles: roles, capability: capability, path: target))
    }
}
