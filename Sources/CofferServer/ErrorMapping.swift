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

    /// An answer whose body is one buffer, known at once: what the event-loop request
    /// path writes without a task (a Response's body is written asynchronously).
    public struct Answer: Sendable {
        public var head: HTTPResponse
        public var body: ByteBuffer

        public var response: Response {
            Response(status: head.status, headers: head.headerFields, body: .init(byteBuffer: body))
        }
    }

    public static func response(_ error: CofferError, headers extra: HTTPFields = [:]) -> Response { answer(error, headers: extra).response }

    public static func answer(_ error: CofferError, headers extra: HTTPFields = [:]) -> Answer {
        let data = (try? encoder.encode(ErrorBody(error))) ?? Data(#"{"error":{"code":"internal_error","message":"error"}}"#.utf8)
        var headers = extra
        headers[.contentType] = "application/json"
        return Answer(head: HTTPResponse(status: status(error.code), headerFields: headers), body: ByteBuffer(bytes: data))
    }

    static func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Response { jsonAnswer(value, status: status).response }

    static func jsonAnswer<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Answer {
        guard let data = try? encoder.encode(value) else {
            return answer(CofferError(.internal, "could not encode the response"))
        }
        return Answer(head: HTTPResponse(status: status, headerFields: [.contentType: "application/json"]), body: ByteBuffer(bytes: data))
    }

    /// A body that is not JSON (metrics text, a backup file, an NDJSON export).
    static func bytes(_ bytes: [UInt8], contentType: String) -> Response {
        Response(status: .ok, headers: [.contentType: contentType], body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }
}
