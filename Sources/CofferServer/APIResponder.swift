import CofferAPI
import CofferAudit
public import CofferCore
import CofferCrypto
public import CofferEngine
import CofferStore
import Foundation
import HTTPTypes
public import Hummingbird
import Logging
import NIOCore

/// API v1. Routing is done here, on the raw request path, so that the path of a
/// secret is decoded and validated exactly once (SecretPath) and never normalised
/// by anything in between.
///
/// Order for every route but health: peer credentials → principal → path
/// validation → authorization → body parsing → engine. A denied caller learns
/// nothing about bodies or what exists.
public struct APIResponder: HTTPResponder {
    public typealias Context = CofferRequestContext

    public struct Settings: Sendable {
        public var config: CofferConfig
        public init(config: CofferConfig) { self.config = config }
    }

    let engine: SecretEngine
    let settings: Settings

    public init(engine: SecretEngine, settings: Settings) {
        self.engine = engine
        self.settings = settings
    }

    public func respond(to request: Request, context: Context) async throws -> Response {
        let requestID = Hex.encode(Hashing.randomBytes(8))  // correlates logs; not secret
        let (route, routeError) = Self.catchRoute { () throws(CofferError) in try parseRoute(request.uri.path) }
        // health is not audited: it must answer while the audit trail cannot. status is
        // (a token can be probed there, and a use spent there must leave an event).
        if let route, route.isUnaudited {
            return await answer(request, context, route: route, requestID: requestID).response
        }
        let scope = AuditScope(AuditEvent(
            seq: 0, time: Self.nowMillis(), requestID: requestID, peerPID: context.peer?.pid ?? 0, peerUID: context.peer?.uid ?? UInt32.max,
            peerUser: nil, tokenAccessor: nil, method: request.method.rawValue, action: route?.actionName ?? "unknown_route",
            path: route?.auditPath, decision: "none", rule: nil, outcome: "error", status: 0, errorCode: nil))
        let outcome: (response: Response, error: CofferError?) = await AuditScope.$current.withValue(scope) {
            guard let route else {
                let e = routeError ?? CofferError(.routeNotFound, "no such API route")
                return (Self.errorResponse(e, context), e)
            }
            return await answer(request, context, route: route, requestID: requestID)
        }
        var response = outcome.response
        let error = outcome.error
        if scope.committed == nil {
            do throws(CofferError) {
                try await engine.audit.append(scope.finished(status: Int(response.status.code), errorCode: error?.code.rawValue))
            } catch {
                // Fail closed: whatever was going to be answered (a value included) is dropped.
                response = Self.errorResponse(error, context)
            }
        }
        response.headers[Self.requestIDHeader] = requestID
        return response
    }

    func answer(_ request: Request, _ context: Context, route: Route, requestID: String) async -> (response: Response, error: CofferError?) {
        do {
            return (try await handle(request, context, route), nil)
        } catch {
            // handle() throws only CofferError (typed throws): every failure is a JSON answer.
            return (Self.errorResponse(error, context), error)
        }
    }

    static func errorResponse(_ error: CofferError, _ context: Context) -> Response {
        if ErrorMapping.status(error.code).code >= 500 {
            context.logger.error("request failed", metadata: ["error.code": "\(error.code.rawValue)"])
        }
        return ErrorMapping.response(error, headers: error.code == .methodNotAllowed ? [.allow: error.hint ?? ""] : [:])
    }

    static func catchRoute(_ body: () throws(CofferError) -> Route) -> (Route?, CofferError?) {
        do { return (try body(), nil) } catch { return (nil, error) }
    }

    static func nowMillis() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

    enum Route {
        case health, status
        case data(String), metadata(String), list(String)
        case delete(String), undelete(String), destroy(String)
        case tokens, token(String), tokenRevoke(String)
        case policyReload, policyExplain
        case auditEvents, auditVerify, auditExport, auditPrune, auditPublicKey

        var isUnaudited: Bool {
            switch self {
            case .health: true
            default: false
            }
        }

        /// The action an audit event records before the request is even parsed.
        var actionName: String {
            switch self {
            case .health: "health"
            case .status: "status"
            case .data: "secret_data"
            case .metadata: "read_metadata"
            case .list: "list"
            case .delete: "delete"
            case .undelete: "undelete"
            case .destroy: "destroy"
            case .tokens: "token"
            case .token: "token_lookup"
            case .tokenRevoke: "token_revoke"
            case .policyReload: "policy_reload"
            case .policyExplain: "policy_explain"
            case .auditEvents: "audit_read"
            case .auditVerify: "audit_verify"
            case .auditExport: "audit_export"
            case .auditPrune: "audit_prune"
            case .auditPublicKey: "audit_pubkey"
            }
        }

