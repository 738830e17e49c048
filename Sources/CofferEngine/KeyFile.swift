import CCofferLinux
public import CofferCore
public import CofferCrypto
public import CofferStore
import Foundation
import Synchronization

/// The root key file: one line `coffer-root-key-v1:<64 hex digits>`, mode 0400.
/// It is parsed straight into guarded memory; the hex text is wiped after reading.
public enum KeyFile {
    static let header = Array("coffer-root-key-v1:".utf8)

    /// Creates a new random root key at `path` (mode 0400, parent 0700).
    /// Refuses to overwrite anything that exists (O_EXCL, O_NOFOLLOW).
    public static func create(at path: String) throws(CofferError) {
        let dir = (path as NSString).deletingLastPathComponent
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw CofferError(.keyFile, "cannot create the key directory \(dir): \(error.localizedDescription)")
        }
        let key: SecretBytes
        do { key = try SecretBytes.random(count: AEAD.keyBytes) } catch {
            throw CofferError(.keyFile, "cannot allocate guarded memory for the root key")
        }
        var text = Self.text(key).copyToArray()
        defer { Hashing.wipe(&text) }
        let fd = coffer_create_exclusive(path, 0o400)
        guard fd >= 0 else {
            let e = errno
            if e == EEXIST {
                throw CofferError(.keyFile, "the key file \(path) already exists; refusing to overwrite it",
                                  hint: "a root key is never replaced in place; remove it only if you mean to lose every secret sealed under it")
            }
            throw CofferError(.keyFile, "cannot create the key file \(path): \(String(cString: strerror(e)))")
        }
        defer { close(fd) }
        let written = (try? Syscall.retrying { text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }) ?? -1
        guard written == text.count, fsync(fd) == 0 else {
            unlink(path)
            throw CofferError(.keyFile, "cannot write the key file \(path)")
        }
        // the directory entry too: a database re-sealed under a key whose name was
        // lost to a power cut would be lost with it
        let dfd = open(dir.isEmpty ? "." : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dfd >= 0, fsync(dfd) == 0 else {
            if dfd >= 0 { close(dfd) }
            unlink(path)
            throw CofferError(.keyFile, "cannot sync the key directory \(dir)")
        }
        close(dfd)
    }

    /// A key as a key file's text (one line, in guarded memory): a rekey to a new key
    /// file hands it over once.
    public static func text(_ key: SecretBytes) -> SecretBytes {
        var text = header
        key.withUnsafeBytes { raw in
            for b in raw {
                text.append(hexDigit(b >> 4))
                text.append(hexDigit(b & 0x0F))
            }
        }
        text.append(0x0A)
        return (try? SecretBytes(consuming: &text)) ?? { fatalError("cannot allocate guarded memory for a key") }()
    }

    /// Loads the root key. Refuses a missing file, a symlink, a file readable or
    /// writable by group or others, and anything not in the exact format.
    public static func load(from path: String) throws(CofferError) -> SecretBytes {
        let fd = coffer_open_read_nofollow(path)
        guard fd >= 0 else {
            let e = errno
            switch e {
            case ENOENT:
                throw CofferError(.keyFile, "the key file \(path) does not exist",
                                  hint: "create one with `cofferd init`, or point keys.key_file at the right file")
            case ELOOP:
                throw CofferError(.keyFile, "the key file \(path) is a symbolic link; refusing to follow it")
            default:
                throw CofferError(.keyFile, "cannot open the key file \(path): \(String(cString: strerror(e)))")
            }
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw CofferError(.keyFile, "the key file \(path) is not a regular file")
        }
        guard st.st_mode & 0o077 == 0 else {
            throw CofferError(.keyFile, "the key file \(path) is accessible by group or others (mode \(String(st.st_mode & 0o777, radix: 8)))",
                              hint: "chmod 0400 \(path)")
        }
        let expected = header.count + 64
        var buf = [UInt8](repeating: 0, count: expected + 2)
        defer { Hashing.wipe(&buf) }
        var total = 0
        while total < buf.count {
            let n: Int
            do { n = try Syscall.retrying { buf.withUnsafeMutableBytes { read(fd, $0.baseAddress! + total, $0.count - total) } } } catch {
                throw CofferError(.keyFile, "cannot read the key file \(path): \(error.reason)")
            }
            if n == 0 { break }
            total += n
        }
        return try parse(buf[0..<total], source: "the key file \(path)")
    }

    /// Parses the key file's text (one line, optional newline) straight into guarded
    /// memory. `source` names it in errors; the key itself never appears in one.
    public static func parse(_ text: ArraySlice<UInt8>, source: String) throws(CofferError) -> SecretBytes {
        let expected = header.count + 64
        var len = text.count
        if len > 0 && text[text.startIndex + len - 1] == 0x0A { len -= 1 }
        let buf = text.prefix(len)
        guard len == expected, buf.prefix(header.count).elementsEqual(header) else {
            throw CofferError(.keyFile, "\(source) is not a Coffer root key (expected `coffer-root-key-v1:` and 64 hex digits)")
        }
        let key: SecretBytes
        do { key = try SecretBytes(count: 32) } catch { throw CofferError(.keyFile, "cannot allocate guarded memory for the root key") }
        var ok = true
        let base = buf.startIndex + header.count
        key.withUnsafeMutableBytes { out in
            for i in 0..<32 {
                let hi = hexValue(buf[base + 2 * i]), lo = hexValue(buf[base + 2 * i + 1])
                if hi > 15 || lo > 15 { ok = false }
                out[i] = (hi << 4) | (lo & 0x0F)
            }
        }
        guard ok else { throw CofferError(.keyFile, "\(source) has a character that is not a hex digit") }
        return key
    }

    static func hexDigit(_ v: UInt8) -> UInt8 { v < 10 ? 0x30 + v : 0x61 + v - 10 }
    static func hexValue(_ c: UInt8) -> UInt8 {
        switch c {
        case 0x30...0x39: c - 0x30
        case 0x61...0x66: c - 0x61 + 10
        case 0x41...0x46: c - 0x41 + 10
        default: 0xFF
        }
    }
}

/// A key file on the daemon's disk (keys.key_file).
public struct KeyFileUnlocker: Unlocker {
    public let path: String
    public init(path: String) { self.path = path }
    public var description: String { "key file \(path)" }
    public var mode: HolderRecord.Mode { .keyfile }
    /// The file's key (a root key itself, or the unseal key of a keyfile holder).
    public func rootKey() throws(CofferError) -> SecretBytes { try KeyFile.load(from: path) }
    public func unsealKey(holder: HolderRecord?) throws(CofferError) -> SecretBytes { try rootKey() }
}

/// A key handed over in a request (the key file's text, sent by
/// `coffer unseal --key-file`): the key need not rest on the daemon's disk.
/// The text is wiped when the unlocker goes.
public final class KeyTextUnlocker: Unlocker {
    private let text: Mutex<[UInt8]>
    public init(text: [UInt8]) { self.text = Mutex(text) }
    deinit { text.withLock { Hashing.wipe(&$0) } }
    public var description: String { "the key given to unseal" }
    public var mode: HolderRecord.Mode { .keyfile }
    public func rootKey() throws(CofferError) -> SecretBytes {
        let t = text.withLock { $0 }
        return try KeyFile.parse(t[...], source: "the key given")
    }
    public func unsealKey(holder: HolderRecord?) throws(CofferError) -> SecretBytes { try rootKey() }
}
