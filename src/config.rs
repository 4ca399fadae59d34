//! Flags, `DLOCK_*` environment variables and the config file, merged into
//! one validated [`Settings`].
//!
//! Precedence is flag > environment > config file ([profile.NAME] over the
//! top level) > built-in default. clap already folds the environment into the
//! flags, so here it is "what clap gave" > file > default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Deserializer};

use crate::cli::{ColorWhen, GlobalArgs, LockArgs, LogFormat, OnLost, RunArgs};
use crate::error::{Error, usage};
use crate::exit_code;

pub const DEFAULT_NAMESPACE: &str = "dlock";
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_KILL_AFTER: Duration = Duration::from_secs(10);
/// Keys longer than this are refused: they would not fit the SQL layouts and
/// are almost certainly a mistake (a whole command line used as a key).
pub const MAX_KEY_LEN: usize = 512;
/// What dlock names beside a key's lock: on ZooKeeper the slot claims of a
/// semaphore `KEY` are the nodes `/NAMESPACE/KEY@slots/S`, beside the lock
/// directory `/NAMESPACE/KEY`. A key with a part (between slashes) that
/// ends in it would be another key's claims, so it is refused.
pub const SLOTS_SUFFIX: &str = "@slots";

/// The config file's keys are the long flag names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    backend: Option<OneOrMany>,
    namespace: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    ttl: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    wait: Option<Duration>,
    no_wait: Option<bool>,
    conflict_exit_code: Option<u8>,
    limit: Option<u32>,
    shared: Option<bool>,
    #[serde(default, deserialize_with = "de_duration")]
    kill_after: Option<Duration>,
    on_lost: Option<OnLost>,
    #[serde(default, deserialize_with = "de_signal")]
    stop_signal: Option<nix::sys::signal::Signal>,
    #[serde(default, deserialize_with = "de_duration")]
    lock_at_least: Option<Duration>,
    shell: Option<bool>,
    log_format: Option<LogFormat>,
    color: Option<ColorWhen>,
    metrics_file: Option<PathBuf>,
    #[serde(default)]
    profile: BTreeMap<String, FileConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(f64),
        Text(String),
    }
    let parsed = match Raw::deserialize(d)? {
        Raw::Secs(s) => crate::cli::parse_duration(&s.to_string()),
        Raw::Text(t) => crate::cli::parse_duration(&t),
    };
    parsed.map(Some).map_err(serde::de::Error::custom)
}

fn de_signal<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<nix::sys::signal::Signal>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(i64),
        Name(String),
    }
    let parsed = match Raw::deserialize(d)? {
        Raw::Number(n) => crate::supervise::parse_signal(&n.to_string()),
        Raw::Name(t) => crate::supervise::parse_signal(&t),
    };
    parsed.map(Some).map_err(serde::de::Error::custom)
}

impl FileConfig {
    /// Lay `over` on top of `self`: every key `over` sets wins.
    fn overlay(self, over: FileConfig) -> FileConfig {
        FileConfig {
            backend: over.backend.or(self.backend),
            namespace: over.namespace.or(self.namespace),
            connect_timeout: over.connect_timeout.or(self.connect_timeout),
            ttl: over.ttl.or(self.ttl),
            wait: over.wait.or(self.wait),
            no_wait: over.no_wait.or(self.no_wait),
            conflict_exit_code: over.conflict_exit_code.or(self.conflict_exit_code),
            limit: over.limit.or(self.limit),
            shared: over.shared.or(self.shared),
            kill_after: over.kill_after.or(self.kill_after),
            on_lost: over.on_lost.or(self.on_lost),
            stop_signal: over.stop_signal.or(self.stop_signal),
            lock_at_least: over.lock_at_least.or(self.lock_at_least),
            shell: over.shell.or(self.shell),
            log_format: over.log_format.or(self.log_format),
            color: over.color.or(self.color),
            metrics_file: over.metrics_file.or(self.metrics_file),
            profile: BTreeMap::new(),
        }
    }
}

/// How long to wait for a busy lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Forever,
    No,
    For(Duration),
}

/// Everything the commands need, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub backends: Vec<String>,
    pub namespace: String,
    pub connect_timeout: Duration,
    pub log_format: LogFormat,
    pub verbose: u8,
    pub quiet: bool,
    /// Whether `status` and `doctor` colour their output on stdout.
    pub color: bool,
    file: std::sync::Arc<FileConfig>,
    /// How the backend names locks, for the names it cannot store.
    layout: Layout,
}

