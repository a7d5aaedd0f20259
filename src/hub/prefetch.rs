//! `lancachectl prefetch hf:org/name[@rev]`: every file of a revision filled through the cache
//! as a client's download would be. The revision is resolved ([`Ctx::commit_for`], kept as
//! the hub cache's ref), the repo info and the recursive tree are asked through the cache (so
//! they are kept at the commit, for clients that come later with upstream down), then each
//! file: an LFS file joins or starts the single-flight sliced fill (sha256-verified, then
//! hardlinked into the hub cache), a small file is fetched once and checked against its git
//! blob SHA-1. No token is sent: a gated or private repo gets upstream's refusal.
//!
//! Progress is kept per job (one per `hf:…@rev`), per file, until the same name is
//! prefetched again; LFS bytes landed come from the fill registry while a fill runs.

use http::{header, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::fetch::{origin, HubFetcher};
use super::repo::{HubRef, RepoId};
use super::upstream::Ctx;
use crate::http::body::Body;
use crate::state::State;
use crate::store::fill::{FillStage, Joined, Origin};
use crate::store::Digest;

/// One file of a prefetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProgress {
    /// The job's name, `hf:org/name@rev`.
    pub name: String,
    pub path: String,
    /// `sha256:<hex>` (LFS) or `sha1:<git blob hex>`.
    pub hash: String,
    pub size: u64,
    pub landed: u64,
    pub state: FillStage,
}

struct Job {
    repo: RepoId,
    commit: String,
    files: Mutex<Vec<FileProgress>>,
}

impl Job {
    fn set(&self, path: &str, st: FillStage) {
        for f in self.files.lock().unwrap().iter_mut() {
            if f.path == path {
                if st == FillStage::Done {
                    f.landed = f.size;
                }
                f.state = st.clone();
            }
        }
    }

    fn running(&self) -> bool {
        self.files
            .lock()
            .unwrap()
            .iter()
            .any(|f| matches!(f.state, FillStage::Pending | FillStage::Filling))
    }
}

#[derive(Default)]
pub struct Prefetches {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

impl Prefetches {
    /// Whether a prefetch of `repo` at `commit` still has files to fetch.
    pub fn running(&self, repo: &RepoId, commit: &str) -> bool {
        self.jobs
            .lock()
            .unwrap()
            .values()
            .any(|j| &j.repo == repo && j.commit == commit && j.running())
    }

    /// The files of the job `name` (canonical `hf:…@rev`), with LFS progress from `fills`.
    pub fn progress(&self, state: &State, name: &str) -> Option<Vec<FileProgress>> {
        let job = self.jobs.lock().unwrap().get(name).cloned()?;
        let fills = state.proxy.fills.snapshot();
        let mut files = job.files.lock().unwrap().clone();
        for f in files.iter_mut() {
            if let Some(s) = fills.iter().find(|s| s.digest.as_str() == f.hash) {
                f.landed = s.landed;
            }
        }
        Some(files)
    }
}

/// A request as the cache's own: no token, a host of its own for any `Link` it reads.
fn own_request(query: &str) -> Request<()> {
    let uri = if query.is_empty() {
        "/".to_string()
    } else {
        format!("/?{query}")
    };
    let mut r = Request::new(());
    *r.uri_mut() = uri.parse().unwrap_or_default();
    r.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("lancached.prefetch"));
    r
}

fn peer() -> crate::http::Peer {
    let a = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    crate::http::Peer {
        addr: a,
        local: a,
        tls: false,
    }
}

/// An answer that is not a 200, worded for the operator.
async fn refusal(resp: Response<Body>) -> String {
    let status = resp.status();
    let msg = resp
        .headers()
        .get("x-error-message")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = msg.unwrap_or_else(|| {
        let t = String::from_utf8_lossy(&body);
        serde_json::from_str::<serde_json::Value>(&t)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| t.chars().take(300).collect())
    });
    format!("upstream answered {status}: {}", text.trim())
}

async fn body_json(resp: Response<Body>) -> Result<(serde_json::Value, Option<String>), String> {
    if !resp.status().is_success() {
        return Err(refusal(resp).await);
    }
    let link = resp
        .headers()
        .get(header::LINK)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    let v = serde_json::from_slice(&bytes).map_err(|e| format!("the answer is not JSON: {e}"))?;
    Ok((v, link))
}

/// The query of a `Link: <…?query>; rel="next"`.
fn next_query(link: &str) -> Option<String> {
    link.split(',')
        .find(|p| p.contains("rel=\"next\""))
        .and_then(|p| {
            let url = &p[p.find('<')? + 1..p.find('>')?];
            Some(url.split_once('?')?.1.to_string())
        })
}

