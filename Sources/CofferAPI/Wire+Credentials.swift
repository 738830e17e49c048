public import Foundation

// Wire types of SSH certificates, JWTs and the JWKS.

/// POST /v1/elevation/requests/{id}/ssh
public struct SSHSignRequest: Codable, Sendable {
    /// One OpenSSH public key line (ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa).
    public var publicKey: String
    enum CodingKeys: String, CodingKey, CaseIterable { case publicKey = "public_key" }
    public init(publicKey: String) { self.publicKey = publicKey }
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        publicKey = try c.decode(String.self, forKey: .publicKey)
    }
}

public struct SSHCertificateResponse: Codable, Sendable {
    /// The certificate line (`…-cert-v01@openssh.com BASE64 KEYID`), for `-cert.pub`.
    public var certificate: String
    /// Decimal (a uint64).
    public var serial: String
    public var keyID: String
    public var principals: [String]
    public var validAfter: String
    public var validBefore: String
    public var fingerprint: String
    enum CodingKeys: String, CodingKey {
        case certificate, serial, principals, fingerprint
        case keyID = "key_id", validAfter = "valid_after", validBefore = "valid_before"
    }
    public init(certificate: String, serial: String, keyID: String, principals: [String], validAfter: String, validBefore: String, fingerprint: String) {
        self.certificate = certificate
        self.serial = serial
        self.keyID = keyID
        self.principals = principals
        self.validAfter = validAfter
        self.validBefore = validBefore
        self.fingerprint = fingerprint
    }
}

/// GET /v1/ssh/ca
public struct SSHCAResponse: Codable, Sendable {
    /// The line for sshd's TrustedUserCAKeys.
    public var publicKey: String
    public var krlPath: String
    enum CodingKeys: String, CodingKey { case publicKey = "public_key", krlPath = "krl_path" }
    public init(publicKey: String, krlPath: String) {
        self.publicKey = publicKey
        self.krlPath = krlPath
    }
}

/// POST /v1/ssh/sessions (root's PAM session hook).
public struct SSHSessionRequest: Codable, Sendable {
    /// The certificate blob, base64 (field 2 of SSH_AUTH_INFO_0).
    public var certificate: String
    public var user: String?
    enum CodingKeys: String, CodingKey, CaseIterable { case certificate, user }
    public init(certificate: String, user: String?) {
        self.certificate = certificate
        self.user = user
    }
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        certificate = try c.decode(String.self, forKey: .certificate)
        user = try c.decodeIfPresent(String.self, forKey: .user)
    }
}

public struct SSHSessionResponse: Codable, Sendable {
    /// false: not a certificate Coffer issued (the session is none of Coffer's business).
    public var tracked: Bool
    public var elevationID: String?
    public var serial: String?
    public var auditSession: UInt32?
    enum CodingKeys: String, CodingKey { case tracked, serial, elevationID = "elevation_id", auditSession = "audit_session" }
    public init(tracked: Bool, elevationID: String?, serial: String?, auditSession: UInt32?) {
        self.tracked = tracked
        self.elevationID = elevationID
        self.serial = serial
        self.auditSession = auditSession
    }
}

/// POST /v1/elevation/requests/{id}/jwt
public struct JWTSignRequest: Codable, Sendable {
    public var audience: String
    /// A duration like "5m" (default: the rule's max_ttl, cut at the window's end).
    public var ttl: String?
    enum CodingKeys: String, CodingKey, CaseIterable { case audience, ttl }
    public init(audience: String, ttl: String?) {
        self.audience = audience
        self.ttl = ttl
    }
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        audience = try c.decode(String.self, forKey: .audience)
        ttl = try c.decodeIfPresent(String.self, forKey: .ttl)
    }
}

public struct JWTResponse: Codable, Sendable {
    public var token: String
    public var jti: String
    public var kid: String
    public var expiresAt: String
    enum CodingKeys: String, CodingKey { case token, jti, kid, expiresAt = "expires_at" }
    public init(token: String, jti: String, kid: String, expiresAt: String) {
        self.token = token
        self.jti = jti
        self.kid = kid
        self.expiresAt = expiresAt
    }
}

/// RFC 8037 OKP key (Ed25519).
public struct JWK: Codable, Sendable {
    public var kty: String
    public var crv: String
    public var x: String
    public var kid: String
    public var use: String
    public var alg: String
    public init(x: String, kid: String) {
        self.kty = "OKP"
        self.crv = "Ed25519"
        self.x = x
        self.kid = kid
        self.use = "sig"
        self.alg = "EdDSA"
    }
}

public struct JWKSResponse: Codable, Sendable {
    public var keys: [JWK]
    public init(keys: [JWK]) { self.keys = keys }
}

public struct JWKSRotateResponse: Codable, Sendable {
    public var kid: String
    public init(kid: String) { self.kid = kid }
}
