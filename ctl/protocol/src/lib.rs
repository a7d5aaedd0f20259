//! The control protocol spoken between `lancached` and `lancachectl` over the control socket.
//!
//! One request enum and one response enum (sccache's `protocol.rs` is the model), serialised as
//! JSON inside length-delimited frames: a 4-byte big-endian length, then that many bytes. This
//! crate has no async runtime and no network stack in it, so the CLI builds without hickory or
//! hyper; the daemon reads the same frames with `tokio_util`'s `LengthDelimitedCodec`, whose
//! default framing is exactly this one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};

/// Frames larger than this are refused by both sides: no control message comes near it, and a
/// bound keeps a hostile local client from making the daemon buffer gigabytes.
pub const MAX_FRAME: usize = 1 << 20;

/// Where the packaged daemon listens (the socket unit's `ListenStream=`).
pub const DEFAULT_SOCKET: &str = "/run/lancached/control.sock";

/// What a client asks of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Version, uptime, subsystems and listeners.
    Status,
    /// Counters since start.
    Stats,
    /// Re-read the configuration file and apply what can be applied without a restart.
    Reload,
    /// Models in the cache.
    Models,
    /// Remove models (and the blobs only they reference).
    Prune(PruneRequest),
    /// Start filling models into the cache; progress is polled with `FillProgress`.
    Prefetch { names: Vec<String> },
    /// Progress of the fills for these models (all fills when empty).
    FillProgress { names: Vec<String> },
    /// The cache's own CA certificate; `rotate` replaces it with a new one first.
    Ca { rotate: bool },
    /// A bundle of these models (a tar in Ollama's layout). Answered with [`Response::Export`],
    /// after which the connection carries exactly `bytes` raw tar bytes and is closed.
    Export { names: Vec<String> },
    /// Import a tar in Ollama's layout (a bundle, a `/models/...` tar, or a models directory the
    /// CLI turns into one). The raw tar follows this frame on the connection until the client
    /// shuts down its writing half; then the daemon answers [`Response::Imported`] or an error.
    /// The client sends the bytes (not a path) because the packaged daemon cannot read users'
    /// files (`ProtectHome=`, `PrivateTmp=`, its own user). `source` names what is sent, for
    /// messages and the audit log. `local`: the models count as the operator's own (never
    /// evicted automatically) rather than fetched.
    Import { source: String, local: bool },
}

impl Request {
    /// A short name for logs and audit lines.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Stats => "stats",
            Request::Reload => "reload",
            Request::Models => "models",
            Request::Prune(_) => "prune",
            Request::Prefetch { .. } => "prefetch",
            Request::FillProgress { .. } => "fill_progress",
            Request::Ca { .. } => "ca",
            Request::Export { .. } => "export",
            Request::Import { .. } => "import",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneRequest {
    /// Models not used for this many seconds.
    pub older_than_secs: Option<u64>,
    /// Least recently used models until the cache is at most this many bytes.
    pub max_size: Option<u64>,
    /// Exactly these models (any name form Ollama accepts).
    pub models: Vec<String>,
    /// Report what would go, change nothing.
    pub dry_run: bool,
    /// Also models the daemon did not fetch itself (found in the directory).
    pub include_local: bool,
    /// Cluster mode: prune the shared store instead of this node's cache.
    #[serde(default)]
    pub cluster: bool,
}

/// What the daemon answers. Every request gets exactly one response.
// A few control messages a minute: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Status(Status),
    Stats(Stats),
    Reloaded(ReloadReport),
    Models {
        models: Vec<ModelInfo>,
        /// Hugging Face repos in the hub cache (absent when there are none, so an Ollama-only
        /// cache answers as before).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        hub: Vec<HubRepoInfo>,
    },
    Pruned(PruneReport),
    Prefetch {
        fills: Vec<FillProgress>,
    },
    Ca(CaInfo),
    /// The bundle follows on the connection: `bytes` raw bytes of tar.
    Export {
        models: Vec<String>,
        bytes: u64,
    },
    Imported(ImportReport),
    Error(ErrorReply),
}

