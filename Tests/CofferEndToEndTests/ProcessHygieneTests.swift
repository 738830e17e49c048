import Foundation
import Testing

/// Memory and process hygiene (the keys issue, point 5), read from the kernel's own
/// view of the running daemon: not dumpable, no core file even when cores are on,
/// key material and values in locked pages that a dump leaves out.
@Suite(.serialized) struct ProcessHygieneTests {
    /// cofferd run by an ordinary user: a non-dumpable process's /proc entries belong
    /// to root, so even its own user cannot read its memory or environment.
    @Test func theDaemonIsNotDumpableEvenToItsOwnUser() throws {
        var template = Array("/tmp/cfhyg.XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestError.failed("mkdtemp") }
        let dir = String(cString: p)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let user = TestUser.nonAdmin
        chown(dir, user.uid, user.gid)
        let (exe, args) = user.wrap("/bin/sh", ["-c", "cd \(dir) && exec env COFFER_HYGIENE_CANARY=env-canary \(Bins.cofferd) dev --dir \(dir) >\(dir)/log 2>&1"])
        let daemon = try Spawned(exe, args)
        defer { daemon.stop() }
        let pid = try waitForDaemon(dir: dir, pid: daemon.pid)
        var st = stat()
        #expect(stat("/proc/\(pid)/environ", &st) == 0 && st.st_uid == 0, "environ owned by uid \(st.st_uid), not root: the process is dumpable")
        for file in ["environ", "mem"] {
            let (e, a) = user.wrap("/bin/cat", ["/proc/\(pid)/\(file)"])
            let r = try run(e, a)
            #expect(r.status != 0 && !r.out.contains("env-canary"), "\(file) readable by the daemon's own user")
        }
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        #expect(status.contains("\nUid:\t\(user.uid)"), "the daemon runs as the test user")
        let limits = try String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8)
        #expect(limits.split(separator: "\n").contains { $0.hasPrefix("Max core file size") && $0.contains(" 0 ") }, "\(limits)")
    }

    /// With `ulimit -c unlimited` and a core pattern that writes files, SIGABRT gives a
    /// core of an ordinary process and none of cofferd, nor the Swift runtime's crash
    /// report (registers and the memory they point at); key pages are locked (VmLck)
    /// and marked dontdump ("dd") once a value was read.
    @Test func noCoreFileAndLockedDontdumpPages() throws {
        var template = Array("/tmp/cfcore.XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestError.failed("mkdtemp") }
        let dir = String(cString: p)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let patternFile = "/proc/sys/kernel/core_pattern"
        // through the shell: /proc/sys takes one write(2) of the whole value
        let saved = try run("/bin/cat", [patternFile]).out.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try run("/bin/sh", ["-c", "echo '\(dir)/core.%e.%p' > \(patternFile)"]).status == 0)
        defer { _ = try? run("/bin/sh", ["-c", "echo '\(saved)' > \(patternFile)"]) }
        // the control: an ordinary process does leave a core here (spawned with default
        // signal dispositions and an empty mask: the test runner's may block SIGABRT)
        let control = try Self.spawnClean("/bin/sh", ["-c", "ulimit -c unlimited; exec sleep 30"])
        usleep(300_000)
        kill(control, SIGABRT)
        var st: Int32 = 0
        waitpid(control, &st, 0)
        var cores = (try? FileManager.default.contentsOfDirectory(atPath: dir))?.filter { $0.hasPrefix("core.") } ?? []
        #expect(cores.contains { $0.hasPrefix("core.sleep") }, "no control core: the test cannot tell (\(cores), status \(st))")
        for c in cores { try? FileManager.default.removeItem(atPath: dir + "/" + c) }

        let pid = try waitForDaemon(dir: dir, pid: try Self.spawnClean("/bin/sh", ["-c", "ulimit -c unlimited; cd \(dir) && exec \(Bins.cofferd) dev --dir \(dir) >\(dir)/log 2>&1"]))
        defer { if kill(pid, 0) == 0 { kill(pid, SIGKILL) }; var s: Int32 = 0; waitpid(pid, &s, 0) }
        let socket = dir + "/.coffer/coffer.sock"
        #expect(try run(Bins.coffer, ["--socket", socket, "secret", "put", "h/k"], stdin: Array("core-canary".utf8)).status == 0)
        #expect(try run(Bins.coffer, ["--socket", socket, "secret", "get", "h/k"]).out == "core-canary")
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let locked = status.split(separator: "\n").first { $0.hasPrefix("VmLck:") }.flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") } ?? 0
        #expect(locked > 0, "no locked pages: \(status)")
        let smaps = try run("/bin/cat", ["/proc/\(pid)/smaps"]).out
        #expect(smaps.split(separator: "\n").contains { $0.hasPrefix("VmFlags:") && $0.contains(" lo") && $0.contains(" dd") },
                "no locked dontdump mapping")
        kill(pid, SIGABRT)
        var dead: Int32 = 0
        waitpid(pid, &dead, 0)
        #expect((dead & 0x7f) == SIGABRT, "cofferd died of signal \(dead & 0x7f)")
        usleep(300_000)
        cores = (try? FileManager.default.contentsOfDirectory(atPath: dir))?.filter { $0.hasPrefix("core") } ?? []
        #expect(cores.isEmpty, "cofferd left a core: \(cores)")
        // nor a backtrace: the Swift runtime's prints registers and the bytes they point at
        let log = (try? String(contentsOfFile: dir + "/log", encoding: .utf8)) ?? ""
        #expect(!log.contains("Registers:") && !log.contains("Backtracing") && !log.contains("core-canary"), "\(log)")
    }

    /// posix_spawn with every signal at its default and none blocked.
    static func spawnClean(_ exe: String, _ args: [String]) throws -> pid_t {
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t()
        sigemptyset(&none)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)
        let argv: [UnsafeMutablePointer<CChar>?] = ([exe] + args).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var pid: pid_t = 0
        guard posix_spawn(&pid, exe, &fa, &attr, argv, environ) == 0 else { throw TestError.failed("posix_spawn \(exe)") }
        return pid
    }

    /// Waits until the daemon (exec'd into `pid` by the shell) serves its socket.
    func waitForDaemon(dir: String, pid: Int32) throws -> Int32 {
        let socket = dir + "/.coffer/coffer.sock"
        for _ in 0..<300 {
            let comm = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) ?? ""
            if comm.hasPrefix("cofferd"), FileManager.default.fileExists(atPath: socket),
               try run(Bins.coffer, ["--socket", socket, "status"]).status != 3 {
                return pid
            }
            usleep(50_000)
        }
        throw TestError.failed("cofferd did not start: \((try? String(contentsOfFile: dir + "/log", encoding: .utf8)) ?? "")")
    }
}
