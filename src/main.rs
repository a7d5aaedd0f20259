//! `lancached`: the daemon's entry point. Parses arguments, loads the configuration, takes or
//! binds its sockets while the process is still single-threaded, then hands over to
//! [`lancached::daemon::run`].

use clap::{CommandFactory, Parser};
use lancached::config::{ConfigSource, DEFAULT_CONFIG_PATH};
use lancached::listeners::Listeners;
use std::path::PathBuf;
use std::process::ExitCode;

/// LAN cache for AI model downloads: DNS interceptor, caching registry proxy, model distribution.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None, after_help = "\
Examples:
  lancached --quickstart                         run on built-in defaults (ports 5353/8080/8443, ./lancache-*)
  lancached --config /etc/lancached/lancached.toml
  lancached --check-config --config my.toml      validate and exit")]
struct Args {
    /// Configuration file.
    #[arg(long, short = 'c', env = "LANCACHED_CONFIG", default_value = DEFAULT_CONFIG_PATH, value_name = "FILE")]
    config: PathBuf,
    /// Use the built-in quick-start configuration instead of a file: unprivileged ports on
    /// loopback, state and cache under the current directory.
    #[arg(long, conflicts_with = "config")]
    quickstart: bool,
    /// Validate the configuration and exit (0 when valid).
    #[arg(long)]
    check_config: bool,
    /// Print the default configuration file and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Write man pages and shell completions under DIR and exit (used by scripts/package.sh;
    /// hidden: not an operator's option).
    #[arg(long, hide = true, value_name = "DIR")]
    generate_assets: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = &args.generate_assets {
        return match lancache_assets::generate(Args::command(), "8", dir) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lancached: cannot write assets to {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    if args.print_default_config {
        print!("{}", lancached::config::PACKAGED_TOML);
        return ExitCode::SUCCESS;
    }
    let source = if args.quickstart {
        ConfigSource::Quickstart
    } else {
        ConfigSource::File(args.config.clone())
    };
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lancached: {e:#}");
            return ExitCode::from(78); // EX_CONFIG: systemd shows it as a configuration error
        }
    };
    if args.check_config {
        println!("{source}: configuration is valid");
        return ExitCode::SUCCESS;
    }
    lancached::logging::init(&config.log.filter);
    let listeners = match Listeners::acquire(&config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lancached: cannot set up listeners: {e:#}");
            return ExitCode::from(71);
        }
    };
    match lancached::daemon::run(config, source, listeners) {
        Ok(()) => ExitCode::SUCCESS,
        // Already logged by the daemon with its context.
        Err(_) => ExitCode::FAILURE,
    }
}
