internal import CSodium
import Synchronization

/// Key material and decrypted values (invariant 1, invariant 8).
///
/// - Memory comes from `sodium_malloc`: guard pages, locked against swap, zeroed
///   before reuse and by `sodium_free` on release.
/// - No `description`, not `Codable`, not `Equatable` (compare with `constantTimeEquals`).
/// - Buffers are recycled through `GuardedPool` (zeroed on return): sodium_malloc and
///   sodium_free cost an mmap, mprotects, mlock and an munmap with TLB shootdowns,
///   which dominated a read before the pool.
public final class SecretBytes: @unchecked Sendable {
    // @unchecked: the buffer is written only during init (or through
    // withUnsafeMutableBytes by the creator before sharing) and read-only afterwards.
    private let pointer: UnsafeMutableRawPointer
    private let capacity: Int
    public let count: Int

    /// Zero-filled guarded buffer of `count` bytes.
    public init(count: Int) throws(CryptoError) {
        Sodium.ready()
        let (p, cap) = try GuardedPool.shared.acquire(count)
        self.pointer = p
        self.capacity = cap
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
        GuardedPool.shared.release(pointer, capacity: capacity)  // zeroed before anyone sees it again
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

/// A bounded free list of sodium_malloc'd buffers in power-of-two size classes.
/// Every buffer is zeroed when it comes back; beyond the bound it is sodium_free'd.
final class GuardedPool: Sendable {
    static let shared = GuardedPool()
    static let minClass = 64
    static let maxPooledClass = 1 << 21  // 2 MiB: values are at most 1 MiB (+ tag)
    static let perClass = 64

    /// A pooled buffer; it crosses threads only under the pool's lock.
    struct Slot: @unchecked Sendable { let p: UnsafeMutableRawPointer }
    private let free = Mutex<[Int: [Slot]]>([:])

    static func sizeClass(_ n: Int) -> Int {
        var c = minClass
        while c < n { c <<= 1 }
        return c
    }

    func acquire(_ count: Int) throws(CryptoError) -> (UnsafeMutableRawPointer, Int) {
        let cap = Self.sizeClass(max(count, 1))
        if cap <= Self.maxPooledClass, let slot = free.withLock({ $0[cap]?.popLast() }) {
            return (slot.p, cap)  // already zero
        }
        guard let p = sodium_malloc(cap) else { throw .allocation }
        sodium_memzero(p, cap)
        return (p, cap)
    }

    func release(_ p: UnsafeMutableRawPointer, capacity: Int) {
        sodium_memzero(p, capacity)
        let kept: Bool = capacity <= Self.maxPooledClass && free.withLock { f in
            if f[capacity, default: []].count < Self.perClass {
                f[capacity, default: []].append(Slot(p: p))
                return true
            }
            return false
        }
        if !kept { sodium_free(p) }
    }
}