/// What `import` did. Nothing is published unless every blob verified and every manifest is
/// complete, so an error reply means nothing changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// Models whose manifest was written (new, or a tag whose manifest changed).
    pub models_imported: Vec<String>,
    /// Models already in the cache with byte-identical manifests.
    pub models_skipped: Vec<String>,
    /// Blobs verified and published, and their bytes.
    pub blobs_imported: u64,
    pub bytes_imported: u64,
    /// Blobs already in the cache (not copied).
    pub blobs_skipped: u64,
    /// The models count as local (never evicted automatically) rather than fetched.
    pub local: bool,
    /// Hugging Face repo revisions (`hf:org/name@<commit>`) published, and those already in the
    /// hub cache whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repos_imported: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repos_skipped: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The frame was not valid JSON or not a known request.
    BadRequest,
    /// The frame was larger than [`MAX_FRAME`].
    FrameTooLarge,
    /// The peer's credentials do not allow control.
    Unauthorized,
    /// A new configuration was rejected; the old one stays in force.
    InvalidConfig,
    /// The named thing does not exist.
    NotFound,
    /// The daemon does not offer this (yet, or in this configuration).
    Unsupported,
    /// The request was valid but carrying it out failed.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    /// Where the configuration came from (a path, or "built-in quick-start defaults").
    pub config: String,
    pub subsystems: Vec<SubsystemStatus>,
    /// Cluster mode only (`[cluster]`): absent on a standalone node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

/// A cluster node's view: itself, the configured nodes, the store, the leases it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This node's data-plane address.
    pub node: String,
    pub nodes: Vec<String>,
    /// `s3://BUCKET/PREFIX`.
    pub store: String,
    /// Whether the last store request got an answer (lost: local hits, fills alone).
    pub store_reachable: bool,
    /// Digests whose fill lease this node holds.
    pub leases_held: Vec<String>,
    /// The nodes whose heartbeat in the store is live, this one first: what DNS answers.
    #[serde(default)]
    pub healthy_nodes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubsystemStatus {
    pub name: String,
    pub healthy: bool,
    pub restarts: u32,
    /// Human-readable listener addresses, e.g. `tcp 0.0.0.0:80 (socket-activated)`.
    pub listeners: Vec<String>,
    /// Last error, if it ever failed.
    pub last_error: Option<String>,
}

/// Counters since the daemon started. Each subsystem owns one section; a section is absent when
/// its subsystem is not running.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub uptime_secs: u64,
    pub control: ControlStats,
    pub http: HttpStats,
    #[serde(default)]
    pub dns: Option<DnsStats>,
    #[serde(default)]
    pub cache: Option<CacheStats>,
    #[serde(default)]
    pub lifecycle: Option<LifecycleStats>,
    #[serde(default)]
    pub tls: Option<TlsStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStats>,
}

/// Cluster mode: the store's reachability and the leases held, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStats {
    pub store_reachable: bool,
    pub leases_held: u64,
    /// How many nodes (this one included) have a live heartbeat.
    #[serde(default)]
    pub healthy_nodes: u64,
}

