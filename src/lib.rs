//! # dlock: run a command under a distributed lock
//!
//! ## Theory of operation
//!
//! A lock flows from flags to backend to child:
//!
//! 1. [`config`] merges flags, `DLOCK_*` variables and the config file into
//!    validated settings; keys are sorted into one canonical order.
//! 2. [`backend::connect`] picks a [`backend::Backend`] by URL scheme. Every
//!    backend offers the same operations: try to take a slot of a key (a
//!    lease with a TTL and a fencing token), wait until trying again is
//!    worthwhile, renew, release with an owner check, force, and inspect.
//! 3. [`lease::acquire_all`] takes the keys one after another in canonical
//!    order, all or nothing, within the `--wait` deadline; each lease is
//!    handed to a [`lease::Keeper`] at once, which renews it every third of
//!    the TTL and declares it lost by deadline, not only by error.
//! 4. [`supervise`] runs the child in its own process group, forwards
//!    signals, stops the group when the keeper reports a loss, and leaves a
//!    guard process behind that kills the group if dlock itself dies or
//!    freezes.
//! 5. The leases are released (or, with `--lock-at-least`, left to lapse at
//!    the right time) and dlock exits with the child's status.

pub mod backend;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod error;
pub mod exit_code;
pub mod handle;
pub mod host;
pub mod jsonlog;
pub mod lease;
pub mod metrics;
pub mod progress;
pub mod status;
pub mod supervise;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::CommandFactory;

use crate::backend::{Backend, LeaseKind, Owner, redact_url};
use crate::cli::{Cli, Command, LogFormat, OnLost};
use crate::config::Settings;
use crate::error::{Error, usage};
use crate::handle::Handle;
use crate::lease::{Keeper, acquire_all, release_all};
use crate::supervise::{ChildSpec, Signals, grace, supervise};

/// Run one dlock invocation; the result is the process's exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    match &cli.command {
        Command::Completions { shell } => {
            print_completions(*shell, &mut std::io::stdout())?;
            return Ok(exit_code::SUCCESS);
        }
        Command::Man { subcommand } => {
            std::io::stdout().write_all(&man_page(subcommand.as_deref())?)?;
            return Ok(exit_code::SUCCESS);
        }
        _ => {}
    }
    // JSON from the start when the flag or DLOCK_LOG_FORMAT asks for it, so
    // that a configuration error is a JSON line too.
    jsonlog::set_json(cli.global.log_format == Some(LogFormat::Json));
    let settings = Settings::resolve(&cli.global)?;
    init_logging(&settings);
    let conn = Connector {
        settings: &settings,
        backend: tokio::sync::OnceCell::new(),
    };
    let result = match cli.command {
        Command::Run(a) => cmd_run(&conn, a).await,
        Command::Acquire(a) => cmd_acquire(&conn, a).await,
        Command::Renew(a) => cmd_renew(&conn, a).await,
        Command::Release(a) => cmd_release(&conn, a).await,
        Command::Status(a) => cmd_status(&conn, a).await,
        Command::Ping => cmd_ping(&conn).await,
        Command::Doctor(a) => cmd_doctor(&conn, a).await,
        Command::Completions { .. } | Command::Man { .. } => unreachable!("handled above"),
    };
    if let Some(b) = conn.backend.get() {
        b.close().await;
    }
    result
}

/// Connects on first use (after the arguments are validated, so bad input
/// is a usage error even when the backend is down) and closes at the end.
struct Connector<'a> {
    settings: &'a Settings,
    backend: tokio::sync::OnceCell<Arc<dyn Backend>>,
}

impl Connector<'_> {
    async fn get(&self) -> Result<Arc<dyn Backend>> {
        self.backend
            .get_or_try_init(|| connect(self.settings))
            .await
            .cloned()
    }
}

pub fn print_completions(shell: clap_complete::Shell, out: &mut dyn Write) -> Result<()> {
    clap_complete::generate(shell, &mut Cli::command(), "dlock", out);
    Ok(())
}

