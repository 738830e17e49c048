public import CofferCore
public import CofferCrypto
public import CofferStore
import CofferAudit
import Foundation
import Logging

/// Scoped tokens for build jobs (invariant 5): 256 random bits shown once, stored
/// only as keyed BLAKE2b hashes, compared in constant time, revocable by accessor
/// with their descendants, only ever narrower than their creator.
public final class TokenService: Sendable {
    public static let prefix = "cfr_"
    public static let defaultTTL = 3600
    public static let maxTTL = 30 * 86400

    let store: Store
    let hashKey: SecretBytes
    let policies: PolicyStore
    let errors: StoreErrorMapper
    let principals: PrincipalResolver
    let clock: any WallClock
    let logger: Logger
    let cache = TokenCache()
    /// Other instances' changes (PostgreSQL): checked before the cache is used.
    let coherence: SharedCoherence

    init(store: Store, hashKey: SecretBytes, policies: PolicyStore, errors: StoreErrorMapper, principals: PrincipalResolver,
         coherence: SharedCoherence, clock: any WallClock, logger: Logger) {
        self.store = store
        self.coherence = coherence
        self.hashKey = hashKey
        self.policies = policies
        self.errors = errors
        self.principals = principals
        self.clock = clock
        self.logger = logger
    }

    public struct Created: Sendable {
        /// The token itself: returned once, never stored.
        public var token: String
        public var record: TokenRecord
    }

    public struct Request: Sendable {
        public var roles: [String]
        public var ttlSeconds: Int?
        public var uses: Int?
        public var bindUID: UInt32?
        public var paths: [String]
        public var name: String?
        public init(roles: [String], ttlSeconds: Int?, uses: Int?, bindUID: UInt32?, paths: [String], name: String?) {
            self.roles = roles
            self.ttlSeconds = ttlSeconds
            self.uses = uses
            self.bindUID = bindUID
            self.paths = paths
            self.name = name
        }
    }

    func hash(_ token: String) -> Data {
        Data(Hashing.blake2b(Array(token.utf8), key: hashKey, outputLength: 32))
    }

