public import CofferAudit
public import CofferCore
import CCofferLinux
public import CofferCrypto
public import CofferStore
import Foundation
import Glibc
import Logging
import Synchronization

/// Runs (`coffer run`, `coffer build`): the secrets of one command, released in one
/// request and one audit event, and the life of the tmpfs they are written to.
///
/// cofferd knows every run by a pidfd of the runner process (the peer of the
/// request): when the runner exits — also by SIGKILL — cofferd unmounts a tmpfs it
/// made (mount "daemon") and records how the run ended, within a sweep (250 ms).
/// At its TTL the runner is killed (which ends the command: the runner's child dies
/// with it) and the tmpfs removed. Each run has a record file in the run directory
/// (root-owned, 0711) so a restarted daemon adopts the runs whose runner still lives
/// and removes the mounts of the others.
public final class RunService: Sendable {
    public struct Settings: Sendable {
        public var dir: String
        public var maxPerUID: Int
        public var maxTTLSeconds: Int
        public var maxSizeBytes: Int
        public init(dir: String, maxPerUID: Int, maxTTLSeconds: Int, maxSizeBytes: Int) {
            self.dir = dir
            self.maxPerUID = maxPerUID
            self.maxTTLSeconds = maxTTLSeconds
            self.maxSizeBytes = maxSizeBytes
        }
        public init(config: CofferConfig) {
            self.init(dir: config.resolvedRunDir, maxPerUID: config.maxRunsPerUID, maxTTLSeconds: config.maxRunTTLSeconds,
                      maxSizeBytes: config.maxRunSizeBytes)
        }
    }

    public enum Mount: String, Sendable, Codable { case `private`, daemon }
    public enum Network: String, Sendable, Codable { case host, none }

    /// A live run, as its record file stores it.
    public struct Run: Sendable, Codable {
        public var id: String
        public var uid: UInt32
        public var gid: UInt32
        public var user: String?
        public var pid: Int32
        /// /proc/PID/stat start time: a reused pid is not the runner.
        public var pidStart: UInt64
        public var mount: Mount
        public var mountPath: String?
        public var startedAt: Int64
        public var expiresAt: Int64
        public var paths: [String]
        public var network: Network
        public var requestID: String
        public var fate: String?
        /// What the run is for (e.g. "container:ID"); absent in records of older versions.
        public var label: String?
        /// Files cofferd keeps current (live rotation), while cofferd runs.
        public var follow: Follow?
        /// Where the tmpfs is as the holder sees it (the runner's claim; checked by inspect).
        public var target: String?
    }

    /// A followed run: where its tmpfs is as its holder sees it, and each file to
    /// rewrite when its secret gets a new version.
    public struct Follow: Sendable, Codable {
        public struct File: Sendable, Codable, Equatable {
            public var path: String
            public var name: String
            public var mode: UInt32
            public var uid: UInt32
            public var gid: UInt32
            public init(path: String, name: String, mode: UInt32, uid: UInt32, gid: UInt32) {
                self.path = path
                self.name = name
                self.mode = mode
                self.uid = uid
                self.gid = gid
            }
        }
        public var target: String
        public var files: [File]
        public var signal: Int32?
        public init(target: String, files: [File], signal: Int32?) {
            self.target = target
            self.files = files
            self.signal = signal
        }
    }

    public struct Started: Sendable {
        public var run: Run?
        public var noswap: Bool?
        public var sizeBytes: Int
        public var ttlSeconds: Int
        public var secrets: [Released]
    }

    /// One secret of a run: the version released, the capability that released it,
    /// the value (none in a dry run).
    public struct Released: Sendable {
        public var path: SecretPath
        public var meta: VersionRecord
        public var allowedBy: Action
        public var value: SecretBytes?
    }

    struct Live {
        var run: Run
        var pidfd: Int32
        /// Who the run's values were released to (decided again for each update of a
        /// followed run); nil for runs adopted after a restart (no longer followed).
        var principal: Principal? = nil
        /// The version each followed path last had in the tmpfs.
        var written: [String: Int] = [:]
        /// Held by a process the caller named (a container's init), not by a runner.
        var held = false
    }

    /// Runs held by a named process (containers) per uid: a host runs more containers
    /// at once than one user runs jobs; each costs cofferd a pidfd.
    static let maxHeldPerUID = 1024

