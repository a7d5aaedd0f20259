//! `GET /manifests/<name>` (the manifest bytes exactly as cached, so their sha256 is the ID) and
//! `GET /models/<name>[,<name>...]` (the models as one tar stream, see [`super::tar`]). Both look the name up in
//! the catalog only, so nothing that is not a model in the cache can be reached.

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use std::sync::Arc;

use super::catalog::Model;
use super::request::model_from_path;
use super::tar::Archive;
use crate::http::body::{self, Body};
use crate::http::Peer;
use crate::hub::repo::HubRef;
use crate::state::State;

const DEFAULT_MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";

async fn lookup(state: &Arc<State>, rest: &str) -> Result<Model, Box<Response<Body>>> {
    let name =
        model_from_path(rest).map_err(|e| Box::new(body::text(StatusCode::BAD_REQUEST, e)))?;
    let snap = super::catalog::current(state).await;
    snap.find(&name).cloned().ok_or_else(|| {
        Box::new(body::text(
            StatusCode::NOT_FOUND,
            format!(
                "model {} is not in this cache (see /api/models for what is)",
                name.short_name()
            ),
        ))
    })
}

fn set(resp: &mut Response<Body>, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

pub async fn manifest<B>(req: &Request<B>, state: &Arc<State>) -> Response<Body> {
    let rest = req.uri().path().trim_start_matches("/manifests/");
    let model = match lookup(state, rest).await {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    // A side-load (install.sh) starts here: a use of the model for LRU eviction.
    state.index.touch_manifest(&model.name);
    let media_type = serde_json::from_slice::<serde_json::Value>(&model.manifest_bytes)
        .ok()
        .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
        .unwrap_or_else(|| DEFAULT_MANIFEST_TYPE.to_string());
    let len = model.manifest_bytes.len();
    let mut resp = Response::new(body::full(model.manifest_bytes.as_ref().clone()));
    set(&mut resp, header::CONTENT_TYPE, &media_type);
    set(&mut resp, header::CONTENT_LENGTH, &len.to_string());
    set(&mut resp, header::ETAG, &format!("\"{}\"", model.digest));
    set(
        &mut resp,
        header::HeaderName::from_static("docker-content-digest"),
        model.digest.as_str(),
    );
    resp
}

/// Looks up every model of a comma-separated list (`a:1,b:2`), in order, without repeats.
pub async fn lookup_many(
    state: &Arc<State>,
    rest: &str,
) -> Result<Vec<Model>, Box<Response<Body>>> {
    if rest.is_empty() {
        return Err(Box::new(body::text(
            StatusCode::BAD_REQUEST,
            "name at least one model: /models/NAME[,NAME...]",
        )));
    }
    let mut models: Vec<Model> = Vec::new();
    for part in rest.split(',') {
        let m = lookup(state, part).await?;
        if !models.iter().any(|x| x.name == m.name) {
            models.push(m);
        }
    }
    if models.len() > MAX_BUNDLE_MODELS {
        return Err(Box::new(body::text(
            StatusCode::BAD_REQUEST,
            format!("at most {MAX_BUNDLE_MODELS} models in one bundle"),
        )));
    }
    Ok(models)
}

/// A bound on one request's work (each name is a catalog lookup and a set of open files).
const MAX_BUNDLE_MODELS: usize = 256;

pub async fn tar<B>(req: &Request<B>, peer: Peer, state: &Arc<State>) -> Response<Body> {
    let rest = req.uri().path().trim_start_matches("/models/");
    let (ollama, hub) = match hub_names(rest.split(',')) {
        Ok(x) => x,
        Err(e) => return body::text(StatusCode::BAD_REQUEST, e),
    };
    let models = if ollama.is_empty() && !hub.is_empty() {
        Vec::new()
    } else {
        match lookup_many(state, &ollama.join(",")).await {
            Ok(m) => m,
            Err(resp) => return *resp,
        }
    };
    if let Some(m) = models.iter().find(|m| !m.complete) {
        return incomplete(m, &format!("{} blob(s) missing", m.missing.len()));
    }
    let (_, archive) = match build(state, models.clone(), hub.clone()).await {
        Ok(x) => x,
        Err(e) => match models.first().filter(|_| hub.is_empty()) {
            Some(m) => return incomplete(m, &e),
            None => return body::text(StatusCode::CONFLICT, e),
        },
    };
    let what: Vec<String> = models
        .iter()
        .map(|m| m.name.short_name())
        .chain(hub.iter().map(|h| h.to_string()))
        .collect();
    let what = what.join(",");
    let len = archive.len;
    let file_name = match (models.as_slice(), hub.as_slice()) {
        ([m], []) => format!("{}-{}.tar", m.name.model, m.name.tag),
        ([], [h]) => format!("{}.tar", h.repo.folder()),
        _ => "lancache-bundle.tar".to_string(),
    };
    let mut resp = if req.method() == Method::HEAD {
        Response::new(body::empty())
    } else {
        let client = crate::http::client::client_addr(
            peer.addr,
            req.headers(),
            &state.config().http.trusted_proxies,
        );
        let session = state.sessions.start(client, what, len);
        for m in &models {
            state.index.touch_manifest(&m.name);
        }
        Response::new(archive.into_body(session))
    };
    set(&mut resp, header::CONTENT_TYPE, "application/x-tar");
    set(&mut resp, header::CONTENT_LENGTH, &len.to_string());
    set(
        &mut resp,
        header::CONTENT_DISPOSITION,
        &format!("attachment; filename=\"{file_name}\""),
    );
    if let ([m], true) = (models.as_slice(), hub.is_empty()) {
        set(&mut resp, header::ETAG, &format!("\"{}\"", m.digest));
    }
    resp
}

fn incomplete(model: &Model, why: &str) -> Response<Body> {
    body::text(
        StatusCode::CONFLICT,
        format!(
            "model {} is not complete in this cache ({why}); pull it through the cache first \
             (e.g. `ollama pull {}` on a client using the cache), then retry",
            model.name.short_name(),
            model.name.short_name()
        ),
    )
}

/// Hub repos among a bundle's names (`hf:org/name[@rev]`), parsed, apart from the rest.
fn hub_names<'a>(
    names: impl Iterator<Item = &'a str>,
) -> Result<(Vec<&'a str>, Vec<HubRef>), String> {
    let mut ollama = Vec::new();
    let mut hub = Vec::new();
    for n in names {
        if HubRef::is_hub_name(n) {
            let r = HubRef::parse(&crate::hub::repo::decode(n)?)?;
            if !hub.contains(&r) {
                hub.push(r);
            }
        } else {
            ollama.push(n);
        }
    }
    Ok((ollama, hub))
}

/// Builds the archive of complete models and these Hub repo revisions (off the async
/// workers: it opens every blob); the names of what it holds.
async fn build(
    state: &Arc<State>,
    models: Vec<Model>,
    hub: Vec<HubRef>,
) -> Result<(Vec<String>, Archive), String> {
    let st = state.clone();
    let built = tokio::task::spawn_blocking(move || {
        let (hub_names, entries) = if hub.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            crate::hub::bundle::export(&st.hub.cache, &hub)?
        };
        let a = Archive::build_many(&st.layout, &st.pins, &models, entries).map_err(|e| e.0)?;
        let mut names: Vec<String> = models.iter().map(|m| m.name.to_string()).collect();
        names.extend(hub_names);
        Ok((names, a))
    })
    .await;
    built.unwrap_or_else(|e| Err(format!("building the archive failed: {e}")))
}

/// The control socket's `export`: the bundle of these models and Hub repos, or why not
/// (worded for the CLI).
pub async fn bundle(
    state: &Arc<State>,
    names: &[String],
) -> Result<(Vec<String>, Archive), String> {
    if names.is_empty() {
        return Err("name at least one model".into());
    }
    let (ollama, hub) = hub_names(names.iter().map(String::as_str))?;
    let snap = super::catalog::current(state).await;
    let mut models: Vec<Model> = Vec::new();
    for n in ollama {
        let name = crate::store::ModelRef::parse(n).map_err(|e| e.to_string())?;
        let m = snap.find(&name).cloned().ok_or_else(|| {
            format!(
                "model {} is not in this cache (see `lancachectl models`)",
                name.short_name()
            )
        })?;
        if !m.complete {
            return Err(format!(
                "model {} is not complete in this cache ({} blob(s) missing)",
                m.name.short_name(),
                m.missing.len()
            ));
        }
        if !models.iter().any(|x| x.name == m.name) {
            models.push(m);
        }
    }
    let built = build(state, models.clone(), hub).await?;
    for m in &models {
        state.index.touch_manifest(&m.name);
    }
    Ok(built)
}
