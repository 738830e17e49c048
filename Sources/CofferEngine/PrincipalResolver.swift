import CCofferLinux
public import CofferCore
import Foundation
import Synchronization
import Glibc

/// Turns the kernel's peer credentials into a Principal: user name and all groups
/// (primary and supplementary) from the host's user database, cached briefly.
public final class PrincipalResolver: Sendable {
    struct Entry {
        var name: String?
        var groups: [UInt32]
        var groupNames: [String]
        var expires: ContinuousClock.Instant
    }

    struct Freshness {
        var checked: ContinuousClock.Instant
        var stamp: [Int]
    }

    private let cache = Mutex<[UInt32: Entry]>([:])
    private let freshness = Mutex(Freshness(checked: .now, stamp: PrincipalResolver.databaseStamp()))
    private let ttl: Duration

    public init(ttl: Duration = .seconds(30)) { self.ttl = ttl }

    /// Modification times of the user and group databases: a change to either (a user
    /// removed from the admin group) empties the cache, checked at most every 250 ms,
    /// so a revoked membership bites within a quarter second, not after the TTL.
    static func databaseStamp() -> [Int] {
        ["/etc/group", "/etc/passwd"].map { path in
            var st = stat()
            guard stat(path, &st) == 0 else { return -1 }
            return st.st_mtim.tv_sec * 1_000_000_000 + st.st_mtim.tv_nsec ^ Int(st.st_ino) << 1
        }
    }

    func invalidateIfDatabasesChanged(_ now: ContinuousClock.Instant) {
        let due = freshness.withLock { f -> Bool in
            guard now - f.checked >= .milliseconds(250) else { return false }
            f.checked = now
            return true
        }
        guard due else { return }
        let stamp = PrincipalResolver.databaseStamp()
        let changed = freshness.withLock { f -> Bool in
            defer { f.stamp = stamp }
            return f.stamp != stamp
        }
        if changed { cache.withLock { $0.removeAll() } }
    }

    public func principal(pid: Int32, uid: UInt32, gid: UInt32) -> Principal {
        let now = ContinuousClock.now
        invalidateIfDatabasesChanged(now)
        if let e = cache.withLock({ $0[uid] }), e.expires > now, gid == UInt32.max || e.groups.contains(gid) {
            return Principal(pid: pid, uid: uid, gid: gid, userName: e.name, groups: e.groups, groupNames: e.groupNames)
        }
        let (name, primary) = PrincipalResolver.lookupUser(uid)
        // gid UInt32.max: not from the kernel (a token's origin); the primary group then
        // comes from the user database
        var groups: [UInt32] = gid == UInt32.max ? primary.map { [$0] } ?? [] : [gid]
        if let name {
            groups += PrincipalResolver.groupList(name, primary ?? gid)
        }
        groups = Array(Set(groups)).sorted()
        let names = groups.compactMap(PrincipalResolver.groupName)
        cache.withLock { c in
            if c.count > 4096 { c.removeAll() }  // bounded (invariant 6)
            c[uid] = Entry(name: name, groups: groups, groupNames: names, expires: now + ttl)
        }
        return Principal(pid: pid, uid: uid, gid: gid, userName: name, groups: groups, groupNames: names)
    }

    /// A hypothetical principal for `policy explain --as`.
    public func principal(as subject: Subject) -> Principal? {
        switch subject {
        case .uid(let uid):
            let (_, primary) = PrincipalResolver.lookupUser(uid)
            return principal(pid: 0, uid: uid, gid: primary ?? uid)
        case .user(let name):
            guard let pw = getpwnam(name) else { return nil }
            return principal(pid: 0, uid: pw.pointee.pw_uid, gid: pw.pointee.pw_gid)
        case .group(let name):
            // a caller whose only group is this one, with no user bindings
            return Principal(pid: 0, uid: UInt32.max - 1, gid: PrincipalResolver.gid(ofGroup: name) ?? UInt32.max - 1,
                             userName: nil, groups: [], groupNames: [name])
        case .container(let name):
            // an injection for that container by a rootful runtime: root's roles and the container's
            var p = principal(pid: 0, uid: 0, gid: 0)
            p.container = name
            return p
        }
    }

    public static func userName(_ uid: UInt32) -> String? { lookupUser(uid).0 }

    static func groupName(_ gid: UInt32) -> String? {
        var grp = Glibc.group()
        var result: UnsafeMutablePointer<group>?
        var buf = [CChar](repeating: 0, count: 16384)
        guard getgrgid_r(gid, &grp, &buf, buf.count, &result) == 0, result != nil, let n = grp.gr_name else { return nil }
        return String(cString: n)
    }

    static func lookupUser(_ uid: UInt32) -> (String?, UInt32?) {
        var pwd = Glibc.passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buf = [CChar](repeating: 0, count: 4096)
        guard getpwuid_r(uid, &pwd, &buf, buf.count, &result) == 0, result != nil, let n = pwd.pw_name else {
            return (nil, nil)
        }
        return (String(cString: n), pwd.pw_gid)
    }

    static func groupList(_ user: String, _ gid: UInt32) -> [UInt32] {
        var groups = [UInt32](repeating: 0, count: 256)
        let n = coffer_user_groups(user, gid, &groups, Int32(groups.count))
        return n > 0 ? Array(groups.prefix(Int(n))) : []
    }

    /// gid of a group name, nil if the group does not exist.
    public static func gid(ofGroup name: String) -> UInt32? {
        var grp = Glibc.group()
        var result: UnsafeMutablePointer<group>?
        var buf = [CChar](repeating: 0, count: 16384)
        guard getgrnam_r(name, &grp, &buf, buf.count, &result) == 0, result != nil else { return nil }
        return grp.gr_gid
    }
}
