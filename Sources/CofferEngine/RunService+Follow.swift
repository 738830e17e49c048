import CCofferLinux
import CofferAudit
import CofferCrypto
public import CofferCore
import Foundation
import Glibc
import Synchronization

/// Live rotation: a followed run (`coffer run --follow`, a container's
/// `io.coffer.follow=true`) gets each new version of its secrets written into its tmpfs
/// while it lives — decided again for the run's owner, a new file renamed over the
/// old one (a reader sees the whole old value or the whole new one), the holder
/// optionally signalled, one `inject_rotate` event per update.
extension RunService {
    public static let followSignals: [String: Int32] = ["SIGHUP": SIGHUP, "SIGUSR1": SIGUSR1, "SIGUSR2": SIGUSR2]

    func checkFollow(_ f: Follow, _ p: Principal, _ paths: [SecretPath], mount: Mount, network: Network) throws(CofferError) {
        guard network == .host else {
            throw CofferError(.invalidParameter, "a run without network is not followed", hint: "its namespaces are its own: restart it for a new version")
        }
        guard p.token == nil else {
            throw CofferError(.invalidParameter, "a run started with a token is not followed",
                              hint: "updates are decided for the run's owner until it ends, and a token's revocation could not stop them: follow as yourself")
        }
        // a private namespace is the caller's: cofferd enters it only for root (whom it
        // cannot stop anyway); anyone else's runs are followed in a tmpfs cofferd made
        guard mount == .daemon || p.uid == 0 else {
            throw CofferError(.invalidParameter, "only root's private runs are followed", hint: "follow with mount \"daemon\" (cofferd's tmpfs)")
        }
        guard mount == .daemon || geteuid() == 0 else {
            throw CofferError(.invalidParameter, "live rotation into a private namespace needs cofferd to run as root")
        }
        guard Self.validTarget(f.target) else {
            throw CofferError(.invalidParameter, "follow.target must be an absolute path of plain names")
        }
        guard !f.files.isEmpty, f.files.count <= Self.maxSecrets else {
            throw CofferError(.invalidParameter, "follow.files must name 1...\(Self.maxSecrets) files")
        }
        let asked = Set(paths.map(\.rawValue))
        var names = Set<String>()
        for file in f.files {
            guard asked.contains(file.path) else { throw CofferError(.invalidParameter, "follow.files names \(file.path), which the run does not ask for") }
            guard !file.name.isEmpty, file.name.utf8.count <= 255, file.name != ".", file.name != "..",
                  file.name.utf8.allSatisfy(SecretPath.isAllowed), names.insert(file.name).inserted else {
                throw CofferError(.invalidParameter, "follow.files: each name must be a distinct file name of [A-Za-z0-9._-]")
            }
            guard file.mode <= 0o777, file.uid < UInt32.max, file.gid < UInt32.max else {
                throw CofferError(.invalidParameter, "follow.files: mode 0...0777, uid and gid below 4294967295")
            }
            guard p.uid == 0 || (file.uid == p.uid && file.gid == p.gid) else {
                throw CofferError(.invalidParameter, "follow.files: only root gives files to another uid or gid")
            }
        }
    }

    /// Called after every committed write: followed runs of that path are updated off
    /// the request path, one update at a time (each writes the newest version then).
    func secretWritten(_ path: SecretPath) {
        let followed = live.withLock { runs in runs.values.contains { $0.principal != nil && $0.run.follow?.files.contains { $0.path == path.rawValue } == true } }
        guard followed else { return }
        let start = rotation.withLock { r -> Bool in
            r.pending.insert(path.rawValue)
            if r.draining { return false }
            r.draining = true
            return true
        }
        guard start else { return }
        Task.detached { [self] in
            while true {
                let batch = rotation.withLock { r -> Set<String> in
                    let b = r.pending
                    r.pending.removeAll()
                    if b.isEmpty { r.draining = false }
                    return b
                }
                if batch.isEmpty { return }
                let targets = live.withLock { runs in
                    runs.values.filter { $0.principal != nil }.map(\.run.id)
                }
                for id in targets {
                    for path in batch.sorted() { await rotate(id, path) }
                }
            }
        }
    }

    /// Another instance changed secrets (a shared database): every followed path is
    /// looked at again (a run gets a version only when it is newer than what it has).
    func sharedStateChanged() {
        let paths = live.withLock { runs in
            Set(runs.values.filter { $0.principal != nil }.flatMap { $0.run.follow?.files.map(\.path) ?? [] })
        }
        for p in paths { if let path = try? SecretPath(p) { secretWritten(path) } }
    }

