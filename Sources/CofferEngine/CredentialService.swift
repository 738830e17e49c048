import CCofferLinux
import CofferAudit
public import CofferCore
import CofferCrypto
public import CofferStore
import Foundation
import Glibc
import Logging
import Synchronization

/// Credentials other systems trust, for an active elevation only: OpenSSH user
/// certificates from Coffer's CA and EdDSA JWTs. Each is issued in the transaction
/// that checks the elevation is active and the caller is its requester, with its
/// audit event; each lives no longer than the window. Ending or revoking an
/// elevation rewrites the KRL that sshd reads, and ends the SSH sessions opened
/// with its certificates (SIGHUP, then SIGKILL after a grace period).
public final class CredentialService: Sendable {
    public struct Settings: Sendable {
        public var krlPath: String
        public var sessionGraceSeconds: Int
        public var issuer: String
        public init(krlPath: String, sessionGraceSeconds: Int, issuer: String) {
            self.krlPath = krlPath
            self.sessionGraceSeconds = sessionGraceSeconds
            self.issuer = issuer
        }
        public init(config: CofferConfig) {
            self.init(krlPath: config.resolvedKRLPath, sessionGraceSeconds: config.sshSessionGraceSeconds, issuer: config.jwtIssuer)
        }
    }

    struct OpenKey: Sendable {
        let keyID: String
        let publicKey: [UInt8]
        let secretKey: SecretBytes
    }

    public let settings: Settings
    let store: Store
    let keyring: Keyring
    let policies: PolicyStore
    let errors: StoreErrorMapper
    let clock: any WallClock
    let logger: Logger
    let gate: Gate
    let ca: OpenKey
    let jwtKey: Mutex<OpenKey>
    /// The KRL's version (it only grows) and the lock that orders its writers.
    let krlVersion = Mutex<UInt64>(0)
    /// Sessions being ended now (one task each).
    let ending = Mutex<Set<Int64>>([])
    let reportedSessions = Mutex<Set<Int64>>([])
    /// A KRL write failed: the watch retries every second until one succeeds (the
    /// elevation ended regardless; sshd must learn it as soon as the disk allows).
    let krlDirty = Atomic<Bool>(false)

    /// The active CA and JWT keys, opened (at start).
    struct ActiveKeys: Sendable {
        let ca: OpenKey
        let jwt: OpenKey
    }

    static func loadKeys(store: Store, root: RootKey) throws(CofferError) -> ActiveKeys {
        let keys: [SigningKeyRecord]
        do { keys = try store.signingKeys() } catch { throw CofferError(.storage, "cannot read the signing keys: \(error)") }
        // every key, retired ones too (a retired JWT key is published while what it
        // signed is valid): only a key sealed under the root key, which opens to the
        // public key it claims, was made by this daemon
        for k in keys where k.state != .active { _ = try Self.openKey(k, root: root) }
        func open(_ p: SigningKeyRecord.Purpose) throws(CofferError) -> OpenKey {
            guard let k = keys.first(where: { $0.purpose == p && $0.state == .active }) else {
                throw CofferError(.integrity, "the keyring has no active \(p.rawValue) key")
            }
            return try Self.openKey(k, root: root)
        }
        return ActiveKeys(ca: try open(.sshCA), jwt: try open(.jwt))
    }

    init(settings: Settings, keys: ActiveKeys, store: Store, keyring: Keyring, policies: PolicyStore, gate: Gate, errors: StoreErrorMapper,
         clock: any WallClock, logger: Logger) {
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.policies = policies
        self.gate = gate
        self.errors = errors
        self.clock = clock
        self.logger = logger
        self.ca = keys.ca
        self.jwtKey = Mutex(keys.jwt)
    }

