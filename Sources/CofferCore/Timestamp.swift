#if canImport(Glibc)
import Glibc
#endif

/// Millisecond timestamps as RFC 3339 UTC strings, e.g. 2026-11-29T02:21:40.123Z.
public enum Timestamp {
    public static func string(millis: Int64) -> String {
        var t = time_t(millis / 1000)
        var tm = tm()
        gmtime_r(&t, &tm)
        func pad(_ v: Int32, _ n: Int) -> String {
            let s = String(v)
            return s.count >= n ? s : String(repeating: "0", count: n - s.count) + s
        }
        let ms = Int32(millis % 1000)
        return "\(pad(tm.tm_year + 1900, 4))-\(pad(tm.tm_mon + 1, 2))-\(pad(tm.tm_mday, 2))T"
            + "\(pad(tm.tm_hour, 2)):\(pad(tm.tm_min, 2)):\(pad(tm.tm_sec, 2)).\(pad(ms, 3))Z"
    }

    /// The inverse of `string(millis:)`, exactly: `YYYY-MM-DDTHH:MM:SS.fffZ` only
    /// (what this module writes), nil for anything else.
    public static func millis(_ s: String) -> Int64? {
        let b = Array(s.utf8)
        guard b.count == 24, b[4] == 0x2D, b[7] == 0x2D, b[10] == 0x54, b[13] == 0x3A, b[16] == 0x3A, b[19] == 0x2E, b[23] == 0x5A else { return nil }
        func num(_ r: Range<Int>) -> Int64? {
            var v: Int64 = 0
            for i in r { guard (0x30...0x39).contains(b[i]) else { return nil }; v = v * 10 + Int64(b[i] - 0x30) }
            return v
        }
        guard let y = num(0..<4), let mo = num(5..<7), let d = num(8..<10), let h = num(11..<13), let mi = num(14..<16),
              let se = num(17..<19), let ms = num(20..<23), (1...12).contains(mo), (1...31).contains(d), h < 24, mi < 60, se < 60 else { return nil }
        // days from the civil date (Howard Hinnant's algorithm), no calendar objects
        let yy = mo <= 2 ? y - 1 : y
        let era = (yy >= 0 ? yy : yy - 399) / 400
        let yoe = yy - era * 400
        let doy = (153 * (mo > 2 ? mo - 3 : mo + 9) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        let v = ((days * 24 + h) * 60 + mi) * 60 * 1000 + se * 1000 + ms
        return string(millis: v) == s ? v : nil
    }
}
