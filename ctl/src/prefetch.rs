//! `lancachectl prefetch --wait`: polls the daemon's fill progress and draws a bar per model and
//! one overall (indicatif, on stderr, only on a terminal; otherwise one line per finished model).
//! The fills belong to the daemon: Ctrl-C stops watching, never the fills, and says so.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use lancache_protocol::{FillProgress, Request, Response};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::output::{bytes, fit, short};

const POLL: Duration = Duration::from_millis(500);

/// One model's fills, summed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModelProgress {
    pub size: u64,
    pub landed: u64,
    pub blobs: usize,
    pub done: usize,
    pub pending: bool,
    pub failed: Option<String>,
}

impl ModelProgress {
    pub fn finished(&self) -> bool {
        self.failed.is_some() || (!self.pending && self.blobs > 0 && self.done == self.blobs)
    }

    pub fn state(&self) -> String {
        if let Some(f) = &self.failed {
            f.clone()
        } else if self.pending {
            "pending".into()
        } else if self.finished() {
            "done".into()
        } else {
            format!("filling ({}/{} blobs)", self.done, self.blobs)
        }
    }
}

/// Sums the per-blob progress entries by model.
pub fn group(fills: &[FillProgress]) -> BTreeMap<String, ModelProgress> {
    let mut out: BTreeMap<String, ModelProgress> = BTreeMap::new();
    for f in fills {
        let m = out
            .entry(f.model.clone().unwrap_or_else(|| "-".into()))
            .or_default();
        if f.state == "pending" {
            m.pending = true;
            continue;
        }
        m.blobs += 1;
        m.size += f.size;
        m.landed += f.landed.min(f.size);
        if f.state == "done" {
            m.done += 1;
        } else if f.state.starts_with("failed") && m.failed.is_none() {
            m.failed = Some(f.state.clone());
        }
    }
    out
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:<30!} {bar:20} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {eta:>4}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// Watches the fills of `names` until every model is complete or failed. Exit 0 when all
/// completed, 1 when one failed, 2 when the daemon went away, 130 on Ctrl-C.
pub fn watch(socket: &Path, names: &[String], json: bool) -> ExitCode {
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
            eprintln!("lancachectl: cannot catch Ctrl-C ({e}); it will end the watch abruptly (the fills keep running)");
        }
    }
    let tty = std::io::stderr().is_terminal() && !json;
    let multi = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let overall = multi.add(ProgressBar::new(0).with_style(bar_style()));
    overall.set_prefix("all models");
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut reported: std::collections::HashSet<String> = Default::default();
    let request = Request::FillProgress {
        names: names.to_vec(),
    };
    loop {
        let fills = match crate::client::call(socket, &request) {
            Ok(Response::Prefetch { fills }) => fills,
            Ok(Response::Error(e)) => {
                multi.clear().ok();
                eprintln!(
                    "lancachectl: the daemon refused: {} ({:?})",
                    e.message, e.kind
                );
                return ExitCode::from(1);
            }
            Ok(other) => {
                eprintln!("lancachectl: unexpected answer: {other:?}");
                return ExitCode::from(1);
            }
            Err(e) => {
                multi.clear().ok();
                eprintln!("lancachectl: {e}");
                return ExitCode::from(2);
            }
        };
        let models = group(&fills);
        let (mut size, mut landed) = (0, 0);
        for (name, m) in &models {
            size += m.size;
            landed += m.landed;
            let bar = bars.entry(name.clone()).or_insert_with(|| {
                let b = multi.insert_before(&overall, ProgressBar::new(0).with_style(bar_style()));
                b.set_prefix(fit(&short(name), 30));
                b
            });
            bar.set_length(m.size);
            bar.set_position(m.landed);
            if m.finished() && reported.insert(name.clone()) {
                bar.finish();
                if !tty && !json {
                    println!(
                        "{:<50} {:>10}  {}",
                        fit(&short(name), 50),
                        bytes(m.size),
                        m.state()
                    );
                }
            }
        }
        overall.set_length(size);
        overall.set_position(landed);
        let all_done = !models.is_empty() && models.values().all(ModelProgress::finished);
        if all_done {
            overall.finish();
            multi.clear().ok();
            if json {
                let resp = Response::Prefetch { fills };
                println!(
                    "{}",
                    serde_json::to_string_pretty(&resp).unwrap_or_default()
                );
            } else if tty {
                for (name, m) in &models {
                    println!(
                        "{:<50} {:>10}  {}",
                        fit(&short(name), 50),
                        bytes(m.size),
                        m.state()
                    );
                }
            }
            let failed = models.values().any(|m| m.failed.is_some());
            return if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
        // Sleep in small steps so Ctrl-C is answered at once.
        for _ in 0..10 {
            if interrupted.load(Ordering::SeqCst) {
                multi.clear().ok();
                eprintln!(
                    "lancachectl: stopped watching; the fills keep running in lancached \
                     (watch again with the same `lancachectl prefetch` command, or see `lancachectl stats`)"
                );
                return ExitCode::from(130);
            }
            std::thread::sleep(POLL / 10);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(model: &str, size: u64, landed: u64, state: &str) -> FillProgress {
        FillProgress {
            model: Some(model.into()),
            digest: String::new(),
            size,
            landed,
            waiters: 0,
            state: state.into(),
        }
    }

    #[test]
    fn grouping_and_completion() {
        let g = group(&[
            f("a", 10, 10, "done"),
            f("a", 20, 5, "filling"),
            f("b", 0, 0, "pending"),
            f("c", 5, 1, "failed: upstream 404"),
            f("d", 5, 5, "done"),
        ]);
        assert_eq!(g["a"].size, 30);
        assert_eq!(g["a"].landed, 15);
        assert!(!g["a"].finished() && g["a"].state().contains("1/2"));
        assert!(!g["b"].finished() && g["b"].state() == "pending");
        assert!(g["c"].finished() && g["c"].state().starts_with("failed"));
        assert!(g["d"].finished() && g["d"].state() == "done");
    }
}
