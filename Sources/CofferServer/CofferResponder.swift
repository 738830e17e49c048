import CofferAPI
import CofferAudit
import CofferCore
import CofferCrypto
public import CofferEngine
import Foundation
import HTTPTypes
public import Hummingbird
public import Logging
import NIOCore

/// The daemon's responder: the API over the open engine, or the sealed answers
/// while there is none (health and status say `"sealed": true`; unseal takes a key;
/// everything else is 503 `sealed`).
public struct CofferResponder: HTTPResponder {
    public typealias Context = CofferRequestContext

    let host: EngineHost
    let settings: APIResponder.Settings
    let logger: Logger

    public init(host: EngineHost, settings: APIResponder.Settings, logger: Logger) {
        self.host = host
        self.settings = settings
        self.logger = logger
    }

    public func respond(to request: Request, context: Context) async throws -> Response {
        if let response = try await host.withEngine({ engine in
            try await APIResponder(engine: engine, settings: settings, host: host).respond(to: request, context: context)
        }) {
            return response
        }
        var response: Response
        let requestID = Hex.encode(Hashing.randomBytes(8))
        var failure: CofferError?
        do throws(CofferError) {
            response = try await sealed(request, context)
        } catch {
            failure = error
            response = APIResponder.errorResponse(error, context)
        }
        response.headers[APIResponder.requestIDHeader] = requestID
        // every request but health leaves an event, appended once the trail opens (a
        // successful unseal writes its own, through the opened engine)
        let path = request.uri.path
        if path != "/v1/sys/health", !(path == "/v1/sys/unseal" && failure == nil) {
            var e = AuditEvent.draft(time: Int64(Date().timeIntervalSince1970 * 1000), requestID: requestID, peerPID: context.peer?.pid ?? 0,
                                     peerUID: context.peer?.uid ?? UInt32.max, method: request.method.rawValue,
                                     action: Self.sealedAction(path), path: nil, status: Int(response.status.code), errorCode: failure?.code.rawValue)
            e.details["sealed"] = .text("answered while sealed")
            host.recordWhileSealed(e)
        }
        return response
    }

    /// The event-loop request path (see APIResponder.respondNow): false when the
    /// request needs a task (or the daemon is sealed).
    public func respondNow(to request: Request, context: Context, completion: @escaping @Sendable (ErrorMapping.Answer) -> Void) -> Bool {
        guard let engine = host.leaseEngine() else { return false }
        let host = self.host
        let taken = APIResponder(engine: engine, settings: settings, host: host).respondNow(to: request, context: context) { response in
            host.endLease()
            completion(response)
        }
        if !taken { host.endLease() }
        return taken
    }

    static func sealedAction(_ path: String) -> String {
        switch path {
        case "/v1/sys/unseal": "unseal"
        case "/v1/sys/status": "status"
        case "/v1/sys/metrics": "metrics"
        default: "sealed_refusal"
        }
    }

    func sealed(_ request: Request, _ context: Context) async throws(CofferError) -> Response {
        let path = request.uri.path
        switch (path, request.method) {
        case ("/v1/sys/health", .get), ("/v1/sys/health", .head):
            return ErrorMapping.json(HealthResponse(status: "sealed", sealed: true, version: CofferVersion.string, audit: "sealed"))
        case ("/v1/sys/status", .get):
            guard request.uri.query == nil else { throw CofferError(.invalidParameter, "this route takes no query parameters") }
            let (p, d) = try caller(request, context, action: .status)
            // as when open: any caller holding a role, nobody else
            guard d.allowed else { throw CofferError(.permissionDenied, "status needs a role", hint: d.rule) }
            var status = StatusResponse(
                version: CofferVersion.string, sealed: true, devMode: settings.config.devMode, uptimeSeconds: 0, secrets: nil, keyID: nil,
                activeKeyID: nil, durability: settings.config.durability.rawValue, maxValueBytes: settings.config.maxValueBytes,
                maxVersions: settings.config.maxVersions,
                caller: .init(pid: p.pid, uid: p.uid, gid: p.gid, user: p.userName, groups: p.groups), decision: d.rule)
            let holder = try host.holder()
            status.unseal = (holder?.mode ?? .keyfile).rawValue
            if let t = holder?.threshold {
                status.sharesGiven = host.roundProgress()
                status.threshold = t
            }
            return ErrorMapping.json(status)
        case ("/v1/sys/unseal", .post):
            return try await unseal(request, context)
        case ("/v1/sys/metrics", .get):
            // a scraper sees that the daemon is sealed (by uid: tokens cannot be checked now)
            guard request.uri.query == nil else { throw CofferError(.invalidParameter, "this route takes no query parameters") }
            let (_, d) = try caller(request, context, action: .metrics)
            guard d.allowed else { throw CofferError(.permissionDenied, "metrics need the metrics capability", hint: d.rule) }
            return APIResponder.metricsResponse(CofferMetrics.scrape(nil))
        default:
            throw CofferError(.sealed, "cofferd is sealed: it has no root key yet", hint: "an admin unseals it: coffer operator unseal")
        }
    }

    /// The peer as the kernel names it, and what the live policy says about its admin
    /// capability. A token cannot be checked while sealed (its hash key is sealed).
    func caller(_ request: Request, _ context: Context, action: Action = .admin) throws(CofferError) -> (Principal, Decision) {
        guard let peer = context.peer else { throw CofferError(.unauthenticated, "the caller's peer credentials are unknown") }
        if request.headers[APIResponder.tokenHeader] != nil || request.headers[.authorization] != nil {
            throw CofferError(.sealed, "tokens cannot be checked while cofferd is sealed", hint: "unseal as an admin user, without a token")
        }
        return host.unsealDecision(pid: peer.pid, uid: peer.uid, gid: peer.gid, action: action)
    }

