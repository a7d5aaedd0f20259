//! `GET /install.sh` and `GET /install.ps1`: the client side-loading scripts (kept in
//! `scripts/`, embedded at build time) with this cache's public URL filled in, so
//! `curl -fsSL http://cache/install.sh | sh -s -- llama3:8b` needs no other argument. The URL
//! lands inside a single-quoted string literal and is escaped for that language, whatever it
//! contains (it comes from the config or a validated `Host`, but quoting is not left to trust).

use http::{header, HeaderValue, Request, Response, StatusCode};

use super::public_url::public_url;
use crate::http::body::{self, Body};
use crate::http::Peer;
use crate::state::State;

pub const INSTALL_SH: &str = include_str!("../../scripts/install.sh");
pub const INSTALL_PS1: &str = include_str!("../../scripts/install.ps1");
const PLACEHOLDER: &str = "@LANCACHE_URL@";

#[derive(Clone, Copy)]
pub enum Script {
    Sh,
    Ps1,
}

/// The script text with `url` placed inside its single-quoted placeholder.
pub fn render(script: Script, url: &str) -> String {
    match script {
        Script::Sh => INSTALL_SH.replace(PLACEHOLDER, &url.replace('\'', r"'\''")),
        Script::Ps1 => INSTALL_PS1.replace(PLACEHOLDER, &url.replace('\'', "''")),
    }
}

pub fn serve<B>(req: &Request<B>, peer: Peer, state: &State, script: Script) -> Response<Body> {
    let url = public_url(&state.config(), req.headers(), peer.local, peer.tls);
    let text = render(script, &url);
    let len = text.len();
    let mut r = Response::new(body::full(text));
    *r.status_mut() = StatusCode::OK;
    let ct = match script {
        Script::Sh => "text/x-shellscript; charset=utf-8",
        Script::Ps1 => "text/plain; charset=utf-8",
    };
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_is_quoted_for_each_language() {
        let sh = render(Script::Sh, "http://a'b");
        assert!(sh.contains(r"'http://a'\''b'"));
        assert!(!sh.contains(PLACEHOLDER));
        let ps = render(Script::Ps1, "http://a'b");
        assert!(ps.contains("'http://a''b'"));
        assert!(!ps.contains(PLACEHOLDER));
    }
}
