import CofferCore
import Testing

@Suite struct SecretTemplateTests {
    @Test func rendersSecretsAndLiteralText() throws {
        let t = try SecretTemplate(parsing: "user = app\npassword = {{secret \"ci/db\"}}\nurl = x://{{ secret  \"ci/db\" }}@h {{ \"{{\" }}\n", name: "t")
        #expect(t.paths.map(\.rawValue) == ["ci/db"])
        let out = t.render { _ in Array("pw".utf8) }
        #expect(String(decoding: out, as: UTF8.self) == "user = app\npassword = pw\nurl = x://pw@h {{\n")
    }

    @Test func strictSyntaxNamesLineAndColumn() {
        let cases: [(String, String)] = [
            ("a\nb {{ env \"HOME\" }}", "t:2:3: unknown function 'env'"),
            ("{{ secret \"../x\" }}", "t:1:1: '../x' is not a secret path"),
            ("{{ secret \"a\" ", "t:1:1: expected }} to close"),
            ("{{ secret a }}", "t:1:11: expected a string"),
            ("{{ }}", "t:1:1: expected secret"),
            ("x }}", "t:1:3: }} without {{"),
            ("{{ \"a\\\"\" }}", "no escapes"),
            ("{{ secret \"a", "unclosed string"),
        ]
        for (text, message) in cases {
            do {
                _ = try SecretTemplate(parsing: text, name: "t")
                Issue.record("accepted \(text)")
            } catch {
                #expect(error.message.contains(message), "\(text): \(error.message)")
            }
        }
    }

    @Test func fileAndVariableNames() {
        for ok in ["db-password", ".npmrc", "a_b.c"] { #expect((try? RunNames.checkFileName(ok)) != nil) }
        for bad in ["", ".", "..", "a/b", "a b", String(repeating: "x", count: 129), "é"] { #expect((try? RunNames.checkFileName(bad)) == nil, "\(bad)") }
        for ok in ["TOKEN", "_x1"] { #expect((try? RunNames.checkVariable(ok)) != nil) }
        for bad in ["1A", "A-B", "", "A=B"] { #expect((try? RunNames.checkVariable(bad)) == nil, "\(bad)") }
        #expect(RunNames.variable(for: "db-password") == "DB_PASSWORD")
        #expect(RunNames.variable(for: ".npmrc") == "_NPMRC")
        #expect(RunNames.variable(for: "1x") == "_1X")
    }
}
