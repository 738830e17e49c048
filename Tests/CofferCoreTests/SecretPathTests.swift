import CofferCore
import Testing

@Suite struct SecretPathTests {
    @Test(arguments: [
        "a", "ci/app/db-password", "A_b.c-d/0", "x/y/z/w", "a..b", ".hidden", "v1.2.3",
        String(repeating: "a", count: 128), Array(repeating: "s", count: 32).joined(separator: "/"),
    ])
    func valid(_ p: String) throws {
        #expect(try SecretPath(p).rawValue == p)
    }

    @Test(arguments: [
        "", "/a", "a/", "a//b", ".", "..", "a/./b", "a/../b", "../a", "a/..",
        "a b", "a\u{0}b", "a\nb", "a\tb", "a\u{7f}", "é", "a%2fb", "a?b", "a#b", "a\\b", "a:b",
        String(repeating: "a", count: 129), String(repeating: "ab/", count: 200) + "x",
        Array(repeating: "s", count: 33).joined(separator: "/"),
    ])
    func invalid(_ p: String) {
        #expect(throws: CofferError.self) { try SecretPath(p) }
        do { _ = try SecretPath(p) } catch { #expect(error.code == .invalidPath) }
    }

    @Test func prefixes() throws {
        #expect(try SecretPrefix("").childPrefix == "")
        #expect(try SecretPrefix("ci").childPrefix == "ci/")
        #expect(try SecretPrefix("ci/app/").childPrefix == "ci/app/")
        #expect(throws: CofferError.self) { try SecretPrefix("ci//") }
        #expect(try SecretPrefix("/").childPrefix == "")  // "/" names the root
        #expect(throws: CofferError.self) { try SecretPrefix("../x") }
    }

    @Test func percentDecoding() throws {
        #expect(try PercentDecoding.decode("a%2Fb") == "a/b")
        #expect(try PercentDecoding.decode("ci/app") == "ci/app")
        #expect(try PercentDecoding.decode("%41%62") == "Ab")
        for bad in ["%", "%4", "%zz", "%ff%fe"] {
            #expect(throws: CofferError.self) { try PercentDecoding.decode(Substring(bad)) }
        }
        #expect(PercentDecoding.encodePath("a b/c\u{0}") == "a%20b/c%00")
        #expect(try PercentDecoding.decode(Substring(PercentDecoding.encodePath("x/ü?#"))) == "x/ü?#")
    }

    @Test func hexRoundTrip() {
        #expect(Hex.encode([0, 1, 0xab, 0xff]) == "0001abff")
        #expect(Hex.decode("0001abff") == [0, 1, 0xab, 0xff])
        #expect(Hex.decode("abc") == nil)
        #expect(Hex.decode("zz") == nil)
    }
}

