//! A test client that pulls the way Ollama's classic downloader (`server/download.go`) does,
//! under 0.34.2's redirect policy (see `strict_http` for the policy and its messages), so the
//! suite covers the clients users have now and not only the real 0.5.4:
//!
//! - name `[scheme://][host[:port]/][namespace/]model[:tag]`, defaults https,
//!   registry.ollama.ai, library, latest; `insecure` makes the scheme http;
//! - manifest `GET` with the Docker v2 `Accept` and `User-Agent: ollama/0.34.2 (amd64 linux)
//!   Go/go1.24.1` (version configurable); redirects followed under the policy;
//! - per blob (layers, then the config): `HEAD` with redirects followed under the policy,
//!   `Content-Length` = size; then the direct-URL `GET`: same-host redirects followed (checked),
//!   stop at the first other host, only 307 or 200 accepted there ("unexpected status code N"),
//!   its `Location` (relative or absolute) is the direct URL ("http: no Location header in
//!   response" without one) and is checked by the policy too; the body is closed unread;
//! - parts of clamp(size/16, min, max) (100 MB / 1000 MB, configurable so tests can force 16
//!   parts on small blobs), up to 16 at once, each a `Range: bytes=a-b` GET of the direct URL
//!   that copies exactly the part's length to its offset WITHOUT looking at the status (a server
//!   that ignores Range corrupts the blob, as with the real client); a short part is retried from
//!   where it stopped; then sha256 over the file ("digest mismatch");
//! - `blobs/sha256-<hex>` and `manifests/<host>/<ns>/<model>/<tag>` (the upstream bytes) written
//!   in Ollama's layout; a blob already present is not fetched again.
//!
//! Everything is recorded in a [`PullReport`]: requests, redirects followed, checks `insecure`
//! waived, bytes received per blob, the error.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http::Method;

use super::strict_http::{
    check_redirect, go_op, is_redirect, split_authority, Hop, Net, Resp, Url,
};

pub const DEFAULT_REGISTRY: &str = "registry.ollama.ai";
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// `[scheme://][host/][namespace/]model[:tag]`, as Ollama's `ParseModelPath` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelName {
    pub scheme: String,
    /// With the port when one was given.
    pub host: String,
    pub namespace: String,
    pub model: String,
    pub tag: String,
}

impl ModelName {
    pub fn parse(name: &str, insecure: bool) -> Result<ModelName, String> {
        let (scheme, rest) = match name.split_once("://") {
            Some((s, r)) => (s.to_string(), r),
            None => ("https".to_string(), name),
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (host, ns, model_tag) = match parts.as_slice() {
            [m] => (DEFAULT_REGISTRY, "library", *m),
            [n, m] => (DEFAULT_REGISTRY, *n, *m),
            [h, n, m] => (*h, *n, *m),
            _ => return Err(format!("invalid model name {name:?}")),
        };
        let (model, tag) = match model_tag.rsplit_once(':') {
            Some((m, t)) => (m, t),
            None => (model_tag, "latest"),
        };
        if host.is_empty() || ns.is_empty() || model.is_empty() || tag.is_empty() {
            return Err(format!("invalid model name {name:?}"));
        }
        Ok(ModelName {
            scheme: if insecure { "http".into() } else { scheme },
            host: host.to_string(),
            namespace: ns.to_string(),
            model: model.to_string(),
            tag: tag.to_string(),
        })
    }

    pub fn base(&self) -> Result<Url, String> {
        let default = if self.scheme == "https" { 443 } else { 80 };
        let (h, p) = split_authority(&self.host, default)?;
        Url::parse(&format!("{}://{h}:{p}/", self.scheme))
    }

    pub fn repo(&self) -> String {
        format!("{}/{}", self.namespace, self.model)
    }

    /// Ollama's manifest path below the models directory.
    pub fn manifest_path(&self, models: &Path) -> PathBuf {
        models
            .join("manifests")
            .join(&self.host)
            .join(&self.namespace)
            .join(&self.model)
            .join(&self.tag)
    }
}

/// One blob the manifest names.
#[derive(Debug, Clone)]
pub struct Layer {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// Layers, then the config (the order ollama downloads them in).
pub fn parse_manifest(bytes: &[u8]) -> Result<Vec<Layer>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("bad manifest: {e}"))?;
    let one = |l: &serde_json::Value| -> Result<Layer, String> {
        Ok(Layer {
            media_type: l["mediaType"].as_str().unwrap_or_default().to_string(),
            digest: l["digest"]
                .as_str()
                .filter(|d| d.starts_with("sha256:") && d.len() == 71)
                .ok_or_else(|| format!("bad digest in manifest: {l}"))?
                .to_string(),
            size: l["size"]
                .as_u64()
                .ok_or_else(|| format!("bad size in manifest: {l}"))?,
        })
    };
    let mut out = Vec::new();
    for l in v["layers"].as_array().ok_or("manifest has no layers")? {
        out.push(one(l)?);
    }
    if v["config"].is_null() {
        return Err("manifest has no config".into());
    }
    out.push(one(&v["config"])?);
    Ok(out)
}

