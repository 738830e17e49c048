public import CofferCore
import CofferCrypto
import Foundation

/// One audit event: who asked for what, what was decided and why, what happened.
/// Never a secret value or a token (invariant 4). `prevHash` chains it to the
/// event before; `hash` is BLAKE2b-256 over the canonical encoding of everything else.
public struct AuditEvent: Sendable, Equatable {
    public var seq: Int64
    public var time: Int64  // ms since the epoch
    public var requestID: String
    public var peerPID: Int32
    public var peerUID: UInt32
    public var peerUser: String?
    public var tokenAccessor: String?
    public var method: String
    public var action: String
    public var path: String?
    public var decision: String  // allow, deny, none
    public var rule: String?
    public var outcome: String  // ok, error
    public var status: Int
    public var errorCode: String?
    public var prevHash: [UInt8]
    public var hash: [UInt8]
    /// The daemon's MAC over `hash` (AuditMAC); nil for events written before MACs.
    /// Not part of the hash: the chain stays verifiable without the daemon's key.
    public var mac: [UInt8]?

    public init(seq: Int64, time: Int64, requestID: String, peerPID: Int32, peerUID: UInt32, peerUser: String?,
                tokenAccessor: String?, method: String, action: String, path: String?, decision: String, rule: String?,
                outcome: String, status: Int, errorCode: String?, prevHash: [UInt8] = [], hash: [UInt8] = [], mac: [UInt8]? = nil) {
        self.seq = seq
        self.time = time
        self.requestID = requestID
        self.peerPID = peerPID
        self.peerUID = peerUID
        self.peerUser = peerUser
        self.tokenAccessor = tokenAccessor
        self.method = method
        self.action = action
        self.path = path
        self.decision = decision
        self.rule = rule
        self.outcome = outcome
        self.status = status
        self.errorCode = errorCode
        self.prevHash = prevHash
        self.hash = hash
        self.mac = mac
    }

    public static let genesis = [UInt8](repeating: 0, count: 32)

    /// Domain label, then every field length-prefixed; optionals carry a presence byte.
    public var canonicalBytes: [UInt8] {
        var fields: [[UInt8]] = []
        func text(_ s: String) { fields.append(Array(s.utf8)) }
        func optional(_ s: String?) { fields.append(s.map { [1] + Array($0.utf8) } ?? [0]) }
        text(String(seq)); text(String(time)); text(requestID); text(String(peerPID)); text(String(peerUID))
        optional(peerUser); optional(tokenAccessor); text(method); text(action); optional(path)
        text(decision); optional(rule); text(outcome); text(String(status)); optional(errorCode)
        fields.append(prevHash)
        return LengthPrefixed.encode("coffer-audit-event-v1", fields)
    }

    public func computedHash() -> [UInt8] { Hashing.blake2b(canonicalBytes, outputLength: 32) }
}

/// A signed statement: "the chain up to `seq` has head `hash`".
public struct AuditCheckpoint: Sendable, Equatable {
    public var seq: Int64
    public var hash: [UInt8]
    public var time: Int64
    public var signature: [UInt8]

    public init(seq: Int64, hash: [UInt8], time: Int64, signature: [UInt8]) {
        self.seq = seq
        self.hash = hash
        self.time = time
        self.signature = signature
    }

    public static func message(seq: Int64, hash: [UInt8], time: Int64) -> [UInt8] {
        LengthPrefixed.encode("coffer-audit-checkpoint-v1", [Array(String(seq).utf8), hash, Array(String(time).utf8)])
    }

    public static func sign(seq: Int64, hash: [UInt8], time: Int64, key: SecretBytes) throws(CryptoError) -> AuditCheckpoint {
        AuditCheckpoint(seq: seq, hash: hash, time: time, signature: try Signing.sign(message(seq: seq, hash: hash, time: time), secretKey: key))
    }

    public func isValid(publicKey: [UInt8]) -> Bool {
        Signing.verify(signature, message: Self.message(seq: seq, hash: hash, time: time), publicKey: publicKey)
    }
}

/// The result of walking the chain.
public enum AuditVerdict: Sendable, Equatable {
    case ok(count: Int, headSeq: Int64, headHash: [UInt8], checkpoints: Int)
    case bad(seq: Int64, problem: String)
}