    /// Another instance rotated the JWT key (a shared database): sign with the one
    /// the database names active now. (The SSH CA is made once and not rotated.)
    func refreshJWTKey() throws {
        guard let k = try store.signingKeys().first(where: { $0.purpose == .jwt && $0.state == .active }) else {
            throw CofferError(.integrity, "the keyring has no active jwt key")
        }
        guard jwtKey.withLock({ $0.keyID }) != k.keyID else { return }
        let opened = try Self.openKey(k, root: keyring.root)
        jwtKey.withLock { $0 = opened }
    }

    /// A value set inside a transaction's closure, read after it.
    final class Slot<T: Sendable>: Sendable {
        let value = Mutex<T?>(nil)
    }

    static func openKey(_ k: SigningKeyRecord, root: RootKey) throws(CofferError) -> OpenKey {
        let seed: SecretBytes
        do throws(CofferError) { seed = try root.openSigning(k.sealed, id: k.keyID, purpose: k.purpose) } catch {
            throw CofferError(.integrity, "signing key \(k.keyID) does not open under the root key: this Coffer did not make it",
                              hint: "a row was planted or changed in the signing_key table; restore a backup")
        }
        let pair = try Checked.crypto { () throws(CryptoError) in try Signing.keyPair(seed: seed) }
        guard Hashing.constantTimeEquals(pair.publicKey, [UInt8](k.publicKey)) else {
            throw CofferError(.integrity, "signing key \(k.keyID) does not match its public key")
        }
        return OpenKey(keyID: k.keyID, publicKey: pair.publicKey, secretKey: pair.secretKey)
    }

    // MARK: the SSH CA

    public var caKeyBlob: [UInt8] { SSHCertificate.ed25519Blob(ca.publicKey) }

    /// The line for sshd's TrustedUserCAKeys.
    public var caLine: String { "ssh-ed25519 " + Data(caKeyBlob).base64EncodedString() + " coffer-user-ca-\(ca.keyID)" }

    public struct IssuedCertificate: Sendable {
        public var line: String
        public var certificate: SSHCertificate
        public var fingerprint: String
    }

    /// Who may use an elevation's credentials: its requester, as itself (no token,
    /// or the sign-in session, or the elevation's own token), not from a container.
    static func requesterCheck(_ p: Principal, _ e: ElevationRecord) throws(ElevationRefusal) {
        guard e.requesterUID == p.uid else { throw ElevationRefusal(.notFound, "no such elevation request") }
        guard p.container == nil else { throw ElevationRefusal(.permissionDenied, "not from a container") }
        if let t = p.token, t.accessor != e.tokenAccessor, t.authenticatedAt == nil || !t.ancestors.isEmpty {
            throw ElevationRefusal(.permissionDenied, "credentials are issued to the requester's own account or sign-in session, not to a narrowed token")
        }
        guard e.state == .active else { throw ElevationRefusal(.invalidParameter, "the request is \(e.state.rawValue), not active") }
    }

    /// A refusal made by the rules behind the gate (not the requester, a narrowed
    /// token, an audience the rule does not name) is a denial in the audit trail, not
    /// an allowed request that failed; a request that is merely invalid (not active,
    /// a TTL too long) stays an error of an allowed one.
    static func refused(_ g: Grant, _ r: ElevationRefusal) -> CofferError {
        if r.code == .permissionDenied || r.code == .notFound { g.ticket.decided(.deny(r.message)) }
        return CofferError(r.code, r.message)
    }

    func elevationRule(_ e: ElevationRecord) throws(ElevationRefusal) -> ElevationRule {
        guard let rule = policies.policy.elevations[e.role] else { throw ElevationRefusal(.permissionDenied, "role '\(e.role)' can no longer be asked for") }
        return rule
    }

