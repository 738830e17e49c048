import CofferAudit
import CofferCore
import CofferCrypto
@testable import CofferEngine
import CofferStore
import Foundation
import GRDB
import Testing

/// The gate in the middle: every call leaves exactly one event with its decision,
/// background jobs act as system:* principals, and "audited first" work runs only
/// after its event is durable.
@Suite struct GateTests {
    func events(_ e: SecretEngine) async throws -> [AuditEvent] {
        var f = AuditFilter(); f.limit = 100_000; return try e.store.auditEvents(f)
    }

    @Test func everyCallLeavesExactlyOneEvent() async throws {
        let f = try Fixture()
        let e = try await f.engine()
        let p = try SecretPath("g/one")
        var before = try await events(e).count
        // allowed, denied, and allowed-but-failing, for a write, a read and a token call
        let cases: [(String, String, String?, () async throws -> Void)] = [
            ("write", "allow", nil, { _ = try await e.put(admin, p, value: bytes("v"), cas: nil) }),
            ("write", "deny", "permission_denied", { _ = try await e.put(outsider, p, value: bytes("v"), cas: nil) }),
            ("write", "allow", "cas_mismatch", { _ = try await e.put(admin, p, value: bytes("v"), cas: 7) }),
            ("read", "allow", nil, { _ = try await e.get(admin, p, version: nil) }),
            ("read", "deny", "permission_denied", { _ = try await e.get(outsider, p, version: nil) }),
            ("read", "allow", "not_found", { _ = try await e.get(admin, try SecretPath("g/none"), version: nil) }),
            ("token_list", "deny", "permission_denied", { _ = try await e.listTokens(outsider) }),
            ("delete", "allow", nil, { _ = try await e.change(admin, .delete, p, versions: []) }),
        ]
        for (action, decision, code, call) in cases {
            do { try await call() } catch {}
            let all = try await events(e)
            #expect(all.count == before + 1, "\(action) \(decision): \(all.count - before) events")
            let last = try #require(all.last)
            #expect(last.action == action && last.decision.rawValue == decision && last.errorCode == code,
                    "\(last.action) \(last.decision) \(last.errorCode ?? "-")")
            before = all.count
        }
    }

    /// A background job acts as system:reaper, through the gate, and its change
    /// leaves an event; time is moved with the clock the engine was given.
    @Test func theReaperLeavesASystemEvent() async throws {
        let f = try Fixture()
        let clock = ManualWallClock(1_800_000_000_000)
        let e = try await f.engine(clock: clock)
        let t = try await e.createToken(admin, .init(roles: ["admin"], ttlSeconds: 60, uses: nil, bindUID: nil, paths: [], name: "short"))
        #expect(try await e.reapTokens(retainSeconds: 7 * 86400) == 0, "nothing ended yet")
        clock.advance(seconds: 61)
        await expectCode(.tokenExpired) {
            _ = try await e.principal(pid: 1, uid: 1000, gid: 1000, token: t.token, ticket: e.ticket(for: admin))
        }
        clock.advance(seconds: 8 * 86400)
        #expect(try await e.reapTokens(retainSeconds: 7 * 86400) == 1)
        #expect(try e.store.token(accessor: t.record.accessor) == nil)
        let reaped = try await events(e).filter { $0.peerUser == "system:reaper" }
        #expect(reaped.count == 1)
        #expect(reaped.first?.action == "token_reap" && reaped.first?.decision == .allow && reaped.first?.status == 200)
        #expect(reaped.first?.time == clock.nowMillis())
    }

    /// Work that cannot be undone runs only once its event is durable.
    @Test func auditedFirstWorkRunsAfterItsEvent() async throws {
        let f = try Fixture()
        let e = try await f.engine()
        let p = try SecretPath("g/inject")
        let seen = try await e.gate.performAuditedFirst(admin, .read, p, named: "inject") { _ async throws(CofferError) -> Int in
            do { return try await events(e).filter { $0.action == "inject" && $0.path == "g/inject" }.count } catch {
                throw CofferError(.internal, "read failed")
            }
        }
        #expect(seen == 1, "the work ran before its event was committed")
        let all = try await events(e)
        #expect(all.filter { $0.action == "inject_done" && $0.status == 200 }.count == 1)
        // denied: no work, one event
        var ran = false
        await expectCode(.permissionDenied) {
            _ = try await e.gate.performAuditedFirst(outsider, .read, p, named: "inject") { _ async throws(CofferError) in ran = true }
        }
        #expect(!ran)
        #expect(try await events(e).filter { $0.action == "inject" && $0.decision == .deny }.count == 1)
    }
}
