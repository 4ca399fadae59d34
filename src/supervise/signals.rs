//! Signals as events: what a signal means to dlock is decided here, once
//! ([`SignalEvent::of`]), for the supervise loop, the waits for a lock and
//! elect's stops alike; and the streams that receive them.

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

/// The signals dlock handles, and passes on to the child: those that
/// [`SignalEvent::of`] knows.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// What a signal that reached dlock (or, from the terminal, the child's
/// group) means to dlock. Any of them ends a wait for the lock (128+N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// SIGINT (Ctrl-C): asked to stop; a second one is SIGKILL at once.
    Interrupt,
    /// SIGTERM: asked to stop.
    Terminate,
    /// SIGHUP: the terminal or session went away; the child is asked to
    /// end, and `elect` campaigns again after it as after any end that was
    /// not a stop.
    HangUp,
    /// SIGQUIT (Ctrl-\\): asked to end (with a core dump); as for SIGHUP,
    /// `elect` campaigns again.
    Quit,
    /// SIGUSR1, SIGUSR2: the child's own business: passed on, nothing more.
    Pass(Signal),
}

impl SignalEvent {
    /// The event a signal is; `None` for one dlock does not handle.
    pub fn of(sig: Signal) -> Option<SignalEvent> {
        Some(match sig {
            Signal::SIGINT => SignalEvent::Interrupt,
            Signal::SIGTERM => SignalEvent::Terminate,
            Signal::SIGHUP => SignalEvent::HangUp,
            Signal::SIGQUIT => SignalEvent::Quit,
            Signal::SIGUSR1 | Signal::SIGUSR2 => SignalEvent::Pass(sig),
            _ => return None,
        })
    }

    /// The signal itself, to pass on.
    pub fn signal(self) -> Signal {
        match self {
            SignalEvent::Interrupt => Signal::SIGINT,
            SignalEvent::Terminate => Signal::SIGTERM,
            SignalEvent::HangUp => Signal::SIGHUP,
            SignalEvent::Quit => Signal::SIGQUIT,
            SignalEvent::Pass(s) => s,
        }
    }

    /// It asks the child to end: after it reached the child, the child gets
    /// `--kill-after` to do so before SIGKILL.
    pub fn ends_child(self) -> bool {
        !matches!(self, SignalEvent::Pass(_))
    }

    /// It asks dlock itself to stop: `elect` exits rather than campaigning
    /// again.
    pub fn stops_dlock(self) -> bool {
        matches!(self, SignalEvent::Interrupt | SignalEvent::Terminate)
    }
}