/// The roff man page of dlock, or of `dlock-SUBCOMMAND`.
pub fn man_page(subcommand: Option<&str>) -> Result<Vec<u8>> {
    let mut cmd = Cli::command();
    // Propagate the global options into the subcommands' pages.
    cmd.build();
    let page = match subcommand {
        None => cmd,
        Some(name) => {
            let sub = cmd
                .find_subcommand(name)
                .ok_or_else(|| usage(format!("no subcommand {name:?}")))?
                .clone();
            let full = format!("dlock-{name}");
            sub.name(full).version(env!("CARGO_PKG_VERSION"))
        }
    };
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf)?;
    Ok(buf)
}

fn init_logging(s: &Settings) {
    use tracing_subscriber::filter::LevelFilter;
    jsonlog::set_json(s.log_format == LogFormat::Json);
    let level = match (s.quiet, s.verbose, s.log_format) {
        (true, _, _) => LevelFilter::OFF,
        (_, 0, LogFormat::Text) => LevelFilter::OFF,
        (_, 0 | 1, _) => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    };
    if level == LevelFilter::OFF {
        return;
    }
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    match s.log_format {
        LogFormat::Json => b.event_format(jsonlog::JsonLines).init(),
        LogFormat::Text => b.compact().init(),
    }
}

/// A random hex secret; it names our lease and proves we own it.
fn secret() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn owner(kind: LeaseKind) -> Result<Owner> {
    let pid = std::process::id();
    Ok(Owner {
        id: secret()?,
        user: host::user(),
        host: host::hostname(),
        // A handle outlives the `dlock acquire` that took it: its pid would
        // name a long-exited process. Pid 0 (never a user process) marks
        // the lease as a handle's in `status`.
        pid: if kind == LeaseKind::Handle { 0 } else { pid },
        host_id: host::host_id(),
        proc_start: host::proc_start(pid).unwrap_or(0),
        kind,
    })
}

async fn connect(s: &Settings) -> Result<Arc<dyn Backend>> {
    let shown = s.shown_backends();
    match tokio::time::timeout(
        s.connect_timeout,
        backend::connect(&s.backends, s.connect_timeout),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(error::unavailable(format!(
            "backend {shown} did not answer within {} (--connect-timeout)",
            status::human_duration(s.connect_timeout)
        ))),
    }
}

/// Errors from talking to the backend, without a type of their own, mean
/// the backend is unavailable (exit 69), not that dlock has a bug.
fn backend_error(b: &dyn Backend, e: anyhow::Error) -> anyhow::Error {
    if e.chain().any(|c| c.downcast_ref::<Error>().is_some()) {
        return e;
    }
    Error::Unavailable(format!("backend {}: {e:#}", b.describe())).into()
}

fn busy_message(busy: &lease::Busy, waited: Option<Duration>) -> String {
    let mut m = format!("lock {:?} is busy", busy.key);
    if let Some(w) = waited {
        m.push_str(&format!(" after waiting {}", status::human_duration(w)));
    }
    match busy.holders.as_slice() {
        [] => {}
        [h] => m.push_str(&format!(": {}", status::describe_holder(h))),
        hs => {
            m.push_str(&format!(": {} holders", hs.len()));
            for h in hs {
                m.push_str(&format!("\n  {}", status::describe_holder(h)));
            }
        }
    }
    m
}

/// Why the keys were not taken, with the exit code to use.
#[derive(Debug, Clone, Copy)]
enum NotTaken {
    Busy(i32),
    Interrupted(i32),
}

impl NotTaken {
    fn code(self) -> i32 {
        match self {
            NotTaken::Busy(c) | NotTaken::Interrupted(c) => c,
        }
    }
}

