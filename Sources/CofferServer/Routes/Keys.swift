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
        Endpoint("seal", .exact("/v1/sys/seal"), [.init(.post, "seal") { r, i throws(CofferError) in try await r.seal(i) }]),
        Endpoint("rekey", .exact("/v1/sys/rekey"), [.init(.post, "rekey") { r, i throws(CofferError) in try await r.rekey(i) }]),
        Endpoint("rotate", .exact("/v1/sys/rotate"), [.init(.post, "rotate") { r, i throws(CofferError) in try await r.rotate(i) }]),
        Endpoint("backup", .exact("/v1/sys/backup"), [.init(.post, "backup") { r, i throws(CofferError) in try await r.backup(i) }]),
        Endpoint("integrity_check", .exact("/v1/sys/integrity"), [
            .init(.get, "integrity_check") { r, i throws(CofferError) in try await r.integrityCheck(i) },
        ]),
        Endpoint("integrity_accept", .exact("/v1/sys/integrity/accept"), [
            .init(.post, "record_digest_accepted") { r, i throws(CofferError) in try await r.acceptRecords(i) },
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

    /// Accept the records as they are (admin by peer credentials; nothing to say).
    func acceptRecords(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        try await noBody(i.request, i.context)
        let n = try await engine.acceptRecords(principal, ticket: i.ticket)
        return ErrorMapping.json(IntegrityAcceptResponse(accepted: n))
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
            // a body is parsed as when sealed: a key or passphrase given is checked against this holder
            var body = try await CofferResponder.readBody(i.request, limit: 4096)
            defer { Hashing.wipe(&body) }
            var key: (any Unlocker)?
            switch try CofferResponder.unsealStep(body) {
            case .unlocker(let u): key = u
            case .share, .reset: break  // nothing to collect: already open (the share is not looked at)
            }
            // a key or passphrase checked here spends the same budget as when sealed:
            // no unlimited oracle for the passphrase on an open daemon
            if key != nil { try host?.admitUnsealAttempt() }
            do throws(CofferError) {
                return try await engine.confirmUnsealed(principal, key: key, ticket: g.ticket)
            } catch {
                if key != nil, error.code == .invalidParameter { host?.unsealAttemptFailed() }
                throw error
            }
        }
        return ErrorMapping.json(UnsealResponse(sealed: false, unsealedNow: false, keyID: keyID, mode: (engine.keyHolder?.mode ?? .keyfile).rawValue))
    }

    /// Seals the daemon (admin): answered first, then new requests are refused, those
    /// in flight finish, the jobs stop and every key is zeroed.
    func seal(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        guard let host else { throw CofferError(.internal, "this responder has no host to seal") }
        try await engine.gate.perform(i.ticket, principal, .admin, nil, named: "seal") { _ async throws(CofferError) in
            try await noBody(i.request, i.context)
            let e = try host.beginSeal()
            Task.detached { await host.finishSeal(e) }
        }
        return ErrorMapping.json(SealResponse(sealed: true))
    }

    /// Changes how the root key is held (admin by peer credentials, proven by the
    /// current material); rate limited like unseal.
    func rekey(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let result = try await engine.gate.perform(i.ticket, principal, .admin, nil, named: "rekey") { g async throws(CofferError) in
            guard principal.token == nil else {
                g.ticket.decided(.deny("rekey: an admin by peer credentials, not a token"))
                throw CofferError(.permissionDenied, "rekey needs an admin by peer credentials, not a token", hint: "run it without COFFER_TOKEN")
            }
            guard let body: RekeyRequest = try await decodeBody(i.request, i.context, required: true) else {
                throw CofferError(.invalidJSON, "a JSON body is required")
            }
            try host?.admitUnsealAttempt()
            let current: any Unlocker
            do throws(CofferError) { current = try Self.currentUnlocker(body.current, holder: engine.keyHolder) } catch {
                host?.unsealAttemptFailed()
                throw error
            }
            let target: KeysService.RekeyTarget
            switch body.mode {
            case "passphrase":
                guard let p = body.passphrase, body.shares == nil, body.threshold == nil else {
                    throw CofferError(.invalidParameter, "mode passphrase takes 'passphrase' (and optionally 'kdf'), nothing else")
                }
                target = .passphrase(try CofferResponder.passphraseBytes(p), try KeyHolder.KDFLimits.named(body.kdf ?? "moderate"))
            case "shares":
                guard let n = body.shares, let k = body.threshold, body.passphrase == nil, body.kdf == nil else {
                    throw CofferError(.invalidParameter, "mode shares takes 'shares' and 'threshold', nothing else")
                }
                target = .shares(threshold: k, count: n)
            case "keyfile":
                guard body.passphrase == nil, body.shares == nil, body.threshold == nil, body.kdf == nil else {
                    throw CofferError(.invalidParameter, "mode keyfile takes nothing else")
                }
                target = .keyFile
            default:
                throw CofferError(.invalidParameter, "mode must be keyfile, passphrase or shares")
            }
            do throws(CofferError) {
                return try await engine.keys.rekey(g, current: current, to: target)
            } catch {
                if error.code == .invalidParameter { host?.unsealAttemptFailed() }
                throw error
            }
        }
        return ErrorMapping.json(RekeyResponse(
            mode: result.holder.mode.rawValue, unsealKeyID: result.holder.unsealKeyID,
            shares: result.shares.isEmpty ? nil : result.shares.map { String(decoding: $0.text.copyToArray(), as: UTF8.self) },
            threshold: result.holder.threshold, key: result.keyText.map { String(decoding: $0.copyToArray(), as: UTF8.self) }))
    }

    /// The proof of the current holder, of the kind the database uses.
    static func currentUnlocker(_ c: RekeyRequest.Current, holder: HolderRecord?) throws(CofferError) -> any Unlocker {
        let given = [c.key != nil, c.passphrase != nil, c.shares != nil].filter { $0 }.count
        guard given == 1 else { throw CofferError(.invalidParameter, "'current' takes exactly one of 'key', 'passphrase' or 'shares'") }
        if let k = c.key { return KeyTextUnlocker(text: Array(k.utf8)) }
        if let p = c.passphrase { return PassphraseUnlocker(passphrase: try CofferResponder.passphraseBytes(p)) }
        guard let texts = c.shares, let h = holder, h.mode == .shares, let t = h.threshold, let set = h.shareSet else {
            throw CofferError(.invalidParameter, "this database is not held by shares")
        }
        guard texts.count >= t, texts.count <= 255 else { throw CofferError(.invalidParameter, "give \(t) shares (the threshold)") }
        return try SharesUnlocker(texts: texts.map { Array($0.utf8) }, holder: h, set: set)
    }

    /// A new root key version and data key; the re-wrap runs in the background.
    func rotate(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        let r = try await engine.gate.perform(i.ticket, principal, .admin, nil, named: "rotate") { g async throws(CofferError) in
            try await noBody(i.request, i.context)
            return try await engine.keys.rotate(g)
        }
        return ErrorMapping.json(RotationInfo(rootKeyID: engine.rootKeyID, targetKeyID: r.targetKeyID, done: r.done, total: r.total,
                                              finished: r.total == 0))
    }
}
