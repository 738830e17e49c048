import ArgumentParser
import CofferAPI
import CofferClient
import CofferCore
import Foundation
import Glibc

/// A new file for the CLI's outputs (never over an existing one, never through a
/// link), open for writing.
func createNewFile(_ path: String, mode: mode_t) throws -> Int32 {
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
    guard fd >= 0 else { throw CofferError(.invalidParameter, "cannot create \(path): \(String(cString: strerror(errno)))", hint: "the file must not exist yet") }
    return fd
}

/// Writes `text` to a new file.
func writeNewFile(_ path: String, _ text: String, mode: mode_t) throws {
    try writeAndClose(try createNewFile(path, mode: mode), Array(text.utf8), path: path)
}

/// Writes all of `bytes` to a file claimed earlier, then closes it.
func writeAndClose(_ fd: Int32, _ bytes: [UInt8], path: String) throws {
    let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    close(fd)
    guard n == bytes.count else { throw CofferError(.invalidParameter, "cannot write \(path)") }
}

struct SSHCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ssh",
        abstract: "OpenSSH certificates for an active elevation, from Coffer's user CA.",
        discussion: "See the README, \"SSH certificates and JWTs\", for sshd's configuration (TrustedUserCAKeys, RevokedKeys, the PAM line).",
        subcommands: [CA.self, Sign.self, PAMSession.self]
    )

    struct CA: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ca", abstract: "Print the CA's public key line, for sshd's TrustedUserCAKeys.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Write it to this new file instead.") var output: String?
        func run() throws {
            try runReporting {
                let r = try global.client().sshCA()
                if global.format == .json { return try printJSON(r) }
                if let output { return try writeNewFile(output, r.publicKey + "\n", mode: 0o644) }
                try printLine(r.publicKey)
            }
        }
    }

    struct Sign: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "sign", abstract: "Sign your public key for your active elevation: a certificate valid until the window ends.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The elevation request id (el_…).") var id: String
        @Option(help: "Your public key file, e.g. ~/.ssh/id_ed25519.pub (never the private key).") var pubkey: String
        @Option(help: "Write the certificate to this new file (e.g. ~/.ssh/id_ed25519-cert.pub) instead of stdout.") var output: String?
        func run() throws {
            try runReporting {
                let text = try readPublicKey(pubkey)
                let r = try global.sessionClient().sshSign(id, publicKey: text)
                if let output { try writeNewFile(output, r.certificate + "\n", mode: 0o644) }
                if global.format == .json { return try printJSON(r) }
                if let output {
                    return try printLine("serial \(r.serial), principals \(r.principals.joined(separator: ",")), valid until \(r.validBefore): \(output)")
                }
                try printLine(r.certificate)
            }
        }

        /// Reads at most 16 KiB; a private key is refused here, before anything is sent.
        func readPublicKey(_ path: String) throws -> String {
            guard let h = FileHandle(forReadingAtPath: path) else {
                throw CofferError(.invalidParameter, "cannot read \(path)", hint: "give your public key file, e.g. ~/.ssh/id_ed25519.pub")
            }
            defer { try? h.close() }
            let data = (try? h.read(upToCount: SSHPublicKey.maxLineBytes + 1)) ?? Data()
            guard data.count <= SSHPublicKey.maxLineBytes else { throw CofferError(.invalidParameter, "\(path) is larger than a public key") }
            let text = String(decoding: data, as: UTF8.self)
            if text.contains("PRIVATE KEY") {
                throw CofferError(.invalidParameter, "\(path) is a private key: it was not sent", hint: "give the .pub file next to it")
            }
            return text
        }
    }

    /// Run by pam_exec as root at each SSH login (`session required pam_exec.so quiet
    /// /usr/bin/coffer ssh pam-session --ca FILE`). A login without a certificate, or
    /// with one another CA signed, passes at once without contacting cofferd. A login
    /// with a Coffer certificate is registered (cofferd ends it when the window
    /// closes); if that fails — the elevation is over, cofferd is unreachable — the
    /// hook fails and, with `required`, so does the login (fail closed).
    struct PAMSession: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "pam-session", abstract: "PAM session hook for sshd (pam_exec): registers logins made with Coffer certificates.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "The CA public key file sshd trusts (TrustedUserCAKeys): certificates from other CAs are left alone without asking cofferd.")
        var ca: String?
        func run() throws {
            try runReporting {
                let env = ProcessInfo.processInfo.environment
                guard env["PAM_TYPE"] == "open_session" else { return }
                guard let info = env["SSH_AUTH_INFO_0"] else { return }
                // "publickey TYPE BASE64" lines; the certificate one, if any
                var cert: (type: String, b64: String, blob: [UInt8])?
                for line in info.split(separator: "\n") {
                    let f = line.split(separator: " ")
                    guard f.count >= 3, f[0] == "publickey", f[1].hasSuffix("-cert-v01@openssh.com"), let blob = Base64.decode(String(f[2])) else { continue }
                    cert = (String(f[1]), String(f[2]), blob)
                }
                guard let cert, let claimed = SSHCertificate.read(cert.blob) else { return }
                if let ca {
                    let trusted = try String(contentsOfFile: ca, encoding: .utf8).split(separator: "\n").compactMap { line -> [UInt8]? in
                        let f = line.split(separator: " ")
                        return f.count >= 2 ? Base64.decode(String(f[1])) : nil
                    }
                    guard trusted.contains(claimed.signatureKey) else { return }
                }
                let r = try global.client().sshSessionOpen(certificate: cert.b64, user: env["PAM_USER"])
                if r.tracked, global.format == .json { try printJSON(r) }
            }
        }
    }
}

struct JWKSCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "jwks", abstract: "The JWKS that verifies Coffer's JWTs (print or write it), and key rotation.",
        subcommands: [Show.self, Rotate.self], defaultSubcommand: Show.self)

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "Print the JWKS (--output FILE: write it atomically, for services that read a file).")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Write the JWKS to this file (replaced atomically).") var output: String?
        func run() throws {
            try runReporting {
                let raw = try global.client().jwksRaw()
                guard let output else { return try writeStdout(raw + [0x0A]) }
                let tmp = output + ".coffer-tmp-\(getpid())"
                unlink(tmp)
                try writeAndClose(try createNewFile(tmp, mode: 0o644), raw + [0x0A], path: tmp)
                guard rename(tmp, output) == 0 else {
                    unlink(tmp)
                    throw CofferError(.invalidParameter, "cannot write \(output): \(String(cString: strerror(errno)))")
                }
            }
        }
    }

    struct Rotate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate", abstract: "Make a new JWT signing key (admin); the old one stays in the JWKS until what it signed has expired.")
        @OptionGroup var global: GlobalOptions
        func run() throws {
            try runReporting {
                let r = try global.client().jwksRotate()
                if global.format == .json { return try printJSON(r) }
                try printLine("new JWT key \(r.kid)")
            }
        }
    }
}
