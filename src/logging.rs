//! Logging set-up shared by the binaries: `tracing` to stderr, filtered by
//! `RUST_LOG` (default `info`), human-readable or JSON.

/// Installs the global subscriber at level `info`. Call once, from `main`.
pub fn init(json: bool) {
    init_at(json, "info");
}

/// Installs the global subscriber; `level` (a `tracing` filter such as
/// `debug`) applies unless `RUST_LOG` is set. Call once, from `main`.
pub fn init_at(json: bool, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
