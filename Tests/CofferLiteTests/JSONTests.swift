import CofferCore
import Testing
@testable import CofferLite

@Suite struct JSONTests {
    func parse(_ s: String) throws -> JSON { try JSON.parse(Array(s.utf8)) }

    @Test func readsWhatCofferdWrites() throws {
        let v = try parse(#"{"id":"run_1","ttl_seconds":3600,"noswap":true,"mount_path":null,"secrets":[{"path":"a/b","version":2,"value_base64":"cnJy"}],"x":-1.5e3}"#)
        #expect(v["id"]?.string == "run_1")
        #expect(v["ttl_seconds"]?.int == 3600)
        #expect(v["noswap"]?.bool == true)
        #expect(v["mount_path"]?.isNull == true)
        #expect(v["missing"] == nil)
        #expect(v["secrets"]?.array?.first?["version"]?.int == 2)
        #expect(v["x"]?.int == nil)  // not an integer
    }

    @Test func stringEscapes() throws {
        #expect(try parse(#""a\"b\\c\/d\n\t\u00e9\ud83d\ude00""#).string == "a\"b\\c/d\n\té😀")
    }

    @Test func refusesWhatIsNotJSON() {
        for bad in ["", "{", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "{\"a\":1}x", "\"\\x\"", "\"\\ud800\"", "\"\\udc00x\"", "tru", "nul",
                    "{\"a\":1,\"a\":2}", "\"a\u{01}b\"", "-", "1.2.3e", "\"\\u12\""] {
            #expect(throws: JSON.ParseError.self, "\(bad)") { try parse(bad) }
        }
        // invalid UTF-8 in a string
        #expect(throws: JSON.ParseError.self) { try JSON.parse([0x22, 0xFF, 0x22]) }
        // nesting is bounded (no stack exhaustion from a hostile peer)
        #expect(throws: JSON.ParseError.self) { try parse(String(repeating: "[", count: 100_000)) }
        #expect(throws: Never.self) { try parse(String(repeating: "[", count: 60) + String(repeating: "]", count: 60)) }
    }

    @Test func writesAsJSONEncoderDoes() throws {
        let v = JSON.object([("b", .array([])), ("a", .string("x/\"y\"\n\u{01}")), ("n", .int(-3)), ("o", .object([("k", .bool(false)), ("z", .null)]))])
        #expect(v.text == #"{"b":[],"a":"x/\"y\"\n\u0001","n":-3,"o":{"k":false,"z":null}}"#)
        #expect(v.pretty == """
            {
              "b" : [],
              "a" : "x/\\"y\\"\\n\\u0001",
              "n" : -3,
              "o" : {
                "k" : false,
                "z" : null
              }
            }
            """)
        // and reads back to the same tree
        #expect(try JSON.parse(Array(v.text.utf8)) == v)
        #expect(try JSON.parse(Array(v.pretty.utf8)) == v)
    }

    /// RFC 4648, section 10.
    @Test func base64TestVectors() {
        let vectors = ["": "", "f": "Zg==", "fo": "Zm8=", "foo": "Zm9v", "foob": "Zm9vYg==", "fooba": "Zm9vYmE=", "foobar": "Zm9vYmFy"]
        for (plain, encoded) in vectors {
            #expect(Base64.decode(encoded) == Array(plain.utf8), "\(encoded)")
            #expect(Base64.encode(Array(plain.utf8)) == encoded, "\(plain)")
        }
        #expect(Base64.decode("/+8A") == [0xFF, 0xEF, 0x00])
        for bad in ["Zg=", "Zm9v=", "Z", "Zm9vY", "Zg==Zg==", "Zm 9v", "Zm9v\n", "Z===", "=Zm9"] {
            #expect(Base64.decode(bad) == nil, "\(bad)")
        }
    }
}
