import CofferAudit
import CofferCore
import CofferCrypto
import Foundation
import Testing

/// The one audit event type: its versioned hash encoding, its details, its JSON.
@Suite struct AuditEventTests {
    /// Event 2 of the fixture database written by the previous release
    /// (Tests/CofferEndToEndTests/Fixtures/main-0.1): format 1 must hash as it did.
    static let releasedEvent = AuditEvent(
        format: 1, seq: 2, time: 1_795_955_023_800, requestID: "6144708fbf52dd59", peerPID: 875, peerUID: 0, peerUser: "root",
        tokenAccessor: nil, method: "PUT", action: "write", path: "ci/app/db", decision: .allow,
        rule: "role admin rule 1 (/tmp/fx/policy.toml:3: allow admin,audit,delete,destroy,list,read,write on **)",
        outcome: .ok, status: 200, errorCode: nil,
        prevHash: Hex.decode("BB65348D43E92A93C353D887800DA1E8F6AD4475EA23F33016D25C91155964B7")!,
        hash: Hex.decode("51D556AD5200D05CDC2FAB1FA462AA01D51443910621494C95ED94AB7D04894D")!)

    @Test func formatOneHashesAsTheReleaseWroteIt() {
        let e = Self.releasedEvent
        #expect(e.computedHash() == e.hash)
        // the same fields as format 2 (or with details) are another event
        var v2 = e
        v2.format = 2
        #expect(v2.computedHash() != e.hash)
        var withDetails = e
        withDetails.details[AuditDetails.approvers] = .list(["bob"])
        #expect(withDetails.computedHash() != e.hash)
    }

    @Test func detailsEncodeCanonicallyAndOnlyOneWay() throws {
        var d = AuditDetails()
        d[AuditDetails.elevationID] = .text("el_7")
        d[AuditDetails.approvers] = .list(["bob", "carol"])
        d["ttl_seconds"] = .number(900)
        let bytes = d.canonicalBytes
        #expect(AuditDetails(canonical: bytes) == d)
        // insertion order does not matter; a different value does
        let same = AuditDetails(["ttl_seconds": .number(900), "approvers": .list(["bob", "carol"]), "elevation_id": .text("el_7")])
        #expect(same.canonicalBytes == bytes)
        #expect(AuditDetails(["approvers": .list(["carol", "bob"])]).canonicalBytes != AuditDetails(["approvers": .list(["bob", "carol"])]).canonicalBytes)
        // bytes it did not write are refused: truncated, trailing, unknown tag, keys out of order
        #expect(AuditDetails(canonical: Array(bytes.dropLast())) == nil)
        #expect(AuditDetails(canonical: bytes + [0]) == nil)
        let label = "coffer-audit-details-v1"
        #expect(AuditDetails(canonical: LengthPrefixed.encode(label, [Array("k".utf8), [0x78] + Array("v".utf8)])) == nil)
        #expect(AuditDetails(canonical: LengthPrefixed.encode(label, [Array("b".utf8), [0x74], Array("a".utf8), [0x74]])) == nil)
        #expect(AuditDetails(canonical: LengthPrefixed.encode(label, [Array("n".utf8), [0x6E] + Array("007".utf8)])) == nil)
        #expect(AuditDetails(canonical: []) == nil)
    }

    @Test func jsonRoundTripsAndKeepsTheWireShape() throws {
        var e = Self.releasedEvent
        e.format = 2
        e.details[AuditDetails.versions] = .list(["ci/app/db@3"])
        e.details["count"] = .number(2)
        e.hash = e.computedHash()
        let data = try JSONEncoder().encode(e)
        let back = try JSONDecoder().decode(AuditEvent.self, from: data)
        #expect(back == e)
        #expect(back.computedHash() == e.hash)
        let o = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(o["time"] as? String == "2026-11-29T12:23:43.800Z")
        #expect((o["peer"] as? [String: Any])?["user"] as? String == "root")
        #expect(o["decision"] as? String == "allow" && o["outcome"] as? String == "ok" && o["format"] as? Int == 2)
        #expect((o["details"] as? [String: Any])?["count"] as? Int == 2)
        #expect(o["prev_hash"] as? String == "bb65348d43e92a93c353d887800da1e8f6ad4475ea23f33016d25c91155964b7")
        // an event without details has no details key, and the old JSON (no format) reads as format 1
        let old = try JSONEncoder().encode(Self.releasedEvent)
        var plain = try #require(try JSONSerialization.jsonObject(with: old) as? [String: Any])
        #expect(plain["details"] == nil)
        plain["format"] = nil
        let v1 = try JSONDecoder().decode(AuditEvent.self, from: JSONSerialization.data(withJSONObject: plain))
        #expect(v1 == Self.releasedEvent && v1.computedHash() == v1.hash)
    }

    @Test func checkpointSeqIsANumberInJSON() throws {
        let (_, s) = try Signing.keyPair()
        let cp = try AuditCheckpoint.sign(seq: 42, hash: Array(repeating: 7, count: 32), time: 1_795_955_023_800, key: s)
        let data = try JSONEncoder().encode(cp)
        let o = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(o["seq"] as? Int == 42)
        #expect(try JSONDecoder().decode(AuditCheckpoint.self, from: data) == cp)
    }

    @Test func timestampsParseExactlyWhatTheyPrint() {
        for ms: Int64 in [0, 999, 1_795_955_023_800, 951_782_400_000, 253_402_300_799_999] {
            #expect(Timestamp.millis(Timestamp.string(millis: ms)) == ms)
        }
        for bad in ["2026-02-30T00:00:00.000Z", "2026-11-29T24:00:00.000Z", "2026-11-29T10:00:00Z", "2026-11-29 10:00:00.000Z", "+026-11-29T10:00:00.000Z", ""] {
            #expect(Timestamp.millis(bad) == nil, "\(bad)")
        }
    }

    /// A row read back: every column in `columns` order; an edited row that the type
    /// cannot hold still loads and fails verification.
    @Test func rowsMapBothWays() {
        struct Row: AuditRowReader {
            let v: [AuditColumnValue]
            func integer(_ i: Int) -> Int64 { if case .integer(let n) = v[i] { return n }; return 0 }
            func text(_ i: Int) -> String? { if case .text(let t) = v[i] { return t }; return nil }
            func blob(_ i: Int) -> [UInt8]? { if case .blob(let b) = v[i] { return b }; return nil }
        }
        var e = Self.releasedEvent
        e.format = 2
        e.details["k"] = .text("v")
        e.mac = Array(repeating: 1, count: 32)
        #expect(e.rowValues.count == AuditEvent.columns.count)
        #expect(AuditEvent(row: Row(v: e.rowValues)) == e)
        var edited = e.rowValues
        edited[12] = .text("maybe")  // outcome
        let odd = AuditEvent(row: Row(v: edited))
        #expect(odd.computedHash() != AuditEvent(row: Row(v: e.rowValues)).computedHash())
    }
}