/// Take every key, or say why not.
async fn take_locks(
    s: &Settings,
    backend: &Arc<dyn Backend>,
    lock: &config::LockSettings,
    me: &Owner,
    keeper: &Keeper,
    signals: &mut Signals,
) -> Result<std::result::Result<(), NotTaken>> {
    let started = Instant::now();
    tracing::info!(event = "waiting", keys = ?lock.keys, backend = backend.describe(), "acquiring");
    let mut lost = keeper.lost();
    let line = progress::WaitLine::new(s, lock);
    let outcome = tokio::select! {
        r = acquire_all(backend.as_ref(), &s.namespace, lock, me, keeper) => r.map_err(|e| backend_error(backend.as_ref(), e)),
        () = line.show(backend.as_ref(), &s.namespace, keeper, started) => unreachable!("the waiting line never ends"),
        sig = signals.recv() => {
            line.clear();
            release_all(backend.as_ref(), &keeper.leases()).await;
            tracing::info!(event = "interrupted", signal = sig.as_str(), waited_ms = started.elapsed().as_millis() as u64, "gave up waiting");
            return Ok(Err(NotTaken::Interrupted(exit_code::SIGNAL_BASE + sig as i32)));
        }
        _ = lost.changed() => {
            line.clear();
            release_all(backend.as_ref(), &keeper.leases()).await;
            let msg = lost.borrow().as_ref().map(|l| l.message.clone()).unwrap_or_default();
            return Err(Error::Lost(format!("{msg} while waiting for the other keys")).into());
        }
    };
    line.clear();
    let outcome = outcome?;
    let waited = started.elapsed();
    match outcome {
        Ok(()) => {
            let tokens = keeper.leases().iter().map(|l| l.token).collect::<Vec<_>>();
            tracing::info!(
                event = "acquired",
                keys = ?lock.keys,
                tokens = ?tokens,
                waited_ms = waited.as_millis() as u64,
                "lock acquired"
            );
            Ok(Ok(()))
        }
        Err(busy) => {
            tracing::info!(
                event = "busy",
                key = busy.key,
                waited_ms = waited.as_millis() as u64,
                "not acquired"
            );
            if !s.quiet {
                let w = (lock.wait != config::Wait::No).then_some(waited);
                jsonlog::say("INFO", &busy_message(&busy, w));
            }
            Ok(Err(NotTaken::Busy(lock.conflict_exit_code)))
        }
    }
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", d.as_secs())
    } else {
        format!("{s}")
    }
}

/// What a run got as far as, for `--metrics-file`.
#[derive(Debug, Default)]
struct Trace {
    waited: Duration,
    held: Duration,
    token: Option<u64>,
    not_taken: Option<NotTaken>,
    lost: bool,
}

async fn cmd_run(c: &Connector<'_>, a: cli::RunArgs) -> Result<i32> {
    let s = c.settings;
    let lock = s.lock(&a.lock)?;
    let rs = s.run(&a)?;
    let mut trace = Trace::default();
    let result = run_locked(c, &a, lock.clone(), &rs, &mut trace).await;
    if let Some(path) = &rs.metrics_file {
        use metrics::Outcome;
        let (outcome, code) = match &result {
            Err(e) => (Outcome::Error, error::exit_code_of(e)),
            Ok(code) => (
                match trace.not_taken {
                    Some(NotTaken::Busy(_)) => Outcome::Busy,
                    Some(NotTaken::Interrupted(_)) => Outcome::Interrupted,
                    None if trace.lost => Outcome::Lost,
                    None if *code == 0 => Outcome::Success,
                    None => Outcome::Failed,
                },
                *code,
            ),
        };
        let rec = metrics::RunRecord {
            key: lock.keys.join(","),
            namespace: s.namespace.clone(),
            outcome,
            exit_code: code,
            waited: trace.waited,
            held: trace.held,
            token: trace.token,
            ended: std::time::SystemTime::now(),
        };
        if let Err(e) = metrics::write(path, &rec) {
            jsonlog::say("ERROR", &format!("{e:#}"));
        }
    }
    result
}

