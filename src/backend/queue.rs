//! The wait of a queue backend (ZooKeeper, etcd), written once: our entry
//! is in the service's queue (registered in the backend's
//! [`kit::Queued`] before it was created, so `close` removes it if we are
//! interrupted); then, until it holds or the deadline passes, list the
//! entries, let the admission rule ([`kit::admits`], [`kit::blocker`]) say
//! whether ours holds given every entry before it, and else watch the one
//! entry ahead whose leaving may let it in (no herd). The backend says how
//! to list, read, remove, watch, tidy and give up ([`Turn`]).
//!
//! The liveness rule is here too, once for both services: an entry ahead
//! of ours (a holder, a waiter, an elect candidate) whose record says it
//! was written by a process on this machine that is gone
//! ([`Record::dead_here`]) is removed at once, by a delete that only
//! succeeds if the entry is still the one judged (ZooKeeper: its version;
//! etcd: its revisions), and the queue is looked at again. While we wait
//! on a local entry, its process is watched here as well, so that its
//! death wakes us (its session or lease would keep the entry for its TTL).
//! Entries of other machines, and foreign clients' (Curator, kazoo,
//! etcdctl), end with their session or lease as before.

use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;

use super::kit::{self, Mode, Record};
use super::{Attempt, Holder, Lease};

/// One attempt's entry in a service's queue, as its backend handles it.
#[async_trait]
pub trait Turn: Send {
    /// A queue entry as the service lists it.
    type Entry: Send + Sync;

    /// The queue's entries, in order, and the index of ours; None if ours
    /// is gone (its session or lease expired).
    async fn entries(&mut self) -> Result<(Vec<Self::Entry>, Option<usize>)>;

    /// An entry's mode for the admission rule.
    fn mode(&self, entry: &Self::Entry) -> Mode;

    /// dlock's record of an entry, as the service stores it; None for a
    /// foreign client's entry, or one gone meanwhile.
    async fn record(&mut self, entry: &Self::Entry) -> Result<Option<Record>>;

    /// Before the entries `ahead` are judged one by one: read every record
    /// not read yet at once (one round trip, not one per entry); the
    /// backend may set its watch on `ahead[blocker]` with the read. True
    /// if one is gone meanwhile: look again.
    async fn prefetch(&mut self, _ahead: &[Self::Entry], _blocker: usize) -> Result<bool> {
        Ok(false)
    }

    /// How long a waiter whose blocker's process exited still waits for
    /// the service to say the entry went (see [`wait_turn`]): ZooKeeper's
    /// word comes with the exit, and taking it spares the request that
    /// would take an unfired watch off the server. None elsewhere: the
    /// waiter looks again at once.
    fn settle(&self) -> Duration {
        Duration::ZERO
    }

    /// Whether the entry is gone from the queue now (one found dead
    /// may have released before it exited). False where the backend
    /// cannot tell cheaply: the entry is judged as listed.
    async fn gone(&mut self, _entry: &Self::Entry) -> Result<bool> {
        Ok(false)
    }

    /// Remove an entry whose process is gone, only if it is still the
    /// entry that was judged (a version- or revision-checked delete). True
    /// if the queue changed (it went, or changed meanwhile): look again.
    async fn remove_dead(&mut self, entry: &Self::Entry) -> Result<bool>;

    /// The error for our entry gone while we waited (after any clean-up).
    async fn vanished(&mut self) -> anyhow::Error;

    /// Ours holds now (`entries[ours]`): make it our lease.
    async fn admitted(&mut self, entries: &[Self::Entry], ours: usize) -> Result<Lease>;

    /// Before waiting on the entries `ahead`: tidy them (ZooKeeper deletes
    /// the ones whose TTL ran out). True if the queue changed: look again.
    async fn tidy(&mut self, _ahead: &[Self::Entry]) -> Result<bool> {
        Ok(false)
    }

    /// The deadline passed: remove our entry. `holders` are the entries
    /// that hold (by the rule), for the busy message.
    async fn give_up(&mut self, holders: &[Self::Entry]) -> Result<Vec<Holder>>;

    /// Wait until `blocker` leaves, or a periodic re-check, or `deadline`;
    /// keep our entry alive meanwhile.
    async fn wait(&mut self, blocker: &Self::Entry, deadline: Option<Instant>) -> Result<()>;
}

