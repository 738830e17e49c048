import CofferAudit
import CofferCore
@testable import CofferEngine
import Foundation
import Synchronization
import Testing

/// Checkpoints signed from many places at once (the writer thread when the batch
/// count is due, the timer, backup and verify) while events keep coming: the trail
/// must stay sound. Before the signers were serialised, one that had read the anchor
/// before another moved it marked the trail tampered ("the anchored checkpoint was
/// rewritten") — found by a 100k-write seeding in CI.
@Suite struct AuditCheckpointRaceTests {
    @Test func concurrentCheckpointsNeverMarkASoundTrailTampered() async throws {
        let f = try Fixture()
        f.config.auditCheckpointEvents = 5
        let e = try await f.engine()
        let stop = Synchronization.Atomic<Bool>(false)
        let signers = (0..<4).map { _ in
            Thread {
                while !stop.load(ordering: .relaxed) { _ = try? e.audit.checkpointNow() }
            }
        }
        for t in signers { t.start() }
        for i in 0..<400 {
            _ = try await e.put(admin, try SecretPath("race/k\(i % 20)"), value: try bytes("v\(i)"), cas: nil)
        }
        stop.store(true, ordering: .relaxed)
        #expect(e.audit.isTampered == false)
        _ = try e.audit.checkpointNow()
    }
}
