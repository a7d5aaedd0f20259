//! `GET /`: the web UI, one self-contained page (`webui.html`: HTML, CSS and a little JS, no
//! external assets, so it works on an offline LAN). It is static: everything variable arrives
//! through the JSON APIs and is put into the page with `textContent`, never as HTML, so no
//! model name, header or address can inject markup. A strict CSP backs that up.

use http::{header, HeaderValue, Response, StatusCode};

use crate::http::body::{self, Body};

pub const PAGE: &str = include_str!("webui.html");

pub fn page() -> Response<Body> {
    let mut r = Response::new(body::full(PAGE));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(PAGE.len()));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
