//! The command line, as clap derive types. Doc comments here are the help
//! text, and `completions/` and `man/` are generated from this one source.
//!
//! Options that also come from the environment or the config file are
//! `Option`s without clap defaults, so [`crate::config`] can tell "not given"
//! from "given as the default" and apply flag > env > file > built-in.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod partial;

/// The part of the long help every command shares.
macro_rules! after_help_common {
    () => {
        "\
Backends (--backend URL):
  sqlite:PATH                     embedded default, no server
  redis://[user:pass@]host[:port][/db], several for Redlock; rediss:// (TLS),
    redis+sentinel://, redis+cluster://
  zk://host:port[,host:port...][/chroot][?recipe=kazoo]
  postgres://..., mysql://..., mariadb://
  etcd://host:port[,host:port...], etcds:// (TLS)
  s3://BUCKET[/PREFIX][?endpoint=URL&region=R]: S3 or an S3-compatible
    store (MinIO, SeaweedFS, R2); credentials from AWS_* or ~/.aws

Environment read by dlock:
  DLOCK_BACKEND, DLOCK_NAMESPACE, DLOCK_CONFIG, DLOCK_PROFILE,
  DLOCK_CONNECT_TIMEOUT, DLOCK_LOG_FORMAT, DLOCK_COLOR, DLOCK_METRICS_FILE;
  NO_COLOR; XDG_STATE_HOME and XDG_CONFIG_HOME (else HOME) for the defaults

Files:
  $XDG_CONFIG_HOME/dlock/config.toml (~/.config/dlock/config.toml), then
    /etc/dlock/config.toml: the config file, unless --config is given
  $XDG_STATE_HOME/dlock/locks.db (~/.local/state/dlock/locks.db): the
    default SQLite database, per user

Examples:
  dlock run --key nightly-report -- ./report.sh
  dlock run -n -E 0 --key backup -- ./backup.sh     # cron: skip if running
  dlock -b redis://locks:6379 run -w 5m --key deploy -- ./deploy.sh
  H=$(dlock acquire --key deploy --ttl 15m); ...; dlock release \"$H\"
  dlock status --json
  dlock man run | man -l -                           # read a man page"
    };
}

const AFTER_HELP: &str = concat!(
    "\
Exit status:
  0 or the child's own   success, or the status of CMD
  64    usage error (bad flag, duration, URL, key or handle)
  69    backend unavailable (refused, timed out, auth failed)
  70    internal error (a bug in dlock)
  74    the lease was lost while held
  75    not acquired: busy or waited too long (-E overrides)
  78    configuration file missing, unreadable or malformed
  126   CMD is not executable
  127   CMD was not found
  128+N CMD died of signal N, or dlock got signal N and SIGKILLed CMD
        when it had not stopped --kill-after later

Environment given to CMD:
  DLOCK_KEY, DLOCK_KEYS (one key per line), DLOCK_TOKEN (the fencing
  token), DLOCK_SLOT (the semaphore slot, 0 to --limit - 1; a mutex is
  0, a shared lock none), DLOCK_TTL (seconds), DLOCK_NAMESPACE

",
    after_help_common!()
);

/// `elect`'s: no -E, no 74 (a lost term campaigns again), DLOCK_VALUE.
const ELECT_AFTER_HELP: &str = concat!(
    "\
Exit status:
  0 or the child's own   CMD's status when it exits by itself and
        --restart does not campaign again, or after SIGINT/SIGTERM
  64    usage error (bad flag, duration, URL or key)
  69    backend unavailable before the first term (refused, timed out,
        auth failed); once connected, outages are ridden out
  70    internal error (a bug in dlock)
  75    the first campaign gave up: --wait passed, or -n and another leads
  78    configuration file missing, unreadable or malformed
  126   CMD is not executable (with --restart: 3 tries in a row)
  127   CMD was not found (with --restart: 3 tries in a row)
  128+N CMD died of signal N; or dlock got signal N while standing by,
        or passed it on and SIGKILLed CMD --kill-after later

Environment given to CMD:
  DLOCK_KEY, DLOCK_KEYS, DLOCK_TOKEN (the leadership term: greater for
  every new leader), DLOCK_TTL (seconds), DLOCK_NAMESPACE, DLOCK_VALUE
  (--value)

",
    after_help_common!()
);

