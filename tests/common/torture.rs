//! Fault injection: many `dlock run` clients contend for one key on any
//! backend while holders are SIGKILLed, their children SIGKILLed, or dlock
//! frozen with SIGSTOP past the TTL. Every child logs when it begins and
//! ends; the check proves that no more than `limit` children ever ran at
//! once and that fencing tokens rose in the order the holders began. Two
//! witnesses of an overlap: the times in the logs (a killed child's end is
//! the last moment it was seen running, so a late look never invents one),
//! and a `flock` each child takes on the resource without waiting, which
//! the kernel lets go only when the child's whole group has exited.
//!
//! With `shared` > 0, that fraction of the runs take the lock `--shared`
//! (readers beside writers): the check then counts an overlap only where
//! an exclusive section meets any other section, and compares the tokens of
//! two sections only where one of them is exclusive.
//!
//! [`elect`] is the election mode: candidates run `dlock elect`, the
//! leader is struck with a fault, and the time without a leader after each
//! fault is measured (and leader bodies checked never to overlap).
//!
//! Used by the test suite (small numbers) and by `cargo run --example
//! torture -- --backend URL` (any numbers, any backend).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    None,
    /// SIGKILL the dlock holding the lock.
    KillDlock,
    /// SIGKILL the child while it holds the lock.
    KillChild,
    /// SIGSTOP the holding dlock for longer than the TTL, then SIGCONT it.
    StopDlock,
    /// SIGTERM the holding dlock (a graceful stop).
    TermDlock,
}

