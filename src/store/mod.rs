//! The store: the cache directory (an Ollama models directory) and what the daemon knows about
//! it. Names and digests are validated in [`names`] before they become paths in [`layout`];
//! [`manifest`] reads the blob references out of manifest bytes; [`pins`] protects blobs in use
//! from deletion. The lifecycle: [`index`] (access times, hits, fetched-or-found), [`usage`],
//! [`prune`], [`eviction`] (the `cache` subsystem and `ensure_space`), [`models`] (the listing)
//! and [`prefetch`] (the interface to the fill engine). [`fill`] brings cold blobs in from upstream (single-flight, sliced, verified
//! before publishing) with its durable [`slicemap`]; [`stats`] counts what the cache does.

pub mod eviction;
pub mod fill;
pub mod import;
pub mod index;
pub mod layout;
pub mod manifest;
pub mod mapped;
pub mod models;
pub mod names;
pub mod pins;
pub mod prefetch;
pub mod prune;
pub mod ratelimit;
pub mod slicemap;
pub mod stats;
pub mod tenant;
#[cfg(test)]
pub mod testutil;
pub mod usage;

pub use index::Index;
pub use layout::Layout;
pub use manifest::Manifest;
pub use names::{Digest, ModelRef};
pub use pins::Pins;
