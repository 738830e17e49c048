// swift-tools-version:6.1
import PackageDescription

// One settings list for every target (ARCHITECTURE.md, Conventions).
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "coffer",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "cofferd", targets: ["cofferd"]),
        .executable(name: "coffer", targets: ["coffer"]),
        .executable(name: "coffer-cli", targets: ["coffer-cli"]),
        .executable(name: "coffer-bench", targets: ["coffer-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: []),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // C shims
        .systemLibrary(name: "CSodium", pkgConfig: "libsodium", providers: [.apt(["libsodium-dev"])]),
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        .target(name: "CCofferLinux"),

        // Libraries, dependencies pointing down only.
        .target(name: "CofferCrypto", dependencies: ["CSodium"], swiftSettings: swiftSettings),
        .target(name: "CofferCore", swiftSettings: swiftSettings),
        // Linux-PAM, imported by CofferAuth only
        .systemLibrary(name: "CPAM", providers: [.apt(["libpam0g-dev"])]),
        .target(name: "CofferAuth", dependencies: ["CPAM"], swiftSettings: swiftSettings),
        .target(name: "CofferAudit", dependencies: ["CofferCore", "CofferCrypto"], swiftSettings: swiftSettings),
        .target(
            name: "CofferStore",
            dependencies: [
                "CofferCore", "CofferAudit", "CofferCrypto", .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CofferEngine",
            dependencies: [
                "CofferCore", "CofferCrypto", "CofferStore", "CofferAudit", "CofferAuth", "CCofferLinux",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(name: "CofferAPI", dependencies: ["CofferCore", "CofferAudit"], swiftSettings: swiftSettings),
        .target(
            name: "CofferServer",
            dependencies: [
                "CofferAPI", "CofferEngine", "CofferAuth", "CofferCore", "CofferCrypto", "CCofferLinux",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        // Without Foundation: the Unix-socket HTTP client, a small JSON, coffer run/build
        // (the lean `coffer` front starts fast on it).
        .target(name: "CofferLite", dependencies: ["CofferCore", "CofferCrypto", "CCofferLinux"], swiftSettings: swiftSettings),
        .target(name: "CofferClient", dependencies: ["CofferLite", "CofferAPI", "CofferCore", "CCofferLinux"], swiftSettings: swiftSettings),

        // Executables
        .executableTarget(
            name: "cofferd",
            dependencies: [
                "CofferServer", "CofferEngine", "CofferCore", "CofferAudit", "CofferCrypto", "CCofferLinux",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // `coffer`: the lean front (run, build); hands every other command to coffer-cli.
        // Linked static-pie (no dynamic loader, no shared libraries to map: it starts in
        // about a millisecond, as a C program does; still position-independent for ASLR).
        .executableTarget(
            name: "coffer", dependencies: ["CofferLite"], swiftSettings: swiftSettings,
            linkerSettings: [.unsafeFlags(["-static-executable"], .when(platforms: [.linux]))]
        ),
        .executableTarget(
            name: "coffer-cli",
            dependencies: [
                "CofferClient", "CofferLite", "CofferAPI", "CofferCore", "CofferAudit", "CofferCrypto", "CSQLite",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),

        // On-demand benchmark (not a test): `swift build -c release && .build/release/coffer-bench`.
        .executableTarget(
            name: "coffer-bench",
            dependencies: ["CofferClient", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: swiftSettings
        ),

        // Tests: one per module, plus end to end against the built binaries.
        .testTarget(name: "CofferCryptoTests", dependencies: ["CofferCrypto"], swiftSettings: swiftSettings),
        .testTarget(name: "CofferCoreTests", dependencies: ["CofferCore"], swiftSettings: swiftSettings),
        .testTarget(name: "CofferLiteTests", dependencies: ["CofferLite", "CofferCore"], swiftSettings: swiftSettings),
        .testTarget(name: "CofferAuditTests", dependencies: ["CofferAudit", "CofferCrypto", "CofferCore"], swiftSettings: swiftSettings),
        .testTarget(
            name: "CofferEngineTests",
            dependencies: ["CofferEngine", "CofferStore", "CofferCrypto", "CofferCore",
                           .product(name: "GRDB", package: "GRDB.swift")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CofferServerTests",
            dependencies: [
                "CofferServer", "CofferEngine", "CofferCore", "CofferCrypto", "CofferAPI",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CofferEndToEndTests",
            dependencies: ["CofferClient", "CofferAPI", "CofferCore", "CofferAudit"],
            exclude: ["Fixtures"],
            swiftSettings: swiftSettings
        ),
    ]
)
