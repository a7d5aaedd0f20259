//! The DNS interceptor: answers the registry names (and `[dns] intercept`) with the cache's own
//! addresses, relays every other query to the upstream resolvers, and refuses anyone outside
//! `[dns] allow`, so that pointing a LAN's DNS at the cache box is all a client needs.
//!
//! Built on hickory-proto for parsing and building messages. The request path
//! ([`answer::Engine::handle`]) is one synchronous function shared by the UDP server (a
//! batched recvmmsg/sendmmsg loop per socket, [`udp`]), the TCP server ([`tcp`]), the tests and
//! the fuzzer; only forwarding ([`forward`]) is asynchronous. A reload rebuilds the policy
//! ([`table::Table`]) and swaps it in; the sockets are never touched.

pub mod advertise;
pub mod answer;
pub mod cache;
pub mod forward;
pub mod ratelimit;
pub mod stats;
pub mod table;
pub mod tcp;
pub mod udp;
pub mod wire;

use anyhow::{anyhow, Result};
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use answer::{Engine, Outcome, Request, Transport};
pub use table::Table;

use crate::state::State;

pub async fn run(
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
    state: Arc<State>,
    cancel: CancellationToken,
) -> Result<()> {
    let mut config_rx = state.watch_config();
    config_rx.mark_unchanged();
    let config = state.config();
    let table = tokio::task::spawn_blocking(move || Table::from_config(&config)).await?;
    log_policy(&table);
    let engine = Arc::new(
        Engine::new(table, state.dns_stats.clone()).with_advertised(state.advertised.clone()),
    );

    // Servers stop on `servers`, a child of `cancel`, so that one failing server also stops
    // its siblings before the supervisor restarts the subsystem.
    let servers = cancel.child_token();
    let _stop_servers = servers.clone().drop_guard();
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    for sock in udp {
        let (engine, servers, rt) = (
            engine.clone(),
            servers.clone(),
            tokio::runtime::Handle::current(),
        );
        tasks.spawn_blocking(move || udp::serve(sock, engine, rt, servers));
    }
    for listener in tcp {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tasks.spawn(tcp::serve(listener, engine.clone(), servers.clone()));
    }
    loop {
        tokio::select! {
            // Shutdown is checked first: the servers stop on the same token, and their ending
            // then is expected, not a failure to report.
            biased;
            // Shutdown: the drop guard stops the servers; wait for the UDP threads to notice.
            _ = cancel.cancelled() => break,
            // `lancachectl reload`: a new policy, same sockets.
            changed = config_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let config = config_rx.borrow_and_update().clone();
                let table = tokio::task::spawn_blocking(move || Table::from_config(&config)).await?;
                log_policy(&table);
                engine.set_table(table);
            }
            // A server ended on its own: that is a failure for the supervisor to handle.
            Some(ended) = tasks.join_next() => {
                servers.cancel();
                return Err(match ended {
                    Ok(Ok(())) => anyhow!("a DNS server stopped unexpectedly"),
                    Ok(Err(e)) => e,
                    Err(e) => anyhow!("a DNS server crashed: {e}"),
                });
            }
        }
    }
    servers.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

fn log_policy(table: &Table) {
    match &table.advertise {
        Some(a) => tracing::info!(v4 = ?a.v4, v6 = ?a.v6, "dns: intercepted names answer with these addresses"),
        None => tracing::warn!(
            "dns: no [dns] advertise and no default route: intercepted names answer with the address each query arrived on"
        ),
    }
}
