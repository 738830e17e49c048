public import CofferAuth
public import CofferCore
import CofferCrypto
import Foundation
import Logging
import Synchronization

/// Sign-in through PAM (`coffer login`): the caller's own account (the name comes
/// from the peer uid, never from the request), the PAM conversation relayed prompt
/// by prompt, a session token on success. Every failure — a wrong password, a wrong
/// code, an expired or locked account, Coffer's own lockout — gives the same answer
/// after the same delay; the reason goes to the audit trail only.
public final class LoginService: Sendable {
    public struct Settings: Sendable {
        public var service: String
        public var sessionTTLSeconds: Int
        public var maxFailures: Int
        public var failureWindowSeconds: Int
        public var lockoutSeconds: Int
        public var failureMillis: Int
        public var promptTimeoutSeconds: Int

        public init(config c: CofferConfig) {
            service = c.pamService
            sessionTTLSeconds = c.sessionTTLSeconds
            maxFailures = c.maxLoginFailures
            failureWindowSeconds = c.failureWindowSeconds
            lockoutSeconds = c.lockoutSeconds
            failureMillis = c.loginFailureMillis
            promptTimeoutSeconds = c.loginPromptTimeoutSeconds
        }
    }

    /// What a sign-in step answers: more prompts, or the session.
    public enum Step: Sendable {
        case prompts(id: String, [PAMPrompt])
        case signedIn(TokenService.Created)
    }

    /// One sign-in in progress: the PAM thread on one side, requests on the other.
    final class Relay: Sendable {
        enum Event: Sendable {
            case prompts([PAMPrompt])
            case done(PAMOutcome)
        }

        struct State {
            var queue: [Event] = []
            var waiter: CheckedContinuation<Event, Never>?
            var answers: [String]?
            var asked: [PAMPrompt] = []
            var busy = false
            var lastAnswerAt: Int64
            var finished = false
        }

        let id: String
        let uid: UInt32
        let user: String
        let startedAt: Int64
        let state: Mutex<State>
        let answered = DispatchSemaphore(value: 0)

        init(id: String, uid: UInt32, user: String, now: Int64) {
            self.id = id
            self.uid = uid
            self.user = user
            self.startedAt = now
            self.state = Mutex(State(lastAnswerAt: now))
        }

        /// From the PAM side (or the locked stand-in).
        func post(_ e: Event) {
            let waiter: CheckedContinuation<Event, Never>? = state.withLock { s in
                if case .done = e { s.finished = true }
                if let w = s.waiter {
                    s.waiter = nil
                    return w
                }
                s.queue.append(e)
                return nil
            }
            waiter?.resume(returning: e)
        }

        /// The next step, waiting for it off any thread.
        func next() async -> Event {
            await withCheckedContinuation { (c: CheckedContinuation<Event, Never>) in
                let ready: Event? = state.withLock { s in
                    if !s.queue.isEmpty { return s.queue.removeFirst() }
                    s.waiter = c
                    return nil
                }
                if let ready { c.resume(returning: ready) }
            }
        }

        /// On the PAM thread: the client's answers, or nil after the timeout.
        func ask(_ prompts: [PAMPrompt], timeout: Int) -> [String]? {
            state.withLock { $0.asked = prompts }
            post(.prompts(prompts))
            guard answered.wait(timeout: .now() + .seconds(timeout)) == .success else { return nil }
            return state.withLock { s in
                defer { s.answers = nil }
                return s.answers
            }
        }
    }

    let settings: Settings
    let tokens: TokenService
    let clock: any WallClock
    let logger: Logger
    let relays = Mutex<[String: Relay]>([:])
    /// Failure times per "uid:N" and "user:NAME", and lockouts until a time.
    let failures = Mutex<(times: [String: [Int64]], lockedUntil: [String: Int64])>(([:], [:]))
    static let maxInProgress = 256
    static let maxInProgressPerUID = 4

    init(settings: Settings, tokens: TokenService, clock: any WallClock, logger: Logger) {
        self.settings = settings
        self.tokens = tokens
        self.clock = clock
        self.logger = logger
    }

    /// Starts a sign-in for the caller's own account.
    public func start(_ g: Grant) async throws(CofferError) -> Step {
        let p = g.principal
        guard let user = p.userName else { throw CofferError(.permissionDenied, "uid \(p.uid) has no local account to sign in with") }
        let now = clock.nowMillis()
        let relay = Relay(id: "lg_" + Hex.encode(Hashing.randomBytes(12)), uid: p.uid, user: user, now: now)
        let stale = now - Int64(settings.promptTimeoutSeconds) * 2000
        try relays.withLock { (r: inout [String: Relay]) throws(CofferError) in
            r = r.filter { !$0.value.state.withLock { $0.finished } && $0.value.startedAt > stale }
            // root keeps a way in when others fill the global table
            guard p.uid == 0 || r.count < Self.maxInProgress, r.values.filter({ $0.uid == p.uid }).count < Self.maxInProgressPerUID else {
                throw CofferError(.permissionDenied, "too many sign-ins in progress", hint: "finish them, or wait for the unanswered ones to time out (auth.prompt_timeout)")
            }
            r[relay.id] = relay
        }
        // attempts in flight count towards the lockout before PAM runs: parallel
        // sign-ins cannot overshoot it
        let inFlight = relays.withLock { $0.values.filter { $0.uid == p.uid && !$0.state.withLock { $0.finished } }.count } - 1
        let recent = failures.withLock { f in
            Self.keys(p.uid, user).map { (f.times[$0] ?? []).filter { $0 > now - Int64(settings.failureWindowSeconds) * 1000 }.count }.max() ?? 0
        }
        if let until = lockedUntil(uid: p.uid, user: user, now: now) ?? (recent + inFlight >= settings.maxFailures ? now + 1 : nil) {
            // locked by Coffer: the same conversation as a real one, answered by no one
            g.ticket.update { $0.details["locked_until"] = .number(until) }
            relay.state.withLock { $0.asked = [PAMPrompt(style: .secret, text: "Password: ")] }
            relay.post(.prompts([PAMPrompt(style: .secret, text: "Password: ")]))
            Thread.detachNewThread { [settings] in
                _ = relay.answered.wait(timeout: .now() + .seconds(settings.promptTimeoutSeconds))
                relay.post(.done(.failure("locked by coffer after repeated failures")))
            }
        } else {
            let service = settings.service, timeout = settings.promptTimeoutSeconds
            Thread.detachNewThread {
                let outcome = PAMAuthenticator.authenticate(service: service, user: user) { prompts in relay.ask(prompts, timeout: timeout) }
                relay.post(.done(outcome))
            }
        }
        return try await step(g, relay, await relay.next())
    }

