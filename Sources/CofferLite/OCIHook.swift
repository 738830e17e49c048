import CCofferLinux
import CofferCore
#if canImport(Glibc)
import Glibc
#endif

/// `coffer oci-hook createRuntime|poststop`: an OCI runtime hook (runc, podman) that
/// puts secrets at /run/secrets in a container from cofferd, on a noswap tmpfs made in
/// the container's mount namespace, read-only, gone with the container.
///
/// At createRuntime (host namespaces, the container's made, before pivot_root) it
/// reads the state on stdin, the annotations `io.coffer.secrets`
/// (`PATH[=NAME][:uid=N][:gid=N][:mode=0400],…`), `io.coffer.target` (default
/// /run/secrets), `io.coffer.size` and `io.coffer.token-file`, asks cofferd in one
/// request (one audit event, labelled `container:ID`, the run held by the container's
/// init), and mounts. Any failure fails the hook, so the container does not start.
/// At poststop it ends the container's run.
public enum OCIHook {
    struct State {
        var id: String
        var pid: Int32?
        var bundle: String
        var annotations: [String: String]
    }

    struct Item {
        var path: SecretPath
        var name: String
        var uid: UInt32 = 0
        var gid: UInt32 = 0
        var mode: UInt32 = 0o400
    }

    static let known: Set<String> = ["io.coffer.secrets", "io.coffer.target", "io.coffer.size", "io.coffer.token-file", "io.coffer.follow", "io.coffer.signal"]

    public static func main(_ args: [String]) -> Never {
        do {
            guard args.count == 1, ["createRuntime", "poststop"].contains(args[0]) else {
                throw CofferError(.invalidParameter, "usage: coffer oci-hook createRuntime|poststop (the OCI state on stdin)",
                                  hint: "see contrib/oci/ for the hook configuration of runc and podman")
            }
            let state = try readState()
            if args[0] == "createRuntime" { try inject(state) } else { try stopped(state) }
            exit(Exit.ok)
        } catch {
            if let code = Exit.reporting(error) { exit(code) }
            report("\(error)", hint: nil)
            exit(Exit.failure)
        }
    }

    static func readState() throws(CofferError) -> State {
        var input: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(STDIN_FILENO, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            input += buf[0..<n]
            guard input.count <= 1 << 20 else { throw CofferError(.invalidParameter, "the OCI state on stdin is larger than 1 MiB") }
        }
        guard let json = try? JSON.parse(input), case .object = json else {
            throw CofferError(.invalidParameter, "stdin is not an OCI state (JSON object with id, pid, bundle, annotations)")
        }
        guard let id = json["id"]?.string, !id.isEmpty, id.utf8.count <= 100,
              id.utf8.allSatisfy({ SecretPath.isAllowed($0) }) else {
            throw CofferError(.invalidParameter, "the OCI state has no valid container id")
        }
        guard let bundle = json["bundle"]?.string, bundle.hasPrefix("/") else {
            throw CofferError(.invalidParameter, "the OCI state has no absolute bundle path")
        }
        var pid: Int32?
        if let p = json["pid"]?.int {
            guard p > 1, p <= Int(Int32.max) else { throw CofferError(.invalidParameter, "the OCI state's pid \(p) is not a container's") }
            pid = Int32(p)
        }
        var annotations: [String: String] = [:]
        if let a = json["annotations"], case .object(let members) = a {
            for (k, v) in members {
                guard let s = v.string else { throw CofferError(.invalidParameter, "annotation \(k) is not a string") }
                annotations[k] = s
            }
        }
        return State(id: id, pid: pid, bundle: bundle, annotations: annotations)
    }

