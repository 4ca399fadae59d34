//! The engine's rules ([`kit::poll`] through `Backend::acquire`'s default)
//! against the in-memory server, under paused time: each test runs in
//! milliseconds of wall time, and the instants it asserts are exact.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::*;

const NS: &str = "ns";

fn spec(key: &str, limit: u32, shared: bool) -> LockSpec {
    LockSpec {
        namespace: NS.into(),
        key: key.into(),
        ttl: Duration::from_secs(60),
        limit,
        shared,
    }
}

fn owner(id: &str) -> Owner {
    Owner {
        id: id.into(),
        user: id.into(),
        host: "here".into(),
        pid: 1,
        host_id: "this-boot".into(),
        proc_start: 1,
        kind: LeaseKind::Run,
        value: None,
    }
}

/// A `--no-wait` deadline: now, on both std's clock (the engine's today)
/// and tokio's (a paused clock starts a little behind std's, then goes
/// ahead as it skips sleeps).
fn no_wait() -> Option<std::time::Instant> {
    Some(std::time::Instant::now().min(Instant::now().into_std()))
}

async fn take(b: &MemoryBackend, s: &LockSpec, id: &str) -> Lease {
    match b.acquire(s, &owner(id), None).await.unwrap() {
        Attempt::Acquired(l) => l,
        Attempt::Busy(h) => panic!("{id}: busy with {h:?}"),
    }
}

async fn status(b: &MemoryBackend, key: &str) -> KeyStatus {
    b.status(NS, &[key.to_string()]).await.unwrap().remove(0)
}

fn names(hs: &[Holder]) -> Vec<String> {
    hs.iter()
        .map(|h| h.owner.clone().unwrap_or_default())
        .collect()
}

/// What each contender did: (who, acquired at, released at).
type Log = Arc<Mutex<Vec<(String, Instant)>>>;

/// A contender in a task of its own (one process): it waits for `s`,
/// notes the instant it got in, holds for `hold`, and releases.
fn contender(
    mem: &Memory,
    s: LockSpec,
    id: &str,
    hold: Duration,
    log: &Log,
) -> tokio::task::JoinHandle<Option<u32>> {
    let (b, id, log) = (mem.client(), id.to_string(), log.clone());
    tokio::spawn(async move {
        let l = take(&b, &s, &id).await;
        log.lock().unwrap().push((id, Instant::now()));
        sleep(hold).await;
        assert!(b.release(&l).await.unwrap(), "the lease was still ours");
        l.slot
    })
}

/// Let every task run its first attempt (the paused clock moves 1 ms).
async fn settle() {
    sleep(Duration::from_millis(1)).await;
}

/// (1) Five waiters that arrive in turn are served in arrival order, each
/// the instant the one before releases; `status` lists the line in order.
#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order() {
    let mem = Memory::new();
    let s = spec("k", 1, false);
    let a = mem.client();
    let la = take(&a, &s, "a").await;
    let log = Log::default();
    let hold = Duration::from_millis(10);
    let mut tasks = Vec::new();
    for i in 0..5 {
        tasks.push(contender(&mem, s.clone(), &format!("w{i}"), hold, &log));
        settle().await;
    }
    let st = status(&a, "k").await;
    assert_eq!(names(&st.holders), ["a"]);
    assert_eq!(names(&st.queue), ["w0", "w1", "w2", "w3", "w4"]);
    assert_eq!(st.waiters, Some(5));
    assert!(st.queue.iter().all(|h| h.waiting && !h.shared && !h.dead));
    let t0 = Instant::now();
    assert!(a.release(&la).await.unwrap());
    // A newcomer that tries at the instant of the release, before any
    // woken waiter has run, finds the line ahead of it and joins its end.
    let late = mem.client().try_acquire(&s, &owner("late"), true).await;
    assert!(matches!(late.unwrap(), Attempt::Busy(h) if h.is_empty()));
    tasks.push(contender(&mem, s.clone(), "late", hold, &log));
    for t in tasks {
        t.await.unwrap();
    }
    assert!(status(&a, "k").await.queue.is_empty());
    let log = log.lock().unwrap();
    let who: Vec<&str> = log.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(who, ["w0", "w1", "w2", "w3", "w4", "late"]);
    for (i, (w, at)) in log.iter().enumerate() {
        assert_eq!(*at - t0, hold * i as u32, "{w} went in late");
    }
}