/// `blobs/sha256-<hex>`.
pub fn blob_path(models: &Path, digest: &str) -> PathBuf {
    models.join("blobs").join(digest.replace(':', "-"))
}

#[derive(Debug, Clone, Default)]
pub struct BlobReport {
    pub size: u64,
    /// Body bytes this client read for the blob (ranged parts, retries included).
    pub received: u64,
    pub parts: usize,
    pub direct_url: String,
}

#[derive(Debug, Clone, Default)]
pub struct PullReport {
    pub manifest: Vec<u8>,
    pub blobs: BTreeMap<String, BlobReport>,
    /// `METHOD url → status`, in the order sent (parts interleave).
    pub requests: Vec<String>,
    /// `from → to` of every redirect followed.
    pub redirects: Vec<String>,
    /// Checks `insecure` waived (empty when the pull did not rely on them).
    pub waived: Vec<String>,
    pub error: Option<String>,
}

impl PullReport {
    /// Panics with the whole report unless the pull succeeded.
    pub fn expect_ok(&self, what: &str) -> &PullReport {
        if let Some(e) = &self.error {
            panic!("{what}: pull failed: {e}\n{self:#?}");
        }
        self
    }

    pub fn error(&self) -> &str {
        self.error.as_deref().unwrap_or("")
    }
}

/// The classic downloader with 0.34.2's rules.
#[derive(Clone)]
pub struct StrictOllama {
    pub net: Net,
    pub insecure: bool,
    /// `ollama/<version> (amd64 linux) Go/go1.24.1`.
    pub version: String,
    pub min_part: u64,
    pub max_part: u64,
    pub models: PathBuf,
}

const NUM_PARTS: u64 = 16;

type Shared = Arc<Mutex<PullReport>>;

impl StrictOllama {
    pub fn new(net: Net, models: &Path) -> StrictOllama {
        StrictOllama {
            net,
            insecure: false,
            version: "0.34.2".into(),
            min_part: 100_000_000,
            max_part: 1_000_000_000,
            models: models.to_path_buf(),
        }
    }

    pub fn insecure(mut self, yes: bool) -> Self {
        self.insecure = yes;
        self
    }

    /// Parts of `min..=max` bytes (`(1, u64::MAX)` gives 16 parts for any blob of 16+ bytes).
    pub fn part_size(mut self, min: u64, max: u64) -> Self {
        self.min_part = min;
        self.max_part = max;
        self
    }

    pub fn user_agent(&self) -> String {
        format!("ollama/{} (amd64 linux) Go/go1.24.1", self.version)
    }

    /// Pulls `name`; never panics on a protocol failure (the report says what happened).
    pub fn pull(&self, name: &str) -> PullReport {
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
        let ua = self.user_agent();
        let murl = base.join(&format!("/v2/{}/manifests/{}", name.repo(), name.tag))?;
        let headers = [
            ("accept", MANIFEST_ACCEPT.to_string()),
            ("user-agent", ua.clone()),
        ];
        let (mut resp, _) = follow(
            &self.net,
            &Method::GET,
            &murl,
            &headers,
            self.insecure,
            report,
            |_, _| true,
        )
        .await?;
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
        for layer in &layers {
            if blob_path(&self.models, &layer.digest).exists() {
                continue;
            }
            self.download_blob(&base, &name, layer, report).await?;
        }
        let mp = name.manifest_path(&self.models);
        std::fs::create_dir_all(mp.parent().unwrap()).map_err(|e| e.to_string())?;
        std::fs::write(&mp, &body).map_err(|e| format!("write manifest: {e}"))?;
        Ok(())
    }

