//! The store: the cache directory (an Ollama models directory) and what the daemon knows about
//! it. Names and digests are validated in [`names`] before they become paths in [`layout`];
//! [`manifest`] reads the blob references out of manifest bytes; [`pins`] protects blobs in use
//! from deletion. [`fill`] brings cold blobs in from upstream (single-flight, sliced, verified
//! before publishing) with its durable [`slicemap`]; [`stats`] counts what the cache does.

pub mod fill;
pub mod layout;
pub mod manifest;
pub mod mapped;
pub mod names;
pub mod pins;
pub mod slicemap;
pub mod stats;

pub use layout::Layout;
pub use manifest::Manifest;
pub use names::{Digest, ModelRef};
pub use pins::Pins;
