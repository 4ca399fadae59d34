//! The supervision loop with a test child and test signals, under
//! paused time: what it sends the child, and when.
use std::cell::RefCell;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant as Clock;

use super::signals::{FORWARDED, SignalEvent, SignalSource};
use super::watch::{Policy, Watched, watch_child};
use crate::cli::OnLost;
use crate::lease::Loss;

/// Signals as a test sends them; pending for ever once none are left to
/// send (the sender is kept in [`Setup`]).
struct TestSignals(mpsc::UnboundedReceiver<Signal>);

impl SignalSource for TestSignals {
    async fn recv(&mut self) -> SignalEvent {
        match self.0.recv().await.and_then(SignalEvent::of) {
            Some(e) => e,
            None => std::future::pending().await,
        }
    }
}

/// A child that records the signals its group gets, with when, and
/// dies of the first one in `fatal`.
struct Child {
    got: RefCell<Vec<(Signal, Duration)>>,
    fatal: Vec<Signal>,
    die: RefCell<Option<oneshot::Sender<ExitStatus>>>,
    t0: Clock,
}

impl Child {
    fn kill(&self, s: Signal) {
        self.got.borrow_mut().push((s, self.t0.elapsed()));
        if self.fatal.contains(&s)
            && let Some(tx) = self.die.borrow_mut().take()
        {
            let _ = tx.send(ExitStatus::from_raw(s as i32));
        }
    }

    fn signals(&self) -> Vec<Signal> {
        self.got.borrow().iter().map(|(s, _)| *s).collect()
    }

    /// When the `i`th signal reached the group.
    fn at(&self, i: usize) -> Duration {
        self.got.borrow()[i].1
    }
}

/// One test's world: the child, the signals sent to dlock and from the
/// terminal, the keeper's channels, and the deadlines sent to the guard.
struct Setup {
    child: Child,
    exited: Option<oneshot::Receiver<ExitStatus>>,
    sig_tx: mpsc::UnboundedSender<Signal>,
    signals: TestSignals,
    tty_tx: mpsc::UnboundedSender<Signal>,
    tty: TestSignals,
    lost_tx: watch::Sender<Option<Loss>>,
    lost_rx: watch::Receiver<Option<Loss>>,
    safe_tx: watch::Sender<Option<Instant>>,
    safe_rx: watch::Receiver<Option<Instant>>,
    seen: RefCell<Vec<Option<Instant>>>,
}

/// A child that dies of the first of `fatal` it gets.
fn setup(fatal: &[Signal]) -> Setup {
    let (die, exited) = oneshot::channel();
    let (sig_tx, sig_rx) = mpsc::unbounded_channel();
    let (tty_tx, tty_rx) = mpsc::unbounded_channel();
    let (lost_tx, lost_rx) = watch::channel(None);
    let (safe_tx, safe_rx) = watch::channel(None);
    Setup {
        child: Child {
            got: RefCell::new(Vec::new()),
            fatal: fatal.to_vec(),
            die: RefCell::new(Some(die)),
            t0: Clock::now(),
        },
        exited: Some(exited),
        sig_tx,
        signals: TestSignals(sig_rx),
        tty_tx,
        tty: TestSignals(tty_rx),
        lost_tx,
        lost_rx,
        safe_tx,
        safe_rx,
        seen: RefCell::new(Vec::new()),
    }
}

impl Setup {
    /// The keeper reports a loss.
    fn lose(&self, message: &str, expires: Option<Instant>) {
        let loss = Loss {
            message: message.into(),
            expires,
        };
        self.lost_tx.send(Some(loss)).unwrap();
    }

    /// `sig` reaches dlock `after` from now.
    fn signal_later(&self, after: Duration, sig: Signal) {
        later(&self.sig_tx, after, sig);
    }

    /// `sig` reaches the child's group from the terminal `after` from now.
    fn ctrl_later(&self, after: Duration, sig: Signal) {
        later(&self.tty_tx, after, sig);
    }

    /// The loop over the test child, recording the guard's deadlines.
    async fn watch(&mut self, policy: Policy<'static>) -> Watched {
        let exited = self.exited.take().expect("one child, watched once");
        let exited = async { exited.await.map_err(|_| std::io::Error::other("gone")) };
        let (child, seen) = (&self.child, &self.seen);
        watch_child(
            exited,
            |sig| child.kill(sig),
            &mut self.signals,
            &mut self.tty,
            &mut self.lost_rx,
            self.safe_rx.clone(),
            policy,
            |at| seen.borrow_mut().push(at),
        )
        .await
    }
}

fn later(tx: &mpsc::UnboundedSender<Signal>, after: Duration, sig: Signal) {
    if after.is_zero() {
        tx.send(sig).unwrap();
        return;
    }
    let tx = tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let _ = tx.send(sig);
    });
}

fn policy(on_lost: OnLost) -> Policy<'static> {
    Policy {
        on_lost,
        kill_after: KILL_AFTER,
        stop_signal: Signal::SIGTERM,
        shown: "job",
    }
}

const KILL_AFTER: Duration = Duration::from_secs(10);
const NOW: Duration = Duration::ZERO;

