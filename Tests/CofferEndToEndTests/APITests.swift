import Foundation
import Testing

/// Every route through curl --unix-socket, an HTTP client no one here wrote.
@Suite(.serialized) struct APITests {
    @Test func everyRoute() throws {
        let d = try Daemon()
        try d.start()

        var (code, body) = try d.curl("GET", "/v1/sys/health")
        #expect(code == 200)
        #expect(json(body)["status"] as? String == "ok")
        #expect(json(body)["unlocked"] as? Bool == true)
        #expect(json(body)["version"] as? String == "0.1.0")

        (code, body) = try d.curl("GET", "/v1/sys/status")
        #expect(code == 200)
        #expect((json(body)["caller"] as? [String: Any])?["uid"] as? Int == 0)

        (code, body) = try d.curl("PUT", "/v1/secrets/data/app/key", body: #"{"value":"hello"}"#)
        #expect(code == 200)
        #expect(json(body)["version"] as? Int == 1)
        (code, body) = try d.curl("POST", "/v1/secrets/data/app/key", body: #"{"value_base64":"AAEC/w==","cas":1}"#)
        #expect(code == 200)
        #expect(json(body)["version"] as? Int == 2)

        (code, body) = try d.curl("GET", "/v1/secrets/data/app/key?version=1")
        #expect(code == 200)
        #expect(json(body)["value"] as? String == "hello")
        #expect(json(body)["current_version"] as? Int == 2)
        (code, body) = try d.curl("GET", "/v1/secrets/data/app/key")
        #expect(json(body)["value_base64"] as? String == "AAEC/w==")
        #expect(json(body)["value"] == nil)

        // raw form for pipelines
        let raw = try run("/usr/bin/curl", ["-s", "--unix-socket", d.socket, "-H", "Accept: application/octet-stream",
                                            "-D", d.dir + "/headers", "http://coffer/v1/secrets/data/app/key"])
        #expect(raw.stdout == [0, 1, 2, 255])
        let headers = (try? String(contentsOfFile: d.dir + "/headers", encoding: .utf8)) ?? ""
        #expect(headers.lowercased().contains("coffer-version: 2"))

        (code, body) = try d.curl("GET", "/v1/secrets/metadata/app/key")
        #expect(code == 200)
        #expect((json(body)["versions"] as? [Any])?.count == 2)

        (code, body) = try d.curl("GET", "/v1/secrets/list")
        #expect(code == 200 && json(body)["keys"] as? [String] == ["app/"])
        (code, body) = try d.curl("GET", "/v1/secrets/list/app")
        #expect(json(body)["keys"] as? [String] == ["key"])
        (code, body) = try d.curl("GET", "/v1/secrets/list/?limit=1")
        #expect(json(body)["keys"] as? [String] == ["app/"])

        (code, body) = try d.curl("DELETE", "/v1/secrets/data/app/key")
        #expect(code == 200)
        #expect((json(body)["versions"] as? [[String: Any]])?.last?["state"] as? String == "deleted")
        (code, body) = try d.curl("GET", "/v1/secrets/data/app/key")
        #expect(code == 404 && errorCode(body) == "not_found")
        (code, body) = try d.curl("POST", "/v1/secrets/undelete/app/key", body: #"{"versions":[2]}"#)
        #expect(code == 200)
        (code, body) = try d.curl("POST", "/v1/secrets/delete/app/key", body: #"{"versions":[1]}"#)
        #expect(code == 200)
        #expect((json(body)["versions"] as? [[String: Any]])?.first?["state"] as? String == "deleted")
        (code, body) = try d.curl("POST", "/v1/secrets/destroy/app/key", body: #"{"versions":[1]}"#)
        #expect(code == 200)
        #expect((json(body)["versions"] as? [[String: Any]])?.first?["state"] as? String == "destroyed")
        (code, body) = try d.curl("POST", "/v1/secrets/destroy/app/key")
        #expect(code == 200)
        #expect((json(body)["versions"] as? [[String: Any]])?.allSatisfy { $0["state"] as? String == "destroyed" } == true)

        // a path with characters that need percent-encoding is rejected, not normalised
        (code, body) = try d.curl("GET", "/v1/secrets/data/app%2F..%2Fkey")
        #expect(code == 422 && errorCode(body) == "invalid_path")
        // unknown route and wrong method
        (code, body) = try d.curl("GET", "/v1/nothing")
        #expect(code == 404 && errorCode(body) == "route_not_found")
        (code, body) = try d.curl("PATCH", "/v1/secrets/data/app/key")
        #expect(code == 405 && errorCode(body) == "method_not_allowed")
    }

    /// Limits come from the config file: a 1 MiB value round-trips when allowed, one
    /// byte more is 413; max_versions prunes the oldest versions.
    @Test func configuredLimits() throws {
        let d = try Daemon(config: "[limits]\nmax_value_bytes = 1048576\nmax_versions = 2")
        try d.start()
        var rng = SystemRandomNumberGenerator()
        let big = (0..<1_048_576).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let file = d.dir + "/big.bin"
        FileManager.default.createFile(atPath: file, contents: Data(big))
        var r = try d.coffer(["secret", "put", "big/one", "--file", file])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try d.coffer(["secret", "get", "big/one"]).stdout == big)
        FileManager.default.createFile(atPath: file, contents: Data(big + [1]))
        r = try d.coffer(["secret", "put", "big/one", "--file", file])
        #expect(r.status == 7)
        for i in 2...4 { _ = try d.coffer(["secret", "put", "big/one"], stdin: Array("v\(i)".utf8)) }
        let versions = (json(try d.curl("GET", "/v1/secrets/metadata/big/one").1)["versions"] as? [[String: Any]])?.compactMap { $0["version"] as? Int }
        #expect(versions == [3, 4])
        #expect(json(try d.curl("GET", "/v1/sys/status").1)["max_value_bytes"] as? Int == 1_048_576)
    }

    @Test func casConflictIs409AndChangesNothing() throws {
        let d = try Daemon()
        try d.start()
        _ = try d.curl("PUT", "/v1/secrets/data/c", body: #"{"value":"one","cas":0}"#)
        let before = try d.curl("GET", "/v1/secrets/metadata/c").1
        for cas in [0, 2, 99] {
            let (code, body) = try d.curl("PUT", "/v1/secrets/data/c", body: #"{"value":"two","cas":\#(cas)}"#)
            #expect(code == 409)
            #expect(errorCode(body) == "cas_mismatch")
        }
        #expect(try d.curl("GET", "/v1/secrets/metadata/c").1 == before)
        #expect(json(try d.curl("GET", "/v1/secrets/data/c").1)["value"] as? String == "one")
    }

    /// Each malformed request gets a 4xx JSON error, changes nothing, and the daemon keeps serving.
    @Test func badInputIs4xxJSON() throws {
        let d = try Daemon()
        try d.start()
        _ = try d.curl("PUT", "/v1/secrets/data/keep", body: #"{"value":"v"}"#)
        let before = try d.curl("GET", "/v1/secrets/metadata/keep").1
        let longPath = Array(repeating: "abcdefgh", count: 70).joined(separator: "/")
        let hugeValue = String(repeating: "A", count: 66_000)
        let cases: [(String, String, String?, Int, String)] = [
            ("PUT", "/v1/secrets/data/keep", "{", 400, "invalid_json"),
            ("PUT", "/v1/secrets/data/keep", "not json", 400, "invalid_json"),
            ("PUT", "/v1/secrets/data/keep", "[1,2]", 422, "invalid_parameter"),
            ("PUT", "/v1/secrets/data/keep", #"{"value":"a"}{"#, 400, "invalid_json"),
            ("PUT", "/v1/secrets/data/keep", "", 400, "invalid_json"),
            ("PUT", "/v1/secrets/data/keep", #"{"value":5}"#, 422, "invalid_parameter"),
            ("PUT", "/v1/secrets/data/keep", #"{"value":"a","cas":"1"}"#, 422, "invalid_parameter"),
            ("PUT", "/v1/secrets/data/keep", #"{"value":"a","cas":1.5}"#, 422, "invalid_parameter"),
            ("PUT", "/v1/secrets/data/keep", #"{"value":null}"#, 422, "invalid_value"),
            ("PUT", "/v1/secrets/data/keep", #"{"value":"a","extra":true}"#, 422, "unknown_field"),
            ("PUT", "/v1/secrets/data/keep", #"{"value":"a","value_base64":"YQ=="}"#, 422, "invalid_value"),
            ("PUT", "/v1/secrets/data/keep", #"{"value_base64":"***"}"#, 422, "invalid_value"),
            ("PUT", "/v1/secrets/data/keep", #"{}"#, 422, "invalid_value"),
            ("PUT", "/v1/secrets/data/keep", #"{"value":"\#(hugeValue)"}"#, 413, "value_too_large"),
            ("PUT", "/v1/secrets/data/keep", String(repeating: "[", count: 200_000), 413, "body_too_large"),
            ("PUT", "/v1/secrets/data/keep", String(repeating: "[", count: 20_000), 400, "invalid_json"),
            ("PUT", "/v1/secrets/data/keep", String(repeating: "[", count: 20_000) + String(repeating: "]", count: 20_000), 400, "invalid_json"),  // nesting beyond the parser's depth bound
            ("PUT", "/v1/secrets/data/keep", #"{"value":"a","cas":-1}"#, 422, "invalid_version"),
            ("POST", "/v1/secrets/delete/keep", #"{"versions":"1"}"#, 422, "invalid_parameter"),
            ("POST", "/v1/secrets/delete/keep", #"{"versions":[0]}"#, 422, "invalid_version"),
            ("POST", "/v1/secrets/delete/keep", #"{"versions":[-3]}"#, 422, "invalid_version"),
            ("POST", "/v1/secrets/delete/keep", #"{"version":[1]}"#, 422, "unknown_field"),
            ("GET", "/v1/secrets/data/a/../keep", nil, 422, "invalid_path"),
            ("GET", "/v1/secrets/data/a/./keep", nil, 422, "invalid_path"),
            ("GET", "/v1/secrets/data/..", nil, 422, "invalid_path"),
            ("GET", "/v1/secrets/data/a//keep", nil, 422, "invalid_path"),
            ("GET", "/v1/secrets/data/keep/", nil, 422, "invalid_path"),
            ("GET", "/v1/secrets/data/", nil, 422, "invalid_path"),
            ("GET", "/v1/secrets/data/a%00b", nil, 422, "invalid_path"),
            ("GET", "/v1/secrets/data/a%0Ab", nil, 422, "invalid_path"),
            ("GET", "/v1/secrets/data/a%1Bb", nil, 422, "invalid_path"),
            ("GET", "/v1/secrets/data/a%7Fb", nil, 422, "invalid_path"),
            ("GET", "/v1/secrets/data/a%ZZ", nil, 422, "invalid_path"),
            ("GET", "/v1/secrets/data/%C3%28", nil, 422, "invalid_path"),
            ("GET", "/v1/secrets/data/a%20b", nil, 422, "invalid_path"),
            ("GET", "/v1/secrets/data/" + longPath, nil, 422, "invalid_path"),
            ("GET", "/v1/secrets/data/keep?version=abc", nil, 422, "invalid_version"),
            ("GET", "/v1/secrets/data/keep?version=0", nil, 422, "invalid_version"),
            ("GET", "/v1/secrets/data/keep?version=-1", nil, 422, "invalid_version"),
            ("GET", "/v1/secrets/data/keep?version=1.0", nil, 422, "invalid_version"),
            ("GET", "/v1/secrets/data/keep?version=99999999999999999999999", nil, 422, "invalid_version"),
            ("GET", "/v1/secrets/data/keep?version=", nil, 422, "invalid_version"),
            ("GET", "/v1/secrets/data/keep?verison=1", nil, 422, "invalid_parameter"),
            ("GET", "/v1/secrets/list?limit=0", nil, 422, "invalid_parameter"),
            ("GET", "/v1/secrets/list?limit=lots", nil, 422, "invalid_parameter"),
            ("GET", "/v1/secrets/list?after=a/b", nil, 422, "invalid_parameter"),
            ("GET", "/v1/secrets/data/keep?version=7", nil, 404, "not_found"),
        ]
        for (method, path, body, status, code) in cases {
            let (got, text) = try d.curl(method, path, body: body, extra: ["--path-as-is"])
            #expect(got == status, "\(method) \(path.prefix(80)) \(body?.prefix(40) ?? ""): \(text.prefix(200))")
            #expect(errorCode(text) == code, "\(method) \(path.prefix(80)) \(body?.prefix(40) ?? ""): \(text.prefix(200))")
            let message = (json(text)["error"] as? [String: Any])?["message"] as? String
            #expect(message?.isEmpty == false)
        }
        #expect(try d.curl("GET", "/v1/secrets/metadata/keep").1 == before)
        #expect(try d.curl("GET", "/v1/sys/health").0 == 200)
        #expect(d.process?.isRunning == true)
    }
}
