//! The keeper against an in-memory backend whose renewals can be made
//! to succeed, say the lease is gone, hang, or succeed late; on tokio's
//! paused clock,
//! which jumps to the next timer whenever every task waits, so a
//! second of lease time takes no time and every figure is exact.
use super::*;
use crate::backend::{KeyStatus, PingInfo};
use async_trait::async_trait;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

const OK: u8 = 0;
const GONE: u8 = 1;
const HANG: u8 = 2;
/// Renewed, after `slow_ms`.
const SLOW: u8 = 3;

#[derive(Default)]
struct Fake {
    renew: AtomicU8,
    slow_ms: AtomicU64,
    renewals: AtomicUsize,
    releases: AtomicUsize,
}

#[async_trait]
impl Backend for Fake {
    fn describe(&self) -> String {
        "fake".into()
    }
    async fn acquire(&self, _: &LockSpec, _: &Owner, _: Option<Instant>) -> Result<Attempt> {
        anyhow::bail!("not used")
    }
    async fn renew(&self, _: &Lease, _: Duration) -> Result<Renewal> {
        self.renewals.fetch_add(1, Ordering::SeqCst);
        match self.renew.load(Ordering::SeqCst) {
            OK => Ok(Renewal::Renewed),
            GONE => Ok(Renewal::Lost),
            SLOW => {
                let ms = self.slow_ms.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Renewal::Renewed)
            }
            _ => std::future::pending().await,
        }
    }
    async fn release(&self, _: &Lease) -> Result<bool> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }
    async fn force_release(&self, _: &str, _: &str) -> Result<u64> {
        Ok(0)
    }
    async fn status(&self, _: &str, _: &[String]) -> Result<Vec<KeyStatus>> {
        Ok(vec![])
    }
    async fn ping(&self) -> Result<PingInfo> {
        anyhow::bail!("not used")
    }
}

fn lease(ttl: Duration) -> Lease {
    Lease {
        namespace: "ns".into(),
        key: "k".into(),
        token: 1,
        id: "me".into(),
        ttl,
        granted_at: now(),
        shared: false,
        slot: Some(0),
    }
}

const TTL: Duration = Duration::from_millis(600);

/// Now on tokio's clock, paused in these tests, as the keeper's API
/// gives instants.
fn now() -> Instant {
    TokioInstant::now().into_std()
}

fn start(fake: &Arc<Fake>, grace: Duration) -> Keeper {
    let k = Keeper::start(fake.clone(), TTL, Duration::from_millis(100), grace);
    k.add(lease(TTL));
    k
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn renews_every_third_of_the_ttl_and_moves_the_deadline() {
    let fake = Arc::new(Fake::default());
    let k = start(&fake, Duration::from_millis(50));
    let first = k.safe_until().unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Due at 200, 400, 600 and 800 ms (the one due at 1000 ms may
    // or may not run before this task wakes at the same instant).
    let n = fake.renewals.load(Ordering::SeqCst);
    assert!((4..=5).contains(&n), "{n} renewals in 1 s with a 600ms TTL");
    assert!(k.safe_until().unwrap() > first + Duration::from_millis(600));
    assert!(k.lost().borrow().is_none());
    k.hand_over();
}

/// The phase that stopped healthy etcd holders: a lease kept alive
/// while its owner waited in line reaches the keeper already aged. It
/// must be renewed at once, never reported lost.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_lease_that_aged_while_waiting_is_renewed_at_once() {
    let fake = Arc::new(Fake::default());
    let grace = Duration::from_millis(150);
    let k = Keeper::start(fake.clone(), TTL, Duration::from_millis(100), grace);
    // Granted (last extended by the server) 300 ms ago: half its TTL.
    let mut aged = lease(TTL);
    aged.granted_at = now() - Duration::from_millis(300);
    let before = now();
    k.add(aged);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(
        fake.renewals.load(Ordering::SeqCst) >= 1,
        "an aged lease was not renewed at once"
    );
    assert!(k.safe_until().unwrap() >= before + TTL - margin(TTL));
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        k.lost().borrow().is_none(),
        "a healthy lease was reported lost"
    );
    k.hand_over();
}