/// Resolves `h`, lists its files and starts fetching them; returns the job's name once the
/// fetches are under way.
pub async fn start(state: &Arc<State>, h: &HubRef) -> Result<String, String> {
    let name = h.to_string();
    let repo = &h.repo;
    let req = own_request("");
    let ctx = Ctx::new(&req, "", peer(), state);
    let commit = match ctx.commit_for(repo, h.rev_or_main()).await {
        Ok(c) => c,
        Err(r) => return Err(refusal(r).await),
    };
    // The repo info as a client asks it first (kept at the commit for later clients).
    let info = super::api::info(&ctx, &req, repo, &commit).await;
    let _ = body_json(info).await?;
    let mut files = Vec::new();
    let mut query = "recursive=true&expand=false".to_string();
    for _ in 0..10_000 {
        let q = own_request(&query);
        let (v, link) = body_json(super::api::tree(&ctx, &q, repo, &commit, "").await).await?;
        for e in v.as_array().into_iter().flatten() {
            if e["type"] != "file" {
                continue;
            }
            let Some(path) = e["path"].as_str() else {
                continue;
            };
            if !super::repo::valid_path(path) {
                return Err(format!("upstream's tree names an invalid path {path:?}"));
            }
            let (hash, size) = match e["lfs"]["oid"].as_str() {
                Some(sha) => (format!("sha256:{sha}"), e["lfs"]["size"].as_u64()),
                None => (
                    format!("sha1:{}", e["oid"].as_str().unwrap_or_default()),
                    e["size"].as_u64(),
                ),
            };
            files.push(FileProgress {
                name: name.clone(),
                path: path.to_string(),
                hash,
                size: size.unwrap_or(0),
                landed: 0,
                state: FillStage::Pending,
            });
        }
        match link.as_deref().and_then(next_query) {
            Some(q) => query = q,
            None => break,
        }
    }
    let job = Arc::new(Job {
        repo: repo.clone(),
        commit: commit.clone(),
        files: Mutex::new(files.clone()),
    });
    state
        .hub
        .prefetch
        .jobs
        .lock()
        .unwrap()
        .insert(name.clone(), job.clone());
    tracing::info!(repo = %name, %commit, files = files.len(), "hub: prefetch started");
    let mut small = Vec::new();
    for f in &files {
        if state.hub.cache.find(repo, &commit, &f.path).is_some() {
            state
                .index
                .record_fetched_unit(&super::tenant::unit_key(repo, &commit));
            job.set(&f.path, FillStage::Done);
            continue;
        }
        match f.hash.strip_prefix("sha256:") {
            Some(sha) => start_lfs(state, &job, f, sha).await,
            None => small.push(f.clone()),
        }
    }
    // Small files one after another, off the caller: each is a single short GET.
    let (st, job2) = (state.clone(), job.clone());
    tokio::spawn(async move {
        let req = own_request("");
        let ctx = Ctx::new(&req, "", peer(), &st);
        for f in small {
            let sha1 = f.hash.trim_start_matches("sha1:");
            let r =
                super::resolve::fetch_small(&ctx, &job2.repo, &job2.commit, &f.path, sha1, f.size)
                    .await;
            match r {
                Ok(()) => job2.set(&f.path, FillStage::Done),
                Err(resp) => job2.set(&f.path, FillStage::Failed(refusal(resp).await)),
            }
        }
    });
    Ok(name)
}

async fn start_lfs(state: &Arc<State>, job: &Arc<Job>, f: &FileProgress, sha: &str) {
    let Ok(digest) = Digest::parse(&f.hash) else {
        job.set(&f.path, FillStage::Failed(format!("bad sha256 {sha}")));
        return;
    };
    let fetcher = HubFetcher::new(state.clone(), &job.repo, &job.commit, &f.path, None, f.size);
    let o = Origin {
        registry: super::ORIGIN.to_string(),
        repository: origin(&job.repo, &job.commit, &f.path),
    };
    let joined =
        crate::proxy::join_fill_with(state, &digest, f.size, f.size, o, Arc::new(fetcher)).await;
    match joined {
        Ok(Joined::Published) => {
            super::resolve::link_lfs(state, &job.repo, &job.commit, &f.path, &digest);
            job.set(&f.path, FillStage::Done);
        }
        Ok(Joined::Filling(fill)) => {
            job.set(&f.path, FillStage::Filling);
            let (state, job, path) = (state.clone(), job.clone(), f.path.clone());
            tokio::spawn(async move {
                match fill.finished().await {
                    Ok(()) => {
                        super::resolve::link_lfs(&state, &job.repo, &job.commit, &path, &digest);
                        job.set(&path, FillStage::Done);
                    }
                    Err(e) => job.set(&path, FillStage::Failed(e)),
                }
            });
        }
        Err(e) => job.set(&f.path, FillStage::Failed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn next_page_query() {
        let l = r#"<http://h/hf/api/models/o/n/tree/c?recursive=true&cursor=abc>; rel="next""#;
        assert_eq!(
            super::next_query(l).as_deref(),
            Some("recursive=true&cursor=abc")
        );
        assert_eq!(super::next_query(r#"<http://h/x?y>; rel="prev""#), None);
    }
}
