public import CofferCore
public import CofferStore
import Foundation
import Logging

/// The keyring behind the gate: listing its keys and adding a new active data key.
/// (Root-key changes happen offline, `cofferd rekey`: the daemon holds one root.)
public final class KeysService: Sendable {
    let store: Store
    let keyring: Keyring
    let tokens: TokenService
    let errors: StoreErrorMapper
    let clock: any WallClock
    let logger: Logger

    init(store: Store, keyring: Keyring, tokens: TokenService, errors: StoreErrorMapper, clock: any WallClock, logger: Logger) {
        self.store = store
        self.keyring = keyring
        self.tokens = tokens
        self.errors = errors
        self.clock = clock
        self.logger = logger
    }

    /// Every key with its state (never its material), and the root key's id.
    public func list(_ g: Grant) throws(CofferError) -> (rootKeyID: String, keys: [KeyRecord]) {
        let keys = try errors.call { try store.keyRecords() }
        return (keyring.rootKeyID, keys.map { var k = $0; k.sealed = nil; return k })
    }

    /// A new active data key; the one before turns decrypt-only (what it sealed still opens).
    public func rotateDataKey(_ g: Grant) async throws(CofferError) -> KeyRecord {
        let record: KeyRecord
        g.ticket.update { $0.details["purpose"] = .text(KeyRecord.Purpose.data.rawValue) }
        do {
            record = try await keyring.addDataKey(store: store, guard: tokens.guardFor(g.principal), ticket: g.ticket, now: clock.nowMillis())
        } catch {
            throw errors.map(error)
        }
        logger.notice("new active data key", metadata: ["key.id": "\(record.keyID)", "peer.uid": "\(g.principal.uid)"])
        var r = record
        r.sealed = nil
        return r
    }
}