impl Fault {
    pub fn parse(s: &str) -> Option<Fault> {
        Some(match s {
            "kill-dlock" => Fault::KillDlock,
            "kill-child" => Fault::KillChild,
            "stop-dlock" => Fault::StopDlock,
            "term-dlock" => Fault::TermDlock,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub dlock: PathBuf,
    pub backend: String,
    pub key: String,
    pub clients: usize,
    pub runs: usize,
    pub hold: Duration,
    pub ttl: Duration,
    pub limit: u32,
    /// The fraction of runs that take the lock `--shared` (0: none).
    pub shared: f64,
    /// Faults to inject, each tried with probability `fault_rate` per run.
    pub faults: Vec<Fault>,
    pub fault_rate: f64,
    pub dir: PathBuf,
    pub seed: u64,
}

#[derive(Debug, Default)]
pub struct Report {
    pub intervals: usize,
    pub max_concurrent: usize,
    pub overlaps: Vec<String>,
    pub token_errors: Vec<String>,
    pub exit_codes: BTreeMap<i32, usize>,
    pub faults: BTreeMap<String, usize>,
    pub unfinished: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.overlaps.is_empty() && self.token_errors.is_empty() && self.unfinished.is_empty()
    }
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

/// A small xorshift generator: reproducible runs from a seed, no crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn pid_alive(pid: i32) -> bool {
    started(pid).is_some()
}

/// The fields of `/proc/PID/stat` after the command's name: the state
/// first (`Z` a zombie, `D` uninterruptible), the start time 20th.
fn stat_of(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// When the process `pid` started (clock ticks since boot), unless it is
/// gone or a zombie: with it, a pid reused by another process (this
/// machine's `pid_max` may be 32768) is not taken for the one it was.
fn started(pid: i32) -> Option<u64> {
    let f = stat_of(pid)?;
    if f.first()? == "Z" {
        return None;
    }
    f.get(19)?.parse().ok()
}

/// Wait until the process `pid` that started at `born` is gone, or
/// `limit`: its state if it still runs then, and the last moment it is
/// known to have been running (the clock read before the last look that
/// found it; `seen`, read before `born` was, if no look did). The process
/// ended after that moment, so a section ended there ends no later than
/// it did: the time check then never reports an overlap that did not
/// happen, however late this thread is scheduled (a loaded machine), and
/// the lock on the resource (see [`claim`]) catches the ones in between.
fn gone_by(pid: i32, born: Option<u64>, seen: i128, limit: Instant) -> (Option<String>, i128) {
    let same = || born.is_some() && started(pid) == born;
    let mut alive_at = seen;
    loop {
        let t = now_ns();
        if !same() {
            return (None, alive_at);
        }
        alive_at = t;
        if Instant::now() >= limit {
            let state = stat_of(pid)
                .and_then(|f| f.first().cloned())
                .unwrap_or_default();
            return (Some(state), alive_at);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The start of a child's script: it takes a lock on the shared resource,
/// one of `limit` files (`res-N` in the log directory), shared for a
/// reader, without waiting; where none is free, it logs `O` (an overlap),
/// then goes on. The lock lasts until every process of the child's group
/// has exited (they share the descriptor), as the kernel sees it: an exact
/// witness of two live children at once, which the times in the logs can
/// only bound.
fn claim(cfg: &Config, log: &Path, mode: &str) -> String {
    let (slots, how) = if mode == "S" {
        (1, "-s")
    } else {
        (cfg.limit.max(1), "-x")
    };
    let list: Vec<String> = (0..slots).map(|n| n.to_string()).collect();
    format!(
        "o=O; for n in {list}; do exec 9>>'{dir}/res-'$n; if flock -n {how} 9; then o=; break; fi; exec 9>&-; done; [ -z \"$o\" ] || echo \"O $DLOCK_TOKEN $$ $(date +%s%N) {mode}\" >> '{log}'; ",
        list = list.join(" "),
        dir = cfg.dir.display(),
        log = log.display(),
    )
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: sending a signal to a process id we started.
    unsafe { libc::kill(pid, sig) };
}

fn client(
    cfg: &Config,
    ns: Option<&str>,
    idx: usize,
) -> (BTreeMap<i32, usize>, BTreeMap<String, usize>, Vec<String>) {
    let log = cfg.dir.join(format!("client-{idx}.log"));
    let mut rng = Rng(cfg
        .seed
        .wrapping_add((idx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        | 1);
    let mut codes = BTreeMap::new();
    let mut faults = BTreeMap::new();
    let mut problems = Vec::new();
    // The fifth field is the mode: X exclusive, S shared.
    let script = |mode: &str| {
        format!(
            "{claim}echo \"B $DLOCK_TOKEN $$ $(date +%s%N) {mode}\" >> '{log}'; sleep {hold}; echo \"E $DLOCK_TOKEN $$ $(date +%s%N) {mode}\" >> '{log}'",
            claim = claim(cfg, &log, mode),
            log = log.display(),
            hold = cfg.hold.as_secs_f64()
        )
    };
    for _ in 0..cfg.runs {
        let fault = if !cfg.faults.is_empty() && rng.unit() < cfg.fault_rate {
            cfg.faults[(rng.next() % cfg.faults.len() as u64) as usize]
        } else {
            Fault::None
        };
        let shared = cfg.shared > 0.0 && rng.unit() < cfg.shared;
        let script = script(if shared { "S" } else { "X" });
        let before = lines(&log).len();
        let mut child = Command::new(&cfg.dlock)
            .args([
                "--backend",
                &cfg.backend,
                "--quiet",
                "run",
                "--key",
                &cfg.key,
            ])
            .args([
                "--ttl",
                &format!("{}ms", cfg.ttl.as_millis()),
                "--limit",
                &cfg.limit.to_string(),
            ])
            .args(shared.then_some("--shared"))
            .args(["--kill-after", "200ms", "--", "sh", "-c", &script])
            .env_remove("DLOCK_BACKEND")
            .envs(ns.map(|ns| ("DLOCK_NAMESPACE", ns)))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn dlock");
        let dlock_pid = child.id() as i32;
        if fault != Fault::None {
            // Wait until this run's child has begun, then strike.
            let start = Instant::now();
            let mut begun = None;
            while start.elapsed() < Duration::from_secs(120) {
                let l = lines(&log);
                if l.len() > before && l[before].starts_with("B ") {
                    begun = l[before]
                        .split_whitespace()
                        .nth(2)
                        .and_then(|p| p.parse::<i32>().ok());
                    break;
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            if let Some(cpid) = begun {
                *faults.entry(format!("{fault:?}")).or_insert(0) += 1;
                let seen = now_ns();
                let born = started(cpid);
                match fault {
                    Fault::KillDlock => kill(dlock_pid, libc::SIGKILL),
                    Fault::KillChild => kill(cpid, libc::SIGKILL),
                    Fault::StopDlock => kill(dlock_pid, libc::SIGSTOP),
                    Fault::TermDlock => kill(dlock_pid, libc::SIGTERM),
                    Fault::None => {}
                }
                let stop_until = Instant::now() + cfg.ttl + Duration::from_millis(300);
                // The child's end is the last moment it was seen running.
                let limit = Instant::now() + cfg.ttl * 3 + Duration::from_secs(10);
                let (left, end) = gone_by(cpid, born, seen, limit);
                if let Some(state) = left {
                    problems.push(format!(
                        "child {cpid} (state {state}) outlived fault {fault:?} by {:?}",
                        cfg.ttl * 3
                    ));
                }
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .expect("log");
                use std::io::Write;
                let _ = writeln!(f, "K - {cpid} {end}");
                if fault == Fault::StopDlock {
                    while Instant::now() < stop_until {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    kill(dlock_pid, libc::SIGCONT);
                }
            }
        }
        let deadline = Instant::now()
            + cfg.ttl * 4
            + cfg.hold * (cfg.clients as u32 * 2)
            + Duration::from_secs(60);
        let code = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                use std::os::unix::process::ExitStatusExt;
                break st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                problems.push(format!("dlock {dlock_pid} did not finish in time"));
                break -1;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        *codes.entry(code).or_insert(0) += 1;
    }
    (codes, faults, problems)
}

/// Run the clients and check the log.
pub fn run(cfg: &Config) -> Report {
    run_in(cfg, None)
}

/// [`run`] in namespace `ns` (`DLOCK_NAMESPACE`), when given.
pub fn run_in(cfg: &Config, ns: Option<&str>) -> Report {
    std::fs::create_dir_all(&cfg.dir).expect("log dir");
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..cfg.clients)
            .map(|i| s.spawn(move || client(cfg, ns, i)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let mut report = Report::default();
    for (codes, faults, problems) in results {
        for (c, n) in codes {
            *report.exit_codes.entry(c).or_insert(0) += n;
        }
        for (f, n) in faults {
            *report.faults.entry(f).or_insert(0) += n;
        }
        report.unfinished.extend(problems);
    }
    check(cfg, &mut report);
    report
}

/// One child's section of the lock, from its log lines.
#[derive(Debug, Clone)]
struct Section {
    start: i128,
    end: Option<i128>,
    token: Option<u64>,
    pid: i32,
    shared: bool,
}

/// Read every client's log and look for overlaps and token disorder.
pub fn check(cfg: &Config, report: &mut Report) {
    let mut intervals: Vec<Section> = Vec::new();
    for i in 0..cfg.clients {
        let log = cfg.dir.join(format!("client-{i}.log"));
        for l in lines(&log) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 4 && f.len() != 5 {
                continue;
            }
            let pid: i32 = f[2].parse().unwrap_or(0);
            let t: i128 = f[3].parse().unwrap_or(0);
            match f[0] {
                "O" => report.overlaps.push(format!(
                    "child {pid} (token {}) began while every slot of the resource was locked by a child still running",
                    f[1]
                )),
                "B" => intervals.push(Section {
                    start: t,
                    end: None,
                    token: f[1].parse().ok(),
                    pid,
                    shared: f.get(4) == Some(&"S"),
                }),
                "E" | "K" => {
                    if let Some(iv) = intervals
                        .iter_mut()
                        .rev()
                        .find(|iv| iv.pid == pid && iv.end.is_none())
                    {
                        iv.end = Some(t);
                    }
                }
                _ => {}
            }
        }
    }
    report.intervals = intervals.len();
    // (time, +1 begin / -1 end, pid, shared)
    let mut events = Vec::new();
    for iv in &intervals {
        match iv.end {
            Some(end) => {
                events.push((iv.start, 1i32, iv.pid, iv.shared));
                events.push((end, -1, iv.pid, iv.shared));
            }
            None => report.unfinished.push(format!(
                "child {} (token {:?}) began but never ended",
                iv.pid, iv.token
            )),
        }
    }
    // At equal times, ends before begins: touching intervals do not overlap.
    events.sort_by_key(|e| (e.0, e.1));
    let (mut excl, mut shared) = (0usize, 0usize);
    for (t, d, pid, is_shared) in events {
        let n = if is_shared { &mut shared } else { &mut excl };
        if d < 0 {
            *n = n.saturating_sub(1);
            continue;
        }
        *n += 1;
        // An exclusive section beside a shared one, or more exclusive ones
        // than the limit: an overlap. Shared beside shared is the point.
        if (excl > 0 && shared > 0) || excl > cfg.limit as usize {
            report.overlaps.push(format!(
                "{excl} exclusive and {shared} shared children at once when child {pid} began at {t}"
            ));
        }
        report.max_concurrent = report.max_concurrent.max(excl + shared);
    }
    if cfg.limit == 1 {
        // A section that ended before another began has the smaller token,
        // where either is exclusive (two readers may start out of order).
        intervals.sort_by_key(|iv| iv.start);
        for (i, b) in intervals.iter().enumerate() {
            for a in &intervals[..i] {
                let before = a.end.is_some_and(|e| e <= b.start);
                if let (true, false, Some(ta), Some(tb)) =
                    (before, a.shared && b.shared, a.token, b.token)
                    && tb <= ta
                {
                    report
                        .token_errors
                        .push(format!("token {tb} began after token {ta} had ended"));
                }
            }
        }
    }
}

/// What the election mode measured after each fault.
#[derive(Debug, Default)]
pub struct ElectReport {
    /// Leader bodies checked, overlaps and unfinished bodies, as for `run`.
    pub check: Report,
    /// Per fault: its name, the time from the fault to the next leader's
    /// body starting, and the time without any leader body running.
    pub gaps: Vec<(String, Duration, Duration)>,
    /// Faults after which no new leader started in time.
    pub no_leader: Vec<String>,
}

impl ElectReport {
    pub fn ok(&self) -> bool {
        self.check.ok() && self.no_leader.is_empty()
    }

    /// The longest time without a leader after `fault`.
    pub fn worst(&self, fault: Fault) -> Option<Duration> {
        let name = format!("{fault:?}");
        self.gaps.iter().filter(|g| g.0 == name).map(|g| g.2).max()
    }
}

/// The last line of a log that begins a body still running: (pid, line).
fn running_body(log: &Path) -> Option<i32> {
    let l = lines(log);
    let last = l.last()?;
    let f: Vec<&str> = last.split_whitespace().collect();
    let pid = f.get(2)?.parse().ok()?;
    (f[0] == "B" && pid_alive(pid)).then_some(pid)
}

fn candidate(cfg: &Config, ns: Option<&str>, i: usize) -> std::process::Child {
    let log = cfg.dir.join(format!("client-{i}.log"));
    let script = format!(
        "{}echo \"B $DLOCK_TOKEN $$ $(date +%s%N)\" >> '{}'; exec sleep 100000",
        claim(cfg, &log, "X"),
        log.display()
    );
    Command::new(&cfg.dlock)
        .args([
            "--backend",
            &cfg.backend,
            "--quiet",
            "elect",
            "--key",
            &cfg.key,
        ])
        .args(["--ttl", &format!("{}ms", cfg.ttl.as_millis())])
        .args(["--restart", "always", "--restart-delay", "100ms"])
        .args(["--kill-after", "200ms", "--", "sh", "-c", &script])
        .env_remove("DLOCK_BACKEND")
        .envs(ns.map(|ns| ("DLOCK_NAMESPACE", ns)))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dlock elect")
}

/// Wait until `pid` is gone (bounded) and log its end in client `i`'s log.
fn note_end(cfg: &Config, i: usize, pid: i32, problems: &mut Vec<String>) -> i128 {
    let limit = Instant::now() + cfg.ttl * 3 + Duration::from_secs(10);
    let seen = now_ns();
    let (left, end) = gone_by(pid, started(pid), seen, limit);
    if let Some(state) = left {
        problems.push(format!(
            "leader body {pid} (state {state}) outlived its fault"
        ));
    }
    use std::io::Write;
    let log = cfg.dir.join(format!("client-{i}.log"));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(log)
        .expect("log");
    let _ = writeln!(f, "K - {pid} {end}");
    end
}

/// The election mode: `clients` candidates run `dlock elect --restart
/// always`; `runs` times, the leader is struck with the next of `faults`
/// (in turn), and the time until another leader's body starts is measured.
/// A killed or terminated candidate is started again, so the field stays
/// `clients` strong.
pub fn elect(cfg: &Config) -> ElectReport {
    elect_in(cfg, None)
}

/// [`elect`] in namespace `ns` (`DLOCK_NAMESPACE`), when given.
pub fn elect_in(cfg: &Config, ns: Option<&str>) -> ElectReport {
    std::fs::create_dir_all(&cfg.dir).expect("log dir");
    for i in 0..cfg.clients {
        std::fs::write(cfg.dir.join(format!("client-{i}.log")), "").expect("log");
    }
    let mut cands: Vec<std::process::Child> =
        (0..cfg.clients).map(|i| candidate(cfg, ns, i)).collect();
    let mut out = ElectReport::default();
    let mut problems = Vec::new();
    let faults = if cfg.faults.is_empty() {
        vec![Fault::KillDlock]
    } else {
        cfg.faults.clone()
    };
    let bound = cfg.ttl * 3 + Duration::from_secs(10);
    let leader = |cands: &[std::process::Child]| {
        (0..cands.len()).find_map(|i| {
            running_body(&cfg.dir.join(format!("client-{i}.log"))).map(|pid| (i, pid))
        })
    };
    for run in 0..cfg.runs {
        let fault = faults[run % faults.len()];
        let t0 = Instant::now();
        let found = loop {
            if let Some(l) = leader(&cands) {
                break Some(l);
            }
            if t0.elapsed() > bound {
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let Some((i, body)) = found else {
            out.no_leader.push(format!("no leader before fault {run}"));
            break;
        };
        // Let the term settle a little, as a real leader would run.
        std::thread::sleep(cfg.hold);
        let dpid = cands[i].id() as i32;
        let struck = Instant::now();
        match fault {
            Fault::KillDlock | Fault::None => kill(dpid, libc::SIGKILL),
            Fault::KillChild => kill(body, libc::SIGKILL),
            Fault::StopDlock => kill(dpid, libc::SIGSTOP),
            Fault::TermDlock => kill(dpid, libc::SIGTERM),
        }
        let ended = note_end(cfg, i, body, &mut problems);
        // The next leader: a body starting after the fault, anywhere.
        let next = loop {
            if let Some((_, pid)) = leader(&cands).filter(|l| l.1 != body) {
                break Some(pid);
            }
            if struck.elapsed() > bound {
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let started = now_ns();
        match next {
            Some(_) => out.gaps.push((
                format!("{fault:?}"),
                struck.elapsed(),
                Duration::from_nanos((started - ended).max(0) as u64),
            )),
            None => out.no_leader.push(format!("no new leader after {fault:?}")),
        }
        match fault {
            Fault::StopDlock => {
                let until = struck + cfg.ttl + Duration::from_millis(300);
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
                kill(dpid, libc::SIGCONT);
            }
            Fault::KillDlock | Fault::TermDlock | Fault::None => {
                let _ = cands[i].wait();
                cands[i] = candidate(cfg, ns, i);
            }
            Fault::KillChild => {}
        }
    }
    // Stop every candidate; the last leader's body ends with it.
    let last = leader(&cands);
    for c in &cands {
        kill(c.id() as i32, libc::SIGTERM);
    }
    if let Some((i, body)) = last {
        note_end(cfg, i, body, &mut problems);
    }
    for c in &mut cands {
        let _ = c.wait();
    }
    let mut check_cfg = cfg.clone();
    check_cfg.limit = 1;
    check(&check_cfg, &mut out.check);
    out.check.unfinished.extend(problems);
    out
}
