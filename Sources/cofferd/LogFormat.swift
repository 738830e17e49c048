import CofferCore
import Foundation
import Logging

/// How cofferd writes its log lines on stderr:
/// - `text`: time, level, label, metadata, message (a terminal, a file);
/// - `journal`: `<N>` syslog priority prefixes and no time of their own (journald
///   stamps each line; chosen by itself when systemd hands stderr to the journal,
///   i.e. JOURNAL_STREAM is set);
/// - `json`: one object per line (`time`, `level`, `label`, `message`, metadata
///   keys), for log shippers.
enum LogFormat: String, CaseIterable {
    case text, journal, json

    /// `auto` (the default): journal under systemd's journal, text otherwise.
    static func resolve(_ name: String, environment: [String: String] = ProcessInfo.processInfo.environment) -> LogFormat {
        if let f = LogFormat(rawValue: name) { return f }
        return environment["JOURNAL_STREAM"].map { !$0.isEmpty } == true ? .journal : .text
    }
}

struct CofferLogHandler: LogHandler {
    let label: String
    let format: LogFormat
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    func log(event: LogEvent) {
        var all = self.metadata
        if let m = event.metadata { all.merge(m) { $1 } }
        let message = event.message.description
        let line: String
        switch format {
        case .json:
            var object: [String: Any] = ["time": Timestamp.string(millis: Int64(Date().timeIntervalSince1970 * 1000)), "level": event.level.rawValue, "label": label, "message": message]
            for (k, v) in all where object[k] == nil { object[k] = "\(v)" }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
            line = String(decoding: data, as: UTF8.self)
        case .journal:
            let meta = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            line = "<\(Self.priority(event.level))>" + (meta.isEmpty ? message : "\(meta) \(message)")
        case .text:
            let meta = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            line = "\(Timestamp.string(millis: Int64(Date().timeIntervalSince1970 * 1000))) \(event.level) \(label): \(meta.isEmpty ? "" : meta + " ")\(message)"
        }
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }
}