    /// Mints a token no wider than its creator: roles the creator holds, paths inside
    /// the creator token's paths, TTL within every role's max_ttl (and the creator
    /// token's remaining life), the creator token's uid binding kept.
    /// A new token: the prefix and 256 random bits, base64url (the raw bytes wiped).
    static func mint() -> String {
        var raw = Hashing.randomBytes(32)
        defer { Hashing.wipe(&raw) }
        return prefix + Data(raw).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    /// A sign-in session after PAM said yes: a token bound to the caller's uid,
    /// carrying the roles the policy gives that account now (possibly none: it then
    /// proves who one is and when one signed in, for elevation), remembering the time.
    func createSession(_ g: Grant, ttlSeconds: Int) async throws(CofferError) -> Created {
        let p = g.principal
        guard p.token == nil else { throw CofferError(.permissionDenied, "sign in with your own account, not with a token") }
        let now = clock.nowMillis()
        let token = TokenService.mint()
        let record = TokenRecord(
            accessor: "acc_" + Hex.encode(Hashing.randomBytes(12)), hash: hash(token), parent: nil,
            roles: policies.policy.roleNames(for: p).sorted(), paths: [], name: "sign-in", createdAt: now,
            expiresAt: now + Int64(ttlSeconds) * 1000, usesLeft: nil, uses: 0, boundUID: p.uid, createdUID: p.uid,
            createdUser: p.userName, revokedAt: nil, authenticatedAt: now)
        _ = try await errors.call { try await store.insertToken(record, ticket: g.ticket) }
        g.ticket.update { $0.tokenAccessor = record.accessor }
        logger.info("signed in", metadata: ["token.accessor": "\(record.accessor)", "peer.uid": "\(p.uid)"])
        return Created(token: token, record: record)
    }

    public func create(_ g: Grant, _ req: Request) async throws(CofferError) -> Created {
        let creator = g.principal
        let now = clock.nowMillis()
        let policy = policies.policy
        guard !req.roles.isEmpty, req.roles.count <= 16 else { throw CofferError(.invalidParameter, "give 1 to 16 roles") }
        guard Set(req.roles).count == req.roles.count else { throw CofferError(.invalidParameter, "a role is named twice") }
        guard Set(req.paths).count == req.paths.count else { throw CofferError(.invalidParameter, "a path pattern is given twice") }
        if let b = req.bindUID, b == UInt32.max { throw CofferError(.invalidParameter, "bind_uid 4294967295 is no uid") }
        let held = creator.token?.roles ?? policy.roleNames(for: creator)
        // Holding `admin` (which can rewrite the policy anyway) counts as holding every
        // role; the decision is the full one (a path-limited token is no admin). The
        // new token still only narrows: every decision intersects its whole chain.
        let isAdmin = PolicyEvaluator.decide(policy, creator, .admin, nil).allowed
        if let parent = creator.token, parent.ancestors.count + 1 >= TokenService.maxDepth {
            throw CofferError(.permissionDenied, "tokens can be made from tokens at most \(TokenService.maxDepth) deep")
        }
        for r in req.roles {
            guard policy.roles[r] != nil else { throw CofferError(.invalidParameter, "unknown role '\(r.prefix(64))'") }
            guard isAdmin || held.contains(r) else {
                throw CofferError(.permissionDenied, "you do not hold role '\(r)', so a token cannot carry it",
                                  hint: "a token can only narrow its creator's access")
            }
        }
        guard req.paths.count <= 32 else { throw CofferError(.invalidParameter, "at most 32 path patterns") }
        var patterns: [PathPattern] = []
        for p in req.paths { patterns.append(try PathPattern(p)) }
        if let parent = creator.token, !parent.paths.isEmpty {
            if patterns.isEmpty {
                patterns = parent.paths  // inherit the narrower scope
            } else {
                for p in patterns where !parent.paths.contains(where: { p.isCovered(by: $0) }) {
                    throw CofferError(.permissionDenied, "path pattern '\(p)' is wider than your token's paths",
                                      hint: "a token can only narrow its creator's access")
                }
            }
        }
        var ttl = req.ttlSeconds ?? min(TokenService.defaultTTL, policy.maxTTL(roles: req.roles) ?? TokenService.defaultTTL)
        if req.ttlSeconds == nil, let parent = creator.token {
            ttl = min(ttl, Int((parent.expiresAt - now) / 1000))  // a default never outlives the parent
        }
        guard ttl >= 1 else { throw CofferError(.invalidParameter, "ttl must be at least 1s") }
        guard ttl <= TokenService.maxTTL else { throw CofferError(.invalidParameter, "ttl must be at most 30d") }
        if let cap = policy.maxTTL(roles: req.roles), ttl > cap {
            throw CofferError(.permissionDenied, "ttl \(DurationText.format(ttl)) is longer than the roles allow (\(DurationText.format(cap)))",
                              hint: "ask for --ttl \(DurationText.format(cap)) or less")
        }
        var expires = now + Int64(ttl) * 1000
        if let parent = creator.token {
            guard expires <= parent.expiresAt else {
                throw CofferError(.permissionDenied, "a token cannot outlive the token that creates it",
                                  hint: "ask for a shorter --ttl")
            }
        }
        if let uses = req.uses, !(1...1_000_000).contains(uses) { throw CofferError(.invalidParameter, "uses must be 1...1000000") }
        var bound = req.bindUID
        if let parentBound = creator.token?.boundUID {
            guard bound == nil || bound == parentBound else {
                throw CofferError(.permissionDenied, "your token is bound to uid \(parentBound); its tokens must be too")
            }
            bound = parentBound
        }
        // (no control or format characters: a right-to-left override would make a list lie)
        if let name = req.name, name.utf8.count > 128 || name.unicodeScalars.contains(where: {
            $0.value < 0x20 || (0x7f...0x9f).contains($0.value) || $0.properties.generalCategory == .format
                || $0.properties.generalCategory == .lineSeparator || $0.properties.generalCategory == .paragraphSeparator
        }) {
            throw CofferError(.invalidParameter, "name must be at most 128 printable characters")
        }
        let token = TokenService.mint()
        let accessor = "acc_" + Hex.encode(Hashing.randomBytes(12))
        ttl = Int((expires - now) / 1000)
        expires = now + Int64(ttl) * 1000
        var record = TokenRecord(
            accessor: accessor, hash: hash(token), parent: creator.token?.accessor, roles: req.roles.sorted(),
            paths: patterns.map(\.rawValue), name: req.name, createdAt: now, expiresAt: expires, usesLeft: req.uses, uses: 0,
            boundUID: bound, createdUID: creator.uid, createdUser: creator.userName, revokedAt: nil)
        // In one transaction: the creator's chain is still live, and a child of a
        // limited token gets no more uses than its parent has left.
        let candidate = record
        record.usesLeft = try await errors.call {
            try await store.insertToken(candidate, guard: Store.TokenGuard(creator.token?.chain, now: now), ticket: g.ticket)
        }
        logger.info("token created", metadata: ["token.accessor": "\(accessor)", "peer.uid": "\(creator.uid)", "token.roles": "\(req.roles)"])
        return Created(token: token, record: record)
    }

    /// Longest chain of tokens made from tokens.
    public static let maxDepth = 8

    /// Turns a presented token into a grant, or a 401 with a distinct code. A use is
    /// consumed only after every other check passed. The whole chain of ancestors is
    /// checked too (none revoked or expired), and carried in the grant so that every
    /// decision intersects it (TokenGrant).
    public func authenticate(_ token: String, peerUID: UInt32, ticket: AuditTicket) async throws(CofferError) -> TokenGrant {
        let now = clock.nowMillis()
        guard token.hasPrefix(TokenService.prefix), token.utf8.count == TokenService.prefix.utf8.count + 43 else {
            throw CofferError(.tokenUnknown, "the token is not valid", hint: "tokens start with \(TokenService.prefix); check COFFER_TOKEN / the token file")
        }
        let h = hash(token)
        try coherence.check()
        let generation = cache.generation
        var found = cache.lookup(h)
        if found == nil {
            found = try loadChain(hash: h)
            if let chain = found { cache.insert(chain, ifGeneration: generation) }
        }
        guard let chain = found, let t = chain.first, Hashing.constantTimeEquals([UInt8](t.hash), [UInt8](h)) else {
            throw CofferError(.tokenUnknown, "the token is not valid")
        }
        for link in chain {
            if link.revokedAt != nil {
                throw CofferError(.tokenRevoked, link.accessor == t.accessor ? "the token was revoked" : "the token that made this token was revoked")
            }
            if now >= link.expiresAt { throw CofferError(.tokenExpired, "the token expired at \(link.expiresAt / 1000) (unix time)") }
        }
        if let b = t.boundUID, b != peerUID {
            logger.warning("token presented by another uid", metadata: ["token.accessor": "\(t.accessor)", "peer.uid": "\(peerUID)"])
            throw CofferError(.tokenWrongUID, "the token is bound to another uid")
        }
        let layers = try chain.map { (r: TokenRecord) throws(CofferError) -> TokenGrant.Layer in
            var patterns: [PathPattern] = []
            for p in r.paths {
                // Fail closed: an unreadable scope must never widen into no scope.
                guard let pp = try? PathPattern(p) else { throw CofferError(.tokenUnknown, "the token's scope is unreadable") }
                patterns.append(pp)
            }
            return TokenGrant.Layer(accessor: r.accessor, roles: r.roles, paths: patterns)
        }
        let limited = chain.filter { $0.usesLeft != nil }.map(\.accessor)
        if !limited.isEmpty {
            do { _ = try await store.consumeTokenUse(accessors: limited, ticket: ticket) } catch {
                if error is TokenUsesSpent {
                    throw CofferError(.tokenExhausted, limited.first == t.accessor ? "the token has no uses left" : "the token that made this token has no uses left")
                }
                throw CofferError(.storage, "the database could not complete the request")
            }
        }
        let root = chain[chain.count - 1]
        let origin = principals.principal(pid: 0, uid: root.createdUID, gid: UInt32.max)
        var grant = TokenGrant(accessor: t.accessor, roles: t.roles, paths: layers[0].paths, expiresAt: t.expiresAt, boundUID: t.boundUID,
                               ancestors: Array(layers.dropFirst()),
                               origin: .init(uid: root.createdUID, userName: origin.userName, groupNames: origin.groupNames,
                                             elevatedRoles: root.elevationID != nil ? root.roles : []))
        grant.epoch = generation
        grant.authenticatedAt = root.authenticatedAt
        return grant
    }

    /// The token and its ancestors, parent first. Fails closed on a chain that is
    /// longer than tokens can be made, or that loops.
    func loadChain(hash h: Data) throws(CofferError) -> [TokenRecord]? {
        do {
            guard let t = try store.token(hash: h) else { return nil }
            var chain = [t]
            var next = t.parent
            while let a = next {
                guard chain.count <= TokenService.maxDepth, !chain.contains(where: { $0.accessor == a }),
                      let parent = try store.token(accessor: a) else {
                    throw CofferError(.tokenUnknown, "the token's chain of parents is unreadable")
                }
                chain.append(parent)
                next = parent.parent
            }
            return chain
        } catch let e as CofferError {
            throw e
        } catch {
            throw CofferError(.storage, "the database could not complete the request")
        }
    }

    // MARK: the rest of /v1/tokens, behind the gate

    /// Self needs nothing more than a valid token; anyone else's needs admin (the
    /// facade asks the gate for the right action).
    public func lookup(_ g: Grant, accessor: String) throws(CofferError) -> TokenRecord {
        guard let t = try errors.call({ try store.token(accessor: accessor) }) else {
            throw CofferError(.notFound, "no token with accessor \(accessor.prefix(64))")
        }
        return t
    }

    public func list(_ g: Grant) throws(CofferError) -> [TokenRecord] {
        try errors.call { try store.tokens(limit: 1000) }
    }

    /// Revokes a token and its descendants.
    public func revoke(_ g: Grant, accessor: String) async throws(CofferError) -> [String] {
        guard try errors.call({ try store.tokenExists(accessor: accessor) }) else {
            throw CofferError(.notFound, "no token with accessor \(accessor.prefix(64))")
        }
        defer { cache.clear() }  // a revoked token must stop working at once
        let p = g.principal
        let revoked = try await errors.call {
            try await store.revokeToken(accessor: accessor, now: clock.nowMillis(), guard: guardFor(p), ticket: g.ticket)
        }
        logger.info("token revoked", metadata: ["token.accessor": "\(accessor)", "peer.uid": "\(p.uid)", "token.cascade": "\(revoked.count)"])
        return revoked
    }

    /// The daemon's own job: tokens that ended more than `retain` ago are deleted.
    func reap(_ g: Grant, olderThan retainSeconds: Int64) async throws(CofferError) -> Int {
        let cutoff = clock.nowMillis() - retainSeconds * 1000
        let n = try await errors.call { try await store.reapTokens(before: cutoff, ticket: g.ticket) }
        if n > 0 { cache.clear() }
        return n
    }

    /// The caller's token chain, to be checked again inside the write transaction.
    func guardFor(_ p: Principal) -> Store.TokenGuard? { Store.TokenGuard(p.token?.chain, now: clock.nowMillis()) }

    /// Reads check the token at the moment of reading: if any token was revoked since
    /// this one was authenticated (the revocation generation moved), the chain is
    /// looked up again before the value leaves.
    func recheck(_ p: Principal) throws(CofferError) {
        guard let t = p.token, cache.generation != t.epoch else { return }
        let now = clock.nowMillis()
        for a in t.chain {
            guard let r = try errors.call({ try store.token(accessor: a) }) else { throw CofferError(.tokenUnknown, "the token is not valid") }
            if r.revokedAt != nil { throw CofferError(.tokenRevoked, "the token was revoked") }
            if now >= r.expiresAt { throw CofferError(.tokenExpired, "the token expired") }
        }
    }
}