    /// `PATH[=NAME][:uid=N][:gid=N][:mode=0400]`, comma-separated.
    static func parseSecrets(_ text: String) throws(CofferError) -> [Item] {
        var items: [Item] = []
        var names = Set<String>()
        for entry in text.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = entry.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            var main = Substring(parts[0])
            var name: String?
            if let eq = main.firstIndex(of: "=") {
                name = String(main[main.index(after: eq)...])
                main = main[..<eq]
            }
            var item = Item(path: try SecretPath(String(main)), name: "")
            item.name = name ?? String(item.path.segments.last!)
            try RunNames.checkFileName(item.name)
            guard names.insert(item.name).inserted else {
                throw CofferError(.invalidParameter, "io.coffer.secrets names \(item.name) twice", hint: "give one a name: PATH=NAME")
            }
            var given = Set<String>()
            for opt in parts.dropFirst() {
                let kv = opt.split(separator: "=", maxSplits: 1).map(String.init)
                guard kv.count == 2, given.insert(kv[0]).inserted else {
                    throw CofferError(.invalidParameter, "'\(opt)' in io.coffer.secrets: options are uid=, gid= and mode=, each once")
                }
                switch kv[0] {
                case "mode":
                    guard kv[1].utf8.count <= 4, let m = UInt32(kv[1], radix: 8), m <= 0o777 else {
                        throw CofferError(.invalidParameter, "mode must be octal 0000...0777, e.g. 0400")
                    }
                    item.mode = m
                case "uid", "gid":
                    guard kv[1].utf8.count <= 10, kv[1].utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let n = UInt32(kv[1]), n != UInt32.max else {
                        throw CofferError(.invalidParameter, "\(kv[0]) must be a number 0...4294967294")
                    }
                    if kv[0] == "uid" { item.uid = n } else { item.gid = n }
                default:
                    throw CofferError(.invalidParameter, "unknown option '\(kv[0])' in io.coffer.secrets", hint: "options are uid=, gid= and mode=")
                }
            }
            items.append(item)
        }
        guard !items.isEmpty, items.count <= 64 else { throw CofferError(.invalidParameter, "io.coffer.secrets names 1 to 64 secrets") }
        return items
    }

    /// The host id of a container's id, through its user namespace's map (identity without one).
    static func hostID(_ id: UInt32, pid: Int32, map: String) throws(CofferError) -> UInt32 {
        guard let data = Environment.readFile("/proc/\(pid)/\(map)", limit: 1 << 16), let text = String(validating: data, as: UTF8.self) else {
            throw CofferError(.invalidParameter, "cannot read the container's \(map)")
        }
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true).compactMap { UInt64($0) }
            guard f.count == 3 else { continue }
            if UInt64(id) >= f[0] && UInt64(id) < f[0] + f[2] { return UInt32(f[1] + (UInt64(id) - f[0])) }
        }
        throw CofferError(.invalidParameter, "id \(id) is not mapped in the container's user namespace")
    }

    /// The container's root directory from the bundle's config.json (root.path), the
    /// bundle itself and the root being real directories, not symbolic links.
    static func rootfs(_ bundle: String) throws(CofferError) -> String {
        var st = stat()
        guard lstat(bundle, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
            throw CofferError(.invalidParameter, "the bundle \(bundle) is not a directory (symbolic links are not followed)")
        }
        let fd = open(bundle + "/config.json", O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw CofferError(.invalidParameter, "cannot read \(bundle)/config.json") }
        close(fd)
        guard let data = Environment.readFile(bundle + "/config.json", limit: 4 << 20), let json = try? JSON.parse(data),
              let path = json["root"]?["path"]?.string, !path.isEmpty else {
            throw CofferError(.invalidParameter, "\(bundle)/config.json has no root.path")
        }
        let root = path.hasPrefix("/") ? path : bundle + "/" + path
        guard !root.split(separator: "/").contains(".."), lstat(root, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
            throw CofferError(.invalidParameter, "the container's root \(root) is not a directory (symbolic links are not followed)")
        }
        return root
    }

    static func settings(_ state: State) -> ClientSettings {
        ClientSettings(socket: nil, format: .text, tokenFile: state.annotations["io.coffer.token-file"])
    }

    static func inject(_ state: State) throws {
        for k in state.annotations.keys where k.hasPrefix("io.coffer.") && !known.contains(k) {
            throw CofferError(.invalidParameter, "unknown annotation \(k)", hint: "known: \(known.sorted().joined(separator: ", "))")
        }
        guard let spec = state.annotations["io.coffer.secrets"] else { return }  // not ours
        guard let pid = state.pid else { throw CofferError(.invalidParameter, "the OCI state has no pid (createRuntime gives one)") }
        var items = try parseSecrets(spec)
        let target = state.annotations["io.coffer.target"] ?? "/run/secrets"
        let parts = target.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        guard target.hasPrefix("/"), target.utf8.count < 1024, !parts.isEmpty,
              parts.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." && $0.utf8.allSatisfy(SecretPath.isAllowed) }) else {
            throw CofferError(.invalidParameter, "io.coffer.target must be an absolute path of plain names (no ., .., //), e.g. /run/secrets")
        }
        var size = 1024 * 1024
        if let s = state.annotations["io.coffer.size"] {
            guard s.utf8.count <= 10, let n = Int(s), n >= 4096, n <= 16 << 20 else {
                throw CofferError(.invalidParameter, "io.coffer.size must be 4096...16777216 bytes")
            }
            size = n
        }
        var follow = false
        if let f = state.annotations["io.coffer.follow"] {
            guard f == "true" || f == "false" else { throw CofferError(.invalidParameter, "io.coffer.follow must be true or false") }
            follow = f == "true"
        }
        let signal = state.annotations["io.coffer.signal"]
        if let signal {
            guard ["SIGHUP", "SIGUSR1", "SIGUSR2"].contains(signal) else { throw CofferError(.invalidParameter, "io.coffer.signal must be SIGHUP, SIGUSR1 or SIGUSR2") }
            guard follow else { throw CofferError(.invalidParameter, "io.coffer.signal goes with io.coffer.follow=true") }
        }
        let root = try rootfs(state.bundle)
        // the process must still be there, and be the container's (its root is in the bundle)
        let pidfd = coffer_pidfd_open(pid)
        guard pidfd >= 0 else { throw CofferError(.invalidParameter, "the container's process \(pid) is gone") }
        defer { close(pidfd) }
        // a process in the host's own mount namespace is no container: a tmpfs made
        // there would stay on the host
        func mountNamespace(_ path: String) -> String? {
            var buf = [CChar](repeating: 0, count: 64)
            let n = readlink(path, &buf, buf.count - 1)
            return n > 0 ? String(cString: buf) : nil
        }
        guard let theirs = mountNamespace("/proc/\(pid)/ns/mnt"), let mine = mountNamespace("/proc/self/ns/mnt"), theirs != mine else {
            throw CofferError(.invalidParameter, "process \(pid) is in the host's mount namespace: not a container's",
                              hint: "the hook runs at createRuntime, for a container with a mount namespace of its own")
        }
        for i in items.indices {
            items[i].uid = try hostID(items[i].uid, pid: pid, map: "uid_map")
            items[i].gid = try hostID(items[i].gid, pid: pid, map: "gid_map")
        }
        if let file = state.annotations["io.coffer.token-file"] {
            // read as root: an absolute path to a regular file, never through a link
            var st = stat()
            guard file.hasPrefix("/"), lstat(file, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
                throw CofferError(.invalidParameter, "io.coffer.token-file must be an absolute path of a regular file (not a symbolic link)")
            }
        }
        let http = try settings(state).http()
        let label = "container:" + state.id
        let followed = follow ? RunAPI.Follow(target: target, files: items.map {
            RunAPI.Follow.File(path: $0.path.rawValue, name: $0.name, mode: $0.mode, uid: $0.uid, gid: $0.gid)
        }, signal: signal) : nil
        let started = try RunAPI.start(http, paths: items.map(\.path.rawValue), mount: "private", sizeBytes: size, ttl: "365d",
                                       network: "host", dryRun: false, holderPID: pid, label: label, follow: followed, target: target)
        guard let runID = started.id else { throw ClientError(kind: .io, message: "cofferd started no run") }
        do {
            var files: [RunFile] = []
            defer { for i in files.indices { Wipe.bytes(&files[i].bytes) } }
            for item in items {
                guard let s = started.secrets.first(where: { $0.path == item.path.rawValue }), let v = s.value else {
                    throw ClientError(kind: .io, message: "cofferd sent no value for \(item.path)")
                }
                files.append(RunFile(name: item.name, bytes: v, mode: item.mode, uid: item.uid, gid: item.gid, versionKey: []))
            }
            try mount(files, pid: pid, root: root, target: target, size: size)
        } catch {
            try? RunAPI.end(http, runID, exitStatus: nil, fate: "not started: the hook failed")
            throw error
        }
    }

    /// Makes the tmpfs in the container's mount namespace (a child process enters it).
    static func mount(_ files: [RunFile], pid: Int32, root: String, target: String, size: Int) throws {
        var cStrings: [UnsafeMutablePointer<CChar>?] = []
        defer { for p in cStrings { free(p) } }
        func c(_ s: String) -> UnsafeMutablePointer<CChar>? {
            let p = strdup(s)
            cStrings.append(p)
            return p
        }
        let rootC = c(root), dirC = c(target)
        let spawnFiles = SpawnFiles(files)
        var reportFD: Int32 = -1
        let child: Int32 = spawnFiles.entries.withUnsafeMutableBufferPointer { f in
            var spec = coffer_run_spec(
                private_mount: 1, private_network: 0, pid_namespace: 0, allow_swap: 0, drop_escape_caps: 0,
                container_pid: pid, container_root: UnsafePointer(rootC), dir: UnsafePointer(dirC), size_bytes: UInt(size), dir_mode: 0o555,
                dir_uid: 0, dir_gid: 0, files: UnsafePointer(f.baseAddress), file_count: Int32(files.count),
                exe: nil, argv: nil, envp: nil)
            return coffer_run_spawn(&spec, &reportFD, nil)
        }
        guard child > 0 else { throw CofferError(.mountFailed, "cannot start the injection: \(String(cString: strerror(errno)))") }
        let failure = readSpawnReports(reportFD)
        spawnFiles.zero()
        var expired: Int32 = 0
        let status = coffer_run_wait(child, 30, &expired)
        if let f = failure {
            let reason = String(cString: strerror(f.err))
            switch Int(f.stage) {
            case COFFER_STAGE_UNSHARE: throw CofferError(.mountFailed, "cannot enter the container's mount namespace: \(reason)")
            case COFFER_STAGE_NOSWAP: throw CofferError(.mountFailed, "the kernel refuses a noswap tmpfs (Linux 6.4 or later has it)")
            case COFFER_STAGE_ATTACH: throw CofferError(.mountFailed, "cannot attach the tmpfs at \(target) inside the container's root: \(reason)")
            case COFFER_STAGE_SHARED:
                throw CofferError(.mountFailed, "\(target) is on a mount shared with other mount namespaces: the tmpfs would appear there too (the host's, for a shared volume)",
                                  hint: "choose io.coffer.target outside shared volumes (rshared, :shared)")
            case COFFER_STAGE_WRITE:
                let name = f.index >= 0 && Int(f.index) < files.count ? files[Int(f.index)].name : target
                throw CofferError(.mountFailed, "cannot write \(name) on the container's tmpfs: \(reason)")
            default: throw CofferError(.mountFailed, "cannot make the container's tmpfs (stage \(f.stage)): \(reason)")
            }
        }
        guard status == 0, expired == 0 else { throw CofferError(.mountFailed, "the injection ended with status \(status)") }
    }

    /// poststop: the container's run ends (cofferd records it; the tmpfs went with the
    /// container's mount namespace).
    static func stopped(_ state: State) throws {
        guard state.annotations["io.coffer.secrets"] != nil else { return }
        let http = try settings(state).http()
        let label = "container:" + state.id
        for run in try RunAPI.list(http) where run.label == label {
            do {
                try RunAPI.end(http, run.id, exitStatus: nil, fate: "the container stopped")
            } catch let e as APIError where e.status == 404 {
                // cofferd watches the container's process too, and may have ended the
                // run when it exited, between the list and this end: nothing is left to do
            }
        }
    }
}
