import CofferLite
#if canImport(Glibc)
import Glibc
#endif

// `coffer`: the lean front of the CLI. `coffer run`, `coffer build` and `coffer secret get`
// start a process each time they are used, so this binary holds only what they need (no Foundation,
// no ArgumentParser: it starts in about a millisecond where the full CLI takes
// several). Everything else — help, every other command, and whatever FastRun does not
// recognise — is handed, unchanged, to `coffer-cli` installed next to it, which
// parses and reports with ArgumentParser. COFFER_CLI_FAST=0 hands over everything.

ensureStandardDescriptors()
let args = Array(CommandLine.arguments.dropFirst())
if Environment.get("COFFER_CLI_FAST") != "0" {
    let hoisted = FastRun.hoistGlobalOptions(args)
    if let run = FastRun.parse(hoisted) { FastRun.execute(run) }
    if let get = FastGet.parse(hoisted) { FastGet.execute(get) }
}
// the OCI runtime hook (contrib/oci/): runs at every container start, so it lives here
if args.first == "oci-hook" { OCIHook.main(Array(args.dropFirst())) }

/// coffer-cli beside this executable (found through /proc/self/exe, not PATH or
/// the environment: which program runs must not depend on where the caller stands).
var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
let n = readlink("/proc/self/exe", &buf, buf.count - 1)
guard n > 0 else {
    report("cannot find this program's own path (/proc/self/exe)", hint: "is /proc mounted?")
    exit(Exit.failure)
}
let selfPath = buf.withUnsafeBufferPointer { String(decoding: UnsafeRawBufferPointer($0).prefix(n), as: UTF8.self) }
let cli = String(selfPath[..<(selfPath.lastIndex(of: "/") ?? selfPath.startIndex)]) + "/coffer-cli"
// the arguments as the kernel gave them (not every one is UTF-8: a command's may not be)
var argv: [UnsafeMutablePointer<CChar>?] = [strdup("coffer")] + (1..<Int(CommandLine.argc)).map { CommandLine.unsafeArgv[$0] } + [nil]
execv(cli, &argv)
report("cannot run \(cli): \(String(cString: strerror(errno)))", hint: "install coffer-cli in the same directory as coffer")
exit(Exit.failure)
