//! `lancachectl`: the command-line client of the lancached control socket.
//!
//! Exit codes are part of the interface, for scripts: 0 the daemon did it, 1 the daemon said no
//! (the message says why), 2 the daemon could not be reached (the message names the socket path
//! tried and the reason).

mod bundle;
mod client;
mod output;
mod prefetch;
mod style;

use clap::{CommandFactory, Parser, Subcommand};
use lancache_protocol::{PruneRequest, Request, Response};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "lancachectl",
    version,
    max_term_width = 80,
    about = "Control and inspect a running lancached",
    after_help = "\
Examples:
  lancachectl status
  lancachectl stats
  lancachectl models --json
  lancachectl prune --older-than 30d --dry-run
  lancachectl prefetch llama3:8b
  lancachectl export llama3:8b -o models.tar
  lancachectl import models.tar
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
    #[command(after_help = "Examples:\n  lancachectl status\n  lancachectl status --json")]
    Status,
    /// What the cache has done since the daemon started.
    ///
    /// Hit ratio, bytes saved vs fetched, per registry, top models, active fills, evictions and
    /// prunes, DNS, HTTP and control counters.
    #[command(
        after_help = "Examples:\n  lancachectl stats\n  lancachectl stats --json | jq .cache.usage_bytes\n\nThe --json schema is documented in docs/lifecycle.md."
    )]
    Stats,
    /// Re-read the configuration file.
    ///
    /// A bad file is rejected (exit 1, with the error) and the old one stays in force. Settings
    /// that need a restart to take effect are listed.
    #[command(
        after_help = "Examples:\n  lancachectl reload\n  systemctl reload lancached      (the same, through systemd)"
    )]
    Reload,
    /// Models in the cache.
    ///
    /// Size, complete or partial, last used, and whether the cache fetched the model or found it
    /// in the directory (local: a user's own Ollama model, never evicted automatically).
    #[command(after_help = "Examples:\n  lancachectl models\n  lancachectl models --json")]
    Models,
    /// Remove models not used lately, and the blobs only they reference.
    ///
    /// Blobs shared with a kept model, blobs being served or filled, and models the cache did not
    /// fetch itself (unless --include-local) are never removed. Fills in progress untouched for
    /// longer than --older-than (default 24h) are removed too.
    #[command(
        after_help = "Examples:\n  lancachectl prune --older-than 30d\n  lancachectl prune --max-size 200GiB --dry-run\n  lancachectl prune --model llama3:8b\n  lancachectl prune --model hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M\n  lancachectl prune --model someone/mymodel:7b --include-local\n  lancachectl prune --cluster --older-than 30d\n\nCriteria combine: --model names, plus models unused for --older-than, plus least\nrecently used models until the cache is under --max-size."
    )]
    Prune {
        /// Models not used for this long ("30d", "12h").
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        older_than: Option<u64>,
        /// Least recently used models until the cache is at most this big ("200GiB").
        #[arg(long, value_parser = parse_size, value_name = "SIZE")]
        max_size: Option<u64>,
        /// This model (any name form: llama3, llama3:8b, user/model:tag, hf.co/u/r:q); repeatable.
        #[arg(long = "model", value_name = "NAME")]
        models: Vec<String>,
        /// Show what would be removed and the bytes freed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also remove models the daemon did not fetch (found in the directory, e.g. a user's own
        /// Ollama models).
        #[arg(long)]
        include_local: bool,
        /// Cluster mode: remove from the shared store, for every node (each node's own copy
        /// stays its own); never a blob a kept manifest references or one being filled.
        #[arg(long, conflicts_with = "include_local")]
        cluster: bool,
    },
    /// Fill models into the cache ahead of time, with progress bars.
    ///
    /// The fills run in the daemon: Ctrl-C or --no-wait leaves them running; the same command
    /// again resumes watching (and fills only what is missing).
    #[command(
        after_help = "Examples:\n  lancachectl prefetch llama3:8b qwen2.5:1.5b\n  lancachectl prefetch --no-wait hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M\n\nExit status: 0 all models complete, 1 a model failed, 2 the daemon could not be\nreached, 130 interrupted (the fills go on)."
    )]
    Prefetch {
        /// Model names (llama3, llama3:8b, hf.co/user/repo:quant).
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Watch until every model is complete (the default).
        #[arg(long, overrides_with = "no_wait")]
        wait: bool,
        /// Start the fills and return at once.
        #[arg(long, overrides_with = "wait")]
        no_wait: bool,
    },
    /// The cache's own CA certificate (PEM), for clients to trust.
    #[command(
        after_help = "Examples:\n  lancachectl ca > lancache-ca.pem\n  lancachectl ca --path\n  lancachectl ca --rotate"
    )]
    Ca {
        /// Print where the certificate is stored instead of the PEM.
        #[arg(long)]
        path: bool,
        /// Replace the CA with a new one (every client must trust the new one).
        #[arg(long)]
        rotate: bool,
    },
    /// Write models (manifests and blobs, in Ollama's layout) and Hugging Face repos (under
    /// hub/, in huggingface_hub's cache layout) to one tar: a bundle.
    ///
    /// The daemon streams it over the control socket. `tar -x -C ~/.ollama/models blobs
    /// manifests` and `tar -x -C ~/.cache/huggingface hub` unpack it without lancache;
    /// `lancachectl import` loads it into another cache.
    #[command(
        after_help = "Examples:\n  lancachectl export llama3:8b qwen2.5:1.5b -o models.tar\n  lancachectl export llama3:8b -o - | ssh host tar -x -C .ollama/models\n  lancachectl export hf:org/name hf:datasets/org/data@v1 -o hub.tar\n  tar -x -C ~/.cache/huggingface -f hub.tar   # then HF_HUB_OFFLINE=1 works"
    )]
    Export {
        /// Model names (llama3, llama3:8b, user/model:tag, hf.co/user/repo:quant) and Hub repos
        /// (hf:org/name[@rev], hf:datasets/org/name[@rev]; rev defaults to main).
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Where to write the tar; `-` for stdout.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
    },
    /// Load a bundle, a tar from GET /models/..., an Ollama models directory, or a Hugging
    /// Face hub cache (`~/.cache/huggingface/hub`, or `~/.cache/huggingface`).
    ///
    /// FILE|DIR is read here and streamed to the daemon over the control socket; the daemon
    /// checks every blob (sha256, or a small Hub file's git SHA-1) and size and publishes only
    /// complete models and repo snapshots (nothing at all if anything is wrong). What the cache
    /// already has is skipped. Imported models count as fetched (evictable) unless --local.
    #[command(
        after_help = "Examples:\n  lancachectl import models.tar\n  lancachectl import /home/me/.ollama/models --local\n  lancachectl import /home/me/.cache/huggingface/hub\n  lancachectl import models.tar --json"
    )]
    Import {
        /// A tar file, an Ollama models directory or a Hugging Face hub cache.
        #[arg(value_name = "FILE|DIR")]
        path: PathBuf,
        /// Keep the models as the operator's own: never evicted automatically.
        #[arg(long)]
        local: bool,
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
            cluster,
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
                cluster: *cluster,
            })
        }
        Command::Prefetch { names, .. } => Request::Prefetch {
            names: names.clone(),
        },
        Command::Ca { rotate, .. } => Request::Ca { rotate: *rotate },
        Command::Export { names, output } => {
            return bundle::export(&cli.socket, names, output, cli.json);
        }
        Command::Import { path, local } => {
            return bundle::import(&cli.socket, path, *local, cli.json);
        }
    };
    let response = match client::call(&cli.socket, &request) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lancachectl: {e}");
            return ExitCode::from(2);
        }
    };
    if let Response::Error(_) = &response {
        return finish(&response, cli.json);
    }
    if let Command::Prefetch {
        names,
        no_wait: false,
        ..
    } = &cli.command
    {
        return prefetch::watch(&cli.socket, names, cli.json);
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&response).unwrap());
    } else {
        let ca_path = matches!(cli.command, Command::Ca { path: true, .. });
        print!(
            "{}",
            output::human(&response, ca_path, style::Style::detect())
        );
        if matches!(cli.command, Command::Prefetch { .. }) {
            println!("the fills run in lancached; watch them with `lancachectl stats`");
        }
    }
    ExitCode::SUCCESS
}

/// Prints an answer (JSON or human) and turns it into the exit status.
pub fn finish(response: &Response, json: bool) -> ExitCode {
    if let Response::Error(e) = response {
        if json {
            println!("{}", serde_json::to_string_pretty(response).unwrap());
        }
        eprintln!(
            "lancachectl: the daemon refused: {} ({:?})",
            e.message, e.kind
        );
        return ExitCode::from(1);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(response).unwrap());
    } else {
        print!("{}", output::human(response, false, style::Style::detect()));
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_command_has_examples_and_fits_80_columns() {
        let mut cli = Cli::command();
        cli.build();
        let mut helps = vec![cli.render_long_help().to_string()];
        for sub in cli.get_subcommands_mut() {
            // Hidden commands (asset generation for packaging) are not an operator's interface.
            if sub.get_name() == "help" || sub.is_hide_set() {
                continue;
            }
            let help = sub.render_long_help().to_string();
            assert!(help.contains("Examples:"), "{}: {help}", sub.get_name());
            helps.push(help);
        }
        for help in helps {
            for line in help.lines() {
                assert!(line.chars().count() <= 80, "{line}");
            }
        }
    }
}