/// (1) A shared request behind a waiting exclusive one waits (writers are
/// not starved), even though only readers hold.
#[tokio::test(start_paused = true)]
async fn a_reader_waits_behind_a_waiting_writer() {
    let mem = Memory::new();
    let (r, w) = (spec("k", 1, true), spec("k", 1, false));
    let a = mem.client();
    let la = take(&a, &r, "r1").await;
    let log = Log::default();
    let hold = Duration::from_millis(10);
    let tw = contender(&mem, w, "w", hold, &log);
    settle().await;
    // Another reader may not pass the writer, even for a look...
    let got = mem.client().acquire(&r, &owner("peek"), no_wait()).await;
    assert!(matches!(got.unwrap(), Attempt::Busy(h) if names(&h) == ["r1"]));
    // ...nor by waiting.
    let tr = contender(&mem, r.clone(), "r2", hold, &log);
    settle().await;
    let st = status(&a, "k").await;
    assert_eq!(names(&st.holders), ["r1"]);
    assert_eq!(names(&st.queue), ["w", "r2"]);
    assert_eq!(
        st.queue.iter().map(|h| h.shared).collect::<Vec<_>>(),
        [false, true]
    );
    let t0 = Instant::now();
    a.release(&la).await.unwrap();
    tw.await.unwrap();
    tr.await.unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log[0], ("w".into(), t0));
    assert_eq!(log[1], ("r2".into(), t0 + hold));
}

/// (1) Readers with no writer between them go in together, the instant
/// the writer ahead leaves; a writer after them waits for all of them.
#[tokio::test(start_paused = true)]
async fn readers_in_a_row_go_in_together() {
    let mem = Memory::new();
    let (r, w) = (spec("k", 1, true), spec("k", 1, false));
    let a = mem.client();
    let la = take(&a, &w, "w1").await;
    let log = Log::default();
    let mut tasks = Vec::new();
    for (i, hold) in [10, 30, 20].into_iter().enumerate() {
        let hold = Duration::from_millis(hold);
        tasks.push(contender(&mem, r.clone(), &format!("r{i}"), hold, &log));
        settle().await;
    }
    tasks.push(contender(&mem, w, "w2", Duration::ZERO, &log));
    settle().await;
    let t0 = Instant::now();
    a.release(&la).await.unwrap();
    sleep(Duration::from_millis(5)).await;
    let st = status(&a, "k").await;
    assert_eq!(names(&st.holders), ["r0", "r1", "r2"]);
    assert!(st.holders.iter().all(|h| h.shared && h.slot.is_none()));
    assert_eq!(names(&st.queue), ["w2"]);
    for t in tasks {
        t.await.unwrap();
    }
    let log = log.lock().unwrap();
    for (who, at) in &log[..3] {
        assert_eq!(*at, t0, "{who} did not go in with the others");
    }
    // The longest reader held 30 ms.
    assert_eq!(log[3], ("w2".into(), t0 + Duration::from_millis(30)));
}

/// (2) `--no-wait` is one look that leaves no trace, and does not pass a
/// waiter even at the instant the key is released to it.
#[tokio::test(start_paused = true)]
async fn no_wait_leaves_no_entry_in_the_line() {
    let mem = Memory::new();
    let s = spec("k", 1, false);
    let a = mem.client();
    // A free key: taken.
    let got = mem.client().acquire(&s, &owner("x"), no_wait()).await;
    let lx = match got.unwrap() {
        Attempt::Acquired(l) => l,
        b => panic!("{b:?}"),
    };
    let b = mem.client();
    let got = b.acquire(&s, &owner("b"), no_wait()).await.unwrap();
    assert!(matches!(got, Attempt::Busy(h) if names(&h) == ["x"]));
    let st = status(&a, "k").await;
    assert!(st.queue.is_empty(), "{:?}", st.queue);
    assert_eq!(st.waiters, Some(0));
    // With a waiter in line, a look at the instant of the release finds
    // the waiter ahead of it.
    let log = Log::default();
    let tw = contender(&mem, s.clone(), "w", Duration::from_millis(10), &log);
    settle().await;
    mem.client().release(&lx).await.unwrap();
    let got = b.acquire(&s, &owner("b"), no_wait()).await.unwrap();
    assert!(matches!(got, Attempt::Busy(h) if h.is_empty()));
    assert_eq!(names(&status(&a, "k").await.queue), ["w"]);
    tw.await.unwrap();
    assert_eq!(log.lock().unwrap().len(), 1);
}

