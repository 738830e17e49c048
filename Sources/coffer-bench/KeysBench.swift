import CofferAPI
import CofferClient
import Foundation
import Glibc

/// The keys figures: a rotation's re-wrap throughput with `secrets` versions while
/// 32 connections read, the read throughput before and during it (same daemon, same
/// run), and the wall time of a passphrase unseal (Argon2id at MODERATE).
enum KeysBench {
    struct Result {
        var secrets: Int
        var rewrapPerSecond: Double
        var before: LoadResult
        var during: LoadResult
        var unsealMs: Double
    }

    static func run(bin: String, secrets: Int, duration: Double) throws -> Result {
        let d = try Daemon(bin: bin, name: "rotation", extra: "[storage]\ndurability = \"full\"\n")
        defer { d.stop() }
        try d.seed(secrets)
        try d.put("bench/s64", String(repeating: "a", count: 64))
        let read64 = HTTPWorkload(make: { _ in ("GET", "/v1/secrets/data/bench/s64", nil) }, token: nil, expect: 200)
        let before = runLoad(read64, socket: d.socket, connections: 32, seconds: duration, serverPID: d.pid)
        let client = CofferClient(socketPath: d.socket)
        let started = Date()
        let rotation = try client.rotate()
        let during = runLoad(read64, socket: d.socket, connections: 32, seconds: duration, serverPID: d.pid)
        while try client.status().rotation != nil { usleep(20_000) }
        let seconds = Date().timeIntervalSince(started)
        // unseal: the same daemon's root key moved under a passphrase (MODERATE), sealed, unsealed
        let pass = "bench passphrase of several words"
        let rekey = Process()
        rekey.executableURL = URL(fileURLWithPath: bin + "/coffer")
        rekey.arguments = ["operator", "rekey", "--to", "passphrase", "--passphrase-stdin", "--current-key-file", d.dir + "/keys/root.key"]
        rekey.environment = ["COFFER_SOCKET": d.socket]
        let input = Pipe()
        rekey.standardInput = input
        rekey.standardOutput = FileHandle.nullDevice
        try rekey.run()
        input.fileHandleForWriting.write(Data((pass + "\n").utf8))
        try input.fileHandleForWriting.close()
        rekey.waitUntilExit()
        guard rekey.terminationStatus == 0 else { throw BenchError("rekey to a passphrase failed") }
        var total = 0.0
        let runs = 3
        for _ in 0..<runs {
            _ = try client.seal()
            while (try? client.status())?.sealed != true { usleep(10_000) }
            let t0 = Date()
            let r = try client.unseal(UnsealRequest(passphrase: pass))
            total += Date().timeIntervalSince(t0)
            guard !r.sealed else { throw BenchError("unseal failed") }
        }
        return Result(secrets: rotation.total, rewrapPerSecond: Double(rotation.total) / seconds, before: before, during: during,
                      unsealMs: total / Double(runs) * 1000)
    }
}
