import CofferAudit
import CofferCrypto
import Testing

/// The head anchor and the daemon's MAC: what the public chain alone cannot show.
@Suite struct AnchorTests {
    let key: SecretBytes
    let pub: [UInt8]
    let mac: AuditMAC

    init() throws {
        let (p, s) = try Signing.keyPair()
        key = s
        pub = p
        mac = AuditMAC(key: try SecretBytes.random(count: 32))
    }

    func anchor(_ cp: AuditCheckpoint, pruned: Int64 = 0, legacy: Int64 = 0) throws -> AuditAnchor {
        try AuditAnchor(seq: cp.seq, hash: cp.hash, prunedThrough: pruned, legacyThrough: legacy, time: 1).signed(with: key)
    }

    func bad(_ v: AuditVerdict, _ text: String, sourceLocation: SourceLocation = #_sourceLocation) {
        guard case .bad(_, let problem) = v else { Issue.record("verified: \(v)", sourceLocation: sourceLocation); return }
        #expect(problem.contains(text), "\(problem)", sourceLocation: sourceLocation)
    }

    @Test func anchorRoundTripsAndRefusesForgery() throws {
        let (_, c) = try chain(8, key: key)
        let a = try anchor(c.last!, pruned: 3, legacy: 2)
        #expect(AuditAnchor(text: a.text) == a)
        #expect(a.isValid(publicKey: pub))
        var forged = a
        forged.prunedThrough = 7
        #expect(!forged.isValid(publicKey: pub))
        #expect(AuditAnchor(text: "coffer-audit-anchor-v1 seq=-1") == nil)
        #expect(AuditAnchor(text: a.text.replacingOccurrences(of: "seq=8", with: "seq=99999999999999999999")) == nil)
    }

    @Test func truncationBackToAnEarlierCheckpointIsReported() throws {
        let (e, c) = try chain(12, key: key)
        let a = try anchor(c.last!)
        #expect(AuditVerifier.verify(events: e, checkpoints: c, publicKey: pub, anchor: a) == .ok(count: 12, headSeq: 12, headHash: e[11].hash, checkpoints: 3))
        // the chain alone accepts the shortened trail; the anchor does not
        let short = Array(e.prefix(8)), shortCps = Array(c.prefix(2))
        #expect(AuditVerifier.verify(events: short, checkpoints: shortCps, publicKey: pub) == .ok(count: 8, headSeq: 8, headHash: e[7].hash, checkpoints: 2))
        bad(AuditVerifier.verify(events: short, checkpoints: shortCps, publicKey: pub, anchor: a), "truncated")
        bad(AuditVerifier.verify(events: [], checkpoints: [], publicKey: pub, anchor: a), "truncated")
    }

    @Test func deletionWithoutPruneIsReportedAndARealPruneIsNot() throws {
        let (e, c) = try chain(12, key: key)
        let cut = Array(e.dropFirst(4)), cutCps = c  // the checkpoint at 4 stays, as prune keeps it
        // the chain alone accepts events removed up to a checkpoint
        #expect(AuditVerifier.verify(events: cut, checkpoints: cutCps, publicKey: pub) == .ok(count: 8, headSeq: 12, headHash: e[11].hash, checkpoints: 3))
        bad(AuditVerifier.verify(events: cut, checkpoints: cutCps, publicKey: pub, anchor: try anchor(c.last!)), "without prune")
        #expect(AuditVerifier.verify(events: cut, checkpoints: cutCps, publicKey: pub, anchor: try anchor(c.last!, pruned: 4))
                == .ok(count: 8, headSeq: 12, headHash: e[11].hash, checkpoints: 3))
    }

    @Test func eventsWithoutTheDaemonsMACAreNamed() throws {
        var (e, c) = try chain(6, key: key)
        for i in e.indices { e[i].mac = mac.mac(e[i].hash) }
        let a = try anchor(c.last!)
        #expect(AuditVerifier.verify(events: e, checkpoints: c, publicKey: pub, anchor: a, mac: mac) == .ok(count: 6, headSeq: 6, headHash: e[5].hash, checkpoints: 2))
        var forged = e
        forged[4].decision = .allow
        forged[4].hash = forged[4].computedHash()
        forged[4].mac = nil
        forged[5].prevHash = forged[4].hash
        forged[5].hash = forged[5].computedHash()
        forged[5].mac = try SecretBytes.random(count: 32).copyToArray()
        guard case .bad(let seq, let problem) = AuditVerifier.verify(events: forged, checkpoints: c, publicKey: pub, anchor: a, mac: mac) else {
            Issue.record("forged events verified"); return
        }
        #expect(seq == 5 && problem.contains("not written by this cofferd"), "\(problem)")
        // events before the anchor's legacy mark predate MACs
        var legacy = e
        legacy[0].mac = nil
        legacy[1].mac = nil
        #expect(AuditVerifier.verify(events: legacy, checkpoints: c, publicKey: pub, anchor: try anchor(c.last!, legacy: 2), mac: mac)
                == .ok(count: 6, headSeq: 6, headHash: e[5].hash, checkpoints: 2))
    }
}
