public import CofferCore
import CofferCrypto
import Foundation

/// How a request was decided, as the trail records it. Open like an HTTP method:
/// the known values are constants, a value read back from the trail is kept as is.
public struct AuditDecision: RawRepresentable, Sendable, Hashable, Codable {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public static let allow = AuditDecision(rawValue: "allow")
    public static let deny = AuditDecision(rawValue: "deny")
    /// Not decided: refused before a decision (unknown route, bad request, bad token).
    public static let none = AuditDecision(rawValue: "none")
    public static let needsApproval = AuditDecision(rawValue: "needs_approval")
    public static let needsFreshLogin = AuditDecision(rawValue: "needs_fresh_login")
    public init(_ d: Decision) { self.init(rawValue: d.auditName) }
    public init(from decoder: any Decoder) throws { rawValue = try decoder.singleValueContainer().decode(String.self) }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(rawValue)
    }
}

/// Whether the request succeeded (status 2xx) or not.
public enum AuditOutcome: String, Sendable, Codable {
    case ok, error
    public init(status: Int) { self = (200..<300).contains(status) ? .ok : .error }
}

/// One value of an event's structured details.
public enum AuditValue: Sendable, Equatable, Codable {
    case text(String)
    case number(Int64)
    case list([String])

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let n = try? c.decode(Int64.self) { self = .number(n) } else if let t = try? c.decode(String.self) { self = .text(t) } else {
            self = .list(try c.decode([String].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .text(let t): try c.encode(t)
        case .number(let n): try c.encode(n)
        case .list(let l): try c.encode(l)
        }
    }
}

/// Structured details of an event (an elevation id, its approvers, the secret
/// versions injected): named values, encoded in key order, so a new kind of detail
/// is a new key, never a format change.
public struct AuditDetails: Sendable, Equatable, Codable {
    public private(set) var values: [String: AuditValue]

    public init(_ values: [String: AuditValue] = [:]) { self.values = values }

    public var isEmpty: Bool { values.isEmpty }

    public subscript(key: String) -> AuditValue? {
        get { values[key] }
        set { values[key] = newValue }
    }

    /// Well-known keys.
    public static let elevationID = "elevation_id"
    public static let approvers = "approvers"
    public static let versions = "versions"

    /// Key order; each entry is key, a type tag (t, n, l) and the value,
    /// length-prefixed: the bytes the hash covers and the row stores.
    public var canonicalBytes: [UInt8] {
        var fields: [[UInt8]] = []
        for key in values.keys.sorted() {
            fields.append(Array(key.utf8))
            switch values[key]! {
            case .text(let t): fields.append([0x74] + Array(t.utf8))
            case .number(let n): fields.append([0x6E] + Array(String(n).utf8))
            case .list(let l): fields.append([0x6C] + LengthPrefixed.encode("", l.map { Array($0.utf8) }))
            }
        }
        return LengthPrefixed.encode("coffer-audit-details-v1", fields)
    }

    /// The inverse of `canonicalBytes`; nil for bytes it did not write.
    public init?(canonical bytes: [UInt8]) {
        guard let fields = LengthPrefixed.decode("coffer-audit-details-v1", bytes), fields.count % 2 == 0 else { return nil }
        var values: [String: AuditValue] = [:]
        var i = 0
        while i < fields.count {
            guard let key = String(validating: fields[i], as: UTF8.self), let tag = fields[i + 1].first, values[key] == nil else { return nil }
            let body = Array(fields[i + 1].dropFirst())
            switch tag {
            case 0x74: guard let t = String(validating: body, as: UTF8.self) else { return nil }; values[key] = .text(t)
            case 0x6E: guard let t = String(validating: body, as: UTF8.self), let n = Int64(t), String(n) == t else { return nil }; values[key] = .number(n)
            case 0x6C:
                guard let items = LengthPrefixed.decode("", body) else { return nil }
                var l: [String] = []
                for it in items { guard let t = String(validating: it, as: UTF8.self) else { return nil }; l.append(t) }
                values[key] = .list(l)
            default: return nil
            }
            i += 2
        }
        self.values = values
        guard canonicalBytes == bytes else { return nil }  // one encoding per value
    }

