public import CofferCore
import Foundation
public import Logging
import Synchronization

/// The live policy. A reload parses the whole file first and swaps the value in one
/// step, so a request sees either the old or the new policy, never a mix; an
/// invalid file is refused and the old policy stays.
public final class PolicyStore: Authorizer, Sendable {
    private let current: Mutex<Policy>
    /// The configured policy file (nil: none configured, the built-in policy from
    /// [access] stays). A configured file that does not exist yet leaves the built-in
    /// policy in force until a reload finds it.
    public let path: String?
    let logger: Logger

    public init(path: String?, fallback: Policy, logger: Logger) throws(CofferError) {
        self.path = path
        self.logger = logger
        if let path, FileManager.default.fileExists(atPath: path) {
            current = Mutex(try PolicyStore.load(path))
        } else {
            current = Mutex(fallback)
        }
    }

    public var policy: Policy { current.withLock { $0 } }

    public static func load(_ path: String) throws(CofferError) -> Policy {
        do { try FileTrust.check(path, "policy file") } catch {
            throw CofferError(.invalidPolicy, error.message, hint: error.hint)
        }
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw CofferError(.invalidPolicy, "cannot read the policy file \(path)")
        }
        return try Policy.parse(text, file: path)
    }

    /// Re-reads the policy file. Throws (and keeps the old policy) when it is invalid.
    @discardableResult
    public func reload() throws(CofferError) -> Policy {
        guard let path else {
            logger.error("policy reload refused: no policy file is configured")
            throw CofferError(.invalidPolicy, "no policy file is configured; the built-in policy cannot be reloaded",
                              hint: "set access.policy_file in the config")
        }
        guard FileManager.default.fileExists(atPath: path) else {
            logger.error("policy reload refused: the policy file does not exist; the built-in policy stays", metadata: ["policy.file": "\(path)"])
            throw CofferError(.invalidPolicy, "the policy file \(path) does not exist; the built-in policy stays",
                              hint: "create it (see contrib/policy.toml), then reload again")
        }
        do {
            let p = try PolicyStore.load(path)
            current.withLock { $0 = p }
            logger.notice("policy reloaded", metadata: ["policy.file": "\(path)", "policy.roles": "\(p.roles.count)", "policy.bindings": "\(p.bindings.count)"])
            return p
        } catch {
            logger.error("policy reload refused; the previous policy stays", metadata: ["error": "\(error.message)"])
            throw error
        }
    }

    public func authorize(_ principal: Principal, _ action: Action, _ path: SecretPath?) -> Decision {
        PolicyEvaluator.decide(policy, principal, action, path)
    }

    /// Writes the dev-mode policy (the given uid is admin) if the file does not exist.
    public static func writeDevPolicy(at path: String, uid: UInt32, user: String?) throws(CofferError) {
        guard !FileManager.default.fileExists(atPath: path) else { return }
        let subject = user.map { "user:\($0)" } ?? "uid:\(uid)"
        let text = """
            # Coffer policy (dev mode). Edit, then `coffer policy reload` (or SIGHUP).
            # Roles hold rules; [[bind]] gives roles to user:NAME, uid:N or group:NAME.
            # Capabilities: read, list, write, delete, destroy, admin, audit, inject.

            [role.admin]

            [[role.admin.rule]]
            path = "**"
            capabilities = ["read", "list", "write", "delete", "destroy", "admin", "audit", "inject", "metrics"]

            [[bind]]
            subjects = ["\(subject)", "uid:\(uid)"]
            roles = ["admin"]

            # A build job's role, for tokens: coffer token create --role ci-build --paths 'ci/app/**' ...
            [role.ci-build]

            [[role.ci-build.rule]]
            path = "ci/**"
            capabilities = ["read", "list", "inject"]

            """
        do { try text.write(toFile: path, atomically: true, encoding: .utf8) } catch {
            throw CofferError(.config, "cannot write \(path): \(error.localizedDescription)")
        }
    }
}
