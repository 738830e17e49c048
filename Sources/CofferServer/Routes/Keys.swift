import CofferAPI
import CofferCore
import CofferEngine
import CofferStore
import Foundation
import Hummingbird

/// /v1/sys/keys and /v1/sys/unseal: the keyring (admin). A sealed daemon answers
/// unseal in `SealedResponder`; once open, unseal is a no-op that says so.
extension APIResponder {
    static let keyEndpoints: [Endpoint] = [
        Endpoint("key_list", .exact("/v1/sys/keys"), [.init(.get, "key_list") { r, i throws(CofferError) in try await r.listKeys(i) }]),
        Endpoint("key_rotate", .exact("/v1/sys/keys/rotate"), [
            .init(.post, "key_rotate") { r, i throws(CofferError) in try await r.rotateKey(i) },
        ]),
        Endpoint("unseal", .exact("/v1/sys/unseal"), [.init(.post, "unseal") { r, i throws(CofferError) in try await r.unsealOpen(i) }]),
    ]

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
        return ErrorMapping.json(Self.info(try await engine.rotateDataKey(principal, ticket: i.ticket)))
    }

    /// Already open: the caller learns that (admins only), nothing changes.
    func unsealOpen(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let keyID = try await engine.confirmUnsealed(principal, ticket: i.ticket)
        return ErrorMapping.json(UnsealResponse(sealed: false, unsealedNow: false, keyID: keyID))
    }
}
