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
import Synchronization

/// API v1 over the endpoint tables in `Routes/` (one file per concern). Routing is
/// done on the raw request path, so that the path of a secret is decoded and
/// validated exactly once (SecretPath) and never normalised by anything in between.
///
/// Order for every route but health: peer credentials → principal → path
/// validation → authorization → body parsing → engine. A denied caller learns
/// nothing about bodies or what exists. Every audited request leaves exactly one
/// event, committed before any value leaves.
public struct APIResponder: HTTPResponder {
    public typealias Context = CofferRequestContext

    public struct Settings: Sendable {
        public var config: CofferConfig
        public init(config: CofferConfig) { self.config = config }
    }

    let engine: SecretEngine
    let settings: Settings
    /// The host the engine runs in (seal, rekey's rate limit); nil in tests of the
    /// tables alone.
    let host: EngineHost?
    /// Every endpoint of API v1: adding a route is one entry in one of these tables.
    static let router = Router([secretEndpoints, tokenEndpoints, auditEndpoints, sysEndpoints, keyEndpoints, authEndpoints, elevationEndpoints, runEndpoints, credentialEndpoints])

    public init(engine: SecretEngine, settings: Settings, host: EngineHost? = nil) {
        self.engine = engine
        self.settings = settings
        self.host = host
    }

    public func respond(to request: Request, context: Context) async throws -> Response {
        let requestID = Hex.encode(Hashing.randomBytes(8))  // correlates logs; not secret
        let arrived = DispatchTime.now().uptimeNanoseconds
        var endpoint: Endpoint?
        var param = ""
        var failure: CofferError?
        var method: Endpoint.Method?
        switch Self.router.resolve(request.uri.path) {
        case .found(let e, let p):
            (endpoint, param) = (e, p)
            method = e.methods.first { $0.method == request.method }
            if method == nil {
                failure = CofferError(.methodNotAllowed, "method \(request.method.rawValue) is not allowed here", hint: e.allowHeader)
            }
        case .badParam(let e, let error):
            (endpoint, failure) = (e, error)
        case .notFound:
            failure = CofferError(.routeNotFound, "no such API route",
                                  hint: "routes live under /v1/sys, /v1/secrets, /v1/tokens, /v1/audit, /v1/auth, /v1/elevation and /v1/runs; see contrib/openapi.yaml or the README")
        }
        let ticket = self.ticket(request, context, requestID: requestID, action: method?.action ?? endpoint?.name ?? "unknown_route", param: param)
        if let method, !method.audited {
            var response = await answer(request, context, method, param, ticket).response
            response.headers[Self.requestIDHeader] = requestID
            CofferMetrics.request(action: method.action, status: Int(response.status.code), decision: "none",
                                  nanoseconds: DispatchTime.now().uptimeNanoseconds - arrived)
            return response
        }
        let outcome: (response: Response, error: CofferError?)
        if let method {
            outcome = await answer(request, context, method, param, ticket)
        } else {
            let e = failure ?? CofferError(.routeNotFound, "no such API route")
            outcome = (Self.errorResponse(e, context), e)
        }
        var response = outcome.response
        do throws(CofferError) {
            try await engine.settle(ticket, status: Int(response.status.code), error: outcome.error)
        } catch {
            // Fail closed: whatever was going to be answered (a value included) is dropped.
            response = Self.errorResponse(error, context)
        }
        response.headers[Self.requestIDHeader] = requestID
        let event = ticket.committed ?? ticket.draft
        CofferMetrics.request(action: event.action, status: Int(response.status.code), decision: event.decision.rawValue,
                              nanoseconds: DispatchTime.now().uptimeNanoseconds - arrived)
        return response
    }

    /// The request's audit ticket; the route parameter (a secret path or a token
    /// accessor) is the event's path.
    func ticket(_ request: Request, _ context: Context, requestID: String, action: String, param: String) -> AuditTicket {
        engine.ticket(AuditEvent.draft(
            time: engine.nowMillis(), requestID: requestID, peerPID: context.peer?.pid ?? 0, peerUID: context.peer?.uid ?? UInt32.max,
            method: request.method.rawValue, action: action, path: param.isEmpty ? nil : Self.printable(param)))
    }

