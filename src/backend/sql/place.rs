//! A waiter's place in a key's line and its waiter row: kept up while it
//! waits (renewed before they lapse), tidied after dead waiters, and
//! deleted when it stops waiting. Outside the key's lock: none of it
//! changes who may take the key.

use super::link::Tx;
use super::{Args, Link, SqlBackend};
use crate::backend::LockSpec;

impl<P: Link> SqlBackend<P> {
    /// Whether this process deletes the rows that waiters who died left
    /// behind (places in line that lapsed, waiter rows a minute stale):
    /// one waiting process in four, by its id. Every read skips such rows
    /// (each filters on expiry); they only take room, and a crowd each of
    /// whose waiters deleted them paid two statements a run for it (four
    /// round trips on a server, and on PostgreSQL a new server process's
    /// first parse of each).
    pub(super) fn tidies(&self) -> bool {
        self.waiting.id().ends_with(['0', '1', '2', '3'])
    }

    /// Keep our place in `spec.key`'s line, when that is due (a third of
    /// [`super::WAITER_LAPSE`] since we last did, or we have just joined): our row
    /// in line and our waiter row lapse unless renewed. A row that lapsed
    /// meanwhile (we were stopped) is gone, and with it our place: the
    /// next attempt joins at the back. Outside the key's lock: it changes
    /// no one's place.
    pub(super) async fn renew_place(&self, spec: &LockSpec) {
        let (ns, key) = (&spec.namespace, &spec.key);
        let Some(w) = self.waiting.due(spec) else {
            return;
        };
        if !P::SERVER {
            return self.renew_place_at_once(spec, &w).await;
        }
        let a = Args::of(ns, key).id(self.waiting.id());
        // The first time, the attempt just before has put our row in line
        // (a busy attempt joins when we are not in it), with the same
        // lapse: nothing to renew yet.
        if !self.waiting.first_write(ns, key) {
            match self.call("waiting", &self.q.renew_queue, &a).await {
                Ok(out) if out.affected == 0 => {
                    self.waiting.done(ns, key);
                    return;
                }
                Ok(_) => {}
                // Tried again at the next wake.
                Err(_) => return,
            }
        }
        let first = self.waiting.written(ns, key);
        if self.waiter_table {
            let a = Args::of(ns, key).id(&w);
            let _ = self.call("waiting", &self.q.upsert_waiter, &a).await;
        }
        if first && self.tidies() {
            self.tidy(ns, key).await;
        }
    }

    /// Delete the rows that waiters who died left for `key` (waiter rows
    /// a minute stale, places in line that lapsed: their waiters died
    /// elsewhere, or were stopped), once per key and process, in the
    /// processes that [`Self::tidies`].
    pub(super) async fn tidy(&self, ns: &str, key: &str) {
        let a = Args::of(ns, key);
        if self.waiter_table {
            let _ = self.call("waiting", &self.q.stale_waiters, &a).await;
        }
        let _ = self.call("waiting", &self.q.lapsed_queue, &a).await;
    }

    /// [`Self::renew_place`] on a database file, in one transaction: a
    /// file has one writer at a time, and each statement on its own took
    /// the write lock, wrote the WAL and let go; a waiter that had just
    /// joined made four such writes, each one more turn at the lock that
    /// the holder and the next in line wait for. (On a server the
    /// statements stay apart: row locks held across them would make
    /// waiters of one key wait on each other's clean-ups.)
    pub(super) async fn renew_place_at_once(&self, spec: &LockSpec, w: &str) {
        let (ns, key) = (&spec.namespace, &spec.key);
        let first = self.waiting.first_write(ns, key);
        let at_once = || async {
            let mut c = self.pool.conn().await?;
            let mut tx = c.begin(self.q.begin).await?;
            let a = Args::of(ns, key).id(self.waiting.id());
            if tx.run(&self.q.renew_queue, &a).await?.affected == 0 {
                tx.commit().await?;
                return Ok::<_, sqlx::Error>(false);
            }
            self.waiter_rows(&mut tx, ns, key, w, first).await?;
            tx.commit().await?;
            Ok(true)
        };
        match self.bounded_again("waiting", at_once).await {
            Ok(true) => {
                self.waiting.written(ns, key);
            }
            // Our row in line lapsed: the next attempt joins at the back.
            Ok(false) => self.waiting.done(ns, key),
            // Tried again at the next wake.
            Err(_) => {}
        }
    }

    /// In `tx`, on a database file: our waiter row `w` (the one older
    /// versions count), and the first time (`first`) the clearing of rows
    /// whose waiters died.
    pub(super) async fn waiter_rows(
        &self,
        tx: &mut Tx<'_>,
        ns: &str,
        key: &str,
        w: &str,
        first: bool,
    ) -> sqlx::Result<()> {
        if self.waiter_table {
            let a = Args::of(ns, key).id(w);
            tx.run(&self.q.upsert_waiter, &a).await?;
            if first {
                tx.run(&self.q.stale_waiters, &a).await?;
            }
        }
        if first {
            let a = Args::of(ns, key).id(self.waiting.id());
            tx.run(&self.q.lapsed_queue, &a).await?;
        }
        Ok(())
    }

    /// Delete the rows of our waiter entries. A writer that stops waiting
    /// wakes the readers that were giving way to it.
    pub(super) async fn drop_waiters(&self) {
        let (id, shared, rows) = self.waiting.clear();
        let wid = self.waiting.id();
        for (ns, key) in rows {
            let a = Args::of(&ns, &key).id(&id);
            let _ = self.call("waiting", &self.q.delete_waiter, &a).await;
            if self.queue_table {
                let a = Args::of(&ns, &key).id(wid);
                let _ = self.call("leaving the line", &self.q.dequeue, &a).await;
            }
            // Those behind us may go now (and readers giving way to a
            // writer that stops waiting).
            if self.queue_table || !shared {
                self.d.freed(self, &ns, &key).await;
            }
        }
    }
}
