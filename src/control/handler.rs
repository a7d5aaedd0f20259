//! Carries out one control request. Actions that change things (reload, prune, prefetch, CA
//! rotation) are audited: logged with the caller's uid and pid and the outcome.

use lancache_protocol::{ErrorKind, ErrorReply, Request, Response, Stats, Status, SubsystemStatus};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::auth::Caller;
use crate::state::State;

pub async fn handle(req: Request, caller: &Caller, state: &Arc<State>) -> Response {
    let name = req.name();
    let audited = !matches!(
        req,
        Request::Status | Request::Stats | Request::Models | Request::FillProgress { .. }
    );
    let resp = match req {
        Request::Status => Response::Status(status(state)),
        Request::Stats => Response::Stats(stats(state)),
        Request::Reload => match crate::reload::reload(state) {
            Ok(report) => Response::Reloaded(report),
            Err(e) => Response::Error(ErrorReply {
                kind: ErrorKind::InvalidConfig,
                message: e,
            }),
        },
        _ => Response::Error(ErrorReply {
            kind: ErrorKind::Unsupported,
            message: format!("`{name}` is not supported by this daemon"),
        }),
    };
    if audited {
        let outcome = match &resp {
            Response::Error(e) => format!("failed: {}", e.message),
            _ => "ok".to_string(),
        };
        tracing::info!(target: "audit", uid = caller.uid, pid = ?caller.pid, action = name, %outcome, "control action");
    }
    resp
}

pub fn status(state: &State) -> Status {
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        uptime_secs: state.started.elapsed().as_secs(),
        config: state.source.to_string(),
        subsystems: state
            .health
            .snapshot()
            .into_iter()
            .map(|(name, h)| SubsystemStatus {
                name: name.to_string(),
                healthy: h.healthy,
                restarts: h.restarts,
                listeners: h.listeners,
                last_error: h.last_error,
            })
            .collect(),
    }
}

pub fn stats(state: &State) -> Stats {
    let c = &state.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut stats = Stats {
        uptime_secs: state.started.elapsed().as_secs(),
        ..Default::default()
    };
    stats.control.requests = get(&c.control_requests);
    stats.control.refused = get(&c.control_refused);
    stats.control.bad_frames = get(&c.control_bad_frames);
    stats.http.connections = get(&c.http_connections);
    stats.http.requests = get(&c.http_requests);
    for (class, counter) in [
        ("2xx", &c.http_2xx),
        ("3xx", &c.http_3xx),
        ("4xx", &c.http_4xx),
        ("5xx", &c.http_5xx),
    ] {
        stats.http.responses.insert(class.to_string(), get(counter));
    }
    // The DNS section is there when the DNS subsystem is (it has sockets).
    if state
        .health
        .snapshot()
        .iter()
        .any(|(name, _)| *name == "dns")
    {
        stats.dns = Some(state.dns_stats.snapshot());
    }
    stats
}