    func unseal(_ request: Request, _ context: Context) async throws(CofferError) -> Response {
        let (p, d) = try caller(request, context)
        guard d.allowed else {
            logger.warning("unseal refused", metadata: ["peer.uid": "\(p.uid)", "rule": "\(d.rule)"])
            throw CofferError(.permissionDenied, "unsealing needs the admin capability", hint: d.rule)
        }
        guard request.uri.query == nil else { throw CofferError(.invalidParameter, "this route takes no query parameters") }
        var body = try await Self.readBody(request, limit: 4096)
        defer { Hashing.wipe(&body) }
        let step = try Self.unsealStep(body)
        let holder = try host.holder()
        let mode = (holder?.mode ?? .keyfile).rawValue
        do throws(CofferError) {
            let progress: EngineHost.Progress
            switch step {
            case .reset:
                let dropped = host.resetRound()
                logger.notice("unseal round reset", metadata: ["peer.uid": "\(p.uid)", "shares.dropped": "\(dropped)"])
                return ErrorMapping.json(UnsealResponse(sealed: true, unsealedNow: false, keyID: nil, mode: mode, sharesGiven: 0,
                                                        threshold: holder?.threshold))
            case .share(let text):
                progress = try await host.unseal(share: text, uid: p.uid)
                if progress.sealed {
                    logger.notice("unseal share accepted", metadata: ["peer.uid": "\(p.uid)", "shares.given": "\(progress.shares ?? 0)",
                                                                       "shares.threshold": "\(progress.threshold ?? 0)"])
                    return ErrorMapping.json(UnsealResponse(sealed: true, unsealedNow: false, keyID: nil, mode: mode, sharesGiven: progress.shares,
                                                            threshold: progress.threshold))
                }
            case .unlocker(let u):
                let unlocker: any Unlocker
                if let u { unlocker = u } else {
                    guard let configured = host.configuredUnlocker, holder == nil || holder?.mode == .keyfile else {
                        throw CofferError(.invalidParameter, "no key given, and this database is held by \(holder?.mode.described ?? "a key file")",
                                          hint: "coffer operator unseal (it asks for what it needs)")
                    }
                    unlocker = configured
                }
                let (e, now) = try await host.unseal(with: unlocker)
                progress = EngineHost.Progress(sealed: false, unsealedNow: now, engine: e, mode: unlocker.mode)
            }
            guard let engine = progress.engine else { throw CofferError(.internal, "unsealed without an engine") }
            logger.notice("unsealed", metadata: ["peer.uid": "\(p.uid)", "unlocker": "\(mode)"])
            // the trail exists now: the unseal is its first event by this caller
            let keyID = try await engine.confirmUnsealed(p, unlocker: mode)
            return ErrorMapping.json(UnsealResponse(sealed: false, unsealedNow: progress.unsealedNow, keyID: keyID, mode: mode))
        } catch {
            logger.warning("unseal failed", metadata: ["peer.uid": "\(p.uid)", "error.code": "\(error.code.rawValue)"])
            // a wrong key is the caller's mistake, not the daemon's
            if error.code == .keyFile { throw CofferError(.invalidParameter, error.message, hint: error.hint) }
            throw error
        }
    }

    enum UnsealStep {
        /// nil: the configured key file
        case unlocker((any Unlocker)?)
        case share([UInt8])
        case reset
    }

    /// The unseal body: empty, or exactly one of key, passphrase, share, reset —
    /// parsed without the key, passphrase or share ever entering an error message.
    static func unsealStep(_ body: [UInt8]) throws(CofferError) -> UnsealStep {
        if body.isEmpty { return .unlocker(nil) }
        if let dup = JSONDuplicateKeys.first(in: body) {
            throw CofferError(.invalidJSON, "the request body has a duplicate key '\(dup)'")
        }
        let request: UnsealRequest
        do { request = try JSONDecoder().decode(UnsealRequest.self, from: Data(body)) } catch let e as StrictKeys.UnknownField {
            throw CofferError(.unknownField, e.description)
        } catch {
            throw CofferError(.invalidJSON, "the body must be one of {\"key\": …}, {\"passphrase\": …}, {\"share\": …}, {\"reset\": true}, or empty")
        }
        let given = [request.key != nil, request.passphrase != nil, request.share != nil, request.reset != nil].filter { $0 }.count
        guard given == 1 else {
            throw CofferError(.invalidParameter, "give exactly one of 'key', 'passphrase', 'share' or 'reset'")
        }
        if let key = request.key { return .unlocker(KeyTextUnlocker(text: Array(key.utf8))) }
        if let share = request.share { return .share(Array(share.utf8)) }
        if let passphrase = request.passphrase { return .unlocker(PassphraseUnlocker(passphrase: try passphraseBytes(passphrase))) }
        guard request.reset == true else { throw CofferError(.invalidParameter, "'reset' can only be true") }
        return .reset
    }

    static func passphraseBytes(_ s: String) throws(CofferError) -> SecretBytes {
        var bytes = Array(s.utf8)
        do { return try SecretBytes(consuming: &bytes) } catch { throw CofferError(.internal, "cannot allocate guarded memory") }
    }

    static func readBody(_ request: Request, limit: Int) async throws(CofferError) -> [UInt8] {
        var out: [UInt8] = []
        do {
            for try await chunk in request.body {
                guard out.count + chunk.readableBytes <= limit else { throw CofferError(.bodyTooLarge, "the request body is larger than \(limit) bytes") }
                out += chunk.readableBytesView
            }
        } catch let e as CofferError {
            throw e
        } catch {
            throw CofferError(.malformedRequest, "the request body could not be read")
        }
        return out
    }
}