        /// The path as requested (bounded; it is caller input and may be invalid).
        var auditPath: String? {
            switch self {
            case .data(let p), .metadata(let p), .list(let p), .delete(let p), .undelete(let p), .destroy(let p):
                String(p.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7f ? "?" : Character($0) }.prefix(256))
            case .token(let a), .tokenRevoke(let a): a
            default: nil
            }
        }
    }

    func parseRoute(_ rawPath: String) throws(CofferError) -> Route {
        let p = rawPath[...]
        switch p {
        case "/v1/sys/health": return .health
        case "/v1/sys/status": return .status
        case "/v1/secrets/list", "/v1/secrets/list/": return .list("")
        case "/v1/tokens": return .tokens
        case "/v1/sys/policy/reload": return .policyReload
        case "/v1/sys/policy/explain": return .policyExplain
        case "/v1/audit/events": return .auditEvents
        case "/v1/audit/verify": return .auditVerify
        case "/v1/audit/export": return .auditExport
        case "/v1/audit/prune": return .auditPrune
        case "/v1/audit/pubkey": return .auditPublicKey
        default: break
        }
        if p.hasPrefix("/v1/tokens/") {
            let rest = p.dropFirst("/v1/tokens/".count)
            let parts = rest.split(separator: "/", omittingEmptySubsequences: false)
            let accessor = String(parts[0])
            guard !accessor.isEmpty, accessor.utf8.count <= 64, accessor.utf8.allSatisfy(SecretPathChars.isToken) else {
                throw CofferError(.invalidParameter, "a token accessor looks like acc_0123…", hint: "see coffer token list")
            }
            if parts.count == 1 { return .token(accessor) }
            if parts.count == 2 && parts[1] == "revoke" { return .tokenRevoke(accessor) }
        }
        let prefixes: [(String, (String) -> Route)] = [
            ("/v1/secrets/data/", Route.data), ("/v1/secrets/metadata/", Route.metadata),
            ("/v1/secrets/list/", Route.list), ("/v1/secrets/delete/", Route.delete),
            ("/v1/secrets/undelete/", Route.undelete), ("/v1/secrets/destroy/", Route.destroy),
        ]
        for (prefix, make) in prefixes where p.hasPrefix(prefix) {
            return make(try PercentDecoding.decode(p.dropFirst(prefix.count)))
        }
        throw CofferError(.routeNotFound, "no such API route", hint: "routes live under /v1/sys and /v1/secrets; see contrib/openapi.yaml or the README")
    }

    func handle(_ request: Request, _ context: Context, _ route: Route) async throws(CofferError) -> Response {
        let method = request.method
        // Health answers anyone, before any identity work.
        if case .health = route { return try health(request) }
        let principal = try await self.principal(request, context)
        switch route {
        case .health:
            return try health(request)
        case .status:
            try allow(method, [.get], "GET")
            try noQuery(request, allowed: [])
            let s = try engine.status(principal)
            let d = engine.decide(principal, .status, nil)
            return ErrorMapping.json(StatusResponse(
                version: CofferVersion.string, unlocked: true, devMode: settings.config.devMode,
                uptimeSeconds: Int(s.uptimeSeconds), secrets: s.secrets, keyID: s.keyID,
                durability: settings.config.durability.rawValue, maxValueBytes: engine.limits.maxValueBytes,
                maxVersions: engine.limits.maxVersions,
                caller: .init(pid: principal.pid, uid: principal.uid, gid: principal.gid, user: principal.userName, groups: principal.groups),
                decision: d.rule))
        case .data(let raw):
            let path = try SecretPath(raw)
            switch method {
            case .get:
                AuditScope.current?.update { $0.action = "read" }
                return try read(request, principal, path)
            case .put, .post:
                AuditScope.current?.update { $0.action = "write" }
                try noQuery(request, allowed: [])
                try engine.authorize(principal, .write, path)
                guard let body: PutSecretRequest = try await decodeBody(request, context, required: true) else {
                    throw CofferError(.invalidJSON, "a JSON body is required")
                }
                let value = try valueBytes(body)
                let rec = try await engine.put(principal, path, value: value, cas: body.cas)
                return ErrorMapping.json(WriteResponse(path: path.rawValue, version: rec.version, metadata: Self.meta(rec)))
            case .delete:
                AuditScope.current?.update { $0.action = "delete" }
                try noQuery(request, allowed: [])
                let rec = try await engine.change(principal, .delete, path, versions: [])
                return ErrorMapping.json(Self.metadataResponse(rec, maxVersions: engine.limits.maxVersions))
            default:
                throw CofferError(.methodNotAllowed, "method \(method.rawValue) is not allowed here", hint: "GET, PUT, POST, DELETE")
            }
        case .metadata(let raw):
            let path = try SecretPath(raw)
            try allow(method, [.get], "GET")
            try noQuery(request, allowed: [])
            let rec = try engine.metadata(principal, path)
            return ErrorMapping.json(Self.metadataResponse(rec, maxVersions: engine.limits.maxVersions))
        case .list(let raw):
            let prefix = try SecretPrefix(raw)
            try allow(method, [.get], "GET")
            try noQuery(request, allowed: ["after", "limit"])
            let q = request.uri.queryParameters
            var limit: Int?
            if let l = q["limit"] {
                guard let n = Int(l), n >= 1 else { throw CofferError(.invalidParameter, "limit must be a positive integer") }
                limit = n
            }
            let page = try engine.list(principal, prefix, after: q["after"].map(String.init), limit: limit)
            return ErrorMapping.json(ListResponse(prefix: prefix.rawValue, keys: page.keys, nextAfter: page.nextAfter))
        case .delete(let raw), .undelete(let raw), .destroy(let raw):
            let path = try SecretPath(raw)
            try allow(method, [.post], "POST")
            try noQuery(request, allowed: [])
            let change: Store.VersionChange
            let action: Action
            switch route {
            case .delete: (change, action) = (.delete, .delete)
            case .undelete: (change, action) = (.undelete, .undelete)
            default: (change, action) = (.destroy, .destroy)
            }
            try engine.authorize(principal, action, path)
            let body: VersionsRequest? = try await decodeBody(request, context, required: false)
            let rec = try await engine.change(principal, change, path, versions: body?.versions ?? [])
            return ErrorMapping.json(Self.metadataResponse(rec, maxVersions: engine.limits.maxVersions))
        case .tokens:
            try noQuery(request, allowed: [])
            switch method {
            case .get:
                AuditScope.current?.update { $0.action = "token_list" }
                let list = try engine.listTokens(principal)
                return ErrorMapping.json(TokenListResponse(tokens: list.map(Self.tokenInfo)))
            case .post:
                AuditScope.current?.update { $0.action = "token_create" }
                // Only a caller holding some role may mint; nothing of the body is parsed before.
                try engine.authorize(principal, .status, nil)
                guard let body: CreateTokenRequest = try await decodeBody(request, context, required: true) else {
                    throw CofferError(.invalidJSON, "a JSON body is required")
                }
                var ttl: Int?
                if let t = body.ttl {
                    guard let secs = DurationText.seconds(t) else {
                        throw CofferError(.invalidParameter, "ttl must be a duration like \"30m\" or \"1h\"")
                    }
                    ttl = secs
                }
                let created = try await engine.createToken(principal, .init(
                    roles: body.roles, ttlSeconds: ttl, uses: body.uses, bindUID: body.bindUID, paths: body.paths ?? [], name: body.name))
                return ErrorMapping.json(CreateTokenResponse(token: created.token, info: Self.tokenInfo(created.record)))
            default:
                throw CofferError(.methodNotAllowed, "method \(method.rawValue) is not allowed here", hint: "GET, POST")
            }
        case .token(let accessor):
            try allow(method, [.get], "GET")
            try noQuery(request, allowed: [])
            if accessor == "self" { return ErrorMapping.json(selfInfo(principal)) }
            return ErrorMapping.json(Self.tokenInfo(try engine.lookupToken(principal, accessor: accessor)))
        case .tokenRevoke(let accessor):
            try allow(method, [.post], "POST")
            try noQuery(request, allowed: [])
            let target: String
            if accessor == "self" {
                guard let own = principal.token?.accessor else {
                    throw CofferError(.invalidParameter, "no token was presented", hint: "set COFFER_TOKEN or --token-file")
                }
                target = own
            } else {
                target = accessor
            }
            return ErrorMapping.json(RevokeResponse(revoked: try await engine.revokeToken(principal, accessor: target)))
        case .policyReload:
            try allow(method, [.post], "POST")
            try noQuery(request, allowed: [])
            let p = try engine.reloadPolicy(principal)
            return ErrorMapping.json(PolicyReloadResponse(source: p.source, roles: p.roles.keys.sorted(), bindings: p.bindings.count))
        case .auditEvents, .auditVerify, .auditExport, .auditPrune, .auditPublicKey:
            return try await auditRoute(route, request, context, principal)
        case .policyExplain:
            try allow(method, [.post], "POST")
            try noQuery(request, allowed: [])
            guard let body: ExplainRequest = try await decodeBody(request, context, required: true) else {
                throw CofferError(.invalidJSON, "a JSON body is required")
            }
            let subject = try Subject(body.subject)
            guard let cap = Capability(rawValue: body.capability) else {
                throw CofferError(.invalidParameter, "unknown capability '\(body.capability.prefix(32))'",
                                  hint: Capability.allCases.map(\.rawValue).joined(separator: ", "))
            }
            let e = try engine.explain(principal, as: subject, capability: cap, path: body.path)
            return ErrorMapping.json(ExplainResponse(subject: subject.description, uid: e.subject.uid == UInt32.max - 1 ? nil : e.subject.uid,
                                                     roles: e.roles, allowed: e.decision.allowed, rule: e.decision.rule))
        }
    }

    // MARK: read

    func read(_ request: Request, _ principal: Principal, _ path: SecretPath) throws(CofferError) -> Response {
        try noQuery(request, allowed: ["version"])
        var version: Int?
        if let v = request.uri.queryParameters["version"] {
            guard let n = Int(v), n >= 1, n <= Int(Int32.max) else {
                throw CofferError(.invalidVersion, "version must be a positive integer", hint: "omit it for the latest version")
            }
            version = n
        }
        let r = try engine.get(principal, path, version: version)
        let raw = request.headers[.accept] == "application/octet-stream"
        if raw {
            // Raw bytes, metadata in headers: nothing to decode for a shell pipeline.
            var buffer = ByteBuffer()
            _ = r.value.withUnsafeBytes { buffer.writeBytes($0) }
            var headers: HTTPFields = [.contentType: "application/octet-stream"]
            headers[Self.versionHeader] = String(r.meta.version)
            headers[Self.currentVersionHeader] = String(r.currentVersion)
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: buffer))
        }
        let bytes = r.value.copyToArray()
        let text = String(validating: bytes, as: UTF8.self)
        return ErrorMapping.json(SecretResponse(
            path: path.rawValue, value: text, valueBase64: Data(bytes).base64EncodedString(),
            currentVersion: r.currentVersion, metadata: Self.meta(r.meta)))
    }

    // MARK: helpers

    static let tokenHeader = HTTPField.Name("X-Coffer-Token")!  // constants, valid tokens
    static let requestIDHeader = HTTPField.Name("Coffer-Request-Id")!
    static let versionHeader = HTTPField.Name("Coffer-Version")!
    static let currentVersionHeader = HTTPField.Name("Coffer-Current-Version")!

    /// The kernel's peer credentials, plus a token from `X-Coffer-Token` or
    /// `Authorization: Bearer` when one is presented.
    func principal(_ request: Request, _ context: Context) async throws(CofferError) -> Principal {
        guard let peer = context.peer else {
            throw CofferError(.unauthenticated, "the caller's peer credentials are unknown")
        }
        var token: String?
        if let t = request.headers[Self.tokenHeader] {
            token = t
        } else if let auth = request.headers[.authorization] {
            // The scheme name is case-insensitive (RFC 9110 §11.1).
            guard auth.utf8.count > 7, auth.prefix(7).lowercased() == "bearer " else {
                throw CofferError(.tokenUnknown, "the Authorization header must be 'Bearer TOKEN'")
            }
            token = String(auth.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        }
        return try await engine.principal(pid: peer.pid, uid: peer.uid, gid: peer.gid, token: token)
    }

    func allow(_ method: HTTPRequest.Method, _ allowed: [HTTPRequest.Method], _ names: String) throws(CofferError) {
        guard allowed.contains(method) else {
            throw CofferError(.methodNotAllowed, "method \(method.rawValue) is not allowed here", hint: names)
        }
    }

    func noQuery(_ request: Request, allowed: Set<String>) throws(CofferError) {
        guard request.uri.query != nil else { return }
        for (k, _) in request.uri.queryParameters where !allowed.contains(String(k)) {
            throw CofferError(.invalidParameter, "unknown query parameter '\(k.prefix(64))'",
                              hint: allowed.isEmpty ? "this route takes no query parameters" : "allowed: \(allowed.sorted().joined(separator: ", "))")
        }
    }

    /// Reads and strictly decodes a JSON body within the configured size bound.
    func decodeBody<T: Decodable>(_ request: Request, _ context: Context, required: Bool) async throws(CofferError) -> T? {
        let limit = settings.config.maxBodyBytes
        if let len = request.headers[.contentLength].flatMap({ Int($0) }), len > limit {
            throw CofferError(.bodyTooLarge, "the request body is larger than \(limit) bytes")
        }
        var buffer = ByteBuffer()
        do {
            for try await var chunk in request.body {
                guard buffer.readableBytes + chunk.readableBytes <= limit else {
                    throw CofferError(.bodyTooLarge, "the request body is larger than \(limit) bytes")
                }
                buffer.writeBuffer(&chunk)
            }
        } catch let e as CofferError {
            throw e
        } catch {
            throw CofferError(.malformedRequest, "the request body could not be read")
        }
        if buffer.readableBytes == 0 {
            if required { throw CofferError(.invalidJSON, "a JSON body is required") }
            return nil
        }
        let data = Data(buffer.readableBytesView)
        if let key = JSONDuplicateKeys.first(in: buffer.readableBytesView) {
            throw CofferError(.invalidJSON, "the request body has a duplicate key '\(key)'", hint: "give each field once")
        }
        do {
            return try JSONDecoder().decode(T.self, from: data)
        } catch let e as StrictKeys.UnknownField {
            throw CofferError(.unknownField, e.description)
        } catch let DecodingError.typeMismatch(_, ctx) {
            throw CofferError(.invalidParameter, "field '\(Self.name(ctx.codingPath))' has the wrong type")
        } catch let DecodingError.valueNotFound(_, ctx) {
            throw CofferError(.invalidParameter, "field '\(Self.name(ctx.codingPath))' must not be null")
        } catch let DecodingError.keyNotFound(key, _) {
            throw CofferError(.invalidParameter, "field '\(key.stringValue)' is required")
        } catch {
            // Valid JSON of the wrong shape is the caller's semantic error, not a syntax error.
            if (try? JSONSerialization.jsonObject(with: data, options: .fragmentsAllowed)) != nil {
                throw CofferError(.invalidParameter, "the body must be a JSON object with the documented fields")
            }
            throw CofferError(.invalidJSON, "the request body is not valid JSON")
        }
    }

    static func name(_ path: [any CodingKey]) -> String {
        path.isEmpty ? "(body)" : path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
    }

    func valueBytes(_ body: PutSecretRequest) throws(CofferError) -> SecretBytes {
        switch (body.value, body.valueBase64) {
        case (let text?, nil):
            var bytes = Array(text.utf8)
            return try Self.guarded(&bytes)
        case (nil, let b64?):
            guard let data = Data(base64Encoded: b64) else {
                throw CofferError(.invalidValue, "value_base64 is not valid base64")
            }
            var bytes = [UInt8](data)
            return try Self.guarded(&bytes)
        case (nil, nil):
            throw CofferError(.invalidValue, "the body needs 'value' (text) or 'value_base64' (bytes)")
        case (_?, _?):
            throw CofferError(.invalidValue, "give either 'value' or 'value_base64', not both")
        }
    }

    static func guarded(_ bytes: inout [UInt8]) throws(CofferError) -> SecretBytes {
        do { return try SecretBytes(consuming: &bytes) } catch { throw CofferError(.internal, "cannot allocate guarded memory") }
    }

    static func meta(_ v: VersionRecord) -> VersionMetadata {
        VersionMetadata(version: v.version, createdAt: Timestamp.string(millis: v.createdAt),
                        createdBy: CreatedBy(uid: v.createdUID, user: v.createdUser), size: v.size,
                        state: v.state.rawValue, deletedAt: v.deletedAt.map { Timestamp.string(millis: $0) })
    }

    static func metadataResponse(_ r: SecretRecord, maxVersions: Int) -> SecretMetadataResponse {
        SecretMetadataResponse(path: r.path, currentVersion: r.currentVersion, maxVersions: maxVersions,
                               createdAt: Timestamp.string(millis: r.createdAt), updatedAt: Timestamp.string(millis: r.updatedAt),
                               versions: r.versions.map(meta))
    }
}

