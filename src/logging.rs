//! Logging: to journald with structured fields when stderr is connected to the journal, as
//! human-readable lines on stderr otherwise.
//!
//! systemd sets `JOURNAL_STREAM=<dev>:<ino>` for a service whose stderr goes to the journal; we
//! only switch to the native protocol when our stderr really is that stream, so a child shell that
//! inherited the variable but redirected stderr still gets plain lines.

use std::os::fd::AsFd;
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// `RUST_LOG` wins over the configuration's `[log] filter`, so one run can be debugged without
/// editing the file.
pub fn filter(config_filter: &str) -> EnvFilter {
    match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => {
            EnvFilter::try_new(env).unwrap_or_else(|_| EnvFilter::new(config_filter))
        }
        _ => EnvFilter::try_new(config_filter).unwrap_or_else(|_| EnvFilter::new("info")),
    }
}

pub fn init(config_filter: &str) {
    let registry = tracing_subscriber::registry().with(filter(config_filter));
    if stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            registry
                .with(journald.with_syslog_identifier("lancached".into()))
                .init();
            return;
        }
    }
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .init();
}
