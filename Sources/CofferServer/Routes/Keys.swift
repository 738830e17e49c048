import CofferAPI
import CofferCore
import CofferCrypto
import CofferEngine
import CofferStore
import Foundation
import Hummingbird
import NIOCore

/// /v1/sys/keys and /v1/sys/unseal: the keyring (admin). A sealed daemon answers
/// unseal in `SealedResponder`; once open, unseal is a no-op that says so.
extension APIResponder {
    static let keyEndpoints: [Endpoint] = [
        Endpoint("key_list", .exact("/v1/sys/keys"), [.init(.get, "key_list") { r, i throws(CofferError) in try await r.listKeys(i) }]),
        Endpoint("key_rotate", .exact("/v1/sys/keys/rotate"), [
            .init(.post, "key_rotate") { r, i throws(CofferError) in try await r.rotateKey(i) },
        ]),
        Endpoint("unseal", .exact("/v1/sys/unseal"), [.init(.post, "unseal") { r, i throws(CofferError) in try await r.unsealOpen(i) }]),
        Endpoint("backup", .exact("/v1/sys/backup"), [.init(.post, "backup") { r, i throws(CofferError) in try await r.backup(i) }]),
        Endpoint("integrity_check", .exact("/v1/sys/integrity"), [
            .init(.get, "integrity_check") { r, i throws(CofferError) in try await r.integrityCheck(i) },
        ]),
    ]

    /// A backup file (admin): manifest, signature and the database snapshot.
    func backup(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let (file, manifest) = try await engine.backup(principal, ticket: i.ticket)
        i.ticket.update { $0.details["audit_head_seq"] = .number(manifest.auditHeadSeq); $0.details["secrets"] = .number(Int64(manifest.secrets)) }
        return ErrorMapping.bytes(file, contentType: "application/octet-stream")
    }

    func integrityCheck(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let r = try await engine.integrityCheck(principal, ticket: i.ticket)
        return ErrorMapping.json(IntegrityResponse(ok: r.bad.isEmpty, checked: r.checked, bad: r.bad))
    }

    static func info(_ k: KeyRecord) -> KeyInfo {
        KeyInfo(id: k.keyID, purpose: k.purpose.rawValue, state: k.state.rawValue, createdAt: Timestamp.string(millis: k.createdAt), versions: k.versions)
    }

    func listKeys(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let r = try await engine.listKeys(principal, ticket: i.ticket)
        return ErrorMapping.json(KeysResponse(rootKeyID: r.rootKeyID, keys: r.keys.map(Self.info)))
    }

    func rotateKey(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let key = try await engine.gate.perform(i.ticket, principal, .admin, nil, named: "key_rotate") { g async throws(CofferError) in
            try await noBody(i.request, i.context)  // strict: nothing to say here, so nothing may be said
            return try await engine.keys.rotateDataKey(g)
        }
        return ErrorMapping.json(Self.info(key))
    }

    /// Already open: the caller learns that (admins only), nothing changes.
    func unsealOpen(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let keyID = try await engine.gate.perform(i.ticket, principal, .admin, nil, named: "unseal") { g async throws(CofferError) in
            // a body is parsed as when sealed: a key given is checked against this root
            var body = try await CofferResponder.readBody(i.request, limit: 4096)
            defer { Hashing.wipe(&body) }
            let key = body.isEmpty ? nil : try CofferResponder.keyUnlocker(body)
            return try await engine.confirmUnsealed(principal, key: key, ticket: g.ticket)
        }
        return ErrorMapping.json(UnsealResponse(sealed: false, unsealedNow: false, keyID: keyID))
    }
}