    public static let maxSecrets = 256
    public static let defaultSizeBytes = 1024 * 1024
    public static let defaultTTLSeconds = 3600
    static let sweepJob = "run-watch"
    static let ttlGraceMillis: Int64 = 5000

    let settings: Settings
    let gate: Gate
    let secrets: SecretsService
    let clock: any WallClock
    let logger: Logger
    let live = Mutex<[String: Live]>([:])
    /// Paths with a new version for followed runs, and whether a task is writing them.
    let rotation = Mutex<(pending: Set<String>, draining: Bool)>(([], false))

    init(settings: Settings, gate: Gate, secrets: SecretsService, clock: any WallClock, logger: Logger) {
        self.settings = settings
        self.gate = gate
        self.secrets = secrets
        self.clock = clock
        self.logger = logger
    }

    // MARK: start

    /// Decides each path (read or inject), reads the values, records one event with
    /// paths and versions (durable before anything is mounted or answered), then
    /// registers the run and, for mount "daemon", mounts its tmpfs.
    public func start(_ ticket: AuditTicket, _ p: Principal, secrets refs: [(SecretPath, Int?)], mount: Mount, sizeBytes: Int?,
                      ttl: Int?, network: Network, dryRun: Bool, holder: Int32? = nil, label: String? = nil,
                      follow: Follow? = nil, target: String? = nil) async throws(CofferError) -> Started {
        guard !refs.isEmpty else { throw CofferError(.invalidParameter, "a run needs at least one secret") }
        guard refs.count <= Self.maxSecrets else { throw CofferError(.invalidParameter, "at most \(Self.maxSecrets) secrets per run") }
        var seen = Set<String>()
        for (path, version) in refs {
            guard seen.insert(path.rawValue).inserted else { throw CofferError(.invalidParameter, "\(path) is named twice", hint: "give each secret once") }
            if let version, version < 1 || version > Int(Int32.max) { throw CofferError(.invalidVersion, "version must be 1...\(Int32.max)") }
        }
        let size = sizeBytes ?? Self.defaultSizeBytes
        guard size >= 4096, size <= settings.maxSizeBytes else {
            throw CofferError(.invalidParameter, "size_bytes must be 4096...\(settings.maxSizeBytes)", hint: "cofferd's run.max_size_bytes is the ceiling")
        }
        let ttlSeconds = min(ttl ?? Self.defaultTTLSeconds, settings.maxTTLSeconds)
        guard ttlSeconds >= 1 else { throw CofferError(.invalidParameter, "ttl must be at least 1s") }
        if network == .none && mount != .private {
            throw CofferError(.invalidParameter, "network \"none\" is a private namespace's: it needs mount \"private\"")
        }
        if let follow { try checkFollow(follow, p, refs.map(\.0), mount: mount, network: network) }
        if let target, !Self.validTarget(target) { throw CofferError(.invalidParameter, "target must be an absolute path of plain names") }
        // What is verified of the requesting process, from the kernel (a claim of the
        // request is never taken): a run "without network" asks from inside its own
        // network namespace, and whoever is not root makes a private mount only from
        // inside a mount namespace of its own (a user namespace's).
        var q = p
        // a container's identity, for `container:` bindings: the runtime's claim,
        // accepted only from root (who could start any container anyway) and only for
        // a holder in mount and PID namespaces other than the requester's and cofferd's
        if let label, label.hasPrefix("container:"), let holder, p.uid == 0, p.token == nil, !dryRun,
           await OffPool.run({ Self.ownNamespaces(holder, than: p.pid) }) == true {
            q.container = String(label.dropFirst("container:".count))
        }
        if !dryRun && (network == .none || (mount == .private && p.uid != 0)) {
            let pid = p.pid
            guard let iso = await OffPool.run({ Self.isolation(of: pid) }) else {
                throw CofferError(.invalidParameter, "the requesting process could not be examined in time", hint: "is it held in the middle of exec?")
            }
            if network == .none, let problem = iso.networkProblem {
                throw CofferError(.networkNotIsolated, "the requesting process is not cut off from the network: \(problem)",
                                  hint: "coffer run --network none asks from inside a network namespace of its own")
            }
            if mount == .private && p.uid != 0 && !iso.ownMountNamespace {
                // a private namespace needs CAP_SYS_ADMIN: only root's runs make their own outside a user namespace
                throw CofferError(.invalidParameter, "only root makes a private mount namespace; use mount \"daemon\"",
                                  hint: "coffer run --network none makes one in a user namespace")
            }
            if network == .none {
                // root can undo any namespace (/proc/sys, devices, the host's files): its
                // runs go without network, but never count as cut off
                if p.uid != 0 { q.conditions.insert(.networkNone) }
            }
        } else if dryRun && network == .none {
            // a plan releases nothing: it is decided as the isolated run would be
            q.conditions.insert(.networkNone)
        }
        do {
            return try await started(ticket, q, refs, mount, size, ttlSeconds, network, dryRun: dryRun, holder: holder, label: label, follow: follow,
                                     target: target)
        } catch where error.code == .permissionDenied && network == .none && p.uid == 0 && !dryRun {
            throw CofferError(.permissionDenied, error.message, hint: (error.hint.map { $0 + "; " } ?? "")
                + "a run of root is never counted as cut off from the network (root can undo namespaces): run the step as another user, e.g. runuser -u USER -- coffer run --network none …")
        }
    }