async fn run_locked(
    c: &Connector<'_>,
    a: &cli::RunArgs,
    mut lock: config::LockSettings,
    rs: &config::RunSettings,
    trace: &mut Trace,
) -> Result<i32> {
    let s = c.settings;
    let mut signals = Signals::install()?;
    let backend = c.get().await?;
    lock.ttl = backend
        .effective_ttl(lock.ttl)
        .await
        .map_err(|e| backend_error(backend.as_ref(), e))?;
    let me = owner(LeaseKind::Run)?;
    let keeper = Keeper::start(
        backend.clone(),
        lock.ttl,
        s.connect_timeout,
        grace(rs.kill_after, lock.ttl),
    );
    let started = Instant::now();
    let taken = take_locks(s, &backend, &lock, &me, &keeper, &mut signals).await;
    trace.waited = started.elapsed();
    if let Err(not) = taken? {
        keeper.stop();
        trace.not_taken = Some(not);
        return Ok(not.code());
    }
    let acquired = Instant::now();
    let leases = keeper.leases();
    trace.token = leases.iter().map(|l| l.token).max();
    let mut env = vec![
        ("DLOCK_KEY".to_string(), lock.keys.join(",")),
        (
            "DLOCK_TOKEN".to_string(),
            leases
                .iter()
                .map(|l| l.token.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("DLOCK_TTL".to_string(), fmt_secs(lock.ttl)),
    ];
    // DLOCK_KEY joins keys with commas, which a key may hold; DLOCK_KEYS has
    // one per line, unambiguous since a key holds no control character.
    env.push(("DLOCK_KEYS".to_string(), lock.keys.join("\n")));
    env.push(("DLOCK_NAMESPACE".to_string(), s.namespace.clone()));
    // A password in DLOCK_BACKEND must not reach the child.
    let env_remove = match std::env::var("DLOCK_BACKEND") {
        Ok(v) if redact_url(&v) != v || v.contains("@") => vec!["DLOCK_BACKEND".to_string()],
        _ => vec![],
    };
    let spec = ChildSpec {
        argv: a.command.clone(),
        shell: rs.shell,
        env,
        env_remove,
        on_lost: rs.on_lost,
        kill_after: rs.kill_after,
    };
    let outcome = supervise(spec, &mut signals, &keeper, lock.ttl).await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            release_all(backend.as_ref(), &keeper.stop()).await;
            trace.held = acquired.elapsed();
            return Err(e);
        }
    };
    let lost = outcome.lost.is_some();
    trace.lost = lost;
    trace.held = acquired.elapsed();
    if !lost && let Some(least) = rs.lock_at_least {
        let remaining = least.saturating_sub(acquired.elapsed());
        if !remaining.is_zero() {
            let mut handed_over = true;
            for l in &keeper.leases() {
                handed_over &= backend.release_after(l, remaining).await.unwrap_or(false);
            }
            if handed_over {
                keeper.stop();
                tracing::info!(
                    event = "released",
                    held_ms = acquired.elapsed().as_millis() as u64,
                    lapse_ms = remaining.as_millis() as u64,
                    "lock left to lapse (--lock-at-least)"
                );
                return Ok(outcome.code);
            }
            tokio::time::sleep(remaining).await;
        }
    }
    let leases = keeper.stop();
    let mut lost = lost;
    if !lost {
        // Broken (`release --force`) or expired since the last renewal: the
        // end of the command ran without the lock, which is a loss too.
        let gone = release_all(backend.as_ref(), &leases).await;
        if !gone.is_empty() {
            let what = gone
                .iter()
                .map(|l| format!("{:?} (token {})", l.key, l.token))
                .collect::<Vec<_>>()
                .join(", ");
            for l in &gone {
                tracing::warn!(
                    event = "lost",
                    key = l.key,
                    token = l.token,
                    "lease found gone at release"
                );
            }
            jsonlog::say(
                "WARN",
                &format!(
                    "lost the lock on {what}: it was broken or expired on {} before the command ended",
                    backend.describe()
                ),
            );
            lost = true;
            trace.lost = true;
        }
    }
    tracing::info!(
        event = "released",
        held_ms = acquired.elapsed().as_millis() as u64,
        code = outcome.code,
        lost,
        "done"
    );
    if lost && rs.on_lost == OnLost::Kill {
        jsonlog::say(
            "WARN",
            &format!(
                "exiting {} because the lease was lost (the command's own status was {})",
                exit_code::LOST,
                outcome.code
            ),
        );
        return Ok(exit_code::LOST);
    }
    Ok(outcome.code)
}

