public import CofferCore
import Foundation
import Glibc

/// Files the daemon takes security-relevant state from (config, policy, key, state
/// directory, database) must belong to root or to the daemon's own user and be
/// writable by no one else, as sshd's StrictModes requires: otherwise a local user
/// could swap them under the daemon.
public enum FileTrust {
    /// Refuses a path owned by someone else or writable by group or others, and a
    /// path inside a directory (at any depth) that someone else owns or may write
    /// (root-owned sticky directories such as /tmp excepted: nobody can replace
    /// another's entry there), as sshd's secure_path does: otherwise the file could be
    /// replaced (or swapped for a symlink) under the daemon.
    public static func check(_ path: String, _ what: String) throws(CofferError) {
        try checkAncestors(of: path, what)
        try checkOne(path, what)
    }

    static func checkAncestors(of path: String, _ what: String) throws(CofferError) {
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        var dir = (absolute as NSString).deletingLastPathComponent
        let me = geteuid()
        while true {
            var st = stat()
            guard stat(dir, &st) == 0 else {
                throw CofferError(.config, "cannot check the directory \(dir) of the \(what): \(String(cString: strerror(errno)))")
            }
            let sticky = st.st_mode & S_ISVTX != 0 && st.st_uid == 0
            guard st.st_uid == 0 || st.st_uid == me else {
                throw CofferError(.config, "the \(what) \(path) lies in \(dir), which is owned by uid \(st.st_uid), not by root or cofferd's user",
                                  hint: "keep cofferd's files in directories only root (or cofferd's user) can change")
            }
            guard st.st_mode & 0o022 == 0 || sticky else {
                throw CofferError(.config, "the \(what) \(path) lies in \(dir), which others can write (mode \(String(st.st_mode & 0o7777, radix: 8)))",
                                  hint: "chmod go-w \(dir)")
            }
            if dir == "/" || dir.isEmpty { break }
            dir = (dir as NSString).deletingLastPathComponent
        }
    }

    static func checkOne(_ path: String, _ what: String) throws(CofferError) {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw CofferError(.config, "cannot check the \(what) \(path): \(String(cString: strerror(errno)))")
        }
        let me = geteuid()
        guard st.st_uid == 0 || st.st_uid == me else {
            throw CofferError(.config, "the \(what) \(path) is owned by uid \(st.st_uid), not by root or cofferd's user (uid \(me))",
                              hint: "chown it to root (or cofferd's user) before starting cofferd")
        }
        guard st.st_mode & 0o022 == 0 else {
            throw CofferError(.config, "the \(what) \(path) is writable by \(st.st_mode & 0o002 != 0 ? "everyone" : "its group") (mode \(String(st.st_mode & 0o7777, radix: 8)))",
                              hint: "chmod go-w \(path)")
        }
    }

}
