import ArgumentParser
import CofferAPI
import CofferClient
import CofferCore
import Foundation

/// podman's `shell` secret driver (podman ≥ 4.1): podman runs each configured command
/// with `/bin/sh -c`, no arguments, `SECRET_ID` (podman's own 25-hex id, not the
/// secret's name) in the environment; `store` gets the value on stdin, `lookup` prints it.
/// The values live in Coffer under `PREFIX/SECRET_ID`, audited like every other access.
///
/// What this does not change: podman copies a looked-up value into the container's
/// userdata directory (on disk) and bind-mounts it. For tmpfs-only injection use the OCI
/// hook (`io.coffer.secrets`); the driver is for podman compatibility.
struct PodmanDriverCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "podman-driver",
        abstract: "podman's shell secret driver: store, lookup, delete and list podman secrets in Coffer.",
        discussion: """
            containers.conf (contrib/podman/containers.conf.d/coffer.conf):
              [secrets]
              driver = "shell"
              [secrets.opts]
              store = "/usr/local/bin/coffer podman-driver store"
              lookup = "/usr/local/bin/coffer podman-driver lookup"
              delete = "/usr/local/bin/coffer podman-driver delete"
              list = "/usr/local/bin/coffer podman-driver list"
            podman passes the secret's id in SECRET_ID; values are kept at PREFIX/ID
            (default prefix: podman). podman still copies a looked-up value to the
            container's userdata directory: for tmpfs-only secrets use the OCI hook.
            """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "store, lookup, delete or list (podman's shell-driver operations).") var operation: String
    @Option(help: "Where in Coffer podman's secrets live (a secret path prefix).") var prefix: String = "podman"

    static let operations = ["store", "lookup", "delete", "list"]

    /// podman's ids are 25 lower-case hex digits; accept only plain id characters.
    static func secretID(_ environment: [String: String]) throws -> String {
        guard let id = environment["SECRET_ID"], !id.isEmpty else {
            throw CofferError(.invalidParameter, "SECRET_ID is not set", hint: "podman sets it when it runs its shell secret driver")
        }
        guard id.utf8.count <= 64, id.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else {
            throw CofferError(.invalidParameter, "SECRET_ID must be podman's hexadecimal secret id (at most 64 digits)")
        }
        return id
    }

    func run() throws {
        try runReporting {
            guard Self.operations.contains(operation) else {
                throw CofferError(.invalidParameter, "unknown operation '\(operation)'", hint: "podman-driver takes one of: \(Self.operations.joined(separator: ", "))")
            }
            let prefix = try SecretPath(prefix).rawValue
            let client = try global.client()
            if operation == "list" {
                var after: String? = nil
                repeat {
                    let page = try client.list(prefix, after: after, limit: nil)
                    let ids = page.keys.filter { !$0.hasSuffix("/") }
                    if !ids.isEmpty { try printLine(ids.joined(separator: "\n")) }
                    after = page.nextAfter
                } while after != nil
                return
            }
            let path = prefix + "/" + (try Self.secretID(ProcessInfo.processInfo.environment))
            switch operation {
            case "store":
                var value = try readValue(file: "-", limit: CofferConfig.maxValueBytesCeiling)
                defer { Wipe.bytes(&value) }
                // podman's ids are new for each secret: never overwrite one that exists
                _ = try client.put(path, value: value, cas: 0)
            case "lookup":
                var r = try client.getRaw(path, version: nil)
                defer { Wipe.bytes(&r.value) }
                try writeStdout(r.value)
            default:  // delete: every version, irreversibly (podman forgets the secret too)
                _ = try client.change(.destroy, path, versions: nil)
            }
        }
    }
}