    public init(from decoder: any Decoder) throws { values = try [String: AuditValue](from: decoder) }
    public func encode(to encoder: any Encoder) throws { try values.encode(to: encoder) }
}

/// One audit event: who asked for what, what was decided and why, what happened,
/// with structured details. Never a secret value or a token (invariant 4).
/// `prevHash` chains it to the event before; `hash` is BLAKE2b-256 over the
/// canonical encoding (`format` names which) of everything else.
///
/// This is the only definition: the wire and export JSON (`Codable`), the row
/// (`columns`, `init(row:)`, `rowValues`) and the hash all derive from it.
public struct AuditEvent: Sendable, Equatable {
    /// The canonical encoding's version. 1: events before details (old chains
    /// verify as written); 2: with details.
    public var format: Int
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
    public var decision: AuditDecision
    public var rule: String?
    public var outcome: AuditOutcome
    public var status: Int
    public var errorCode: String?
    public var details: AuditDetails
    public var prevHash: [UInt8]
    public var hash: [UInt8]
    /// The daemon's MAC over `hash` (AuditMAC); nil for events written before MACs.
    /// Not part of the hash: the chain stays verifiable without the daemon's key.
    public var mac: [UInt8]?
    /// The chain the event belongs to: the writing instance's id ("" for the one
    /// chain of a SQLite store, and for a trail begun before chains). Hashed from
    /// format 3 on (an event cannot be moved into another instance's chain).
    public var chain: String = ""
    /// Where the event stands in the global order of every chain (search and export
    /// across instances; the cursor of `after`). Hashed in a named chain (format 3):
    /// an event moved in the order, or out of search's reach, no longer verifies.
    public var position: Int64 = 0
    /// The event's place for `after` (its position; its seq where there is one chain).
    public var cursor: Int64 { position != 0 ? position : seq }

    public static let currentFormat = 2
    /// The format of events in a named chain (format 2 plus the chain's name and the
    /// event's position).
    public static let chainFormat = 3

    public init(format: Int = AuditEvent.currentFormat, seq: Int64, time: Int64, requestID: String, peerPID: Int32, peerUID: UInt32,
                peerUser: String?, tokenAccessor: String?, method: String, action: String, path: String?,
                decision: AuditDecision, rule: String?, outcome: AuditOutcome, status: Int, errorCode: String?,
                details: AuditDetails = AuditDetails(), prevHash: [UInt8] = [], hash: [UInt8] = [], mac: [UInt8]? = nil) {
        self.format = format
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
        self.details = details
        self.prevHash = prevHash
        self.hash = hash
        self.mac = mac
    }

    /// A draft as a request or job opens it: nothing decided, nothing done yet.
    public static func draft(time: Int64, requestID: String, peerPID: Int32, peerUID: UInt32, method: String, action: String,
                             path: String?, status: Int = 0, errorCode: String? = nil) -> AuditEvent {
        AuditEvent(seq: 0, time: time, requestID: requestID, peerPID: peerPID, peerUID: peerUID, peerUser: nil, tokenAccessor: nil,
                   method: method, action: action, path: path, decision: .none, rule: nil, outcome: AuditOutcome(status: status),
                   status: status, errorCode: errorCode)
    }

    public static let genesis = [UInt8](repeating: 0, count: 32)

