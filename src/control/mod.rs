//! The control socket: a Unix stream socket speaking length-delimited JSON frames of
//! [`lancache_protocol::Request`] / [`Response`]. `lancachectl` is its client.
//!
//! Every connection is authorised once, by the kernel-reported credentials of the peer
//! (`SO_PEERCRED`), before a single frame is read. A bad frame (not JSON, unknown request,
//! too large) is answered with an error; it never takes more than its own connection down.

pub mod auth;
pub mod handler;
pub mod wire;

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use lancache_protocol::{ErrorKind, ErrorReply, Request, Response, MAX_FRAME};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use crate::state::{Counters, State};

/// A connected client that sends nothing for this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn run(
    listeners: Vec<std::os::unix::net::UnixListener>,
    state: Arc<State>,
    cancel: CancellationToken,
) -> Result<()> {
    let mut loops = tokio::task::JoinSet::new();
    for l in listeners {
        l.set_nonblocking(true)?;
        loops.spawn(accept_loop(
            UnixListener::from_std(l)?,
            state.clone(),
            cancel.clone(),
        ));
    }
    while let Some(res) = loops.join_next().await {
        res??;
    }
    Ok(())
}

async fn accept_loop(
    listener: UnixListener,
    state: Arc<State>,
    cancel: CancellationToken,
) -> Result<()> {
    loop {
        let stream = tokio::select! {
            // Shutdown: stop taking new control connections; running ones end with the runtime.
            _ = cancel.cancelled() => return Ok(()),
            // A client connected.
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("control accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, state, cancel).await {
                tracing::debug!("control connection: {e:#}");
            }
        });
    }
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error(ErrorReply {
        kind,
        message: message.into(),
    })
}

async fn serve(stream: UnixStream, state: Arc<State>, cancel: CancellationToken) -> Result<()> {
    let caller = auth::Caller::of(&stream)?;
    let mut framed = Framed::new(stream, codec());
    if let Err(why) = auth::authorise(&caller, &state.config().control.group) {
        Counters::bump(&state.counters.control_refused);
        tracing::warn!(
            uid = caller.uid,
            pid = caller.pid,
            "control connection refused: {why}"
        );
        framed
            .send(encode(&error(ErrorKind::Unauthorized, why)))
            .await?;
        return Ok(());
    }
    loop {
        let frame = tokio::select! {
            // The daemon is stopping: close rather than start new work.
            _ = cancel.cancelled() => return Ok(()),
            // An idle client must not hold a connection forever.
            _ = tokio::time::sleep(IDLE_TIMEOUT) => return Ok(()),
            // The next request (or EOF, or a framing error).
            frame = framed.next() => frame,
        };
        let reply = match frame {
            None => return Ok(()),
            Some(Err(e)) => {
                // The length prefix is all we have to stay in sync with; after an oversized
                // frame the stream cannot be trusted, so answer and close.
                Counters::bump(&state.counters.control_bad_frames);
                let msg = format!("frame rejected: {e} (limit {MAX_FRAME} bytes)");
                let _ = framed
                    .send(encode(&error(ErrorKind::FrameTooLarge, msg)))
                    .await;
                return Ok(());
            }
            Some(Ok(bytes)) => match serde_json::from_slice::<Request>(&bytes) {
                Ok(Request::Import { source, local }) => {
                    Counters::bump(&state.counters.control_requests);
                    return import(framed, &state, &caller, source, local).await;
                }
                Ok(Request::Export { names }) => {
                    Counters::bump(&state.counters.control_requests);
                    return export(framed, &state, names).await;
                }
                Ok(req) => {
                    Counters::bump(&state.counters.control_requests);
                    handler::handle(req, &caller, &state).await
                }
                Err(e) => {
                    Counters::bump(&state.counters.control_bad_frames);
                    error(ErrorKind::BadRequest, format!("not a valid request: {e}"))
                }
            },
        };
        framed.send(encode(&reply)).await?;
    }
}

/// A client that sends nothing for this long in the middle of an import is dropped (its
/// import publishes nothing); one that reads nothing for this long during an export too.
const IMPORT_STALL: Duration = Duration::from_secs(60);

/// `import`: the tar follows the request frame (the codec may already hold its first bytes);
/// read with blocking I/O on the staging thread, then one answer frame.
async fn import(
    framed: Framed<UnixStream, LengthDelimitedCodec>,
    state: &Arc<State>,
    caller: &auth::Caller,
    source: String,
    local: bool,
) -> Result<()> {
    use std::io::Read;
    let parts = framed.into_parts();
    let early = std::io::Cursor::new(parts.read_buf.freeze());
    let stream = parts.io.into_std()?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IMPORT_STALL))?;
    let reader = early.chain(stream.try_clone()?);
    let reply = handler::import(state, caller, Box::new(reader), source, local).await;
    let mut stream = stream;
    tokio::task::spawn_blocking(move || {
        stream.set_write_timeout(Some(IMPORT_STALL))?;
        lancache_protocol::write_frame(&mut stream, &reply).map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await??;
    Ok(())
}

/// `export`: the answer frame, then the bundle's raw bytes, then the connection closes.
async fn export(
    mut framed: Framed<UnixStream, LengthDelimitedCodec>,
    state: &Arc<State>,
    names: Vec<String>,
) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let (models, archive) = match crate::distribution::models::bundle(state, &names).await {
        Ok(b) => b,
        Err(e) => {
            framed.send(encode(&error(ErrorKind::NotFound, e))).await?;
            return Ok(());
        }
    };
    let reply = Response::Export {
        models,
        bytes: archive.len,
    };
    framed.send(encode(&reply)).await?;
    let mut stream = framed.into_inner();
    let mut body = std::pin::pin!(archive.into_stream(None));
    while let Some(chunk) = body.next().await {
        // A reader that stops reading must not hold the blobs' pins forever.
        tokio::time::timeout(IMPORT_STALL, stream.write_all(&chunk?))
            .await
            .map_err(|_| anyhow::anyhow!("export: the client stopped reading"))??;
    }
    stream.shutdown().await?;
    Ok(())
}

fn encode(resp: &Response) -> bytes::Bytes {
    serde_json::to_vec(resp)
        .expect("responses always serialise")
        .into()
}
