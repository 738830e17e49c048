import CofferClient
import Foundation
import Testing

/// Findings 2, 4 and 10 of the security issue: a token only ever narrows what its
/// creator may do (deny rules included), its state is checked atomically with the
/// action, and answers are no oracle for what a caller may not see.
enum NarrowingFixture {
    static let denyGroup = "coffer-nosecret"
    /// Bound to ci-build and, by name, to the deny-only role.
    static let adva = TestUser.ensure("coffer-adva")
    /// Bound to ci-build; the deny-only role comes through a supplementary group.
    static let advb = TestUser.ensure("coffer-advb", supplementary: denyGroup)
    /// May write under w/ and list everything but hidden/; may not read.
    static let writer = TestUser.ensure("coffer-advw")

    static let policy = """
        [role.admin]
        [[role.admin.rule]]
        path = "**"
        capabilities = ["read", "list", "write", "delete", "destroy", "admin", "audit"]

        [role.ci-build]
        [[role.ci-build.rule]]
        path = "ci/**"
        capabilities = ["read", "list"]

        [role.no-secret]
        [[role.no-secret.rule]]
        path = "ci/secret/**"
        capabilities = ["read", "list"]
        effect = "deny"

        [role.writer]
        [[role.writer.rule]]
        path = "w/**"
        capabilities = ["write"]
        [[role.writer.rule]]
        path = "**"
        capabilities = ["list"]
        [[role.writer.rule]]
        path = "hidden/**"
        capabilities = ["list"]
        effect = "deny"

        [[bind]]
        subjects = ["uid:0"]
        roles = ["admin"]

        [[bind]]
        subjects = ["user:coffer-adva"]
        roles = ["ci-build", "no-secret"]

        [[bind]]
        subjects = ["user:coffer-advb"]
        roles = ["ci-build"]

        [[bind]]
        subjects = ["group:\(denyGroup)"]
        roles = ["no-secret"]

        [[bind]]
        subjects = ["user:coffer-advw"]
        roles = ["writer"]
        """

    static func daemon() throws -> Daemon {
        _ = adva; _ = advb; _ = writer
        let d = try Daemon(config: "", initialise: false, policy: policy)
        let r = try run(Bins.cofferd, ["init", "--config", d.configPath])
        guard r.status == 0 else { throw TestError.failed("init: \(r.stderr)") }
        try d.start()
        for p in ["ci/app/db", "ci/secret/key", "w/x", "hidden/h", "open/o"] {
            _ = try d.coffer(["secret", "put", p], stdin: Array("value-of-\(p)".utf8))
        }
        return d
    }

    /// Mints a token with a JSON body as `user` (nil: root); returns (status, token, accessor).
    static func mint(_ d: Daemon, _ body: String, as user: TestUser? = nil, token: String? = nil) throws -> (Int, String, String) {
        let headers = ["Content-Type: application/json"] + (token.map { ["X-Coffer-Token: \($0)"] } ?? [])
        let (code, text) = try d.curl("POST", "/v1/tokens", body: body, headers: headers, as: user)
        let o = json(text)
        return (code, o["token"] as? String ?? "", (o["info"] as? [String: Any])?["accessor"] as? String ?? "")
    }
}

