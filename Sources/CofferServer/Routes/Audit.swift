import CofferAPI
import CofferAudit
import CofferCore
import CofferEngine
import CofferStore
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// /v1/audit: reading, verifying, exporting and pruning the trail.
extension APIResponder {
    static let auditEndpoints: [Endpoint] = [
        Endpoint("audit_read", .exact("/v1/audit/events"), [.init(.get, "audit_read") { r, i throws(CofferError) in try await r.auditEvents(i) }]),
        Endpoint("audit_verify", .exact("/v1/audit/verify"), [
            .init(.get, "audit_verify") { r, i throws(CofferError) in try await r.auditVerify(i) },
            .init(.post, "audit_verify") { r, i throws(CofferError) in try await r.auditVerify(i) },
        ]),
        Endpoint("audit_export", .exact("/v1/audit/export"), [.init(.get, "audit_export") { r, i throws(CofferError) in try await r.auditExport(i) }]),
        Endpoint("audit_prune", .exact("/v1/audit/prune"), [.init(.post, "audit_prune") { r, i throws(CofferError) in try await r.auditPrune(i) }]),
        Endpoint("audit_pubkey", .exact("/v1/audit/pubkey"), [.init(.get, "audit_pubkey") { r, i throws(CofferError) in try await r.auditPublicKey(i) }]),
    ]

    /// Every action an event can carry: the endpoint tables' and the engine's own.
    static let knownActions: Set<String> = {
        var known = Set(router.actions)
        known.formUnion(["call", "elevation_approve", "elevation_deny", "elevation_cancel", "elevation_end", "elevation_expire", "elevation_ack",
                         "elevation_activate", "elevation_revoke", "inject_plan", "inject_rotate", "inject_rotate_done", "jwt_sign", "ssh_sign",
                         "ssh_session_end", "token_reap", "records_authenticated", "record_digest_adopted", "malformed_request", "sealed_refusal", "sealed_requests_dropped", "unknown_route"])
        return known
    }()

