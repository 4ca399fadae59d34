//! Fault-injection run against any backend:
//!
//! ```text
//! cargo run --release --example torture -- --backend redis://127.0.0.1:6379 \
//!     --clients 8 --runs 20 --hold 20ms --ttl 2s --faults kill-dlock,kill-child,stop-dlock --rate 0.2
//! ```
//!
//! Exits 0 when no two children (more than --limit) ever ran at once and
//! fencing tokens rose in order; prints the overlaps and exits 1 otherwise.
//!
//! `--shared 0.7` takes 70% of the runs `--shared`: readers beside writers,
//! and an overlap is only an exclusive section meeting another.
//!
//! `--elect` is the election mode: `--clients` candidates run `dlock elect`,
//! and `--runs` times the leader is struck with the next of `--faults`
//! (kill-dlock, term-dlock, stop-dlock, kill-child); it prints the time
//! without a leader after each fault.

#[path = "../tests/common/torture.rs"]
mod torture;

use std::time::Duration;

use torture::{Config, Fault};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut election = false;
    let mut cfg = Config {
        dlock: std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.parent()?.parent()?.join("dlock")))
            .unwrap_or_else(|| "dlock".into()),
        backend: String::new(),
        key: format!("torture-{}", std::process::id()),
        clients: 8,
        runs: 20,
        hold: Duration::from_millis(20),
        ttl: Duration::from_secs(2),
        limit: 1,
        shared: 0.0,
        faults: vec![],
        fault_rate: 0.2,
        dir: std::env::temp_dir().join(format!("dlock-torture-{}", std::process::id())),
        seed: std::process::id() as u64,
    };
    let dur = |s: String| {
        humantime::parse_duration(&s).unwrap_or_else(|e| die(&format!("bad duration {s}: {e}")))
    };
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| die(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--dlock" => cfg.dlock = val().into(),
            "--backend" => cfg.backend = val(),
            "--key" => cfg.key = val(),
            "--clients" => cfg.clients = val().parse().unwrap_or_else(|_| die("bad --clients")),
            "--runs" => cfg.runs = val().parse().unwrap_or_else(|_| die("bad --runs")),
            "--limit" => cfg.limit = val().parse().unwrap_or_else(|_| die("bad --limit")),
            "--hold" => cfg.hold = dur(val()),
            "--shared" => {
                cfg.shared = val()
                    .parse()
                    .ok()
                    .filter(|p: &f64| (0.0..=1.0).contains(p))
                    .unwrap_or_else(|| die("bad --shared (a fraction from 0 to 1)"))
            }
            "--elect" => election = true,
            "--ttl" => cfg.ttl = dur(val()),
            "--rate" => cfg.fault_rate = val().parse().unwrap_or_else(|_| die("bad --rate")),
            "--seed" => cfg.seed = val().parse().unwrap_or_else(|_| die("bad --seed")),
            "--dir" => cfg.dir = val().into(),
            "--faults" => {
                cfg.faults = val()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|f| {
                        Fault::parse(f).unwrap_or_else(|| {
                            die(&format!(
                                "unknown fault {f} (kill-dlock, kill-child, stop-dlock, term-dlock)"
                            ))
                        })
                    })
                    .collect()
            }
            "-h" | "--help" => {
                println!(
                    "usage: torture --backend URL [--dlock PATH] [--key K] [--clients N] [--runs N] [--limit N]\n               [--hold D] [--ttl D] [--faults kill-dlock,kill-child,stop-dlock,term-dlock] [--rate P] [--seed N] [--dir DIR]\n               [--shared P] [--elect]"
                );
                return;
            }
            _ => die(&format!("unknown argument {a}")),
        }
    }
    if cfg.backend.is_empty() {
        die("--backend URL is required");
    }
    if election {
        let report = torture::elect(&cfg);
        for (fault, since_fault, leaderless) in &report.gaps {
            println!(
                "{fault:<10} next leader {:>8.3}s after the fault, {:>8.3}s without a leader",
                since_fault.as_secs_f64(),
                leaderless.as_secs_f64()
            );
        }
        println!("{:#?}", report.check);
        println!("logs in {}", cfg.dir.display());
        if !report.ok() {
            eprintln!("FAILED: {:?}", report.no_leader);
            std::process::exit(1);
        }
        return;
    }
    let report = torture::run(&cfg);
    println!("{report:#?}");
    println!("logs in {}", cfg.dir.display());
    if !report.ok() {
        eprintln!("FAILED: overlaps or unfinished children found");
        std::process::exit(1);
    }
}

fn die(msg: &str) -> ! {
    eprintln!("torture: {msg}");
    std::process::exit(64);
}
