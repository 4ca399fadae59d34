//! The wake files of SQLite's keys, and the line files of its waiters:
//! how a waiter sleeps until trying again is worthwhile, on one host, with
//! no server to tell it. A `run` holding a key of one slot holds the key's
//! wake file (exclusive; shared while it holds shared); the first in line
//! blocks on it, so a release wakes that waiter only. Every other waiter
//! blocks on the line file of the waiter just ahead of it, which that one
//! holds while it is in line: the first in line taking the key wakes the
//! next, who then blocks on the wake file in turn. A process that dies
//! lets go of its files, which wakes the one behind it. A waiter removes
//! its line file when it leaves the line; one that died in line (SIGKILL)
//! cannot, so the waiter behind it, woken by the death, removes it, and
//! whoever next lets go of the key removes any that nobody holds.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::sync::watch;

use super::{Sqlite, files, fnv64};
use crate::backend::LockSpec;

/// A thread blocked in `flock` on the wake file of a key we hold.
pub(super) struct Pending {
    /// The file, locked, once the lock was granted.
    pub(super) slot: Arc<StdMutex<Option<File>>>,
    /// Set when we let go of the key: the thread unlocks at once.
    pub(super) abandoned: Arc<AtomicBool>,
}

/// A thread blocked in `flock(LOCK_EX)` on a wake file.
pub(super) struct Waiter {
    pub(super) done: watch::Receiver<bool>,
    /// The file, exclusively locked, once the lock was granted.
    pub(super) slot: Arc<StdMutex<Option<File>>>,
    /// Set when nobody wants the grant any more: the thread unlocks at once.
    pub(super) abandoned: Arc<AtomicBool>,
}

