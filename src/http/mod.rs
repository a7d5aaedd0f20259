//! The HTTP front: accepts connections on the `http` listeners and serves them with hyper
//! (HTTP/1.1 and h2c), handing every request to the shared [`router`]. The HTTPS subsystem feeds
//! its decrypted streams into the same [`serve_connection`], so both speak the same routes.
//!
//! Shutdown is graceful: on cancel the accept loops stop, open connections finish the request
//! they are on (hyper's graceful shutdown), and the daemon's drain deadline bounds the wait.

pub mod body;
pub mod client;
pub mod metrics;
pub mod router;
pub mod sessions;
pub mod zerocopy;

use anyhow::Result;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::{Counters, State};

/// A slow client gets this long to send its request headers (slowloris defence). hyper's HTTP/1
/// timer only starts once the protocol has been detected, so [`serve_connection`] also gives
/// every connection this long to deliver its first complete request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The most a request head may take in the HTTP/1 read buffer (request line and headers
/// together); past it hyper answers 431 and closes. Real heads (Ollama, curl, browsers, OCI
/// clients with a bearer token) are well under 8 KiB; hyper's default (~400 KiB) would let
/// each slow client pin that much memory.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The same bound for an HTTP/2 header list (SETTINGS_MAX_HEADER_LIST_SIZE, RFC 9113 6.5.2).
/// The header count is bounded by hyper's default of 100 for HTTP/1 (431 past it), which is
/// left alone on purpose: setting it moves the header array from the stack to the heap.
pub const MAX_H2_HEADER_LIST: u32 = 64 * 1024;

/// Who is on the other end of a connection, and how it reached us.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Which local address the connection arrived on (to answer in the client's own network).
    pub local: SocketAddr,
    pub tls: bool,
}

pub async fn run(
    listeners: Vec<std::net::TcpListener>,
    state: Arc<State>,
    cancel: CancellationToken,
) -> Result<()> {
    let graceful = Arc::new(GracefulShutdown::new());
    let mut accept_loops = tokio::task::JoinSet::new();
    for l in listeners {
        l.set_nonblocking(true)?;
        let listener = TcpListener::from_std(l)?;
        accept_loops.spawn(accept_loop(
            listener,
            state.clone(),
            cancel.clone(),
            graceful.clone(),
        ));
    }
    while let Some(res) = accept_loops.join_next().await {
        res??;
    }
    // Every accept loop has stopped (cancelled); wait for in-flight requests to finish. The
    // daemon bounds this with its drain deadline.
    if let Ok(g) = Arc::try_unwrap(graceful) {
        g.shutdown().await;
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    cancel: CancellationToken,
    graceful: Arc<GracefulShutdown>,
) -> Result<()> {
    let local = listener.local_addr()?;
    while let Some((stream, addr)) = accept(&listener, &cancel, "http").await {
        let peer = Peer {
            addr,
            local,
            tls: false,
        };
        // Blob bodies that are slices of mapped files leave through sendfile(2).
        serve_connection(
            zerocopy::ZeroCopyStream(stream),
            peer,
            state.clone(),
            &graceful,
        );
    }
    Ok(())
}

/// The next client on `listener`, with Nagle off; `None` once `cancel` fires. Shared by the
/// HTTP and HTTPS accept loops.
pub async fn accept(
    listener: &TcpListener,
    cancel: &CancellationToken,
    what: &str,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            // Shutdown: stop accepting; in-flight connections are drained by the caller.
            _ = cancel.cancelled() => return None,
            // A new client.
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, addr));
                }
                Err(e) => {
                    // EMFILE and friends are transient: back off instead of spinning or dying.
                    tracing::warn!("{what} accept on {:?}: {e}", listener.local_addr().ok());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves one connection (plain or already-decrypted TLS) on the shared router.
pub fn serve_connection<IO>(io: IO, peer: Peer, state: Arc<State>, graceful: &GracefulShutdown)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Counters::bump(&state.counters.http_connections);
    let first_request = Arc::new(AtomicBool::new(false));
    let seen = first_request.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let state = state.clone();
        seen.store(true, Ordering::Relaxed);
        async move { Ok::<_, std::convert::Infallible>(router::route(req, peer, state).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_H2_HEADER_LIST)
        .max_concurrent_streams(256);
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        tokio::pin!(conn);
        let deadline = tokio::time::sleep(HEADER_READ_TIMEOUT);
        tokio::pin!(deadline);
        let ended = tokio::select! {
            // The connection ran its course (or failed) before the deadline.
            r = conn.as_mut() => Some(r),
            // hyper-util reads the first bytes itself to tell HTTP/1 from HTTP/2, with no
            // timeout, and hyper's HTTP/1 header timer starts only after that: a client that
            // connects and sends nothing (or a few bytes of the HTTP/2 preface) would hold its
            // socket forever. No complete request head by now: drop the connection.
            _ = &mut deadline => None,
        };
        let result = match ended {
            Some(r) => r,
            None if !first_request.load(Ordering::Relaxed) => {
                tracing::debug!(peer = %peer.addr, "no request within {HEADER_READ_TIMEOUT:?}; closing");
                return;
            }
            // Past the first request hyper's own header timeout governs each next one.
            None => conn.await,
        };
        if let Err(e) = result {
            tracing::debug!(peer = %peer.addr, "connection ended: {e}");
        }
    });
}
