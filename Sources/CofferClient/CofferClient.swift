public import CofferAPI
public import CofferCore
@_exported import CofferLite
import Foundation

/// Typed calls of API v1 for the CLI (and for tests).
public final class CofferClient {
    public let http: UnixHTTPClient

    public init(socketPath: String, token: String? = nil, trustedServerUIDs: Set<UInt32>? = nil) {
        http = UnixHTTPClient(socketPath: socketPath)
        http.token = token
        http.trustedServerUIDs = trustedServerUIDs
    }

    static func dataPath(_ kind: String, _ path: String) -> String {
        "/v1/secrets/\(kind)/" + PercentDecoding.encodePath(path)
    }

    func decode<T: Decodable>(_ r: HTTPResult, as: T.Type) throws -> T {
        guard (200..<300).contains(r.status) else { throw Self.apiError(r) }
        do { return try JSONDecoder().decode(T.self, from: Data(r.body)) } catch {
            throw ClientError(kind: .protocolError, message: "cofferd sent a response this coffer cannot read (\(r.status))")
        }
    }

    static func apiError(_ r: HTTPResult) -> APIError { APIError(r) }

    public func health() throws -> HealthResponse {
        try decode(http.request("GET", "/v1/sys/health"), as: HealthResponse.self)
    }

    public func status() throws -> StatusResponse {
        try decode(http.request("GET", "/v1/sys/status"), as: StatusResponse.self)
    }

    /// Writes a new version. The value travels only in the request body.
    public func put(_ path: String, value: [UInt8], cas: Int?) throws -> WriteResponse {
        var body: [String: Any] = ["value_base64": Data(value).base64EncodedString()]
        if let cas { body["cas"] = cas }
        var json = try JSONSerialization.data(withJSONObject: body)
        defer { json.resetBytes(in: 0..<json.count) }
        let r = try http.request("PUT", Self.dataPath("data", path), headers: [("Content-Type", "application/json")], body: [UInt8](json))
        return try decode(r, as: WriteResponse.self)
    }

    /// Raw bytes of a version, with its version numbers from the headers.
    public func getRaw(_ path: String, version: Int?) throws -> (value: [UInt8], version: Int?) {
        var target = Self.dataPath("data", path)
        if let version { target += "?version=\(version)" }
        let r = try http.request("GET", target, headers: [("Accept", "application/octet-stream")])
        guard r.status == 200 else { throw Self.apiError(r) }
        guard r.header("Content-Type")?.lowercased().hasPrefix("application/octet-stream") == true,
              version.map({ String($0) == r.header("Coffer-Version") }) ?? true else {
            throw ClientError(kind: .protocolError, message: "cofferd sent a response this coffer cannot read (200)")
        }
        return (r.body, r.header("Coffer-Version").flatMap { Int($0) })
    }

    public func get(_ path: String, version: Int?) throws -> SecretResponse {
        var target = Self.dataPath("data", path)
        if let version { target += "?version=\(version)" }
        return try decode(http.request("GET", target), as: SecretResponse.self)
    }

    public func metadata(_ path: String) throws -> SecretMetadataResponse {
        try decode(http.request("GET", Self.dataPath("metadata", path)), as: SecretMetadataResponse.self)
    }

    public func list(_ prefix: String, after: String?, limit: Int?) throws -> ListResponse {
        var target = prefix.isEmpty ? "/v1/secrets/list" : Self.dataPath("list", prefix)
        var q: [String] = []
        if let after { q.append("after=" + PercentDecoding.encodePath(after)) }
        if let limit { q.append("limit=\(limit)") }
        if !q.isEmpty { target += "?" + q.joined(separator: "&") }
        return try decode(http.request("GET", target), as: ListResponse.self)
    }

    public enum Change: String { case delete, undelete, destroy }

    public func change(_ change: Change, _ path: String, versions: [Int]?) throws -> SecretMetadataResponse {
        let body = try JSONEncoder().encode(VersionsRequest(versions: versions))
        let r = try http.request("POST", Self.dataPath(change.rawValue, path), headers: [("Content-Type", "application/json")], body: [UInt8](body))
        return try decode(r, as: SecretMetadataResponse.self)
    }
}