/// How a backend turns a namespace and a key into the name of a lock, as
/// far as the names it can store go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `NAMESPACE:KEY`, and `{NAMESPACE:KEY}:...` beside it.
    Redis,
    /// `NAMESPACE/KEY/<lease>`.
    Etcd,
    /// The path `/NAMESPACE/KEY`.
    ZooKeeper,
    /// The object `[PREFIX/]NAMESPACE/KEY.lock`.
    S3,
    /// Namespace and key in columns of their own (SQLite, SQL).
    Columns,
}

impl Layout {
    fn of(url: &str) -> Layout {
        use crate::backend::registry::Service;
        match Service::of(url) {
            Some(Service::Redis) => Layout::Redis,
            Some(Service::Etcd) => Layout::Etcd,
            Some(Service::ZooKeeper) => Layout::ZooKeeper,
            Some(Service::S3) => Layout::S3,
            Some(Service::Sqlite | Service::Postgres | Service::MySql) | None => Layout::Columns,
        }
    }

    /// A namespace must not hold the layout's separators: namespace `a:x`
    /// with key `y` would otherwise be the same lock as namespace `a` with
    /// key `x:y`.
    fn check_namespace(self, ns: &str) -> Result<()> {
        let (service, layout, seps): (&str, &str, &[char]) = match self {
            Layout::Redis => ("Redis", "NAMESPACE:KEY", &[':', '{', '}']),
            Layout::Etcd => ("etcd", "NAMESPACE/KEY/", &['/']),
            Layout::ZooKeeper => ("ZooKeeper", "/NAMESPACE/KEY", &['/']),
            Layout::S3 => ("S3", "NAMESPACE/KEY.lock", &['/']),
            Layout::Columns => return Ok(()),
        };
        if let Some(c) = ns.chars().find(|c| seps.contains(c)) {
            let list = seps
                .iter()
                .map(|c| format!("'{c}'"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(usage(format!(
                "namespace {ns:?} contains {c:?}: on {service} a lock is named {layout}, so a namespace \
                 may not contain {list} (namespace \"a{c}x\" with key \"y\" would be the same lock as \
                 namespace \"a\" with key \"x{c}y\"); use '-', '.' or '_' instead"
            )));
        }
        if self == Layout::ZooKeeper {
            if ns == "zookeeper" {
                return Err(usage(
                    "namespace \"zookeeper\" is reserved by ZooKeeper (/zookeeper); choose another",
                ));
            }
            zk_chars("namespace", ns)?;
        }
        Ok(())
    }

    /// A key the backend cannot store is refused before connecting (64)
    /// rather than failing on the server.
    fn check_key(self, key: &str) -> Result<()> {
        if self == Layout::S3 {
            // Stores with directories (SeaweedFS) would fold `a//b` into
            // `a/b`, or `a/./b` into `a/b`: two keys, one lock.
            if key
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
            {
                return Err(usage(format!(
                    "key {key:?} is not a usable S3 object name: the lock is the object \
                     NAMESPACE/KEY.lock, so a key may not start or end with '/' or hold \"//\", \
                     and no part between slashes may be '.' or '..'"
                )));
            }
            return Ok(());
        }
        if self != Layout::ZooKeeper {
            return Ok(());
        }
        if key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Err(usage(format!(
                "key {key:?} is not a usable ZooKeeper path: the lock is the node \
                 /NAMESPACE/KEY, so a key may not start or end with '/' or hold \"//\", \
                 and no part between slashes may be '.' or '..'"
            )));
        }
        zk_chars("key", key)
    }
}

/// ZooKeeper refuses these characters in a path (its PathUtils): UTF-16
/// surrogates, so anything beyond U+FFFF such as emoji, private-use
/// characters U+E000 to U+F8FF, and U+FFF0 to U+FFFF. Control characters are
/// refused for every backend already.
fn zk_chars(what: &str, s: &str) -> Result<()> {
    let bad = |c: char| {
        let u = c as u32;
        u > 0xFFFF || (0xE000..=0xF8FF).contains(&u) || u >= 0xFFF0
    };
    if let Some(c) = s.chars().find(|c| bad(*c)) {
        return Err(usage(format!(
            "{what} {s:?} cannot be stored on ZooKeeper: {c:?} (U+{:04X}) is not allowed in a \
             ZooKeeper path, which takes no characters beyond U+FFFF (emoji among them), \
             U+E000 to U+F8FF or U+FFF0 to U+FFFF",
            c as u32
        )));
    }
    Ok(())
}

/// The lock-taking part of the settings.
#[derive(Debug, Clone)]
pub struct LockSettings {
    pub keys: Vec<String>,
    pub ttl: Duration,
    pub wait: Wait,
    pub conflict_exit_code: i32,
    pub limit: u32,
    /// Every key taken shared (`--shared`).
    pub shared: bool,
}

/// The `run`-only part of the settings.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub kill_after: Duration,
    pub on_lost: OnLost,
    /// `--stop-signal`.
    pub stop_signal: nix::sys::signal::Signal,
    pub lock_at_least: Option<Duration>,
    pub shell: bool,
    pub metrics_file: Option<PathBuf>,
}