    func started(_ ticket: AuditTicket, _ p: Principal, _ refs: [(SecretPath, Int?)], _ mount: Mount, _ size: Int, _ ttlSeconds: Int,
                 _ network: Network, dryRun: Bool, holder: Int32?, label: String?, follow: Follow?, target: String?) async throws(CofferError) -> Started {
        let paths = refs.map(\.0)
        let result = try await gate.performEach(ticket, p, anyOf: [.read, .inject], paths) { g, allowedBy throws(CofferError) -> Started in
            var out: Started = Started(run: nil, noswap: nil, sizeBytes: size, ttlSeconds: ttlSeconds, secrets: [])
            var total = 0
            for (i, (path, version)) in refs.enumerated() {
                if dryRun {
                    let meta = try secrets.peek(g, path, version: version)
                    out.secrets.append(Released(path: path, meta: meta, allowedBy: allowedBy[i], value: nil))
                    total += meta.size
                } else {
                    let r = try secrets.get(g, path, version: version)
                    out.secrets.append(Released(path: path, meta: r.meta, allowedBy: allowedBy[i], value: r.value))
                    total += r.value.count
                }
            }
            guard total <= size else {
                throw CofferError(.valueTooLarge, "the secrets are \(total) bytes; the run's tmpfs holds \(size)", hint: "raise --size")
            }
            return out
        }
        var details = AuditDetails()
        details["paths"] = .list(result.secrets.map(\.path.rawValue))
        details[AuditDetails.versions] = .list(result.secrets.map { String($0.meta.version) })
        details["allowed_by"] = .list(result.secrets.map(\.allowedBy.rawValue))
        details["mount"] = .text(mount.rawValue)
        details["network"] = .text(network.rawValue)
        details["target_uid"] = .number(Int64(p.uid))
        details["ttl_seconds"] = .number(Int64(ttlSeconds))
        details["size_bytes"] = .number(Int64(size))
        if let label { details["label"] = .text(label) }
        if network == .none && !dryRun {
            // what cofferd found of the requester: cut off (the condition network:none), or root's (never counted)
            details["isolation"] = .text(p.conditions.contains(.networkNone) ? "verified" : "root: not counted")
        }
        if let holder { details["holder_pid"] = .number(Int64(holder)) }
        if let c = p.container { details["container"] = .text(c) }
        if dryRun {
            ticket.update { $0.details = details; $0.action = "inject_plan" }
            return result
        }
        // the runner: the peer of this request (or the holder it names: a container's
        // init), known by a pidfd from now on; someone else's process only for root
        let runner = holder ?? p.pid
        // the pidfd first: facts read while it is alive are this process's, not a reused pid's
        let pidfd = coffer_pidfd_open(runner)
        // (read off the shared pool: see OffPool)
        guard let facts = await OffPool.run({ () -> (exe: Bool, start: UInt64?, owner: UInt32?) in
            // a kernel thread (no executable) holds nothing
            var exe = [CChar](repeating: 0, count: 8)
            return (readlink("/proc/\(runner)/exe", &exe, exe.count) >= 0, Self.startTime(runner), Self.realUID(runner))
        }) else {
            if pidfd >= 0 { close(pidfd) }
            throw CofferError(.invalidParameter, "process \(runner) could not be examined in time", hint: "is it held in the middle of exec?")
        }
        if holder != nil && !facts.exe {
            if pidfd >= 0 { close(pidfd) }
            throw CofferError(.invalidParameter, "holder_pid \(runner) is gone or not a process of a program")
        }
        guard pidfd >= 0, coffer_pidfd_exited(pidfd) == 0, let pidStart = facts.start, let owner = facts.owner,
              owner == p.uid || (holder != nil && p.uid == 0) else {
            if pidfd >= 0 { close(pidfd) }
            if holder != nil {
                throw CofferError(.invalidParameter, "holder_pid \(runner) is gone or not the caller's", hint: "root may name any process; others their own")
            }
            throw CofferError(.invalidParameter, "the calling process is gone", hint: "coffer run asks for its secrets itself")
        }
        let now = clock.nowMillis()
        var run = Run(id: "run_" + Hex.encode(Hashing.randomBytes(12)), uid: p.uid, gid: p.gid, user: p.userName, pid: runner,
                      pidStart: pidStart, mount: mount, mountPath: nil, startedAt: now, expiresAt: now + Int64(ttlSeconds) * 1000,
                      paths: result.secrets.map(\.path.rawValue), network: network, requestID: ticket.draft.requestID, fate: nil, label: label,
                      follow: follow, target: mount == .daemon ? nil : (target ?? follow?.target))
        if follow != nil { details["follow"] = .text("yes") }
        var written: [String: Int] = [:]
        for s in result.secrets { written[s.path.rawValue] = s.meta.version }
        let held = holder != nil
        let admitted = live.withLock { runs -> Bool in
            let limit = held ? Self.maxHeldPerUID : settings.maxPerUID
            guard runs.values.filter({ $0.run.uid == p.uid && $0.held == held }).count < limit else { return false }
            runs[run.id] = Live(run: run, pidfd: pidfd, principal: follow == nil ? nil : p, written: written, held: held)
            return true
        }
        guard admitted else {
            close(pidfd)
            if held {
                throw CofferError(.tooManyRuns, "uid \(p.uid) already has \(Self.maxHeldPerUID) runs held by containers", hint: "wait for some to end (coffer inject list)")
            }
            throw CofferError(.tooManyRuns, "uid \(p.uid) already has \(settings.maxPerUID) runs", hint: "wait for one to end (coffer run list), or raise run.max_per_uid")
        }
        details["run_id"] = .text(run.id)
        ticket.update { $0.details = details }
        var out = result
        do throws(CofferError) {
            // decide, audit, then act: the event is durable before the tmpfs exists
            try await gate.settleNow(ticket)
            if mount == .daemon {
                let (path, noswap) = try makeMount(run.id, size: size, uid: p.uid, gid: p.gid)
                run.mountPath = path
                run.follow?.target = path  // (cofferd's own namespace: rewritten there)
                run.target = path
                out.noswap = noswap
            }
            try writeRecord(run)
            live.withLock { $0[run.id]?.run = run }
        } catch {
            await finish(run.id, fate: "not started: \(error.message)", exitStatus: nil, ticket: nil)
            throw error
        }
        out.run = run
        logger.info("run started", metadata: [
            "run.id": "\(run.id)", "peer.uid": "\(p.uid)", "peer.pid": "\(p.pid)", "run.mount": "\(mount.rawValue)", "secrets": "\(refs.count)",
        ])
        return out
    }

