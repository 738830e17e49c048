import CofferClient
import Foundation
import Glibc
import Synchronization
import Testing

/// The keys issue, points 1, 2 and 5: the root key held by a passphrase or by Shamir
/// shares (the daemon then starts sealed), seal and unseal, rekey between holders,
/// online rotation under load and under kill -9, and a seal that really drops the key
/// from the daemon's memory. Real daemon, real CLI, real files.
@Suite(.serialized) struct KeyHolderTests {
    static let passphrase = "correct horse battery staple"

    /// A daemon initialised with `args` after `cofferd init --config C`.
    static func initialised(_ args: [String], stdin: String? = nil, sqlite: Bool = false) throws -> (Daemon, RunResult) {
        let d = try Daemon(sqlite: sqlite, initialise: false)
        let r = try run(Bins.cofferd, ["init", "--config", d.configPath] + args, stdin: stdin.map { Array(($0 + "\n").utf8) })
        return (d, r)
    }

    static func shareFiles(_ dir: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("coffer-share-") }.sorted {
            // by index: coffer-share-SET-INDEX.txt
            Int($0.split(separator: "-").last!.dropLast(4))! < Int($1.split(separator: "-").last!.dropLast(4))!
        }.map { dir + "/" + $0 }
    }

    @Test func aPassphraseHoldsTheRootKeyAndTheDaemonStartsSealed() throws {
        let (short, rs) = try Self.initialised(["--unseal", "passphrase", "--passphrase-stdin", "--kdf", "interactive"], stdin: "too short")
        #expect(rs.status != 0 && rs.stderr.contains("passphrase must be"), "\(rs.stderr)")
        #expect(!FileManager.default.fileExists(atPath: short.dbPath), "a refused init leaves no database")
        let (d, r) = try Self.initialised(["--unseal", "passphrase", "--passphrase-stdin", "--kdf", "interactive"], stdin: Self.passphrase)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: d.keyPath), "no key file in passphrase mode")
        try d.start()
        var s = json(try d.curl("GET", "/v1/sys/status").1)
        #expect(s["sealed"] as? Bool == true && s["unseal"] as? String == "passphrase")
        #expect(try d.coffer(["secret", "get", "x"]).status != 0)
        let wrong = try d.coffer(["operator", "unseal", "--passphrase-stdin"], stdin: Array("correct horse battery stapler\n".utf8))
        #expect(wrong.status != 0 && wrong.stderr.contains("passphrase does not unseal"), "\(wrong.stderr)")
        #expect(!wrong.stderr.contains("stapler"), "the passphrase never appears in an error")
        let ok = try d.coffer(["operator", "unseal", "--passphrase-stdin"], stdin: Array((Self.passphrase + "\n").utf8))
        #expect(ok.status == 0 && ok.out.contains("unsealed"), "\(ok.stderr)")
        #expect(try d.coffer(["secret", "put", "p/one"], stdin: Array("v1".utf8)).status == 0)
        // a restart starts sealed again; the same passphrase opens it
        d.stop()
        try d.start()
        s = json(try d.curl("GET", "/v1/sys/status").1)
        #expect(s["sealed"] as? Bool == true)
        #expect(try d.coffer(["operator", "unseal", "--passphrase-stdin"], stdin: Array((Self.passphrase + "\n").utf8)).status == 0)
        #expect(try d.coffer(["secret", "get", "p/one"]).out == "v1")
        // the failed attempt was recorded (held while sealed, appended at the unseal)
        let events = try d.coffer(["audit", "search", "--action", "unseal", "--format", "json"]).out
        #expect(events.contains("422") || events.contains("invalid_parameter"), "\(events)")
        #expect(try d.coffer(["audit", "verify"]).status == 0)
        #expect(!d.log.contains(Self.passphrase))
    }

    @Test func sharesOpenAtTheThresholdAndEveryWrongShareIsNamed() throws {
        let d2 = try Daemon(initialise: false)
        let dir = d2.dir + "/shares"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let init2 = try run(Bins.cofferd, ["init", "--config", d2.configPath, "--unseal", "shares", "--shares", "5", "--threshold", "3", "--share-dir", dir])
        #expect(init2.status == 0, "\(init2.stderr)")
        let files = try Self.shareFiles(dir)
        #expect(files.count == 5)
        for f in files {
            var st = stat()
            #expect(stat(f, &st) == 0 && st.st_mode & 0o777 == 0o400, "\(f) is 0400")
        }
        #expect(!init2.out.contains(try String(contentsOfFile: files[0], encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)),
                "shares written to files are not printed too")
        // another init's shares, printed once
        let (other, ro) = try Self.initialised(["--unseal", "shares", "--shares", "3", "--threshold", "2"])
        _ = other
        let foreign = ro.out.split(separator: "\n").first { $0.hasPrefix("coffer-share-v1:") }.map(String.init) ?? ""
        #expect(!foreign.isEmpty, "\(ro.out)")
        try d2.start()
        func give(_ text: String) throws -> RunResult { try d2.coffer(["operator", "unseal", "--share-stdin"], stdin: Array((text + "\n").utf8)) }
        let share1 = try String(contentsOfFile: files[0], encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        // mistyped: one character of the value changed
        var chars = Array(share1)
        let at = chars.count - 20
        chars[at] = chars[at] == "0" ? "1" : "0"
        var res = try give(String(chars))
        #expect(res.status != 0 && res.stderr.contains("mistyped"), "\(res.stderr)")
        // well-formed (checksum recomputed) but not one of this database's shares
        let forged = try run("/usr/bin/python3", ["-c", """
            import hashlib,sys
            s=sys.argv[1]; body=s[:-9]; v=body.split(':'); y=v[3]
            y=('1' if y[0]=='0' else '0')+y[1:]; body=':'.join(v[:3]+[y])
            print(body+':'+hashlib.blake2b(b'coffer share check v1'+body.encode(),digest_size=16).digest()[:4].hex())
            """, share1]).out.trimmingCharacters(in: .whitespacesAndNewlines)
        res = try give(forged)
        #expect(res.status != 0 && res.stderr.contains("not one of this database's shares"), "\(res.stderr)")
        res = try give(foreign)
        #expect(res.status != 0 && res.stderr.contains("another split"), "\(res.stderr)")
        res = try give("nonsense")
        #expect(res.status != 0 && res.stderr.contains("not a Coffer share"))
        // progress, duplicate, reset
        res = try give(share1)
        #expect(res.status == 0 && res.out.contains("1 of 3"), "\(res.out) \(res.stderr)")
        res = try give(share1)
        #expect(res.status != 0 && res.stderr.contains("already given"))
        #expect(try d2.coffer(["operator", "unseal", "--reset"]).out.contains("0 of 3"))
        #expect(json(try d2.curl("GET", "/v1/sys/status").1)["shares_given"] as? Int == 0)
        for (i, f) in [files[1], files[3]].enumerated() {
            res = try d2.coffer(["operator", "unseal", "--share-file", f])
            #expect(res.status == 0 && res.out.contains("\(i + 1) of 3"), "\(res.out) \(res.stderr)")
        }
        res = try d2.coffer(["operator", "unseal", "--share-file", files[4]])
        #expect(res.status == 0 && res.out.contains("unsealed"), "\(res.out) \(res.stderr)")
        #expect(try d2.coffer(["secret", "put", "s/x"], stdin: Array("shared".utf8)).status == 0)
        #expect(try d2.coffer(["secret", "get", "s/x"]).out == "shared")
        #expect(!d2.log.contains(String(share1.split(separator: ":")[3])), "no share value in the log")
    }

    @Test func failedUnsealAttemptsAreRateLimited() throws {
        let (d, r) = try Self.initialised(["--unseal", "passphrase", "--passphrase-stdin", "--kdf", "interactive"], stdin: Self.passphrase)
        #expect(r.status == 0)
        try d.start()
        var limited = false
        for i in 0..<12 {
            let (code, body) = try d.curl("POST", "/v1/sys/unseal", body: #"{"share":"coffer-share-v1:00000000:1:\#(String(repeating: "0", count: 64)):0000000\#(i % 10)"}"#)
            if code == 429 {
                #expect(errorCode(body) == "rate_limited" && i >= 10, "\(i): \(body)")
                limited = true
                break
            }
        }
        #expect(limited)
        // even the right passphrase waits now
        let ok = try d.coffer(["operator", "unseal", "--passphrase-stdin"], stdin: Array((Self.passphrase + "\n").utf8))
        #expect(ok.status != 0 && ok.stderr.contains("too many failed unseal attempts"), "\(ok.stderr)")
    }

    /// An open daemon checks a passphrase given to unseal (it says whether it is the
    /// right one): those checks spend the same budget, so it is no guessing oracle.
    @Test func anOpenDaemonIsNoPassphraseOracle() throws {
        let (d, r) = try Self.initialised(["--unseal", "passphrase", "--passphrase-stdin", "--kdf", "interactive"], stdin: Self.passphrase)
        #expect(r.status == 0)
        try d.start()
        #expect(try d.coffer(["operator", "unseal", "--passphrase-stdin"], stdin: Array((Self.passphrase + "\n").utf8)).status == 0)
        var codes: [Int] = []
        for i in 0..<12 { codes.append(try d.curl("POST", "/v1/sys/unseal", body: #"{"passphrase":"guess number \#(i) here"}"#).0) }
        #expect(codes.prefix(10).allSatisfy { $0 == 422 } && codes.suffix(2).allSatisfy { $0 == 429 }, "\(codes)")
    }

    /// A backup of a database held by a passphrase restores with the passphrase, and
    /// brings the policy file as it was.
    @Test func aPassphraseBackupRestoresWithThePassphrase() throws {
        let (d, r) = try Self.initialised(["--unseal", "passphrase", "--passphrase-stdin", "--kdf", "interactive"], stdin: Self.passphrase,
                                          sqlite: true)  // the backup is of the SQLite file
        #expect(r.status == 0)
        let policy = "# backed up with the database\n" + Hard.rootAdminPolicy + "\n"
        try policy.write(toFile: d.policyPath, atomically: true, encoding: .utf8)
        try d.start()
        #expect(try d.coffer(["operator", "unseal", "--passphrase-stdin"], stdin: Array((Self.passphrase + "\n").utf8)).status == 0)
        #expect(try d.coffer(["secret", "put", "b/x"], stdin: Array("restored".utf8)).status == 0)
        let file = d.dir + "/p.backup"
        #expect(try d.coffer(["operator", "backup", "--output", file]).status == 0)
        let target = d.dir + "/restored"
        var res = try run(Bins.cofferd, ["restore", file, "--config", d.configPath, "--state", target])
        #expect(res.status != 0 && res.stderr.contains("passphrase"), "a key file does not open it: \(res.stderr)")
        res = try run(Bins.cofferd, ["restore", file, "--config", d.configPath, "--state", target + "2", "--passphrase-stdin"],
                      stdin: Array((Self.passphrase + "\n").utf8))
        #expect(res.status == 0 && res.out.contains("restored"), "\(res.out) \(res.stderr)")
        #expect((try? String(contentsOfFile: target + "2/policy.toml", encoding: .utf8)) == policy, "the policy came along")
        d.stop()
        let config = try String(contentsOfFile: d.configPath, encoding: .utf8).replacingOccurrences(of: "\(d.dir)/state", with: target + "2")
        try config.write(toFile: d.configPath, atomically: true, encoding: .utf8)
        try d.start()
        #expect(try d.coffer(["operator", "unseal", "--passphrase-stdin"], stdin: Array((Self.passphrase + "\n").utf8)).status == 0)
        #expect(try d.coffer(["secret", "get", "b/x"]).out == "restored")
    }

    /// How many readable mappings of `pid` hold `keyFile`'s key, by an independent
    /// reader (Python over /proc/PID/mem, as root).
    static func memoryContains(pid: Int32, keyFile: String) throws -> Int {
        let r = try run("/usr/bin/python3", ["-c", """
            import sys
            pid=int(sys.argv[1]); key=bytes.fromhex(open(sys.argv[2]).read().strip().split(':')[1])
            found=0
            with open(f"/proc/{pid}/maps") as m, open(f"/proc/{pid}/mem","rb",0) as mem:
                for line in m:
                    f=line.split()
                    if not f[1].startswith('r'): continue
                    lo,hi=[int(x,16) for x in f[0].split('-')]
                    if hi-lo>1<<30: continue
                    try:
                        mem.seek(lo); data=mem.read(hi-lo)
                    except OSError: continue
                    found+=data.count(key)
            print(found)
            """, String(pid), keyFile])
        guard r.status == 0, let n = Int(r.out.trimmingCharacters(in: .whitespacesAndNewlines)) else { throw TestError.failed("scan failed: \(r.stderr)") }
        return n
    }

    @Test func sealZeroesTheRootKeyInTheDaemonsMemory() throws {
        let d = try Daemon()
        try d.start()
        #expect(try d.coffer(["secret", "put", "m/x"], stdin: Array("before".utf8)).status == 0)
        guard let pid = d.pid else { throw TestError.failed("no pid") }
        #expect(try Self.memoryContains(pid: pid, keyFile: d.keyPath) >= 1, "the open daemon holds its root key (the scan can see it)")
        let s = try d.coffer(["operator", "seal"])
        #expect(s.status == 0 && s.out.contains("sealed"), "\(s.stderr)")
        let deadline = Date().addingTimeInterval(10)
        while !d.log.contains("every key held in memory was zeroed"), Date() < deadline { usleep(20_000) }
        #expect(try Self.memoryContains(pid: pid, keyFile: d.keyPath) == 0, "no copy of the root key is left after a seal")
        let (code, body) = try d.curl("GET", "/v1/secrets/data/m/x")
        #expect(code == 503 && errorCode(body) == "sealed")
        // the configured key file opens it again
        #expect(try d.coffer(["operator", "unseal"]).status == 0)
        #expect(try d.coffer(["secret", "get", "m/x"]).out == "before")
        #expect(try d.coffer(["audit", "verify"]).status == 0)
        let events = try d.coffer(["audit", "search", "--action", "seal", "--format", "json"]).out
        #expect(events.contains("\"seal\""), "the seal is audited: \(events)")
    }

    @Test func rekeyMovesTheRootKeyBetweenHoldersWithoutTouchingData() throws {
        let d = try Daemon()
        try d.start()
        #expect(try d.coffer(["secret", "put", "r/x"], stdin: Array("kept".utf8)).status == 0)
        let keysBefore = try d.coffer(["keys", "list"]).out
        let dir = d.dir + "/shares"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // the proof must be the current holder
        let other = try Daemon(initialise: false)
        _ = try run(Bins.cofferd, ["init", "--config", other.configPath])
        var r = try d.coffer(["operator", "rekey", "--to", "shares", "--shares", "3", "--threshold", "2", "--share-dir", dir, "--current-key-file", other.keyPath])
        #expect(r.status != 0 && r.stderr.contains("does not match"), "\(r.stderr)")
        // not with a token
        let token = try d.coffer(["token", "create", "--role", "admin", "--ttl", "1h"]).out.trimmingCharacters(in: .whitespacesAndNewlines)
        let (code, _) = try d.curl("POST", "/v1/sys/rekey", body: #"{"mode":"shares","shares":3,"threshold":2,"current":{"key":"x"}}"#,
                                   headers: ["X-Coffer-Token: \(token)"])
        #expect(code == 403)
        r = try d.coffer(["operator", "rekey", "--to", "shares", "--shares", "3", "--threshold", "2", "--share-dir", dir, "--current-key-file", d.keyPath])
        #expect(r.status == 0 && r.out.contains("2 of 3 shares"), "\(r.stderr)")
        let files = try Self.shareFiles(dir)
        #expect(files.count == 3)
        #expect(try d.coffer(["keys", "list"]).out == keysBefore, "no key under the root changed")
        // the key file no longer opens it; two shares do
        #expect(try d.coffer(["operator", "seal"]).status == 0)
        usleep(300_000)
        #expect(try d.coffer(["operator", "unseal", "--key-file", d.keyPath]).status != 0)
        #expect(try d.coffer(["operator", "unseal", "--share-file", files[2]]).out.contains("1 of 2"))
        #expect(try d.coffer(["operator", "unseal", "--share-file", files[0]]).out.contains("unsealed"))
        #expect(try d.coffer(["secret", "get", "r/x"]).out == "kept")
        // shares -> passphrase, proven by two shares
        r = try d.coffer(["operator", "rekey", "--to", "passphrase", "--kdf", "interactive", "--passphrase-stdin", "--current-share-file", files[1],
                          "--current-share-file", files[2]], stdin: Array((Self.passphrase + "\n").utf8))
        #expect(r.status == 0, "\(r.stderr)")
        // passphrase -> a new key file, proven by the passphrase
        let newKey = d.dir + "/keys/new.key"
        r = try d.coffer(["operator", "rekey", "--to", "keyfile", "--key-file", newKey, "--passphrase-stdin"], stdin: Array((Self.passphrase + "\n").utf8))
        #expect(r.status == 0 && r.out.contains("point keys.key_file at it"), "\(r.stderr)")
        var st = stat()
        #expect(stat(newKey, &st) == 0 && st.st_mode & 0o777 == 0o400)
        d.stop()
        // restart with keys.key_file at the new file: it opens by itself
        let config = try String(contentsOfFile: d.configPath, encoding: .utf8).replacingOccurrences(of: d.keyPath, with: newKey)
        try config.write(toFile: d.configPath, atomically: true, encoding: .utf8)
        try d.start()
        #expect(try d.coffer(["secret", "get", "r/x"]).out == "kept")
        #expect(try d.coffer(["audit", "verify"]).status == 0)
        #expect(try d.coffer(["operator", "check"]).status == 0)
    }

    /// After a rotation erased the old data key, a rekey to a new key file still works
    /// (erased keys have no material to re-seal); then a rotation and a rekey
    /// started at once: each succeeds or is refused as a conflict, and whichever holder
    /// the status names afterwards opens the database, with every secret intact.
    @Test func rotationThenRekeyAndTheirRaceKeepOneWorkingHolder() throws {
        let d = try Daemon(sqlite: true)
        try d.start()
        for i in 0..<40 { #expect(try d.coffer(["secret", "put", "race/\(i)"], stdin: Array("v\(i)".utf8)).status == 0) }
        var r = try d.coffer(["operator", "rotate", "--wait"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try sqlite(d.dbPath, "SELECT count(*) FROM keyring WHERE sealed IS NULL;") != "0", "the old data key was erased")
        // the rotation made the key file a holder: the offline key-file change is refused
        // with a pointer to the online one, which works with the old data key erased
        d.stop()
        let newKey = d.dir + "/keys/after-rotation.key"
        r = try run(Bins.cofferd, ["rekey", "--config", d.configPath, "--new-key-file", newKey])
        #expect(r.status != 0 && r.stderr.contains("coffer operator rekey"), "\(r.stderr)")
        try d.start()
        r = try d.coffer(["operator", "rekey", "--to", "keyfile", "--key-file", newKey, "--current-key-file", d.keyPath])
        #expect(r.status == 0, "\(r.stderr)")
        d.stop()
        let config = try String(contentsOfFile: d.configPath, encoding: .utf8).replacingOccurrences(of: d.keyPath, with: newKey)
        try config.write(toFile: d.configPath, atomically: true, encoding: .utf8)
        try d.start()
        #expect(try d.coffer(["secret", "get", "race/7"]).out == "v7")
        var keyFile = newKey
        let socket = d.socket
        for round in 0..<3 {
            let results = Mutex<[String: RunResult]>([:])
            let group = DispatchGroup()
            for (name, args, input) in [("rotate", ["operator", "rotate"], nil as String?),
                                        ("rekey", ["operator", "rekey", "--to", "passphrase", "--kdf", "interactive", "--passphrase-stdin",
                                                   "--current-key-file", keyFile], Self.passphrase + "\n")] {
                group.enter()
                Thread {
                    let res = try? run(Bins.coffer, ["--socket", socket] + args, stdin: input.map { Array($0.utf8) })
                    results.withLock { $0[name] = res }
                    group.leave()
                }.start()
            }
            group.wait()
            for (name, res) in results.withLock({ $0 }) {
                #expect(res.status == 0 || res.stderr.contains("meanwhile") || res.stderr.contains("already running"),
                        "round \(round), \(name): \(res.stderr)")
            }
            #expect(waitUntil(60) { Self.rotation(d) == nil }, "the rotation finishes")
            // seal; the holder the status names opens it, the other does not
            #expect(try d.coffer(["operator", "seal"]).status == 0)
            usleep(300_000)
            let mode = json(try d.curl("GET", "/v1/sys/status").1)["unseal"] as? String
            if mode == "passphrase" {
                #expect(try d.coffer(["operator", "unseal", "--key-file", keyFile]).status != 0)
                let u = try d.coffer(["operator", "unseal", "--passphrase-stdin"], stdin: Array((Self.passphrase + "\n").utf8))
                #expect(u.status == 0, "\(u.stderr)")
                // back to a key file for the next round; the daemon is pointed at it
                let next = newKey + ".\(round)"
                let back = try d.coffer(["operator", "rekey", "--to", "keyfile", "--key-file", next, "--passphrase-stdin"],
                                        stdin: Array((Self.passphrase + "\n").utf8))
                #expect(back.status == 0, "\(back.stderr)")
                d.stop()
                let c = try String(contentsOfFile: d.configPath, encoding: .utf8).replacingOccurrences(of: keyFile, with: next)
                try c.write(toFile: d.configPath, atomically: true, encoding: .utf8)
                keyFile = next
                try d.start()
            } else {
                #expect(mode == "keyfile", "\(mode ?? "nil")")
                let u = try d.coffer(["operator", "unseal", "--key-file", keyFile])
                #expect(u.status == 0, "\(u.stderr)")
            }
            for i in [0, 13, 39] { #expect(try d.coffer(["secret", "get", "race/\(i)"]).out == "v\(i)", "round \(round)") }
        }
        #expect(try d.coffer(["operator", "check"]).status == 0)
        #expect(try d.coffer(["audit", "verify"]).status == 0)
    }

    /// Seeds `n` secrets over the socket with `threads` writers.
    static func seed(_ d: Daemon, count n: Int, threads: Int = 16) {
        let socket = d.socket
        let next = Synchronization.Atomic<Int>(0)
        let group = DispatchGroup()
        for _ in 0..<threads {
            group.enter()
            Thread {
                let http = UnixHTTPClient(socketPath: socket)
                while true {
                    let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
                    if i >= n { break }
                    _ = try? http.request("PUT", "/v1/secrets/data/rot/\(i)", body: Array(#"{"value":"value-\#(i)"}"#.utf8))
                }
                group.leave()
            }.start()
        }
        group.wait()
    }

    static func rotation(_ d: Daemon) -> [String: Any]? {
        guard let (code, body) = try? d.curl("GET", "/v1/sys/status"), code == 200 else { return nil }
        return json(body)["rotation"] as? [String: Any]
    }

    @Test func rotationUnderReadLoadThenUnderAKillStorm() throws {
        let n = Int(ProcessInfo.processInfo.environment["COFFER_ROTATION_SECRETS"] ?? "") ?? 100_000
        // durability "normal" while seeding is fast; the rotation itself does not depend on it
        let d = try Daemon(config: "[storage]\ndurability = \"normal\"\n")
        try d.start()
        let t0 = Date()
        Self.seed(d, count: n)
        let status = try d.curl("GET", "/v1/sys/status")
        let seeded = json(status.1)["secrets"] as? Int
        #expect(seeded == n, "seeded \(seeded ?? -1) of \(n): \(status)")
        print("seeded \(n) secrets in \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
        guard seeded == n else { return }
        // 1. under a 32-connection read load: zero errors
        let stop = StopFlag()
        let errors = Synchronization.Atomic<Int>(0), reads = Synchronization.Atomic<Int>(0)
        let socket = d.socket
        let readers = DispatchGroup()
        for t in 0..<32 {
            readers.enter()
            Thread {
                let http = UnixHTTPClient(socketPath: socket)
                var i = t * 7919
                while !stop.isSet {
                    i = (i &+ 104_729) % n
                    let r = try? http.request("GET", "/v1/secrets/data/rot/\(i)")
                    if r?.status != 200 || !(r.map { String(decoding: $0.body, as: UTF8.self).contains("\"value-\(i)\"") } ?? false) {
                        errors.wrappingAdd(1, ordering: .relaxed)
                    }
                    reads.wrappingAdd(1, ordering: .relaxed)
                }
                readers.leave()
            }.start()
        }
        usleep(300_000)
        let rot = try d.coffer(["operator", "rotate", "--format", "json"])
        #expect(rot.status == 0, "\(rot.stderr)")
        let started = Date()
        while Self.rotation(d) != nil, Date().timeIntervalSince(started) < 600 { usleep(100_000) }
        let seconds = Date().timeIntervalSince(started)
        usleep(300_000)
        stop.set()
        readers.wait()
        #expect(Self.rotation(d) == nil, "the rotation finished")
        #expect(errors.load(ordering: .relaxed) == 0, "\(errors.load(ordering: .relaxed)) failed reads of \(reads.load(ordering: .relaxed))")
        print("rotation of \(n) versions under 32 readers: \(String(format: "%.1f", seconds)) s, \(reads.load(ordering: .relaxed)) reads, \(errors.load(ordering: .relaxed)) errors")
        // 2. kill -9, twenty times, during the next rotation
        #expect(try d.coffer(["operator", "rotate"]).status == 0)
        var kills = 0
        while kills < 20 {
            usleep(UInt32.random(in: 50_000...250_000))
            guard Self.rotation(d) != nil else { break }
            d.kill9()
            kills += 1
            try d.start()
        }
        print("killed \(kills) times during the second rotation")
        #expect(kills >= 5, "the kills landed during the rotation")
        let again = Date()
        while Self.rotation(d) != nil, Date().timeIntervalSince(again) < 600 { usleep(100_000) }
        #expect(Self.rotation(d) == nil)
        // every secret reads its own value; one data key is left, the others erased
        let bad = Synchronization.Atomic<Int>(0)
        let checkers = DispatchGroup()
        for t in 0..<8 {
            checkers.enter()
            Thread {
                let http = UnixHTTPClient(socketPath: socket)
                for i in stride(from: t, to: n, by: 8) {
                    let r = try? http.request("GET", "/v1/secrets/data/rot/\(i)")
                    if r?.status != 200 || !(r.map { String(decoding: $0.body, as: UTF8.self).contains("\"value-\(i)\"") } ?? false) { bad.wrappingAdd(1, ordering: .relaxed) }
                }
                checkers.leave()
            }.start()
        }
        checkers.wait()
        #expect(bad.load(ordering: .relaxed) == 0)
        let keys = try d.coffer(["keys", "list"]).out.split(separator: "\n").filter { $0.contains(" data ") }
        #expect(keys.filter { $0.contains("active") }.count == 1 && keys.filter { $0.contains("retired") }.count == keys.count - 1, "\(keys)")
        #expect(try d.coffer(["operator", "check"]).status == 0)
        #expect(try d.coffer(["audit", "verify"]).status == 0)
    }
}
