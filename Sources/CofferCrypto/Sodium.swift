internal import CSodium

/// libsodium initialisation, once per process. Every public entry point of this
/// module calls `Sodium.ready()` first.
enum Sodium {
    /// sodium_init is idempotent and thread-safe; the static let makes the call once.
    private static let initialised: Bool = sodium_init() >= 0

    static func ready() {
        // A process without a working libsodium must not run with guessable keys.
        precondition(initialised, "libsodium failed to initialise")
    }
}

/// The one error type of the crypto module.
public enum CryptoError: Error, Equatable, Sendable {
    /// Authentication failed: wrong key, wrong associated data, or altered bytes.
    case integrity
    /// A key or nonce of the wrong length was given.
    case badLength(expected: Int, actual: Int)
    /// Guarded memory could not be allocated.
    case allocation
}
