//! The daemon's top level (hickory-dns's `bin/` is the model): one supervised task per
//! subsystem in a `JoinSet`, a `CancellationToken` for shutdown, signals, the systemd
//! notification protocol and the watchdog.
//!
//! Order of events: sockets were bound (or inherited) before the runtime existed, so by the time
//! the subsystems are spawned every listener is already live and connections queue in the
//! backlog; READY=1 is sent then. SIGHUP reloads. SIGTERM/SIGINT: STOPPING=1, cancel, drain
//! in-flight work for at most [`DRAIN_DEADLINE`] (below the unit's TimeoutStopSec=30s), exit 0.

use anyhow::{anyhow, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigSource};
use crate::listeners::Listeners;
use crate::notify;
use crate::state::State;
use crate::supervisor::{first_run, supervise, RunFuture, Subsystem};

/// How long in-flight requests get to finish after SIGTERM. systemd's TimeoutStopSec (30 s in
/// our unit) must stay above it, or systemd would SIGKILL a daemon that is draining normally.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(20);

/// Builds the runtime and runs until shutdown. Returns an error (exit non-zero) when a
/// subsystem keeps failing.
pub fn run(config: Config, source: ConfigSource, listeners: Listeners) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lancached")
        .build()?;
    let outcome = runtime.block_on(run_async(config, source, listeners));
    match &outcome {
        Ok(()) => tracing::info!("stopped"),
        Err(e) => tracing::error!("exiting after a fatal error: {e:#}"),
    }
    outcome
}

/// Duplicates a socket for one run of a subsystem; the daemon keeps the original so a restarted
/// subsystem gets the very same listening socket (no gap, no re-bind of a privileged port).
fn dup<T: TryCloneSocket>(sockets: &[T]) -> Result<Vec<T>> {
    sockets.iter().map(|s| s.try_clone_socket()).collect()
}

trait TryCloneSocket: Sized {
    fn try_clone_socket(&self) -> Result<Self>;
}
macro_rules! try_clone_socket {
    ($($t:ty),*) => {$(
        impl TryCloneSocket for $t {
            fn try_clone_socket(&self) -> Result<Self> { Ok(self.try_clone()?) }
        }
    )*};
}
try_clone_socket!(
    std::net::TcpListener,
    std::net::UdpSocket,
    std::os::unix::net::UnixListener
);

fn subsystems(listeners: Listeners) -> Vec<Subsystem> {
    let mut subs = Vec::new();
    let Listeners {
        dns_udp,
        dns_tcp,
        http,
        https,
        control,
        ..
    } = listeners;
    if !dns_udp.is_empty() || !dns_tcp.is_empty() {
        subs.push(Subsystem {
            name: "dns",
            start: Box::new(move |state, cancel| {
                let (udp, tcp) = (dup(&dns_udp)?, dup(&dns_tcp)?);
                Ok(Box::pin(crate::dns::run(udp, tcp, state, cancel)) as RunFuture)
            }),
        });
    }
    if !http.is_empty() {
        subs.push(Subsystem {
            name: "http",
            start: Box::new(move |state, cancel| {
                Ok(Box::pin(crate::http::run(dup(&http)?, state, cancel)) as RunFuture)
            }),
        });
    }
    if !https.is_empty() {
        subs.push(Subsystem {
            name: "https",
            start: Box::new(move |state, cancel| {
                crate::tls::prepare(&state)?;
                Ok(Box::pin(crate::tls::run(dup(&https)?, state, cancel)) as RunFuture)
            }),
        });
    }
    if !control.is_empty() {
        subs.push(Subsystem {
            name: "control",
            start: Box::new(move |state, cancel| {
                Ok(Box::pin(crate::control::run(dup(&control)?, state, cancel)) as RunFuture)
            }),
        });
    }
    subs
}

/// Connects the proxy's fill engine to the lifecycle: published blobs count as fetched in the
/// access index, `lancachectl prefetch` drives fills, and fills an earlier run left unfinished
/// resume in the background (whatever listeners are configured, without delaying READY).
fn wire_cache(state: &Arc<State>) {
    let weak = Arc::downgrade(state);
    state.proxy.fills.on_publish(Box::new(move |digest| {
        if let Some(state) = weak.upgrade() {
            state.index.record_fetched_blob(digest);
        }
    }));
    state.set_prefetcher(Arc::new(crate::proxy::prefetch::ProxyPrefetcher::new(
        state,
    )));
    // The hub cache's snapshots take part in prune and eviction beside the models.
    state.set_tenants(vec![Arc::new(crate::hub::tenant::HubTenant::new(state))]);
    tokio::spawn(crate::proxy::resume_leftovers(state.clone()));
}

