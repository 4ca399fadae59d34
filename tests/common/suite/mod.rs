//! The backend conformance suite: every backend must pass all of it against
//! a real server. `conformance!(name, Env::...)` instantiates it.
#![allow(dead_code, unused_macros, unused_imports)]

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::torture::{self, Fault};
use super::*;

// The suite's tests, by concern; `conformance!` calls them as `suite::NAME`.
mod exclusion;
mod leases;
mod outages;
mod reporting;
mod running;

pub use exclusion::*;
pub use leases::*;
pub use outages::*;
pub use reporting::*;
pub use running::*;

macro_rules! conformance {
    ($name:ident, $env:expr) => {
        mod $name {
            use $crate::common::suite;
            #[allow(unused_imports)]
            use $crate::common::*;
            /// A server of the test's own.
            fn private(_test: &str) -> Env {
                $env
            }
            /// This binary's server of the set-up, in the test's namespace.
            fn shared(test: &str) -> Env {
                Env::shared(
                    stringify!($env),
                    || $env,
                    &format!("{}.{test}", stringify!($name)),
                )
            }
            // They restart the server, or crowd it past its stock
            // connection limits (a crowd would starve the tests beside it).
            $crate::common::suite::suite_tests!(
                private,
                crowd_on_one_key_all_get_their_turn,
                server_restart_during_waits_is_ridden_out,
            );
            $crate::common::suite::suite_tests!(
                shared,
                child_status_and_environment,
                missing_and_unexecutable_commands,
                child_killed_by_signal_frees_lock,
                busy_no_wait_wait_and_conflict_code,
                waiter_wakes_promptly,
                contention_never_overlaps,
                fencing_tokens_increase,
                stale_handle_cannot_release_new_holder,
                renew_extends_a_handle,
                forced_release_stops_child_with_74,
                sigkill_of_dlock_kills_child_and_grandchild,
                signals_are_forwarded,
                semaphore_limit,
                multi_key_opposite_orders_do_not_deadlock,
                lock_at_least_keeps_the_lock,
                status_json_fields,
                frozen_dlock_child_is_stopped_before_expiry,
                faults_never_overlap,
                status_table_for_free_held_and_semaphore_keys,
                metrics_file_records_success_busy_and_loss,
                waiting_line_only_on_a_terminal,
                doctor_reports_every_check,
                status_counts_waiters,
                interrupted_waiter_does_not_delay_the_next,
                nested_keys_are_independent,
                lock_broken_before_the_next_renewal_is_reported,
                renew_ttl_is_applied_or_refused,
                status_rows_in_the_order_given,
                acquire_leases_show_as_handles,
                a_killed_holder_is_dead_and_the_next_takes_it_at_once,
                a_holder_that_waited_a_third_of_its_ttl_is_never_stopped,
                killed_waiter_never_delays_the_next,
                killed_standby_is_never_named_leader,
            );
        }
    };
}
pub(crate) use conformance;

macro_rules! suite_tests {
    ($env:ident, $($t:ident),* $(,)?) => {
        $(
            #[test]
            fn $t() {
                suite::$t(&mut $env(stringify!($t)));
            }
        )*
    };
}
pub(crate) use suite_tests;

const LONG: Duration = Duration::from_secs(20);

fn key(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Start a holder of `k` that runs `sh -c script`, and wait until it holds.
fn hold(env: &Env, k: &str, extra: &[&str], script: &str) -> std::process::Child {
    let mut args = vec!["run", "--key", k];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let c = env
        .cmd(&args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn dlock");
    wait_for(LONG, &format!("{k} to be held"), || env.held(k));
    c
}

/// Wait for a dlock child and collect (exit code, stderr).
trait WaitOutput {
    fn wait_with_output_timeout(&mut self) -> (i32, String);
}

impl WaitOutput for std::process::Child {
    fn wait_with_output_timeout(&mut self) -> (i32, String) {
        let c = wait_timeout(self, LONG);
        let mut s = String::new();
        if let Some(e) = self.stderr.as_mut() {
            use std::io::Read;
            let _ = e.read_to_string(&mut s);
        }
        (c, s)
    }
}

/// A Prometheus textfile line's value: `name{labels...} value`.
fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| {
            l.starts_with(name_and_labels)
                && l[name_and_labels.len()..].starts_with([' ', '}', ','])
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
