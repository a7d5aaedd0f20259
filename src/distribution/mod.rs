//! The distribution server: what lets a LAN client get a model from the cache without going
//! through a registry at all. A [`catalog`] of the models in the cache directory (kept fresh while
//! a local `ollama` adds and removes models), the JSON APIs ([`api`]), the manifest and tar
//! routes ([`models`], [`tar`]), the client scripts ([`scripts`]) and the web UI ([`webui`]).
//! Client downloads are tracked in `crate::http::sessions`, below both this and the proxy.
//!
//! Every name that reaches a path goes through [`request`], which turns path tricks into 400s
//! before anything touches the filesystem.

pub mod api;
pub mod catalog;
pub mod health;
pub mod models;
pub mod public_url;
pub mod request;
pub mod scripts;
pub mod tar;
pub mod webui;

pub use catalog::Catalog;

/// The distribution server's share of [`crate::state::State`].
#[derive(Default)]
pub struct Distribution {
    pub catalog: Catalog,
    pub writable: health::WritableProbe,
}