    /// Domain label, then every field length-prefixed; optionals carry a presence
    /// byte. Format 1 is the encoding of events written before details (it has no
    /// details field: details on a format-1 event make its hash mismatch); format 2
    /// adds the details after the error code.
    public var canonicalBytes: [UInt8] {
        var fields: [[UInt8]] = []
        func text(_ s: String) { fields.append(Array(s.utf8)) }
        func optional(_ s: String?) { fields.append(s.map { [1] + Array($0.utf8) } ?? [0]) }
        text(String(seq)); text(String(time)); text(requestID); text(String(peerPID)); text(String(peerUID))
        optional(peerUser); optional(tokenAccessor); text(method); text(action); optional(path)
        text(decision.rawValue); optional(rule); text(outcome.rawValue); text(String(status)); optional(errorCode)
        if format != 1 || !details.isEmpty { fields.append(details.canonicalBytes) }
        fields.append(prevHash)
        if format == 3 { fields.append(Array(chain.utf8)); fields.append(Array(String(position).utf8)) }
        switch format {
        case 1: return LengthPrefixed.encode("coffer-audit-event-v1", fields)
        case 2: return LengthPrefixed.encode("coffer-audit-event-v2", fields)
        case 3: return LengthPrefixed.encode("coffer-audit-event-v3", fields)
        default: return LengthPrefixed.encode("coffer-audit-event-unknown-\(format)", fields)  // never verifies
        }
    }

    public func computedHash() -> [UInt8] { Hashing.blake2b(canonicalBytes, outputLength: 32) }
}

// MARK: the row

/// One column value of an event's row.
public enum AuditColumnValue: Sendable, Equatable {
    case integer(Int64)
    case text(String?)
    case blob([UInt8]?)
}

/// Reads a row's columns by index, in `AuditEvent.columns` order (GRDB in the
/// daemon, SQLite's C API in the CLI).
public protocol AuditRowReader {
    func integer(_ index: Int) -> Int64
    func text(_ index: Int) -> String?
    func blob(_ index: Int) -> [UInt8]?
}

extension AuditEvent {
    /// The audit_event table's columns, in the order of `rowValues` and `init(row:)`.
    public static let columns = [
        "seq", "time", "request_id", "peer_pid", "peer_uid", "peer_user", "token_accessor", "method", "action", "path",
        "decision", "rule", "outcome", "status", "error_code", "prev_hash", "hash", "mac", "format", "details", "chain",
    ]

    public var rowValues: [AuditColumnValue] {
        [.integer(seq), .integer(time), .text(requestID), .integer(Int64(peerPID)), .integer(Int64(peerUID)), .text(peerUser),
         .text(tokenAccessor), .text(method), .text(action), .text(path), .text(decision.rawValue), .text(rule),
         .text(outcome.rawValue), .integer(Int64(status)), .text(errorCode), .blob(prevHash), .blob(hash), .blob(mac),
         .integer(Int64(format)), .blob(details.isEmpty ? nil : details.canonicalBytes), .text(chain)]
    }

    /// The event a row holds. A row edited into something this type cannot hold
    /// (an unknown outcome, undecodable details) still loads, so that verification
    /// names it: its hash no longer matches.
    public init(row r: some AuditRowReader) {
        let details: AuditDetails
        if let raw = r.blob(19), !raw.isEmpty {
            details = AuditDetails(canonical: raw) ?? AuditDetails(["!undecodable": .text(Hex.encode(raw))])
        } else {
            details = AuditDetails()
        }
        let outcomeText = r.text(12) ?? ""
        self.init(format: Int(truncatingIfNeeded: r.integer(18)), seq: r.integer(0), time: r.integer(1), requestID: r.text(2) ?? "",
                  peerPID: Int32(truncatingIfNeeded: r.integer(3)), peerUID: UInt32(truncatingIfNeeded: r.integer(4)),
                  peerUser: r.text(5), tokenAccessor: r.text(6), method: r.text(7) ?? "", action: r.text(8) ?? "", path: r.text(9),
                  decision: AuditDecision(rawValue: r.text(10) ?? ""), rule: r.text(11), outcome: AuditOutcome(rawValue: outcomeText) ?? .error,
                  status: Int(truncatingIfNeeded: r.integer(13)), errorCode: r.text(14), details: details,
                  prevHash: r.blob(15) ?? [], hash: r.blob(16) ?? [], mac: r.blob(17))
        if AuditOutcome(rawValue: outcomeText) == nil { self.details["!outcome"] = .text(outcomeText) }
        chain = r.text(20) ?? ""
    }
}

// MARK: JSON (the wire form and the export)

extension AuditEvent: Codable {
    enum CodingKeys: String, CodingKey {
        case format, seq, time, requestID = "request_id", peer, tokenAccessor = "token_accessor", method, action, path, decision, rule,
             outcome, status, errorCode = "error_code", details, prevHash = "prev_hash", hash, instance, position
    }

