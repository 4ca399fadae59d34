//! One server per backend set-up per test binary: the tests that neither
//! stop, restart, freeze, signal or reconfigure the server nor crowd it
//! share one, started when the first of them asks for it, each in a
//! namespace of its own (`Env::shared`); the others start a private one.
//!
//! A kept server outlives every test, so no `Drop` ends it: a watchdog does.
//! Each kept set-up gets a small `sh` whose stdin is a pipe from this
//! process; when the test binary ends, however it ends (passed, failed,
//! panicked, aborted, SIGKILLed, Ctrl-C), the pipe reads EOF and the
//! watchdog kills the servers (and whatever still runs in their
//! directories: PostgreSQL's backends are sessions of their own) and
//! removes their directories. On a normal exit (libtest's, pass or fail) an
//! `atexit` handler closes the pipes first and waits for the watchdogs, so
//! no server outlives the binary by even a moment.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::Env;

/// A set-up's Env, its servers kept until the binary exits.
struct Kept(Env);

type Slot = Arc<OnceLock<Kept>>;

fn slots() -> &'static Mutex<HashMap<String, Slot>> {
    static SLOTS: OnceLock<Mutex<HashMap<String, Slot>>> = OnceLock::new();
    SLOTS.get_or_init(Default::default)
}

/// The watchdogs, each with the write end of its stdin still open.
fn watchdogs() -> &'static Mutex<Vec<Child>> {
    static W: OnceLock<Mutex<Vec<Child>>> = OnceLock::new();
    W.get_or_init(Default::default)
}

/// The set-up `setup` (a name, such as `Env::postgres()`: set-ups of the
/// same name, whitespace aside, share), made by `make` the first time: its
/// URL, for a test to use in its own namespace. `None` for a set-up without
/// a server (SQLite), which every test makes afresh.
pub fn url(setup: &str, make: fn() -> Env) -> Option<String> {
    let name: String = setup.split_whitespace().collect();
    let slot = slots().lock().unwrap().entry(name).or_default().clone();
    let kept = slot.get_or_init(|| {
        let env = make();
        watch(&env);
        Kept(env)
    });
    let env = &kept.0;
    if env.server_processes().0.is_empty() {
        None
    } else {
        Some(env.url.clone())
    }
}

/// A namespace for one test: its name and a number, unique in the binary.
pub fn namespace(test: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{test}.{}", N.fetch_add(1, Ordering::Relaxed))
}

const WATCHDOG: &str = r#"
trap '' INT TERM HUP QUIT PIPE
read -r _
for p in $PIDS; do kill -CONT "$p"; kill -KILL "$p"; done 2>/dev/null
n=0
while [ $n -lt 500 ]; do
  left=$(for d in "$@"; do
    find /proc/[0-9]*/cwd -maxdepth 0 \( -lname "$d" -o -lname "$d/*" \) 2>/dev/null
  done | cut -d/ -f3)
  [ -z "$left" ] && break
  kill -KILL $left 2>/dev/null
  n=$((n + 1))
  sleep 0.02
done
rm -rf "$@"
"#;

/// Start the watchdog of a kept Env's servers.
fn watch(env: &Env) {
    let (pids, mut dirs) = env.server_processes();
    if pids.is_empty() {
        return;
    }
    dirs.push(env.dir.path().to_path_buf());
    let dirs: Vec<PathBuf> = dirs
        .into_iter()
        .map(|d| d.canonicalize().unwrap_or(d))
        .collect();
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let child = Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("dlock-test-watchdog")
        .args(&dirs)
        .env("PIDS", pids.join(" "))
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the servers' watchdog (sh)");
    let mut w = watchdogs().lock().unwrap();
    if w.is_empty() {
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(at_exit) };
    }
    w.push(child);
}

/// Close every watchdog's pipe, and wait for them to finish.
extern "C" fn at_exit() {
    let Ok(mut w) = watchdogs().try_lock() else {
        return;
    };
    for c in w.iter_mut() {
        drop(c.stdin.take());
    }
    for mut c in w.drain(..) {
        let _ = c.wait();
    }
}
