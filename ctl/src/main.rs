//! `lancachectl`: the command-line client of the lancached control socket.
//!
//! Exit codes are part of the interface, for scripts: 0 the daemon did it, 1 the daemon said no
//! (the message says why), 2 the daemon could not be reached (the message names the socket path
//! tried and the reason).

mod client;
mod output;

use clap::{CommandFactory, Parser, Subcommand};
use lancache_protocol::{PruneRequest, Request, Response};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "lancachectl",
    version,
    about = "Control and inspect a running lancached",
    after_help = "\
Examples:
  lancachectl status
  lancachectl stats --json
  lancachectl prune --older-than 30d --dry-run
  lancachectl reload
  LANCACHE_SOCKET=./lancache-state/control.sock lancachectl status"
)]
struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, env = "LANCACHE_SOCKET", default_value = lancache_protocol::DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Print the daemon's answer as JSON (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Version, uptime, subsystems and their health, listeners.
    Status,
    /// Counters since the daemon started.
    Stats,
    /// Re-read the configuration file; a bad file is rejected and the old one stays in force.
    Reload,
    /// Models in the cache.
    Models,
    /// Remove models not used lately, and the blobs only they reference.
    #[command(
        after_help = "Examples:\n  lancachectl prune --older-than 30d\n  lancachectl prune --max-size 200GiB --dry-run\n  lancachectl prune --model llama3:8b"
    )]
    Prune {
        /// Models not used for this long ("30d", "12h").
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<u64>,
        /// Least recently used models until the cache is at most this big ("200GiB").
        #[arg(long, value_parser = parse_size)]
        max_size: Option<u64>,
        /// This model (any name form: llama3, llama3:8b, user/model:tag, hf.co/u/r:q).
        #[arg(long = "model")]
        models: Vec<String>,
        /// Show what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also remove models the daemon did not fetch (found in the directory).
        #[arg(long)]
        include_local: bool,
    },
    /// Fill models into the cache ahead of time.
    Prefetch {
        /// Model names (llama3, llama3:8b, hf.co/user/repo:quant).
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// The cache's own CA certificate (PEM), for clients to trust.
    Ca {
        /// Print where the certificate is stored instead of the PEM.
        #[arg(long)]
        path: bool,
        /// Replace the CA with a new one (every client must trust the new one).
        #[arg(long)]
        rotate: bool,
    },
    /// Write man pages and shell completions under DIR (used by scripts/package.sh; hidden:
    /// not an operator's command, and it never talks to the daemon).
    #[command(hide = true)]
    GenerateAssets { dir: PathBuf },
}

fn parse_duration(s: &str) -> Result<u64, String> {
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| format!("{s:?}: {e} (e.g. 30d, 12h)"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?}: {e} (e.g. 200GiB)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let request = match &cli.command {
        Command::GenerateAssets { dir } => {
            return match lancache_assets::generate(Cli::command(), "1", dir) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lancachectl: cannot write assets to {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            };
        }
        Command::Status => Request::Status,
        Command::Stats => Request::Stats,
        Command::Reload => Request::Reload,
        Command::Models => Request::Models,
        Command::Prune {
            older_than,
            max_size,
            models,
            dry_run,
            include_local,
        } => {
            if older_than.is_none() && max_size.is_none() && models.is_empty() {
                eprintln!(
                    "lancachectl prune: say what to remove: --older-than, --max-size or --model"
                );
                return ExitCode::from(2);
            }
            Request::Prune(PruneRequest {
                older_than_secs: *older_than,
                max_size: *max_size,
                models: models.clone(),
                dry_run: *dry_run,
                include_local: *include_local,
            })
        }
        Command::Prefetch { names } => Request::Prefetch {
            names: names.clone(),
        },
        Command::Ca { rotate, .. } => Request::Ca { rotate: *rotate },
    };
    let response = match client::call(&cli.socket, &request) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lancachectl: {e}");
            return ExitCode::from(2);
        }
    };
    if let Response::Error(e) = &response {
        if cli.json {
            println!("{}", serde_json::to_string_pretty(&response).unwrap());
        }
        eprintln!(
            "lancachectl: the daemon refused: {} ({:?})",
            e.message, e.kind
        );
        return ExitCode::from(1);
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&response).unwrap());
    } else {
        let ca_path = matches!(cli.command, Command::Ca { path: true, .. });
        print!("{}", output::human(&response, ca_path));
    }
    ExitCode::SUCCESS
}