    /// The holder is in mount and PID namespaces of its own: neither the requester's
    /// nor cofferd's.
    static func ownNamespaces(_ holder: Int32, than requester: Int32) -> Bool {
        for kind in ["mnt", "pid"] {
            guard let h = namespace(holder, kind), let r = namespace(requester, kind), let own = namespace(0, kind), h != r, h != own else { return false }
        }
        return true
    }

    /// A process's namespace of a kind ("mnt:[4026531841]"), 0 for cofferd's own; nil
    /// when it cannot be read. (Off the shared pool: see OffPool.)
    static func namespace(_ pid: Int32, _ kind: String) -> String? {
        var buf = [CChar](repeating: 0, count: 64)
        let n = readlink(pid == 0 ? "/proc/self/ns/\(kind)" : "/proc/\(pid)/ns/\(kind)", &buf, buf.count - 1)
        return n > 0 ? String(cString: buf) : nil
    }

    // MARK: end, list

    /// The runner's own end of its run (or an admin's): unmounts what cofferd made.
    public func end(_ ticket: AuditTicket, _ p: Principal, id: String, isAdmin: Bool, exitStatus: Int?, reported: String?) async throws(CofferError) -> Run {
        if let exitStatus, !(0...255).contains(exitStatus) { throw CofferError(.invalidParameter, "exit_status must be 0...255") }
        if let reported {
            // what the runner says is recorded as its claim, in its own detail, printable ASCII only
            guard !reported.isEmpty, reported.utf8.count <= 200, reported.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else {
                throw CofferError(.invalidParameter, "fate must be 1-200 printable ASCII characters")
            }
        }
        guard let run = live.withLock({ $0[id]?.run }), run.uid == p.uid || isAdmin else {
            throw CofferError(.notFound, "no run \(id) of yours", hint: "see coffer run list")
        }
        let who = p.pid == run.pid ? "the runner" : (run.uid == p.uid ? "process \(p.pid) of uid \(p.uid)" : p.displayName)
        let fate = switch run.mount {
        case .daemon: "ended by \(who); cofferd emptied and removed the tmpfs"
        case .private: "ended by \(who); the private namespace ends with the command"
        }
        guard let ended = await finish(id, fate: fate, exitStatus: exitStatus, reported: reported, ticket: ticket) else {
            throw CofferError(.notFound, "no run \(id) of yours", hint: "it ended meanwhile")
        }
        return ended
    }

