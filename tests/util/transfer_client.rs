//! A test client for tensor models, built from DESIGN.md's facts about ollama's second
//! downloader (`x/transfer`, since 0.14; no real client here has it):
//!
//! - `User-Agent: ollama-transfer/0.34.2` on blob requests (the manifest is fetched as the classic
//!   client does, with `ollama/0.34.2 (...)`);
//! - a "resolve" `GET /v2/<ns>/<model>/blobs/<digest>` with automatic redirects off:
//!   - a 200 is read to the end, then the same URL is fetched again for the transfer (a 200
//!     costs two transfers);
//!   - a 301/302/307 whose `Location` has another `host:port` is the transfer URL, checked by the
//!     0.34.2 policy (`strict_http::check_redirect`) from the resolve URL;
//!   - a same-`host:port` 3xx: DESIGN.md does not know what the real downloader does; this client
//!     takes the strictest choice and fails ("same-host redirect … refused"), so the cache can
//!     not come to rely on it; any other status fails too;
//! - the transfer `GET` (redirects off) must answer 200, or 206 with a matching `Content-Range`
//!   when resuming; sha256 and size are checked while streaming; a dropped connection resumes
//!   with `Range: bytes=N-` (at most 5 times);
//! - blobs are fetched 4 at a time; blobs and the manifest are written in Ollama's layout.
//!
//! The report counts LAN bytes per blob (every body byte read, resolve and resumes included) so
//! a test can hold the cache to "≤ 2.0× the blob".

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http::Method;
use sha2::Digest as _;

use super::strict_http::{check_redirect, Hop, Net, Url};
use super::strict_ollama::{
    blob_path, follow, parse_manifest, Layer, ModelName, PullReport, MANIFEST_ACCEPT,
};

#[derive(Debug, Clone, Default)]
pub struct TransferBlob {
    pub size: u64,
    pub resolve_status: u16,
    pub transfer_url: String,
    /// Body bytes read for this blob: resolve body + transfer + resumes.
    pub lan_bytes: u64,
    pub resumes: u32,
}

impl TransferBlob {
    pub fn ratio(&self) -> f64 {
        self.lan_bytes as f64 / self.size.max(1) as f64
    }
}

#[derive(Debug, Clone, Default)]
pub struct TransferReport {
    pub manifest: Vec<u8>,
    pub blobs: BTreeMap<String, TransferBlob>,
    pub requests: Vec<String>,
    pub waived: Vec<String>,
    pub error: Option<String>,
}

impl TransferReport {
    pub fn expect_ok(&self, what: &str) -> &TransferReport {
        if let Some(e) = &self.error {
            panic!("{what}: tensor pull failed: {e}\n{self:#?}");
        }
        self
    }

    pub fn error(&self) -> &str {
        self.error.as_deref().unwrap_or("")
    }

    /// The largest LAN-bytes / blob-size ratio over all blobs.
    pub fn worst_ratio(&self) -> f64 {
        self.blobs.values().map(|b| b.ratio()).fold(0.0, f64::max)
    }
}

#[derive(Clone)]
pub struct TransferClient {
    pub net: Net,
    pub insecure: bool,
    pub version: String,
    pub models: PathBuf,
}

type Shared = Arc<Mutex<TransferReport>>;

impl TransferClient {
    pub fn new(net: Net, models: &Path) -> TransferClient {
        TransferClient {
            net,
            insecure: false,
            version: "0.34.2".into(),
            models: models.to_path_buf(),
        }
    }

    pub fn insecure(mut self, yes: bool) -> Self {
        self.insecure = yes;
        self
    }

    pub fn pull(&self, name: &str) -> TransferReport {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let report: Shared = Arc::default();
        let r = rt.block_on(self.pull_async(name, &report));
        let mut out = report.lock().unwrap().clone();
        if let Err(e) = r {
            out.error = Some(e);
        }
        out
    }

