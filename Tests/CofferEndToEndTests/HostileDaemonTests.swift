import Foundation
import Testing

/// The CLI against a broken or hostile "cofferd" (Fixtures/fake-cofferd.py): it fails
/// with `coffer: error:` and a non-zero exit, never turns a missing value into an
/// empty file, never prints the peer's control characters, never buffers without bound.
@Suite(.serialized) struct HostileDaemonTests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/fake-cofferd.py").path

    func fake(_ mode: String, _ body: (String) throws -> Void) throws {
        var template = Array("/tmp/cfk.XXXXXX".utf8CString)
        let dir = String(cString: mkdtemp(&template)!)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/s.sock"
        let server = try RegistryAuthTests.Background("/usr/bin/python3", [Self.script, socket, mode])
        for _ in 0..<100 where !FileManager.default.fileExists(atPath: socket) { usleep(20_000) }
        try body(socket)
        _ = server
    }

    @Test func aMissingValueIsAnErrorNotAnEmptyFile() throws {
        for mode in ["no-secrets", "other-path"] {
            try fake(mode) { socket in
                var template = Array("/tmp/cfk-dir.XXXXXX".utf8CString)
                let dir = String(cString: mkdtemp(&template)!)
                defer { try? FileManager.default.removeItem(atPath: dir) }
                let mark = dir + "-ran"
                let r = try run(Bins.coffer, ["run", "--socket", socket, "--dir", dir, "--secret", "ci/app/db", "--", "/bin/sh", "-c", "touch \(mark)"])
                #expect(r.status == 1 && r.stderr.contains("cofferd sent no value for ci/app/db"), "\(mode): \(r.status) \(r.stderr)")
                #expect(!FileManager.default.fileExists(atPath: mark))
            }
        }
    }

    @Test func badFramingIsRefused() throws {
        for mode in ["two-lengths", "length-and-chunked"] {
            try fake(mode) { socket in
                let r = try run(Bins.coffer, ["secret", "get", "--socket", socket, "ci/app/db"])
                #expect(r.status == 1 && r.stderr.contains("malformed response from cofferd") && r.stdout.isEmpty, "\(mode): \(r.stderr)")
            }
        }
        try fake("json-as-raw") { socket in
            let r = try run(Bins.coffer, ["secret", "get", "--socket", socket, "ci/app/db", "--version", "2"])
            #expect(r.status == 1 && r.stdout.isEmpty && r.stderr.contains("cannot read"), "\(r.stderr)")
        }
        try fake("huge") { socket in
            let r = try run(Bins.coffer, ["secret", "get", "--socket", socket, "ci/app/db"])
            #expect(r.status == 1 && r.stderr.contains("larger than") && r.stdout.isEmpty, "\(r.stderr)")
        }
    }

    @Test func thePeersTextIsPrintedWithoutControlCharacters() throws {
        try fake("escape") { socket in
            let r = try run(Bins.coffer, ["secret", "get", "--socket", socket, "ci/app/db"])
            #expect(r.status == 5)
            #expect(r.stderr == "coffer: error: nope?[31mRED?fake: line\ncoffer: hint: x?\n", "\(r.stderr)")
        }
    }
}