/// The cache's housekeeping: disk room, evictions, prunes, the most used models.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleStats {
    /// Bytes available on the cache's filesystem.
    pub free_bytes: u64,
    /// `[cache] min_free`.
    pub min_free: u64,
    /// Bytes held by fills in progress (included in the cache's `usage_bytes`).
    pub partial_bytes: u64,
    /// Models found in the directory rather than fetched (never evicted unless `evict_local`).
    pub local_models: u64,
    /// Eviction runs that removed something, the models they removed and the bytes freed.
    pub evictions: u64,
    pub evicted_models: u64,
    pub evicted_bytes: u64,
    /// `lancachectl prune` runs (dry runs not counted), models removed, bytes freed.
    pub prunes: u64,
    pub pruned_models: u64,
    pub pruned_bytes: u64,
    /// Fills refused because no room could be made.
    pub no_space: u64,
    /// Unreferenced blobs waiting for their last reader before removal.
    pub deferred_blobs: u64,
    /// The start-up scan of the directory is still running.
    pub indexing: bool,
    /// The most requested models (manifest requests), most first.
    pub top_models: Vec<ModelUse>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUse {
    pub name: String,
    pub hits: u64,
    /// Seconds since the Unix epoch.
    pub last_used: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlStats {
    pub requests: u64,
    pub refused: u64,
    pub bad_frames: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpStats {
    pub connections: u64,
    pub requests: u64,
    /// Responses by status class: "2xx", "3xx", "4xx", "5xx".
    pub responses: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsStats {
    pub intercepted: u64,
    pub forwarded: u64,
    /// Forwarded queries answered from the response cache (included in `forwarded`).
    #[serde(default)]
    pub cache_hits: u64,
    pub refused: u64,
    pub failed: u64,
    pub rate_limited: u64,
    /// Of those, UDP queries answered with TC=1 so the client retries over TCP.
    #[serde(default)]
    pub slipped: u64,
    pub malformed: u64,
    /// Queries by record type name ("A", "AAAA", ...).
    pub by_qtype: BTreeMap<String, u64>,
    /// Median and 99th percentile upstream latency in milliseconds, over recent queries.
    pub upstream_latency_ms_p50: Option<f64>,
    pub upstream_latency_ms_p99: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsStats {
    pub handshakes: u64,
    pub handshake_failures: u64,
    pub handshake_timeouts: u64,
    /// Client hellos naming a host the cache holds no certificate for.
    pub unknown_sni: u64,
    /// Client hellos without SNI while the cache has no certificate for its own address.
    pub no_sni: u64,
    pub ca_fingerprint_sha256: Option<String>,
    /// Names (and addresses) the leaves in force are valid for.
    pub leaf_names: Vec<String>,
    /// When the leaves in force expire (seconds since the Unix epoch); renewed well before.
    pub leaf_not_after: Option<u64>,
    /// Names the CA's name constraints do not cover (clients reject them until rotation).
    pub uncovered: Vec<String>,
    /// Subtrees this release's CAs permit that the CA in use does not (a CA made by an older
    /// release; `lancachectl ca --rotate` fixes it). Empty when the daemon predates the field.
    #[serde(default)]
    pub missing_constraints: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheStats {
    pub manifest_hits: u64,
    pub manifest_misses: u64,
    pub manifest_revalidations: u64,
    pub manifest_offline_serves: u64,
    pub blob_hits: u64,
    pub blob_misses: u64,
    pub bytes_from_cache: u64,
    pub bytes_from_upstream: u64,
    pub fills_completed: u64,
    pub fills_failed: u64,
    /// Failures by kind ("digest_mismatch", "upstream_status", "stall", "disk_full", ...).
    pub failures: BTreeMap<String, u64>,
    pub usage_bytes: u64,
    pub max_size: u64,
    pub models: u64,
    pub blobs: u64,
    pub evictions: u64,
    pub per_registry: BTreeMap<String, RegistryStats>,
    pub fills: Vec<FillProgress>,
    /// `upstream.max_rate` in bytes per second; 0 = no cap.
    #[serde(default)]
    pub upstream_max_rate_bytes_per_second: u64,
    /// Bytes per second the fills took from upstream, averaged over the last 5 s.
    #[serde(default)]
    pub upstream_rate_bytes_per_second: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryStats {
    pub manifest_hits: u64,
    pub manifest_misses: u64,
    pub blob_hits: u64,
    pub blob_misses: u64,
    pub bytes_from_cache: u64,
    pub bytes_from_upstream: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FillProgress {
    /// The model the fill belongs to, when known.
    pub model: Option<String>,
    pub digest: String,
    pub size: u64,
    pub landed: u64,
    pub waiters: u32,
    /// "filling", "done" or "failed: <reason>".
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Settings now in force.
    pub applied: Vec<String>,
    /// Settings that changed but only take effect after a restart.
    pub needs_restart: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Canonical `host/namespace/model:tag`.
    pub name: String,
    /// The form `ollama list` shows.
    pub short_name: String,
    pub size: u64,
    /// sha256 of the manifest bytes: Ollama's model ID.
    pub digest: String,
    pub complete: bool,
    /// Seconds since the Unix epoch.
    pub last_used: Option<u64>,
    /// Fetched by the daemon (false: found in the directory, e.g. a user's own Ollama model).
    pub fetched: bool,
}

/// A Hugging Face repo (model or dataset) in the hub cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubRepoInfo {
    /// `hf:org/name` or `hf:datasets/org/name`, as `prefetch`, `prune --model` and `export`
    /// take it (with `@rev` for one revision).
    pub name: String,
    /// `model` or `dataset`.
    pub kind: String,
    /// The distinct files' bytes over every revision.
    pub size: u64,
    /// Seconds since the Unix epoch: the latest of its revisions'.
    pub last_used: Option<u64>,
    pub revisions: Vec<HubRevision>,
}

/// One snapshot (a commit) of a hub repo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubRevision {
    pub commit: String,
    /// Branches and tags that name this commit in the hub cache.
    pub refs: Vec<String>,
    pub files: u64,
    pub size: u64,
    /// Every file's link leads to its blob (a missing one is fetched again when asked).
    pub complete: bool,
    pub last_used: Option<u64>,
    /// Fetched (or imported) by the daemon; false: found in the hub cache directory.
    pub fetched: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub removed: Vec<PrunedModel>,
    pub blobs_removed: u64,
    pub bytes_freed: u64,
    pub partial_fills_removed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedModel {
    pub name: String,
    pub bytes: u64,
    pub last_used: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaInfo {
    pub pem: String,
    pub path: String,
    pub fingerprint_sha256: String,
    pub rotated: bool,
}

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    Io(io::Error),
    TooLarge(usize),
    Json(serde_json::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::TooLarge(n) => {
                write!(
                    f,
                    "frame of {n} bytes is larger than the {MAX_FRAME}-byte limit"
                )
            }
            FrameError::Json(e) => write!(f, "frame is not a valid message: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Writes one frame (blocking). Used by the CLI.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    let body = serde_json::to_vec(msg).map_err(FrameError::Json)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    w.write_all(&(body.len() as u32).to_be_bytes())?;
    w.write_all(&body)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame (blocking). Used by the CLI.
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(FrameError::Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        let req = Request::Prune(PruneRequest {
            older_than_secs: Some(30 * 86400),
            dry_run: true,
            ..Default::default()
        });
        write_frame(&mut buf, &req).unwrap();
        assert_eq!(&buf[..4], &((buf.len() - 4) as u32).to_be_bytes());
        let back: Request = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn oversized_length_is_refused_before_reading() {
        let mut buf = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(b"{}");
        let err = read_frame::<Request>(&mut buf.as_slice()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)), "{err}");
    }

    #[test]
    fn unknown_request_is_a_json_error() {
        let body = br#"{"request":"format_disk"}"#;
        let mut buf = (body.len() as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(body);
        let err = read_frame::<Request>(&mut buf.as_slice()).unwrap_err();
        assert!(err.to_string().contains("format_disk"), "{err}");
    }

    #[test]
    fn bundle_requests_round_trip() {
        for req in [
            Request::Export {
                names: vec!["llama3:8b".into(), "qwen2.5".into()],
            },
            Request::Import {
                source: "/tmp/models.tar".into(),
                local: true,
            },
        ] {
            let mut buf = Vec::new();
            write_frame(&mut buf, &req).unwrap();
            assert_eq!(read_frame::<Request>(&mut buf.as_slice()).unwrap(), req);
        }
        assert_eq!(
            serde_json::to_string(&Request::Import {
                source: "x".into(),
                local: false
            })
            .unwrap(),
            r#"{"request":"import","source":"x","local":false}"#
        );
    }

    #[test]
    fn request_tags_are_stable() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"request":"status"}"#
        );
    }
}
