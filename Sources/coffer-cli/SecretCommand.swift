import ArgumentParser
import CofferAPI
import CofferClient
import CofferCore
import Foundation

struct SecretCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secret",
        abstract: "Store, read and manage versioned secrets.",
        subcommands: [Put.self, Get.self, List.self, Versions.self, Delete.self, Undelete.self, Destroy.self]
    )
}

/// "1,2,5" → [1, 2, 5]
struct VersionList: ExpressibleByArgument {
    var values: [Int]
    init?(argument: String) {
        var out: [Int] = []
        for part in argument.split(separator: ",", omittingEmptySubsequences: false) {
            guard let n = Int(part.trimmingCharacters(in: .whitespaces)), n >= 1 else { return nil }
            out.append(n)
        }
        guard !out.isEmpty else { return nil }
        values = out
    }
}

func readValue(file: String?, limit: Int) throws -> [UInt8] {
    let fd: Int32
    if let file, file != "-" {
        fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw CofferError(.invalidValue, "cannot open \(file): \(String(cString: strerror(errno)))")
        }
    } else {
        fd = STDIN_FILENO
        if isatty(fd) == 1 { writeStderr("coffer: reading the value from stdin; end with Ctrl-D\n") }
    }
    defer { if fd != STDIN_FILENO { close(fd) } }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    defer { Wipe.bytes(&buf) }
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            throw CofferError(.invalidValue, "cannot read the value: \(String(cString: strerror(errno)))")
        }
        if n == 0 { break }
        out += buf[0..<n]
        if out.count > limit {
            throw CofferError(.valueTooLarge, "the value is larger than \(limit) bytes", hint: "values are limited by cofferd's limits.max_value_bytes (at most 1 MiB)")
        }
    }
    return out
}

func versionsTable(_ m: SecretMetadataResponse) throws {
    var lines = ["\(m.path) (current version \(m.currentVersion), keeps \(m.maxVersions))",
                 "VERSION  STATE      SIZE  CREATED                   BY"]
    for v in m.versions {
        let by = v.createdBy.user.map { "\($0) (uid \(v.createdBy.uid))" } ?? "uid \(v.createdBy.uid)"
        lines.append(pad(String(v.version), 9) + pad(v.state, 11) + pad(String(v.size), 6) + pad(v.createdAt, 26) + by)
    }
    try printLine(lines.joined(separator: "\n"))
}

func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }

extension SecretCommand {
    struct Put: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "put",
            abstract: "Write a new version of a secret; the value comes from stdin or --file.",
            discussion: "Example: printf '%s' \"$DB_PASSWORD\" | coffer secret put ci/app/db-password")

        @OptionGroup var global: GlobalOptions
        @Argument(help: "Secret path, e.g. ci/app/db-password.") var path: String
        @Option(help: "Read the value from this file ('-' for stdin).") var file: String?
        @Option(help: "Check-and-set: write only if the current version is N (0: only if the secret does not exist).") var cas: Int?
        @Flag(help: "Store an empty value (otherwise empty input is refused: usually a forgotten pipe).") var allowEmpty = false

        func run() throws {
            try runReporting {
                _ = try SecretPath(path)
                var value = try readValue(file: file, limit: CofferConfig.maxValueBytesCeiling)
                defer { Wipe.bytes(&value) }
                if value.isEmpty && !allowEmpty {
                    throw CofferError(.invalidValue, "the value is empty: nothing came on stdin\(file.map { " or in \($0)" } ?? "")",
                                      hint: "pipe the value in (printf '%s' \"$VALUE\" | coffer secret put \(path)), or pass --allow-empty")
                }
                let r = try global.client().put(path, value: value, cas: cas)
                if global.format == .json { return try printJSON(r) }
                if let v = r.version, let m = r.metadata {
                    try printLine("\(r.path): version \(v) written (\(m.size) bytes)")
                } else {
                    try printLine("\(r.path): written")
                }
            }
        }
    }

    struct Get: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "get",
            abstract: "Print a secret's value (raw bytes) to stdout; --format json adds metadata.")

        @OptionGroup var global: GlobalOptions
        @Argument(help: "Secret path.") var path: String
        @Option(help: "A specific version (default: the latest).") var version: Int?

        func run() throws {
            try runReporting {
                _ = try SecretPath(path)
                if let version, version < 1 { throw CofferError(.invalidVersion, "--version must be 1 or more") }
                let client = try global.client()
                if global.format == .json { return try printJSON(client.get(path, version: version)) }
                var r = try client.getRaw(path, version: version)
                defer { Wipe.bytes(&r.value) }
                try writeStdout(r.value)
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List the keys under a prefix (folders end in '/').")

        @OptionGroup var global: GlobalOptions
        @Argument(help: "Prefix (default: the root).") var prefix: String = ""
        @Option(help: "Start after this key (paging).") var after: String?
        @Option(help: "At most this many keys (one page); default: all pages.") var limit: Int?

        func run() throws {
            try runReporting {
                _ = try SecretPrefix(prefix)
                let client = try global.client()
                var keys: [String] = []
                var cursor = after
                var next: String?
                repeat {
                    let page = try client.list(prefix, after: cursor, limit: limit)
                    keys += page.keys
                    next = page.nextAfter
                    cursor = next
                } while limit == nil && next != nil
                if global.format == .json {
                    try printJSON(ListResponse(prefix: prefix, keys: keys, nextAfter: limit == nil ? nil : next))
                } else if !keys.isEmpty {
                    try printLine(keys.joined(separator: "\n"))
                }
                // a folder with nothing in it does not exist (as `ls` says of a missing
                // directory); the root always does, even empty
                if keys.isEmpty && after == nil && !prefix.isEmpty && prefix != "/" {
                    throw CofferError(.notFound, "nothing under '\(prefix)'", hint: "coffer secret list shows the top level")
                }
            }
        }
    }

    struct Versions: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "versions", abstract: "Show a secret's versions and their metadata.")

        @OptionGroup var global: GlobalOptions
        @Argument(help: "Secret path.") var path: String

        func run() throws {
            try runReporting {
                _ = try SecretPath(path)
                let m = try global.client().metadata(path)
                if global.format == .json { return try printJSON(m) }
                try versionsTable(m)
            }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "delete", abstract: "Soft-delete versions (default: the latest); undelete restores them.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Secret path.") var path: String
        @Option(help: "Comma-separated version numbers.") var versions: VersionList?
        func run() throws { try changeVersions(.delete, global, path, versions) }
    }

    struct Undelete: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "undelete", abstract: "Restore soft-deleted versions (default: the latest).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Secret path.") var path: String
        @Option(help: "Comma-separated version numbers.") var versions: VersionList?
        func run() throws { try changeVersions(.undelete, global, path, versions) }
    }

    struct Destroy: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "destroy",
            abstract: "Irreversibly erase versions' data keys and ciphertext (default: every version).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Secret path.") var path: String
        @Option(help: "Comma-separated version numbers.") var versions: VersionList?
        func run() throws { try changeVersions(.destroy, global, path, versions) }
    }
}

func changeVersions(_ change: CofferClient.Change, _ global: GlobalOptions, _ path: String, _ versions: VersionList?) throws {
    try runReporting {
        _ = try SecretPath(path)
        let m = try global.client().change(change, path, versions: versions?.values)
        if global.format == .json { return try printJSON(m) }
        try versionsTable(m)
    }
}
