//! `GET /manifests/<name>` (the manifest bytes exactly as cached, so their sha256 is the ID) and
//! `GET /models/<name>` (the model as a tar stream, see [`super::tar`]). Both look the name up in
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

pub async fn tar<B>(req: &Request<B>, peer: Peer, state: &Arc<State>) -> Response<Body> {
    let rest = req.uri().path().trim_start_matches("/models/");
    let model = match lookup(state, rest).await {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    if !model.complete {
        return incomplete(&model, &format!("{} blob(s) missing", model.missing.len()));
    }
    // Opening and checking every blob touches the disk: off the async workers.
    let built = {
        let (st, m) = (state.clone(), model.clone());
        tokio::task::spawn_blocking(move || Archive::build(&st.layout, &st.pins, &m)).await
    };
    let archive = match built {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return incomplete(&model, &e.0),
        Err(e) => {
            return body::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("building the archive failed: {e}"),
            )
        }
    };
    let len = archive.len;
    let file_name = format!("{}-{}.tar", model.name.model, model.name.tag);
    let mut resp = if req.method() == Method::HEAD {
        Response::new(body::empty())
    } else {
        let client = crate::http::client::client_addr(
            peer.addr,
            req.headers(),
            &state.config().http.trusted_proxies,
        );
        let session = state.sessions.start(client, model.name.short_name(), len);
        state.index.touch_manifest(&model.name);
        Response::new(archive.into_body(session))
    };
    set(&mut resp, header::CONTENT_TYPE, "application/x-tar");
    set(&mut resp, header::CONTENT_LENGTH, &len.to_string());
    set(
        &mut resp,
        header::CONTENT_DISPOSITION,
        &format!("attachment; filename=\"{file_name}\""),
    );
    set(&mut resp, header::ETAG, &format!("\"{}\"", model.digest));
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
