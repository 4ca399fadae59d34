//! Whether an entry's process is gone: the liveness a lease row's id
//! carries on a server database.

use std::time::Duration;

use super::{fnv64, kit};
use crate::backend::{LeaseKind, Owner};

/// The id of a lease row on a server database: the owner's secret, and for
/// a process that holds while it runs (`run`, `elect`) where it runs:
/// `SECRET~HOST~START`, HOST a 64-bit hash of its [`crate::host::host_id`]
/// (boot id and PID namespace) and START its start time, so that another
/// dlock on the same machine can tell that it is gone
/// ([`dead_by_row_id`]) with no new column (older versions read and write
/// the same tables; MySQL's id column holds 64 characters). A handle's
/// lease keeps the bare secret.
pub fn row_id(me: &Owner) -> String {
    if me.kind != LeaseKind::Run || me.host_id.is_empty() {
        return me.id.clone();
    }
    let secret = &me.id[..me.id.len().min(24)];
    format!("{secret}~{:016x}~{}", host_hash(&me.host_id), me.proc_start)
}

/// A host id's hash in a row id: stable across processes and versions.
fn host_hash(host_id: &str) -> u64 {
    fnv64(&[host_id])
}

/// Whether the lease row `id` of process `pid` names a process on this
/// machine that is gone ([`row_id`]).
pub fn dead_by_row_id(id: &str, pid: i64) -> bool {
    let mut f = id.split('~');
    let (Some(_), Some(host), Some(start), None) = (f.next(), f.next(), f.next(), f.next()) else {
        return false;
    };
    let (Ok(host), Ok(start), Ok(pid)) = (
        u64::from_str_radix(host, 16),
        start.parse::<u64>(),
        u32::try_from(pid),
    ) else {
        return false;
    };
    host == host_hash(&crate::host::host_id()) && !crate::host::process_alive(pid, start)
}

/// How soon the lease of a holder found dead ([`Dialect::dead`]) ends: the
/// grace lets the dead holder's guard finish killing the job's process
/// group.
pub const BREAK_GRACE: Duration = kit::BREAK_GRACE;

/// Whether a waiter's row in line (its `host_id`, `pid` and `proc_start`
/// columns, the same on every database) names a process on this machine
/// that is gone. A waiter is always a live process: whatever it will hold,
/// it waits while it runs.
pub fn waiter_dead(host_id: &str, pid: i64, proc_start: i64) -> bool {
    let (Ok(pid), Ok(start)) = (u32::try_from(pid), u64::try_from(proc_start)) else {
        return false;
    };
    !host_id.is_empty()
        && host_id == crate::host::host_id()
        && !crate::host::process_alive(pid, start)
}

/// A semaphore lease's row id with its slot: `SECRET.SLOT`, then the rest
/// of the id ([`row_id`]). The slot lives in the id so that no table of
/// the previous release needs a new column: that release reads the id as
/// an opaque secret (and its liveness after the first `~` as before), and
/// the part it keeps when a lease is disowned keeps the slot too.
pub fn with_slot(id: &str, slot: u32) -> String {
    match id.split_once('~') {
        Some((secret, rest)) => format!("{secret}.{slot}~{rest}"),
        None => format!("{id}.{slot}"),
    }
}

/// The slot a lease row's id carries ([`with_slot`]), if any.
pub fn slot_in(id: &str) -> Option<u32> {
    let secret = id.split('~').next()?;
    secret.rsplit_once('.')?.1.parse().ok()
}
