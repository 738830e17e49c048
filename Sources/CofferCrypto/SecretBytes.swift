internal import CSodium

/// Key material and decrypted values (invariant 1, invariant 8).
///
/// - Memory comes from `sodium_malloc`: guard pages, locked against swap, and
///   zeroed by `sodium_free` on release.
/// - No `description`, not `Codable`, not `Equatable` (compare with `constantTimeEquals`).
public final class SecretBytes: @unchecked Sendable {
    // @unchecked: the buffer is written only during init (or through
    // withUnsafeMutableBytes by the creator before sharing) and read-only afterwards.
    private let pointer: UnsafeMutableRawPointer
    public let count: Int

    /// Zero-filled guarded buffer of `count` bytes.
    public init(count: Int) throws(CryptoError) {
        Sodium.ready()
        // sodium_malloc(0) is valid but returns a pointer we must not touch; keep one byte.
        guard let p = sodium_malloc(max(count, 1)) else { throw .allocation }
        sodium_memzero(p, max(count, 1))
        self.pointer = p
        self.count = count
    }

    /// Copies `bytes` into guarded memory. The caller remains responsible for the source.
    public convenience init(copying bytes: UnsafeRawBufferPointer) throws(CryptoError) {
        try self.init(count: bytes.count)
        if let base = bytes.baseAddress, bytes.count > 0 {
            pointer.copyMemory(from: base, byteCount: bytes.count)
        }
    }

    /// Copies an array and wipes the array's storage afterwards.
    public convenience init(consuming bytes: inout [UInt8]) throws(CryptoError) {
        try self.init(count: bytes.count)
        let p = pointer
        bytes.withUnsafeMutableBytes { raw in
            if let base = raw.baseAddress, raw.count > 0 {
                p.copyMemory(from: base, byteCount: raw.count)
                sodium_memzero(base, raw.count)
            }
        }
        bytes.removeAll()
    }

    /// A guarded copy of non-secret or already-exposed bytes (constants, test data).
    public static func copying(_ bytes: [UInt8]) throws(CryptoError) -> SecretBytes {
        let s = try SecretBytes(count: bytes.count)
        if !bytes.isEmpty { s.pointer.copyMemory(from: bytes, byteCount: bytes.count) }
        return s
    }

    /// `count` bytes from the CSPRNG.
    public static func random(count: Int) throws(CryptoError) -> SecretBytes {
        let s = try SecretBytes(count: count)
        randombytes_buf(s.pointer, count)
        return s
    }

    deinit {
        sodium_free(pointer)  // zeroes, then unmaps with its guard pages
    }

    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    public func withUnsafeMutableBytes<R, E: Error>(_ body: (UnsafeMutableRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeMutableRawBufferPointer(start: pointer, count: count))
    }

    /// Constant-time comparison (sodium_memcmp); lengths are not secret.
    public func constantTimeEquals(_ other: SecretBytes) -> Bool {
        guard count == other.count else { return false }
        return count == 0 || sodium_memcmp(pointer, other.pointer, count) == 0
    }

    /// A copy into ordinary memory, for writing to a response. The caller owns it
    /// from here; this is the one door out, so it is easy to find in review.
    public func copyToArray() -> [UInt8] {
        [UInt8](UnsafeRawBufferPointer(start: pointer, count: count))
    }
}