impl Settings {
    pub fn resolve(g: &GlobalArgs) -> Result<Settings> {
        let file = load_file(g.config.as_deref(), g.profile.as_deref())?;
        let backends = if g.backend.is_empty() {
            match &file.backend {
                Some(OneOrMany::One(s)) => vec![s.clone()],
                Some(OneOrMany::Many(v)) => v.clone(),
                None => vec![default_backend()?],
            }
        } else {
            g.backend.clone()
        };
        let backends = split_backends(&backends);
        if backends.is_empty() {
            return Err(usage("no backend URL given"));
        }
        for b in &backends {
            redlock_short_form(b)?;
        }
        let namespace = g
            .namespace
            .clone()
            .or_else(|| file.namespace.clone())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        validate_name("namespace", &namespace)?;
        let layout = Layout::of(&backends[0]);
        layout.check_namespace(&namespace)?;
        let connect_timeout = g
            .connect_timeout
            .or(file.connect_timeout)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        if connect_timeout.is_zero() {
            return Err(usage("--connect-timeout must be greater than zero"));
        }
        Ok(Settings {
            backends,
            namespace,
            connect_timeout,
            log_format: g.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
            verbose: g.verbose,
            quiet: g.quiet,
            color: match g.color.or(file.color).unwrap_or(ColorWhen::Auto) {
                ColorWhen::Always => true,
                ColorWhen::Never => false,
                ColorWhen::Auto => {
                    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                        && std::io::IsTerminal::is_terminal(&std::io::stdout())
                }
            },
            file: std::sync::Arc::new(file),
            layout,
        })
    }

    /// A key as [`validate_name`] checks it, and one the backend can store.
    pub fn validate_key(&self, key: &str) -> Result<()> {
        validate_name("key", key)?;
        // On every backend, so that a key means the same lock on each.
        if key.split('/').any(|part| part.ends_with(SLOTS_SUFFIX)) {
            return Err(usage(format!(
                "key {key:?} is reserved: dlock keeps the names ending in {SLOTS_SUFFIX:?} for \
                 the slots of a semaphore (on ZooKeeper, /NAMESPACE/KEY{SLOTS_SUFFIX} holds the \
                 slot claims of key KEY), so no part of a key between slashes may end in it; \
                 choose another name (\"-slots\", say)"
            )));
        }
        self.layout.check_key(key)
    }