    /// One followed run, one path: the newest version, if it is not what the run has.
    func rotate(_ id: String, _ pathText: String) async {
        guard let (run, principal, had, pidfd) = live.withLock({ runs -> (Run, Principal, Int?, Int32)? in
            guard let l = runs[id], let p = l.principal, let f = l.run.follow, f.files.contains(where: { $0.path == pathText }) else { return nil }
            // a copy of the pidfd, taken under the lock: the run may end (and its pidfd be
            // closed, its number reused) while this update is under way
            return (l.run, p, l.written[pathText], fcntl(l.pidfd, F_DUPFD_CLOEXEC, 0))
        }) else { return }
        defer { if pidfd >= 0 { close(pidfd) } }
        guard pidfd >= 0, let follow = run.follow, let path = try? SecretPath(pathText) else { return }
        let ticket = gate.ticket(for: principal, action: "inject_rotate", path: pathText)
        var details = AuditDetails()
        details["run_id"] = .text(id)
        if let label = run.label { details["label"] = .text(label) }
        details["target_uid"] = .number(Int64(run.uid))
        ticket.update { $0.details = details }
        do throws(CofferError) {
            let value = try await gate.performEach(ticket, principal, anyOf: [.read, .inject], [path]) { g, _ throws(CofferError) in
                try secrets.get(g, path, version: nil)
            }
            let version = value.meta.version
            guard version != had else { return }  // nothing new for this run (no event)
            details[AuditDetails.versions] = .list([String(version)])
            ticket.update { $0.details = details }
            // decide, audit, then act: the event is durable before the value is written
            try await gate.settleNow(ticket)
            // (off the shared pool: entering the holder's namespaces can be held up by it)
            guard let holder = await OffPool.run({ try? self.rotationHolder(run) }) ?? nil else {
                throw CofferError(.mountFailed, "the run's namespace holder is gone or could not be examined")
            }
            // other runs' tmpfs that cofferd made: a namespace cloned from the host's shows them too
            let excluded = otherDaemonMounts(than: id)
            // bit 0: no symbolic links (a container resolves inside its root instead);
            // bit 1: a private mount, sealed read-only when made: it ends read-only
            let nosymlinks: Int32 = (run.label?.hasPrefix("container:") == true ? 0 : 1) | (run.mount == .private ? 2 : 0)
            for file in follow.files where file.path == pathText {
                let secret = value.value
                let target = follow.target
                let result = await OffPool.run(timeout: 15, { () -> (Int32, Int32, Int32) in
                    var stage: Int32 = 0
                    let rc = secret.withUnsafeBytes { raw in
                        excluded.withUnsafeBufferPointer { ex in
                            coffer_rotate_file(pidfd, holder, target, nosymlinks, ex.baseAddress, Int32(ex.count), file.name,
                                               raw.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt(raw.count), file.mode, file.uid, file.gid, &stage)
                        }
                    }
                    return (rc, rc == 0 ? 0 : errno, stage)
                })
                let (rc, err, stage) = result ?? (-1, ETIMEDOUT, 0)
                if rc != 0 {
                    let reason = String(cString: strerror(err))
                    logger.warning("a followed run's file could not be updated", metadata: ["run.id": "\(id)", "file": "\(file.name)", "stage": "\(stage)", "error": "\(reason)"])
                    await recordRotation(run, pathText, version, outcome: "not written: \(file.name): \(reason) (stage \(stage))")
                    return
                }
            }
            live.withLock { $0[id]?.written[pathText] = version }
            var signalled = ""
            if let sig = follow.signal {
                signalled = coffer_pidfd_kill(pidfd, sig) == 0 ? "; signal \(sig) sent" : "; the signal could not be sent"
            }
            await recordRotation(run, pathText, version, outcome: "written" + signalled)
        } catch {
            // refused (policy changed, secret deleted) or failed: the event says so; the run keeps what it has
            try? await gate.settle(ticket, status: error.code.httpStatus, error: error)
        }
    }

    /// The process whose mount namespace and root hold the run's tmpfs: a container's
    /// init (the holder), for a root `coffer run` the runner's child in a mount
    /// namespace of its own (PID 1 of the run's namespaces), for a tmpfs cofferd made
    /// cofferd itself (0).
    func rotationHolder(_ run: Run) throws(CofferError) -> Int32 {
        if run.mount == .daemon { return 0 }
        if run.label?.hasPrefix("container:") == true { return run.pid }
        let own = Self.namespace(run.pid, "mnt")
        let text = (try? String(contentsOfFile: "/proc/\(run.pid)/task/\(run.pid)/children", encoding: .utf8)) ?? ""
        for c in text.split(separator: " ").compactMap({ Int32($0) }) {
            if let theirs = Self.namespace(c, "mnt"), theirs != own { return c }
        }
        throw CofferError(.mountFailed, "the run's namespace holder is gone")
    }

    /// The devices of the tmpfs cofferd made for every live run but `id`.
    func otherDaemonMounts(than id: String) -> [UInt64] {
        let paths = live.withLock { runs in runs.values.filter { $0.run.id != id }.compactMap(\.run.mountPath) }
        return paths.compactMap { path in
            var st = stat()
            return stat(path, &st) == 0 ? UInt64(st.st_dev) : nil
        }
    }

    /// The outcome of an update, as a second event of the system's rotation job.
    func recordRotation(_ run: Run, _ path: String, _ version: Int, outcome: String) async {
        var details = AuditDetails()
        details["run_id"] = .text(run.id)
        if let label = run.label { details["label"] = .text(label) }
        details[AuditDetails.versions] = .list([String(version)])
        details["fate"] = .text(outcome)
        let t = gate.ticket(for: .system(Self.rotateJob), action: "inject_rotate_done", path: path)
        t.update { $0.details = details; $0.requestID = run.requestID }
        t.decided(.allow("system job \(Self.rotateJob)"))
        try? await gate.settle(t, status: outcome.hasPrefix("written") ? 200 : 500, error: nil)
    }

    static let rotateJob = "run-rotate"
}