/// (3) A dead holder is removed after the grace and the key taken at
/// once, `--no-wait` included.
#[tokio::test(start_paused = true)]
async fn a_dead_holder_goes_after_the_grace() {
    let mem = Memory::new();
    let s = spec("k", 1, false);
    let a = mem.client();
    take(&a, &s, "a").await;
    mem.kill("a");
    let t0 = Instant::now();
    let b = mem.client();
    take(&b, &s, "b").await;
    assert_eq!(Instant::now() - t0, kit::BREAK_GRACE);
    assert_eq!(names(&status(&a, "k").await.holders), ["b"]);
    mem.kill("b");
    let t1 = Instant::now();
    let got = mem.client().acquire(&s, &owner("c"), no_wait()).await;
    assert!(matches!(got.unwrap(), Attempt::Acquired(_)));
    assert_eq!(Instant::now() - t1, kit::BREAK_GRACE);
    assert_eq!(names(&status(&a, "k").await.holders), ["c"]);
}

/// (3) A dead waiter ahead is removed at once (no grace), and the one
/// behind it goes in the instant the holder releases.
#[tokio::test(start_paused = true)]
async fn a_dead_waiter_ahead_goes_at_once() {
    let mem = Memory::new();
    let s = spec("k", 1, false);
    let a = mem.client();
    let la = take(&a, &s, "a").await;
    let w = mem.client();
    let got = w.try_acquire(&s, &owner("w"), true).await.unwrap();
    assert!(matches!(got, Attempt::Busy(_)));
    mem.kill("w");
    // Dead, it is reported in the line as it is.
    let st = status(&a, "k").await;
    assert!(st.queue[0].dead && st.queue[0].waiting);
    let t0 = Instant::now();
    let log = Log::default();
    let tb = contender(&mem, s, "b", Duration::ZERO, &log);
    // No sleep of the paused clock: b's first attempts remove w.
    tokio::task::yield_now().await;
    assert_eq!(Instant::now(), t0);
    assert_eq!(names(&status(&a, "k").await.queue), ["b"]);
    sleep(Duration::from_millis(50)).await;
    a.release(&la).await.unwrap();
    tb.await.unwrap();
    assert_eq!(log.lock().unwrap()[0].1, t0 + Duration::from_millis(50));
}

/// (3) A live holder is never removed, beside a dead one or alone, and a
/// handle's lease (no running process) is never dead.
#[tokio::test(start_paused = true)]
async fn a_live_holder_is_never_removed() {
    let mem = Memory::new();
    let r = spec("k", 1, true);
    let a = mem.client();
    take(&a, &r, "dead").await;
    take(&a, &r, "live").await;
    let mut handle = owner("handle");
    handle.kind = LeaseKind::Handle;
    let Attempt::Acquired(_) = a.acquire(&r, &handle, None).await.unwrap() else {
        panic!("busy");
    };
    mem.kill("dead");
    mem.kill("handle");
    let w = mem.client();
    let waited = tokio::time::timeout(
        Duration::from_secs(30),
        w.acquire(&spec("k", 1, false), &owner("w"), None),
    )
    .await;
    assert!(waited.is_err(), "the writer got in beside live holders");
    let st = status(&a, "k").await;
    assert_eq!(names(&st.holders), ["live", "handle"]);
    assert!(st.holders.iter().all(|h| !h.dead));
}

