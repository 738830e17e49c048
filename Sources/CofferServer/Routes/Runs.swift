import CofferAPI
import CofferCore
import CofferEngine
import Foundation
import Hummingbird

/// /v1/runs: the secrets of one command (`coffer run`, `coffer build`), released in
/// one request, and the run's life until its tmpfs is gone.
extension APIResponder {
    static let runEndpoints: [Endpoint] = [
        Endpoint("runs", .exact("/v1/runs"), [
            .init(.post, "inject") { r, i throws(CofferError) in try await r.runStart(i) },
            .init(.get, "run_list") { r, i throws(CofferError) in try await r.runList(i) },
        ]),
        Endpoint("injections", .exact("/v1/injections"), [
            .init(.get, "inject_list") { r, i throws(CofferError) in try await r.injectList(i) },
        ]),
        Endpoint("run_end", .prefix("/v1/runs/", suffix: "/end", param: .accessor), [
            .init(.post, "run_end") { r, i throws(CofferError) in try await r.runEnd(i) },
        ]),
    ]

    func runStart(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        // any caller with a role (or a token) reaches the route; each path is decided below
        _ = try engine.gate.check(i.ticket, principal, .status, nil)
        guard let body: RunStartRequest = try await decodeBody(i.request, i.context, required: true) else {
            throw CofferError(.invalidJSON, "a JSON body is required")
        }
        guard let mount = RunService.Mount(rawValue: body.mount) else {
            throw CofferError(.invalidParameter, "mount must be \"private\" or \"daemon\"")
        }
        let network = try RunService.Network(rawValue: body.network ?? "host")
            .orThrow(CofferError(.invalidParameter, "network must be \"host\" or \"none\""))
        var refs: [(SecretPath, Int?)] = []
        for s in body.secrets {
            refs.append((try SecretPath(s.path), s.version))
        }
        var ttl: Int?
        if let t = body.ttl {
            guard let s = DurationText.seconds(t) else {
                throw CofferError(.invalidParameter, "ttl must be a duration like \"30m\"", hint: "units s, m, h, d, each once, largest first")
            }
            ttl = s
        }
        let dryRun = body.dryRun ?? false
        var holder: Int32?
        if let h = body.holderPID {
            guard h > 1, h <= Int(Int32.max) else { throw CofferError(.invalidParameter, "holder_pid must be a process id above 1") }
            guard mount == .private else { throw CofferError(.invalidParameter, "holder_pid goes with mount \"private\" (a container's own namespace)") }
            holder = Int32(h)
        }
        if let l = body.label {
            guard !l.isEmpty, l.utf8.count <= 128, l.utf8.allSatisfy({ SecretPath.isAllowed($0) || $0 == UInt8(ascii: ":") }) else {
                throw CofferError(.invalidParameter, "label must be 1-128 of [A-Za-z0-9._:-]")
            }
        }
        var follow: RunService.Follow?
        if let f = body.follow {
            var signal: Int32?
            if let name = f.signal {
                signal = try RunService.followSignals[name].orThrow(CofferError(.invalidParameter, "follow.signal must be SIGHUP, SIGUSR1 or SIGUSR2"))
            }
            var files: [RunService.Follow.File] = []
            for file in f.files {
                guard (0...0o777).contains(file.mode), (0..<Int(UInt32.max)).contains(file.uid), (0..<Int(UInt32.max)).contains(file.gid) else {
                    throw CofferError(.invalidParameter, "follow.files: mode 0...0777, uid and gid 0...4294967294")
                }
                files.append(.init(path: file.path, name: file.name, mode: UInt32(file.mode), uid: UInt32(file.uid), gid: UInt32(file.gid)))
            }
            follow = RunService.Follow(target: f.target, files: files, signal: signal)
        }
        let started = try await engine.runs.start(i.ticket, principal, secrets: refs, mount: mount, sizeBytes: body.sizeBytes, ttl: ttl,
                                                  network: network, dryRun: dryRun, holder: holder, label: body.label, follow: follow,
                                                  target: body.target)
        let secrets = started.secrets.map { s in
            RunSecretInfo(path: s.path.rawValue, version: s.meta.version, createdAt: Timestamp.string(millis: s.meta.createdAt),
                          allowedBy: s.allowedBy.rawValue, valueBase64: s.value.map { Data($0.copyToArray()).base64EncodedString() })
        }
        return ErrorMapping.json(RunStartResponse(
            id: started.run?.id, mount: mount.rawValue, mountPath: started.run?.mountPath, noswap: started.noswap, sizeBytes: started.sizeBytes,
            ttlSeconds: started.ttlSeconds, expiresAt: started.run.map { Timestamp.string(millis: $0.expiresAt) }, network: network.rawValue,
            secrets: secrets))
    }