async fn cmd_acquire(c: &Connector<'_>, a: cli::AcquireArgs) -> Result<i32> {
    let s = c.settings;
    let lock = s.lock(&a.lock)?;
    let mut signals = Signals::install()?;
    let backend = c.get().await?;
    let me = owner(LeaseKind::Handle)?;
    let keeper = Keeper::start(backend.clone(), lock.ttl, s.connect_timeout, Duration::ZERO);
    if let Err(not) = take_locks(s, &backend, &lock, &me, &keeper, &mut signals).await? {
        keeper.stop();
        return Ok(not.code());
    }
    let leases = keeper.stop();
    let h = Handle::new(&s.namespace, lock.ttl, &leases).issued_by(s.shown_backends());
    println!("{}", h.encode());
    Ok(exit_code::SUCCESS)
}

async fn cmd_renew(c: &Connector<'_>, a: cli::RenewArgs) -> Result<i32> {
    let h = Handle::decode(&a.handle)?;
    same_service(c.settings, &h)?;
    let ttl = a.ttl.unwrap_or(h.ttl());
    if ttl < Duration::from_millis(100) {
        return Err(usage("--ttl must be at least 100ms"));
    }
    let backend = c.get().await?;
    for l in h.leases() {
        match backend
            .renew(&l, ttl)
            .await
            .map_err(|e| backend_error(backend.as_ref(), e))?
        {
            backend::Renewal::Renewed => {
                tracing::info!(
                    event = "renewed",
                    key = l.key,
                    token = l.token,
                    ttl_ms = ttl.as_millis() as u64,
                    "lease renewed"
                )
            }
            backend::Renewal::Lost => {
                return Err(Error::Lost(format!(
                    "the handle no longer holds {:?} (token {}): its lease expired or was broken; nothing was changed",
                    l.key, l.token
                ))
                .into());
            }
        }
    }
    Ok(exit_code::SUCCESS)
}

/// A handle used against another kind of backend than the one that issued
/// it (a CI step that forgot `--backend`) is a usage error, said as such
/// before connecting, rather than "its lease expired".
fn same_service(s: &Settings, h: &Handle) -> Result<()> {
    let Some(issuer) = &h.backend else {
        return Ok(());
    };
    let (was, is) = (
        config::service_of(issuer),
        config::service_of(&s.backends[0]),
    );
    if was != is {
        return Err(usage(format!(
            "this handle was issued by {issuer} ({was}); this is {} ({is}): give the --backend it was acquired with",
            s.shown_backends()
        )));
    }
    Ok(())
}

async fn cmd_release(c: &Connector<'_>, a: cli::ReleaseArgs) -> Result<i32> {
    let s = c.settings;
    for key in &a.key {
        s.validate_key(key)?;
    }
    if let Some(hs) = &a.handle {
        same_service(s, &Handle::decode(hs)?)?;
    }
    let backend = c.get().await?;
    if let Some(hs) = &a.handle {
        let h = Handle::decode(hs)?;
        let mut gone = Vec::new();
        for l in h.leases() {
            let ok = backend
                .release(&l)
                .await
                .map_err(|e| backend_error(backend.as_ref(), e))?;
            if !ok {
                gone.push(format!("{:?} (token {})", l.key, l.token));
            }
        }
        if !gone.is_empty() && a.if_held {
            if !s.quiet {
                jsonlog::say(
                    "INFO",
                    &format!(
                        "the handle no longer held {}: nothing to release (--if-held)",
                        gone.join(", ")
                    ),
                );
            }
            return Ok(exit_code::SUCCESS);
        }
        if !gone.is_empty() {
            return Err(Error::Lost(format!(
                "the handle no longer held {}: it was already released, or its lease expired or was broken, \
                 and whoever holds it now keeps it (--if-held makes this exit 0)",
                gone.join(", ")
            ))
            .into());
        }
        return Ok(exit_code::SUCCESS);
    }
    if !a.force {
        return Err(usage(
            "releasing by --key needs --force (it breaks whoever holds the lock)",
        ));
    }
    for key in &a.key {
        let n = backend
            .force_release(&s.namespace, key)
            .await
            .map_err(|e| backend_error(backend.as_ref(), e))?;
        let by = format!(
            "{}@{} (pid {})",
            host::user(),
            host::hostname(),
            std::process::id()
        );
        tracing::warn!(event = "forced", key, holders = n, by, "forced release");
        if !s.quiet {
            if n == 0 {
                jsonlog::say("INFO", &format!("{key:?} was not held"));
            } else {
                jsonlog::say(
                    "WARN",
                    &format!(
                        "broke the lock on {key:?} ({n} holder{})",
                        if n == 1 { "" } else { "s" }
                    ),
                );
            }
        }
    }
    Ok(exit_code::SUCCESS)
}

