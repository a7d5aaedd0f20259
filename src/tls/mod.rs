//! The HTTPS front: what lets an unmodified `ollama pull` (which verifies TLS) be cached. The
//! client's DNS points `registry.ollama.ai` at the cache and the client trusts the cache's own
//! CA ([`ca`]); this listener terminates TLS with a leaf for the name the client asked for
//! ([`resolver`]) and hands the decrypted stream to the same router as plain HTTP, so both
//! speak the same routes.
//!
//! Besides the accept loops, `run` keeps the leaves fresh: re-issued when a reload changes the
//! intercepted names and well before they expire. Shutdown is graceful like `http::run`:
//! handshakes in progress are abandoned, established connections finish their request.

pub mod ca;
pub mod ktls;
pub mod leaves;
pub mod names;
pub mod resolver;
pub mod setup;
pub mod state;

pub use state::TlsState;

use anyhow::{Context, Result};
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::zerocopy::ZeroCopyStream;
use crate::http::Peer;
use crate::state::{Counters, State};

/// A client gets this long to complete the TLS handshake (slowloris defence, like the HTTP
/// header timeout).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The renewal timer wakes at least this often, so a wall-clock jump (suspend, NTP step) is
/// noticed within the hour rather than after a monotonic sleep of weeks.
const RENEW_CHECK: Duration = Duration::from_secs(3600);
/// After a failed issuance, try again this soon.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Loads (or creates) the CA and issues the leaves. The daemon calls this before READY=1, so
/// the CA exists on disk and handshakes succeed from the first connection; a CA directory that
/// cannot be used stops the start with an error naming it.
pub fn prepare(state: &State) -> Result<()> {
    let config = state.config();
    state
        .tls
        .refresh(&config)
        .with_context(|| format!("tls.ca_dir {}", config.tls.ca_dir.display()))?;
    Ok(())
}

pub async fn run(
    listeners: Vec<std::net::TcpListener>,
    state: Arc<State>,
    cancel: CancellationToken,
) -> Result<()> {
    // Normally done already by `prepare`, and then a no-op (the leaves in force are current).
    prepare(&state)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver::SniResolver {
            state: state.clone(),
        }));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let kernel = ktls::start().await;
    // The keys leave rustls only where the kernel takes them.
    server.enable_secret_extraction = kernel.is_some();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let front = Arc::new(Front { acceptor, kernel });

    let graceful = Arc::new(GracefulShutdown::new());
    let handshakes = TaskTracker::new();
    let mut loops = tokio::task::JoinSet::new();
    for l in listeners {
        l.set_nonblocking(true)?;
        loops.spawn(accept_loop(
            TcpListener::from_std(l)?,
            front.clone(),
            state.clone(),
            cancel.clone(),
            graceful.clone(),
            handshakes.clone(),
        ));
    }
    loops.spawn(renew_loop(state.clone(), cancel.clone()));
    while let Some(res) = loops.join_next().await {
        res??;
    }
    // Handshakes in flight see the cancel and end; then wait for requests in progress.
    handshakes.close();
    handshakes.wait().await;
    if let Ok(g) = Arc::try_unwrap(graceful) {
        g.shutdown().await;
    }
    Ok(())
}

/// What every handshake needs: the rustls acceptor, and the kernel's TLS where it has one.
struct Front {
    acceptor: TlsAcceptor,
    kernel: Option<ktls::Kernel>,
}

async fn accept_loop(
    listener: TcpListener,
    front: Arc<Front>,
    state: Arc<State>,
    cancel: CancellationToken,
    graceful: Arc<GracefulShutdown>,
    handshakes: TaskTracker,
) -> Result<()> {
    let local = listener.local_addr()?;
    while let Some((stream, addr)) = crate::http::accept(&listener, &cancel, "https").await {
        let peer = Peer {
            addr,
            local,
            tls: true,
        };
        // The handshake runs in its own task so one slow client never delays the next accept.
        handshakes.spawn(handshake(
            stream,
            peer,
            front.clone(),
            state.clone(),
            cancel.clone(),
            graceful.clone(),
        ));
    }
    Ok(())
}

