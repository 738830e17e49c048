import CofferAudit
import CofferCore
import HTTPTypes
import Hummingbird

/// One entry of an endpoint table: how the raw request path matches, and per
/// method the action name (for policy logs and the audit event), whether it is
/// audited, and the handler. A feature is one route file (`Routes/*.swift`) listing
/// its endpoints, plus the engine functions they call.
struct Endpoint: Sendable {
    enum Match: Sendable {
        /// The whole raw path.
        case exact(String)
        /// A raw-path prefix (and optional suffix); what lies between is the
        /// parameter, decoded by `param` — never normalised (Hummingbird's own router
        /// would collapse `//`, which is why paths are matched raw here).
        case prefix(String, suffix: String, param: Param)
    }

    /// How the parameter between prefix and suffix is read.
    enum Param: Sendable {
        /// Percent-decoded; validated as a secret path or prefix by the handler.
        case percentDecoded
        /// A token accessor (or "self"): `[A-Za-z0-9_]`, no slash.
        case accessor
    }

    struct Method: Sendable {
        let method: HTTPRequest.Method
        let action: String
        let audited: Bool
        /// false: answers before any identity work (health).
        let needsPrincipal: Bool
        let handler: Handler
        /// The same handler when it never waits (a read, health): the event-loop
        /// request path runs it there, with no task (see DirectChannel).
        let now: NowHandler?

        init(_ method: HTTPRequest.Method, _ action: String, audited: Bool = true, needsPrincipal: Bool = true, _ handler: @escaping Handler) {
            self.method = method
            self.action = action
            self.audited = audited
            self.needsPrincipal = needsPrincipal
            self.handler = handler
            self.now = nil
        }

        init(_ method: HTTPRequest.Method, _ action: String, audited: Bool = true, needsPrincipal: Bool = true, now: @escaping NowHandler) {
            self.method = method
            self.action = action
            self.audited = audited
            self.needsPrincipal = needsPrincipal
            self.handler = { r, i throws(CofferError) in try now(r, i).response }
            self.now = now
        }
    }

    typealias Handler = @Sendable (APIResponder, RouteInput) async throws(CofferError) -> Response
    typealias NowHandler = @Sendable (APIResponder, RouteInput) throws(CofferError) -> ErrorMapping.Answer

    /// Names the endpoint in an audit event when no method of it matched.
    let name: String
    let match: Match
    let methods: [Method]

    init(_ name: String, _ match: Match, _ methods: [Method]) {
        self.name = name
        self.match = match
        self.methods = methods
    }

    var allowHeader: String { methods.map(\.method.rawValue).joined(separator: ", ") }
}

/// What a handler receives: the request, its context, the route parameter (already
/// decoded, not yet validated) and the caller (nil only for endpoints that need none).
struct RouteInput: Sendable {
    let request: Request
    let context: CofferRequestContext
    let param: String
    let principal: Principal?
    /// The request's audit event: every engine call carries it.
    let ticket: AuditTicket

    /// The caller; endpoints that need one always have it.
    var caller: Principal {
        get throws(CofferError) {
            guard let principal else { throw CofferError(.unauthenticated, "the caller is unknown") }
            return principal
        }
    }
}

/// The union of the endpoint tables, resolved against raw paths: exact matches
/// first, then prefixes (longest first). An unknown path is 404 and a known path
/// with an unknown method 405 with `Allow`, both decided here.
struct Router: Sendable {
    let exact: [String: Endpoint]
    /// Prefixed endpoints, longest prefix+suffix first, with their bytes: matched on
    /// the raw path's UTF-8 bytes (String's Character-wise hasPrefix and count were
    /// 5 % of an audited read).
    let prefixed: [(endpoint: Endpoint, prefix: [UInt8], suffix: [UInt8], param: Endpoint.Param)]

    /// The actions of every method of every endpoint, and the endpoints' names (the
    /// action of a request with a method the endpoint does not take).
    var actions: [String] { (Array(exact.values) + prefixed.map(\.endpoint)).flatMap { [$0.name] + $0.methods.map(\.action) } }

    init(_ tables: [[Endpoint]]) {
        var exact: [String: Endpoint] = [:]
        var prefixed: [(endpoint: Endpoint, prefix: [UInt8], suffix: [UInt8], param: Endpoint.Param)] = []
        for e in tables.joined() {
            switch e.match {
            case .exact(let p):
                precondition(exact[p] == nil, "two endpoints for \(p)")  // a programming error in the tables, at start
                exact[p] = e
            case .prefix(let prefix, let suffix, let param):
                // the parameter starts and ends at a '/' or the path's end: a scalar boundary
                precondition(prefix.hasSuffix("/") && (suffix.isEmpty || suffix.hasPrefix("/")), "a prefix endpoint must end in / and its suffix start with /")
                prefixed.append((e, Array(prefix.utf8), Array(suffix.utf8), param))
            }
        }
        self.exact = exact
        self.prefixed = prefixed.sorted { a, b in a.prefix.count + a.suffix.count > b.prefix.count + b.suffix.count }
    }

    enum Resolution {
        case found(Endpoint, param: String)
        case badParam(Endpoint, CofferError)
        case notFound
    }

    func resolve(_ rawPath: String) -> Resolution {
        if let e = exact[rawPath] { return .found(e, param: "") }
        let utf8 = rawPath.utf8
        let n = utf8.count
        for p in prefixed {
            guard n >= p.prefix.count + p.suffix.count, utf8.starts(with: p.prefix),
                  utf8.suffix(p.suffix.count).elementsEqual(p.suffix) else { continue }
            let start = utf8.index(utf8.startIndex, offsetBy: p.prefix.count)
            let end = utf8.index(utf8.endIndex, offsetBy: -p.suffix.count)
            let raw = rawPath[start..<end]
            switch p.param {
            case .percentDecoded:
                do { return .found(p.endpoint, param: try PercentDecoding.decode(raw)) } catch { return .badParam(p.endpoint, error) }
            case .accessor:
                if raw.utf8.contains(UInt8(ascii: "/")) { continue }  // another endpoint may match (…/revoke)
                guard !raw.isEmpty, raw.utf8.count <= 64, raw.utf8.allSatisfy(SecretPathChars.isToken) else {
                    return .badParam(p.endpoint, CofferError(.invalidParameter, "an id looks like acc_0123…, el_0123… or run_0123… (letters, digits, _)",
                                                    hint: "see coffer token list, coffer elevate list or coffer run list"))
                }
                return .found(p.endpoint, param: String(raw))
            }
        }
        return .notFound
    }
}