    async fn download_blob(
        &self,
        base: &Url,
        name: &ModelName,
        layer: &Layer,
        report: &Shared,
    ) -> Result<(), String> {
        let url = base.join(&format!("/v2/{}/blobs/{}", name.repo(), layer.digest))?;
        let ua = [("user-agent", self.user_agent())];
        // Prepare: HEAD, redirects followed (checked).
        let (head, _) = follow(
            &self.net,
            &Method::HEAD,
            &url,
            &ua,
            self.insecure,
            report,
            |_, _| true,
        )
        .await?;
        registry_status(&head, &Method::HEAD, &url)?;
        let total: u64 = head
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("HEAD {url}: {} without Content-Length", head.status))?;
        drop(head);

        // The direct URL: same-host redirects followed, stop at the first other host.
        let origin = url.host.clone();
        let (resp, at) = follow(
            &self.net,
            &Method::GET,
            &url,
            &ua,
            self.insecure,
            report,
            |_, next| next.host == origin,
        )
        .await?;
        registry_status(&resp, &Method::GET, &url)?;
        if resp.status != 307 && resp.status != 200 {
            return Err(format!("unexpected status code {}", resp.status));
        }
        let location = resp
            .header("location")
            .ok_or("http: no Location header in response")?
            .to_string();
        let direct = at.join(&location)?;
        let from_ip = resp.peer.ip();
        // Close the body after the headers, as the downloader's `defer resp.Body.Close()` does.
        drop(resp);
        let to_ip = self.net.lookup(&direct).await?.ip();
        {
            let mut r = report.lock().unwrap();
            let PullReport { waived, .. } = &mut *r;
            check_redirect(
                Hop {
                    url: &at,
                    ip: from_ip,
                },
                Hop {
                    url: &direct,
                    ip: to_ip,
                },
                self.insecure,
                waived,
            )
            .map_err(|e| format!("direct URL {:?}: {e}", direct.to_string()))?;
            r.blobs.insert(
                layer.digest.clone(),
                BlobReport {
                    size: total,
                    direct_url: direct.to_string(),
                    ..Default::default()
                },
            );
        }

        // The parts.
        let size = (total / NUM_PARTS).clamp(self.min_part.max(1), self.max_part);
        let mut parts = Vec::new();
        let mut off = 0;
        while off < total {
            parts.push((off, (off + size).min(total)));
            off += size;
        }
        report
            .lock()
            .unwrap()
            .blobs
            .get_mut(&layer.digest)
            .unwrap()
            .parts = parts.len();
        let final_path = blob_path(&self.models, &layer.digest);
        let partial = PathBuf::from(format!("{}-partial", final_path.display()));
        let file = std::fs::File::create(&partial).map_err(|e| e.to_string())?;
        file.set_len(total).map_err(|e| e.to_string())?;
        let file = Arc::new(Mutex::new(file));
        let sem = Arc::new(tokio::sync::Semaphore::new(NUM_PARTS as usize));
        let mut tasks = tokio::task::JoinSet::new();
        for (a, b) in parts {
            let (net, direct, file, report, sem) = (
                self.net.clone(),
                direct.clone(),
                file.clone(),
                report.clone(),
                sem.clone(),
            );
            let (insecure, digest) = (self.insecure, layer.digest.clone());
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await.unwrap();
                download_part(&net, &direct, a, b, &file, insecure, &report, &digest).await
            });
        }
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r.map_err(|e| e.to_string()).and_then(|r| r) {
                tasks.abort_all();
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        }
        let got = sha256_file(&partial).map_err(|e| e.to_string())?;
        if got != layer.digest {
            let _ = std::fs::remove_file(&partial);
            return Err(format!(
                "digest mismatch, file must be downloaded again: want {}, got {got}",
                layer.digest
            ));
        }
        std::fs::rename(&partial, &final_path).map_err(|e| e.to_string())?;
        Ok(())
    }
}