    enum PeerKeys: String, CodingKey { case pid, uid, user }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(format, forKey: .format)
        try c.encode(seq, forKey: .seq)
        try c.encode(Timestamp.string(millis: time), forKey: .time)
        try c.encode(requestID, forKey: .requestID)
        var peer = c.nestedContainer(keyedBy: PeerKeys.self, forKey: .peer)
        try peer.encode(peerPID, forKey: .pid)
        try peer.encode(peerUID, forKey: .uid)
        try peer.encodeIfPresent(peerUser, forKey: .user)
        try c.encodeIfPresent(tokenAccessor, forKey: .tokenAccessor)
        try c.encode(method, forKey: .method)
        try c.encode(action, forKey: .action)
        try c.encodeIfPresent(path, forKey: .path)
        try c.encode(decision, forKey: .decision)
        try c.encodeIfPresent(rule, forKey: .rule)
        try c.encode(outcome, forKey: .outcome)
        try c.encode(status, forKey: .status)
        try c.encodeIfPresent(errorCode, forKey: .errorCode)
        if !details.isEmpty { try c.encode(details, forKey: .details) }
        try c.encode(Hex.encode(prevHash), forKey: .prevHash)
        try c.encode(Hex.encode(hash), forKey: .hash)
        if !chain.isEmpty { try c.encode(chain, forKey: .instance) }
        // (a named chain's hash covers it: always there; else only where it is not the seq)
        if !chain.isEmpty || (position != 0 && position != seq) { try c.encode(position, forKey: .position) }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let timeText = try c.decode(String.self, forKey: .time)
        guard let time = Timestamp.millis(timeText) else {
            throw DecodingError.dataCorruptedError(forKey: .time, in: c, debugDescription: "not a Coffer timestamp")
        }
        let peer = try c.nestedContainer(keyedBy: PeerKeys.self, forKey: .peer)
        func hex(_ k: CodingKeys) throws -> [UInt8] {
            guard let b = Hex.decode(try c.decode(String.self, forKey: k)) else {
                throw DecodingError.dataCorruptedError(forKey: k, in: c, debugDescription: "not hex")
            }
            return b
        }
        self.init(format: try c.decodeIfPresent(Int.self, forKey: .format) ?? 1, seq: try c.decode(Int64.self, forKey: .seq), time: time,
                  requestID: try c.decode(String.self, forKey: .requestID), peerPID: try peer.decode(Int32.self, forKey: .pid),
                  peerUID: try peer.decode(UInt32.self, forKey: .uid), peerUser: try peer.decodeIfPresent(String.self, forKey: .user),
                  tokenAccessor: try c.decodeIfPresent(String.self, forKey: .tokenAccessor), method: try c.decode(String.self, forKey: .method),
                  action: try c.decode(String.self, forKey: .action), path: try c.decodeIfPresent(String.self, forKey: .path),
                  decision: try c.decode(AuditDecision.self, forKey: .decision), rule: try c.decodeIfPresent(String.self, forKey: .rule),
                  outcome: try c.decode(AuditOutcome.self, forKey: .outcome), status: try c.decode(Int.self, forKey: .status),
                  errorCode: try c.decodeIfPresent(String.self, forKey: .errorCode),
                  details: try c.decodeIfPresent(AuditDetails.self, forKey: .details) ?? AuditDetails(),
                  prevHash: try hex(.prevHash), hash: try hex(.hash))
        chain = try c.decodeIfPresent(String.self, forKey: .instance) ?? ""
        position = try c.decodeIfPresent(Int64.self, forKey: .position) ?? 0
    }
}

