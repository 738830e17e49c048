import CofferCore
import Testing

/// OpenSSH wire formats: public keys as ssh-keygen writes them (vectors made with
/// OpenSSH 9.2's ssh-keygen), what is refused, certificates and KRLs. The signed
/// certificates and KRLs themselves are checked by ssh-keygen and sshd end to end
/// (CredentialTests).
@Suite struct SSHWireTests {
    static let ed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIADBYxmSZDpUQVhzyCUcjUEKD5goTEx1FiRwq7oh38p9 alice@host"
    static let ec = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBCqcRXNwbScnGQgbErxNIKUcRohUohqslOw5WY8V9usDhfxvZZwkA5Rv+h4KEXOdInTDE2Mk/ngcUayIj6DX/UE= "
    static let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC0FornZTmj2Hm21f+Y58WzPL1Ruaa8i/XEPv8T9UOSxMw/7CbSnrzEP5NDeGHGqA9ZLwpl3ipnByFPob4fyJu3eUVlvLyYWp4WdE7htZdsNc2eIxr9kiGUHKhhc0D6LO/n7e7GVCfpAr9GaOwealzGFiVqggBNKBOFzBbW3Lwt5daOHmb9SPmgncTTutw72ORsy0wij0VZS1TfH+NRlDa8OHkHCNLe6xCZlrsspMxMkW67M06BszmK46zhpf92G7uxXqBKR7okW1eKermd4F3OmVeJgkS/WdFflDUpPR/iO3P8Gu2F16Y8gCvBmv29dzdSsV4tScW5FYuLSRkJphSd r"
    static let ec384 = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBKlVHIOoeWAZzWwYtW+a41hjjTQakzliUeofvgqFgMHJ8owA6iCFdl6TDLYUqIjn+T6pQ0RIAQrWheazmy1cfXu97gvBc+uBat2p6z3v9DYjAS4cTRMmzeCYvA9uF+RMRA== root@vm"

    @Test func readsTheThreeTypesSigned() throws {
        let e = try SSHPublicKey.parse(Self.ed + "\n")
        #expect(e.kind == .ed25519 && e.bits == 256 && e.blob.count == 51 && e.fields.count == 36)
        let c = try SSHPublicKey.parse(Self.ec)
        #expect(c.kind == .ecdsaP256 && c.bits == 256)
        let r = try SSHPublicKey.parse(Self.rsa)
        #expect(r.kind == .rsa && r.bits == 2048)
        #expect(SSHPublicKey.Kind.rsa.certificateType == "ssh-rsa-cert-v01@openssh.com")
    }

    @Test(arguments: [
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n", "private key"),
        ("", "exactly one"), ("garbage", "not an OpenSSH public key line"), (ec384, "unsupported key type"),
        ("ssh-dss AAAAB3NzaC1kc3MAAACB x", "unsupported key type"),
        ("ssh-ed25519-cert-v01@openssh.com AAAA x", "certificate"),
        ("ssh-ed25519 !!!!", "base64"),
        ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIADBYxmSZDpUQVhzyCUcjUEKD5goTEx1FiRwq7oh38p9", "disagree"),
        (ed + "\n" + ed, "exactly one"),
        ("ssh-ed25519 " + String(repeating: "A", count: 17_000), "longer than"),
    ])
    func refuses(_ text: String, _ why: String) {
        do {
            _ = try SSHPublicKey.parse(text)
            Issue.record("accepted: \(text.prefix(40))")
        } catch {
            #expect(error.code == .invalidParameter && error.message.contains(why), "\(error.message)")
            #expect(!error.message.contains("AAAA"), "the error echoes the key")
        }
    }

    /// Blobs changed by one field: each is refused.
    @Test func refusesMalformedBlobs() throws {
        let good = try SSHPublicKey.parse(Self.ed).blob
        var long = good
        long.append(0)  // a byte after the end
        var short = good
        short.removeLast()
        var ec = try SSHPublicKey.parse(Self.ec).blob
        ec[ec.count - 1] ^= 1  // y no longer on the curve
        var compressed = try SSHPublicKey.parse(Self.ec).blob
        compressed[39] = 2  // not an uncompressed point
        for blob in [long, short, ec, compressed] {
            #expect(throws: CofferError.self) { try SSHPublicKey.fromBlob(blob) }
        }
        // an RSA key of 1024 bits and one with an even exponent
        func rsa(e: [UInt8], nBytes: Int) -> [UInt8] {
            var w = SSHWriter()
            w.string("ssh-rsa")
            w.string(e)
            w.string([0x00, 0xC1] + [UInt8](repeating: 0x55, count: nBytes - 3) + [0x01])
            return w.bytes
        }
        #expect(throws: CofferError.self) { try SSHPublicKey.fromBlob(rsa(e: [1, 0, 1], nBytes: 129)) }
        #expect(throws: CofferError.self) { try SSHPublicKey.fromBlob(rsa(e: [1, 0, 0], nBytes: 257)) }
        #expect(throws: CofferError.self) { try SSHPublicKey.fromBlob(rsa(e: [0x81], nBytes: 257)) }  // negative mpint
        #expect(try SSHPublicKey.fromBlob(rsa(e: [1, 0, 1], nBytes: 257)).bits == 2048)
    }