@Suite(.serialized) struct NarrowingTests {
    /// The deny-wins bypass: a token minted by a user whom a deny rule covers (by name
    /// or through a group) is denied exactly where its creator is, for read and list.
    @Test func aTokenKeepsItsCreatorsDenyRules() throws {
        let d = try NarrowingFixture.daemon()
        for user in [NarrowingFixture.adva, NarrowingFixture.advb] {
            // the creator itself is denied
            #expect(try d.curl("GET", "/v1/secrets/data/ci/secret/key", as: user).0 == 403, "\(user.name)")
            let (code, token, _) = try NarrowingFixture.mint(d, #"{"roles":["ci-build"],"ttl":"5m"}"#, as: user)
            #expect(code == 200 && token.hasPrefix("cfr_"), "\(user.name) mints: \(code)")
            let h = ["X-Coffer-Token: \(token)"]
            let (readCode, readBody) = try d.curl("GET", "/v1/secrets/data/ci/secret/key", headers: h, as: user)
            #expect(readCode == 403, "\(user.name): the token read what its creator may not: \(readBody)")
            #expect(!readBody.contains("value-of-ci/secret/key"))
            #expect(readBody.contains("no-secret"), "the denial names the creator's rule: \(readBody)")
            #expect(try d.curl("GET", "/v1/secrets/list/ci/secret", headers: h, as: user).0 == 403)
            let (listCode, listBody) = try d.curl("GET", "/v1/secrets/list/ci", headers: h, as: user)
            #expect(listCode == 200 && !listBody.contains("secret"), "\(listBody)")
            // what the creator may do, the token still does
            let ok = try d.curl("GET", "/v1/secrets/data/ci/app/db", headers: h, as: user)
            #expect(ok.0 == 200 && ok.1.contains("value-of-ci/app/db"))
            // and a token made from that token inherits the same denial
            let (c2, child, _) = try NarrowingFixture.mint(d, #"{"roles":["ci-build"],"ttl":"1m"}"#, as: user, token: token)
            #expect(c2 == 200)
            #expect(try d.curl("GET", "/v1/secrets/data/ci/secret/key", headers: ["X-Coffer-Token: \(child)"], as: user).0 == 403)
        }
    }

    /// A path-limited admin token keeps none of admin's global powers.
    @Test func pathLimitedAdminTokensHaveNoGlobalPowers() throws {
        let d = try NarrowingFixture.daemon()
        let (_, other, otherAcc) = try NarrowingFixture.mint(d, #"{"roles":["ci-build"],"ttl":"5m"}"#)
        #expect(other.hasPrefix("cfr_"))
        let (code, limited, _) = try NarrowingFixture.mint(d, #"{"roles":["admin"],"paths":["ci/**"],"ttl":"5m"}"#)
        #expect(code == 200)
        let h = ["X-Coffer-Token: \(limited)"]
        #expect(try d.curl("GET", "/v1/secrets/data/ci/app/db", headers: h).0 == 200)
        #expect(try d.curl("GET", "/v1/secrets/data/open/o", headers: h).0 == 403)
        #expect(try d.curl("GET", "/v1/tokens", headers: h).0 == 403)
        #expect(try d.curl("GET", "/v1/audit/export", headers: h).0 == 403)
        #expect(try d.curl("GET", "/v1/audit/events", headers: h).0 == 403)
        #expect(try d.curl("POST", "/v1/tokens/\(otherAcc)/revoke", headers: h).0 == 403)
        #expect(try d.curl("GET", "/v1/secrets/data/ci/app/db", headers: ["X-Coffer-Token: \(other)"]).0 == 200, "not revoked")
        // nor can it mint a token wider than itself by claiming admin's reach
        let (c2, child, _) = try NarrowingFixture.mint(d, #"{"roles":["admin"],"ttl":"1m"}"#, token: limited)
        #expect(c2 == 200)
        #expect(try d.curl("GET", "/v1/secrets/data/open/o", headers: ["X-Coffer-Token: \(child)"]).0 == 403)
        #expect(try d.curl("GET", "/v1/tokens", headers: ["X-Coffer-Token: \(child)"]).0 == 403)
    }

    /// A child of a limited token never has more uses than its parent has left.
    @Test func aChildNeverOutusesItsParent() throws {
        let d = try NarrowingFixture.daemon()
        let (_, one, _) = try NarrowingFixture.mint(d, #"{"roles":["admin"],"uses":1,"ttl":"5m"}"#)
        // minting takes the parent's only use: nothing is left to give
        let (c1, _, _) = try NarrowingFixture.mint(d, #"{"roles":["ci-build"],"ttl":"1m"}"#, token: one)
        #expect(c1 == 403, "a uses-1 token minted a child")
        let (_, three, _) = try NarrowingFixture.mint(d, #"{"roles":["admin"],"uses":3,"ttl":"5m"}"#)
        #expect(try NarrowingFixture.mint(d, #"{"roles":["ci-build"],"uses":5,"ttl":"1m"}"#, token: three).0 == 403)
        let (c3, child, _) = try NarrowingFixture.mint(d, #"{"roles":["ci-build"],"ttl":"1m"}"#, token: three)
        #expect(c3 == 200)
        let (_, info) = try d.curl("GET", "/v1/tokens/self", headers: ["X-Coffer-Token: \(child)"])
        let left = (json(info)["token"] as? [String: Any])?["uses_left"] as? Int
        #expect(left != nil && left! <= 1, "child uses: \(info)")
    }

    /// The token is checked again when the body arrives: revoked between head and
    /// body, neither a child token nor a write happens, and the answer says why.
    @Test func aRevocationBetweenHeadAndBodyWins() throws {
        let d = try NarrowingFixture.daemon()
        for (method, target, body) in [("POST", "/v1/tokens", #"{"roles":["ci-build"],"ttl":"1m"}"#),
                                       ("PUT", "/v1/secrets/data/ci/raced", #"{"value":"raced"}"#)] {
            let (_, token, accessor) = try NarrowingFixture.mint(d, #"{"roles":["admin"],"ttl":"5m"}"#)
            let before = try sqlite(d.dbPath, "SELECT count(*) FROM token;")
            let fd = try RawSocket.connect(d.socket)
            defer { close(fd) }
            let head = "\(method) \(target) HTTP/1.1\r\nHost: coffer\r\nX-Coffer-Token: \(token)\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n"
            try RawSocket.send(fd, head)
            Thread.sleep(forTimeInterval: 0.3)
            #expect(try d.coffer(["token", "revoke", accessor]).status == 0)
            try RawSocket.send(fd, body)
            let answer = RawSocket.receive(fd)
            #expect(answer.hasPrefix("HTTP/1.1 401"), "\(method) after revocation: \(answer)")
            #expect(answer.contains("token_revoked"), "\(answer)")
            #expect(try sqlite(d.dbPath, "SELECT count(*) FROM token;") == before, "a child was minted under a revoked parent")
            #expect(try d.curl("GET", "/v1/secrets/metadata/ci/raced").0 == 404, "the write happened")
        }
    }

    /// A write-only caller learns nothing from check-and-set; a listing shows only
    /// what the caller may use; status is audited.
    @Test func noExistenceOracles() throws {
        let d = try NarrowingFixture.daemon()
        let w = NarrowingFixture.writer
        // cas on an existing secret: 403, not a 409 naming the version
        let (casCode, casBody) = try d.curl("PUT", "/v1/secrets/data/w/x", body: #"{"value":"v","cas":0}"#, as: w)
        #expect(casCode == 403, "\(casBody)")
        #expect(!casBody.contains("current version"), "\(casBody)")
        let (casMissing, _) = try d.curl("PUT", "/v1/secrets/data/w/new", body: #"{"value":"v","cas":0}"#, as: w)
        #expect(casMissing == 403, "the same answer whether or not the secret exists")
        #expect(try d.curl("PUT", "/v1/secrets/data/w/x", body: #"{"value":"v2"}"#, as: w).0 == 200, "plain writes still work")
        // listing the root: folders it may list, never hidden/
        let (listCode, listBody) = try d.curl("GET", "/v1/secrets/list/", as: w)
        #expect(listCode == 200)
        let keys = json(listBody)["keys"] as? [String] ?? []
        #expect(keys.contains("w/") && keys.contains("ci/") && !keys.contains("hidden/"), "\(keys)")
        // status leaves an event (a token can be probed there)
        let before = Int(try sqlite(d.dbPath, "SELECT count(*) FROM audit_event WHERE action = 'status';")) ?? -1
        #expect(try d.curl("GET", "/v1/sys/status").0 == 200)
        #expect(Int(try sqlite(d.dbPath, "SELECT count(*) FROM audit_event WHERE action = 'status';")) == before + 1)
        // an unparseable request leaves one too
        let fd = try RawSocket.connect(d.socket)
        try RawSocket.send(fd, "GARBAGE /x HTTP/9.9\r\n\r\n")
        let answer = RawSocket.receive(fd)
        close(fd)
        #expect(answer.hasPrefix("HTTP/1.1 400"), "\(answer)")
        var logged = false
        for _ in 0..<50 where !logged {
            logged = (Int(try sqlite(d.dbPath, "SELECT count(*) FROM audit_event WHERE action = 'malformed_request' AND status = 400;")) ?? 0) >= 1
            if !logged { Thread.sleep(forTimeInterval: 0.1) }
        }
        #expect(logged, "an HTTP-level 400 left no audit event")
    }
}

/// A raw Unix-socket client for requests sent in parts.
enum RawSocket {
    static func connect(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestError.failed("socket") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() where i < raw.count - 1 { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { close(fd); throw TestError.failed("connect \(path): \(errno)") }
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    static func send(_ fd: Int32, _ text: String) throws {
        let bytes = Array(text.utf8)
        let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard n == bytes.count else { throw TestError.failed("send") }
    }

    /// Reads until the peer closes, a full response with Content-Length arrived, or the timeout.
    static func receive(_ fd: Int32) -> String {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            out += buf[0..<n]
            let text = String(decoding: out, as: UTF8.self)
            if let r = text.range(of: "\r\n\r\n") {
                let head = text[..<r.lowerBound].lowercased()
                if let l = head.range(of: "content-length: ") {
                    let len = Int(head[l.upperBound...].prefix { $0.isNumber }) ?? 0
                    if text[r.upperBound...].utf8.count >= len { break }
                }
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