async fn run_async(config: Config, source: ConfigSource, listeners: Listeners) -> Result<()> {
    // Signal handlers come first: once a subsystem runs, a client can see us up, and a SIGTERM
    // sent then must drain, not kill the process with the default disposition.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let described = listeners.describe();
    for (name, l) in &described {
        tracing::info!(subsystem = name, "listening on {l}");
    }
    let http_addrs: Vec<std::net::SocketAddr> = listeners
        .http
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let state = State::new(config, source, listeners.activated);
    state.layout.create().map_err(|e| {
        anyhow!(
            "cache.dir: cannot create {}: {e}",
            state.layout.root().display()
        )
    })?;
    // Before wire_cache: resumed fills must already use the cluster's sources.
    if let Some(c) = crate::cluster::Cluster::from_config(&state.config().cluster, &http_addrs)? {
        tracing::info!(node = %c.me, nodes = c.nodes.len(), "cluster mode");
        let _ = state.cluster.set(Arc::new(c));
    }
    let members_stop = CancellationToken::new();
    if let Some(c) = state.cluster.get() {
        // The healthy nodes become DNS's answers; the cluster knows nothing of DNS, and DNS
        // nothing of the cluster: the daemon passes one's list to the other.
        let advertised = state.advertised.clone();
        tokio::spawn(crate::cluster::members::run(
            c.clone(),
            move |nodes| {
                // One answer per address, in the list's order: nodes may share an IP on
                // different ports, and not necessarily next to each other in the list.
                let mut ips: Vec<std::net::IpAddr> = Vec::new();
                for ip in nodes.iter().map(|n| n.ip()) {
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
                advertised.set(Some(crate::dns::advertise::Advertise::from_addrs(&ips)));
            },
            members_stop.clone(),
        ));
    }
    wire_cache(&state);
    let mut subs = subsystems(listeners);
    if subs.is_empty() {
        return Err(anyhow!(
            "no listeners configured: every `listen` is empty and nothing was socket-activated"
        ));
    }
    // Not a listener: the cache's housekeeping (access index, eviction) serves them all.
    subs.push(Subsystem {
        name: "cache",
        start: Box::new(|state, cancel| {
            Ok(Box::pin(crate::store::eviction::run(state, cancel)) as RunFuture)
        }),
    });
    for sub in &subs {
        let mine = described
            .iter()
            .filter(|(n, _)| *n == sub.name)
            .map(|(_, l)| l.clone())
            .collect();
        state.health.register(sub.name, mine);
    }
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    for sub in subs {
        let first = first_run(&sub, &state, &cancel)?;
        tasks.spawn(supervise(sub, first, state.clone(), cancel.clone()));
    }

    let watchdog = notify::watchdog_interval();
    // Half the interval, as sd_watchdog_enabled(3) recommends; without a watchdog the timer
    // still ticks (harmlessly) so the select below stays uniform.
    let mut watchdog_tick =
        tokio::time::interval(watchdog.map(|d| d / 2).unwrap_or(Duration::from_secs(3600)));

    tracing::info!(
        "lancached {} ready ({})",
        env!("CARGO_PKG_VERSION"),
        state.source
    );
    notify::ready(&state.status_line());

    let outcome = loop {
        tokio::select! {
            // systemctl stop / kill: drain and exit 0.
            _ = sigterm.recv() => break Ok(()),
            // Ctrl-C in a terminal: same as SIGTERM.
            _ = sigint.recv() => break Ok(()),
            // The classic daemon reload signal; `lancachectl reload` does the same over the socket.
            _ = sighup.recv() => { let _ = crate::reload::reload(&state); }
            // Ping only while every subsystem is healthy, so a wedged daemon gets restarted.
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                if state.health.all_healthy() {
                    notify::watchdog();
                } else {
                    tracing::warn!("watchdog ping withheld: a subsystem is unhealthy");
                }
                notify::status(&state.status_line());
            }
            // A supervisor only returns early when its subsystem gave up: exit non-zero.
            Some(ended) = tasks.join_next() => {
                match ended {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => break Err(e),
                    Err(e) => break Err(anyhow!("a supervisor task panicked: {e}")),
                }
            }
        }
    };

    notify::stopping();
    tracing::info!("stopping: draining in-flight work for at most {DRAIN_DEADLINE:?}");
    cancel.cancel();
    let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("drain deadline passed; closing the remaining connections");
        tasks.abort_all();
    }
    members_stop.cancel();
    if let Some(c) = state.cluster.get() {
        // A clean stop leaves the other nodes' DNS answers now, not one TTL later.
        let _ =
            tokio::time::timeout(Duration::from_secs(2), crate::cluster::members::leave(c)).await;
    }
    outcome
}