/// Wait for our entry's turn in `mode`, until `deadline` (None: for ever;
/// past: one look).
pub async fn wait_turn<T: Turn>(
    t: &mut T,
    mode: Mode,
    deadline: Option<Instant>,
) -> Result<Attempt> {
    loop {
        let (entries, ours) = t.entries().await?;
        let Some(ours) = ours else {
            return Err(t.vanished().await);
        };
        let modes: Vec<Mode> = entries.iter().map(|e| t.mode(e)).collect();
        let Some(blocker) = kit::blocker(mode, &modes[..ours]) else {
            return Ok(Attempt::Acquired(t.admitted(&entries, ours).await?));
        };
        if t.prefetch(&entries[..ours], blocker).await? {
            continue;
        }
        if break_dead(t, &entries[..ours]).await? {
            continue;
        }
        if t.tidy(&entries[..ours]).await? {
            continue;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let holding = kit::holding(&modes);
            return Ok(Attempt::Busy(t.give_up(&entries[..holding]).await?));
        }
        // A local process behind the blocker: its death wakes us too.
        let local = t
            .record(&entries[blocker])
            .await?
            .and_then(|r| local_process(&r));
        match local {
            Some((pid, start)) => {
                let settle = t.settle();
                let wait = t.wait(&entries[blocker], deadline);
                tokio::pin!(wait);
                tokio::select! {
                    biased;
                    r = &mut wait => r?,
                    () = until_gone(pid, start) => {
                        // A holder deletes its entry just before it exits,
                        // so the service's word of it is usually on its
                        // way: take it (a watch dropped unfired costs a
                        // request to take it off the server). A process
                        // that died holding has its entry broken after a
                        // longer grace anyway.
                        if !settle.is_zero()
                            && let Ok(r) = tokio::time::timeout(settle, &mut wait).await
                        {
                            r?;
                        }
                    }
                }
            }
            None => t.wait(&entries[blocker], deadline).await?,
        }
    }
}

/// Remove the entries `ahead` whose process, on this machine, is gone:
/// true if any went (or changed meanwhile), to look again.
async fn break_dead<T: Turn>(t: &mut T, ahead: &[T::Entry]) -> Result<bool> {
    let mut changed = false;
    let mut graced = false;
    for e in ahead {
        let Some(r) = t.record(e).await? else {
            continue;
        };
        if !r.dead_here() {
            continue;
        }
        if !graced {
            // Most often the process released, then exited, since we
            // listed: its entry is gone and there is nothing to break.
            // Look again at once rather than sleep with nobody watching
            // (the line would stand still behind us meanwhile).
            if t.gone(e).await? {
                return Ok(true);
            }
            // The dead process's guard may still be stopping its job.
            tokio::time::sleep(kit::BREAK_GRACE).await;
            graced = true;
        }
        if t.remove_dead(e).await? {
            tracing::info!(
                event = "broke_dead",
                pid = r.pid,
                host = r.host,
                "removed a queue entry whose process on this machine is gone"
            );
            changed = true;
        }
    }
    Ok(changed)
}

/// The process (pid, start time) that holds an entry while it runs, if it
/// runs on this machine.
fn local_process(r: &Record) -> Option<(u32, u64)> {
    let (host_id, start) = r.live.as_ref()?;
    (*host_id == crate::host::host_id()).then_some((r.pid?, *start))
}

