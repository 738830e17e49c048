import ArgumentParser
import CofferAPI
import CofferClient
import CofferCore
import Foundation

struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "The keyring: list its keys, add a new active data key (needs admin).",
        discussion: "A root-key change is offline: `cofferd rekey --new-key-file FILE` with the daemon stopped.",
        subcommands: [List.self, Rotate.self]
    )

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "Every key with its purpose and state (never its material).")
        @OptionGroup var global: GlobalOptions
        func run() throws {
            try runReporting {
                let r = try global.client().keys()
                if global.format == .json { return try printJSON(r) }
                var lines = ["root key \(r.rootKeyID)"]
                for k in r.keys {
                    lines.append("\(k.id)  \(k.purpose)  \(k.state)  \(k.createdAt)" + (k.purpose == "data" ? "  \(k.versions) versions" : ""))
                }
                try printLine(lines.joined(separator: "\n"))
            }
        }
    }

    struct Rotate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate",
            abstract: "Add a new active data key; the current one turns decrypt-only (what it sealed still opens).")
        @OptionGroup var global: GlobalOptions
        func run() throws {
            try runReporting {
                let k = try global.client().rotateKey()
                if global.format == .json { return try printJSON(k) }
                try printLine("new active data key \(k.id)")
            }
        }
    }
}

struct UnsealCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unseal",
        abstract: "Unseal a daemon started sealed (needs admin, by your uid: tokens cannot be checked while sealed).",
        discussion: """
            With --key-file the key file's text is sent over the socket (so the key need not rest on the daemon's disk); \
            without it the daemon reads its configured key file (keys.key_file).
            """)
    @OptionGroup var global: GlobalOptions
    @Option(help: "A root key file to send (it is read here, never passed on a command line).") var keyFile: String?

    func run() throws {
        try runReporting {
            var text: [UInt8]?
            if let keyFile {
                guard let fh = FileHandle(forReadingAtPath: keyFile) else {
                    throw CofferError(.invalidParameter, "cannot read \(keyFile)", hint: "the key file is mode 0400: run as its owner")
                }
                defer { try? fh.close() }
                text = Array((try? fh.read(upToCount: 4096)) ?? Data())
            }
            let r = try global.client().unseal(keyText: text)
            if global.format == .json { return try printJSON(r) }
            try printLine(r.unsealedNow ? "unsealed (root key \(r.keyID ?? "?"))" : "already unsealed (root key \(r.keyID ?? "?"))")
        }
    }
}

struct OperatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "operator",
        abstract: "Operating the keys and the state: unseal, seal, rekey, rotate, backup, check (needs admin).",
        subcommands: [Unseal.self, Seal.self, Rekey.self, Rotate.self, Check.self, Backup.self]
    )

    struct Backup: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "backup",
            abstract: "Take a consistent online snapshot into a new file (0600): ciphertext, wrapped keys and the audit trail, with a manifest signed by the audit key.",
            discussion: "Restore it with `cofferd restore FILE --state NEWDIR` and the same key material.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "The new file to write (it must not exist).") var output: String
        func run() throws {
            try runReporting {
                let fd = try createNewFile(output, mode: 0o600)
                var done = false
                defer { close(fd); if !done { unlink(output) } }
                let bytes = try global.client().backup()
                let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                guard written == bytes.count, fsync(fd) == 0 else { throw CofferError(.invalidParameter, "cannot write \(output)") }
                done = true
                // the manifest is the second line (after the format line)
                let lines = bytes.prefix(1 << 16).split(separator: 0x0A, maxSplits: 2, omittingEmptySubsequences: false)
                let manifest = lines.count > 1 ? (try? JSONSerialization.jsonObject(with: Data(lines[1]))) as? [String: Any] : nil
                if global.format == .json { return try writeStdout(Array(lines.count > 1 ? lines[1] : []) + [0x0A]) }
                func n(_ k: String) -> String { (manifest?[k] as? NSNumber)?.stringValue ?? "?" }
                try printLine("backup written to \(output): \(n("secrets")) secrets, \(n("versions")) versions, \(n("tokens")) tokens, audit head seq \(n("audit_head_seq"))")
            }
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "check",
            abstract: "Scan the database: every secret head, version, token, elevation and SSH session against its MAC, and the records as a set against their digest (exit 9 when one fails).",
            discussion: """
                A record changed without the key (sqlite3 on the database) fails its MAC; each is named, never its value. \
                A record deleted or put back to an older state of itself fails the record digest, which cannot name it: \
                cofferd then refuses every record. Restore a backup; or, having reviewed the database, --accept takes \
                the records as they are now (an admin by peer credentials; refused while any record fails its own MAC; \
                a replayed record is accepted with the rest).
                """)
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Accept the records as they are now and make their digest anew (audited).") var accept = false
        func run() throws {
            try runReporting {
                if accept {
                    let a = try global.client().acceptRecords()
                    if global.format == .json { return try printJSON(a) }
                    return try printLine("accepted: \(a.accepted) records; the record digest was made anew")
                }
                let r = try global.client().integrityCheck()
                if global.format == .json { try printJSON(r) } else if r.ok {
                    try printLine("OK: \(r.checked) records, every MAC matches")
                } else {
                    try printLine((["BAD: \(r.bad.count) problem\(r.bad.count == 1 ? "" : "s") found in \(r.checked) records (changed without the key):"]
                                   + r.bad.map { "  " + $0 })
                        .joined(separator: "\n"))
                }
                if !r.ok { throw ExitCode(9) }
            }
        }
    }
}
