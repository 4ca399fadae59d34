//! The supervision loop with a test child and test signals, under
//! paused time: what it sends the child, and when.
use super::signals::{FORWARDED, SignalEvent, SignalSource};
use super::watch::{Policy, Watched, watch_child};
use crate::cli::OnLost;
use crate::lease::Loss;
use nix::sys::signal::Signal;
use std::cell::RefCell;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant as Clock;

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
    fn new(fatal: &[Signal]) -> (Child, oneshot::Receiver<ExitStatus>) {
        let (tx, rx) = oneshot::channel();
        let c = Child {
            got: RefCell::new(Vec::new()),
            fatal: fatal.to_vec(),
            die: RefCell::new(Some(tx)),
            t0: Clock::now(),
        };
        (c, rx)
    }

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
}

struct Setup {
    sig_tx: mpsc::UnboundedSender<Signal>,
    signals: TestSignals,
    lost_tx: watch::Sender<Option<Loss>>,
    lost_rx: watch::Receiver<Option<Loss>>,
    safe_tx: watch::Sender<Option<Instant>>,
    safe_rx: watch::Receiver<Option<Instant>>,
}

fn setup() -> Setup {
    let (sig_tx, sig_rx) = mpsc::unbounded_channel();
    let (lost_tx, lost_rx) = watch::channel(None);
    let (safe_tx, safe_rx) = watch::channel(None);
    Setup {
        sig_tx,
        signals: TestSignals(sig_rx),
        lost_tx,
        lost_rx,
        safe_tx,
        safe_rx,
    }
}

fn policy(on_lost: OnLost) -> Policy<'static> {
    Policy {
        on_lost,
        kill_after: Duration::from_secs(10),
        stop_signal: Signal::SIGTERM,
        shown: "job",
    }
}

/// No terminal: nothing is relayed.
struct NoRelay;

impl SignalSource for NoRelay {
    async fn recv(&mut self) -> SignalEvent {
        std::future::pending().await
    }
}

/// The loop over the test child, recording the guard's deadlines.
async fn watch(
    s: &mut Setup,
    child: &Child,
    exited: oneshot::Receiver<ExitStatus>,
    on_lost: OnLost,
    seen: &RefCell<Vec<Option<Instant>>>,
) -> (std::io::Result<ExitStatus>, Option<Loss>) {
    let w = watch_with(s, child, exited, policy(on_lost), &mut NoRelay, seen).await;
    (w.status, w.lost)
}

