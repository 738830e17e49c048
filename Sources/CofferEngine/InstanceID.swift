public import CofferCore
import CofferAudit
import Foundation
import Glibc

/// The id of this daemon instance on a shared (PostgreSQL) database: the name of its
/// own audit chain. Kept in the state directory (`instance`), made at the first start
/// there. A state directory that already anchors a trail (migrated from SQLite, or
/// from before chains) continues the chain named "". SQLite: always "" (one daemon
/// per file).
public enum InstanceID {
    public static let fileName = "instance"

    public static func forStore(_ config: CofferConfig) throws(CofferError) -> String {
        guard case .postgres = config.databaseLocation else { return "" }
        return try load(stateDir: config.stateDir)
    }

    public static func load(stateDir: String) throws(CofferError) -> String {
        let file = stateDir + "/" + fileName
        if let text = try? String(contentsOfFile: file, encoding: .utf8) {
            let id = text.trimmingCharacters(in: .whitespacesAndNewlines)
            if id == legacy { return "" }
            guard isValid(id) else {
                throw CofferError(.config, "\(file) does not hold an instance id (1-64 of a-z, 0-9, '.', '-', starting with a letter or digit)",
                                  hint: "restore it, or remove it on a host whose state directory is new")
            }
            return id
        }
        let id = FileManager.default.fileExists(atPath: stateDir + "/" + AuditAnchor.fileName) ? "" : fresh()
        let fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw CofferError(.config, "cannot write \(file): \(String(cString: strerror(errno)))") }
        let bytes = Array(((id.isEmpty ? legacy : id) + "\n").utf8)
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        guard n == bytes.count, synced else {
            unlink(file)
            throw CofferError(.config, "cannot write \(file)")
        }
        return id
    }

    /// What the file holds for the chain named "" (begun before chains, or migrated).
    static let legacy = "(first)"

    public static func isValid(_ id: String) -> Bool {
        guard let first = id.utf8.first, (0x61...0x7A).contains(first) || (0x30...0x39).contains(first) else { return false }
        return (1...64).contains(id.utf8.count) && id.utf8.allSatisfy { (0x61...0x7A).contains($0) || (0x30...0x39).contains($0) || $0 == 0x2E || $0 == 0x2D }
    }

    /// The host's name (what an operator recognises in `audit verify`) and 8 random hex digits.
    static func fresh() -> String {
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, 255)
        let host = String(decoding: String(cString: name).lowercased().utf8.filter {
            (0x61...0x7A).contains($0) || (0x30...0x39).contains($0) || $0 == 0x2D
        }.prefix(40), as: UTF8.self)
        var rnd = [UInt8](repeating: 0, count: 4)
        for i in rnd.indices { rnd[i] = UInt8.random(in: 0...255) }
        let suffix = rnd.map { String(format: "%02x", $0) }.joined()
        return (host.isEmpty ? "cofferd" : host) + "-" + suffix
    }
}
