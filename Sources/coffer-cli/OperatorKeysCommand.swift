import ArgumentParser
import CofferAPI
import CofferClient
import CofferCore
import Foundation
import Glibc

/// Reads what the root key's holder needs: a line from stdin (`--*-stdin`), or a
/// prompt on the terminal without echo. Never from a command line (argv is public).
enum HolderInput {
    static func line(_ prompt: String, fromStdin: Bool) throws -> String {
        if fromStdin {
            guard let l = readLine(strippingNewline: true), !l.isEmpty else {
                throw CofferError(.invalidParameter, "expected a line on standard input", hint: prompt.trimmingCharacters(in: .whitespaces))
            }
            return l
        }
        guard let l = Terminal.ask(prompt, echo: false), !l.isEmpty else {
            throw CofferError(.invalidParameter, "no terminal to ask on", hint: "use --passphrase-stdin / --share-stdin, or a --share-file")
        }
        return l
    }

    static func file(_ path: String) throws -> String {
        guard let fh = FileHandle(forReadingAtPath: path) else {
            throw CofferError(.invalidParameter, "cannot read \(path)", hint: "share and key files are mode 0400: run as their owner")
        }
        defer { try? fh.close() }
        let data = (try? fh.read(upToCount: 4096)) ?? Data()
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A share directory must exist and be writable before anything changes.
    static func checkShareDir(_ dir: String) throws {
        var st = stat()
        guard stat(dir, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, access(dir, W_OK) == 0 else {
            throw CofferError(.invalidParameter, "--share-dir \(dir) is not a writable directory", hint: "nothing was changed; create it first")
        }
    }

    /// Shares go to their own 0400 files in `dir`, or to stdout once. A share that
    /// cannot be written is printed instead: the new holder is already in place, and a
    /// lost share is a lost database.
    static func emitShares(_ shares: [String], threshold: Int, dir: String?) throws {
        if let dir {
            for s in shares {
                let parts = s.split(separator: ":")
                let name = "\(dir)/coffer-share-\(parts.count > 2 ? parts[1] : "x")-\(parts.count > 2 ? parts[2] : "x").txt"
                do {
                    try writeNewFile(name, s + "\n", mode: 0o400)
                    try printLine("wrote \(name)")
                } catch {
                    try printLine("cannot write \(name); the share is here instead (shown once):\n\(s)")
                }
            }
        } else {
            try printLine("Shares (shown once; any \(threshold) of \(shares.count) unseal — give one to each holder):")
            for s in shares { try printLine(s) }
        }
    }
}

extension OperatorCommand {
    struct Unseal: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "unseal",
            abstract: "Unseal a sealed daemon with its key file, its passphrase, or one Shamir share per call (admin, by your uid).",
            discussion: """
                It asks the daemon how its root key is held. Key file: the configured one, or --key-file. Passphrase: prompted \
                without echo (or one line of stdin with --passphrase-stdin). Shares: one per call from any admin (--share-file, \
                --share-stdin or a prompt); it shows the round's progress; --reset discards a partial round. Failed attempts are \
                rate limited and audited.
                """)
        @OptionGroup var global: GlobalOptions
        @Option(help: "A key file to send.") var keyFile: String?
        @Option(help: "A file holding one share.") var shareFile: String?
        @Flag(help: "Read the passphrase from one line of standard input.") var passphraseStdin = false
        @Flag(help: "Read a share from one line of standard input.") var shareStdin = false
        @Flag(help: "Discard the shares given so far in this round.") var reset = false

        func run() throws {
            try runReporting {
                let client = try global.client()
                let r: UnsealResponse
                if reset {
                    r = try client.unseal(UnsealRequest(reset: true))
                } else if let keyFile {
                    r = try client.unseal(keyText: Array(try HolderInput.file(keyFile).utf8))
                } else {
                    let status = try client.status()
                    switch status.unseal ?? "keyfile" {
                    case "passphrase":
                        r = try client.unseal(UnsealRequest(passphrase: try HolderInput.line("Passphrase: ", fromStdin: passphraseStdin)))
                    case "shares":
                        let share = try shareFile.map(HolderInput.file) ?? HolderInput.line("Share: ", fromStdin: shareStdin)
                        r = try client.unseal(UnsealRequest(share: share))
                    default:
                        r = try client.unseal(keyText: nil)
                    }
                }
                if global.format == .json { return try printJSON(r) }
                if r.sealed {
                    try printLine(r.threshold.map { "sealed: \(r.sharesGiven ?? 0) of \($0) shares given" } ?? "sealed")
                } else {
                    try printLine(r.unsealedNow ? "unsealed (root key \(r.keyID ?? "?"))" : "already unsealed (root key \(r.keyID ?? "?"))")
                }
            }
        }
    }

