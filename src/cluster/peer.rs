//! Streaming a blob from the node that holds its lease, while that node fills it: the same
//! request a child cache makes of its parent (`GET /v2/<repo>/blobs/<digest>` with `Range`,
//! the registry's name as `Host`, the loop-guard hop list), over plain HTTP to the holder's
//! data plane. The holder answers from its running fill with its waiter semantics (bytes as
//! they land, the last byte after the hash), and the answer is checked like an upstream one.

use futures_util::StreamExt;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

use crate::proxy::fetch::{content_range, error_chain, is_truncation};
use crate::store::fill::{ByteStream, FetchError};
use crate::store::Digest;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes `start..=end` of `digest` (of `size`) from the holder at `addr`.
#[allow(clippy::too_many_arguments)]
pub async fn fetch(
    addr: SocketAddr,
    registry: &str,
    repository: &str,
    digest: &Digest,
    size: u64,
    start: u64,
    end: u64,
    hops: HeaderValue,
) -> Result<ByteStream, FetchError> {
    let unreachable = |e: String| FetchError::new("peer_unreachable", format!("{addr}: {e}"));
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| unreachable("connect timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(async move {
        // Lives until the body is read to its end or dropped.
        let _ = conn.await;
    });
    let req = Request::get(format!("/v2/{repository}/blobs/{digest}"))
        .header(header::HOST, registry)
        .header(header::RANGE, format!("bytes={start}-{end}"))
        .header(crate::proxy::upstream::LOOP_HEADER, hops)
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| FetchError::new("config", e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unreachable(error_chain(&e)))?;
    match resp.status() {
        StatusCode::PARTIAL_CONTENT => {
            let cr = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range);
            if !matches!(cr, Some((a, b, t)) if a == start && b == end && t.is_none_or(|t| t == size))
            {
                return Err(FetchError::new(
                    "peer_range",
                    format!("asked {addr} for bytes {start}-{end}/{size}, got {cr:?}"),
                ));
            }
        }
        StatusCode::OK if start == 0 && end + 1 == size => {}
        s => {
            return Err(FetchError::new(
                "peer_status",
                format!("{addr} answered {s}"),
            ))
        }
    }
    Ok(resp
        .into_body()
        .into_data_stream()
        .map(|r| {
            r.map_err(|e| {
                let kind = if is_truncation(&e) {
                    "truncated"
                } else {
                    "peer_body"
                };
                FetchError::new(kind, error_chain(&e))
            })
        })
        .boxed())
}
