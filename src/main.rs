//! `main` only builds the runtime, runs [`dlock::run`] and turns its result
//! into an exit code; everything else lives in the library.

// The unit-test harness of this target (`cargo test --all-targets`) has a
// `main` of its own: ours is the process's entry only outside it.
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code))]

use std::io::Write;

use dlock::outcome::Outcome;

/// The process's entry, called by the C runtime: Rust's own start-up
/// (`lang_start`) is not run. Of what it does, dlock keeps the two things
/// it relies on (below), and leaves out the main thread's stack-overflow
/// guard, which read and parsed `/proc/self/maps` and set up an alternate
/// signal stack at every start (20 system calls of the 50 before `main`):
/// a stack overflow is then reported as a plain SIGSEGV.
#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    std_fds();
    // SAFETY: setting a signal's disposition, before any thread exists.
    // Ignored, as Rust programs have it: a write to a closed pipe is an
    // error (EPIPE), not death. The child gets the default back (spawn.rs).
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    real_main();
    let _ = std::io::stdout().flush();
    0
}

/// Standard input, output and error open, as Rust's start-up makes sure:
/// one that was closed is opened on /dev/null, so that no file dlock opens
/// (a database, a lock file) takes its number and is handed to the child
/// as its standard input or output.
fn std_fds() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: `fds` is a valid array of three pollfd, for the call's length.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } < 0 {
        return;
    }
    for p in fds {
        if p.revents & libc::POLLNVAL != 0 {
            // SAFETY: a constant, NUL-terminated path; the lowest free
            // number is the closed one.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

fn real_main() {
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
