//! The integration suite: one test binary (ripgrep's `tests/tests.rs` layout), one module per
//! feature. Every test drives the real `lancached` and `lancachectl` binaries; see `util` for the
//! harness that starts the daemon the way systemd would.

mod util;

mod activation;
mod bundles;
mod cluster;
mod cluster_lan;
mod config;
mod control;
mod distribution;
mod dns;
mod faults;
mod harness;
mod hf_upstream_selftest;
mod hfco;
mod hostile;
mod hub;
mod hub_bundles;
mod hub_operator;
mod hub_transparent;
mod lifecycle;
mod lifecycle_cache;
mod metrics;
mod no_redirect;
mod packaging;
mod parent;
mod prefetch_cli;
mod proxy;
mod proxy_gate;
mod proxy_ollama;
mod proxy_registry;
mod proxy_strict;
mod proxy_upstream;
mod sideload;
mod strict_client;
mod systemd;
mod tls;
mod uplink;
mod webui;
mod wiring;
