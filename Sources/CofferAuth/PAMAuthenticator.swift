import CPAM
import Foundation
import Synchronization

/// One prompt of a PAM conversation, as the client shows it.
public struct PAMPrompt: Sendable, Equatable {
    public enum Style: String, Sendable {
        /// Ask, echo off (a password, a code).
        case secret
        /// Ask, echo on.
        case text
        /// Show only.
        case info
        case error
    }

    public var style: Style
    public var text: String

    public init(style: Style, text: String) {
        self.style = style
        self.text = text
    }

    public var needsAnswer: Bool { style == .secret || style == .text }
}

/// How a PAM transaction ended.
public enum PAMOutcome: Sendable, Equatable {
    case success
    /// Authentication or account check failed: the PAM code's name, for logs only
    /// (never shown to the caller: every failure answers alike).
    case failure(String)
}

/// Runs one PAM transaction (pam_start, pam_authenticate, pam_acct_mgmt, pam_end)
/// on a thread of its own, never on the event loop: PAM blocks (password hashing,
/// fail delays, modules that talk to the network). The conversation is relayed:
/// each time PAM asks, `ask` is called with the prompts and blocks until the answers
/// come (or nil: give up).
public enum PAMAuthenticator {
    /// The state the C callback reaches through PAM's appdata pointer.
    final class Conversation {
        let ask: ([PAMPrompt]) -> [String]?
        init(ask: @escaping ([PAMPrompt]) -> [String]?) { self.ask = ask }
    }

    public static func authenticate(service: String, user: String, ask: @escaping ([PAMPrompt]) -> [String]?) -> PAMOutcome {
        let conversation = Conversation(ask: ask)
        let appdata = Unmanaged.passRetained(conversation)
        defer { appdata.release() }
        var handle: OpaquePointer?
        var rc = coffer_pam_start(service, user, converse, appdata.toOpaque(), &handle)
        guard rc == PAM_SUCCESS, let handle else { return .failure("pam_start: \(rc)") }
        // PAM_FAIL_DELAY stays as the stack sets it; the caller pads every failure to
        // one duration anyway (same answer, same timing)
        rc = pam_authenticate(handle, Int32(PAM_SILENT))
        if rc == PAM_SUCCESS { rc = pam_acct_mgmt(handle, Int32(PAM_SILENT)) }
        let name = String(cString: pam_strerror(handle, rc))
        pam_end(handle, rc)
        return rc == PAM_SUCCESS ? .success : .failure(name)
    }

    static let converse: coffer_pam_conv_fn = { count, messages, responses, appdata in
        guard count > 0, count <= 32, let messages, let responses, let appdata else { return PAM_CONV_ERR }
        let conversation = Unmanaged<Conversation>.fromOpaque(appdata).takeUnretainedValue()
        var prompts: [PAMPrompt] = []
        for i in 0..<Int(count) {
            guard let m = coffer_pam_message(messages, Int32(i)) else { return PAM_CONV_ERR }
            let text = m.pointee.msg.map { String(cString: $0) } ?? ""
            let style: PAMPrompt.Style
            switch m.pointee.msg_style {
            case PAM_PROMPT_ECHO_OFF: style = .secret
            case PAM_PROMPT_ECHO_ON: style = .text
            case PAM_ERROR_MSG: style = .error
            default: style = .info
            }
            prompts.append(PAMPrompt(style: style, text: String(text.prefix(512))))
        }
        guard var answers = conversation.ask(prompts), answers.count == prompts.count else { return PAM_CONV_ERR }
        guard let out = coffer_pam_responses(count) else { return PAM_BUF_ERR }
        for i in 0..<Int(count) where prompts[i].needsAnswer {
            answers[i].withCString { coffer_pam_set_response(out, Int32(i), $0) }
        }
        // the Swift copies are ordinary strings; drop them at once
        answers.removeAll()
        responses.pointee = out
        return PAM_SUCCESS
    }
}