    @Test func fingerprintsAsSSHKeygen() throws {
        // ssh-keygen -l: 256 SHA256:6IcRDA4qV7lxPbwjFcLPfNobqY2r4SRK6wFX0KLNU1U alice@host (ED25519)
        let digest = [UInt8](hex: "e887110c0e2a57b9713dbc2315c2cf7cda1ba98dabe1244aeb0157d0a2cd5355")
        #expect(SSHPublicKey.fingerprint(sha256: digest) == "SHA256:6IcRDA4qV7lxPbwjFcLPfNobqY2r4SRK6wFX0KLNU1U")
    }

    @Test func certificatesReadBackWhatWasSigned() throws {
        let key = try SSHPublicKey.parse(Self.ec)
        let cert = SSHCertificate(key: key, serial: 0x0123_4567_89ab_cdef, keyID: "coffer:el_1:alice", principals: ["deploy", "ops"],
                                  validAfter: 100, validBefore: 200, criticalOptions: ["source-address": "10.0.0.0/8", "force-command": "/bin/true"],
                                  extensions: ["permit-pty", "permit-agent-forwarding", "permit-pty"])
        let ca = SSHCertificate.ed25519Blob([UInt8](repeating: 7, count: 32))
        let tbs = cert.toBeSigned(nonce: [UInt8](repeating: 1, count: 32), caKeyBlob: ca)
        let blob = SSHCertificate.assemble(toBeSigned: tbs, ed25519Signature: [UInt8](repeating: 9, count: 64))
        let read = try #require(SSHCertificate.read(blob))
        #expect(read.serial == 0x0123_4567_89ab_cdef && read.keyID == "coffer:el_1:alice" && read.signatureKey == ca)
        // options sorted by name, extensions sorted and once each
        let text = String(decoding: tbs, as: UTF8.self)
        #expect(text.range(of: "force-command")!.lowerBound < text.range(of: "source-address")!.lowerBound)
        #expect(text.range(of: "permit-agent-forwarding")!.lowerBound < text.range(of: "permit-pty")!.lowerBound)
        #expect(text.components(separatedBy: "permit-pty").count == 2)
        // truncated or extended blobs are not certificates
        #expect(SSHCertificate.read(Array(blob.dropLast())) == nil)
        #expect(SSHCertificate.read(blob + [0]) == nil)
        #expect(SSHCertificate.read(try SSHPublicKey.parse(Self.ed).blob) == nil)
    }

    @Test func krlLayout() {
        let ca = SSHCertificate.ed25519Blob([UInt8](repeating: 7, count: 32))
        let empty = SSHKRL.encode(version: 5, generatedAt: 6, caKeyBlob: ca, serials: [])
        #expect(Array(empty.prefix(8)) == Array("SSHKRL\n\0".utf8))
        #expect(empty.count == 8 + 4 + 8 + 8 + 8 + 4 + 4 + 6)  // header only, comment "coffer"
        let krl = SSHKRL.encode(version: 5, generatedAt: 6, caKeyBlob: ca, serials: [3, 1, 3, 0])
        // section type, then the certificates section: CA, reserved, serial list of 1 and 3 (sorted, once, never 0)
        #expect(krl[empty.count] == 1)
        var s = SSHReader(Array(krl.dropFirst(empty.count + 1)))
        let data = (try? s.string()) ?? []
        var d = SSHReader(data)
        #expect((try? d.string()) == ca)
        #expect((try? d.string()) == [])
        var tail = Array(data.dropFirst(4 + ca.count + 4))
        #expect(tail.removeFirst() == 0x20)
        var list = SSHReader(tail)
        let serials = (try? list.string()) ?? []
        var sr = SSHReader(serials)
        #expect((try? sr.u64()) == 1 && (try? sr.u64()) == 3 && sr.atEnd)
    }