public enum AuditVerifier {
    /// Walks events (ascending seq) against checkpoints. Reports the first bad
    /// sequence number: a gap, a reordering, an edited event, a checkpoint that does
    /// not match or is not validly signed, a truncated tail, or unsigned events after
    /// the last checkpoint.
    ///
    /// With an `anchor` (the signed head anchor kept beside the database) it also
    /// reports a trail truncated back before the anchored checkpoint, events deleted
    /// without prune, and emptied tables. With `mac` (only the daemon holds the key)
    /// every event after the anchor's `legacyThrough` must carry a valid MAC, so a
    /// rewritten or forged event is named even where the chain was recomputed.
    public static func verify(events: [AuditEvent], checkpoints: [AuditCheckpoint], publicKey: [UInt8],
                              anchor: AuditAnchor? = nil, mac: AuditMAC? = nil) -> AuditVerdict {
        let cps = checkpoints.sorted { $0.seq < $1.seq }
        for cp in cps where !cp.isValid(publicKey: publicKey) {
            return .bad(seq: cp.seq, problem: "the checkpoint at seq \(cp.seq) has a bad signature")
        }
        if let anchor {
            guard anchor.isValid(publicKey: publicKey) else {
                return .bad(seq: anchor.seq, problem: "the head anchor has a bad signature")
            }
            if anchor.seq > 0 {
                guard let cp = cps.first(where: { $0.seq == anchor.seq }) else {
                    return .bad(seq: anchor.seq, problem: "truncated: the head anchor names the checkpoint at seq \(anchor.seq), which is missing")
                }
                guard cp.hash == anchor.hash else {
                    return .bad(seq: anchor.seq, problem: "the checkpoint at seq \(anchor.seq) differs from the head anchor (the log was rewritten)")
                }
            }
            if let first = events.first, first.seq - 1 > anchor.prunedThrough {
                return .bad(seq: anchor.prunedThrough + 1, problem: "events \(anchor.prunedThrough + 1)...\(first.seq - 1) were deleted without prune")
            }
        }
        if let mac {
            let legacy = anchor?.legacyThrough ?? 0
            for e in events where e.seq > legacy && !mac.isValid(e) {
                return .bad(seq: e.seq, problem: "event \(e.seq) was not written by this cofferd (its MAC does not match)")
            }
        }
        return verifyChain(events, cps)
    }

    static func verifyChain(_ events: [AuditEvent], _ cps: [AuditCheckpoint]) -> AuditVerdict {
        var expected: Int64 = 1
        var running = AuditEvent.genesis
        var lastSigned: Int64 = 0
        if let first = events.first, first.seq != 1 {
            // a pruned log starts after a retained, signed checkpoint
            guard let anchor = cps.first(where: { $0.seq == first.seq - 1 }) else {
                return .bad(seq: first.seq > 1 ? 1 : first.seq, problem: "events before seq \(first.seq) are missing and no checkpoint anchors the chain")
            }
            expected = first.seq
            running = anchor.hash
            lastSigned = anchor.seq
        } else if events.isEmpty, let last = cps.last, last.seq > 0 {
            return .bad(seq: 1, problem: "truncated: the checkpoint at seq \(last.seq) covers events that are missing")
        }
        var cpIndex = cps.firstIndex { $0.seq >= expected } ?? cps.endIndex
        for e in events {
            if e.seq > expected { return .bad(seq: expected, problem: "gap: event \(expected) is missing") }
            if e.seq < expected { return .bad(seq: e.seq, problem: "reordering: seq \(e.seq) follows \(expected - 1)") }
            if e.prevHash != running {
                return .bad(seq: e.seq, problem: "chain broken: the previous-hash of event \(e.seq) does not match (events were removed, moved or swapped)")
            }
            if e.computedHash() != e.hash { return .bad(seq: e.seq, problem: "hash mismatch: event \(e.seq) was edited") }
            running = e.hash
            expected += 1
            while cpIndex < cps.endIndex, cps[cpIndex].seq == e.seq {
                guard cps[cpIndex].hash == running else {
                    return .bad(seq: e.seq, problem: "the checkpoint at seq \(e.seq) does not match the chain (the log was rewritten)")
                }
                lastSigned = e.seq
                cpIndex += 1
            }
        }
        let lastSeq = expected - 1
        if cpIndex < cps.endIndex {
            return .bad(seq: lastSeq + 1, problem: "truncated: the checkpoint at seq \(cps[cpIndex].seq) covers events after \(lastSeq) that are missing")
        }
        if lastSigned < lastSeq {
            return .bad(seq: lastSigned + 1, problem: "events after the last checkpoint (seq \(lastSigned)) are not signed")
        }
        return .ok(count: events.count, headSeq: lastSeq, headHash: running, checkpoints: cps.count)
    }
}

/// The audit public key file: `coffer-audit-pubkey-v1:<64 hex digits>`.
public enum AuditKeyFile {
    public static func encode(_ pub: [UInt8]) -> String { "coffer-audit-pubkey-v1:" + Hex.encode(pub) + "\n" }

    public static func decode(_ text: String) -> [UInt8]? {
        let t = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard t.hasPrefix("coffer-audit-pubkey-v1:"), let k = Hex.decode(String(t.dropFirst(23))), k.count == 32 else { return nil }
        return k
    }
}