    public func signSSH(_ g: Grant, id: String, publicKey text: String) async throws(CofferError) -> IssuedCertificate {
        guard id.hasPrefix("el_"), id.utf8.count <= 64 else { throw CofferError(.notFound, "no such elevation request") }
        g.ticket.update {
            $0.path = id
            $0.details[AuditDetails.elevationID] = .text(id)
        }
        let key = try SSHPublicKey.parse(text)
        guard key.blob != caKeyBlob else { throw CofferError(.invalidParameter, "that is Coffer's CA key, not yours") }
        let fingerprint = SSHPublicKey.fingerprint(sha256: Hashing.sha256(key.blob))
        g.ticket.update {
            $0.details["key_fingerprint"] = .text(fingerprint)
            $0.details["key_type"] = .text(key.kind.rawValue)
        }
        let p = g.principal
        let ca = self.ca
        let caBlob = caKeyBlob
        let issued = Slot<IssuedCertificate>()
        let ticket = g.ticket
        do {
            _ = try await store.issueCredential(elevationID: id, guard: Store.TokenGuard(p.token?.chain, now: clock.nowMillis()), ticket: g.ticket) { e in
                try Self.requesterCheck(p, e)
                let rule = try self.elevationRule(e)
                guard let grant = rule.ssh else { throw ElevationRefusal(.permissionDenied, "role '\(e.role)' grants no SSH certificates") }
                let now = UInt64(max(0, self.clock.nowMillis() / 1000))
                let end = UInt64(max(0, (e.endsAt ?? 0) / 1000))
                guard end > now + 1 else { throw ElevationRefusal(.invalidParameter, "the window ends now") }
                let user = e.requesterUser ?? "uid:\(e.requesterUID)"
                var serial: UInt64 = 0
                while serial == 0 { serial = Hashing.randomBytes(8).reduce(0) { $0 << 8 | UInt64($1) } & 0x7fff_ffff_ffff_ffff }
                let cert = SSHCertificate(key: key, serial: serial, keyID: "coffer:\(e.id):\(user)", principals: grant.principals,
                                          validAfter: now - 60, validBefore: end, criticalOptions: grant.criticalOptions, extensions: grant.extensions)
                let tbs = cert.toBeSigned(nonce: Hashing.randomBytes(32), caKeyBlob: caBlob)
                let sig = try Signing.sign(tbs, secretKey: ca.secretKey)
                let blob = SSHCertificate.assemble(toBeSigned: tbs, ed25519Signature: sig)
                let line = key.kind.certificateType + " " + Data(blob).base64EncodedString() + " " + cert.keyID
                issued.value.withLock { $0 = IssuedCertificate(line: line, certificate: cert, fingerprint: fingerprint) }
                ticket.update {
                    $0.details["serial"] = .text(String(serial))
                    $0.details["key_id"] = .text(cert.keyID)
                    $0.details["principals"] = .list(cert.principals)
                    $0.details["valid_before"] = .text(Timestamp.string(millis: Int64(end) * 1000))
                    $0.details["ca_key_id"] = .text(ca.keyID)
                }
                return CredentialRecord(id: String(serial), kind: .ssh, serial: serial, elevationID: e.id, keyID: ca.keyID,
                                        issuedAt: self.clock.nowMillis(), expiresAt: Int64(end) * 1000, subject: cert.keyID,
                                        audience: cert.principals.joined(separator: "\n"), digest: Data(Hashing.sha256(blob)))
            }
        } catch let r as ElevationRefusal {
            throw Self.refused(g, r)
        } catch {
            throw errors.map(error)
        }
        guard let out = issued.value.withLock({ $0 }) else { throw CofferError(.internal, "no certificate was made") }
        logger.info("ssh certificate issued", metadata: ["elevation.id": "\(id)", "serial": "\(out.certificate.serial)", "peer.uid": "\(p.uid)"])
        return out
    }

    // MARK: JWTs

    public struct JWK: Sendable {
        public var keyID: String
        public var publicKey: [UInt8]
    }

