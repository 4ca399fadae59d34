//! # dlock: run a command under a distributed lock
//!
//! ## Theory of operation
//!
//! A lock flows from flags to backend to child:
//!
//! 1. [`config`] merges flags, `DLOCK_*` variables and the config file into
//!    validated settings; keys are sorted into one canonical order.
//! 2. [`backend::connect`] picks a [`backend::Backend`] by URL scheme. Every
//!    backend offers the same operations: try to take a slot of a key (a
//!    lease with a TTL and a fencing token), wait until trying again is
//!    worthwhile, renew, release with an owner check, force, and inspect.
//! 3. [`lease::acquire_all`] takes the keys one after another in canonical
//!    order, all or nothing, within the `--wait` deadline; each lease is
//!    handed to a [`lease::Keeper`] at once, which renews it every third of
//!    the TTL and declares it lost by deadline, not only by error.
//! 4. [`supervise`] runs the child in its own process group, forwards
//!    signals, stops the group when the keeper reports a loss, and leaves a
//!    guard process behind that kills the group if dlock itself dies or
//!    freezes.
//! 5. The leases are released (or, with `--lock-at-least`, left to lapse at
//!    the right time) and dlock exits with the child's status: every
//!    command ends in an [`outcome::Outcome`], turned into the exit code
//!    (and the run's metrics outcome) in one place.

pub mod backend;
pub mod cli;
pub mod commands;
pub mod config;
pub mod doctor;
pub mod error;
pub mod exit_code;
pub mod handle;
pub mod host;
pub mod human;
pub mod jsonlog;
pub mod lease;
pub mod metrics;
pub mod outcome;
pub mod progress;
pub mod status;
pub mod supervise;

use std::io::Write;

use anyhow::Result;
use clap::CommandFactory;

use crate::outcome::Outcome;

use crate::cli::{Cli, Command, LogFormat};
use crate::commands::*;
use crate::config::Settings;
use crate::error::usage;

/// Run one dlock invocation, to its [`Outcome`].
pub async fn run(cli: Cli) -> Outcome {
    run_command(cli).await.into()
}

async fn run_command(cli: Cli) -> Result<Outcome> {
    match &cli.command {
        // Written whole, then printed: clap_complete panics on a closed
        // pipe (`dlock completions bash | head -1`).
        Command::Completions { shell } => {
            let mut text = Vec::new();
            print_completions(*shell, &mut text)?;
            outcome::print_bytes(&text)?;
            return Ok(Outcome::Done);
        }
        Command::Man { subcommand } => {
            outcome::print_bytes(&man_page(subcommand.as_deref())?)?;
            return Ok(Outcome::Done);
        }
        _ => {}
    }
    // JSON from the start when the flag or DLOCK_LOG_FORMAT asks for it, so
    // that a configuration error is a JSON line too.
    jsonlog::set_json(cli.global.log_format == Some(LogFormat::Json));
    let settings = Settings::resolve(&cli.global)?;
    init_logging(&settings);
    let conn = Connector {
        settings: &settings,
        backend: tokio::sync::OnceCell::new(),
    };
    let result = match cli.command {
        Command::Run(a) => cmd_run(&conn, a).await,
        Command::Acquire(a) => cmd_acquire(&conn, a).await,
        Command::Renew(a) => cmd_renew(&conn, a).await,
        Command::Release(a) => cmd_release(&conn, a).await,
        Command::Elect(a) => cmd_elect(&conn, a).await,
        Command::Leader(a) => cmd_leader(&conn, a).await,
        Command::Status(a) => cmd_status(&conn, a).await,
        Command::Ping => cmd_ping(&conn).await,
        Command::Doctor(a) => cmd_doctor(&conn, a).await,
        Command::Completions { .. } | Command::Man { .. } => unreachable!("handled above"),
    };
    // What an error cut short was not let go of yet.
    lease::release_dropped().await;
    if let Some(b) = conn.backend.get() {
        b.close().await;
    }
    result
}

pub fn print_completions(shell: clap_complete::Shell, out: &mut dyn Write) -> Result<()> {
    clap_complete::generate(shell, &mut Cli::command(), "dlock", out);
    Ok(())
}

/// The roff man page of dlock, or of `dlock-SUBCOMMAND`.
pub fn man_page(subcommand: Option<&str>) -> Result<Vec<u8>> {
    let mut cmd = Cli::command();
    // Propagate the global options into the subcommands' pages.
    cmd.build();
    let page = match subcommand {
        None => cmd,
        Some(name) => {
            let sub = cmd
                .find_subcommand(name)
                .ok_or_else(|| usage(format!("no subcommand {name:?}")))?
                .clone();
            let full = format!("dlock-{name}");
            sub.name(full).version(env!("CARGO_PKG_VERSION"))
        }
    };
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf)?;
    Ok(buf)
}

fn init_logging(s: &Settings) {
    use tracing_subscriber::filter::LevelFilter;
    jsonlog::set_json(s.log_format == LogFormat::Json);
    let level = match (s.quiet, s.verbose, s.log_format) {
        (true, _, _) => LevelFilter::OFF,
        (_, 0, LogFormat::Text) => LevelFilter::OFF,
        (_, 0 | 1, _) => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    };
    if level == LevelFilter::OFF {
        return;
    }
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // A closed stderr (`2>&1 | head -1`) is not an error worth a panic
        // (its report would be one more write to the closed stderr).
        .log_internal_errors(false)
        .with_max_level(level)
        .with_target(false);
    match s.log_format {
        LogFormat::Json => b.event_format(jsonlog::JsonLines).init(),
        LogFormat::Text => b.compact().init(),
    }
}

/// Used by `main` for the top-level error message.
pub fn report(err: &anyhow::Error) -> String {
    if jsonlog::is_json() {
        let code = error::exit_code_of(err);
        jsonlog::line(
            "ERROR",
            "error",
            &format!("{err:#}"),
            &[("exit_code", code.into())],
        )
    } else {
        format!("dlock: {err:#}")
    }
}
