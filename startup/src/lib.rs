//! The start-up the three Limpet binaries share: `--config`, `--check`
//! (like `nginx -t`), `--version`, the config's clear error, `RUST_LOG`
//! logging, the tokio runtime and the heap trim ([`trim`]).
//!
//! It is its own crate rather than a module of `limpet-config` so that the
//! config crate (which the fuzz targets build) keeps no clap, tokio or
//! tracing dependency. Each binary keeps only what is its own: its name,
//! the help line for `--config`, the extra checks of `--check`, and `serve`.

pub mod trim;

use clap::{CommandFactory, FromArgMatches, Parser};
use limpet_config::Validate;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

// No doc comment here: clap would take it as the binaries' `about`.
#[derive(Parser, Debug)]
struct Args {
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the config file and exit (like `nginx -t`).
    #[arg(long)]
    check: bool,
}

/// The [`Program`] of the binary crate this is written in: its package
/// name, version and description (as clap's derive took them), and the help
/// of `--config`.
#[macro_export]
macro_rules! program {
    (config_help: $help:expr $(,)?) => {
        $crate::Program {
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
            about: env!("CARGO_PKG_DESCRIPTION"),
            config_help: $help,
        }
    };
}

/// What tells one binary from another on the command line.
pub struct Program {
    /// `limpet-proxy`, ...: the CLI name and the prefix of every error.
    pub name: &'static str,
    /// The binary crate's `CARGO_PKG_VERSION`, printed by `--version`.
    pub version: &'static str,
    /// The binary crate's `CARGO_PKG_DESCRIPTION`, the first line of `--help`.
    pub about: &'static str,
    /// The help of `--config`: what runs without a file.
    pub config_help: &'static str,
}

impl Program {
    /// Parses the command line, loads the config, answers `--check` (after
    /// `check`, the binary's own extra checks), sets up logging and the
    /// runtime, then runs `serve` with the config and its path. Every
    /// failure is one line `<name>: <error>` on stderr and exit code 1.
    pub fn main<C, Check, Serve, Fut>(&self, check: Check, serve: Serve) -> ExitCode
    where
        C: DeserializeOwned + Validate + Default,
        Check: FnOnce(&C) -> anyhow::Result<()>,
        Serve: FnOnce(C, Option<PathBuf>) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let args = self.args();
        let config = match limpet_config::load_or_default::<C>(args.config.as_deref()) {
            Ok(c) => c,
            Err(e) => return self.fail(&e),
        };
        if args.check {
            if let Err(e) = check(&config) {
                return self.fail(&format!("{e:#}"));
            }
            let file = args
                .config
                .as_ref()
                .map_or("(defaults)".into(), |p| p.display().to_string());
            println!("{}: configuration {file} is ok", self.name);
            return ExitCode::SUCCESS;
        }
        init_logging();
        // Memory, not correctness: a bad value or no thread is a warning.
        let period = trim::period(std::env::var(trim::ENV).ok().as_deref()).unwrap_or_else(|e| {
            tracing::warn!("{e}; trimming every {:?}", trim::EVERY);
            Some(trim::EVERY)
        });
        if let Err(e) = trim::spawn(period) {
            tracing::warn!("no heap trim thread: {e}");
        }
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return self.fail(&format!("cannot start the runtime: {e}")),
        };
        match runtime.block_on(serve(config, args.config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => self.fail(&format!("{e:#}")),
        }
    }

    fn args(&self) -> Args {
        let command = Args::command()
            .name(self.name)
            .version(self.version)
            .about(self.about)
            .mut_arg("config", |a| a.help(self.config_help));
        let mut matches = command.get_matches();
        Args::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.exit())
    }

    fn fail(&self, error: &dyn std::fmt::Display) -> ExitCode {
        eprintln!("{}: {error}", self.name);
        ExitCode::from(1)
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`), coloured
/// only on a terminal so that captured logs stay plain text.
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // tokio catches a task's panic and keeps it for a `JoinHandle` that
    // nobody may read (the proxy's connection tasks are detached): log it
    // as an error, where every other line goes. The default hook's message
    // follows, with a backtrace when `RUST_BACKTRACE` asks for one.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), "panic: {info}");
        default(info);
    }));
}
