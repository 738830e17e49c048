import CCofferLinux
import CofferCore
import CofferEngine
import Foundation
import Glibc

/// What the daemon checks before it trusts its files (installed mode), as sshd's
/// StrictModes does: each file and directory it reads security-relevant state from
/// must belong to root or to the daemon's own user and be writable by no one else.
/// Otherwise a local user could swap the policy, the key or the database under it.
enum StateChecks {
    static func strict(_ path: String, _ what: String) throws(CofferError) { try FileTrust.check(path, what) }

    /// Installed mode: config, state directory, database, key file and policy file.
    /// The database must exist: only `cofferd init` creates one, so a deleted
    /// database is never silently replaced by an empty one.
    static func installed(configFile: String, _ c: CofferConfig) throws(CofferError) {
        try strict(configFile, "config file")
        // a host joining a shared PostgreSQL database: its state directory (instance
        // id, audit anchor) is made at its first start; the database must exist
        if c.postgres != nil, !FileManager.default.fileExists(atPath: c.stateDir) {
            do {
                try FileManager.default.createDirectory(atPath: c.stateDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            } catch {
                throw CofferError(.config, "cannot create the state directory \(c.stateDir): \(error.localizedDescription)")
            }
        }
        guard FileManager.default.fileExists(atPath: c.stateDir) else {
            throw CofferError(.config, "the state directory \(c.stateDir) does not exist", hint: "run `cofferd init` first")
        }
        try strict(c.stateDir, "state directory")
        if let pg = c.postgres {
            // the database is the server's; what is here is the password file
            if let p = pg.passwordFile { try strict(p, "PostgreSQL password file") }
        } else {
            let db = c.resolvedDatabasePath
            guard FileManager.default.fileExists(atPath: db) else {
                throw CofferError(.config, "the database \(db) does not exist; cofferd serve never creates one",
                                  hint: "run `cofferd init` for a new installation, or restore the database from a backup")
            }
            try strict((db as NSString).deletingLastPathComponent, "database directory")
            try strict(db, "database")
        }
        if FileManager.default.fileExists(atPath: c.keyFile) { try strict(c.keyFile, "key file") }
        if let p = c.policyFile, FileManager.default.fileExists(atPath: p) { try strict(p, "policy file") }
        // the socket's directory: nobody else may rename the socket and listen in its place
        let socketDir = (c.socketPath as NSString).deletingLastPathComponent
        if FileManager.default.fileExists(atPath: socketDir) { try strict(socketDir, "socket directory") }
    }
}

/// One daemon per state directory: an flock on a lock file inside it, held for the
/// daemon's life (a second daemon on the same database with another socket would
/// serve stale versions and accept revoked tokens).
final class StateLock: Sendable {
    let fd: Int32

    init(stateDir: String) throws(CofferError) {
        let path = stateDir + "/.cofferd.lock"
        let fd = coffer_lock_file(path)
        guard fd >= 0 else {
            if errno == EWOULDBLOCK {
                throw CofferError(.config, "another cofferd is already using the state directory \(stateDir)",
                                  hint: "stop it first; one state directory serves one daemon")
            }
            throw CofferError(.config, "cannot lock \(path): \(String(cString: strerror(errno)))")
        }
        self.fd = fd
    }

    deinit { close(fd) }
}
