//! How an invocation ended, decided once.
//!
//! Every command ends in an [`Outcome`]. [`Outcome::decide`] is the one
//! place that turns it into the process's exit code and the run's
//! `dlock_outcome` metric, in one exhaustive `match` (as ripgrep's `main`
//! and nextest's `ExpectedError::process_exit_code` do): a new way to end
//! cannot be added without saying both. The numbers are in [`exit_code`];
//! "a signal means 128+N" is [`died_of`], and "a reader that went away is
//! success" is [`print`] with [`Outcome::ReaderGone`].

use std::io::Write;

use nix::sys::signal::Signal;

use crate::cli::OnLost;
use crate::metrics::Outcome as Metric;
use crate::{error, exit_code};

/// How a supervised child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    /// It exited by itself with this status.
    Exited(i32),
    /// It died of this signal (a number: real-time signals have no name).
    Died(i32),
    /// dlock SIGKILLed it after it was asked to stop by this signal and
    /// had not `--kill-after` later: the status of the stop it was asked
    /// for, as `timeout -k` gives.
    KilledAfter(Signal),
    /// CMD was not found: it never ran.
    NotFound,
    /// CMD could not be executed: it never ran.
    NotExecutable,
    /// Neither a status nor a signal: not seen on Unix.
    Unknown,
}

impl ChildExit {
    /// The status a shell would report for it.
    pub fn code(self) -> i32 {
        match self {
            ChildExit::Exited(c) => c,
            ChildExit::Died(n) => died_of(n),
            ChildExit::KilledAfter(by) => died_of(by as i32),
            ChildExit::NotFound => exit_code::NOT_FOUND,
            ChildExit::NotExecutable => exit_code::NOT_EXECUTABLE,
            ChildExit::Unknown => exit_code::SOFTWARE,
        }
    }

    /// Whether CMD ran at all.
    pub fn started(self) -> bool {
        !matches!(self, ChildExit::NotFound | ChildExit::NotExecutable)
    }
}

/// The status of a process that died of signal `n`, as shells say it:
/// 128+N. Also dlock's own when signal N ended it.
pub const fn died_of(n: i32) -> i32 {
    exit_code::SIGNAL_BASE + n
}

/// How one dlock invocation ended.
#[derive(Debug)]
pub enum Outcome {
    /// Done as asked; also a watch (`status`, `leader`) ended by a signal,
    /// which is how a watch is meant to end.
    Done,
    /// The reader of our output went away (`dlock status | head -1`): it
    /// had what it wanted.
    ReaderGone,
    /// CMD ran under the lock to its end.
    Ran(ChildExit),
    /// The lease was lost while CMD ran (or was found gone at release):
    /// with `--on-lost kill` that is the status, whatever CMD's own was;
    /// with `ignore`, CMD's own.
    Lost { child: ChildExit, on_lost: OnLost },
    /// The lock was not taken: busy, waiting ran out, or the server stayed
    /// full. The code is `-E`'s.
    Busy(i32),
    /// `dlock leader`: no one leads.
    NoLeader,
    /// A signal ended the wait for the lock, or elect's pause between terms.
    Interrupted(Signal),
    /// `dlock doctor` could not reach the backend.
    Unreachable,
    /// `dlock doctor`: a check failed (or warned, under `--strict`).
    Unhealthy,
    /// The command line was refused (clap has said why).
    Usage,
    /// A failure: the first typed error in the chain says the code, or it
    /// is a bug (70).
    Error(anyhow::Error),
    /// dlock panicked: a bug.
    Panicked,
}

