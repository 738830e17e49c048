import CofferCore
import CofferCrypto
import CofferEngine
@testable import CofferServer
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Testing

/// The endpoint tables in process: request in, response out, no socket. The peer is
/// whatever the test says the kernel said.
@Suite struct EndpointTableTests {
    final class Harness {
        let dir: String
        let responder: APIResponder
        let engine: SecretEngine

        init() async throws {
            dir = NSTemporaryDirectory() + "coffer-routes-" + UUID().uuidString
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            var config = CofferConfig.dev(directory: dir, uid: 1000)
            config.policyFile = nil
            try KeyFile.create(at: config.keyFile)
            let logger = Logger(label: "test")
            engine = try await SecretEngine.open(
                config: config, unlocker: KeyFileUnlocker(path: config.keyFile),
                policies: PolicyStore(path: nil, fallback: Policy.adminOnly(uids: [1000], group: nil), logger: logger), logger: logger)
            let e = engine
            Task.detached { await e.runAuditWriter() }
            responder = APIResponder(engine: engine, settings: .init(config: config))
        }

        deinit { try? FileManager.default.removeItem(atPath: dir) }

        func send(_ method: HTTPRequest.Method, _ path: String, body: String? = nil, uid: UInt32 = 1000) async throws -> (Int, String, HTTPFields) {
            let head = HTTPRequest(method: method, scheme: nil, authority: "coffer", path: path)
            let request = Request(head: head, body: .init(buffer: ByteBuffer(string: body ?? "")))
            let context = CofferRequestContext(peer: PeerCredentials(pid: 42, uid: uid, gid: uid), logger: Logger(label: "test"))
            let response = try await responder.respond(to: request, context: context)
            return (Int(response.status.code), try await bodyText(response), response.headers)
        }
    }

    @Test func theTablesRouteRawPaths() throws {
        let r = APIResponder.router
        guard case .found(let e, let p) = r.resolve("/v1/secrets/data/ci/app%2Fdb") else { Issue.record("not found"); return }
        #expect(e.name == "secret_data" && p == "ci/app/db")
        guard case .found(let t, let a) = r.resolve("/v1/tokens/acc_12/revoke") else { Issue.record("revoke"); return }
        #expect(t.name == "token_revoke" && a == "acc_12")
        guard case .found(let l, let a2) = r.resolve("/v1/tokens/self") else { Issue.record("lookup"); return }
        #expect(l.name == "token_lookup" && a2 == "self")
        if case .found = r.resolve("/v1/tokens/acc_12/other") { Issue.record("matched an unknown suffix") }
        if case .found = r.resolve("/v1//secrets/data/x") { Issue.record("a // was normalised") }
        guard case .badParam(_, let err) = r.resolve("/v1/secrets/data/%zz") else { Issue.record("bad escape"); return }
        #expect(err.code == .invalidPath || err.code == .invalidParameter)
    }

    @Test func requestInResponseOut() async throws {
        let h = try await Harness()
        var (code, body, headers) = try await h.send(.put, "/v1/secrets/data/t/x", body: #"{"value":"v1"}"#)
        #expect(code == 200 && body.contains(#""version":1"#), "\(body)")
        #expect(headers[HTTPField.Name("Coffer-Request-Id")!] != nil)
        (code, body, _) = try await h.send(.get, "/v1/secrets/data/t/x")
        #expect(code == 200 && body.contains(#""value":"v1""#))
        // a stranger: 403 whether or not the path exists
        (code, body, _) = try await h.send(.get, "/v1/secrets/data/t/x", uid: 4242)
        #expect(code == 403 && body.contains("permission_denied"))
        (code, _, _) = try await h.send(.get, "/v1/secrets/data/t/none", uid: 4242)
        #expect(code == 403)
        // decided by the table: 404 unknown path, 405 with Allow
        (code, body, _) = try await h.send(.get, "/v1/nothing/here")
        #expect(code == 404 && body.contains("route_not_found"))
        (code, body, headers) = try await h.send(.patch, "/v1/secrets/data/t/x")
        #expect(code == 405 && headers[.allow] == "GET, PUT, POST, DELETE", "\(headers)")
        (code, _, headers) = try await h.send(.delete, "/v1/sys/status")
        #expect(code == 405 && headers[.allow] == "GET")
        // health answers anyone, unaudited
        (code, body, _) = try await h.send(.get, "/v1/sys/health", uid: 4242)
        #expect(code == 200 && body.contains(#""status":"ok""#))
    }
}

/// A response's body as text (what a client would read off the socket).
func bodyText(_ response: Response) async throws -> String {
    final class Box: @unchecked Sendable { var bytes = ByteBuffer() }  // one writer, awaited
    struct Collector: ResponseBodyWriter {
        let box: Box
        mutating func write(_ buffer: ByteBuffer) async throws { box.bytes.writeImmutableBuffer(buffer) }
        consuming func finish(_ trailingHeaders: HTTPFields?) async throws {}
    }
    let box = Box()
    try await response.body.write(Collector(box: box))
    return String(buffer: box.bytes)
}