    /// The answers to the prompts of a sign-in in progress (the same uid only).
    public func answer(_ g: Grant, id: String, answers: [String]) async throws(CofferError) -> Step {
        let p = g.principal
        guard let relay = relays.withLock({ $0[id] }), relay.uid == p.uid else {
            throw CofferError(.notFound, "no such sign-in in progress", hint: "start again with coffer login")
        }
        g.ticket.update { $0.path = id }
        try relay.state.withLock { (s: inout Relay.State) throws(CofferError) in
            guard !s.busy, !s.finished else { throw CofferError(.invalidParameter, "this sign-in is not waiting for answers") }
            let wanted = s.asked.filter(\.needsAnswer).count
            guard answers.count == wanted else {
                throw CofferError(.invalidParameter, "give \(wanted) answer\(wanted == 1 ? "" : "s") (one per prompt that asks)")
            }
            guard answers.allSatisfy({ $0.utf8.count <= 1024 && !$0.utf8.contains(0) }) else {
                throw CofferError(.invalidParameter, "an answer is at most 1024 bytes, without NUL")
            }
            var it = answers.makeIterator()
            s.answers = s.asked.map { $0.needsAnswer ? it.next()! : "" }
            s.busy = true
            s.lastAnswerAt = clock.nowMillis()
        }
        relay.answered.signal()
        let event = await relay.next()
        relay.state.withLock { $0.busy = false }
        return try await step(g, relay, event)
    }

    func step(_ g: Grant, _ relay: Relay, _ event: Relay.Event) async throws(CofferError) -> Step {
        switch event {
        case .prompts(let prompts):
            return .prompts(id: relay.id, prompts)
        case .done(.success) where lockedUntil(uid: relay.uid, user: relay.user, now: clock.nowMillis()) != nil:
            // locked while this sign-in was on its way (a second factor after the lock): no session
            return try await step(g, relay, .done(.failure("locked by coffer during the sign-in")))
        case .done(.success):
            _ = relays.withLock { $0.removeValue(forKey: relay.id) }
            failures.withLock { f in
                for k in Self.keys(relay.uid, relay.user) { f.times[k] = nil }
            }
            return .signedIn(try await tokens.createSession(g, ttlSeconds: settings.sessionTTLSeconds))
        case .done(.failure(let why)):
            _ = relays.withLock { $0.removeValue(forKey: relay.id) }
            g.ticket.update { $0.details["pam"] = .text(String(why.prefix(128))) }
            recordFailure(uid: relay.uid, user: relay.user, why: why)
            // one answer, one delay, whatever failed
            let due = relay.state.withLock { $0.lastAnswerAt } + Int64(settings.failureMillis)
            let wait = due - clock.nowMillis()
            if wait > 0 { try? await Task.sleep(for: .milliseconds(wait)) }
            throw CofferError(.loginFailed, "sign-in failed", hint: "check the password (and code); repeated failures lock sign-in for a while")
        }
    }

    static func keys(_ uid: UInt32, _ user: String) -> [String] { ["uid:\(uid)", "user:\(user)"] }

    func lockedUntil(uid: UInt32, user: String, now: Int64) -> Int64? {
        failures.withLock { f in
            Self.keys(uid, user).compactMap { f.lockedUntil[$0] }.filter { $0 > now }.max()
        }
    }

    func recordFailure(uid: UInt32, user: String, why: String) {
        let now = clock.nowMillis()
        let windowStart = now - Int64(settings.failureWindowSeconds) * 1000
        let locked: Bool = failures.withLock { f in
            var locked = false
            for k in Self.keys(uid, user) {
                if let until = f.lockedUntil[k], until > now { continue }  // attempts while locked do not extend it
                var t = (f.times[k] ?? []).filter { $0 > windowStart }
                t.append(now)
                if t.count >= settings.maxFailures {
                    f.lockedUntil[k] = now + Int64(settings.lockoutSeconds) * 1000
                    t = []
                    locked = true
                }
                f.times[k] = t
            }
            // bounded: forget the oldest keys if very many accounts fail
            if f.times.count > 10000 { f.times = f.times.filter { !($0.value.last.map { $0 < windowStart } ?? true) } }
            return locked
        }
        logger.notice("sign-in failed", metadata: ["peer.uid": "\(uid)", "reason": "\(why)"])
        if locked { logger.warning("sign-in locked after repeated failures", metadata: ["peer.uid": "\(uid)", "user": "\(user)"]) }
    }
}
