//! Bodies of published blobs as slices of a read-only memory mapping (`store::mapped`): hyper
//! writes them to the socket straight from the page cache (one kernel copy, no read into a
//! buffer of ours and no allocation per chunk).

use futures_util::stream;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::sync::Arc;

use crate::http::body::Body;
use crate::http::sessions::SessionGuard;
use crate::store::mapped::{slice, Mapping};
use crate::store::pins::Pin;

/// Bytes handed to hyper per frame; with vectored writes hyper sends them without copying.
pub const FRAME: u64 = 4 << 20;

/// The body for bytes `start..end` of a mapped blob; the pin and the client's session last as
/// long as the body. A frame's bytes count as sent when it is handed to hyper: one atomic add
/// per 4 MiB, nothing on the zero-copy path itself.
pub fn body(map: Arc<Mapping>, start: u64, end: u64, pin: Pin, session: SessionGuard) -> Body {
    let s = stream::iter((start..end).step_by(FRAME as usize)).map(move |at| {
        let _ = &pin;
        let to = (at + FRAME).min(end);
        session.add(to - at);
        Ok::<_, std::io::Error>(Frame::data(slice(&map, at, to)))
    });
    BodyExt::boxed(StreamBody::new(s))
}