/// Whether `at` is `want`, give or take 10 ms.
fn about(at: Duration, want: Duration) -> bool {
    let slack = Duration::from_millis(10);
    at + slack >= want && at <= want + slack
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_loss_is_sigterm_now_and_sigkill_after_kill_after() {
    let mut s = setup(&[Signal::SIGKILL]);
    s.lose("broken", None);
    let w = s.watch(policy(OnLost::Kill)).await;
    assert_eq!(w.status.unwrap().signal(), Some(libc::SIGKILL));
    assert!(w.lost.is_some());
    assert_eq!(s.child.signals(), vec![Signal::SIGTERM, Signal::SIGKILL]);
    assert!(about(s.child.at(0), NOW), "SIGTERM at once");
    let at = s.child.at(1);
    assert!(
        about(at, KILL_AFTER),
        "SIGKILL after --kill-after (10s), at {at:?}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn sigkill_lands_at_the_lease_expiry_when_that_is_sooner() {
    let mut s = setup(&[Signal::SIGKILL]);
    s.lose(
        "could not renew",
        Some(Instant::now() + Duration::from_secs(2)),
    );
    let w = s.watch(policy(OnLost::Kill)).await;
    assert!(w.lost.is_some());
    assert_eq!(s.child.signals(), vec![Signal::SIGTERM, Signal::SIGKILL]);
    let at = s.child.at(1);
    assert!(
        at <= Duration::from_millis(2_010),
        "SIGKILL by the expiry, at {at:?}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn signals_are_forwarded_and_a_second_sigint_is_sigkill() {
    let mut s = setup(&[Signal::SIGKILL]);
    for sig in [
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGINT,
        Signal::SIGINT,
    ] {
        s.signal_later(NOW, sig);
    }
    let w = s.watch(policy(OnLost::Kill)).await;
    assert!(w.lost.is_none());
    assert_eq!(w.status.unwrap().signal(), Some(libc::SIGKILL));
    assert_eq!(
        s.child.signals(),
        vec![
            Signal::SIGHUP,
            Signal::SIGUSR1,
            Signal::SIGINT,
            Signal::SIGKILL
        ]
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn on_lost_ignore_only_warns_and_deadlines_reach_the_guard() {
    let mut s = setup(&[Signal::SIGTERM]);
    let until = Instant::now() + Duration::from_secs(30);
    s.safe_tx.send(Some(until)).unwrap();
    s.lose("broken", None);
    // The test ends the child itself, a while later.
    s.signal_later(Duration::from_secs(60), Signal::SIGTERM);
    let w = s.watch(policy(OnLost::Ignore)).await;
    assert!(w.lost.is_some(), "the loss is reported");
    assert_eq!(w.status.unwrap().signal(), Some(libc::SIGTERM));
    assert_eq!(
        s.child.signals(),
        vec![Signal::SIGTERM],
        "only the forwarded one"
    );
    assert!(s.child.at(0) >= Duration::from_secs(60));
    assert_eq!(*s.seen.borrow(), vec![Some(until)]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_passed_on_stop_is_sigkill_after_kill_after() {
    let ending = FORWARDED
        .into_iter()
        .filter(|s| SignalEvent::of(*s).is_some_and(SignalEvent::ends_child));
    for sig in ending {
        // The child ignores everything but SIGKILL.
        let mut s = setup(&[Signal::SIGKILL]);
        s.signal_later(NOW, sig);
        let w = s.watch(policy(OnLost::Kill)).await;
        assert_eq!(w.status.unwrap().signal(), Some(libc::SIGKILL));
        assert_eq!(w.stopped_by, SignalEvent::of(sig));
        assert!(w.killed, "{sig}: dlock's own SIGKILL");
        assert_eq!(s.child.signals(), vec![sig, Signal::SIGKILL]);
        let at = s.child.at(1);
        assert!(
            about(at, KILL_AFTER),
            "{sig}: SIGKILL after --kill-after (10s), at {at:?}"
        );
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn user_signals_do_not_escalate() {
    let mut s = setup(&[Signal::SIGTERM]);
    s.signal_later(NOW, Signal::SIGUSR1);
    s.signal_later(Duration::from_secs(60), Signal::SIGTERM);
    let w = s.watch(policy(OnLost::Kill)).await;
    assert_eq!(s.child.signals(), vec![Signal::SIGUSR1, Signal::SIGTERM]);
    assert!(!w.killed);
    assert_eq!(w.stopped_by, Some(SignalEvent::Terminate));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn terminal_signals_are_not_sent_again_and_the_second_ctrl_c_kills() {
    let mut s = setup(&[Signal::SIGKILL]);
    s.ctrl_later(NOW, Signal::SIGINT);
    s.ctrl_later(Duration::from_secs(2), Signal::SIGINT);
    let w = s.watch(policy(OnLost::Kill)).await;
    assert_eq!(
        s.child.signals(),
        vec![Signal::SIGKILL],
        "the first Ctrl-C is not sent twice"
    );
    let at = s.child.at(0);
    assert!(
        at >= Duration::from_secs(2) && at < Duration::from_secs(3),
        "{at:?}"
    );
    assert_eq!(w.stopped_by, Some(SignalEvent::Interrupt));
    assert!(w.killed);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn one_ctrl_c_starts_no_timer() {
    let mut s = setup(&[Signal::SIGTERM]);
    s.ctrl_later(NOW, Signal::SIGINT);
    s.signal_later(Duration::from_secs(60), Signal::SIGTERM);
    let w = s.watch(policy(OnLost::Kill)).await;
    assert_eq!(
        s.child.signals(),
        vec![Signal::SIGTERM],
        "no SIGKILL after one Ctrl-C"
    );
    assert!(!w.killed);
    assert_eq!(w.stopped_by, Some(SignalEvent::Interrupt));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_loss_sends_the_stop_signal() {
    let mut s = setup(&[Signal::SIGQUIT]);
    s.lose("broken", None);
    let w = s
        .watch(Policy {
            stop_signal: Signal::SIGQUIT,
            ..policy(OnLost::Kill)
        })
        .await;
    assert_eq!(s.child.signals(), vec![Signal::SIGQUIT]);
    assert!(w.lost.is_some());
    assert_eq!(w.stopped_by, None, "dlock's own stop is no request to stop");
}