/// Renewals follow the lease clock, not the moment the keeper started:
/// a lease added later is renewed a third of its TTL after its grant.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn renewals_follow_the_lease_clock_of_each_added_lease() {
    let fake = Arc::new(Fake::default());
    let k = Keeper::start(
        fake.clone(),
        TTL,
        Duration::from_millis(100),
        Duration::ZERO,
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(fake.renewals.load(Ordering::SeqCst), 0, "nothing to renew");
    k.add(lease(TTL));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(fake.renewals.load(Ordering::SeqCst), 0, "renewed early");
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        fake.renewals.load(Ordering::SeqCst),
        1,
        "not renewed at TTL/3"
    );
    k.hand_over();
}

/// Every path lets go: a keeper dropped while holding (an error cut the
/// command short) renews no more, and its lease is released by
/// `release_dropped`; one released or handed over leaves nothing.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_dropped_keeper_stops_renewing_and_its_leases_are_released_later() {
    let fake = Arc::new(Fake::default());
    drop(start(&fake, Duration::ZERO));
    tokio::time::sleep(TTL).await;
    assert_eq!(
        fake.renewals.load(Ordering::SeqCst),
        0,
        "renewed after drop"
    );
    assert_eq!(fake.releases.load(Ordering::SeqCst), 0);
    release_dropped().await;
    assert_eq!(fake.releases.load(Ordering::SeqCst), 1);

    let gone = start(&fake, Duration::ZERO).release().await;
    assert!(gone.is_empty());
    assert_eq!(fake.releases.load(Ordering::SeqCst), 2);
    assert_eq!(start(&fake, Duration::ZERO).hand_over().len(), 1);
    release_dropped().await;
    assert_eq!(fake.releases.load(Ordering::SeqCst), 2, "let go twice");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_lease_the_backend_says_is_gone_is_lost_at_once() {
    let fake = Arc::new(Fake::default());
    fake.renew.store(GONE, Ordering::SeqCst);
    let k = start(&fake, Duration::from_millis(50));
    let mut lost = k.lost();
    let t = now();
    tokio::time::timeout(Duration::from_secs(2), lost.changed())
        .await
        .unwrap()
        .unwrap();
    let loss = lost.borrow().clone().unwrap();
    assert!(loss.expires.is_none(), "gone, not expiring");
    assert!(t.elapsed() < TTL / 3 + Duration::from_millis(100));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn renewals_that_hang_are_a_loss_reported_grace_before_the_deadline() {
    let fake = Arc::new(Fake::default());
    fake.renew.store(HANG, Ordering::SeqCst);
    let grace = Duration::from_millis(200);
    let k = start(&fake, grace);
    let deadline = k.safe_until().unwrap();
    let mut lost = k.lost();
    tokio::time::timeout(Duration::from_secs(2), lost.changed())
        .await
        .unwrap()
        .unwrap();
    let at = now();
    let loss = lost.borrow().clone().unwrap();
    assert_eq!(loss.expires, Some(deadline));
    // Exactly then, though a renewal was in flight (due at 360 ms, bound
    // to 100 ms): the report does not wait for it to time out (at 460 ms).
    assert_eq!(at, deadline - grace, "reported at the wrong time");
    // It keeps trying: a renewal that lands afterwards keeps the lease.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(fake.renewals.load(Ordering::SeqCst) >= 3);
}

/// With the defaults (TTL 30 s, --connect-timeout 5 s bounding each
/// renewal, --kill-after 10 s), a frozen server: the loss was reported
/// when the renewal in flight at `deadline - grace` timed out, with 8.39 s
/// of the 10 s grace left. It must be reported with all of it left.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_hung_renewal_does_not_delay_the_report_with_the_defaults() {
    let fake = Arc::new(Fake::default());
    fake.renew.store(HANG, Ordering::SeqCst);
    let ttl = Duration::from_secs(30);
    let grace = crate::supervise::grace(Duration::from_secs(10), ttl);
    assert_eq!(grace, Duration::from_secs(10));
    let k = Keeper::start(fake.clone(), ttl, Duration::from_secs(5), grace);
    k.add(lease(ttl));
    let deadline = k.safe_until().unwrap();
    let mut lost = k.lost();
    tokio::time::timeout(ttl, lost.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now(), deadline - grace, "the grace was cut short");
    let loss = lost.borrow().clone().unwrap();
    assert_eq!(loss.expires, Some(deadline));
    assert!(
        loss.message.ends_with("it may expire in 10s"),
        "{}",
        loss.message
    );
    // Renewals due at 10 s (timed out at 15 s) and 16 s (in flight).
    assert_eq!(fake.renewals.load(Ordering::SeqCst), 2);
    k.hand_over();
}