async fn cmd_status(c: &Connector<'_>, mut a: cli::StatusArgs) -> Result<i32> {
    let s = c.settings;
    for k in &a.keys {
        s.validate_key(k)?;
    }
    // Each named key once, in the order given.
    let mut seen = std::collections::HashSet::new();
    a.keys.retain(|k| seen.insert(k.clone()));
    let backend = c.get().await?;
    let Some(every) = a.watch else {
        let st = backend
            .status(&s.namespace, &a.keys)
            .await
            .map(|st| in_order(st, &a.keys))
            .map_err(|e| backend_error(backend.as_ref(), e))?;
        let text = render_status(s, backend.as_ref(), &st, a.json)?;
        let mut out = std::io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            // `dlock status | head`: the reader has what it wanted.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => r?,
        }
        return Ok(exit_code::SUCCESS);
    };
    if every < Duration::from_millis(100) {
        return Err(usage("--watch must be at least 100ms"));
    }
    // Refresh until interrupted, which is the normal way to stop: exit 0.
    let mut signals = Signals::install()?;
    let in_place = !a.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    // Each backend step is bounded; this only catches a status of many keys
    // on a backend that has stopped answering altogether.
    let bound = s.connect_timeout * 4;
    loop {
        let t0 = Instant::now();
        let st = tokio::time::timeout(bound, backend.status(&s.namespace, &a.keys))
            .await
            .map(|r| r.map(|st| in_order(st, &a.keys)));
        let (body, failed) = match st {
            Ok(Ok(st)) if a.json => (serde_json::to_string(&status::to_json(&st))? + "\n", false),
            Ok(Ok(st)) => (render_status(s, backend.as_ref(), &st, false)?, false),
            Ok(Err(e)) => (
                format!("dlock: {:#}\n", backend_error(backend.as_ref(), e)),
                true,
            ),
            Err(_) => (
                format!(
                    "dlock: backend {} did not answer within {}\n",
                    backend.describe(),
                    status::human_duration(bound)
                ),
                true,
            ),
        };
        let mut out = std::io::stdout().lock();
        let written = if a.json {
            // Errors go to stderr: stdout stays one JSON array per line.
            if failed {
                let msg = body.trim_end();
                jsonlog::say("ERROR", msg.strip_prefix("dlock: ").unwrap_or(msg));
                Ok(())
            } else {
                write!(out, "{body}")
            }
        } else {
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            let head = format!(
                "Every {}: dlock status on {}    {now}",
                status::human_duration(every),
                backend.describe()
            );
            let head = status::Paint(s.color).paint(status::Paint::DIM, &head);
            if in_place {
                // Home and clear, like watch(1).
                write!(out, "\x1b[H\x1b[2J{head}\n\n{body}")
            } else {
                write!(out, "{head}\n{body}\n")
            }
        };
        match written.and_then(|()| out.flush()) {
            // The reader went away (`| head`): a normal end of a watch.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(exit_code::SUCCESS),
            r => r?,
        }
        drop(out);
        tokio::select! {
            () = tokio::time::sleep_until((t0 + every).into()) => {}
            _ = signals.recv() => return Ok(exit_code::SUCCESS),
        }
    }
}

