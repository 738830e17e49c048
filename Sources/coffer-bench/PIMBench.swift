import Foundation
import Glibc

/// The PIM figures: a PAM sign-in's wall time, and an elevation round trip (request
/// → two approvals → activate) by pre-signed-in users. Needs root (it creates test
/// users, a PAM service and runs the CLI as those users); skipped otherwise.
enum PIMBench {
    static let password = "bench-Pw-0123"
    static let service = "coffer-bench"

    static func user(_ name: String, group: String) throws -> (uid: UInt32, gid: UInt32) {
        if getgrnam(group) == nil { _ = try shell("/usr/sbin/groupadd", ["--system", group]) }
        if getpwnam(name) == nil {
            _ = try shell("/usr/sbin/useradd", ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", "--groups", group, name])
        }
        _ = try shell("/usr/sbin/chpasswd", [], stdin: "\(name):\(password)\n")
        guard let pw = getpwnam(name) else { throw BenchError("cannot create \(name)") }
        return (pw.pointee.pw_uid, pw.pointee.pw_gid)
    }

    @discardableResult
    static func shell(_ exe: String, _ args: [String], stdin: String? = nil) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        let err = Pipe()
        p.standardError = err
        if let stdin {
            let i = Pipe()
            p.standardInput = i
            try p.run()
            i.fileHandleForWriting.write(Data(stdin.utf8))
            try i.fileHandleForWriting.close()
        } else {
            p.standardInput = FileHandle.nullDevice
            try p.run()
        }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        let problem = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw BenchError("\(exe) \(args.prefix(8).joined(separator: " ")) failed (\(p.terminationStatus)): \(String(decoding: problem.prefix(400), as: UTF8.self))")
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// (sign-in ms, round trip ms), or nil when not root.
    static func run(bin: String, runs: Int) throws -> (Double, Double)? {
        guard geteuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") else { return nil }
        try "auth requisite pam_unix.so nodelay\naccount required pam_unix.so\n".write(toFile: "/etc/pam.d/\(service)", atomically: true, encoding: .utf8)
        let names = ["coffer-bench-req", "coffer-bench-a1", "coffer-bench-a2"]
        var ids: [String: (uid: UInt32, gid: UInt32)] = [:]
        ids[names[0]] = try user(names[0], group: "coffer-bench-oncall")
        for n in names.dropFirst() { ids[n] = try user(n, group: "coffer-bench-leads") }
        let d = try Daemon(bin: bin, name: "pim", extra: "[storage]\ndurability = \"full\"\n[auth]\npam_service = \"\(service)\"\n", policyExtra: """
            [role.prod]
            [[role.prod.rule]]
            path = "prod/**"
            capabilities = ["read"]
            [[elevation]]
            role = "prod"
            eligible = ["group:coffer-bench-oncall"]
            approvers = ["group:coffer-bench-leads"]
            approvals = 2
            max_duration = "1h"
            reason = "optional"
            fresh_login = "1h"
            """, shared: true)
        defer { d.stop() }
        let home = d.dir + "/homes"
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        func cli(_ name: String, _ args: [String], stdin: String? = nil) throws -> String {
            let u = ids[name]!
            return try shell("/usr/bin/setpriv", ["--reuid=\(u.uid)", "--regid=\(u.gid)", "--init-groups", "--", bin + "/coffer", "--socket", d.socket] + args, stdin: stdin)
        }
        for n in names {
            let dir = home + "/" + n
            try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            chown(dir, ids[n]!.uid, ids[n]!.gid)
        }
        // sign-in: whole `coffer login` process, PAM included
        var t0 = monotonicNanos()
        for i in 0..<runs {
            _ = try cli(names[0], ["login", "--password-stdin", "--output", home + "/\(names[0])/s\(i)"], stdin: password + "\n")
        }
        let signIn = Double(monotonicNanos() - t0) / Double(runs) / 1e6
        for n in names { _ = try cli(n, ["login", "--password-stdin", "--output", home + "/\(n)/session"], stdin: password + "\n") }
        func tok(_ n: String) -> [String] { ["--token-file", home + "/\(n)/session"] }
        // the round trip: four CLI processes, three users
        t0 = monotonicNanos()
        for _ in 0..<runs {
            let out = try cli(names[0], tok(names[0]) + ["--format", "json", "elevate", "request", "prod", "--for", "10m"])
            guard let o = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], let id = o["id"] as? String else {
                throw BenchError("no request id")
            }
            _ = try cli(names[1], tok(names[1]) + ["elevate", "approve", id])
            _ = try cli(names[2], tok(names[2]) + ["elevate", "approve", id])
            _ = try cli(names[0], tok(names[0]) + ["elevate", "activate", id])
        }
        let roundTrip = Double(monotonicNanos() - t0) / Double(runs) / 1e6
        return (signIn, roundTrip)
    }
}
