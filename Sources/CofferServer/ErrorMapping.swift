import CofferAPI
public import CofferCore
import Foundation
public import HTTPTypes
public import Hummingbird
import NIOCore

/// The one place where errors become HTTP (ARCHITECTURE.md, request flow).
public enum ErrorMapping {
    public static func status(_ code: CofferError.Code) -> HTTPResponse.Status {
        switch code.httpStatus {
        case 400: .badRequest
        case 401: .unauthorized
        case 403: .forbidden
        case 404: .notFound
        case 405: .methodNotAllowed
        case 409: .conflict
        case 413: .contentTooLarge
        case 422: .unprocessableContent
        case 429: .tooManyRequests
        case 503: .serviceUnavailable
        default: .internalServerError
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

    /// A body that is not JSON (metrics text, a backup file, an NDJSON export).
    static func bytes(_ bytes: [UInt8], contentType: String) -> Response {
        Response(status: .ok, headers: [.contentType: contentType], body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }
}