/// A renewal in flight at `deadline - grace` that lands a moment later:
/// the loss was reported on time and stays reported (the child is being
/// stopped; the contract lets a lost lock go, never come back), while the
/// renewal still moves the deadline, so the lock stays ours while the
/// child is stopped.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_renewal_that_lands_after_the_report_does_not_take_the_loss_back() {
    let fake = Arc::new(Fake::default());
    fake.renew.store(SLOW, Ordering::SeqCst);
    // Due at 200 ms, it lands at 390 ms; the loss is due at 378 ms.
    fake.slow_ms.store(190, Ordering::SeqCst);
    let grace = Duration::from_millis(200);
    let k = Keeper::start(fake.clone(), TTL, Duration::from_secs(1), grace);
    k.add(lease(TTL));
    let deadline = k.safe_until().unwrap();
    let mut lost = k.lost();
    let mut safe = k.safe_until_updates();
    tokio::time::timeout(TTL, lost.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now(), deadline - grace);
    assert_eq!(fake.renewals.load(Ordering::SeqCst), 1, "not in flight");
    assert_eq!(k.safe_until(), Some(deadline), "renewed before the report");
    lost.borrow_and_update();
    safe.changed().await.unwrap();
    let renewed = (*safe.borrow()).unwrap();
    assert_eq!(renewed, deadline + Duration::from_millis(200));
    assert_eq!(k.safe_until(), Some(renewed));
    // Later renewals land too; the loss is neither withdrawn nor repeated.
    tokio::time::sleep(TTL).await;
    assert!(fake.renewals.load(Ordering::SeqCst) >= 3);
    assert!(!lost.has_changed().unwrap(), "the loss changed");
    assert!(lost.borrow().is_some(), "the loss was taken back");
    k.hand_over();
}

/// A lease added while a renewal of the others is in flight was not
/// renewed by it: it keeps its own deadline (its grant), which the
/// renewal's success must not overwrite with a later one, or it would be
/// renewed late and its loss foreseen late (`acquire_all` adds each key
/// while the keeper renews those taken before).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_lease_added_during_a_renewal_keeps_its_own_deadline() {
    let fake = Arc::new(Fake::default());
    fake.renew.store(SLOW, Ordering::SeqCst);
    fake.slow_ms.store(100, Ordering::SeqCst);
    let t0 = now();
    let k = start(&fake, Duration::from_millis(50));
    // The renewal due at 200 ms lands at 300 ms; a lease whose request was
    // sent at 150 ms is added at 250 ms.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(fake.renewals.load(Ordering::SeqCst), 1);
    let mut second = lease(TTL);
    second.granted_at = t0 + Duration::from_millis(150);
    let second_until = second.granted_at + TTL - margin(TTL);
    k.add(second);
    tokio::time::sleep(Duration::from_millis(51)).await;
    assert!(
        k.safe_until().unwrap() <= second_until,
        "the second lease is counted safe {:?} past its deadline",
        k.safe_until().unwrap() - second_until
    );
    k.hand_over();
}
