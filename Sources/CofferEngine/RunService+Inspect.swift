import CCofferLinux
public import CofferCore
import Foundation
import Glibc

/// `coffer inject list`: every live injection with what the kernel says of its tmpfs,
/// read from the holder's own mount namespace (never the runner's claims), and a
/// verdict: "secure" when it is a tmpfs Coffer made, never swapped, read-only,
/// nosuid/nodev/noexec, and every file 0400; "weak" with the reasons otherwise.
extension RunService {
    public struct Inspection: Sendable {
        public struct File: Sendable {
            public var name: String
            public var mode: UInt32
            public var uid: UInt32
            public var gid: UInt32
            public var size: Int
        }
        public var run: Run
        public var versions: [String: Int]
        public var target: String?
        public var fsType: String?
        public var source: String?
        public var mountOptions: [String] = []
        public var superOptions: [String] = []
        public var files: [File] = []
        public var verdict = "weak"
        public var reasons: [String] = []
    }

    static func validTarget(_ t: String) -> Bool {
        let parts = t.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        return t.hasPrefix("/") && t.utf8.count < 1024 && !parts.isEmpty
            && parts.allSatisfy { !$0.isEmpty && $0 != "." && $0 != ".." && $0.utf8.allSatisfy(SecretPath.isAllowed) }
    }

    public func injections(_ p: Principal, all: Bool) async -> [Inspection] {
        let runs = live.withLock { runs in
            // copies of the pidfds, taken under the lock (a run may end meanwhile)
            runs.values.filter { all || $0.run.uid == p.uid }.map { ($0.run, $0.written, fcntl($0.pidfd, F_DUPFD_CLOEXEC, 0)) }
        }
        defer { for (_, _, fd) in runs where fd >= 0 { close(fd) } }
        var out: [Inspection] = []
        for (run, written, pidfd) in runs.sorted(by: { $0.0.startedAt < $1.0.startedAt }) {
            // (off the shared pool: entering the holder's namespaces can be held up by it)
            var x = await OffPool.run({ self.inspect(run, written, pidfd: pidfd) })
            if x == nil {
                x = Inspection(run: run, versions: written, target: run.mountPath ?? run.target)
                x?.reasons = ["its holder could not be examined in time"]
            }
            out.append(x!)
        }
        return out
    }

    func inspect(_ run: Run, _ written: [String: Int], pidfd: Int32) -> Inspection {
        var out = Inspection(run: run, versions: written, target: run.mountPath ?? run.target)
        guard let target = out.target else {
            out.reasons = ["the runner did not say where its tmpfs is (an older coffer): nothing could be checked"]
            return out
        }
        let holder: Int32
        do { holder = try rotationHolder(run) } catch {
            out.reasons = ["no process holds the run's mount namespace any more"]
            return out
        }
        var buf = [CChar](repeating: 0, count: 1 << 16)
        let rc = coffer_inspect_mount(pidfd, holder, target, run.label?.hasPrefix("container:") == true ? 0 : 1, &buf, UInt(buf.count))
        guard rc == 0 else {
            out.reasons = ["no mount at \(target) as the holder sees it (\(String(cString: strerror(errno))))"]
            return out
        }
        let text = buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        for line in text.split(separator: "\n") {
            if line.hasPrefix("M "), let sep = line.range(of: " - ") {
                let left = line[line.index(line.startIndex, offsetBy: 2)..<sep.lowerBound].split(separator: " ")
                let right = line[sep.upperBound...].split(separator: " ")
                if left.count >= 6 { out.mountOptions = left[5].split(separator: ",").map(String.init) }
                if right.count >= 3 {
                    out.fsType = String(right[0])
                    out.source = String(right[1])
                    out.superOptions = right[2].split(separator: ",").map(String.init)
                }
            } else if line.hasPrefix("F ") {
                let f = line.dropFirst(2).split(separator: " ", maxSplits: 4)
                guard f.count == 5, let mode = UInt32(f[0], radix: 8), let uid = UInt32(f[1]), let gid = UInt32(f[2]), let size = Int(f[3]) else { continue }
                out.files.append(.init(name: String(f[4]), mode: mode, uid: uid, gid: gid, size: size))
            }
        }
        var why: [String] = []
        if out.fsType != "tmpfs" { why.append("not a tmpfs (\(out.fsType ?? "unknown"))") }
        if out.source != "coffer-run" { why.append("not a tmpfs Coffer made (source \(out.source ?? "unknown"))") }
        if !out.superOptions.contains("noswap") { why.append("may be swapped out (no noswap)") }
        if !out.mountOptions.contains("ro") {
            why.append(run.mount == .daemon ? "writable by its owner (cofferd's tmpfs for a user: the runner writes its files there)" : "writable (not read-only)")
        }
        for o in ["nosuid", "nodev", "noexec"] where !out.mountOptions.contains(o) { why.append("mounted without \(o)") }
        for f in out.files.sorted(by: { $0.name < $1.name }) {
            if f.mode & 0o170000 != 0o100000 {
                why.append("\(f.name) is not a regular file")
            } else if f.mode & 0o7777 != 0o400 {
                why.append("\(f.name) is \(String(f.mode & 0o7777, radix: 8)) (not 0400)")
            }
        }
        out.reasons = why
        out.verdict = why.isEmpty ? "secure" : "weak"
        return out
    }
}