/// Run a command under a distributed lock.
///
/// dlock takes a named lock with a time-to-live on a shared backend, runs a
/// command while it holds it, renews the lease while the command runs and
/// releases it when the command ends, crashes or is killed. If the lease is
/// lost, the command is stopped before anyone else can have the lock.
#[derive(Debug, Parser)]
#[command(name = "dlock", version, after_long_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Backend URL; several Redis URLs (comma-separated or repeated) mean Redlock.
    ///
    /// Default: sqlite:$XDG_STATE_HOME/dlock/locks.db (else ~/.local/state/dlock/locks.db).
    #[arg(
        long,
        short = 'b',
        global = true,
        env = "DLOCK_BACKEND",
        value_name = "URL"
    )]
    pub backend: Vec<String>,

    /// Namespace that every key lives under [default: dlock].
    #[arg(long, global = true, env = "DLOCK_NAMESPACE", value_name = "NAME")]
    pub namespace: Option<String>,

    /// Config file [default: $XDG_CONFIG_HOME/dlock/config.toml, then /etc/dlock/config.toml].
    #[arg(long, global = true, env = "DLOCK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Use the [profile.NAME] table of the config file.
    #[arg(long, global = true, env = "DLOCK_PROFILE", value_name = "NAME")]
    pub profile: Option<String>,

    /// Bound on connecting and on each request, and the longest outage a waiter rides out [default: 5s].
    ///
    /// It bounds connecting to the backend and each request. It is also the longest backend outage a waiter rides out (a server
    /// restarting, a cluster electing a leader): raise it to ride out longer
    /// ones, e.g. `--connect-timeout 30s` beside `--wait 60s`.
    #[arg(long, global = true, env = "DLOCK_CONNECT_TIMEOUT", value_name = "D", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,

    /// Log what dlock does on stderr (-v: events with timings, -vv: debug).
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Print nothing but errors.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,

    /// Format of log lines on stderr.
    #[arg(long, global = true, env = "DLOCK_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Colour in `status` and `doctor` output [default: auto: on a terminal, unless NO_COLOR is set].
    #[arg(long, global = true, env = "DLOCK_COLOR", value_name = "WHEN")]
    pub color: Option<ColorWhen>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Acquire the lock(s), run CMD as a child, release when it ends.
    #[command(after_long_help = AFTER_HELP)]
    Run(RunArgs),
    /// Acquire without a child; print a lease handle on stdout.
    Acquire(AcquireArgs),
    /// Extend a lease by its handle.
    Renew(RenewArgs),
    /// Release a lease by its handle, or break a key's lock with --force.
    Release(ReleaseArgs),
    /// Leader election: run CMD only while leader of KEY, stand by otherwise.
    ///
    /// Every candidate runs the same `dlock elect`; one runs CMD, the others
    /// stand by, and one of them takes over when the leader goes away. CMD is
    /// supervised exactly as by `run`; DLOCK_TOKEN (the fencing token) is the
    /// leadership term and rises with every new leader. Losing leadership
    /// stops CMD and campaigns again; it never ends dlock. When CMD exits by
    /// itself leadership is given up at once and --restart decides what
    /// follows. SIGINT/SIGTERM: forwarded to CMD while leader, then dlock
    /// resigns and exits with CMD's status (128+N while standing by).
    #[command(after_long_help = ELECT_AFTER_HELP)]
    Elect(ElectArgs),
    /// Print the current leader of KEY (see `elect`); exit 75 if there is none.
    Leader(LeaderArgs),
    /// Show who holds which lock.
    Status(StatusArgs),
    /// Connect to the backend and print its kind, version and round-trip time.
    Ping,
    /// Check the backend for what would make locks unsafe or slow, and say how to fix it.
    ///
    /// Checks every server of a Redlock set or cluster, the round-trip time
    /// against the TTL, this host's clock against the server's, persistence
    /// of Redis servers and databases, the database role's rights on the lock
    /// tables, a ZooKeeper session timeout the server clamps, and an SQLite
    /// file on a network filesystem. Exits 0 when nothing is wrong
    /// (warnings allowed unless --strict), 1 when something is, 69 when no
    /// server answers.
    Doctor(DoctorArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (of a subcommand, if named) as roff: `dlock man run | man -l -`.
    Man {
        /// Subcommand whose page to print.
        subcommand: Option<String>,
    },
}