async fn watch_with(
    s: &mut Setup,
    child: &Child,
    exited: oneshot::Receiver<ExitStatus>,
    policy: Policy<'static>,
    relayed: &mut impl SignalSource,
    seen: &RefCell<Vec<Option<Instant>>>,
) -> Watched {
    let exited = async { exited.await.map_err(|_| std::io::Error::other("gone")) };
    watch_child(
        exited,
        |sig| child.kill(sig),
        &mut s.signals,
        relayed,
        &mut s.lost_rx,
        s.safe_rx.clone(),
        policy,
        |at| seen.borrow_mut().push(at),
    )
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_loss_is_sigterm_now_and_sigkill_after_kill_after() {
    let mut s = setup();
    let (child, exited) = Child::new(&[Signal::SIGKILL]);
    let seen = RefCell::new(Vec::new());
    s.lost_tx
        .send(Some(Loss {
            message: "broken".into(),
            expires: None,
        }))
        .unwrap();
    let (st, lost) = watch(&mut s, &child, exited, OnLost::Kill, &seen).await;
    assert_eq!(st.unwrap().signal(), Some(libc::SIGKILL));
    assert!(lost.is_some());
    let got = child.got.borrow();
    assert_eq!(got[0].0, Signal::SIGTERM);
    assert!(got[0].1 < Duration::from_millis(10), "SIGTERM at once");
    assert_eq!(got[1].0, Signal::SIGKILL);
    let at = got[1].1;
    assert!(
        at >= Duration::from_millis(9990) && at <= Duration::from_millis(10_010),
        "SIGKILL after --kill-after (10s), at {at:?}"
    );
    drop(s.sig_tx);
    drop(s.safe_tx);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn sigkill_lands_at_the_lease_expiry_when_that_is_sooner() {
    let mut s = setup();
    let (child, exited) = Child::new(&[Signal::SIGKILL]);
    let seen = RefCell::new(Vec::new());
    s.lost_tx
        .send(Some(Loss {
            message: "could not renew".into(),
            expires: Some(Instant::now() + Duration::from_secs(2)),
        }))
        .unwrap();
    let (_, lost) = watch(&mut s, &child, exited, OnLost::Kill, &seen).await;
    assert!(lost.is_some());
    let got = child.got.borrow();
    assert_eq!(child.signals(), vec![Signal::SIGTERM, Signal::SIGKILL]);
    assert!(
        got[1].1 <= Duration::from_millis(2_010),
        "SIGKILL by the expiry, at {:?}",
        got[1].1
    );
    drop(s.sig_tx);
    drop(s.safe_tx);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn signals_are_forwarded_and_a_second_sigint_is_sigkill() {
    let mut s = setup();
    let (child, exited) = Child::new(&[Signal::SIGKILL]);
    let seen = RefCell::new(Vec::new());
    for sig in [
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGINT,
        Signal::SIGINT,
    ] {
        s.sig_tx.send(sig).unwrap();
    }
    let (st, lost) = watch(&mut s, &child, exited, OnLost::Kill, &seen).await;
    assert!(lost.is_none());
    assert_eq!(st.unwrap().signal(), Some(libc::SIGKILL));
    assert_eq!(
        child.signals(),
        vec![
            Signal::SIGHUP,
            Signal::SIGUSR1,
            Signal::SIGINT,
            Signal::SIGKILL
        ]
    );
    drop(s.lost_tx);
    drop(s.safe_tx);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn on_lost_ignore_only_warns_and_deadlines_reach_the_guard() {
    let mut s = setup();
    let (child, exited) = Child::new(&[Signal::SIGTERM]);
    let seen = RefCell::new(Vec::new());
    let until = Instant::now() + Duration::from_secs(30);
    s.safe_tx.send(Some(until)).unwrap();
    s.lost_tx
        .send(Some(Loss {
            message: "broken".into(),
            expires: None,
        }))
        .unwrap();
    // The test ends the child itself, a while later.
    let sig_tx = s.sig_tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let _ = sig_tx.send(Signal::SIGTERM);
    });
    let (st, lost) = watch(&mut s, &child, exited, OnLost::Ignore, &seen).await;
    assert!(lost.is_some(), "the loss is reported");
    assert_eq!(st.unwrap().signal(), Some(libc::SIGTERM));
    let got = child.got.borrow();
    assert_eq!(
        child.signals(),
        vec![Signal::SIGTERM],
        "only the forwarded one"
    );
    assert!(got[0].1 >= Duration::from_secs(60));
    assert_eq!(*seen.borrow(), vec![Some(until)]);
    drop(s.lost_tx);
}
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_passed_on_stop_is_sigkill_after_kill_after() {
    let ending = FORWARDED
        .into_iter()
        .filter(|s| SignalEvent::of(*s).is_some_and(SignalEvent::ends_child));
    for sig in ending {
        let mut s = setup();
        // The child ignores everything but SIGKILL.
        let (child, exited) = Child::new(&[Signal::SIGKILL]);
        let seen = RefCell::new(Vec::new());
        s.sig_tx.send(sig).unwrap();
        let w = watch_with(
            &mut s,
            &child,
            exited,
            policy(OnLost::Kill),
            &mut NoRelay,
            &seen,
        )
        .await;
        assert_eq!(w.status.unwrap().signal(), Some(libc::SIGKILL));
        assert_eq!(w.stopped_by, SignalEvent::of(sig));
        assert!(w.killed, "{sig}: dlock's own SIGKILL");
        let got = child.got.borrow();
        assert_eq!(child.signals(), vec![sig, Signal::SIGKILL]);
        let at = got[1].1;
        assert!(
            at >= Duration::from_millis(9990) && at <= Duration::from_millis(10_010),
            "{sig}: SIGKILL after --kill-after (10s), at {at:?}"
        );
        drop(s.lost_tx);
        drop(s.safe_tx);
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn user_signals_do_not_escalate() {
    let mut s = setup();
    let (child, exited) = Child::new(&[Signal::SIGTERM]);
    let seen = RefCell::new(Vec::new());
    s.sig_tx.send(Signal::SIGUSR1).unwrap();
    let sig_tx = s.sig_tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let _ = sig_tx.send(Signal::SIGTERM);
    });
    let w = watch_with(
        &mut s,
        &child,
        exited,
        policy(OnLost::Kill),
        &mut NoRelay,
        &seen,
    )
    .await;
    assert_eq!(child.signals(), vec![Signal::SIGUSR1, Signal::SIGTERM]);
    assert!(!w.killed);
    assert_eq!(w.stopped_by, Some(SignalEvent::Terminate));
    drop(s.lost_tx);
    drop(s.safe_tx);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn terminal_signals_are_not_sent_again_and_the_second_ctrl_c_kills() {
    let mut s = setup();
    let (child, exited) = Child::new(&[Signal::SIGKILL]);
    let seen = RefCell::new(Vec::new());
    let (tty_tx, tty_rx) = mpsc::unbounded_channel();
    let mut tty = TestSignals(tty_rx);
    tty_tx.send(Signal::SIGINT).unwrap();
    let again = tty_tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = again.send(Signal::SIGINT);
    });
    let w = watch_with(
        &mut s,
        &child,
        exited,
        policy(OnLost::Kill),
        &mut tty,
        &seen,
    )
    .await;
    assert_eq!(
        child.signals(),
        vec![Signal::SIGKILL],
        "the first Ctrl-C is not sent twice"
    );
    let at = child.got.borrow()[0].1;
    assert!(
        at >= Duration::from_secs(2) && at < Duration::from_secs(3),
        "{at:?}"
    );
    assert_eq!(w.stopped_by, Some(SignalEvent::Interrupt));
    assert!(w.killed);
    drop(s.lost_tx);
    drop(s.safe_tx);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn one_ctrl_c_starts_no_timer() {
    let mut s = setup();
    let (child, exited) = Child::new(&[Signal::SIGTERM]);
    let seen = RefCell::new(Vec::new());
    let (tty_tx, tty_rx) = mpsc::unbounded_channel();
    let mut tty = TestSignals(tty_rx);
    tty_tx.send(Signal::SIGINT).unwrap();
    let sig_tx = s.sig_tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let _ = sig_tx.send(Signal::SIGTERM);
    });
    let w = watch_with(
        &mut s,
        &child,
        exited,
        policy(OnLost::Kill),
        &mut tty,
        &seen,
    )
    .await;
    assert_eq!(
        child.signals(),
        vec![Signal::SIGTERM],
        "no SIGKILL after one Ctrl-C"
    );
    assert!(!w.killed);
    assert_eq!(w.stopped_by, Some(SignalEvent::Interrupt));
    drop(s.lost_tx);
    drop(s.safe_tx);
    drop(tty_tx);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_loss_sends_the_stop_signal() {
    let mut s = setup();
    let (child, exited) = Child::new(&[Signal::SIGQUIT]);
    let seen = RefCell::new(Vec::new());
    s.lost_tx
        .send(Some(Loss {
            message: "broken".into(),
            expires: None,
        }))
        .unwrap();
    let p = Policy {
        stop_signal: Signal::SIGQUIT,
        ..policy(OnLost::Kill)
    };
    let w = watch_with(&mut s, &child, exited, p, &mut NoRelay, &seen).await;
    assert_eq!(child.signals(), vec![Signal::SIGQUIT]);
    assert!(w.lost.is_some());
    assert_eq!(w.stopped_by, None, "dlock's own stop is no request to stop");
    drop(s.sig_tx);
    drop(s.safe_tx);
}