    /// The keys a verifier needs: the active one, and retired ones while a JWT they
    /// signed may still be valid.
    public func jwks() throws(CofferError) -> [JWK] {
        try errors.call { try store.digestGate() }  // records refused: no keys vouched for either
        let keys = try errors.call { try store.signingKeys() }.filter { $0.purpose == .jwt }
        let now = clock.nowMillis()
        var out: [JWK] = []
        for k in keys {
            if k.state != .active { guard try errors.call({ try store.lastExpiry(keyID: k.keyID) }) ?? 0 > now else { continue } }
            out.append(JWK(keyID: k.keyID, publicKey: [UInt8](k.publicKey)))
        }
        return out
    }

    public func rotateJWTKey(_ g: Grant) async throws(CofferError) -> String {
        let root = keyring.root
        let record = try root.newSigningKey(.jwt, now: clock.nowMillis())
        let opened = try Self.openKey(record, root: root)
        g.ticket.update { $0.details["key_id"] = .text(record.keyID) }
        try await errors.call {
            try await store.rotateSigningKey(record, now: clock.nowMillis(), guard: Store.TokenGuard(g.principal.token?.chain, now: clock.nowMillis()),
                                            ticket: g.ticket)
        }
        jwtKey.withLock { $0 = opened }
        logger.info("jwt key rotated", metadata: ["key.id": "\(record.keyID)"])
        return record.keyID
    }