/// Whether `s` is ignored (`SIG_IGN`) right now.
pub fn ignored(s: Signal) -> bool {
    // SAFETY: with a null new action, sigaction only reads the current
    // disposition into the zeroed struct we own.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(s as libc::c_int, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Signal streams for [`FORWARDED`], installed before the lock is taken so a
/// signal never kills dlock between taking the lock and starting the child.
/// A signal that was ignored when dlock started (`nohup`, a background job
/// of a non-interactive shell) gets no handler: it stays ignored, is not
/// forwarded, and the child inherits the ignore, as with `flock(1)`.
pub struct Signals {
    streams: Vec<(SignalEvent, tokio::signal::unix::Signal)>,
}

impl Signals {
    pub fn install() -> Result<Signals> {
        let handled = FORWARDED.into_iter().filter(|s| {
            let ignored = ignored(*s);
            if ignored {
                tracing::debug!(signal = s.as_str(), "ignored at start: left ignored");
            }
            !ignored
        });
        Signals::install_for(handled)
    }

    fn install_for(which: impl IntoIterator<Item = Signal>) -> Result<Signals> {
        let mut streams = Vec::new();
        for s in which {
            let Some(event) = SignalEvent::of(s) else {
                continue;
            };
            let stream =
                signal(SignalKind::from_raw(s as i32)).context("cannot install signal handlers")?;
            streams.push((event, stream));
        }
        Ok(Signals { streams })
    }

    pub async fn recv(&mut self) -> SignalEvent {
        let futs = self
            .streams
            .iter_mut()
            .map(|(e, st)| {
                let e = *e;
                Box::pin(async move {
                    st.recv().await;
                    e
                })
            })
            .collect::<Vec<_>>();
        first_of(futs).await
    }

    /// The events delivered since the last call, without waiting: the last.
    async fn take(&mut self) -> Option<SignalEvent> {
        let mut got = None;
        for (e, st) in self.streams.iter_mut() {
            loop {
                let ready = tokio::select! {
                    biased;
                    r = st.recv() => r.is_some(),
                    () = std::future::ready(()) => false,
                };
                if !ready {
                    break;
                }
                got = Some(*e);
            }
        }
        got
    }
}

/// Await the first of several futures (a tiny `select_all`).
async fn first_of<F: std::future::Future<Output = SignalEvent> + Unpin>(
    mut futs: Vec<F>,
) -> SignalEvent {
    std::future::poll_fn(move |cx| {
        for f in futs.iter_mut() {
            if let std::task::Poll::Ready(s) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(s);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Where signals come from: the process's own ([`Signals`]), the relay's,
/// or a test's.
pub trait SignalSource {
    fn recv(&mut self) -> impl std::future::Future<Output = SignalEvent>;
}

impl SignalSource for Signals {
    fn recv(&mut self) -> impl std::future::Future<Output = SignalEvent> {
        Signals::recv(self)
    }
}

/// `elect`'s own view of the signals that stop dlock, next to the
/// [`Signals`] that `supervise` forwards: it tells "CMD exited because we
/// were asked to stop" from "CMD exited by itself", which decides between
/// exiting and `--restart`. Signals ignored at start stay ignored.
pub struct Stops(Signals);

impl Stops {
    /// Which to watch; before [`Signals::install`], which replaces the
    /// dispositions.
    pub fn wanted() -> Vec<Signal> {
        FORWARDED
            .into_iter()
            .filter(|s| SignalEvent::of(*s).is_some_and(SignalEvent::stops_dlock) && !ignored(*s))
            .collect()
    }

    pub fn install(which: Vec<Signal>) -> Result<Stops> {
        Signals::install_for(which).map(Stops)
    }

    /// A stop delivered since the last call, without waiting. The signal
    /// driver hands a signal to every stream at once, so one that
    /// `supervise` forwarded is already here when it returns.
    pub async fn take(&mut self) -> Option<SignalEvent> {
        self.0.take().await
    }
}

/// `--stop-signal`: a signal name (`TERM`, `SIGQUIT`, any case) or number.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let t = s.trim();
    let sig = if let Ok(n) = t.parse::<i32>() {
        Signal::try_from(n).ok()
    } else {
        let up = t.to_ascii_uppercase();
        let name = if up.starts_with("SIG") {
            up
        } else {
            format!("SIG{up}")
        };
        name.parse::<Signal>().ok()
    };
    match sig {
        Some(
            Signal::SIGSTOP
            | Signal::SIGTSTP
            | Signal::SIGTTIN
            | Signal::SIGTTOU
            | Signal::SIGCHLD
            | Signal::SIGCONT
            | Signal::SIGWINCH
            | Signal::SIGURG,
        ) => Err(format!(
            "{s:?} does not stop a program: use TERM, INT, QUIT, HUP, USR1, USR2 or KILL"
        )),
        Some(sig) => Ok(sig),
        None => Err(format!(
            "{s:?} is not a signal: use a name such as TERM, INT, QUIT or HUP, or its number"
        )),
    }
}

/// The signal's name without `SIG`, as users write it (`TERM`).
pub fn signal_name(s: Signal) -> &'static str {
    s.as_str().trim_start_matches("SIG")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("sigquit"), Ok(Signal::SIGQUIT));
        assert_eq!(parse_signal("2"), Ok(Signal::SIGINT));
        assert!(parse_signal("STOP").is_err());
        assert!(parse_signal("NOPE").is_err());
        assert_eq!(signal_name(Signal::SIGHUP), "HUP");
    }

    #[test]
    fn the_handled_signals_are_the_events_and_back() {
        for s in Signal::iterator() {
            let e = SignalEvent::of(s);
            assert_eq!(e.is_some(), FORWARDED.contains(&s), "{s}");
            if let Some(e) = e {
                assert_eq!(e.signal(), s);
            }
        }
        let ending: Vec<_> = FORWARDED
            .into_iter()
            .filter(|s| SignalEvent::of(*s).is_some_and(SignalEvent::ends_child))
            .collect();
        assert_eq!(
            ending,
            [
                Signal::SIGINT,
                Signal::SIGTERM,
                Signal::SIGHUP,
                Signal::SIGQUIT
            ]
        );
        let stopping: Vec<_> = FORWARDED
            .into_iter()
            .filter(|s| SignalEvent::of(*s).is_some_and(SignalEvent::stops_dlock))
            .collect();
        assert_eq!(stopping, [Signal::SIGINT, Signal::SIGTERM]);
    }
}
