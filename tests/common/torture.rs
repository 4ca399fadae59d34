//! Fault injection: many `dlock run` clients contend for one key on any
//! backend while holders are SIGKILLed, their children SIGKILLed, or dlock
//! frozen with SIGSTOP past the TTL. Every child logs when it begins and
//! ends; the check proves that no more than `limit` children ever ran at
//! once and that fencing tokens rose in the order the holders began.
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
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s[s.rfind(')').unwrap_or(0) + 1..]
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
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
    let script = format!(
        "echo \"B $DLOCK_TOKEN $$ $(date +%s%N)\" >> '{log}'; sleep {hold}; echo \"E $DLOCK_TOKEN $$ $(date +%s%N)\" >> '{log}'",
        log = log.display(),
        hold = cfg.hold.as_secs_f64()
    );
    for _ in 0..cfg.runs {
        let fault = if !cfg.faults.is_empty() && rng.unit() < cfg.fault_rate {
            cfg.faults[(rng.next() % cfg.faults.len() as u64) as usize]
        } else {
            Fault::None
        };
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
            .args(["--kill-after", "200ms", "--", "sh", "-c", &script])
            .env_remove("DLOCK_BACKEND")
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
                match fault {
                    Fault::KillDlock => kill(dlock_pid, libc::SIGKILL),
                    Fault::KillChild => kill(cpid, libc::SIGKILL),
                    Fault::StopDlock => kill(dlock_pid, libc::SIGSTOP),
                    Fault::None => {}
                }
                let stop_until = Instant::now() + cfg.ttl + Duration::from_millis(300);
                // The child's end is the moment its process is gone.
                let limit = Instant::now() + cfg.ttl * 3 + Duration::from_secs(10);
                while pid_alive(cpid) && Instant::now() < limit {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let end = now_ns();
                if pid_alive(cpid) {
                    problems.push(format!(
                        "child {cpid} outlived fault {fault:?} by {:?}",
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
    std::fs::create_dir_all(&cfg.dir).expect("log dir");
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..cfg.clients)
            .map(|i| s.spawn(move || client(cfg, i)))
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

/// Read every client's log and look for overlaps and token disorder.
pub fn check(cfg: &Config, report: &mut Report) {
    // (start, end, token, pid)
    let mut intervals: Vec<(i128, Option<i128>, Option<u64>, i32)> = Vec::new();
    for i in 0..cfg.clients {
        let log = cfg.dir.join(format!("client-{i}.log"));
        for l in lines(&log) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 4 {
                continue;
            }
            let pid: i32 = f[2].parse().unwrap_or(0);
            let t: i128 = f[3].parse().unwrap_or(0);
            match f[0] {
                "B" => intervals.push((t, None, f[1].parse().ok(), pid)),
                "E" | "K" => {
                    if let Some(iv) = intervals
                        .iter_mut()
                        .rev()
                        .find(|iv| iv.3 == pid && iv.1.is_none())
                    {
                        iv.1 = Some(t);
                    }
                }
                _ => {}
            }
        }
    }
    report.intervals = intervals.len();
    let mut events = Vec::new();
    for iv in &intervals {
        match iv.1 {
            Some(end) => {
                events.push((iv.0, 1i32, iv.3));
                events.push((end, -1, iv.3));
            }
            None => report.unfinished.push(format!(
                "child {} (token {:?}) began but never ended",
                iv.3, iv.2
            )),
        }
    }
    // At equal times, ends before begins: touching intervals do not overlap.
    events.sort_by_key(|e| (e.0, e.1));
    let mut cur = 0usize;
    for (t, d, pid) in events {
        if d > 0 {
            cur += 1;
            if cur > cfg.limit as usize {
                report.overlaps.push(format!(
                    "{cur} children at once when child {pid} began at {t}"
                ));
            }
        } else {
            cur = cur.saturating_sub(1);
        }
        report.max_concurrent = report.max_concurrent.max(cur);
    }
    if cfg.limit == 1 {
        intervals.sort_by_key(|iv| iv.0);
        for w in intervals.windows(2) {
            if let (Some(a), Some(b)) = (w[0].2, w[1].2)
                && b <= a
            {
                report
                    .token_errors
                    .push(format!("token {b} began after token {a}"));
            }
        }
    }
}