/// Options shared by everything that takes a lock.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// Lock name; repeat for several locks, taken all or nothing in sorted order.
    #[arg(long, short = 'k', required = true, value_name = "KEY")]
    pub key: Vec<String>,

    /// Lease length, renewed about every third of it while CMD runs [default: 30s].
    #[arg(long, short = 't', value_name = "D", value_parser = parse_duration)]
    pub ttl: Option<Duration>,

    /// Give up after waiting D for the lock [default: wait as long as it takes].
    #[arg(long, short = 'w', value_name = "D", value_parser = parse_duration, conflicts_with = "no_wait")]
    pub wait: Option<Duration>,

    /// Give up at once if the lock is held.
    #[arg(long, short = 'n')]
    pub no_wait: bool,

    /// Exit code when the lock is not acquired [default: 75].
    #[arg(long, short = 'E', value_name = "CODE", value_parser = clap::value_parser!(i32).range(0..=255))]
    pub conflict_exit_code: Option<i32>,

    /// Semaphore: at most N holders of each key at once [default: 1].
    #[arg(long, short = 'l', value_name = "N")]
    pub limit: Option<u32>,

    /// Take the lock shared, as `flock -s`: beside any number of other
    /// shared holders, never beside an exclusive one.
    ///
    /// An exclusive request (the default) that waits is served before
    /// shared requests that come after it, so readers never starve a
    /// writer. With several keys, every key is taken shared.
    #[arg(long, short = 's')]
    pub shared: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub lock: LockArgs,

    /// Run CMD through /bin/sh -c (its words joined by spaces).
    #[arg(long, short = 'c')]
    pub shell: bool,

    /// How long CMD gets to stop before SIGKILL [default: 10s].
    ///
    /// Counted from the stop signal on a lost lease, and from an INT, TERM,
    /// HUP or QUIT passed on to CMD (then dlock exits 128+N for the signal
    /// it got). When a loss is foreseen (renewals failing), the stop signal
    /// is sent early enough that the SIGKILL lands before the lease can
    /// expire on the server.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub kill_after: Option<Duration>,

    /// The signal dlock sends CMD's process group when it must stop it itself (lease lost) [default: TERM].
    ///
    /// A name (TERM, INT, QUIT, HUP, USR1, ...; with or without SIG) or a
    /// number. For services that stop gracefully only on another signal
    /// (nginx: QUIT).
    #[arg(long, value_name = "SIG", value_parser = crate::supervise::parse_signal)]
    pub stop_signal: Option<nix::sys::signal::Signal>,

    /// What to do when the lease is lost while CMD runs [default: kill].
    #[arg(long, value_name = "ACTION")]
    pub on_lost: Option<OnLost>,

    /// Keep the lock until D after it was taken, even if CMD ends sooner.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub lock_at_least: Option<Duration>,

    /// Write Prometheus metrics of this run to FILE when it ends (atomically).
    ///
    /// In the node_exporter textfile-collector format: seconds waited and
    /// held, the outcome, the exit code, the fencing token and the time of
    /// the last success, labelled by key. Use one file per job.
    #[arg(long, value_name = "FILE", env = "DLOCK_METRICS_FILE")]
    pub metrics_file: Option<PathBuf>,

    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct ElectArgs {
    /// The election's name: a lock key, shared with `run` on the same key.
    #[arg(long, short = 'k', value_name = "KEY")]
    pub key: String,

    /// Lease length, renewed about every third of it while leader [default: 30s].
    ///
    /// A leader that dies without resigning is replaced within about this long.
    #[arg(long, short = 't', value_name = "D", value_parser = parse_duration)]
    pub ttl: Option<Duration>,

    /// Give up the first campaign after D (exit 75) [default: wait as long as it takes].
    #[arg(long, short = 'w', value_name = "D", value_parser = parse_duration, conflicts_with = "no_wait")]
    pub wait: Option<Duration>,

    /// Give up at once (exit 75) if another candidate leads.
    #[arg(long, short = 'n')]
    pub no_wait: bool,

    /// What this candidate says about itself while leader [default: USER@HOST pid PID].
    ///
    /// Published with the leadership: `dlock leader` prints it, and `status`
    /// shows the holder as `USER (V)@HOST` (it travels in the owner field
    /// every backend stores; `|` and control characters become `_`, and it
    /// is cut at 200 characters). CMD gets it unchanged as DLOCK_VALUE.
    #[arg(long, value_name = "V")]
    pub value: Option<String>,

    /// After CMD exits by itself: exit with its status (never), campaign again unless it succeeded (on-failure), or campaign again (always).
    #[arg(long, value_name = "WHEN", default_value = "never")]
    pub restart: Restart,

    /// How long to stand aside before campaigning again after CMD exited.
    ///
    /// Doubled after each failure in a row of a CMD that ran less than 10s
    /// (up to 1m, or D if longer). A CMD that cannot be run (126, 127) three
    /// times in a row is given up: dlock exits with that status.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "1s")]
    pub restart_delay: Duration,

    /// How long CMD gets to stop before SIGKILL [default: 10s].
    ///
    /// Counted from the stop signal on lost leadership, and from an INT,
    /// TERM, HUP or QUIT passed on to CMD (then dlock exits 128+N for the
    /// signal it got).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub kill_after: Option<Duration>,

    /// The signal dlock sends CMD's process group when it must stop it itself (leadership lost) [default: TERM].
    ///
    /// A name (TERM, INT, QUIT, HUP, USR1, ...; with or without SIG) or a
    /// number. For services that stop gracefully only on another signal
    /// (nginx: QUIT).
    #[arg(long, value_name = "SIG", value_parser = crate::supervise::parse_signal)]
    pub stop_signal: Option<nix::sys::signal::Signal>,

    /// Run CMD through /bin/sh -c (its words joined by spaces).
    #[arg(long, short = 'c')]
    pub shell: bool,

    /// Keep Prometheus metrics of this candidate's leadership in FILE (atomically).
    ///
    /// Rewritten at each change: whether it leads now, terms won, seconds as
    /// leader, the latest term's token and when the current term began,
    /// labelled by key. node_exporter textfile-collector format.
    #[arg(long, value_name = "FILE", env = "DLOCK_METRICS_FILE")]
    pub metrics_file: Option<PathBuf>,

    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct LeaderArgs {
    /// The election's key.
    pub key: String,

    /// Print JSON: {"key", "value", "token", "since"}, or null when there is no leader.
    #[arg(long)]
    pub json: bool,

    /// Print a line at each change of leader until interrupted.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Restart {
    /// Exit with CMD's status.
    Never,
    /// Campaign again if CMD failed; exit 0 if it succeeded.
    OnFailure,
    /// Always campaign again.
    Always,
}

#[derive(Debug, Args)]
#[command(mut_arg("ttl", |a| a.help(
    "Lease length [default: 30s]; nothing renews it: it ends after D unless `dlock renew` extends it"
)))]
pub struct AcquireArgs {
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The handle printed by `dlock acquire`.
    pub handle: String,