pub(super) fn flock(f: &File, op: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(f.as_raw_fd(), op) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Sqlite {
    pub(super) fn wake_path(&self, ns: &str, key: &str) -> PathBuf {
        let mut dir = self.path.clone().into_os_string();
        dir.push(".wait");
        Path::new(&dir).join(format!("{:016x}", fnv64(&[ns, key])))
    }

    pub(super) fn open_wake(&self, ns: &str, key: &str) -> Result<File> {
        files::open_wake(&self.path, &self.wake_path(ns, key))
    }

    /// The line file of waiter `id` on the key whose wake file is `wake`.
    pub(super) fn line_path(wake: &Path, id: &str) -> PathBuf {
        let mut p = wake.as_os_str().to_owned();
        p.push(format!(".q-{id}"));
        PathBuf::from(p)
    }

    /// Whether waiting for `spec` goes by the line files: an exclusive
    /// request of one slot, whose holder holds the wake file.
    pub(super) fn chained(spec: &LockSpec) -> bool {
        spec.limit == 1 && !spec.shared
    }

    /// We left the line of the key whose wake file is `wake`: unlink our
    /// line file and let go of it, waking the waiter behind us.
    pub(super) fn leave_line(&self, wake: &Path) {
        self.before.lock().unwrap().remove(wake);
        if let Some((p, f)) = self.mine.lock().unwrap().remove(wake) {
            let _ = std::fs::remove_file(&p);
            drop(f);
        }
    }

    /// Our line file for the key whose wake file is `wake`: made and held
    /// exclusively while we are in line, so that the waiter behind us
    /// blocks on it. None if it is held (a waiter behind us has it shared
    /// for an instant: the next attempt tries again) or cannot be made.
    pub(super) fn lock_line(&self, mine: &Path) -> Option<File> {
        // Twice at most: a sweep may remove the name between our open and
        // our lock ([`files::remove_unheld`]); a file that is no longer
        // the name is nobody's line file, so open the name again.
        for _ in 0..2 {
            let f = files::open_wake(&self.path, mine).ok()?;
            flock(&f, libc::LOCK_EX | libc::LOCK_NB).ok()?;
            if files::still_named(&f, mine) {
                return Some(f);
            }
        }
        None
    }

    /// Remove the line files of this key's waiters that died in line
    /// (SIGKILL): nobody holds them, and nobody else would ever remove
    /// them. Called by whoever lets go of the key or leaves its line, once
    /// the next waiter is woken, so the hand-over does not wait for it.
    pub(super) fn sweep_line(&self, wake: &Path) {
        let (Some(dir), Some(name)) = (wake.parent(), wake.file_name()) else {
            return;
        };
        let mut prefix = name.to_owned();
        prefix.push(".q-");
        let prefix = prefix.as_encoded_bytes();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let lines: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().as_encoded_bytes().starts_with(prefix))
            .map(|e| e.path())
            .collect();
        let n = files::remove_unheld(&self.path, &lines);
        if n > 0 {
            tracing::debug!(removed = n, "removed the line files of waiters gone");
        }
    }

    /// Hold the exclusive lock on the key's wake file while we hold the key
    /// (with `--limit 1`), so the one waiter the kernel picks wakes when we
    /// let go (or die); a shared lock if we hold the key shared, so that a
    /// writer waiting wakes when the last reader lets go. If we were woken
    /// as a waiter, we hold it already (in the same mode).
    pub(super) async fn hold_wake(&self, spec: &LockSpec) {
        let path = self.wake_path(&spec.namespace, &spec.key);
        if let Some(w) = self.waits.lock().unwrap().remove(&path) {
            w.abandoned.store(true, Ordering::SeqCst);
            if let Some(f) = w.slot.lock().unwrap().take() {
                drop(f);
            }
        }
        if let Some(f) = self.granted.lock().unwrap().remove(&path) {
            self.held.lock().unwrap().insert(path, f);
            return;
        }
        let Ok(f) = self.open_wake(&spec.namespace, &spec.key) else {
            return;
        };
        let op = if spec.shared {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        if flock(&f, op | libc::LOCK_NB).is_ok() {
            self.held.lock().unwrap().insert(path, f);
            return;
        }
        // A waiter woken by the last holder has it for the instant it
        // tries the key and fails. The child need not wait for that: a
        // thread blocks until the lock is ours, and keeps it for as long
        // as we hold the key ([`Dialect::freed`] lets it go).
        let slot = Arc::new(StdMutex::new(None));
        let abandoned = Arc::new(AtomicBool::new(false));
        let (s2, a2) = (slot.clone(), abandoned.clone());
        let started = std::thread::Builder::new()
            .name("dlock-wake".into())
            .spawn(move || {
                if flock(&f, op).is_ok() {
                    let mut slot = s2.lock().unwrap();
                    if !a2.load(Ordering::SeqCst) {
                        *slot = Some(f);
                    }
                }
            });
        match started {
            Ok(_) => {
                let pending = Pending { slot, abandoned };
                self.pending.lock().unwrap().insert(path, pending);
            }
            Err(e) => tracing::debug!(key = spec.key, "{e}; waiters will poll"),
        }
    }

    /// Sleep for the fallback poll's next pause, or until `until`.
    pub(super) async fn poll(&self, until: Instant) {
        let p = self.poll.next();
        tokio::time::sleep_until(until.min(Instant::now() + p).into()).await;
    }

    /// Block on the key's wake file until `until`: granted when its holder
    /// lets go or dies.
    pub(super) async fn wait_wake(&self, spec: &LockSpec, until: Instant) -> Result<()> {
        let path = self.wake_path(&spec.namespace, &spec.key);
        // A reader waits for a writer only: every reader waiting is let in
        // together.
        let op = if spec.shared {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        self.wait_file(path, op, until, true).await
    }

    /// Block on `path`'s lock in mode `op` until it is granted or `until`:
    /// a wake file (kept, with `keep`, for the attempt that follows: one
    /// release wakes one waiter) or the line file of the waiter ahead.
    pub(super) async fn wait_file(
        &self,
        path: PathBuf,
        op: i32,
        until: Instant,
        keep: bool,
    ) -> Result<()> {
        let waiting = {
            let mut waits = self.waits.lock().unwrap();
            match waits.get(&path) {
                Some(w) if !*w.done.borrow() => Some((w.done.clone(), w.slot.clone())),
                _ => {
                    // The line file of the waiter ahead is never created
                    // here: gone, that waiter has left the line.
                    let f = if keep {
                        Some(files::open_wake(&self.path, &path)?)
                    } else {
                        files::open_line(&self.path, &path)?
                    };
                    match f {
                        None => None,
                        Some(f) if flock(&f, op | libc::LOCK_NB).is_ok() => {
                            // Nobody holds the wake file: the holder is not a
                            // live `run` (a handle, a semaphore), or is just
                            // taking it. Poll, backing off to 100 ms, without
                            // keeping the file from that holder meanwhile. (Told
                            // by trying, not by how soon a blocking lock came: a
                            // `run` that holds for a millisecond lets go that
                            // soon, and its next in line must try at once, not
                            // poll: with fair queues nobody else may go.)
                            None
                        }
                        Some(f) => {
                            let (tx, done) = watch::channel(false);
                            let slot = Arc::new(StdMutex::new(None));
                            let abandoned = Arc::new(AtomicBool::new(false));
                            let (s2, a2) = (slot.clone(), abandoned.clone());
                            std::thread::Builder::new()
                                .name("dlock-wake".into())
                                .spawn(move || {
                                    // Granted when the holder lets go or dies; one
                                    // writer at a time holds it.
                                    let _ = flock(&f, op);
                                    let mut slot = s2.lock().unwrap();
                                    if !a2.load(Ordering::SeqCst) {
                                        *slot = Some(f);
                                    }
                                    drop(slot);
                                    let _ = tx.send(true);
                                })
                                .context("cannot start a waiting thread")?;
                            waits.insert(
                                path.clone(),
                                Waiter {
                                    done: done.clone(),
                                    slot: slot.clone(),
                                    abandoned,
                                },
                            );
                            Some((done, slot))
                        }
                    }
                }
            }
        };
        let Some((mut done, slot)) = waiting else {
            self.poll(until).await;
            return Ok(());
        };
        let woke = tokio::time::timeout_at(until.into(), done.wait_for(|d| *d))
            .await
            .is_ok();
        if woke {
            self.waits.lock().unwrap().remove(&path);
            if let Some(f) = slot.lock().unwrap().take().filter(|_| keep) {
                self.granted.lock().unwrap().insert(path.clone(), f);
            }
            // Woken on the line file of the waiter ahead: it left the line
            // (and removed its file first) or died in it, leaving the file.
            if !keep {
                files::remove_unheld(&self.path, std::slice::from_ref(&path));
            }
            self.poll.reset();
        }
        Ok(())
    }
}
