import CofferAPI
import CofferCore
import CofferEngine
import CofferStore
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// /v1/secrets: versioned secrets (read, write, metadata, list, delete, undelete, destroy).
extension APIResponder {
    static let secretEndpoints: [Endpoint] = [
        Endpoint("secret_data", .prefix("/v1/secrets/data/", suffix: "", param: .percentDecoded), [
            .init(.get, "read", now: { r, i throws(CofferError) in try r.read(i) }),
            .init(.put, "write") { r, i throws(CofferError) in try await r.write(i) },
            .init(.post, "write") { r, i throws(CofferError) in try await r.write(i) },
            .init(.delete, "delete") { r, i throws(CofferError) in try await r.change(i, .delete) },
        ]),
        Endpoint("read_metadata", .prefix("/v1/secrets/metadata/", suffix: "", param: .percentDecoded), [
            .init(.get, "read_metadata") { r, i throws(CofferError) in try await r.metadata(i) },
        ]),
        Endpoint("list", .exact("/v1/secrets/list"), [.init(.get, "list") { r, i throws(CofferError) in try await r.list(i) }]),
        Endpoint("list", .exact("/v1/secrets/list/"), [.init(.get, "list") { r, i throws(CofferError) in try await r.list(i) }]),
        Endpoint("list", .prefix("/v1/secrets/list/", suffix: "", param: .percentDecoded), [
            .init(.get, "list") { r, i throws(CofferError) in try await r.list(i) },
        ]),
        Endpoint("delete", .prefix("/v1/secrets/delete/", suffix: "", param: .percentDecoded), [
            .init(.post, "delete") { r, i throws(CofferError) in try await r.change(i, .delete, body: true) },
        ]),
        Endpoint("undelete", .prefix("/v1/secrets/undelete/", suffix: "", param: .percentDecoded), [
            .init(.post, "undelete") { r, i throws(CofferError) in try await r.change(i, .undelete, body: true) },
        ]),
        Endpoint("destroy", .prefix("/v1/secrets/destroy/", suffix: "", param: .percentDecoded), [
            .init(.post, "destroy") { r, i throws(CofferError) in try await r.change(i, .destroy, body: true) },
        ]),
    ]

    func read(_ i: RouteInput) throws(CofferError) -> ErrorMapping.Answer {
        let path = try SecretPath(i.param)
        let principal = try i.caller
        try noQuery(i.request, allowed: ["version"])
        var version: Int?
        if let v = i.request.uri.queryParameters["version"] {
            guard let n = Self.digits(v, as: Int.self), n >= 1, n <= Int(Int32.max) else {
                throw CofferError(.invalidVersion, "version must be a positive integer", hint: "omit it for the latest version")
            }
            version = n
        }
        let r = try engine.get(principal, path, version: version, ticket: i.ticket)
        if i.request.headers[.accept] == "application/octet-stream" {
            // Raw bytes, metadata in headers: nothing to decode for a shell pipeline.
            var buffer = ByteBuffer()
            _ = r.value.withUnsafeBytes { buffer.writeBytes($0) }
            var headers: HTTPFields = [.contentType: "application/octet-stream"]
            headers[Self.versionHeader] = String(r.meta.version)
            headers[Self.currentVersionHeader] = String(r.currentVersion)
            return ErrorMapping.Answer(head: HTTPResponse(status: .ok, headerFields: headers), body: buffer)
        }
        let body = AnswerJSON.secret(path: path.rawValue, value: r.value, currentVersion: r.currentVersion, metadata: Self.meta(r.meta))
        return ErrorMapping.Answer(head: HTTPResponse(status: .ok, headerFields: [.contentType: "application/json"]), body: body)
    }

    /// One decision, then the body: it is parsed inside the gate's work, so nothing of
    /// it is read for a caller who may not write here.
    func write(_ i: RouteInput) async throws(CofferError) -> Response {
        let path = try SecretPath(i.param)
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let rec = try await engine.gate.perform(i.ticket, principal, .write, path) { g async throws(CofferError) in
            guard let body: PutSecretRequest = try await decodeBody(i.request, i.context, required: true) else {
                throw CofferError(.invalidJSON, "a JSON body is required")
            }
            return try await engine.secrets.put(g, path, value: try valueBytes(body), cas: body.cas)
        }
        // the version number says whether the secret existed: only for who may read metadata
        guard engine.decide(principal, .readMetadata, path).allowed else {
            return ErrorMapping.json(WriteResponse(path: path.rawValue, version: nil, metadata: nil))
        }
        return ErrorMapping.json(WriteResponse(path: path.rawValue, version: rec.version, metadata: Self.meta(rec)))
    }

    func metadata(_ i: RouteInput) async throws(CofferError) -> Response {
        let path = try SecretPath(i.param)
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let rec = try await engine.metadata(principal, path, ticket: i.ticket)
        return ErrorMapping.json(Self.metadataResponse(rec, maxVersions: engine.limits.maxVersions))
    }

    func list(_ i: RouteInput) async throws(CofferError) -> Response {
        let prefix = try SecretPrefix(i.param)
        let principal = try i.caller
        try noQuery(i.request, allowed: ["after", "limit"])
        let q = i.request.uri.queryParameters
        var limit: Int?
        if let l = q["limit"] {
            guard let n = Self.digits(l, as: Int.self), n >= 1 else { throw CofferError(.invalidParameter, "limit must be a positive integer") }
            limit = n
        }
        let page = try await engine.list(principal, prefix, after: q["after"].map(String.init), limit: limit, ticket: i.ticket)
        return ErrorMapping.json(ListResponse(prefix: prefix.rawValue, keys: page.keys, nextAfter: page.nextAfter))
    }

    /// delete (also DELETE on data), undelete, destroy: the latest version, or the
    /// versions named in the body.
    func change(_ i: RouteInput, _ change: Store.VersionChange, body: Bool = false) async throws(CofferError) -> Response {
        let path = try SecretPath(i.param)
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let action: Action = switch change {
        case .delete: .delete
        case .undelete: .undelete
        case .destroy: .destroy
        }
        let rec = try await engine.gate.perform(i.ticket, principal, action, path) { g async throws(CofferError) in
            var versions: [Int] = []
            if body {
                let b: VersionsRequest? = try await decodeBody(i.request, i.context, required: false)
                versions = b?.versions ?? []
            }
            return try await engine.secrets.change(g, change, path, versions: versions)
        }
        return ErrorMapping.json(Self.metadataResponse(rec, maxVersions: engine.limits.maxVersions))
    }
}