/// A signed statement: "the chain up to `seq` has head `hash`".
public struct AuditCheckpoint: Sendable, Equatable {
    public var seq: Int64
    public var hash: [UInt8]
    public var time: Int64
    public var signature: [UInt8]
    /// The chain it signs ("": the one chain of a SQLite store); a named chain's
    /// checkpoints sign its name too.
    public var chain: String

    public init(seq: Int64, hash: [UInt8], time: Int64, signature: [UInt8], chain: String = "") {
        self.seq = seq
        self.hash = hash
        self.time = time
        self.signature = signature
        self.chain = chain
    }

    public static func message(seq: Int64, hash: [UInt8], time: Int64, chain: String = "") -> [UInt8] {
        if chain.isEmpty {
            return LengthPrefixed.encode("coffer-audit-checkpoint-v1", [Array(String(seq).utf8), hash, Array(String(time).utf8)])
        }
        return LengthPrefixed.encode("coffer-audit-checkpoint-v2", [Array(chain.utf8), Array(String(seq).utf8), hash, Array(String(time).utf8)])
    }

    public static func sign(seq: Int64, hash: [UInt8], time: Int64, chain: String = "", key: SecretBytes) throws(CryptoError) -> AuditCheckpoint {
        AuditCheckpoint(seq: seq, hash: hash, time: time,
                        signature: try Signing.sign(message(seq: seq, hash: hash, time: time, chain: chain), secretKey: key), chain: chain)
    }

    public func isValid(publicKey: [UInt8]) -> Bool {
        Signing.verify(signature, message: Self.message(seq: seq, hash: hash, time: time, chain: chain), publicKey: publicKey)
    }
}

/// The export's form: `seq` a number, hashes and signature in hex, time RFC 3339.
extension AuditCheckpoint: Codable {
    enum CodingKeys: String, CodingKey { case seq, hash, time, signature, instance }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(seq, forKey: .seq)
        try c.encode(Hex.encode(hash), forKey: .hash)
        try c.encode(Timestamp.string(millis: time), forKey: .time)
        try c.encode(Hex.encode(signature), forKey: .signature)
        if !chain.isEmpty { try c.encode(chain, forKey: .instance) }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        guard let hash = Hex.decode(try c.decode(String.self, forKey: .hash)), let sig = Hex.decode(try c.decode(String.self, forKey: .signature)),
              let time = Timestamp.millis(try c.decode(String.self, forKey: .time)) else {
            throw DecodingError.dataCorruptedError(forKey: .hash, in: c, debugDescription: "not a Coffer checkpoint")
        }
        self.init(seq: try c.decode(Int64.self, forKey: .seq), hash: hash, time: time, signature: sig,
                  chain: try c.decodeIfPresent(String.self, forKey: .instance) ?? "")
    }
}

