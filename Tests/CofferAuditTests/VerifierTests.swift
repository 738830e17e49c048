import CofferAudit
import CofferCrypto
import Testing

/// Builds a valid chain of `n` events with checkpoints every `every` events and at the end.
func chain(_ n: Int, every: Int = 4, key: SecretBytes) throws -> ([AuditEvent], [AuditCheckpoint]) {
    var events: [AuditEvent] = []
    var cps: [AuditCheckpoint] = []
    var prev = AuditEvent.genesis
    for i in 1...n {
        var e = AuditEvent(seq: Int64(i), time: 1_700_000_000_000 + Int64(i), requestID: "r\(i)", peerPID: 100, peerUID: 1000,
                           peerUser: i % 2 == 0 ? "alice" : nil, tokenAccessor: i % 3 == 0 ? "acc_x" : nil, method: "GET",
                           action: "read", path: "ci/app/db", decision: i % 5 == 0 ? .deny : .allow, rule: "role r rule 1",
                           outcome: .ok, status: 200, errorCode: nil, prevHash: prev)
        e.hash = e.computedHash()
        prev = e.hash
        events.append(e)
        if i % every == 0 || i == n { cps.append(try AuditCheckpoint.sign(seq: e.seq, hash: e.hash, time: e.time, key: key)) }
    }
    return (events, cps)
}

@Suite struct VerifierTests {
    let key: SecretBytes
    let pub: [UInt8]

    init() throws {
        let (p, s) = try Signing.keyPair()
        key = s
        pub = p
    }

    func expectBad(_ v: AuditVerdict, _ seq: Int64, _ text: String, sourceLocation: SourceLocation = #_sourceLocation) {
        guard case .bad(let s, let problem) = v else {
            Issue.record("verified: \(v)", sourceLocation: sourceLocation)
            return
        }
        #expect(s == seq, "\(problem)", sourceLocation: sourceLocation)
        #expect(problem.contains(text), "\(problem)", sourceLocation: sourceLocation)
    }

    @Test func validChainVerifies() throws {
        let (e, c) = try chain(10, key: key)
        #expect(AuditVerifier.verify(events: e, checkpoints: c, publicKey: pub) == .ok(count: 10, headSeq: 10, headHash: e[9].hash, checkpoints: 3))
    }

    @Test func editingAnyFieldOfAnyEventIsCaughtAtItsSeq() throws {
        let (events, c) = try chain(9, key: key)
        let edits: [(inout AuditEvent) -> Void] = [
            { $0.time += 1 }, { $0.requestID = "x" }, { $0.peerPID = 1 }, { $0.peerUID = 0 }, { $0.peerUser = "mallory" },
            { $0.tokenAccessor = nil }, { $0.method = "PUT" }, { $0.action = "write" }, { $0.path = "other" },
            { $0.decision = .allow }, { $0.decision = .needsApproval }, { $0.rule = nil }, { $0.outcome = .error }, { $0.status = 403 },
            { $0.errorCode = "x" }, { $0.details[AuditDetails.elevationID] = .text("el_1") }, { $0.format = 1 }, { $0.format = 3 },
        ]
        for target in [0, 4, 8] {
            for edit in edits {
                var e = events
                let before = e[target]
                edit(&e[target])
                if e[target] == before { continue }  // that edit was a no-op for this event
                expectBad(AuditVerifier.verify(events: e, checkpoints: c, publicKey: pub), Int64(target + 1), "hash mismatch")
            }
        }
    }

    @Test func deletionSwapInsertTruncationAndSignatures() throws {
        let (e, c) = try chain(10, key: key)
        // delete event 5
        var d = e
        d.remove(at: 4)
        expectBad(AuditVerifier.verify(events: d, checkpoints: c, publicKey: pub), 5, "gap")
        // swap the contents of 6 and 7, keeping the seq column
        var s = e
        let six = s[5], seven = s[6]
        s[5] = seven; s[5].seq = 6
        s[6] = six; s[6].seq = 7
        expectBad(AuditVerifier.verify(events: s, checkpoints: c, publicKey: pub), 6, "chain broken")
        // insert a forged event (valid hash) between 3 and 4, renumbering the rest
        var f = Array(e[0..<3])
        var forged = e[3]
        forged.requestID = "forged"
        forged.hash = forged.computedHash()
        f.append(forged)
        for var later in e[3...] {
            later.seq += 1
            f.append(later)
        }
        expectBad(AuditVerifier.verify(events: f, checkpoints: c, publicKey: pub), 4, "checkpoint at seq 4 does not match")
        // a forged event appended after the head, with a valid hash: not signed
        var tail = e
        var extra = AuditEvent(seq: 11, time: 1, requestID: "forged", peerPID: 1, peerUID: 0, peerUser: nil, tokenAccessor: nil,
                               method: "GET", action: "read", path: nil, decision: .allow, rule: nil, outcome: .ok, status: 200,
                               errorCode: nil, prevHash: e[9].hash)
        extra.hash = extra.computedHash()
        tail.append(extra)
        expectBad(AuditVerifier.verify(events: tail, checkpoints: c, publicKey: pub), 11, "not signed")
        // truncate the tail: the last checkpoint covers events that are gone
        expectBad(AuditVerifier.verify(events: Array(e.prefix(7)), checkpoints: c, publicKey: pub), 8, "truncated")
        // replace a checkpoint's signature
        var bad = c
        bad[1].signature = try Signing.sign(Array("other".utf8), secretKey: key)
        expectBad(AuditVerifier.verify(events: e, checkpoints: bad, publicKey: pub), 8, "bad signature")
        // a checkpoint signed by another key
        let (_, otherKey) = try Signing.keyPair()
        var foreign = c
        foreign[0] = try AuditCheckpoint.sign(seq: c[0].seq, hash: c[0].hash, time: c[0].time, key: otherKey)
        expectBad(AuditVerifier.verify(events: e, checkpoints: foreign, publicKey: pub), 4, "bad signature")
        // missing checkpoints: the tail after the last remaining one is unsigned
        expectBad(AuditVerifier.verify(events: e, checkpoints: Array(c.prefix(1)), publicKey: pub), 5, "not signed")
        // reordering of rows read back out of order
        var r = e
        r.swapAt(2, 3)
        expectBad(AuditVerifier.verify(events: r, checkpoints: c, publicKey: pub), 3, "gap")
    }

    @Test func prunedChainVerifiesFromItsAnchor() throws {
        let (e, c) = try chain(12, key: key)
        let kept = Array(e.dropFirst(8))  // events 9...12, anchored by the checkpoint at 8
        #expect(AuditVerifier.verify(events: kept, checkpoints: Array(c.dropFirst(1)), publicKey: pub)
            == .ok(count: 4, headSeq: 12, headHash: e[11].hash, checkpoints: 2))
        expectBad(AuditVerifier.verify(events: Array(e.dropFirst(9)), checkpoints: c, publicKey: pub), 1, "no checkpoint anchors")
    }
}