    /// New lease length, from now [default: the TTL it was acquired with].
    #[arg(long, short = 't', value_name = "D", value_parser = parse_duration)]
    pub ttl: Option<Duration>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["handle", "key"]))]
pub struct ReleaseArgs {
    /// The handle printed by `dlock acquire`.
    pub handle: Option<String>,

    /// With --force: the key whose holders to evict.
    #[arg(
        long,
        short = 'k',
        value_name = "KEY",
        requires = "force",
        conflicts_with = "handle"
    )]
    pub key: Vec<String>,

    /// Break the lock whoever holds it (administrator's tool).
    #[arg(long)]
    pub force: bool,

    /// Exit 0 when the handle holds nothing any more (already released,
    /// expired or broken): an idempotent release for cleanup steps.
    #[arg(long, requires = "handle", conflicts_with = "force")]
    pub if_held: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Keys to show [default: every held lock in the namespace].
    pub keys: Vec<String>,

    /// Print a JSON array, one object per key.
    #[arg(long)]
    pub json: bool,

    /// Refresh every D (default 2s) until interrupted; with --json, one array per line.
    #[arg(long, value_name = "D", value_parser = parse_duration, num_args = 0..=1, default_missing_value = "2s")]
    pub watch: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The TTL you mean to use, to judge round-trip times and clamping against [default: 30s].
    #[arg(long, short = 't', value_name = "D", value_parser = parse_duration)]
    pub ttl: Option<Duration>,

    /// The largest clock difference with the server that passes [default: 1s].
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub max_skew: Option<Duration>,

    /// Count warnings as failures too.
    #[arg(long)]
    pub strict: bool,

    /// Print a JSON object (backend, ttl_seconds, checks) instead of lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnLost {
    /// Send the stop signal to the child's process group, SIGKILL after --kill-after, exit 74.
    Kill,
    /// Only warn on stderr; the child runs on, and dlock exits with its status.
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColorWhen {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parse the command line as [`Cli::try_parse_from`] does, after two
/// fixes: `status --watch KEY` (a value that is no duration) is `--watch`
/// with its default period and the key, and a usage error gets a better
/// tip where clap's would mislead: the nearest flag for a misspelt one
/// (clap suggests `-- --kye` where CMD follows `--`), and `--` before the
/// command for `run --key K CMD` written as for `flock`. `Err` holds
/// clap's error and, where there is one, the text to print instead.
///
/// A command line that names a subcommand is first parsed with a tree of
/// that subcommand alone ([`partial`]), which costs a fraction of the whole;
/// whatever that does not parse goes through the whole tree as before.
pub fn parse(args: Vec<OsString>) -> Result<Cli, (clap::Error, Option<String>)> {
    let args = watch_takes_no_key(args);
    if let Some(cli) = partial::parse(&args) {
        return Ok(cli);
    }
    // Not `Cli::try_parse_from`: it drops the command line's definition at
    // the end, whose tree of subcommands and flags costs as much to free
    // as to build, and the process ends soon after.
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let parsed = cmd.try_get_matches_from_mut(&args);
    std::mem::forget(cmd);
    parsed
        .and_then(|mut m| {
            <Cli as clap::FromArgMatches>::from_arg_matches_mut(&mut m)
                .map_err(|e| e.format(&mut <Cli as clap::CommandFactory>::command()))
        })
        .map_err(|e| {
            let better = better_tip(&e, &args);
            (e, better)
        })
}

/// `status --watch deploy`: `deploy` is a key, not a period.
fn watch_takes_no_key(mut args: Vec<OsString>) -> Vec<OsString> {
    let Some(sub) = args.iter().position(|a| a == "status") else {
        return args;
    };
    let mut i = sub + 1;
    while i + 1 < args.len() {
        if args[i] == "--" {
            break;
        }
        if args[i] == "--watch"
            && let Some(next) = args[i + 1].to_str()
            && !next.starts_with('-')
            && parse_duration(next).is_err()
        {
            args[i] = "--watch=2s".into();
        }
        i += 1;
    }
    args
}

/// Edit distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn better_tip(e: &clap::Error, args: &[OsString]) -> Option<String> {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(bad)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let root = Cli::command();
    let words: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let sub = words
        .iter()
        .take_while(|w| *w != "--")
        .find_map(|w| root.find_subcommand(w));
    let name = sub.map_or("dlock".to_string(), |s| format!("dlock {}", s.get_name()));
    let usage = match sub {
        Some(s) => format!(
            "Usage: dlock {} {}",
            s.get_name(),
            s.clone()
                .render_usage()
                .to_string()
                .trim_start_matches("Usage: ")
                .trim_start_matches(s.get_name())
                .trim()
        ),
        None => root.clone().render_usage().to_string(),
    };
    let head = format!("error: unexpected argument '{bad}' found\n\n");
    let tail = format!("\n\n{usage}\n\nFor more information, try '{name} --help'.\n");
    if let Some(flag) = bad.strip_prefix("--") {
        let flag = flag.split('=').next().unwrap_or(flag);
        let longs = sub
            .into_iter()
            .flat_map(|s| s.get_arguments())
            .chain(root.get_arguments())
            .filter_map(|a| a.get_long());
        let (best, d) = longs
            .map(|l| (l, distance(flag, l)))
            .min_by_key(|(_, d)| *d)
            .unwrap_or(("", usize::MAX));
        if d <= 2.max(flag.len() / 3) {
            return Some(format!("{head}  tip: did you mean '--{best}'?{tail}"));
        }
        return Some(format!(
            "{head}  tip: '{name} --help' lists its options; the command's own go after `--`{tail}"
        ));
    }
    // A word where `run` and `elect` want `--` before the command.
    let takes_cmd = sub.is_some_and(|s| s.get_name() == "run" || s.get_name() == "elect");
    if takes_cmd && !bad.starts_with('-') && !words.iter().any(|w| w == "--") {
        let at = words.iter().position(|w| w == bad)?;
        let mut fixed: Vec<String> = words.iter().map(|w| shell_word(w)).collect();
        fixed.insert(at, "--".to_string());
        let keyed = words[..at]
            .iter()
            .any(|w| w == "--key" || w.starts_with("--key=") || w.starts_with("-k"));
        if !keyed {
            fixed.insert(at, "--key KEY".to_string());
        }
        return Some(format!(
            "{head}  tip: put `--` before the command to run: dlock {}{tail}",
            fixed.join(" ")
        ));
    }
    None
}

/// `w` as a shell would need it written, for a tip to copy.
fn shell_word(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=./:,@%+".contains(c))
    {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// A humantime duration (`500ms`, `30s`, `1h 30m`), or a bare number of
/// seconds (`10`, `0.5`) as `flock -w` takes it.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| {
            format!("invalid duration {s:?}: must be a non-negative number of seconds")
        });
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("invalid duration {s:?}: {e} (try 500ms, 30s, 5m, 1h 30m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