    /// The backend URLs, passwords removed, for messages.
    pub fn shown_backends(&self) -> String {
        self.backends
            .iter()
            .map(|u| crate::backend::redact_url(u))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The TTL: the flag's, else the config file's, else the default; at
    /// least 100ms.
    pub fn ttl(&self, flag: Option<Duration>) -> Result<Duration> {
        let ttl = flag.or(self.file.ttl).unwrap_or(DEFAULT_TTL);
        if ttl < Duration::from_millis(100) {
            return Err(usage(format!(
                "--ttl {} is too short: a lease must last at least 100ms to be renewed in time",
                humantime::format_duration(ttl)
            )));
        }
        Ok(ttl)
    }

    /// The lock of a command that runs a child (`run`, `elect`): its keys
    /// must fit the child's environment, where `DLOCK_KEY` and `DLOCK_KEYS`
    /// name them all. The kernel takes at most 128 KiB per variable
    /// (MAX_ARG_STRLEN): refused here, before any lock is taken, rather
    /// than every lock taken and the command failing with 126.
    pub fn child_lock(&self, a: &LockArgs) -> Result<LockSettings> {
        let lock = self.lock(a)?;
        // "DLOCK_KEYS=" + the keys one per line + the NUL.
        let len = "DLOCK_KEYS=".len() + lock.keys.iter().map(|k| k.len() + 1).sum::<usize>();
        const MAX_ARG_STRLEN: usize = 32 * 4096;
        if len > MAX_ARG_STRLEN {
            return Err(usage(format!(
                "{} keys take {len} bytes in the command's DLOCK_KEY and DLOCK_KEYS variables, \
                 more than the {} KiB the kernel allows one environment variable; lock fewer \
                 keys (or a key that stands for the set)",
                lock.keys.len(),
                MAX_ARG_STRLEN / 1024
            )));
        }
        Ok(lock)
    }

    pub fn lock(&self, a: &LockArgs) -> Result<LockSettings> {
        let f = &self.file;
        let mut keys = a.key.clone();
        for k in &keys {
            self.validate_key(k)?;
        }
        // One canonical order, so two runs naming the same keys in another
        // order never wait on each other crosswise.
        keys.sort();
        keys.dedup();
        let ttl = self.ttl(a.ttl)?;
        let wait = if a.no_wait {
            Wait::No
        } else if let Some(d) = a.wait {
            if d.is_zero() { Wait::No } else { Wait::For(d) }
        } else if f.no_wait == Some(true) {
            Wait::No
        } else if let Some(d) = f.wait {
            if d.is_zero() { Wait::No } else { Wait::For(d) }
        } else {
            Wait::Forever
        };
        let limit = a.limit.or(f.limit).unwrap_or(1);
        if limit == 0 {
            return Err(usage("--limit must be at least 1"));
        }
        let shared = a.shared || f.shared == Some(true);
        if shared && limit > 1 {
            return Err(usage(format!(
                "--shared with --limit {limit}: a shared lock has no limit (any number of \
                 shared holders at once), and a semaphore already is \"N at once\"; use one or the other"
            )));
        }
        Ok(LockSettings {
            keys,
            ttl,
            wait,
            conflict_exit_code: a
                .conflict_exit_code
                .or(f.conflict_exit_code.map(i32::from))
                .unwrap_or(exit_code::BUSY),
            limit,
            shared,
        })
    }

    pub fn run(&self, a: &RunArgs) -> Result<RunSettings> {
        let f = &self.file;
        Ok(RunSettings {
            kill_after: a.kill_after.or(f.kill_after).unwrap_or(DEFAULT_KILL_AFTER),
            on_lost: a.on_lost.or(f.on_lost).unwrap_or(OnLost::Kill),
            stop_signal: a
                .stop_signal
                .or(f.stop_signal)
                .unwrap_or(nix::sys::signal::Signal::SIGTERM),
            lock_at_least: a.lock_at_least.or(f.lock_at_least),
            shell: a.shell || f.shell == Some(true),
            metrics_file: a.metrics_file.clone().or(f.metrics_file.clone()),
        })
    }
}

pub fn validate_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(usage(format!("{what} must not be empty")));
    }
    if s.len() > MAX_KEY_LEN {
        return Err(usage(format!(
            "{what} is {} bytes long; the limit is {MAX_KEY_LEN}",
            s.len()
        )));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(usage(format!("{what} {s:?} contains control characters")));
    }
    Ok(())
}

/// `--backend a,b` and repeated `--backend` both give a list; a comma only
/// separates URLs when a scheme follows it, because ZooKeeper and etcd URLs
/// list several hosts with commas inside one URL.
fn split_backends(raw: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for s in raw {
        let mut cur = String::new();
        for part in s.split(',') {
            if !cur.is_empty() && starts_with_scheme(part.trim_start()) {
                out.push(std::mem::take(&mut cur));
            } else if !cur.is_empty() {
                cur.push(',');
            }
            cur.push_str(if cur.is_empty() {
                part.trim_start()
            } else {
                part
            });
        }
        if !cur.trim().is_empty() {
            out.push(cur.trim().to_string());
        }
    }
    out
}

/// The service a backend URL names, for messages.
pub fn service_of(url: &str) -> &'static str {
    crate::backend::registry::Service::of(url).map_or("unknown", |s| s.name())
}

