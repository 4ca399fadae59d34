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

const AFTER_HELP: &str = "\
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
  128+N CMD died of signal N

Environment given to CMD:
  DLOCK_KEY, DLOCK_KEYS (one key per line), DLOCK_TOKEN (the fencing
  token), DLOCK_TTL (seconds), DLOCK_NAMESPACE

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
  dlock man run | man -l -                           # read a man page";

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

    /// Bound on connecting to the backend and on each request [default: 5s].
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
    #[command(after_long_help = AFTER_HELP)]
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

    /// After SIGTERM on a lost lease, wait this long before SIGKILL [default: 10s].
    ///
    /// When the loss is foreseen (renewals failing), the SIGTERM is sent early
    /// enough that the SIGKILL lands before the lease can expire on the server.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub kill_after: Option<Duration>,

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
    #[arg(long, short = 'w', value_name = "D", value_parser = parse_duration)]
    pub wait: Option<Duration>,

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
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "1s")]
    pub restart_delay: Duration,

    /// After SIGTERM on lost leadership, wait this long before SIGKILL [default: 10s].
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub kill_after: Option<Duration>,

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
    /// SIGTERM the child's process group, SIGKILL after --kill-after, exit 74.
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
