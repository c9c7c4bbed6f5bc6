//! Logging set-up shared by the binaries: `tracing` to stderr, filtered by
//! `RUST_LOG` (default `info`), human-readable or JSON.

/// Installs the global subscriber. Call once, from `main`.
pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