/// (4) Semaphore slots are 0..N-1, distinct, and reused lowest first;
/// `status` gives the --limit.
#[tokio::test(start_paused = true)]
async fn slots_are_distinct_and_reused_lowest_first() {
    let mem = Memory::new();
    let s = spec("sem", 3, false);
    let a = mem.client();
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(take(&a, &s, &format!("c{i}")).await);
    }
    assert_eq!(
        held.iter().map(|l| l.slot).collect::<Vec<_>>(),
        [Some(0), Some(1), Some(2)]
    );
    let st = status(&a, "sem").await;
    assert_eq!(st.limit, 3);
    assert_eq!(
        st.holders.iter().map(|h| h.slot).collect::<Vec<_>>(),
        [Some(0), Some(1), Some(2)]
    );
    a.release(&held[1]).await.unwrap();
    assert_eq!(take(&a, &s, "c3").await.slot, Some(1));
    a.release(&held[2]).await.unwrap();
    a.release(&held[0]).await.unwrap();
    assert_eq!(take(&a, &s, "c4").await.slot, Some(0));
    assert_eq!(take(&a, &s, "c5").await.slot, Some(2));
    // A mutex is slot 0; a shared lease has none.
    assert_eq!(take(&a, &spec("m", 1, false), "m").await.slot, Some(0));
    assert_eq!(take(&a, &spec("r", 1, true), "r").await.slot, None);
}