    @Test(arguments: [("10.0.0.0/8", true), ("127.0.0.1/32,::1", true), ("192.0.2.7", true), ("2001:db8::/32", true),
                      ("10.0.0.0/33", false), ("::1/129", false), ("host.example", false), ("", false), ("1.2.3.4,", false), ("1.2.3.4/x", false)])
    func sourceAddresses(_ s: String, _ ok: Bool) {
        #expect(SSHCertificate.isValidSourceAddress(s) == ok, "\(s)")
    }
}

@Suite struct CredentialRuleTests {
    func rule(_ extra: String) throws -> ElevationRule? {
        let p = try Policy.parse("""
            [role.deploy]
            [[elevation]]
            role = "deploy"
            eligible = ["group:ops"]
            approvals = 0
            max_duration = "1h"
            \(extra)
            """, file: "p.toml")
        return p.elevations["deploy"]
    }

    @Test func readsSSHAndJWTGrants() throws {
        let r = try #require(try rule("""
            ssh = { principals = ["deploy", "deploy"], force_command = "/usr/bin/deploy --now", source_address = "10.0.0.0/8" }
            jwt = { audiences = ["deploy-api"], max_ttl = "5m" }
            """))
        #expect(r.ssh == SSHGrant(principals: ["deploy"], extensions: ["permit-pty"], forceCommand: "/usr/bin/deploy --now", sourceAddress: "10.0.0.0/8"))
        #expect(r.ssh?.criticalOptions == ["force-command": "/usr/bin/deploy --now", "source-address": "10.0.0.0/8"])
        #expect(r.jwt == JWTGrant(audiences: ["deploy-api"], maxTTLSeconds: 300))
        #expect(try rule("")?.ssh == nil)
    }

    @Test(arguments: [
        "ssh = { principals = [] }", "ssh = { principals = [\"a,b\"] }", "ssh = { principals = [\"a b\"] }",
        "ssh = { principals = [\"x\"], extensions = [\"permit-everything\"] }", "ssh = { principals = [\"x\"], source_address = \"nowhere\" }",
        "ssh = { principals = [\"x\"], force_command = \"\" }", "ssh = { principals = [\"x\"], shell = \"/bin/sh\" }", "ssh = \"deploy\"",
        "jwt = { audiences = [] }", "jwt = { audiences = [\"a\"], max_ttl = \"2d\" }", "jwt = { audiences = [\"a\"], max_ttl = \"1s\" }",
        "jwt = { audience = [\"a\"] }", "ssh = { principals = [\"x\"]", "ssh = { principals = [\"x\"], }",
    ])
    func refusesBadGrants(_ line: String) {
        #expect(throws: CofferError.self, "\(line)") { _ = try rule(line) }
    }

    @Test func inlineTablesAreOneLine() throws {
        let t = try TOML.parse("a = { x = 1, y = \"z\", n = { k = true } }\nb = {}\n")
        guard case .table(let a) = t["a"]?.value, case .table(let n) = a["n"]?.value else { Issue.record("no table"); return }
        #expect(a["x"]?.value == .integer(1) && a["y"]?.value == .string("z") && n["k"]?.value == .bool(true))
        #expect(t["b"]?.value == .table(TOMLTable(line: 2)))
        #expect(throws: TOMLError.self) { try TOML.parse("a = { x = 1,\n y = 2 }") }
        #expect(throws: TOMLError.self) { try TOML.parse("a = { x = 1, x = 2 }") }
        #expect(throws: TOMLError.self) { try TOML.parse("a = { x.y = 1 }") }
    }

    @Test func configTakesSSHAndJWT() throws {
        let c = try CofferConfig.parse("[ssh]\nkrl_path = \"/etc/ssh/revoked.krl\"\nsession_grace = \"10s\"\n[jwt]\nissuer = \"https://coffer.example\"\n", file: "c")
        #expect(c.resolvedKRLPath == "/etc/ssh/revoked.krl" && c.sshSessionGraceSeconds == 10 && c.jwtIssuer == "https://coffer.example")
        #expect(CofferConfig().resolvedKRLPath == "/var/lib/coffer/ssh_revoked.krl")
        for bad in ["[ssh]\nkrl_path = \"relative\"\n", "[ssh]\nsession_grace = \"1h\"\n", "[jwt]\nissuer = \"\"\n", "[ssh]\nkrl = \"/x\"\n"] {
            #expect(throws: CofferError.self, "\(bad)") { try CofferConfig.parse(bad, file: "c") }
        }
    }
}

extension Array where Element == UInt8 {
    init(hex: String) {
        let b = Array(hex.utf8)
        self = stride(from: 0, to: b.count, by: 2).map { UInt8(String(decoding: b[$0..<$0 + 2], as: UTF8.self), radix: 16)! }
    }
}