/// The same row order on every backend: named keys in the order given,
/// the namespace's keys sorted.
fn in_order(mut st: Vec<backend::KeyStatus>, keys: &[String]) -> Vec<backend::KeyStatus> {
    if keys.is_empty() {
        st.sort_by(|a, b| a.key.cmp(&b.key));
    } else {
        st.sort_by_key(|k| keys.iter().position(|n| *n == k.key).unwrap_or(usize::MAX));
    }
    st
}

/// The table (or JSON) for one look at the locks.
fn render_status(
    s: &Settings,
    backend: &dyn Backend,
    st: &[backend::KeyStatus],
    json: bool,
) -> Result<String> {
    Ok(if json {
        serde_json::to_string_pretty(&status::to_json(st))? + "\n"
    } else {
        // The default database is this user's own: say so, since another
        // user's dlock on this host does not see these locks.
        let own = config::default_sqlite_path()
            .is_some_and(|p| backend.describe() == format!("sqlite:{}", p.display()));
        let note = if own {
            " (your own default database: other users' locks are not in it)"
        } else {
            ""
        };
        if st.is_empty() {
            format!(
                "no lock is held in namespace {:?} on {}{note}\n",
                s.namespace,
                backend.describe()
            )
        } else if own && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            let table = status::table(st, status::Paint(s.color));
            let foot = format!("on {}{note}", backend.describe());
            format!(
                "{table}{}\n",
                status::Paint(s.color).paint(status::Paint::DIM, &foot)
            )
        } else {
            status::table(st, status::Paint(s.color))
        }
    })
}

async fn cmd_ping(c: &Connector<'_>) -> Result<i32> {
    let s = c.settings;
    let t0 = Instant::now();
    let backend = c.get().await?;
    let connected = t0.elapsed();
    let t1 = Instant::now();
    let info = tokio::time::timeout(s.connect_timeout, backend.ping())
        .await
        .map_err(|_| {
            error::unavailable(format!(
                "backend {} did not answer a ping",
                backend.describe()
            ))
        })?
        .map_err(|e| backend_error(backend.as_ref(), e))?;
    let rtt = t1.elapsed();
    println!(
        "{} {} ({}): connect {:.1}ms, round trip {:.2}ms",
        info.kind,
        info.version,
        info.detail,
        connected.as_secs_f64() * 1e3,
        rtt.as_secs_f64() * 1e3
    );
    Ok(exit_code::SUCCESS)
}

async fn cmd_doctor(c: &Connector<'_>, a: cli::DoctorArgs) -> Result<i32> {
    let s = c.settings;
    let ttl = s.ttl(a.ttl)?;
    let max_skew = a.max_skew.unwrap_or(Duration::from_secs(1));
    let shown = s.shown_backends();
    let (checks, code) = match c.get().await {
        Ok(backend) => {
            let checks = doctor::examine(backend.as_ref(), ttl, max_skew, s.connect_timeout).await;
            let unreachable = !checks
                .iter()
                .any(|c| c.name == "reachable" && c.level == doctor::Level::Ok);
            (checks, unreachable.then_some(exit_code::UNAVAILABLE))
        }
        Err(e) => {
            let code = error::exit_code_of(&e);
            if code != exit_code::UNAVAILABLE {
                return Err(e);
            }
            let check = doctor::Check::new(doctor::Level::Fail, "reachable", format!("{e:#}"))
                .fix("check the URL, that the server runs, and that this host may reach it");
            (vec![check], Some(code))
        }
    };
    let report = doctor::Report {
        backend: shown,
        ttl,
        checks,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.text(status::Paint(s.color)));
    }
    let worst = report.worst();
    Ok(match code {
        Some(code) => code,
        None if worst == doctor::Level::Fail || (a.strict && worst == doctor::Level::Warn) => 1,
        None => exit_code::SUCCESS,
    })
}

/// Used by `main` for the top-level error message.
pub fn report(err: &anyhow::Error) -> String {
    if jsonlog::is_json() {
        let code = error::exit_code_of(err);
        jsonlog::line(
            "ERROR",
            "error",
            &format!("{err:#}"),
            &[("exit_code", code.into())],
        )
    } else {
        format!("dlock: {err:#}")
    }
}
