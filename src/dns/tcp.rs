//! DNS over TCP (RFC 1035 4.2.2, RFC 7766): two-byte length-prefixed messages, several per
//! connection, answered in order. Connections are capped (`dns.tcp_max_connections`; past it a
//! new connection is closed at once, which costs less than letting it sit) and closed after
//! `dns.tcp_idle_timeout` without a complete query, so idle or slow clients cannot pin memory.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::answer::{Engine, Outcome, Request, Transport};
use super::forward;

/// Accepts connections until `cancel`.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = tokio::select! {
            // Shutdown or restart: stop accepting; open connections see the same token.
            _ = cancel.cancelled() => return Ok(()),
            // A new client.
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Running out of descriptors or a connection reset before accept are
                    // transient; back off briefly rather than spin.
                    tracing::debug!("dns tcp accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let cap = engine.table().tcp_max_connections;
        if open.load(Ordering::Relaxed) >= cap {
            drop(stream);
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (engine, open, cancel) = (engine.clone(), open.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                // Shutdown: drop the connection mid-query rather than hold up the daemon.
                _ = cancel.cancelled() => {}
                // The connection's whole life.
                _ = connection(stream, peer, local, &engine) => {}
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn connection(mut stream: TcpStream, peer: SocketAddr, local: SocketAddr, engine: &Engine) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let idle = engine.table().tcp_idle_timeout;
        let read = tokio::time::timeout(idle, async {
            let len = stream.read_u16().await? as usize;
            buf.resize(len, 0);
            stream.read_exact(&mut buf).await?;
            std::io::Result::Ok(())
        })
        .await;
        match read {
            Ok(Ok(())) => {}
            // Idle too long, closed by the client, or a reset: the conversation is over.
            _ => return,
        }
        let req = Request {
            bytes: &buf,
            src: peer.ip(),
            local,
            transport: Transport::Tcp,
        };
        let reply = match engine.handle(&req) {
            Outcome::Reply(r) => r,
            Outcome::Forward(job) => forward::resolve(engine, job).await,
            Outcome::Drop => return,
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}