/// The result of walking the chain.
public enum AuditVerdict: Sendable, Equatable {
    case ok(count: Int, headSeq: Int64, headHash: [UInt8], checkpoints: Int)
    case bad(seq: Int64, problem: String)
    /// Everything up to `signedThrough` verifies; the events after it are chained but
    /// not yet covered by a checkpoint (a live daemon signs them within
    /// checkpoint_seconds). Only when asked for (`allowUnsignedTail`): otherwise `.bad`.
    case unsignedTail(count: Int, signedThrough: Int64, headSeq: Int64, checkpoints: Int)
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
                              anchor: AuditAnchor? = nil, mac: AuditMAC? = nil, allowUnsignedTail: Bool = false) -> AuditVerdict {
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
        return verifyChain(events, cps, allowUnsignedTail: allowUnsignedTail)
    }

    /// Every chain in a trail of many instances, each on its own: `own` (this
    /// daemon's chain) against the anchor; another instance's chain by its links,
    /// hashes, MACs and signed checkpoints (its anchor is on its own host), its
    /// unsigned tail allowed (a live instance signs within checkpoint_seconds; one
    /// killed leaves a tail no one can sign). The first problem names its chain.
    /// `registered` (a shared database): every chain the database registered, and how
    /// far each was pruned; a chain missing whole, or its start without a prune, or one
    /// not registered, is named from any host.
    public static func verifyAll(events: [AuditEvent], checkpoints: [AuditCheckpoint], publicKey: [UInt8], own: String,
                                 anchor: AuditAnchor? = nil, mac: AuditMAC? = nil, registered: [String: Int64]? = nil,
                                 allowUnsignedTail: Bool = false) -> (verdict: AuditVerdict, instance: String?) {
        var byChain: [String: ([AuditEvent], [AuditCheckpoint])] = [own: ([], [])]
        for e in events { byChain[e.chain, default: ([], [])].0.append(e) }
        for c in checkpoints { byChain[c.chain, default: ([], [])].1.append(c) }
        if let registered {
            for name in Set(byChain.keys).union(registered.keys).sorted() {
                let (ev, cps) = byChain[name] ?? ([], [])
                let first = ev.map(\.seq).min()
                guard let pruned = registered[name] else {
                    if ev.isEmpty && cps.isEmpty { continue }  // (this instance, before its first event)
                    return (.bad(seq: first ?? cps.map(\.seq).min() ?? 0,
                                 problem: "the chain is not registered in the database (added behind cofferd, or its registry row removed)"), name)
                }
                if ev.isEmpty && cps.isEmpty {
                    return (.bad(seq: pruned + 1, problem: "the whole chain was deleted (it is registered, and nothing of it is left)"), name)
                }
                if let first, first - 1 > pruned {
                    return (.bad(seq: pruned + 1, problem: "events \(pruned + 1)...\(first - 1) were deleted without prune"), name)
                }
            }
        }
        let names = [own] + byChain.keys.filter { $0 != own }.sorted()
        var total = 0
        var cpTotal = 0
        var ownHead: (Int64, [UInt8]) = (0, AuditEvent.genesis)
        var ownUnsigned: AuditVerdict?
        for name in names {
            let (ev, cps) = byChain[name]!
            let mine = name == own
            let v = verify(events: ev.sorted { $0.seq < $1.seq }, checkpoints: cps, publicKey: publicKey, anchor: mine ? anchor : nil, mac: mac,
                           allowUnsignedTail: mine ? allowUnsignedTail : true)
            switch v {
            case .bad: return (v, names.count > 1 || !name.isEmpty ? name : nil)
            case .ok(let count, let head, let hash, let n):
                total += count; cpTotal += n
                if mine { ownHead = (head, hash) }
            case .unsignedTail(let count, _, let head, let n):
                total += count; cpTotal += n
                if mine { ownUnsigned = v; ownHead = (head, ev.last?.hash ?? AuditEvent.genesis) }
            }
        }
        if case .unsignedTail(_, let signed, let head, _)? = ownUnsigned {
            return (.unsignedTail(count: total, signedThrough: signed, headSeq: head, checkpoints: cpTotal), nil)
        }
        return (.ok(count: total, headSeq: ownHead.0, headHash: ownHead.1, checkpoints: cpTotal), nil)
    }

    static func verifyChain(_ events: [AuditEvent], _ cps: [AuditCheckpoint], allowUnsignedTail: Bool = false) -> AuditVerdict {
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
            if allowUnsignedTail { return .unsignedTail(count: events.count, signedThrough: lastSigned, headSeq: lastSeq, checkpoints: cps.count) }
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