    public func list(_ p: Principal, all: Bool) -> [Run] {
        live.withLock { runs in runs.values.map(\.run).filter { all || $0.uid == p.uid }.sorted { $0.startedAt < $1.startedAt } }
    }

    // MARK: the watch

    /// One sweep: runs whose runner exited, runs past their TTL.
    public func sweep() async {
        let now = clock.nowMillis()
        let due = live.withLock { runs in
            runs.values.compactMap { l -> (String, Bool)? in
                let exited = coffer_pidfd_exited(l.pidfd) != 0
                if exited { return (l.run.id, true) }
                // the runner ends its command at the TTL itself; cofferd is the backstop a little later
                return now >= l.run.expiresAt + Self.ttlGraceMillis ? (l.run.id, false) : nil
            }
        }
        for (id, exited) in due {
            if exited {
                let fate = live.withLock { $0[id]?.run.mount } == .daemon
                    ? "the runner exited without ending the run; cofferd emptied and removed the tmpfs"
                    : "the runner exited without ending the run; its private namespace went with it"
                await finish(id, fate: fate, exitStatus: nil, ticket: nil)
            } else if live.withLock({ $0[id]?.run.label?.hasPrefix("container:") }) == true {
                // a container is not killed: its tmpfs lives and dies with it; cofferd
                // stops following and listing it
                await finish(id, fate: "ttl expired: no longer followed (the container keeps its tmpfs until it ends)", exitStatus: nil, ticket: nil)
            } else {
                if let fd = live.withLock({ $0[id]?.pidfd }) { _ = coffer_pidfd_kill(fd, SIGKILL) }
                let daemonMount = live.withLock { $0[id]?.run.mount } == .daemon
                await finish(id, fate: daemonMount ? "ttl expired: cofferd killed the runner and removed the tmpfs"
                                                   : "ttl expired: cofferd killed the runner (its private namespace ends with it)",
                             exitStatus: nil, ticket: nil)
            }
        }
    }

    /// At start: adopts runs whose runner still lives; removes every other mount and
    /// directory under the run directory.
    public func recover() async {
        let fm = FileManager.default
        try? prepareDir()
        let names = (try? fm.contentsOfDirectory(atPath: settings.dir)) ?? []
        var kept = Set<String>()
        for name in names where name.hasSuffix(".run") {
            let id = String(name.dropLast(4))
            guard let data = fm.contents(atPath: settings.dir + "/" + name), let run = readRecord(data), run.id == id else {
                // its mount, if any, is removed below with every mount no record accounts for
                logger.critical("a run record failed its integrity check (changed without the key, or unreadable); it is not adopted",
                                metadata: ["run.record": "\(name)"])
                unlink(settings.dir + "/" + name)
                continue
            }
            let fd = coffer_pidfd_open(run.pid)
            if fd >= 0, Self.startTime(run.pid) == run.pidStart, clock.nowMillis() < run.expiresAt {
                live.withLock { $0[id] = Live(run: run, pidfd: fd) }
                kept.insert(id)
                logger.info("run adopted", metadata: ["run.id": "\(id)", "run.pid": "\(run.pid)"])
                continue
            }
            if fd >= 0 { close(fd) }
            live.withLock { $0[id] = Live(run: run, pidfd: -1) }
            await finish(id, fate: "the runner was gone when cofferd started; cofferd removed what was left", exitStatus: nil, ticket: nil)
        }
        // mounts and directories no record accounts for
        for mountPoint in Self.mounts(under: settings.dir) where !kept.contains(where: { mountPoint == settings.dir + "/" + $0 }) {
            _ = coffer_unmount(mountPoint)
            rmdir(mountPoint)
            logger.warning("removed a stale run mount", metadata: ["mount": "\(mountPoint)"])
        }
        for name in (try? fm.contentsOfDirectory(atPath: settings.dir)) ?? [] where !name.hasSuffix(".run") && !kept.contains(name) {
            rmdir(settings.dir + "/" + name)
        }
    }

