public import Foundation

// Wire types of /v1/runs (`coffer run`, `coffer build`).

/// One secret a run injects: a path, optionally a pinned version.
public struct RunSecretRef: Codable, Sendable, Equatable {
    public var path: String
    public var version: Int?
    enum CodingKeys: String, CodingKey, CaseIterable { case path, version }
    public init(path: String, version: Int? = nil) {
        self.path = path
        self.version = version
    }
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        path = try c.decode(String.self, forKey: .path)
        version = try c.decodeIfPresent(Int.self, forKey: .version)
    }
}

/// `POST /v1/runs`: the secrets of one run, fetched in one request and audited as
/// one event. `mount` says who makes the tmpfs: `private` (the caller, in its own
/// mount namespace) or `daemon` (cofferd, under its run directory, for callers who
/// may not mount). `dry_run` answers the plan without values and starts nothing.
public struct RunStartRequest: Codable, Sendable {
    public var secrets: [RunSecretRef]
    public var mount: String
    public var sizeBytes: Int?
    /// A duration like "30m"; capped by the daemon's `run.max_ttl`.
    public var ttl: String?
    /// host (default) or none.
    public var network: String?
    public var dryRun: Bool?
    /// The process whose life bounds the run instead of the caller's (a container's
    /// init, for the OCI hook): the caller's own uid's, or anyone's for root.
    public var holderPID: Int?
    /// What the run is for, e.g. "container:ID" (recorded, listed; [A-Za-z0-9._:-], ≤ 128).
    public var label: String?
    /// Live rotation: cofferd writes each new version of these files into the run's
    /// tmpfs while the run lives.
    public var follow: RunFollow?
    /// Where the tmpfs is as the holder sees it (for `coffer inject list`, which checks it).
    public var target: String?
    enum CodingKeys: String, CodingKey, CaseIterable {
        case secrets, mount, sizeBytes = "size_bytes", ttl, network, dryRun = "dry_run", holderPID = "holder_pid", label, follow, target
    }
    public init(secrets: [RunSecretRef], mount: String, sizeBytes: Int? = nil, ttl: String? = nil, network: String? = nil, dryRun: Bool? = nil,
                holderPID: Int? = nil, label: String? = nil, follow: RunFollow? = nil, target: String? = nil) {
        self.follow = follow
        self.target = target
        self.secrets = secrets
        self.mount = mount
        self.sizeBytes = sizeBytes
        self.ttl = ttl
        self.network = network
        self.dryRun = dryRun
        self.holderPID = holderPID
        self.label = label
    }
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        secrets = try c.decode([RunSecretRef].self, forKey: .secrets)
        mount = try c.decode(String.self, forKey: .mount)
        sizeBytes = try c.decodeIfPresent(Int.self, forKey: .sizeBytes)
        ttl = try c.decodeIfPresent(String.self, forKey: .ttl)
        network = try c.decodeIfPresent(String.self, forKey: .network)
        dryRun = try c.decodeIfPresent(Bool.self, forKey: .dryRun)
        holderPID = try c.decodeIfPresent(Int.self, forKey: .holderPID)
        label = try c.decodeIfPresent(String.self, forKey: .label)
        follow = try c.decodeIfPresent(RunFollow.self, forKey: .follow)
        target = try c.decodeIfPresent(String.self, forKey: .target)
    }
}

/// What a followed run's files are: where the tmpfs is as the holder sees it, each
/// file (path, name, owner, mode) and a signal for the holder after an update.
public struct RunFollow: Codable, Sendable {
    public var target: String
    public var files: [RunFollowFile]
    /// SIGHUP, SIGUSR1 or SIGUSR2 (a run's runner forwards SIGHUP to its command).
    public var signal: String?
    enum CodingKeys: String, CodingKey, CaseIterable { case target, files, signal }
    public init(target: String, files: [RunFollowFile], signal: String?) {
        self.target = target
        self.files = files
        self.signal = signal
    }
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        target = try c.decode(String.self, forKey: .target)
        files = try c.decode([RunFollowFile].self, forKey: .files)
        signal = try c.decodeIfPresent(String.self, forKey: .signal)
    }
}

public struct RunFollowFile: Codable, Sendable, Equatable {
    public var path: String
    public var name: String
    public var mode: Int
    public var uid: Int
    public var gid: Int
    enum CodingKeys: String, CodingKey, CaseIterable { case path, name, mode, uid, gid }
    public init(path: String, name: String, mode: Int, uid: Int, gid: Int) {
        self.path = path
        self.name = name
        self.mode = mode
        self.uid = uid
        self.gid = gid
    }
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        path = try c.decode(String.self, forKey: .path)
        name = try c.decode(String.self, forKey: .name)
        mode = try c.decode(Int.self, forKey: .mode)
        uid = try c.decode(Int.self, forKey: .uid)
        gid = try c.decode(Int.self, forKey: .gid)
    }
}

public struct RunSecretInfo: Codable, Sendable {
    public var path: String
    public var version: Int
    public var createdAt: String
    /// The capability that released it: read or inject.
    public var allowedBy: String
    /// Absent in a dry run.
    public var valueBase64: String?
    enum CodingKeys: String, CodingKey { case path, version, createdAt = "created_at", allowedBy = "allowed_by", valueBase64 = "value_base64" }
    public init(path: String, version: Int, createdAt: String, allowedBy: String, valueBase64: String?) {
        self.path = path
        self.version = version
        self.createdAt = createdAt
        self.allowedBy = allowedBy
        self.valueBase64 = valueBase64
    }
}

