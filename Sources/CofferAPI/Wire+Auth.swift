public import Foundation

// Wire types of /v1/auth: sign-in through PAM, prompt by prompt.

/// One PAM prompt: `secret` (ask, echo off), `text` (ask, echo on), `info`, `error`.
public struct LoginPrompt: Codable, Sendable, Equatable {
    public var style: String
    public var text: String
    public init(style: String, text: String) {
        self.style = style
        self.text = text
    }
    public var needsAnswer: Bool { style == "secret" || style == "text" }
}

/// `POST /v1/auth/login` and `POST /v1/auth/login/{id}`: either the next prompts (with
/// the sign-in's id to answer them at) or the session token, shown once.
public struct LoginResponse: Codable, Sendable {
    public var loginID: String?
    public var prompts: [LoginPrompt]?
    public var token: String?
    public var info: TokenInfo?
    enum CodingKeys: String, CodingKey { case loginID = "login_id", prompts, token, info }
    public init(loginID: String?, prompts: [LoginPrompt]?, token: String?, info: TokenInfo?) {
        self.loginID = loginID
        self.prompts = prompts
        self.token = token
        self.info = info
    }
}

/// `POST /v1/auth/login/{id}`: one answer per prompt that asks, in order.
public struct LoginAnswerRequest: Codable, Sendable {
    public var answers: [String]
    enum CodingKeys: String, CodingKey, CaseIterable { case answers }
    public init(answers: [String]) { self.answers = answers }
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.self)
        answers = try decoder.container(keyedBy: CodingKeys.self).decode([String].self, forKey: .answers)
    }
}
