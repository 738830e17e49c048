import CofferCore
import CofferEngine
@testable import CofferServer
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Testing

/// The sealed daemon in process: which routes answer, who may unseal, and that the
/// same responder serves the tables once open.
@Suite struct SealedResponderTests {
    @Test func sealedUntilAnAdminUnseals() async throws {
        let dir = NSTemporaryDirectory() + "coffer-sealed-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var config = CofferConfig.dev(directory: dir, uid: 1000)
        config.policyFile = nil
        try KeyFile.create(at: config.keyFile)
        let logger = Logger(label: "test")
        let policies = try PolicyStore(path: nil, fallback: Policy.adminOnly(uids: [1000], group: nil), logger: logger)
        // initialise the database first (as `cofferd init` does), then start sealed over it
        _ = try await SecretEngine.open(config: config, unlocker: KeyFileUnlocker(path: config.keyFile), policies: policies, logger: logger)
        let cfg = config
        let host = EngineHost(sealed: { unlocker throws(CofferError) in
            let e = try await SecretEngine.open(config: cfg, unlocker: unlocker, policies: policies, logger: logger, create: false)
            Task.detached { await e.runAuditWriter() }
            return e
        }, unlocker: KeyFileUnlocker(path: config.keyFile), policies: policies)
        let responder = CofferResponder(host: host, settings: .init(config: config), logger: logger)

        func send(_ method: HTTPRequest.Method, _ path: String, body: String = "", uid: UInt32 = 1000) async throws -> (Int, String) {
            let request = Request(head: HTTPRequest(method: method, scheme: nil, authority: "coffer", path: path),
                                  body: .init(buffer: ByteBuffer(string: body)))
            let context = CofferRequestContext(peer: PeerCredentials(pid: 42, uid: uid, gid: uid), logger: logger)
            let response = try await responder.respond(to: request, context: context)
            return (Int(response.status.code), try await bodyText(response))
        }

        var (code, body) = try await send(.get, "/v1/sys/health")
        #expect(code == 200 && body.contains(#""sealed":true"#), "\(body)")
        (code, body) = try await send(.get, "/v1/sys/status")
        #expect(code == 200 && body.contains(#""sealed":true"#) && !body.contains("secrets"), "\(body)")
        // as when open: status needs a role, and takes no query
        (code, body) = try await send(.get, "/v1/sys/status", uid: 4242)
        #expect(code == 403, "\(body)")
        (code, body) = try await send(.get, "/v1/sys/status?x=1")
        #expect(code == 422, "\(body)")
        for (m, p) in [(HTTPRequest.Method.get, "/v1/secrets/data/a/b"), (.put, "/v1/secrets/data/a/b"), (.get, "/v1/sys/keys"),
                       (.post, "/v1/tokens"), (.get, "/v1/audit/events"), (.get, "/nowhere")] {
            (code, body) = try await send(m, p)
            #expect(code == 503 && body.contains(#""code":"sealed""#), "\(m) \(p): \(code) \(body)")
        }
        (code, body) = try await send(.post, "/v1/sys/unseal", uid: 4242)
        #expect(code == 403, "\(body)")
        (code, body) = try await send(.post, "/v1/sys/unseal", body: #"{"key":"coffer-root-key-v1:00"}"#)
        #expect(code == 422 && host.isSealed, "\(body)")
        (code, body) = try await send(.post, "/v1/sys/unseal", body: String(repeating: "x", count: 5000))
        #expect(code == 413 && host.isSealed, "\(body)")
        (code, body) = try await send(.post, "/v1/sys/unseal")
        #expect(code == 200 && body.contains(#""unsealed_now":true"#) && !host.isSealed, "\(body)")
        (code, body) = try await send(.put, "/v1/secrets/data/a/b", body: #"{"value":"v"}"#)
        #expect(code == 200, "\(body)")
        (code, body) = try await send(.post, "/v1/sys/unseal")
        #expect(code == 200 && body.contains(#""unsealed_now":false"#), "\(body)")
        // what was asked while sealed is in the trail now: 3 refused unseals, the real
        // one, the no-op one; 6 refusals; 3 status calls
        (code, body) = try await send(.get, "/v1/audit/events?action=unseal")
        #expect(code == 200 && body.components(separatedBy: #""action":"unseal""#).count == 6, "\(body)")
        #expect(body.contains(#""status":403"#) && body.contains(#""status":413"#) && body.contains(#""unlocker":"keyfile"#), "\(body)")
        (code, body) = try await send(.get, "/v1/audit/events?action=sealed_refusal")
        #expect(body.components(separatedBy: #""code":"sealed""#).count == 1 && body.components(separatedBy: #""error_code":"sealed""#).count == 7, "\(body)")
        (code, body) = try await send(.get, "/v1/audit/events?action=status")
        #expect(body.components(separatedBy: #""answered while sealed""#).count == 4, "\(body)")
        // open: bodies are strict; a key given is checked against this root
        (code, body) = try await send(.post, "/v1/sys/unseal", body: "garbage")
        #expect(code == 400, "\(body)")
        (code, body) = try await send(.post, "/v1/sys/unseal", body: #"{"key":"coffer-root-key-v1:\#(String(repeating: "ab", count: 32))"}"#)
        #expect(code == 422 && body.contains("does not open this database"), "\(body)")
        (code, body) = try await send(.post, "/v1/sys/unseal", body: #"{"key":"not a key"}"#)
        #expect(code == 422, "found by schemathesis: a malformed key was a 500 once open: \(body)")
        (code, body) = try await send(.post, "/v1/sys/keys/rotate", body: #"{"purpose":"token-hash"}"#)
        #expect(code == 422, "\(body)")
        (code, body) = try await send(.get, "/v1/audit/events?after=1&after=2")
        #expect(code == 422 && body.contains("twice"), "\(body)")
    }
}