    public static func base64URL(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    public struct IssuedJWT: Sendable {
        public var token: String
        public var jti: String
        public var expiresAt: Int64
        public var keyID: String
    }

    public func signJWT(_ g: Grant, id: String, audience: String, ttlSeconds: Int?) async throws(CofferError) -> IssuedJWT {
        guard id.hasPrefix("el_"), id.utf8.count <= 64 else { throw CofferError(.notFound, "no such elevation request") }
        g.ticket.update {
            $0.path = id
            $0.details[AuditDetails.elevationID] = .text(id)
            $0.details["audience"] = .text(String(audience.prefix(256)))
        }
        guard SSHCertificate.isValidName(audience) else { throw CofferError(.invalidParameter, "the audience must be printable ASCII without spaces or commas") }
        if let ttlSeconds, ttlSeconds < 5 || ttlSeconds > 86400 { throw CofferError(.invalidParameter, "the TTL must be 5s...24h") }
        let p = g.principal
        let key = jwtKey.withLock { $0 }
        let issuer = settings.issuer
        let issued = Slot<IssuedJWT>()
        let ticket = g.ticket
        do {
            _ = try await store.issueCredential(elevationID: id, guard: Store.TokenGuard(p.token?.chain, now: clock.nowMillis()), ticket: g.ticket) { e in
                try Self.requesterCheck(p, e)
                let rule = try self.elevationRule(e)
                guard let grant = rule.jwt else { throw ElevationRefusal(.permissionDenied, "role '\(e.role)' grants no JWTs") }
                guard grant.audiences.contains(audience) else {
                    throw ElevationRefusal(.permissionDenied, "audience '\(audience)' is not allowed for role '\(e.role)' (allowed: \(grant.audiences.joined(separator: ", ")))")
                }
                let nowMillis = self.clock.nowMillis()
                let now = nowMillis / 1000
                let end = (e.endsAt ?? 0) / 1000
                guard end > now else { throw ElevationRefusal(.invalidParameter, "the window ends now") }
                let exp: Int64
                if let ttlSeconds {
                    guard ttlSeconds <= grant.maxTTLSeconds else {
                        throw ElevationRefusal(.invalidParameter, "the TTL is longer than the rule allows (\(DurationText.format(grant.maxTTLSeconds)))")
                    }
                    guard now + Int64(ttlSeconds) <= end else {
                        throw ElevationRefusal(.invalidParameter, "the TTL reaches beyond the window (it ends in \(end - now)s)")
                    }
                    exp = now + Int64(ttlSeconds)
                } else {
                    exp = min(now + Int64(grant.maxTTLSeconds), end)
                }
                let jti = "jwt_" + Hex.encode(Hashing.randomBytes(12))
                let approvers = e.reviews.filter(\.approve).map { $0.user ?? "uid:\($0.uid)" } + (e.breakGlass ? ["break-glass"] : [])
                let claims: [String: Any] = [
                    "iss": issuer, "sub": e.requesterUser ?? "uid:\(e.requesterUID)", "aud": audience, "iat": now, "nbf": now, "exp": exp,
                    "jti": jti, "role": e.role, "request_id": e.id, "approvers": approvers, "uid": Int64(e.requesterUID),
                ]
                let header: [String: Any] = ["alg": "EdDSA", "typ": "JWT", "kid": key.keyID]
                let opts: JSONSerialization.WritingOptions = [.sortedKeys, .withoutEscapingSlashes]
                let signingInput = Self.base64URL([UInt8](try JSONSerialization.data(withJSONObject: header, options: opts))) + "."
                    + Self.base64URL([UInt8](try JSONSerialization.data(withJSONObject: claims, options: opts)))
                let sig = try Signing.sign(Array(signingInput.utf8), secretKey: key.secretKey)
                issued.value.withLock { $0 = IssuedJWT(token: signingInput + "." + Self.base64URL(sig), jti: jti, expiresAt: exp * 1000, keyID: key.keyID) }
                ticket.update {
                    $0.details["jti"] = .text(jti)
                    $0.details["key_id"] = .text(key.keyID)
                    $0.details["expires_at"] = .text(Timestamp.string(millis: exp * 1000))
                }
                return CredentialRecord(id: jti, kind: .jwt, serial: nil, elevationID: e.id, keyID: key.keyID, issuedAt: nowMillis, expiresAt: exp * 1000,
                                        subject: e.requesterUser ?? "uid:\(e.requesterUID)", audience: audience, digest: nil)
            }
        } catch let r as ElevationRefusal {
            throw Self.refused(g, r)
        } catch {
            throw errors.map(error)
        }
        guard let out = issued.value.withLock({ $0 }) else { throw CofferError(.internal, "no JWT was made") }
        return out
    }

    // MARK: revocation: the KRL

    /// Rewrites the KRL from the database (serials of certificates whose elevation
    /// was ended or revoked): a new file renamed over the old one, so sshd never
    /// reads half a list; writers are ordered, so the last write is the newest state.
    public func writeKRL() throws(CofferError) {
        let path = settings.krlPath
        do throws(CofferError) {
            try krlVersion.withLock { version throws(CofferError) in
                let serials = try errors.call { try store.revokedSerials(now: clock.nowMillis()) }
                let keyIDs = try errors.call { try store.revokedKeyIDs(now: clock.nowMillis()) }
                version = max(version + 1, UInt64(max(0, clock.nowMillis())))
                let bytes = SSHKRL.encode(version: version, generatedAt: UInt64(max(0, clock.nowMillis() / 1000)), caKeyBlob: caKeyBlob,
                                          serials: serials, keyIDs: keyIDs)
                try Self.writeAtomically(bytes, to: path, mode: 0o644)
            }
            krlDirty.store(false, ordering: .relaxed)
        } catch {
            krlDirty.store(true, ordering: .relaxed)
            throw error
        }
    }

    /// The watch's retry of a failed KRL write.
    public func retryKRLIfNeeded() {
        guard krlDirty.load(ordering: .relaxed) else { return }
        do throws(CofferError) { try writeKRL() } catch {
            logger.error("cannot write the KRL", metadata: ["error": "\(error.message)"])
        }
    }

    static func writeAtomically(_ bytes: [UInt8], to path: String, mode: mode_t) throws(CofferError) {
        let dir = (path as NSString).deletingLastPathComponent
        let tmp = dir + "/.\((path as NSString).lastPathComponent).\(getpid()).\(Hex.encode(Hashing.randomBytes(4)))"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else { throw CofferError(.storage, "cannot write the KRL next to \(path): \(String(cString: strerror(errno)))") }
        var ok = fchmod(fd, mode) == 0
        var off = 0
        while ok && off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            ok = n > 0
            off += max(n, 0)
        }
        ok = ok && fsync(fd) == 0
        close(fd)
        guard ok, rename(tmp, path) == 0 else {
            let e = errno
            unlink(tmp)
            throw CofferError(.storage, "cannot write the KRL \(path): \(String(cString: strerror(e)))")
        }
        let d = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if d >= 0 { fsync(d); close(d) }
    }

