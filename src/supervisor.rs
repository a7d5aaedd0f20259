//! Keeps each subsystem running: a subsystem that fails is logged by name and restarted with
//! exponential backoff; one that keeps failing makes the daemon exit non-zero, so that systemd's
//! `Restart=on-failure` starts a fresh process (a clean slate beats a limp). The watchdog pings
//! only while every subsystem reports healthy, so a wedged subsystem also ends in a restart.

use anyhow::{bail, Result};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::state::State;

pub type RunFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// Builds one run of a subsystem. Called again for every restart, so it hands the subsystem
/// fresh duplicates of its sockets (the originals stay open in the daemon).
pub type StartFn = Box<dyn Fn(Arc<State>, CancellationToken) -> Result<RunFuture> + Send + Sync>;

pub struct Subsystem {
    pub name: &'static str,
    pub start: StartFn,
}

/// More failures than this within [`FAILURE_WINDOW`] and the daemon gives up.
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts the first run of a subsystem. Done by the daemon itself, before READY=1, so that
/// READY really means every subsystem is up (its sockets were already listening).
pub fn first_run(
    sub: &Subsystem,
    state: &Arc<State>,
    cancel: &CancellationToken,
) -> Result<RunFuture> {
    let run = (sub.start)(state.clone(), cancel.clone())?;
    state.health.set_healthy(sub.name, true);
    Ok(run)
}

pub async fn supervise(
    sub: Subsystem,
    first: RunFuture,
    state: Arc<State>,
    cancel: CancellationToken,
) -> Result<()> {
    let mut failures = 0u32;
    let mut window_start = Instant::now();
    let mut next = Some(first);
    loop {
        let run = match next.take() {
            Some(run) => run,
            None => {
                let run = (sub.start)(state.clone(), cancel.clone())?;
                state.health.set_healthy(sub.name, true);
                run
            }
        };
        let result = run.await;
        if cancel.is_cancelled() {
            state.health.set_healthy(sub.name, false);
            if let Err(e) = &result {
                tracing::warn!(subsystem = sub.name, "stopped with an error: {e:#}");
            }
            return Ok(());
        }
        let error = match result {
            Ok(()) => "exited unexpectedly".to_string(),
            Err(e) => format!("{e:#}"),
        };
        tracing::error!(subsystem = sub.name, "failed: {error}");
        state.health.record_failure(sub.name, error.clone());
        if window_start.elapsed() > FAILURE_WINDOW {
            failures = 0;
            window_start = Instant::now();
        }
        failures += 1;
        if failures > MAX_FAILURES {
            bail!("subsystem {} failed {failures} times within {FAILURE_WINDOW:?}, giving up; last error: {error}", sub.name);
        }
        let backoff = (FIRST_BACKOFF * 2u32.pow(failures - 1)).min(MAX_BACKOFF);
        tracing::info!(
            subsystem = sub.name,
            "restarting in {backoff:?} (failure {failures} of {MAX_FAILURES})"
        );
        tokio::select! {
            // The normal case: wait out the backoff, then restart.
            _ = tokio::time::sleep(backoff) => {}
            // Shutdown while backing off: do not start a run only to cancel it.
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}
