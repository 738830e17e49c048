/// The error every layer above the crypto module speaks. The server maps `code`
/// to an HTTP status in one place (CofferServer/ErrorMapping.swift); the CLI maps
/// it to an exit code. Messages never contain secret values (invariant 1).
public struct CofferError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable, Codable, CaseIterable {
        // caller's fault
        case malformedRequest = "malformed_request"
        case invalidJSON = "invalid_json"
        case unknownField = "unknown_field"
        case invalidPath = "invalid_path"
        case invalidVersion = "invalid_version"
        case invalidValue = "invalid_value"
        case invalidParameter = "invalid_parameter"
        case valueTooLarge = "value_too_large"
        case bodyTooLarge = "body_too_large"
        case notFound = "not_found"
        case routeNotFound = "route_not_found"
        case methodNotAllowed = "method_not_allowed"
        case unauthenticated = "unauthenticated"
        case permissionDenied = "permission_denied"
        case casMismatch = "cas_mismatch"
        case invalidPolicy = "invalid_policy"
        case tokenUnknown = "token_unknown"
        case tokenExpired = "token_expired"
        case tokenRevoked = "token_revoked"
        case tokenExhausted = "token_exhausted"
        case tokenWrongUID = "token_uid_mismatch"
        case approvalRequired = "approval_required"
        case loginFailed = "login_failed"
        case freshLoginRequired = "fresh_login_required"
        case tooManyRuns = "too_many_runs"
        case networkNotIsolated = "network_not_isolated"
        case rateLimited = "rate_limited"
        case conflict = "conflict"
        // daemon's state
        case sealed = "sealed"
        case mountFailed = "mount_failed"
        case integrity = "integrity_error"
        case storage = "storage_error"
        case auditUnavailable = "audit_unavailable"
        case `internal` = "internal_error"
        // configuration and start-up
        case config = "config_error"
        case keyFile = "key_file_error"
    }

    public var code: Code
    public var message: String
    public var hint: String?

    public init(_ code: Code, _ message: String, hint: String? = nil) {
        self.code = code
        self.message = message
        self.hint = hint
    }

    public var description: String {
        if let hint { return "\(message) (hint: \(hint))" }
        return message
    }
}

extension CofferError.Code {
    /// The HTTP status of each code: the one map (the server's ErrorMapping and the
    /// gate's own events use it).
    public var httpStatus: Int {
        switch self {
        case .malformedRequest, .invalidJSON: 400
        case .unknownField, .invalidPath, .invalidVersion, .invalidValue, .invalidParameter, .invalidPolicy: 422
        case .valueTooLarge, .bodyTooLarge: 413
        case .notFound, .routeNotFound: 404
        case .methodNotAllowed: 405
        case .unauthenticated, .tokenUnknown, .tokenExpired, .tokenRevoked, .tokenExhausted, .tokenWrongUID, .freshLoginRequired, .loginFailed: 401
        case .permissionDenied, .approvalRequired, .networkNotIsolated: 403
        case .casMismatch, .conflict: 409
        case .tooManyRuns, .rateLimited: 429
        case .sealed, .storage, .auditUnavailable, .mountFailed: 503
        case .integrity, .internal, .config, .keyFile: 500
        }
    }
}