    /// Ends a run once (whoever comes first: the runner, the watch, the TTL): closes
    /// its pidfd, unmounts a tmpfs cofferd made, removes its record, audits.
    @discardableResult
    func finish(_ id: String, fate: String, exitStatus: Int?, reported: String? = nil, ticket: AuditTicket?) async -> Run? {
        guard let l = live.withLock({ $0.removeValue(forKey: id) }) else { return nil }
        if l.pidfd >= 0 { close(l.pidfd) }
        var run = l.run
        var fate = fate
        if let path = run.mountPath ?? (run.mount == .daemon ? settings.dir + "/" + run.id : nil) {
            // emptied and read-only first: a process the command left behind (its
            // working directory there) keeps an empty file system it cannot refill
            if Self.mounts(under: settings.dir).contains(path) {
                var rc = coffer_wipe_and_seal(path)
                if rc == -2 {
                    // still written to after the run: the caller's processes that hold
                    // it (working directory, root or open files there) are ended
                    let uid = run.uid
                    let killed = await OffPool.run(timeout: 10, { Self.killHolders(of: path, uid: uid) }) ?? 0
                    rc = coffer_wipe_and_seal(path)
                    fate += "; \(killed) leftover process\(killed == 1 ? "" : "es") of uid \(run.uid) still writing there \(killed == 1 ? "was" : "were") killed"
                }
                switch rc {
                case 0: break
                case -2: fate += "; it could not be made read-only (a process of another uid writes there?)"
                default: fate += "; it could not be emptied completely (the detached tmpfs is freed when its last user goes)"
                }
            }
            if coffer_unmount(path) != 0 && errno != EINVAL && errno != ENOENT {
                fate += "; unmount failed: \(String(cString: strerror(errno)))"
                logger.error("cannot unmount a run's tmpfs", metadata: ["run.id": "\(id)", "mount": "\(path)"])
            }
            rmdir(path)
        }
        unlink(settings.dir + "/" + id + ".run")
        run.fate = fate
        var details = AuditDetails()
        details["run_id"] = .text(id)
        details["fate"] = .text(fate)
        details["mount"] = .text(run.mount.rawValue)
        details["paths"] = .list(run.paths)
        if let label = run.label { details["label"] = .text(label) }
        details["target_uid"] = .number(Int64(run.uid))
        if let exitStatus { details["runner_exit_status"] = .number(Int64(exitStatus)) }
        if let reported { details["runner_report"] = .text(reported) }
        if let ticket {
            ticket.update { $0.details = details }
        } else {
            let t = gate.ticket(for: .system(Self.sweepJob), action: "run_end")
            t.update { $0.details = details; $0.requestID = run.requestID }
            t.decided(.allow("system job \(Self.sweepJob)"))
            try? await gate.settle(t, status: 200, error: nil)
        }
        logger.info("run ended", metadata: ["run.id": "\(id)", "run.fate": "\(fate)"])
        return run
    }

    // MARK: mounts and records