/// `redis://h:1,h:2` looks like Redlock but is one URL with a bad host:
/// say how to write it (each server its own URL).
fn redlock_short_form(url: &str) -> Result<()> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(());
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "redis" | "rediss") {
        return Ok(());
    }
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    if !hosts.contains(',') {
        return Ok(());
    }
    let tail = &rest[authority.len()..];
    let each = hosts
        .split(',')
        .map(|h| crate::backend::redact_url(&format!("{scheme}://{userinfo}{h}{tail}")))
        .collect::<Vec<_>>()
        .join(",");
    Err(usage(format!(
        "{} lists several hosts in one {scheme}:// URL: for Redlock, give each server its own URL, \
         comma-separated or with --backend repeated: {each} \
         (redis+sentinel:// and redis+cluster:// take several hosts in one URL)",
        crate::backend::redact_url(url)
    )))
}

/// `scheme://...` or `sqlite:...`; a bare `host:port` is not a new URL.
fn starts_with_scheme(s: &str) -> bool {
    if s.starts_with("sqlite:") {
        return true;
    }
    match s.find("://") {
        Some(i) if i > 0 => s[..i]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.'),
        _ => false,
    }
}

/// This user's default SQLite database, `$XDG_STATE_HOME/dlock/locks.db`
/// (else `~/.local/state/dlock/locks.db`), if either is set.
pub fn default_sqlite_path() -> Option<PathBuf> {
    let state = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".local/state")
        }
    };
    Some(state.join("dlock/locks.db"))
}

fn default_backend() -> Result<String> {
    let Some(db) = default_sqlite_path() else {
        return Err(usage(
            "neither XDG_STATE_HOME nor HOME is set; give --backend sqlite:PATH",
        ));
    };
    let state = db
        .parent()
        .and_then(|d| d.parent())
        .unwrap_or(&db)
        .to_path_buf();
    // The default location's directories are created here, and only they:
    // an explicit path's directory must exist (a typo is not a new lock).
    let _ = std::fs::create_dir_all(state.join("dlock"));
    Ok(format!("sqlite:{}", state.join("dlock/locks.db").display()))
}

fn config_candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        v.push(PathBuf::from(d).join("dlock/config.toml"));
    } else if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        v.push(PathBuf::from(h).join(".config/dlock/config.toml"));
    }
    v.push(PathBuf::from("/etc/dlock/config.toml"));
    v
}

fn load_file(explicit: Option<&Path>, profile: Option<&str>) -> Result<FileConfig> {
    let (path, text) = match explicit {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => (p.to_path_buf(), t),
            Err(e) => {
                return Err(Error::Config(format!("config file {}: {e}", p.display())).into());
            }
        },
        None => {
            let mut found = None;
            for p in config_candidates() {
                match std::fs::read_to_string(&p) {
                    Ok(t) => {
                        found = Some((p, t));
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(
                            Error::Config(format!("config file {}: {e}", p.display())).into()
                        );
                    }
                }
            }
            match found {
                Some(f) => f,
                None if profile.is_some() => {
                    return Err(Error::Config(format!(
                        "--profile {} given but no config file found (looked in {})",
                        profile.unwrap_or_default(),
                        config_candidates()
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .into());
                }
                None => return Ok(FileConfig::default()),
            }
        }
    };
    let mut cfg: FileConfig = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let msg = e.message().trim().to_string();
        match line {
            Some(l) => Error::Config(format!("config file {}, line {l}: {msg}", path.display())),
            None => Error::Config(format!("config file {}: {msg}", path.display())),
        }
    })?;
    match profile {
        None => Ok(cfg),
        Some(name) => match cfg.profile.remove(name) {
            Some(p) => Ok(cfg.overlay(p)),
            None => Err(Error::Config(format!(
                "config file {}: no [profile.{name}] table (profiles: {})",
                path.display(),
                if cfg.profile.is_empty() {
                    "none".to_string()
                } else {
                    cfg.profile.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ))
            .into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_multi_host_urls() {
        let v = split_backends(&["zk://a:1,b:2/chroot".into()]);
        assert_eq!(v, vec!["zk://a:1,b:2/chroot"]);
        let v = split_backends(&["redis://a:1,redis://b:2".into(), "redis://c".into()]);
        assert_eq!(v, vec!["redis://a:1", "redis://b:2", "redis://c"]);
    }

    #[test]
    fn profile_overlays() {
        let cfg: FileConfig =
            toml::from_str("ttl = '10s'\nnamespace = 'a'\n[profile.x]\nttl = 20\n").unwrap();
        let mut cfg = cfg;
        let p = cfg.profile.remove("x").unwrap();
        let m = cfg.overlay(p);
        assert_eq!(m.ttl, Some(Duration::from_secs(20)));
        assert_eq!(m.namespace.as_deref(), Some("a"));
    }
}
