import CCofferLinux
public import CofferCore
import CofferEngine
import Foundation
import Glibc

/// Owns the socket path for one daemon: a lock file beside the socket (flock)
/// proves no other cofferd serves it, so a leftover socket file is stale and may be
/// replaced; a live daemon's socket is never touched.
public final class SocketGuard: Sendable {
    public let socketPath: String
    let lockFD: Int32

    public init(socketPath: String) throws(CofferError) {
        self.socketPath = socketPath
        guard socketPath.utf8.count < 108 else {
            throw CofferError(.config, "the socket path \(socketPath) is longer than a Unix socket allows (107 bytes)",
                              hint: "use a shorter path")
        }
        let dir = (socketPath as NSString).deletingLastPathComponent
        var isDir: ObjCBool = false
        if !FileManager.default.fileExists(atPath: dir, isDirectory: &isDir) {
            do {
                // 0755: the socket's own mode and group decide who may connect.
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
            } catch {
                throw CofferError(.config, "cannot create the socket directory \(dir): \(error.localizedDescription)")
            }
        } else if !isDir.boolValue {
            throw CofferError(.config, "\(dir) is not a directory")
        }
        let lockPath = dir + "/." + (socketPath as NSString).lastPathComponent + ".lock"
        let fd = coffer_lock_file(lockPath)
        guard fd >= 0 else {
            if errno == EWOULDBLOCK {
                throw CofferError(.config, "another cofferd is already serving \(socketPath)",
                                  hint: "stop it first, or give this one another socket path")
            }
            throw CofferError(.config, "cannot lock \(lockPath): \(String(cString: strerror(errno)))")
        }
        lockFD = fd
        var st = stat()
        if lstat(socketPath, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else {
                close(fd)
                throw CofferError(.config, "\(socketPath) exists and is not a socket; refusing to replace it")
            }
            if SocketGuard.isLive(socketPath) {
                close(fd)
                throw CofferError(.config, "a process is still answering on \(socketPath)", hint: "stop it first")
            }
            unlink(socketPath)  // stale: left by a daemon that died
        }
    }

    /// True when something accepts connections on the socket.
    static func isLive(_ path: String) -> Bool {
        let s = coffer_unix_connect(path)
        guard s >= 0 else { return false }
        close(s)
        return true
    }

    /// Gives the bound socket its configured mode and group (invariant 7). The
    /// process umask (0077) kept it owner-only until now.
    public func applyMode(_ mode: UInt32, group gid: UInt32?) throws(CofferError) {
        if let gid, chown(socketPath, UInt32.max, gid) != 0 {
            throw CofferError(.config, "cannot set the group of \(socketPath): \(String(cString: strerror(errno)))")
        }
        guard chmod(socketPath, mode_t(mode)) == 0 else {
            throw CofferError(.config, "cannot set the mode of \(socketPath): \(String(cString: strerror(errno)))")
        }
    }

    /// Removes the socket at shutdown and releases the lock.
    public func release() {
        unlink(socketPath)
        close(lockFD)
    }
}