    func prepareDir() throws(CofferError) {
        if mkdir(settings.dir, 0o711) != 0 && errno != EEXIST {
            throw CofferError(.mountFailed, "cannot create the run directory \(settings.dir): \(String(cString: strerror(errno)))")
        }
        var st = stat()
        guard lstat(settings.dir, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == geteuid(), st.st_mode & 0o022 == 0 else {
            throw CofferError(.mountFailed, "the run directory \(settings.dir) must be a directory of cofferd's user, writable by no one else")
        }
        if st.st_mode & 0o7777 != 0o711 { chmod(settings.dir, 0o711) }
    }

    /// A tmpfs at DIR/ID owned by the caller, mode 0700; noswap unless the kernel
    /// refuses it (reported).
    func makeMount(_ id: String, size: Int, uid: UInt32, gid: UInt32) throws(CofferError) -> (String, Bool) {
        try prepareDir()
        let path = settings.dir + "/" + id
        guard mkdir(path, 0o700) == 0 else { throw CofferError(.mountFailed, "cannot create \(path): \(String(cString: strerror(errno)))") }
        if coffer_mount_tmpfs(path, UInt(size), uid, gid, 1) == 0 { return (path, true) }
        if errno == EINVAL, coffer_mount_tmpfs(path, UInt(size), uid, gid, 0) == 0 { return (path, false) }
        let e = errno
        rmdir(path)
        if e == EPERM {
            throw CofferError(.mountFailed, "cofferd cannot mount a tmpfs for this run: it does not run as root",
                              hint: "run `coffer run` as root (it then makes a private namespace itself), or run cofferd as root")
        }
        throw CofferError(.mountFailed, "cofferd cannot mount a tmpfs at \(path): \(String(cString: strerror(e)))")
    }

    /// A run record is its JSON, a newline, and the MAC of that JSON under the record
    /// MAC key: a record edited or planted without the key (pointing a followed file
    /// elsewhere, or naming another process as the runner) is not adopted.
    func writeRecord(_ run: Run) throws(CofferError) {
        guard let json = try? JSONEncoder().encode(run), let mac = try? secrets.store.runRecordMAC(json) else {
            throw CofferError(.internal, "cannot encode a run record")
        }
        let data = json + Data("\n".utf8) + Data(Hex.encode(mac).utf8)
        let tmp = settings.dir + "/." + run.id + ".tmp"
        let fd = coffer_create_exclusive(tmp, 0o600)
        guard fd >= 0 else { throw CofferError(.mountFailed, "cannot write the run record in \(settings.dir): \(String(cString: strerror(errno)))") }
        let ok = data.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) == $0.count }
        close(fd)
        guard ok, rename(tmp, settings.dir + "/" + run.id + ".run") == 0 else {
            unlink(tmp)
            throw CofferError(.mountFailed, "cannot write the run record in \(settings.dir)")
        }
    }

    func readRecord(_ data: Data) -> Run? {
        guard let nl = data.lastIndex(of: 0x0A), let mac = Hex.decode(String(decoding: data[(nl + 1)...], as: UTF8.self)),
              let expected = try? secrets.store.runRecordMAC(Data(data[..<nl])), Hashing.constantTimeEquals(mac, expected) else { return nil }
        return try? JSONDecoder().decode(Run.self, from: Data(data[..<nl]))
    }

    /// Field 22 of /proc/PID/stat (after the command name, which may hold spaces).
    static func startTime(_ pid: Int32) -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    /// SIGKILLs the processes of `uid` whose working directory, root or open files
    /// lie in the mount at `path`; returns how many.
    static func killHolders(of path: String, uid: UInt32) -> Int {
        let fm = FileManager.default
        var killed = 0
        for entry in (try? fm.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), pid > 1, pid != getpid(), realUID(pid) == uid else { continue }
            let base = "/proc/\(pid)"
            var links = [base + "/cwd", base + "/root"]
            links += ((try? fm.contentsOfDirectory(atPath: base + "/fd")) ?? []).map { base + "/fd/" + $0 }
            let holds = links.contains { link in
                guard let target = try? fm.destinationOfSymbolicLink(atPath: link) else { return false }
                return target == path || target.hasPrefix(path + "/")
            }
            if holds, kill(pid, SIGKILL) == 0 { killed += 1 }
        }
        return killed
    }

    /// The real uid of a process (/proc/PID/status): a pid reused by another user's
    /// process is not the caller.
    struct Isolation {
        var ownMountNamespace: Bool
        /// nil: in a network namespace with only loopback, every thread in it, no
        /// socket of another network namespace held, and the connection to cofferd held
        var networkProblem: String?
    }

    /// At most this many open files are examined (more: refused, not waited for).
    static let maxFilesChecked = 1024

    /// The requesting process, from the kernel: its network namespace and every
    /// thread's, its interfaces, and every socket it holds — each copied with
    /// pidfd_getfd and asked for its own network namespace (SIOCGSKNS): one made
    /// elsewhere, connected or not, could still carry a value out. It must also hold
    /// a connection to cofferd (a process that merely got the requester's pid number
    /// does not). Read through a pidfd taken first: if the process is gone by the
    /// end, nothing holds.
    static func isolation(of pid: Int32) -> Isolation {
        let gone = Isolation(ownMountNamespace: false, networkProblem: "the process is gone")
        let pidfd = coffer_pidfd_open(pid)
        guard pidfd >= 0 else { return gone }
        defer { close(pidfd) }
        func inode(_ path: String) -> (UInt64, UInt64)? {
            var st = stat()
            guard stat(path, &st) == 0 else { return nil }
            return (UInt64(st.st_ino), UInt64(st.st_dev))
        }
        var mnt = false
        if let theirs = inode("/proc/\(pid)/ns/mnt"), let mine = inode("/proc/self/ns/mnt") { mnt = theirs != mine }
        func problem() -> String? {
            guard let net = inode("/proc/\(pid)/ns/net"), let host = inode("/proc/1/ns/net") ?? inode("/proc/self/ns/net") else {
                return "its network namespace cannot be read"
            }
            if net == host || net == (inode("/proc/self/ns/net") ?? (0, 0)) { return "it shares the host's network namespace" }
            // every thread in the same namespace (a thread elsewhere could send for it)
            guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task"), !tasks.isEmpty else {
                return "its threads cannot be read"
            }
            for t in tasks where inode("/proc/\(pid)/task/\(t)/ns/net").map({ $0 != net }) ?? true {
                return "a thread of it is in another network namespace"
            }
            guard let devices = try? String(contentsOfFile: "/proc/\(pid)/net/dev", encoding: .utf8) else {
                return "its network interfaces cannot be read"
            }
            let names = devices.split(separator: "\n").dropFirst(2).compactMap { $0.split(separator: ":").first?.trimmingCharacters(in: .whitespaces) }
            if let other = names.first(where: { $0 != "lo" }) { return "its network namespace has the interface \(other)" }
            guard let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd") else { return "its open files cannot be read" }
            guard fds.count <= maxFilesChecked else { return "it holds more than \(maxFilesChecked) open files (too many to check)" }
            var holdsConnection = false
            var link = [CChar](repeating: 0, count: 64)
            for name in fds {
                guard let fd = Int32(name) else { continue }
                // only sockets are copied (closing a copy of anything else may block:
                // a lingering socket closed by its owner meanwhile, a FUSE file)
                let n = readlink("/proc/\(pid)/fd/\(fd)", &link, link.count - 1)
                guard n > 8, link.withUnsafeBufferPointer({ strncmp($0.baseAddress!, "socket:[", 8) == 0 }) else { continue }
                var domain: Int32 = 0, netns: UInt64 = 0, peer: Int32 = 0
                guard coffer_socket_facts(pidfd, fd, &domain, &netns, &peer) == 0 else {
                    if errno == ENOTSOCK || errno == EBADF { continue }
                    return "its sockets cannot be examined"
                }
                if domain == AF_UNIX {
                    if peer == getpid() { holdsConnection = true }
                } else if netns != net.0 {
                    return "it holds a socket of another network namespace"
                }
            }
            guard holdsConnection else { return "it holds no connection to cofferd" }
            return nil
        }
        let p = problem()
        guard coffer_pidfd_exited(pidfd) == 0 else { return gone }
        return Isolation(ownMountNamespace: mnt, networkProblem: p)
    }

    static func realUID(_ pid: Int32) -> UInt32? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("Uid:") {
            return line.split(whereSeparator: { $0 == "\t" || $0 == " " }).dropFirst().first.flatMap { UInt32($0) }
        }
        return nil
    }

    /// Mount points below `dir` (from /proc/self/mountinfo; octal escapes decoded).
    static func mounts(under dir: String) -> [String] {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        var out: [String] = []
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count > 4 else { continue }
            let point = decodeOctal(String(f[4]))
            if point.hasPrefix(dir + "/") { out.append(point) }
        }
        return out.sorted().reversed()
    }

    static func decodeOctal(_ s: String) -> String {
        var bytes: [UInt8] = []
        let u = Array(s.utf8)
        var i = 0
        while i < u.count {
            if u[i] == UInt8(ascii: "\\"), i + 3 < u.count, let n = UInt8(String(decoding: u[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                bytes.append(n)
                i += 4
            } else {
                bytes.append(u[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