    struct Seal: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "seal",
            abstract: "Seal the daemon now: it drops every key from memory (zeroed) and refuses everything until an unseal (admin).")
        @OptionGroup var global: GlobalOptions
        func run() throws {
            try runReporting {
                let r = try global.client().seal()
                if global.format == .json { return try printJSON(r) }
                try printLine("sealed: every key was dropped; unseal with coffer operator unseal")
            }
        }
    }

    struct Rekey: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rekey",
            abstract: "Change how the root key is held (new passphrase, new shares or threshold, key file <-> shares), touching no data.",
            discussion: """
                Proves the current holder first: --current-key-file, --current-share-file (as many as the threshold), or the \
                current passphrase (prompted, or the first line of stdin with --passphrase-stdin; the new one is the next line). \
                Admin by peer credentials (not a token). New shares are shown once or written to --share-dir; a new key file \
                is written to --key-file (0400; point keys.key_file at it).
                """)
        @OptionGroup var global: GlobalOptions
        @Option(help: "How to hold the root key from now on: keyfile, passphrase or shares.") var to: String
        @Option(help: "Shares to make.") var shares: Int?
        @Option(help: "Shares needed to unseal.") var threshold: Int?
        @Option(help: "Argon2id limits for a new passphrase: interactive, moderate (default) or sensitive.") var kdf: String?
        @Option(help: "Write each new share to its own 0400 file in this directory.") var shareDir: String?
        @Option(help: "Where to write the new key file (mode keyfile; it must not exist).") var keyFile: String?
        @Option(help: "The current key file.") var currentKeyFile: String?
        @Option(help: "A current share file (repeat up to the threshold).") var currentShareFile: [String] = []
        @Flag(help: "Read passphrases from standard input (current first, then new).") var passphraseStdin = false

        func run() throws {
            try runReporting {
                let client = try global.client()
                var current = RekeyRequest.Current()
                if let currentKeyFile {
                    current.key = try HolderInput.file(currentKeyFile)
                } else if !currentShareFile.isEmpty {
                    current.shares = try currentShareFile.map(HolderInput.file)
                } else {
                    let held = try client.status().unseal ?? "keyfile"
                    guard held == "passphrase" else {
                        throw CofferError(.invalidParameter, "prove the current holder (\(held))",
                                          hint: held == "shares" ? "--current-share-file F (as many as the threshold)" : "--current-key-file F")
                    }
                    current.passphrase = try HolderInput.line("Current passphrase: ", fromStdin: passphraseStdin)
                }
                if to == "shares", let shareDir { try HolderInput.checkShareDir(shareDir) }
                var request = RekeyRequest(mode: to, current: current, kdf: kdf, shares: shares, threshold: threshold)
                var keyFD: Int32 = -1
                switch to {
                case "passphrase":
                    let p = try HolderInput.line("New passphrase: ", fromStdin: passphraseStdin)
                    if !passphraseStdin {
                        guard try HolderInput.line("Repeat it: ", fromStdin: false) == p else {
                            throw CofferError(.invalidParameter, "the two passphrases differ", hint: "nothing was changed; try again")
                        }
                    }
                    request.passphrase = p
                case "keyfile":
                    guard let keyFile else { throw CofferError(.invalidParameter, "mode keyfile writes a new key file", hint: "--key-file NEW") }
                    keyFD = try createNewFile(keyFile, mode: 0o400)  // claimed before the daemon changes anything
                default: break
                }
                let r: RekeyResponse
                do { r = try client.rekey(request) } catch {
                    if keyFD >= 0, let keyFile { close(keyFD); unlink(keyFile) }
                    throw error
                }
                if keyFD >= 0, let keyFile, let text = r.key {
                    try writeAndClose(keyFD, Array(text.utf8), path: keyFile)
                    try printLine("the root key is now held by \(keyFile) (unseal key \(r.unsealKeyID)); point keys.key_file at it")
                } else if let shares = r.shares, let t = r.threshold {
                    try HolderInput.emitShares(shares, threshold: t, dir: shareDir)
                    try printLine("the root key is now held by \(t) of \(shares.count) shares (unseal key \(r.unsealKeyID))")
                } else {
                    try printLine("the root key is now held by \(r.mode) (unseal key \(r.unsealKeyID))")
                }
            }
        }
    }

    struct Rotate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate",
            abstract: "Make a new root key version and data key now; every version is re-wrapped under it in the background (admin).",
            discussion: "Reads and writes go on meanwhile; the progress is in `coffer status`. --wait follows it to the end.")
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Wait until every version is re-wrapped.") var wait = false
        func run() throws {
            try runReporting {
                let client = try global.client()
                let r = try client.rotate()
                if global.format == .json && !wait { return try printJSON(r) }
                try printLine("new root key \(r.rootKeyID), data key \(r.targetKeyID): \(r.total) versions to re-wrap")
                guard wait else { return }
                while let rot = try client.status().rotation {
                    try printLine("  \(rot.done) of \(rot.total)")
                    usleep(500_000)
                }
                try printLine("rotation finished: the old data keys are erased")
            }
        }
    }
}