extension CofferClient {
    public func createToken(_ req: CreateTokenRequest) throws -> CreateTokenResponse {
        let body = try JSONEncoder().encode(req)
        return try decode(http.request("POST", "/v1/tokens", headers: [("Content-Type", "application/json")], body: [UInt8](body)),
                          as: CreateTokenResponse.self)
    }

    public func listTokens() throws -> TokenListResponse {
        try decode(http.request("GET", "/v1/tokens"), as: TokenListResponse.self)
    }

    public func lookupSelf() throws -> SelfResponse {
        try decode(http.request("GET", "/v1/tokens/self"), as: SelfResponse.self)
    }

    public func lookupToken(_ accessor: String) throws -> TokenInfo {
        try decode(http.request("GET", "/v1/tokens/" + PercentDecoding.encodePath(accessor)), as: TokenInfo.self)
    }

    public func revokeToken(_ accessor: String) throws -> RevokeResponse {
        try decode(http.request("POST", "/v1/tokens/" + PercentDecoding.encodePath(accessor) + "/revoke"), as: RevokeResponse.self)
    }

    public func reloadPolicy() throws -> PolicyReloadResponse {
        try decode(http.request("POST", "/v1/sys/policy/reload"), as: PolicyReloadResponse.self)
    }

    public func explain(_ req: ExplainRequest) throws -> ExplainResponse {
        let body = try JSONEncoder().encode(req)
        return try decode(http.request("POST", "/v1/sys/policy/explain", headers: [("Content-Type", "application/json")], body: [UInt8](body)),
                          as: ExplainResponse.self)
    }
}

extension CofferClient {
    public func auditEvents(query: [(String, String)]) throws -> AuditEventsResponse {
        var target = "/v1/audit/events"
        if !query.isEmpty {
            target += "?" + query.map { "\($0.0)=\(Self.queryEscape($0.1))" }.joined(separator: "&")
        }
        return try decode(http.request("GET", target), as: AuditEventsResponse.self)
    }

    public func auditVerify() throws -> AuditVerifyResponse {
        http.timeoutSeconds = 600  // a long trail takes a while to walk
        return try decode(http.request("GET", "/v1/audit/verify"), as: AuditVerifyResponse.self)
    }

    public func auditExport() throws -> [UInt8] {
        http.timeoutSeconds = 600
        http.maxBodyBytes = 1 << 40  // the whole trail, as large as it is
        let r = try http.request("GET", "/v1/audit/export")
        guard r.status == 200 else { throw Self.apiError(r) }
        return r.body
    }

    public func auditPrune(through seq: Int64) throws -> AuditPruneResponse {
        let body = try JSONEncoder().encode(AuditPruneRequest(throughSeq: seq))
        return try decode(http.request("POST", "/v1/audit/prune", headers: [("Content-Type", "application/json")], body: [UInt8](body)),
                          as: AuditPruneResponse.self)
    }

    static func queryEscape(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "/"), UInt8(ascii: ":"):
                out.unicodeScalars.append(Unicode.Scalar(b))
            default:
                out += "%" + String(format: "%02X", b)
            }
        }
        return out
    }
}

