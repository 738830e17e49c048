public import CoreMetrics
import CofferEngine
import Foundation
import Glibc
import Synchronization
public import Prometheus

/// swift-metrics over swift-prometheus's registry. Prometheus' own factory gives
/// every family an empty HELP, which `promtool check metrics` refuses; this one names
/// each family (the labels are fixed in code, so no label set can clash with another).
public struct CofferMetricsFactory: MetricsFactory {
    public let registry: PrometheusCollectorRegistry

    public init(registry: PrometheusCollectorRegistry) { self.registry = registry }

    static let help: [String: String] = [
        "coffer_requests_total": "API requests answered, by action, HTTP status and policy decision.",
        "coffer_request_duration_seconds": "Time from a request's arrival to its answer, audit commit included, by action.",
        "coffer_audit_batch_events": "Events committed per audit group commit.",
        "coffer_audit_commit_duration_seconds": "Time of one audit group commit (one SQLite transaction).",
        "coffer_audit_queue_depth": "Audit events waiting for the next group commit.",
        "coffer_audit_failed_commits_total": "Audit group commits that failed (requests in them were refused).",
        "coffer_sealed": "1 while cofferd is sealed (no key in memory), else 0.",
        "coffer_tokens_live": "Tokens neither expired, revoked nor used up.",
        "coffer_elevations": "Elevation requests by state (pending, approved, active).",
        "coffer_injections_live": "Runs and containers with secrets injected right now.",
        "coffer_process_resident_memory_bytes": "cofferd's resident set size.",
        "coffer_process_open_fds": "cofferd's open file descriptors.",
        "coffer_process_start_time_seconds": "When cofferd started, in Unix seconds.",
    ]
    /// From 100 µs (an audited read takes about 1 ms under load) to 5 s.
    static let durationBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1), .seconds(5),
    ]
    static let valueBuckets: [Double] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]

    func descriptor(_ label: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: label, unitName: "", helpText: Self.help[label] ?? label.replacingOccurrences(of: "_", with: " "))
    }

    public func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        aggregate ? registry.makeValueHistogram(descriptor: descriptor(label), labels: dimensions, buckets: Self.valueBuckets)
            : registry.makeGauge(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        registry.makeGauge(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        registry.makeDurationHistogram(descriptor: descriptor(label), labels: dimensions, buckets: Self.durationBuckets)
    }

    // cofferd keeps every metric for its lifetime
    public func destroyCounter(_ handler: any CounterHandler) {}
    public func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {}
    public func destroyRecorder(_ handler: any RecorderHandler) {}
    public func destroyMeter(_ handler: any MeterHandler) {}
    public func destroyTimer(_ handler: any TimerHandler) {}
}

/// The daemon's metrics: what requests record as they are answered, and what a
/// scrape reads at that moment (sealed state, live tokens, elevations, injections,
/// the process).
public enum CofferMetrics {
    /// The registry `GET /v1/sys/metrics` writes out. cofferd bootstraps swift-metrics
    /// with a factory over it once, at start (`bootstrap()`).
    public static let registry = PrometheusCollectorRegistry()
    static let started = Date().timeIntervalSince1970

    public static func bootstrap() {
        MetricsSystem.bootstrap(CofferMetricsFactory(registry: registry))
    }

    /// One answered request. The labels are bounded: actions come from the endpoint
    /// tables, statuses from the error mapping, decisions from the policy.
    ///
    /// Each label set's counter and timer are made once and kept: making them through
    /// the factory per request (the registry's lookup, name and help-text checks) was
    /// 3 % of the daemon's CPU under audited reads, on the audit writer's thread too.
    static func request(action: String, status: Int, decision: String, nanoseconds: UInt64) {
        let key = action + "\u{0}" + String(status) + "\u{0}" + decision
        let (counter, timer) = handles.withLock { h in
            let counter = h.counters[key] ?? {
                let c = CoreMetrics.Counter(label: "coffer_requests_total", dimensions: [("action", action), ("status", String(status)), ("decision", decision)])
                h.counters[key] = c
                return c
            }()
            let timer = h.timers[action] ?? {
                let t = CoreMetrics.Timer(label: "coffer_request_duration_seconds", dimensions: [("action", action)])
                h.timers[action] = t
                return t
            }()
            return (counter, timer)
        }
        counter.increment()
        timer.recordNanoseconds(Int64(clamping: nanoseconds))
    }

    /// The request metrics' handles by label set (bounded: see `request`).
    static let handles = Mutex<(counters: [String: CoreMetrics.Counter], timers: [String: CoreMetrics.Timer])>(([:], [:]))

    /// The gauges read at scrape time, then the whole registry in text format.
    /// `counts` is nil while sealed (the database is not read then).
    static func scrape(_ counts: SecretEngine.LiveCounts?) -> [UInt8] {
        Gauge(label: "coffer_sealed").record(counts == nil ? 1 : 0)
        if let counts {
            Gauge(label: "coffer_tokens_live").record(counts.tokens)
            for (state, n) in counts.elevations.sorted(by: { $0.key < $1.key }) {
                Gauge(label: "coffer_elevations", dimensions: [("state", state)]).record(n)
            }
            Gauge(label: "coffer_injections_live").record(counts.injections)
        }
        if let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8),
           let pages = statm.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) {
            Gauge(label: "coffer_process_resident_memory_bytes").record(pages * Int(sysconf(Int32(_SC_PAGESIZE))))
        }
        if let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") {
            Gauge(label: "coffer_process_open_fds").record(fds.count)
        }
        Gauge(label: "coffer_process_start_time_seconds").record(started)
        return registry.emitToBuffer()
    }
}
