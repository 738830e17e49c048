import CofferAPI
public import CofferCore
import Foundation
public import HTTPTypes
public import Hummingbird
import NIOCore

/// The one place where errors become HTTP (ARCHITECTURE.md, request flow).
public enum ErrorMapping {
    public static func status(_ code: CofferError.Code) -> HTTPResponse.Status {
        switch code {
        case .malformedRequest, .invalidJSON: .badRequest
        case .unknownField, .invalidPath, .invalidVersion, .invalidValue, .invalidParameter: .unprocessableContent
        case .valueTooLarge, .bodyTooLarge: .contentTooLarge
        case .notFound, .routeNotFound: .notFound
        case .methodNotAllowed: .methodNotAllowed
        case .unauthenticated, .tokenUnknown, .tokenExpired, .tokenRevoked, .tokenExhausted, .tokenWrongUID: .unauthorized
        case .invalidPolicy: .unprocessableContent
        case .permissionDenied: .forbidden
        case .casMismatch: .conflict
        case .sealed, .storage, .auditUnavailable: .serviceUnavailable
        case .integrity, .internal, .config, .keyFile: .internalServerError
        }
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }()

    public static func response(_ error: CofferError, headers extra: HTTPFields = [:]) -> Response {
        let data = (try? encoder.encode(ErrorBody(error))) ?? Data(#"{"error":{"code":"internal_error","message":"error"}}"#.utf8)
        var headers = extra
        headers[.contentType] = "application/json"
        return Response(status: status(error.code), headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Response {
        guard let data = try? encoder.encode(value) else {
            return response(CofferError(.internal, "could not encode the response"))
        }
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