    async fn pull_async(&self, name: &str, report: &Shared) -> Result<(), String> {
        let name = ModelName::parse(name, self.insecure)?;
        let base = name.base()?;
        let murl = base.join(&format!("/v2/{}/manifests/{}", name.repo(), name.tag))?;
        let headers = [
            ("accept", MANIFEST_ACCEPT.to_string()),
            (
                "user-agent",
                format!("ollama/{} (amd64 linux) Go/go1.24.1", self.version),
            ),
        ];
        // The manifest fetch is the classic client's; reuse its redirect handling and report.
        let classic: Arc<Mutex<PullReport>> = Arc::default();
        let got = follow(
            &self.net,
            &Method::GET,
            &murl,
            &headers,
            self.insecure,
            &classic,
            |_, _| true,
        )
        .await;
        {
            let c = classic.lock().unwrap();
            let mut r = report.lock().unwrap();
            r.requests.extend(c.requests.iter().cloned());
            r.waived.extend(c.waived.iter().cloned());
        }
        let (mut resp, _) = got?;
        let body = resp.bytes().await?;
        if resp.status != 200 {
            return Err(format!(
                "pull model manifest: {}: {}",
                resp.status,
                String::from_utf8_lossy(&body)
            ));
        }
        report.lock().unwrap().manifest = body.clone();
        let layers = parse_manifest(&body)?;
        std::fs::create_dir_all(self.models.join("blobs")).map_err(|e| e.to_string())?;
        let sem = Arc::new(tokio::sync::Semaphore::new(4));
        let mut tasks = tokio::task::JoinSet::new();
        for layer in layers {
            if blob_path(&self.models, &layer.digest).exists() {
                continue;
            }
            let (me, base, repo, report, sem) = (
                self.clone(),
                base.clone(),
                name.repo(),
                report.clone(),
                sem.clone(),
            );
            tasks.spawn(async move {
                let _p = sem.acquire_owned().await.unwrap();
                let r = me.blob(&base, &repo, &layer, &report).await;
                r.map_err(|e| format!("{}: {e}", layer.digest))
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| e.to_string())??;
        }
        let mp = name.manifest_path(&self.models);
        std::fs::create_dir_all(mp.parent().unwrap()).map_err(|e| e.to_string())?;
        std::fs::write(&mp, &body).map_err(|e| format!("write manifest: {e}"))?;
        Ok(())
    }

    fn ua(&self) -> [(&'static str, String); 1] {
        [("user-agent", format!("ollama-transfer/{}", self.version))]
    }

    fn note(report: &Shared, line: String) {
        report.lock().unwrap().requests.push(line);
    }

    fn count(report: &Shared, digest: &str, n: u64) {
        report
            .lock()
            .unwrap()
            .blobs
            .get_mut(digest)
            .unwrap()
            .lan_bytes += n;
    }

    async fn blob(
        &self,
        base: &Url,
        repo: &str,
        layer: &Layer,
        report: &Shared,
    ) -> Result<(), String> {
        let d = &layer.digest;
        report.lock().unwrap().blobs.insert(
            d.clone(),
            TransferBlob {
                size: layer.size,
                ..Default::default()
            },
        );
        let url = base.join(&format!("/v2/{repo}/blobs/{d}"))?;
        let mut resp = self.net.send(&Method::GET, &url, &self.ua()).await?;
        Self::note(report, format!("GET {url} → {} (resolve)", resp.status));
        report
            .lock()
            .unwrap()
            .blobs
            .get_mut(d)
            .unwrap()
            .resolve_status = resp.status;
        let transfer = match resp.status {
            200 => {
                let (n, r) = resp.read_body(None, |_| {}).await;
                Self::count(report, d, n);
                r?;
                url.clone()
            }
            301 | 302 | 307 => {
                let loc = resp
                    .header("location")
                    .ok_or("resolve: redirect without Location")?;
                let next = url.join(loc)?;
                if next.host_port() == url.host_port() {
                    return Err(format!(
                        "resolve: same-host redirect {} to {next} refused (what x/transfer does \
                         with one is unknown; this test client refuses it)",
                        resp.status
                    ));
                }
                let to_ip = self.net.lookup(&next).await?.ip();
                let from_ip = resp.peer.ip();
                drop(resp);
                let mut r = report.lock().unwrap();
                check_redirect(
                    Hop {
                        url: &url,
                        ip: from_ip,
                    },
                    Hop {
                        url: &next,
                        ip: to_ip,
                    },
                    self.insecure,
                    &mut r.waived,
                )
                .map_err(|e| format!("Get {:?}: {e}", next.to_string()))?;
                next
            }
            s => return Err(format!("resolve: unexpected status {s}")),
        };
        report
            .lock()
            .unwrap()
            .blobs
            .get_mut(d)
            .unwrap()
            .transfer_url = transfer.to_string();

        let final_path = blob_path(&self.models, d);
        let partial = PathBuf::from(format!("{}-partial", final_path.display()));
        let mut file = std::fs::File::create(&partial).map_err(|e| e.to_string())?;
        let mut hasher = sha2::Sha256::new();
        let mut have = 0u64;
        let mut resumes = 0;
        loop {
            let mut h = self.ua().to_vec();
            if have > 0 {
                h.push(("range", format!("bytes={have}-")));
            }
            let mut resp = self.net.send(&Method::GET, &transfer, &h).await?;
            Self::note(
                report,
                format!("GET {transfer} → {} (transfer from {have})", resp.status),
            );
            match (have, resp.status) {
                (0, 200) => {}
                (n, 206) if n > 0 => {
                    let cr = resp.header("content-range").unwrap_or_default();
                    if !cr.starts_with(&format!("bytes {n}-")) {
                        return Err(format!("resume at {n}: Content-Range {cr:?}"));
                    }
                }
                (_, s) => return Err(format!("transfer: unexpected status {s}")),
            }
            let mut werr = None;
            let (n, r) = resp
                .read_body(Some(layer.size - have + 1), |chunk| {
                    hasher.update(chunk);
                    if let Err(e) = file.write_all(chunk) {
                        werr = Some(e.to_string());
                    }
                })
                .await;
            Self::count(report, d, n);
            if let Some(e) = werr {
                return Err(e);
            }
            have += n;
            if have > layer.size {
                return Err(format!("size mismatch: more than {} bytes", layer.size));
            }
            match r {
                Ok(()) if have == layer.size => break,
                Ok(()) => return Err(format!("size mismatch: {have} of {} bytes", layer.size)),
                Err(e) if resumes < 5 => {
                    resumes += 1;
                    report.lock().unwrap().blobs.get_mut(d).unwrap().resumes = resumes;
                    Self::note(report, format!("dropped at {have}: {e}"));
                }
                Err(e) => return Err(e),
            }
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if &got != d {
            let _ = std::fs::remove_file(&partial);
            return Err(format!("digest mismatch: want {d}, got {got}"));
        }
        drop(file);
        std::fs::rename(&partial, &final_path).map_err(|e| e.to_string())
    }
}