    /// An elevation closed: its certificates go into the KRL (ended or revoked) and
    /// its sessions are ended at once.
    func elevationClosed(_ e: ElevationRecord) {
        guard let any = try? store.credentials(elevationID: e.id), any.contains(where: { $0.kind == .ssh }) else { return }
        do throws(CofferError) { try writeKRL() } catch {
            logger.error("cannot write the KRL", metadata: ["error": "\(error.message)"])
        }
        Task { await self.endDueSessions() }
    }

    // MARK: sessions

    public struct Registration: Sendable {
        public var tracked: Bool
        public var session: SSHSessionRecord?
    }

    /// The PAM session hook (root, through pam_exec) names the certificate a login
    /// used; cofferd reads the login's audit session id from the hook's own process.
    /// A certificate Coffer did not issue is not tracked; one whose elevation is not
    /// active is refused (the hook then fails the login).
    public func registerSession(_ g: Grant, certificate: String, user: String?) async throws(CofferError) -> Registration {
        let p = g.principal
        guard p.uid == 0, p.token == nil, p.container == nil else {
            g.ticket.decided(.deny("ssh sessions: only root's PAM session hook registers them"))
            throw CofferError(.permissionDenied, "only root's PAM session hook registers SSH sessions")
        }
        guard certificate.utf8.count <= 16 * 1024, let blob = Data(base64Encoded: certificate), SSHCertificate.read([UInt8](blob)) != nil else {
            throw CofferError(.invalidParameter, "certificate must be an OpenSSH certificate blob, base64")
        }
        if let user, !SSHCertificate.isValidName(user, max: 64) { throw CofferError(.invalidParameter, "user must be a login name") }
        let pid = p.pid
        guard let sid = await OffPool.run({ Self.auditSession(of: pid) }) ?? nil else {
            throw CofferError(.invalidParameter, "the caller has no audit session id",
                              hint: "put `session required pam_loginuid.so` before the coffer line in the PAM stack")
        }
        let ticket = g.ticket
        ticket.update { $0.details["audit_session"] = .number(Int64(sid)) }
        let s: SSHSessionRecord?
        do {
            s = try await store.registerSession(digest: Data(Hashing.sha256([UInt8](blob))), auditSession: sid, pid: pid, user: user,
                                                now: clock.nowMillis(), ticket: ticket) { c in
                ticket.update {
                    $0.path = c.elevationID
                    $0.details[AuditDetails.elevationID] = .text(c.elevationID)
                    $0.details["serial"] = .text(String(c.serial ?? 0))
                    $0.details["key_id"] = .text(c.subject)
                }
            }
        } catch let r as ElevationRefusal {
            throw Self.refused(g, r)
        } catch {
            throw errors.map(error)
        }
        if let s {
            let confined = await OffPool.run({ Self.confine(sid) }) ?? false
            ticket.update { $0.details["cgroup"] = .text(confined ? Self.cgroupDir(sid) ?? "-" : "none") }
        }
        if let s { logger.info("ssh session registered", metadata: ["elevation.id": "\(s.elevationID)", "serial": "\(s.serial)", "audit.session": "\(sid)"]) }
        return Registration(tracked: s != nil, session: s)
    }

    static let unsetSession: UInt32 = 4_294_967_295

