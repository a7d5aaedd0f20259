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

/// Builds the archive of complete models (off the async workers: it opens every blob), or the
/// 409/500 answer saying why not.
pub async fn archive(state: &Arc<State>, models: &[Model]) -> Result<Archive, Box<Response<Body>>> {
    if let Some(m) = models.iter().find(|m| !m.complete) {
        return Err(Box::new(incomplete(
            m,
            &format!("{} blob(s) missing", m.missing.len()),
        )));
    }
    let built = {
        let (st, ms) = (state.clone(), models.to_vec());
        tokio::task::spawn_blocking(move || Archive::build_many(&st.layout, &st.pins, &ms)).await
    };
    match built {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e)) => Err(Box::new(incomplete(&models[0], &e.0))),
        Err(e) => Err(Box::new(body::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("building the archive failed: {e}"),
        ))),
    }
}

pub async fn tar<B>(req: &Request<B>, peer: Peer, state: &Arc<State>) -> Response<Body> {
    let rest = req.uri().path().trim_start_matches("/models/");
    let models = match lookup_many(state, rest).await {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let archive = match archive(state, &models).await {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    let len = archive.len;
    let what = models
        .iter()
        .map(|m| m.name.short_name())
        .collect::<Vec<_>>()
        .join(",");
    let file_name = match models.as_slice() {
        [m] => format!("{}-{}.tar", m.name.model, m.name.tag),
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
    if let [m] = models.as_slice() {
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

/// The control socket's `export`: the bundle of these models, or why not (worded for the CLI).
pub async fn bundle(state: &Arc<State>, names: &[String]) -> Result<(Vec<Model>, Archive), String> {
    if names.is_empty() {
        return Err("name at least one model".into());
    }
    let snap = super::catalog::current(state).await;
    let mut models: Vec<Model> = Vec::new();
    for n in names {
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
    let built = {
        let (st, ms) = (state.clone(), models.clone());
        tokio::task::spawn_blocking(move || Archive::build_many(&st.layout, &st.pins, &ms)).await
    };
    match built {
        Ok(Ok(a)) => {
            for m in &models {
                state.index.touch_manifest(&m.name);
            }
            Ok((models, a))
        }
        Ok(Err(e)) => Err(e.0),
        Err(e) => Err(format!("building the archive failed: {e}")),
    }
}