public struct RunStartResponse: Codable, Sendable {
    /// Absent in a dry run.
    public var id: String?
    public var mount: String
    /// The tmpfs cofferd mounted (mount "daemon"), owned by the caller, mode 0700.
    public var mountPath: String?
    /// Whether that tmpfs is mounted noswap.
    public var noswap: Bool?
    public var sizeBytes: Int
    public var ttlSeconds: Int
    public var expiresAt: String?
    public var network: String
    public var secrets: [RunSecretInfo]
    enum CodingKeys: String, CodingKey {
        case id, mount, mountPath = "mount_path", noswap, sizeBytes = "size_bytes", ttlSeconds = "ttl_seconds", expiresAt = "expires_at"
        case network, secrets
    }
    public init(id: String?, mount: String, mountPath: String?, noswap: Bool?, sizeBytes: Int, ttlSeconds: Int, expiresAt: String?,
                network: String, secrets: [RunSecretInfo]) {
        self.id = id
        self.mount = mount
        self.mountPath = mountPath
        self.noswap = noswap
        self.sizeBytes = sizeBytes
        self.ttlSeconds = ttlSeconds
        self.expiresAt = expiresAt
        self.network = network
        self.secrets = secrets
    }
}

/// `POST /v1/runs/{id}/end`: the runner reports how its command ended and what
/// became of its mount; cofferd unmounts a tmpfs it made.
public struct RunEndRequest: Codable, Sendable {
    public var exitStatus: Int?
    /// What the runner saw: e.g. "namespace released", "files removed".
    public var fate: String?
    enum CodingKeys: String, CodingKey, CaseIterable { case exitStatus = "exit_status", fate }
    public init(exitStatus: Int?, fate: String?) {
        self.exitStatus = exitStatus
        self.fate = fate
    }
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        exitStatus = try c.decodeIfPresent(Int.self, forKey: .exitStatus)
        fate = try c.decodeIfPresent(String.self, forKey: .fate)
    }
}

public struct RunInfo: Codable, Sendable {
    public var id: String
    public var uid: UInt32
    public var pid: Int32
    public var mount: String
    public var mountPath: String?
    public var startedAt: String
    public var expiresAt: String
    public var paths: [String]
    public var network: String
    public var label: String?
    /// Set when the run has ended.
    public var fate: String?
    enum CodingKeys: String, CodingKey {
        case id, uid, pid, mount, mountPath = "mount_path", startedAt = "started_at", expiresAt = "expires_at", paths, network, label, fate
    }
    public init(id: String, uid: UInt32, pid: Int32, mount: String, mountPath: String?, startedAt: String, expiresAt: String,
                paths: [String], network: String, label: String? = nil, fate: String?) {
        self.label = label
        self.id = id
        self.uid = uid
        self.pid = pid
        self.mount = mount
        self.mountPath = mountPath
        self.startedAt = startedAt
        self.expiresAt = expiresAt
        self.paths = paths
        self.network = network
        self.fate = fate
    }
}

public struct RunListResponse: Codable, Sendable {
    public var runs: [RunInfo]
    public init(runs: [RunInfo]) { self.runs = runs }
}

/// GET /v1/injections: every live injection with what the kernel says of its tmpfs.
public struct InjectionListResponse: Codable, Sendable {
    public var injections: [InjectionInfo]
    public init(injections: [InjectionInfo]) { self.injections = injections }
}

public struct InjectionInfo: Codable, Sendable {
    public struct Secret: Codable, Sendable {
        public var path: String
        public var version: Int?
        public init(path: String, version: Int?) {
            self.path = path
            self.version = version
        }
    }
    public struct File: Codable, Sendable {
        public var name: String
        public var mode: String
        public var uid: UInt32
        public var gid: UInt32
        public var size: Int
        public init(name: String, mode: String, uid: UInt32, gid: UInt32, size: Int) {
            self.name = name
            self.mode = mode
            self.uid = uid
            self.gid = gid
            self.size = size
        }
    }
    public var id: String
    public var label: String?
    public var uid: UInt32
    public var pid: Int32
    public var mount: String
    public var target: String?
    public var startedAt: String
    public var expiresAt: String
    public var follow: Bool
    public var secrets: [Secret]
    /// From the holder's mountinfo: file system type, source, mount and super-block options.
    public var fsType: String?
    public var source: String?
    public var mountOptions: [String]
    public var superOptions: [String]
    public var files: [File]
    /// "secure" (tmpfs + noswap + read-only + files 0400) or "weak"; why, when weak.
    public var verdict: String
    public var reasons: [String]
    enum CodingKeys: String, CodingKey {
        case id, label, uid, pid, mount, target, startedAt = "started_at", expiresAt = "expires_at", follow, secrets, fsType = "fs_type", source,
             mountOptions = "mount_options", superOptions = "super_options", files, verdict, reasons
    }
    public init(id: String, label: String?, uid: UInt32, pid: Int32, mount: String, target: String?, startedAt: String, expiresAt: String,
                follow: Bool, secrets: [Secret], fsType: String?, source: String?, mountOptions: [String], superOptions: [String],
                files: [File], verdict: String, reasons: [String]) {
        self.id = id
        self.label = label
        self.uid = uid
        self.pid = pid
        self.mount = mount
        self.target = target
        self.startedAt = startedAt
        self.expiresAt = expiresAt
        self.follow = follow
        self.secrets = secrets
        self.fsType = fsType
        self.source = source
        self.mountOptions = mountOptions
        self.superOptions = superOptions
        self.files = files
        self.verdict = verdict
        self.reasons = reasons
    }
}