    static func readSmall(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 512)
        let n = read(fd, &buf, buf.count)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n], as: UTF8.self)
    }

    static func auditSession(of pid: Int32) -> UInt32? {
        guard let s = readSmall("/proc/\(pid)/sessionid"), let v = UInt32(s.trimmingCharacters(in: .whitespacesAndNewlines)), v != unsetSession else {
            return nil
        }
        return v
    }

    /// Live (not zombie) processes of an audit session; never this process.
    static func members(of sid: UInt32) -> [Int32] {
        guard let dir = opendir("/proc") else { return [] }
        defer { closedir(dir) }
        var out: [Int32] = []
        let me = getpid()
        while let ent = readdir(dir) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let pid = Int32(name), pid > 1, pid != me, auditSession(of: pid) == sid else { continue }
            if let stat = readSmall("/proc/\(pid)/stat"), let paren = stat.lastIndex(of: ")") {
                let state = stat[paren...].dropFirst(2).first
                if state == "Z" || state == "X" { continue }
            }
            out.append(pid)
        }
        return out
    }

    /// One pass over /proc: every live process of the session is signalled the moment
    /// it is found (a process that forks and exits to hop pids is caught by the pass
    /// that finds its child: new pids come later in the listing), each through a pidfd
    /// checked to still be in the session (a pid reused meanwhile is not hit); never
    /// PID 1 or cofferd. Returns how many were signalled.
    static func signalSession(_ sid: UInt32, _ sig: Int32) -> Int {
        guard let dir = opendir("/proc") else { return 0 }
        defer { closedir(dir) }
        var n = 0
        let me = getpid()
        while let ent = readdir(dir) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let pid = Int32(name), pid > 1, pid != me, auditSession(of: pid) == sid else { continue }
            let fd = coffer_pidfd_open(pid)
            guard fd >= 0 else { continue }
            if auditSession(of: pid) == sid, coffer_pidfd_kill(fd, sig) == 0 { n += 1 }
            close(fd)
        }
        return n
    }

    /// The cgroup v2 hierarchy's mount point (nil: none mounted).
    static let cgroup2: String? = {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " - ", maxSplits: 1)
            guard parts.count == 2, parts[1].hasPrefix("cgroup2 ") else { continue }
            let fields = parts[0].split(separator: " ")
            if fields.count >= 5 { return RunService.decodeOctal(String(fields[4])) }
        }
        return nil
    }()

    static func cgroupDir(_ sid: UInt32) -> String? { cgroup2.map { $0 + "/coffer-ssh.\(sid)" } }

    static func writeSmall(_ path: String, _ text: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let b = Array(text.utf8)
        return write(fd, b, b.count) == b.count
    }

    /// At registration, while the login has not yet run anything of the user's: its
    /// processes move into a cgroup of their own, which every process they make
    /// inherits and none can leave (that needs root). At the window's end the cgroup is
    /// killed whole (cgroup.kill), which no forking outruns. False where there is no
    /// cgroup v2 hierarchy (then the /proc passes alone end the session).
    static func confine(_ sid: UInt32) -> Bool {
        guard let dir = cgroupDir(sid) else { return false }
        guard mkdir(dir, 0o755) == 0 || errno == EEXIST else { return false }
        var moved = 0
        for pid in members(of: sid) where writeSmall(dir + "/cgroup.procs", "\(pid)\n") { moved += 1 }
        return moved > 0
    }

    /// Removes session cgroups whose processes have all exited (rmdir refuses a
    /// cgroup that still has any).
    public static func removeEmptyCgroups() {
        guard let root = cgroup2, let dir = opendir(root) else { return }
        defer { closedir(dir) }
        while let ent = readdir(dir) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix("coffer-ssh."), UInt32(name.dropFirst(11)) != nil { rmdir(root + "/" + name) }
        }
    }

    /// Kills the session's cgroup (if it has one) and removes it once empty.
    static func killCgroup(_ sid: UInt32) -> Int {
        guard let dir = cgroupDir(sid), access(dir, F_OK) == 0 else { return 0 }
        func procs() -> String { (try? String(contentsOfFile: dir + "/cgroup.procs", encoding: .utf8)) ?? "" }
        let before = procs().split(separator: "\n").count
        _ = writeSmall(dir + "/cgroup.kill", "1")
        for _ in 0..<200 where !procs().isEmpty { usleep(10_000) }
        rmdir(dir)
        return before
    }

    /// SIGKILL passes until one finds no live process of the session (at most
    /// `passes`): whatever forks while a pass runs is found by the next one.
    static func killSession(_ sid: UInt32, passes: Int = 200) -> (killed: Int, emptied: Bool) {
        var killed = 0
        for _ in 0..<passes {
            killed += signalSession(sid, SIGKILL)
            if members(of: sid).isEmpty { return (killed, true) }
        }
        return (killed, false)
    }

    /// Ends sessions whose elevation is over (ended, revoked, expired, or past its
    /// end): audited first, then SIGHUP, then SIGKILL to what is left after the grace.
    public func endDueSessions() async {
        guard let (due, tampered) = try? store.sessionsToEnd(now: clock.nowMillis()) else { return }
        for id in tampered where reportedSessions.withLock({ $0.insert(id).inserted }) {
            // once per row and process: its pid and audit session are not acted on
            logger.critical("an ssh session row failed its integrity check: it was changed without the key; its session is not ended by cofferd",
                            metadata: ["ssh.session": "\(id)"])
        }
        for s in due {
            guard ending.withLock({ $0.insert(s.id).inserted }) else { continue }
            Task {
                defer { _ = ending.withLock { $0.remove(s.id) } }
                await self.end(s)
            }
        }
    }

    /// Every ten seconds: the cgroups of logins that are over.
    public func tidyCgroups() async { _ = await OffPool.run({ Self.removeEmptyCgroups() }) }

    func end(_ s: SSHSessionRecord) async {
        let grace = settings.sessionGraceSeconds
        let store = self.store
        let clock = self.clock
        let annotate: (inout AuditEvent) -> Void = {
            $0.path = s.elevationID
            $0.details[AuditDetails.elevationID] = .text(s.elevationID)
            $0.details["serial"] = .text(String(s.serial))
            $0.details["audit_session"] = .number(Int64(s.auditSession))
            if let u = s.user { $0.details["user"] = .text(u) }
        }
        _ = try? await gate.performAuditedFirst(.system("ssh"), .admin, nil, named: "ssh_session_end", annotate: annotate) { g async throws(CofferError) in
            let sid = s.auditSession
            let hup = await OffPool.run(timeout: 10, { Self.signalSession(sid, SIGHUP) }) ?? 0
            for _ in 0..<(grace * 10) {
                if (await OffPool.run(timeout: 10, { Self.members(of: sid).count }) ?? 1) == 0 { break }
                try? await Task.sleep(for: .milliseconds(100))
            }
            let inCgroup = await OffPool.run(timeout: 10, { Self.killCgroup(sid) }) ?? 0
            var (killed, emptied) = await OffPool.run(timeout: 10, { Self.killSession(sid) }) ?? (0, false)
            killed += inCgroup
            g.ticket.update {
                $0.details["hangup"] = .number(Int64(hup))
                $0.details["killed"] = .number(Int64(killed))
            }
            guard emptied else {
                // still alive: the session stays open and the next sweep (a second later) goes on
                self.logger.warning("ssh session not yet empty", metadata: ["elevation.id": "\(s.elevationID)", "audit.session": "\(sid)"])
                throw CofferError(.internal, "processes of the session are still alive; retrying")
            }
            try await self.errors.call {
                try await store.endSession(id: s.id, now: clock.nowMillis(), reason: "the elevation's window closed", ticket: g.ticket)
            }
            self.logger.info("ssh session ended", metadata: ["elevation.id": "\(s.elevationID)", "serial": "\(s.serial)", "hangup": "\(hup)",
                                                              "killed": "\(killed)"])
        }
    }
}

extension CredentialService {
    /// Zeroes the open CA and JWT keys (a seal).
    func wipeKeys() {
        ca.secretKey.wipe()
        jwtKey.withLock { $0.secretKey.wipe() }
    }
}