    /// The event-loop request path (DirectChannel): a request whose handler never
    /// waits (`Endpoint.Method.now`) and whose caller is known by peer credentials
    /// alone is answered on the calling thread, and its event made durable by the
    /// audit writer, which then calls `completion` (on its own thread) with the
    /// answer — the value dropped for an error if the event could not be written.
    /// Same order, same checks, same event as `respond`. false: not such a request
    /// (a token to authenticate, a body to read, a handler that waits): use `respond`.
    func respondNow(to request: Request, context: Context, completion: @escaping @Sendable (ErrorMapping.Answer) -> Void) -> Bool {
        // a store across the network (PostgreSQL) would wait on the loop: the task path serves it
        guard engine.storeIsLocal, case .found(let endpoint, let param) = Self.router.resolve(request.uri.path),
              let method = endpoint.methods.first(where: { $0.method == request.method }), let now = method.now,
              !method.needsPrincipal || (request.headers[Self.tokenHeader] == nil && request.headers[.authorization] == nil) else { return false }
        let requestID = Hex.encode(Hashing.randomBytes(8))
        let arrived = DispatchTime.now().uptimeNanoseconds
        let ticket = self.ticket(request, context, requestID: requestID, action: method.action, param: param)
        var response: ErrorMapping.Answer
        var failure: CofferError?
        do throws(CofferError) {
            var principal: Principal?
            if method.needsPrincipal {
                guard let peer = context.peer else { throw CofferError(.unauthenticated, "the caller's peer credentials are unknown") }
                principal = engine.principal(pid: peer.pid, uid: peer.uid, gid: peer.gid, ticket: ticket)
            }
            response = try now(self, RouteInput(request: request, context: context, param: param, principal: principal, ticket: ticket))
        } catch {
            response = Self.errorAnswer(error, context)
            failure = error
        }
        guard method.audited else {
            response.head.headerFields[Self.requestIDHeader] = requestID
            CofferMetrics.request(action: method.action, status: Int(response.head.status.code), decision: "none",
                                  nanoseconds: DispatchTime.now().uptimeNanoseconds - arrived)
            completion(response)
            return true
        }
        engine.settle(ticket, status: Int(response.head.status.code), error: failure) { [response] auditError in
            // Fail closed: whatever was going to be answered (a value included) is dropped.
            var answer = auditError.map { Self.errorAnswer($0, context) } ?? response
            answer.head.headerFields[Self.requestIDHeader] = requestID
            let event = ticket.committed ?? ticket.draft
            CofferMetrics.request(action: event.action, status: Int(answer.head.status.code), decision: event.decision.rawValue,
                                  nanoseconds: DispatchTime.now().uptimeNanoseconds - arrived)
            completion(answer)
        }
        return true
    }

    /// Resolves the caller (unless the endpoint needs none) and runs the handler;
    /// every failure is a JSON answer (handlers throw only CofferError).
    func answer(_ request: Request, _ context: Context, _ method: Endpoint.Method, _ param: String,
                _ ticket: AuditTicket) async -> (response: Response, error: CofferError?) {
        do {
            let principal = method.needsPrincipal ? try await self.principal(request, context, ticket) : nil
            let input = RouteInput(request: request, context: context, param: param, principal: principal, ticket: ticket)
            return (try await method.handler(self, input), nil)
        } catch {
            return (Self.errorResponse(error, context), error)
        }
    }

    static func errorResponse(_ error: CofferError, _ context: Context) -> Response { errorAnswer(error, context).response }

    static func errorAnswer(_ error: CofferError, _ context: Context) -> ErrorMapping.Answer {
        // one line per error code and second: a sealed daemon or a full disk under load
        // would otherwise write a line per refused request (the metrics count them all)
        if ErrorMapping.status(error.code).code >= 500 && failureLogged(error.code) {
            context.logger.error("request failed", metadata: ["error.code": "\(error.code.rawValue)"])
        }
        return ErrorMapping.answer(error, headers: error.code == .methodNotAllowed ? [.allow: error.hint ?? ""] : [:])
    }

    static let failureLog = Mutex<(second: Int, codes: Set<CofferError.Code>)>((0, []))

    /// true for the first failure of its code in this second.
    static func failureLogged(_ code: CofferError.Code) -> Bool {
        let now = Int(time(nil))
        return failureLog.withLock { log in
            if log.second != now { log = (now, []) }
            return log.codes.insert(code).inserted
        }
    }

    /// The path as requested, bounded and printable (it is caller input and may be invalid).
    static func printable(_ p: String) -> String {
        String(p.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7f ? "?" : Character($0) }.prefix(256))
    }

    /// A query number: ASCII digits only (no sign, no spaces, no `+1`), within the type.
    static func digits<T: FixedWidthInteger>(_ s: some StringProtocol, as: T.Type) -> T? {
        guard !s.isEmpty, s.utf8.count <= 20, s.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return nil }
        return T(s)
    }


    // MARK: helpers

    static let tokenHeader = HTTPField.Name("X-Coffer-Token")!  // constants, valid tokens
    static let requestIDHeader = HTTPField.Name("Coffer-Request-Id")!
    static let versionHeader = HTTPField.Name("Coffer-Version")!
    static let currentVersionHeader = HTTPField.Name("Coffer-Current-Version")!

    /// The kernel's peer credentials, plus a token from `X-Coffer-Token` or
    /// `Authorization: Bearer` when one is presented.
    func principal(_ request: Request, _ context: Context, _ ticket: AuditTicket) async throws(CofferError) -> Principal {
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
        return try await engine.principal(pid: peer.pid, uid: peer.uid, gid: peer.gid, token: token, ticket: ticket)
    }

    func noQuery(_ request: Request, allowed: Set<String>) throws(CofferError) {
        guard request.uri.query != nil else { return }
        var seen = Set<String>()
        for (k, _) in request.uri.queryParameters {
            guard allowed.contains(String(k)) else {
                throw CofferError(.invalidParameter, "unknown query parameter '\(k.prefix(64))'",
                                  hint: allowed.isEmpty ? "this route takes no query parameters" : "allowed: \(allowed.sorted().joined(separator: ", "))")
            }
            // one value each: `after=1&after=2` is not silently half-read
            guard seen.insert(String(k)).inserted else { throw CofferError(.invalidParameter, "query parameter '\(k.prefix(64))' is given twice") }
        }
    }

    /// For routes that take no body: any body is an error.
    func noBody(_ request: Request, _ context: Context) async throws(CofferError) {
        let body = try await CofferResponder.readBody(request, limit: 4096)
        guard body.isEmpty else { throw CofferError(.invalidParameter, "this route takes no request body") }
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