impl Outcome {
    /// The exit code and the metrics outcome, decided together.
    pub fn decide(&self) -> (i32, Metric) {
        match self {
            Outcome::Done | Outcome::ReaderGone => (exit_code::SUCCESS, Metric::Success),
            Outcome::Ran(child) => match child.code() {
                exit_code::SUCCESS => (exit_code::SUCCESS, Metric::Success),
                code => (code, Metric::Failed),
            },
            Outcome::Lost {
                on_lost: OnLost::Kill,
                ..
            } => (exit_code::LOST, Metric::Lost),
            Outcome::Lost {
                child,
                on_lost: OnLost::Ignore,
            } => (child.code(), Metric::Lost),
            Outcome::Busy(code) => (*code, Metric::Busy),
            Outcome::NoLeader => (exit_code::BUSY, Metric::Busy),
            Outcome::Interrupted(sig) => (died_of(*sig as i32), Metric::Interrupted),
            Outcome::Unreachable => (exit_code::UNAVAILABLE, Metric::Error),
            Outcome::Unhealthy => (exit_code::CHECK_FAILED, Metric::Failed),
            Outcome::Usage => (exit_code::USAGE, Metric::Error),
            Outcome::Error(e) => (error::exit_code_of(e), Metric::Error),
            Outcome::Panicked => (exit_code::SOFTWARE, Metric::Error),
        }
    }

    pub fn exit_code(&self) -> i32 {
        self.decide().0
    }
}

impl From<anyhow::Result<Outcome>> for Outcome {
    fn from(r: anyhow::Result<Outcome>) -> Outcome {
        r.unwrap_or_else(Outcome::Error)
    }
}

/// Whether the reader of stdout still reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    Reading,
    /// The pipe is closed (EPIPE).
    Gone,
}

/// Write `text` to stdout and flush. A closed pipe is no failure: the
/// reader had what it wanted, so it is [`Reader::Gone`], and a watch ends
/// as [`Outcome::ReaderGone`]. Every write to stdout goes through here:
/// `println!` panics on a closed pipe (exit 70, a "bug"). A stdout closed
/// before dlock started (`>&-`) needs nothing: the Rust runtime opens
/// /dev/null on it before `main`, so no socket or file can take its place.
pub fn print(text: &str) -> anyhow::Result<Reader> {
    print_bytes(text.as_bytes())
}

/// [`print`], for bytes (a man page).
pub fn print_bytes(bytes: &[u8]) -> anyhow::Result<Reader> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(Reader::Reading),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Reader::Gone),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_way_to_end_has_its_code_and_metric() {
        let cases = [
            (Outcome::Done, 0, Metric::Success),
            (Outcome::ReaderGone, 0, Metric::Success),
            (Outcome::Ran(ChildExit::Exited(0)), 0, Metric::Success),
            (Outcome::Ran(ChildExit::Exited(3)), 3, Metric::Failed),
            (Outcome::Ran(ChildExit::Died(9)), 137, Metric::Failed),
            (
                Outcome::Ran(ChildExit::KilledAfter(Signal::SIGTERM)),
                143,
                Metric::Failed,
            ),
            (Outcome::Ran(ChildExit::NotFound), 127, Metric::Failed),
            (Outcome::Ran(ChildExit::NotExecutable), 126, Metric::Failed),
            (
                Outcome::Lost {
                    child: ChildExit::Exited(0),
                    on_lost: OnLost::Kill,
                },
                74,
                Metric::Lost,
            ),
            (
                Outcome::Lost {
                    child: ChildExit::Exited(5),
                    on_lost: OnLost::Ignore,
                },
                5,
                Metric::Lost,
            ),
            (Outcome::Busy(75), 75, Metric::Busy),
            (Outcome::Busy(0), 0, Metric::Busy),
            (Outcome::NoLeader, 75, Metric::Busy),
            (
                Outcome::Interrupted(Signal::SIGINT),
                130,
                Metric::Interrupted,
            ),
            (Outcome::Unreachable, 69, Metric::Error),
            (Outcome::Unhealthy, 1, Metric::Failed),
            (Outcome::Usage, 64, Metric::Error),
            (Outcome::Error(error::usage("bad")), 64, Metric::Error),
            (Outcome::Error(anyhow::anyhow!("a bug")), 70, Metric::Error),
            (Outcome::Panicked, 70, Metric::Error),
        ];
        for (o, code, metric) in cases {
            assert_eq!(o.decide(), (code, metric), "{o:?}");
        }
    }
}
