import CofferClient
import Foundation
import Synchronization
import Testing

/// `coffer operator backup` and `cofferd restore` (the keys issue, point 3): a
/// consistent online snapshot taken during a write storm restores into a new state
/// directory and reads the same; it holds no value in any encoding; a tampered
/// backup, or one of another Coffer, is refused and leaves nothing behind.
@Suite(.serialized) struct BackupTests {
    static let canary = "backup-canary-7f3a9e"

    /// A second daemon whose state comes from `backup`, opened with `key`.
    func restored(_ backup: String, key: String) throws -> (Daemon, RunResult) {
        let r2 = try Daemon(sqlite: true, initialise: false)
        try FileManager.default.createDirectory(atPath: (r2.keyPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        try FileManager.default.copyItem(atPath: key, toPath: r2.keyPath)
        chmod(r2.keyPath, 0o400)
        let r = try run(Bins.cofferd, ["restore", backup, "--config", r2.configPath])
        return (r2, r)
    }

    @Test func aBackupDuringAWriteStormRestoresEveryValue() throws {
        let d = try Daemon(sqlite: true)
        try d.start()
        #expect(try d.coffer(["secret", "put", "b/canary"], stdin: Array(Self.canary.utf8)).status == 0)
        for i in 0..<20 { #expect(try d.coffer(["secret", "put", "b/s\(i)"], stdin: Array("v\(i)-0".utf8)).status == 0) }
        _ = try d.coffer(["token", "create", "--role", "admin", "--ttl", "1h"])
        // a storm of writes while the snapshot is taken
        let stop = StopFlag()
        let socket = d.socket
        let storm = Thread {
            var n = 1
            while !stop.isSet {
                let http = UnixHTTPClient(socketPath: socket)
                _ = try? http.request("PUT", "/v1/secrets/data/b/s\(n % 20)", body: Array(#"{"value":"v\#(n % 20)-\#(n)"}"#.utf8))
                n += 1
            }
        }
        storm.start()
        usleep(300_000)
        let file = d.dir + "/coffer.backup"
        let b = try d.coffer(["operator", "backup", "--output", file])
        usleep(300_000)
        stop.set()
        usleep(200_000)
        #expect(b.status == 0 && b.out.contains("backup written to"), "\(b.stderr)")
        var st = stat()
        #expect(stat(file, &st) == 0 && st.st_mode & 0o777 == 0o600)
        // ciphertext only: the canary is in it in no encoding
        let bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        for form in [Self.canary, Data(Self.canary.utf8).base64EncodedString(), Data(Self.canary.utf8).map { String(format: "%02x", $0) }.joined()] {
            #expect(bytes.range(of: Data(form.utf8)) == nil, "\(form) is in the backup")
        }
        #expect(try d.coffer(["operator", "backup", "--output", file]).status == 7, "an existing file is never overwritten")
        let (r2, r) = try restored(file, key: d.keyPath)
        #expect(r.status == 0 && r.out.contains("restored"), "\(r.out) \(r.stderr)")
        try r2.start()
        #expect(try r2.coffer(["secret", "get", "b/canary"]).out == Self.canary)
        // every value is the one the source had at the version the snapshot holds
        for i in 0..<20 {
            let (code, body) = try r2.curl("GET", "/v1/secrets/data/b/s\(i)")
            let j = json(body)
            let version = (j["current_version"] as? Int) ?? 0
            #expect(code == 200 && version >= 1)
            let source = try d.coffer(["secret", "get", "b/s\(i)", "--version", String(version)]).out
            #expect(j["value"] as? String == source, "b/s\(i) v\(version)")
        }
        #expect(try r2.coffer(["audit", "verify"]).status == 0)
        #expect(try r2.coffer(["operator", "check"]).status == 0)
        #expect(try r2.coffer(["token", "list"]).out.split(separator: "\n").count == 2, "the token came along")
    }

    @Test func aTamperedBackupOrOneOfAnotherCofferIsRefused() throws {
        let d = try Daemon(sqlite: true)
        try d.start()
        #expect(try d.coffer(["secret", "put", "t/x"], stdin: Array("x".utf8)).status == 0)
        let file = d.dir + "/b.backup"
        #expect(try d.coffer(["operator", "backup", "--output", file]).status == 0)
        let original = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
        func variant(_ name: String, _ change: (inout [UInt8]) -> Void) throws -> String {
            var b = original
            change(&b)
            let path = d.dir + "/" + name
            try Data(b).write(to: URL(fileURLWithPath: path))
            return path
        }
        let header = original.split(separator: 0x0A, maxSplits: 3, omittingEmptySubsequences: false)
        let dbStart = header[0].count + header[1].count + header[2].count + 3
        let cases: [(String, String)] = [
            (try variant("flipped", { $0[dbStart + 5000] ^= 0x01 }), "does not match its manifest"),
            (try variant("manifest", { b in
                // the manifest line only; the database bytes stay as they are
                let line = String(decoding: header[1], as: UTF8.self).replacingOccurrences(of: "\"secrets\":1", with: "\"secrets\":9")
                b = Array(header[0]) + [0x0A] + Array(line.utf8) + [0x0A] + Array(header[2]) + [0x0A] + Array(original[dbStart...])
            }), "not signed by the audit key"),
            (try variant("truncated", { $0 = Array($0.prefix(40)) }), "cut short"),
            (try variant("garbage", { $0 = Array("hello".utf8) }), "not a Coffer backup"),
        ]
        for (path, why) in cases {
            let (r2, r) = try restored(path, key: d.keyPath)
            #expect(r.status != 0 && r.stderr.contains(why), "\(path): \(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: r2.dbPath), "\(path): a refused restore left a database")
        }
        // another Coffer's key does not open it
        let other = try Daemon(sqlite: true)
        let (r3, r) = try restored(file, key: other.keyPath)
        #expect(r.status != 0 && r.stderr.contains("made by another Coffer"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: r3.dbPath))
        // and a state directory that already holds a database is never overwritten
        d.stop()
        let r4 = try run(Bins.cofferd, ["restore", file, "--config", d.configPath])
        #expect(r4.status != 0 && r4.stderr.contains("already holds a Coffer database"), "\(r4.stderr)")
        try d.start()
        #expect(try d.coffer(["secret", "get", "t/x"]).out == "x")
    }
}

final class StopFlag: Sendable {
    private let flag = Mutex(false)
    var isSet: Bool { flag.withLock { $0 } }
    func set() { flag.withLock { $0 = true } }
}