/// (4) Under contention, the holders' slots are never shared and always
/// below the limit, and every contender gets in.
#[tokio::test(start_paused = true)]
async fn contended_slots_stay_distinct() {
    let mem = Memory::new();
    let s = spec("sem", 3, false);
    let inside: Arc<Mutex<Vec<u32>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (b, s, inside) = (mem.client(), s.clone(), inside.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..3 {
                let l = take(&b, &s, &format!("c{i}.{round}")).await;
                let slot = l.slot.unwrap();
                {
                    let mut held = inside.lock().unwrap();
                    assert!(slot < 3 && !held.contains(&slot), "{slot} in {held:?}");
                    held.push(slot);
                }
                sleep(Duration::from_millis(7 + i)).await;
                inside.lock().unwrap().retain(|x| *x != slot);
                b.release(&l).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// (5) A lease that is not renewed frees the key for the next in line at
/// its expiry, not before; a renewal moves the expiry.
#[tokio::test(start_paused = true)]
async fn an_expired_lease_frees_the_key_at_its_expiry() {
    let mem = Memory::new();
    let mut s = spec("k", 1, false);
    s.ttl = Duration::from_secs(1);
    let a = mem.client();
    let t0 = Instant::now();
    let la = take(&a, &s, "a").await;
    let log = Log::default();
    let tb = contender(&mem, s.clone(), "b", Duration::ZERO, &log);
    sleep(Duration::from_millis(999)).await;
    assert_eq!(names(&status(&a, "k").await.holders), ["a"]);
    tb.await.unwrap();
    assert_eq!(log.lock().unwrap()[0], ("b".into(), t0 + s.ttl));
    assert_eq!(a.renew(&la, s.ttl).await.unwrap(), Renewal::Lost);
    assert!(!a.release(&la).await.unwrap());

    // Renewed at 500 ms for 1 s: the next one goes in at 1.5 s.
    let t1 = Instant::now();
    let lc = take(&a, &s, "c").await;
    let td = contender(&mem, s.clone(), "d", Duration::ZERO, &log);
    sleep(Duration::from_millis(500)).await;
    assert_eq!(a.renew(&lc, s.ttl).await.unwrap(), Renewal::Renewed);
    td.await.unwrap();
    assert_eq!(
        log.lock().unwrap()[1],
        ("d".into(), t1 + Duration::from_millis(1500))
    );
}

/// A [`Poll`] that counts attempts, to see what a wait cost.
struct Counted(MemoryBackend, AtomicUsize);

#[async_trait]
impl Poll for Counted {
    async fn try_acquire(&self, spec: &LockSpec, me: &Owner, join: bool) -> Result<Attempt> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.try_acquire(spec, me, join).await
    }
    async fn wait_change(&self, spec: &LockSpec, until: Option<std::time::Instant>) -> Result<()> {
        self.0.wait_change(spec, until).await
    }
    async fn break_dead(&self, spec: &LockSpec, dead: &[Holder]) -> Result<bool> {
        self.0.break_dead(spec, dead).await
    }
}

/// (6) A waiter wakes on the release itself: it goes in at the instant of
/// the release, after one attempt that found the key busy, not at its
/// next poll.
#[tokio::test(start_paused = true)]
async fn a_waiter_wakes_on_release_at_once() {
    let mem = Memory::new();
    let s = spec("k", 1, false);
    let a = mem.client();
    for wait_ms in [10, 1234] {
        let la = take(&a, &s, "a").await;
        let b = Arc::new(Counted(mem.client(), AtomicUsize::new(0)));
        let (b2, s2) = (b.clone(), s.clone());
        let tb = tokio::spawn(async move {
            match kit::poll(&*b2, &s2, &owner("b"), None).await.unwrap() {
                Attempt::Acquired(l) => (Instant::now(), l),
                busy => panic!("{busy:?}"),
            }
        });
        let t0 = Instant::now();
        sleep(Duration::from_millis(wait_ms)).await;
        a.release(&la).await.unwrap();
        let (at, lb) = tb.await.unwrap();
        assert_eq!(at, t0 + Duration::from_millis(wait_ms));
        // One attempt before, one after; a long wait adds one per renewal
        // of the place in line (every WAITER_LAPSE / 3).
        let renewals =
            (Duration::from_millis(wait_ms).as_nanos() / (WAITER_LAPSE / 3).as_nanos()) as usize;
        assert_eq!(
            b.1.load(Ordering::SeqCst),
            2 + renewals,
            "after {wait_ms} ms"
        );
        assert!(a.release(&lb).await.unwrap());
    }
}

/// A contender whose deadline passes while it waits gives up at its
/// deadline, and its place in line goes on `close`.
#[tokio::test(start_paused = true)]
async fn a_deadline_ends_the_wait() {
    let mem = Memory::new();
    let s = spec("k", 1, false);
    let a = mem.client();
    take(&a, &s, "a").await;
    let b = mem.client();
    let t0 = Instant::now();
    // Short: the engine reads std's clock for the deadline (see below).
    let deadline = (t0 + Duration::from_millis(20)).into_std();
    let got = b.acquire(&s, &owner("b"), Some(deadline)).await.unwrap();
    assert!(matches!(got, Attempt::Busy(h) if names(&h) == ["a"]));
    assert!(Instant::now() - t0 >= Duration::from_millis(20));
    assert_eq!(names(&status(&a, "k").await.queue), ["b"]);
    b.close().await;
    assert!(status(&a, "k").await.queue.is_empty());
}

/// A deadline should pass on tokio's clock, as every other wait does: the
/// engine ([`kit::poll`]) compared it with `std::time::Instant::now()`,
/// which a paused clock does not move, while `wait_change` sleeps on
/// tokio's, which has passed it; so until the real time reached the
/// deadline the engine spun (about 46,000 attempts for 300 ms). Harmless
/// in production, where the two clocks are one; `kit::poll` now reads
/// tokio's clock.
#[tokio::test(start_paused = true)]
async fn a_deadline_passes_on_tokios_clock() {
    let mem = Memory::new();
    let s = spec("k", 1, false);
    let a = mem.client();
    take(&a, &s, "a").await;
    let b = Counted(mem.client(), AtomicUsize::new(0));
    let wall = std::time::Instant::now();
    let deadline = (Instant::now() + Duration::from_millis(300)).into_std();
    let got = kit::poll(&b, &s, &owner("b"), Some(deadline))
        .await
        .unwrap();
    assert!(matches!(got, Attempt::Busy(_)));
    let tries = b.1.load(Ordering::SeqCst);
    assert!(tries <= 3, "{tries} attempts in {:?}", wall.elapsed());
}

/// `force_release` evicts every holder, counts them, and the first in line
/// goes in at that instant; the evicted leases are lost to their owners.
#[tokio::test(start_paused = true)]
async fn force_release_evicts_every_holder_and_wakes_the_line() {
    let mem = Memory::new();
    let s = spec("sem", 2, false);
    let a = mem.client();
    let l0 = take(&a, &s, "a0").await;
    take(&a, &s, "a1").await;
    let log = Log::default();
    let tw = contender(&mem, s.clone(), "w", Duration::ZERO, &log);
    sleep(Duration::from_millis(7)).await;
    let t0 = Instant::now();
    assert_eq!(a.force_release(NS, "sem").await.unwrap(), 2);
    assert_eq!(tw.await.unwrap(), Some(0));
    assert_eq!(log.lock().unwrap()[0], ("w".into(), t0));
    assert_eq!(a.renew(&l0, s.ttl).await.unwrap(), Renewal::Lost);
    assert!(!a.release(&l0).await.unwrap());
    assert!(
        a.status(NS, &[]).await.unwrap().is_empty(),
        "nothing is held"
    );
}