    func auditEvents(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: ["after", "limit", "since", "until", "user", "uid", "path", "action", "decision"])
        // One decision, then the query: nothing of it is parsed for a caller who may not read the trail.
        let (events, limit) = try await engine.gate.perform(i.ticket, principal, .audit, nil, named: "audit_read") { g async throws(CofferError) in
            let q = i.request.uri.queryParameters
            // text filters never hold a NUL or other control character (PostgreSQL refuses a NUL in text)
            for name in ["user", "path", "action"] as [Substring] where q[name].map({ $0.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F } }) ?? false {
                throw CofferError(.invalidParameter, "\(name) must not hold control characters")
            }
            var f = AuditFilter()
            f.limit = 1000
            if let v = q["after"] { guard let n = Self.digits(v, as: Int64.self) else { throw CofferError(.invalidParameter, "after must be a sequence number") }; f.afterSeq = n }
            if let v = q["limit"] { guard let n = Self.digits(v, as: Int.self), (1...10000).contains(n) else { throw CofferError(.invalidParameter, "limit must be 1...10000") }; f.limit = n }
            if let v = q["since"] { f.since = try Self.parseTime(String(v), "since") }
            if let v = q["until"] { f.until = try Self.parseTime(String(v), "until") }
            if let v = q["user"] { f.user = String(v.prefix(256)) }
            if let v = q["uid"] { guard let n = Self.digits(v, as: UInt32.self), n != UInt32.max else { throw CofferError(.invalidParameter, "uid must be a number") }; f.uid = n }
            if let v = q["path"] { f.pathPrefix = String(v.prefix(512)).hasSuffix("/") ? String(v.dropLast()) : String(v.prefix(512)) }
            if let v = q["action"] {
                let action = String(v.prefix(64))
                // a misspelt action is an error, not an empty answer; one the trail has
                // not seen yet is fine if Coffer knows it
                if !Self.knownActions.contains(action), !(try engine.trail.actions(g).contains(action)) {
                    throw CofferError(.invalidParameter, "unknown action '\(Self.printable(action))'",
                                      hint: "actions: " + Self.knownActions.sorted().joined(separator: ", "))
                }
                f.action = action
            }
            if let v = q["decision"] {
                let known: [AuditDecision] = [.allow, .deny, .none, .needsApproval, .needsFreshLogin]
                guard let d = known.first(where: { $0.rawValue == v }) else {
                    throw CofferError(.invalidParameter, "decision must be one of " + known.map(\.rawValue).joined(separator: ", "))
                }
                f.decision = d
            }
            return (try engine.trail.events(g, f), f.limit)
        }
        return ErrorMapping.json(AuditEventsResponse(events: events, nextAfter: events.count == limit ? events.last?.cursor : nil))
    }

    func auditVerify(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let (verdict, instance, latest) = try await engine.auditVerify(principal, ticket: i.ticket)
        switch verdict {
        case .ok(let count, let head, let hash, let cps):
            return ErrorMapping.json(AuditVerifyResponse(ok: true, count: count, headSeq: head, headHash: Hex.encode(hash), checkpoints: cps, badSeq: nil, problem: nil,
                                                         latestCheckpoints: latest))
        case .bad(let seq, let problem):
            var r = AuditVerifyResponse(ok: false, count: nil, headSeq: nil, headHash: nil, checkpoints: nil, badSeq: seq, problem: problem)
            r.instance = instance
            return ErrorMapping.json(r)
        case .unsignedTail(_, let signed, _, _):  // not asked for here: the daemon signs its head before verifying
            return ErrorMapping.json(AuditVerifyResponse(ok: false, count: nil, headSeq: nil, headHash: nil, checkpoints: nil, badSeq: signed + 1,
                                                         problem: "events after the last checkpoint (seq \(signed)) are not signed"))
        }
    }

    func auditExport(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let chain = try await engine.auditExport(principal, ticket: i.ticket)
        var text = ""
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let lines = chain.events.map(AuditExportLine.init(event:)) + chain.checkpoints.map(AuditExportLine.init(checkpoint:))
        for line in lines {
            if let d = try? e.encode(line) { text += String(decoding: d, as: UTF8.self) + "\n" }
        }
        return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    func auditPrune(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        // audit, then admin, then the body: one decision each, recorded on the ticket
        let removed = try await engine.gate.perform(i.ticket, principal, .audit, nil, named: "audit_prune") { g async throws(CofferError) in
            _ = try engine.gate.check(g.ticket, principal, .admin, nil)
            guard let body: AuditPruneRequest = try await decodeBody(i.request, i.context, required: true) else {
                throw CofferError(.invalidJSON, "a JSON body is required")
            }
            return try await engine.trail.prune(g, through: body.throughSeq)
        }
        return ErrorMapping.json(AuditPruneResponse(removed: removed))
    }

    func auditPublicKey(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let key = try await engine.auditPublicKey(principal, ticket: i.ticket)
        return Response(status: .ok, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: AuditKeyFile.encode(key))))
    }

    /// Latest time accepted (9999-12-31T23:59:59Z): nothing outside 0...this can
    /// overflow a millisecond count or a date.
    static let maxUnixSeconds: Int64 = 253_402_300_799

    static func parseTime(_ s: String, _ name: String) throws(CofferError) -> Int64 {
        let bad = CofferError(.invalidParameter, "\(name) must be unix seconds (0...\(maxUnixSeconds)) or an RFC 3339 UTC time like 2026-11-29T10:00:00Z")
        guard s.utf8.count <= 64 else { throw bad }
        if let n = digits(s, as: Int64.self) {
            guard n <= maxUnixSeconds else { throw bad }
            return n * 1000  // unix seconds; bounded above, cannot overflow
        }
        // YYYY-MM-DDTHH:MM:SS[.fff]Z only, and a real date: it must format back to itself
        let b = Array(s.utf8)
        let shape = b.count == 20 || (b.count >= 22 && b.count <= 24 && b[19] == UInt8(ascii: "."))
        guard shape, b.last == UInt8(ascii: "Z") else { throw bad }
        let f = ISO8601DateFormatter()
        f.formatOptions = b.count == 20 ? [.withInternetDateTime] : [.withInternetDateTime, .withFractionalSeconds]
        guard let date = f.date(from: s) else { throw bad }
        let whole = ISO8601DateFormatter()
        whole.formatOptions = [.withInternetDateTime]
        guard whole.string(from: date).prefix(19) == s.prefix(19) else { throw bad }
        let t = date.timeIntervalSince1970
        guard t >= 0, t <= Double(maxUnixSeconds) else { throw bad }
        return Int64(t * 1000)
    }


}
