import CofferAPI
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

    /// The byte-wise router: suffixes, parameters with non-ASCII text, prefixes that
    /// are longer than the path, and each table's longest match first.
    @Test func theRouterMatchesBytes() throws {
        let r = APIResponder.router
        guard case .found(let e, let p) = r.resolve("/v1/secrets/data/caf\u{e9}/\u{1F600}") else { Issue.record("non-ASCII"); return }
        #expect(e.name == "secret_data" && p == "caf\u{e9}/\u{1F600}")
        guard case .found(let m, let mp) = r.resolve("/v1/secrets/metadata/a") else { Issue.record("metadata"); return }
        #expect(m.name == "read_metadata" && mp == "a")
        guard case .found(let end, let id) = r.resolve("/v1/runs/run_1/end") else { Issue.record("run end"); return }
        #expect(id == "run_1" && end.methods.contains { $0.action.contains("end") })
        for miss in ["/v1/secrets/data", "/v1/runs//end", "/v1/runs/end", "/v1/secret/data/x", "/", "", "/v1/tokens/a/b/revoke"] {
            if case .found(let e, let p) = r.resolve(miss) { Issue.record("\(miss) matched \(e.name) with \(p)") }
        }
        guard case .found(let empty, let ep) = r.resolve("/v1/secrets/data/") else { Issue.record("empty param"); return }
        #expect(empty.name == "secret_data" && ep.isEmpty)  // the handler refuses it (SecretPath)
    }

    /// The read's hand-written JSON is byte for byte what JSONEncoder writes, for
    /// values that are text, binary, control characters, quotes and non-ASCII.
    @Test func theReadAnswerIsWhatJSONEncoderWrites() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var values: [[UInt8]] = [[], Array("v1".utf8), Array("a\"b\\c/d\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}".utf8),
                                 Array("caf\u{e9} \u{2028}\u{1F600}".utf8), [0xff, 0xfe, 0x00], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80],
                                 Array(0...255).map(UInt8.init), [0x41, 0x00, 0x42]]
        for n in 1...5 { values.append((0..<n).map { _ in UInt8.random(in: 0...255) }) }
        for user: String? in [nil, "ci \"bot\""] {
            for deleted: String? in [nil, "2026-11-30T12:00:00.000Z"] {
                let meta = VersionMetadata(version: 7, createdAt: "2026-11-30T12:00:00.000Z", createdBy: CreatedBy(uid: 4_294_967_294, user: user),
                                           size: 12, state: deleted == nil ? "active" : "deleted", deletedAt: deleted)
                for v in values {
                    let secret = try SecretBytes.copying(v)
                    let ours = AnswerJSON.secret(path: "ci/a b/\u{e9}", value: secret, currentVersion: 9, metadata: meta)
                    let theirs = try encoder.encode(SecretResponse(path: "ci/a b/\u{e9}", value: String(validating: v, as: UTF8.self),
                                                                   valueBase64: Data(v).base64EncodedString(), currentVersion: 9, metadata: meta))
                    #expect(Array(ours.readableBytesView) == Array(theirs), "\(v): \(String(buffer: ours))")
                }
            }
        }
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