async fn handshake(
    stream: TcpStream,
    peer: Peer,
    front: Arc<Front>,
    state: Arc<State>,
    cancel: CancellationToken,
    graceful: Arc<GracefulShutdown>,
) {
    if let Some(kernel) = &front.kernel {
        return handshake_kernel(
            stream,
            peer,
            &front.acceptor,
            kernel,
            state,
            cancel,
            graceful,
        )
        .await;
    }
    let outcome = tokio::select! {
        // Shutdown: a half-done handshake is not worth waiting for.
        _ = cancel.cancelled() => return,
        // The handshake, bounded so a silent client cannot hold a task and a socket forever.
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, front.acceptor.accept(stream)) => r,
    };
    if let Some(tls) = handshake_outcome(outcome, &peer, &state) {
        // rustls encrypts in user space (see docs/tls.md for why its defaults are kept).
        crate::http::serve_connection(tls, peer, state.clone(), &graceful);
    }
}

/// The kernel-TLS path: the same handshake through `ktls`'s record-aligned reader, then the
/// keys go to the kernel and bodies leave through sendfile(2) as on plain HTTP. A suite the
/// kernel does not take stays on rustls.
async fn handshake_kernel(
    stream: TcpStream,
    peer: Peer,
    acceptor: &TlsAcceptor,
    kernel: &ktls::Kernel,
    state: Arc<State>,
    cancel: CancellationToken,
    graceful: Arc<GracefulShutdown>,
) {
    let outcome = tokio::select! {
        // Shutdown: a half-done handshake is not worth waiting for.
        _ = cancel.cancelled() => return,
        // The handshake, bounded as on the user-space path.
        r = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            acceptor.accept(::ktls::CorkStream::new(stream)),
        ) => r,
    };
    let Some(tls) = handshake_outcome(outcome, &peer, &state) else {
        return;
    };
    if !kernel.takes(&tls) {
        crate::http::serve_connection(tls, peer, state.clone(), &graceful);
        return;
    }
    match ktls::upgrade(tls).await {
        Ok(k) => crate::http::serve_connection(ZeroCopyStream(k), peer, state.clone(), &graceful),
        // The rustls session is spent by now: this connection ends.
        Err(e) => tracing::warn!(peer = %peer.addr, "cannot hand TLS keys to the kernel: {e}"),
    }
}

/// Counts and logs a handshake's end; the stream if it succeeded.
fn handshake_outcome<S>(
    outcome: Result<std::io::Result<S>, tokio::time::error::Elapsed>,
    peer: &Peer,
    state: &State,
) -> Option<S> {
    let counters = &state.tls.counters;
    match outcome {
        Ok(Ok(tls)) => {
            Counters::bump(&counters.handshakes);
            Some(tls)
        }
        Ok(Err(e)) => {
            Counters::bump(&counters.handshake_failures);
            tracing::debug!(peer = %peer.addr, "TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            Counters::bump(&counters.handshake_timeouts);
            tracing::debug!(peer = %peer.addr, "TLS handshake timed out");
            None
        }
    }
}

/// Keeps the leaves current: on reload (the names may have changed) and before they expire.
async fn renew_loop(state: Arc<State>, cancel: CancellationToken) -> Result<()> {
    let mut config_rx = state.watch_config();
    let mut wait = next_check(&state);
    loop {
        tokio::select! {
            // Shutdown.
            _ = cancel.cancelled() => return Ok(()),
            // A reload: re-issue if the intercepted names changed.
            changed = config_rx.changed() => {
                if changed.is_err() {
                    // The sender lives in State, which outlives us; nothing left to watch.
                    cancel.cancelled().await;
                    return Ok(());
                }
            }
            // Renewal may be due (or a failed issuance is retried).
            _ = tokio::time::sleep(wait) => {}
        }
        let config = state.config();
        wait = match state.tls.refresh(&config) {
            Ok(_) => next_check(&state),
            Err(e) => {
                // Keep serving the leaves in force (still valid for days); try again soon.
                tracing::error!("cannot re-issue leaf certificates: {e:#}");
                RETRY_AFTER
            }
        };
    }
}

fn next_check(state: &State) -> Duration {
    match state.tls.leaves() {
        Some(l) => l
            .renew_at()
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(RENEW_CHECK),
        None => RETRY_AFTER,
    }
}