/// Until the local process (`pid`, `start`) is gone: woken by the kernel
/// through a pidfd where there is one, else by a look every 250 ms.
async fn until_gone(pid: u32, start: u64) {
    #[cfg(target_os = "linux")]
    if let Some(fd) = pidfd(pid) {
        // Opened before it is judged: so the pidfd is the process judged
        // (its pid cannot be reused while the pidfd is open).
        if !crate::host::process_alive(pid, start) {
            return;
        }
        use tokio::io::{Interest, unix::AsyncFd};
        // SAFETY: `fd` is an open descriptor that the AsyncFd owns, so it
        // stays open, and is the same descriptor, until it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
        if let Ok(fd) = fd {
            // Readable once the process has exited.
            let _ = fd.readable().await;
            return;
        }
    }
    while crate::host::process_alive(pid, start) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A pidfd of process `pid` (Linux 5.3 and later), None where it cannot be
/// had.
#[cfg(target_os = "linux")]
fn pidfd(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags, and returns a new file
    // descriptor or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the call returned a new descriptor that nothing else owns.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue in memory: each entry a name and its record (None: a
    /// foreign client's), ours named "me"; a removal fails for entries in
    /// `changed` (as a checked delete of an entry changed since it was
    /// read does), once.
    struct Memory {
        q: Vec<(String, Option<Record>)>,
        changed: Vec<String>,
        removed: Vec<String>,
        waits: usize,
    }

    #[async_trait]
    impl Turn for Memory {
        type Entry = (String, Option<Record>);

        async fn entries(&mut self) -> Result<(Vec<Self::Entry>, Option<usize>)> {
            let ours = self.q.iter().position(|(n, _)| n == "me");
            Ok((self.q.clone(), ours))
        }

        fn mode(&self, _: &Self::Entry) -> Mode {
            Mode::Exclusive { limit: 1 }
        }

        async fn record(&mut self, e: &Self::Entry) -> Result<Option<Record>> {
            Ok(e.1.clone())
        }

        async fn remove_dead(&mut self, e: &Self::Entry) -> Result<bool> {
            if let Some(i) = self.changed.iter().position(|n| *n == e.0) {
                self.changed.remove(i);
                return Ok(true);
            }
            self.q.retain(|(n, _)| *n != e.0);
            self.removed.push(e.0.clone());
            Ok(true)
        }

        async fn vanished(&mut self) -> anyhow::Error {
            anyhow::anyhow!("vanished")
        }

        async fn admitted(&mut self, _: &[Self::Entry], _: usize) -> Result<Lease> {
            Ok(Lease {
                namespace: "ns".into(),
                key: "k".into(),
                token: 1,
                id: "me".into(),
                ttl: Duration::from_secs(30),
                granted_at: Instant::now(),
                shared: false,
                slot: Some(0),
            })
        }

        async fn give_up(&mut self, _: &[Self::Entry]) -> Result<Vec<Holder>> {
            Ok(vec![])
        }

        async fn wait(&mut self, _: &Self::Entry, _: Option<Instant>) -> Result<()> {
            self.waits += 1;
            Ok(())
        }
    }

    /// A record of process (`pid`, `start`) on this machine.
    fn local(pid: u32, start: u64) -> Option<Record> {
        Some(Record {
            pid: Some(pid),
            live: Some((crate::host::host_id(), start)),
            ..Record::default()
        })
    }

    #[tokio::test]
    async fn dead_local_entries_ahead_are_removed_and_no_other() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let (pid, start) = (child.id(), crate::host::proc_start(child.id()).unwrap_or(0));
        child.wait().unwrap();
        let me = std::process::id();
        let alive = local(me, crate::host::proc_start(me).unwrap());
        let elsewhere = Some(Record {
            pid: Some(pid),
            live: Some(("another-boot/pid:[1]".into(), start)),
            ..Record::default()
        });
        let entry = |n: &str, r: Option<Record>| (n.to_string(), r);
        // A dead holder, then a dead waiter (whose first removal finds it
        // changed: looked at again), then us: both go, and we hold.
        let mut m = Memory {
            q: vec![
                entry("dead-holder", local(pid, start)),
                entry("dead-waiter", local(pid, start)),
                entry("me", alive.clone()),
                entry("dead-behind", local(pid, start)),
            ],
            changed: vec!["dead-waiter".into()],
            removed: vec![],
            waits: 0,
        };
        let got = wait_turn(&mut m, Mode::Exclusive { limit: 1 }, Some(Instant::now()))
            .await
            .unwrap();
        assert!(matches!(got, Attempt::Acquired(_)));
        assert_eq!(m.removed, ["dead-holder", "dead-waiter"]);
        assert_eq!(m.waits, 0);
        // A live local holder, another machine's dead-looking one, a
        // foreign client's: none is removed (--no-wait: busy).
        for ahead in [alive.clone(), elsewhere, None] {
            let mut m = Memory {
                q: vec![entry("holder", ahead), entry("me", alive.clone())],
                changed: vec![],
                removed: vec![],
                waits: 0,
            };
            let got = wait_turn(&mut m, Mode::Exclusive { limit: 1 }, Some(Instant::now()))
                .await
                .unwrap();
            assert!(matches!(got, Attempt::Busy(_)));
            assert!(m.removed.is_empty());
        }
    }

    #[tokio::test]
    async fn a_local_process_is_watched_until_it_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = crate::host::proc_start(pid).unwrap();
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), until_gone(pid, start))
            .await
            .expect("woken when it exits");
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        // Gone (a zombie, then reaped): at once.
        let t = Instant::now();
        until_gone(pid, start).await;
        child.wait().unwrap();
        until_gone(pid, start).await;
        assert!(t.elapsed() < Duration::from_millis(100));
        // Another process with that pid (not its start time): gone too.
        until_gone(std::process::id(), start + 1).await;
    }
}
