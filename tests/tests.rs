//! The integration suite: one test binary (ripgrep's `tests/tests.rs` layout), one module per
//! feature. Every test drives the real `lancached` and `lancachectl` binaries; see `util` for the
//! harness that starts the daemon the way systemd would.

mod util;

mod activation;
mod config;
mod control;
mod dns;
mod lifecycle;
