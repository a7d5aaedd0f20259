//! lancached: a LAN cache for AI model downloads.
//!
//! One daemon, several supervised subsystems sharing one [`state::State`]:
//! the DNS interceptor ([`dns`]), the HTTP front ([`http`]) with the caching registry proxy and
//! the distribution endpoints behind it, the HTTPS front ([`tls`]) and the control socket
//! ([`control`]). Each has the shape `run(listeners, state, cancel)`; [`daemon`] wires them up.

pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod distribution;
pub mod dns;
pub mod http;
pub mod hub;
pub mod listeners;
pub mod logging;
pub mod notify;
pub mod proxy;
pub mod reload;
pub mod state;
pub mod store;
pub mod supervisor;
pub mod tls;