    func runList(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        let all = try allQuery(i)
        let runs = try await engine.gate.perform(i.ticket, principal, all ? .admin : .status, nil, named: "run_list") { _ async throws(CofferError) in
            engine.runs.list(principal, all: all)
        }
        return ErrorMapping.json(RunListResponse(runs: runs.map(runInfo)))
    }

    func injectList(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        let all = try allQuery(i)
        let found = try await engine.gate.perform(i.ticket, principal, all ? .admin : .status, nil, named: "inject_list") { _ async throws(CofferError) in
            await engine.runs.injections(principal, all: all)
        }
        return ErrorMapping.json(InjectionListResponse(injections: found.map { x in
            InjectionInfo(id: x.run.id, label: x.run.label, uid: x.run.uid, pid: x.run.pid, mount: x.run.mount.rawValue, target: x.target,
                          startedAt: Timestamp.string(millis: x.run.startedAt), expiresAt: Timestamp.string(millis: x.run.expiresAt),
                          follow: x.run.follow != nil, secrets: x.run.paths.map { .init(path: $0, version: x.versions[$0]) },
                          fsType: x.fsType, source: x.source, mountOptions: x.mountOptions, superOptions: x.superOptions,
                          files: x.files.map { .init(name: $0.name, mode: "0" + String($0.mode & 0o7777, radix: 8), uid: $0.uid, gid: $0.gid, size: $0.size) },
                          verdict: x.verdict, reasons: x.reasons)
        }))
    }

    func runEnd(_ i: RouteInput) async throws(CofferError) -> Response {
        let principal = try i.caller
        try noQuery(i.request, allowed: [])
        // the runner ends its own run: its uid decides (an admin may end any)
        let run = try await engine.gate.perform(i.ticket, principal, .status, nil, named: "run_end") { _ async throws(CofferError) in
            let body: RunEndRequest? = try await decodeBody(i.request, i.context, required: false)
            return try await engine.runs.end(i.ticket, principal, id: i.param, isAdmin: isAdmin(principal), exitStatus: body?.exitStatus,
                                             reported: body?.fate)
        }
        return ErrorMapping.json(runInfo(run))
    }

    /// `?all=true|false` (everyone's, for admins), the only query these lists take.
    func allQuery(_ i: RouteInput) throws(CofferError) -> Bool {
        try noQuery(i.request, allowed: ["all"])
        guard let v = i.request.uri.queryParameters["all"] else { return false }
        guard v == "true" || v == "false" else { throw CofferError(.invalidParameter, "all must be true or false") }
        return v == "true"
    }

    func runInfo(_ r: RunService.Run) -> RunInfo {
        RunInfo(id: r.id, uid: r.uid, pid: r.pid, mount: r.mount.rawValue, mountPath: r.mountPath, startedAt: Timestamp.string(millis: r.startedAt),
                expiresAt: Timestamp.string(millis: r.expiresAt), paths: r.paths, network: r.network.rawValue, label: r.label, fate: r.fate)
    }
}

extension Optional {
    func orThrow(_ e: CofferError) throws(CofferError) -> Wrapped {
        guard let v = self else { throw e }
        return v
    }
}
