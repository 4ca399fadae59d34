//! `main` only builds the runtime, runs [`dlock::run`] and turns its result
//! into an exit code; everything else lives in the library.

use std::io::Write;

use dlock::outcome::Outcome;

fn main() {
    // `dlock --version` needs nothing of the command line's definition,
    // which clap builds whole (every subcommand and flag) before parsing:
    // that was most of this invocation's own work.
    if version_only() {
        let line = format!("dlock {}\n", env!("CARGO_PKG_VERSION"));
        let _ = std::io::stdout().write_all(line.as_bytes());
        return;
    }
    // A panic is a bug: say so and exit 70, never a bare abort.
    std::panic::set_hook(Box::new(|info| {
        dlock::jsonlog::stderr_line(&format!(
            "dlock: internal error (a bug, please report it): {info}"
        ));
        std::process::exit(Outcome::Panicked.exit_code());
    }));
    let cli = match dlock::cli::parse(std::env::args_os().collect()) {
        Ok(c) => c,
        Err((e, better)) => {
            match better {
                // A closed stderr is no reason to panic.
                Some(text) => {
                    let _ = std::io::stderr().write_all(text.as_bytes());
                }
                None => {
                    let _ = e.print();
                }
            }
            // --help and --version print to stdout and succeed; every other
            // parse failure is a usage error (64), not clap's usual 2.
            let outcome = if e.use_stderr() {
                Outcome::Usage
            } else {
                Outcome::Done
            };
            std::process::exit(outcome.exit_code());
        }
    };
    // One thread: the child must be spawned from the thread that lives as
    // long as dlock, or PR_SET_PDEATHSIG would fire when a worker exits.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            dlock::jsonlog::stderr_line(&format!("dlock: cannot start: {e}"));
            std::process::exit(Outcome::Error(e.into()).exit_code());
        }
    };
    let outcome = rt.block_on(dlock::run(cli));
    if let Outcome::Error(e) = &outcome {
        dlock::jsonlog::stderr_line(&dlock::report(e));
    }
    let code = outcome.exit_code();
    let _ = std::io::stdout().flush();
    // Exit without dropping the runtime: a thread blocked in flock() for a
    // waiter must not hold up the exit.
    std::process::exit(code);
}

/// Whether the command line is `dlock --version` or `dlock -V` alone, as
/// clap would answer it (it prints the same line).
fn version_only() -> bool {
    let mut args = std::env::args_os().skip(1);
    matches!((args.next(), args.next()), (Some(a), None) if a == "--version" || a == "-V")
}