fn sha256_file(p: &Path) -> std::io::Result<String> {
    use sha2::Digest as _;
    let mut f = std::fs::File::open(p)?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// `makeRequestWithRetry`'s view of a status: 404 and other 4xx/5xx are errors.
fn registry_status(resp: &Resp, m: &Method, url: &Url) -> Result<(), String> {
    match resp.status {
        404 => Err(format!("{} {url}: file does not exist", go_op(m))),
        s if s >= 400 => Err(format!("{} {url}: {s}", go_op(m))),
        _ => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn download_part(
    net: &Net,
    direct: &Url,
    start: u64,
    end: u64,
    file: &Arc<Mutex<std::fs::File>>,
    insecure: bool,
    report: &Shared,
    digest: &str,
) -> Result<(), String> {
    let mut done = 0u64;
    let len = end - start;
    for _attempt in 0..5 {
        // `http.DefaultClient`: no User-Agent of ollama's; redirects followed (checked).
        let range = [("range", format!("bytes={}-{}", start + done, end - 1))];
        let (mut resp, _) = follow(
            net,
            &Method::GET,
            direct,
            &range,
            insecure,
            report,
            |_, _| true,
        )
        .await?;
        // Whatever the status, copy the part's length to its offset (io.CopyN).
        let mut pos = start + done;
        let mut write_err = None;
        let (n, r) = resp
            .read_body(Some(len - done), |chunk| {
                let mut f = file.lock().unwrap();
                if let Err(e) = f
                    .seek(SeekFrom::Start(pos))
                    .and_then(|_| f.write_all(chunk))
                {
                    write_err = Some(e.to_string());
                }
                pos += chunk.len() as u64;
            })
            .await;
        if let Some(e) = write_err {
            return Err(e);
        }
        done += n;
        let mut rep = report.lock().unwrap();
        rep.blobs.get_mut(digest).unwrap().received += n;
        if done == len {
            return Ok(());
        }
        // Short: the part starts again from where it stopped, as the downloader's retry does.
        let why = r.err().unwrap_or_else(|| "body ended early".into());
        rep.requests.push(format!(
            "part {start}-{}: {done} of {len} bytes: {why}",
            end - 1
        ));
    }
    Err(format!(
        "part {start}-{}: {done} of {len} bytes after 5 attempts (unexpected EOF)",
        end - 1
    ))
}

/// Sends `method url`, following redirects (at most 10, each checked by the policy) while
/// `follow_if(from, to)` says so; returns the last response and the URL it answered.
pub async fn follow(
    net: &Net,
    method: &Method,
    url: &Url,
    headers: &[(&str, String)],
    insecure: bool,
    report: &Shared,
    follow_if: impl Fn(&Url, &Url) -> bool,
) -> Result<(Resp, Url), String> {
    let mut at = url.clone();
    for hop in 0..=10 {
        let resp = net.send(method, &at, headers).await?;
        report.lock().unwrap().requests.push(format!(
            "{method} {at} → {} ({:?})",
            resp.status, resp.version
        ));
        if !is_redirect(resp.status) {
            return Ok((resp, at));
        }
        let Some(loc) = resp.header("location") else {
            return Ok((resp, at));
        };
        let next = at.join(loc)?;
        if !follow_if(&at, &next) {
            return Ok((resp, at));
        }
        if hop == 10 {
            return Err(format!(
                "{} {:?}: stopped after 10 redirects",
                go_op(method),
                next.to_string()
            ));
        }
        let to_ip = net.lookup(&next).await?.ip();
        let mut r = report.lock().unwrap();
        let PullReport {
            waived, redirects, ..
        } = &mut *r;
        check_redirect(
            Hop {
                url: &at,
                ip: resp.peer.ip(),
            },
            Hop {
                url: &next,
                ip: to_ip,
            },
            insecure,
            waived,
        )
        .map_err(|e| format!("{} {:?}: {e}", go_op(method), next.to_string()))?;
        redirects.push(format!("{} {at} → {next}", resp.status));
        drop(r);
        at = next;
    }
    unreachable!()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_like_ollama() {
        let n = ModelName::parse("llama3", false).unwrap();
        assert_eq!(
            (
                n.scheme.as_str(),
                n.host.as_str(),
                n.namespace.as_str(),
                n.model.as_str(),
                n.tag.as_str()
            ),
            ("https", "registry.ollama.ai", "library", "llama3", "latest")
        );
        let n =
            ModelName::parse("hf.co/bartowski/llama-3.2-1b-instruct-gguf:q4_k_m", true).unwrap();
        assert_eq!(
            (n.scheme.as_str(), n.host.as_str(), n.tag.as_str()),
            ("http", "hf.co", "q4_k_m")
        );
        let n = ModelName::parse("http://127.0.0.1:8080/library/tiny", false).unwrap();
        assert_eq!(n.base().unwrap().to_string(), "http://127.0.0.1:8080/");
        assert_eq!(
            n.manifest_path(Path::new("/m")),
            Path::new("/m/manifests/127.0.0.1:8080/library/tiny/latest")
        );
        assert_eq!(ModelName::parse("me/x:1", false).unwrap().namespace, "me");
        assert!(ModelName::parse("a/b/c/d", false).is_err());
    }
}