extension CofferClient {
    /// Sends the root key file's text (or nothing: the daemon's configured key file).
    public func unseal(keyText: [UInt8]?) throws -> UnsealResponse {
        guard var keyText else { return try decode(http.request("POST", "/v1/sys/unseal"), as: UnsealResponse.self) }
        defer { for i in keyText.indices { keyText[i] = 0 } }
        var body = Array(#"{"key":""#.utf8)
        // the key file is ASCII (`coffer-root-key-v1:` and hex); anything else is sent
        // as is for the daemon to refuse, minus what would break the JSON string
        body += keyText.filter { $0 >= 0x20 && $0 != 0x22 && $0 != 0x5C }
        body += Array(#""}"#.utf8)
        defer { for i in body.indices { body[i] = 0 } }
        return try decode(http.request("POST", "/v1/sys/unseal", headers: [("Content-Type", "application/json")], body: body), as: UnsealResponse.self)
    }

    public func keys() throws -> KeysResponse {
        try decode(http.request("GET", "/v1/sys/keys"), as: KeysResponse.self)
    }

    public func rotateKey() throws -> KeyInfo {
        try decode(http.request("POST", "/v1/sys/keys/rotate"), as: KeyInfo.self)
    }

    /// A backup file, as the daemon made it (manifest, signature, database snapshot).
    public func backup() throws -> [UInt8] {
        http.timeoutSeconds = 600
        http.maxBodyBytes = 1 << 40
        let r = try http.request("POST", "/v1/sys/backup")
        guard r.status == 200 else { throw Self.apiError(r) }
        return r.body
    }

    public func integrityCheck() throws -> IntegrityResponse {
        try decode(http.request("GET", "/v1/sys/integrity"), as: IntegrityResponse.self)
    }

    public func acceptRecords() throws -> IntegrityAcceptResponse {
        try decode(http.request("POST", "/v1/sys/integrity/accept"), as: IntegrityAcceptResponse.self)
    }
}

extension CofferClient {
    public func loginStart() throws -> LoginResponse {
        try decode(http.request("POST", "/v1/auth/login"), as: LoginResponse.self)
    }

    public func loginAnswer(id: String, answers: [String]) throws -> LoginResponse {
        var body = try [UInt8](JSONEncoder().encode(LoginAnswerRequest(answers: answers)))
        defer { for i in body.indices { body[i] = 0 } }
        return try decode(http.request("POST", "/v1/auth/login/" + PercentDecoding.encodePath(id), headers: [("Content-Type", "application/json")], body: body),
                          as: LoginResponse.self)
    }

    public func logout() throws -> RevokeResponse {
        try decode(http.request("POST", "/v1/auth/logout"), as: RevokeResponse.self)
    }
}

extension CofferClient {
    public func elevationRequest(_ body: ElevationRequestBody) throws -> ElevationInfo {
        try decode(http.request("POST", "/v1/elevation/requests", headers: [("Content-Type", "application/json")], body: [UInt8](JSONEncoder().encode(body))),
                   as: ElevationInfo.self)
    }

    public func elevations(all: Bool, mine: Bool) throws -> ElevationListResponse {
        try decode(http.request("GET", "/v1/elevation/requests?state=\(all ? "all" : "open")&mine=\(mine)"), as: ElevationListResponse.self)
    }

    public func elevation(_ id: String) throws -> ElevationInfo {
        try decode(http.request("GET", "/v1/elevation/requests/" + PercentDecoding.encodePath(id)), as: ElevationInfo.self)
    }

    /// approve, deny, cancel, end, revoke.
    public func elevation(_ id: String, _ verb: String, body: ElevationActionBody?) throws -> ElevationInfo {
        let bytes = try body.map { [UInt8](try JSONEncoder().encode($0)) }
        return try decode(http.request("POST", "/v1/elevation/requests/" + PercentDecoding.encodePath(id) + "/" + verb,
                                       headers: bytes == nil ? [] : [("Content-Type", "application/json")], body: bytes),
                          as: ElevationInfo.self)
    }

    public func activateElevation(_ id: String) throws -> ElevationActivateResponse {
        try decode(http.request("POST", "/v1/elevation/requests/" + PercentDecoding.encodePath(id) + "/activate"), as: ElevationActivateResponse.self)
    }
}

extension CofferClient {
    public func elevationHistory(since: String?, user: String?, role: String?) throws -> ElevationListResponse {
        var q = [("state", "all"), ("mine", "false")]
        if let since { q.append(("since", since)) }
        if let user { q.append(("user", user)) }
        if let role { q.append(("role", role)) }
        return try decode(http.request("GET", "/v1/elevation/requests?" + q.map { "\($0.0)=\(Self.queryEscape($0.1))" }.joined(separator: "&")),
                          as: ElevationListResponse.self)
    }

    public func elevationReport(since: String?) throws -> ElevationReportResponse {
        try decode(http.request("GET", "/v1/elevation/report" + (since.map { "?since=" + Self.queryEscape($0) } ?? "")), as: ElevationReportResponse.self)
    }
}

extension CofferClient {
    /// One request for every secret of a run (values base64 in the answer, or none
    /// in a dry run).
    public func runStart(_ req: RunStartRequest) throws -> RunStartResponse {
        try decode(http.request("POST", "/v1/runs", headers: [("Content-Type", "application/json")], body: [UInt8](JSONEncoder().encode(req))),
                   as: RunStartResponse.self)
    }

    public func runEnd(_ id: String, _ body: RunEndRequest) throws -> RunInfo {
        try decode(http.request("POST", "/v1/runs/" + PercentDecoding.encodePath(id) + "/end", headers: [("Content-Type", "application/json")],
                                body: [UInt8](JSONEncoder().encode(body))), as: RunInfo.self)
    }

    public func runs(all: Bool) throws -> RunListResponse {
        try decode(http.request("GET", all ? "/v1/runs?all=true" : "/v1/runs"), as: RunListResponse.self)
    }

    public func injections(all: Bool) throws -> InjectionListResponse {
        try decode(http.request("GET", all ? "/v1/injections?all=true" : "/v1/injections"), as: InjectionListResponse.self)
    }
}

extension CofferClient {
    static func json<T: Encodable>(_ v: T) throws -> [UInt8] { [UInt8](try JSONEncoder().encode(v)) }

    public func sshCA() throws -> SSHCAResponse { try decode(http.request("GET", "/v1/ssh/ca"), as: SSHCAResponse.self) }

    public func sshSign(_ id: String, publicKey: String) throws -> SSHCertificateResponse {
        try decode(http.request("POST", "/v1/elevation/requests/" + PercentDecoding.encodePath(id) + "/ssh", headers: [("Content-Type", "application/json")],
                                body: Self.json(SSHSignRequest(publicKey: publicKey))), as: SSHCertificateResponse.self)
    }

    public func jwtSign(_ id: String, audience: String, ttl: String?) throws -> JWTResponse {
        try decode(http.request("POST", "/v1/elevation/requests/" + PercentDecoding.encodePath(id) + "/jwt", headers: [("Content-Type", "application/json")],
                                body: Self.json(JWTSignRequest(audience: audience, ttl: ttl))), as: JWTResponse.self)
    }

    public func jwks() throws -> JWKSResponse { try decode(http.request("GET", "/v1/jwks"), as: JWKSResponse.self) }

    /// The raw JWKS document, as served (for files that services read).
    public func jwksRaw() throws -> [UInt8] {
        let r = try http.request("GET", "/v1/jwks")
        guard r.status == 200 else { throw Self.apiError(r) }
        return r.body
    }

    public func jwksRotate() throws -> JWKSRotateResponse { try decode(http.request("POST", "/v1/jwks/rotate"), as: JWKSRotateResponse.self) }

    public func sshSessionOpen(certificate: String, user: String?) throws -> SSHSessionResponse {
        try decode(http.request("POST", "/v1/ssh/sessions", headers: [("Content-Type", "application/json")],
                                body: Self.json(SSHSessionRequest(certificate: certificate, user: user))), as: SSHSessionResponse.self)
    }
}

extension CofferClient {
    /// One unseal step: a passphrase, one share, or a reset of the share round.
    public func unseal(_ request: UnsealRequest) throws -> UnsealResponse {
        http.timeoutSeconds = max(http.timeoutSeconds, 120)  // Argon2id at its highest limits
        var body = Array(try JSONEncoder().encode(request))
        defer { for i in body.indices { body[i] = 0 } }
        return try decode(http.request("POST", "/v1/sys/unseal", headers: [("Content-Type", "application/json")], body: body), as: UnsealResponse.self)
    }

    public func seal() throws -> SealResponse {
        try decode(http.request("POST", "/v1/sys/seal"), as: SealResponse.self)
    }

    public func rekey(_ request: RekeyRequest) throws -> RekeyResponse {
        http.timeoutSeconds = max(http.timeoutSeconds, 120)
        var body = Array(try JSONEncoder().encode(request))
        defer { for i in body.indices { body[i] = 0 } }
        return try decode(http.request("POST", "/v1/sys/rekey", headers: [("Content-Type", "application/json")], body: body), as: RekeyResponse.self)
    }

    public func rotate() throws -> RotationInfo {
        try decode(http.request("POST", "/v1/sys/rotate"), as: RotationInfo.self)
    }
}
