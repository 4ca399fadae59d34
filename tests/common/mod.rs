//! Shared test harness: the real `dlock` binary, a clean environment, and
//! helpers to start, signal and time processes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod fair;
mod kept;
pub mod liveness;
pub mod servers;
#[path = "servers_s3.rs"]
pub mod servers_s3;
#[path = "servers_sql.rs"]
pub mod servers_sql;
#[path = "servers_zk.rs"]
pub mod servers_zk;
pub mod shared;
pub mod suite;
pub mod torture;

pub const DLOCK: &str = env!("CARGO_BIN_EXE_dlock");

/// A scratch directory plus the backend URL the test runs against.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub redis: Vec<servers::Redis>,
    pub postgres: Option<servers_sql::Postgres>,
    pub mariadb: Option<servers_sql::Mariadb>,
    pub zookeeper: Option<servers_zk::Zookeeper>,
    pub ensemble: Option<servers_zk::ZookeeperEnsemble>,
    pub etcd: Option<servers::Etcd>,
    pub s3: Option<servers_s3::Seaweed>,
    /// The namespace every `dlock` of this Env runs in (`DLOCK_NAMESPACE`),
    /// when not dlock's default: a test on a shared server has one of its own.
    pub namespace: Option<String>,
}

impl Env {
    /// A fresh SQLite backend in a temporary directory.
    pub fn sqlite() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("locks.db").display());
        Env {
            dir,
            url,
            redis: vec![],
            postgres: None,
            mariadb: None,
            zookeeper: None,
            ensemble: None,
            etcd: None,
            s3: None,
            namespace: None,
        }
    }

    /// One fresh redis-server.
    pub fn redis() -> Env {
        Env::redlock(1)
    }

    /// No server, just a scratch directory and a URL.
    pub fn bare(url: String) -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
            url,
            redis: vec![],
            postgres: None,
            mariadb: None,
            zookeeper: None,
            ensemble: None,
            etcd: None,
            s3: None,
            namespace: None,
        }
    }

    /// A fresh single-member etcd.
    pub fn etcd() -> Env {
        let e = servers::Etcd::start();
        let url = e.url();
        Env {
            etcd: Some(e),
            ..Env::bare(url)
        }
    }

    /// A fresh S3 store (SeaweedFS `weed mini`) with an empty bucket.
    pub fn s3() -> Env {
        let s = servers_s3::Seaweed::start();
        let url = s.url();
        Env {
            s3: Some(s),
            ..Env::bare(url)
        }
    }

    /// A fresh standalone ZooKeeper (short tick, otherwise stock: no TTL nodes).
    pub fn zookeeper() -> Env {
        let z = servers_zk::Zookeeper::start();
        let url = z.url();
        Env {
            zookeeper: Some(z),
            ..Env::bare(url)
        }
    }

    /// A three-server ZooKeeper ensemble on loopback.
    pub fn zk_ensemble() -> Env {
        let e = servers_zk::ZookeeperEnsemble::start();
        let url = e.url();
        Env {
            ensemble: Some(e),
            ..Env::bare(url)
        }
    }

    /// A fresh PostgreSQL server with an empty `dlock` database.
    pub fn postgres() -> Env {
        let pg = servers_sql::Postgres::start();
        let url = pg.url();
        Env {
            postgres: Some(pg),
            ..Env::bare(url)
        }
    }

    /// A fresh PostgreSQL server, its clients without the line
    /// (`?dlock_queue=off`: as before fair queues).
    pub fn postgres_line_off() -> Env {
        let mut env = Env::postgres();
        env.url.push_str("?dlock_queue=off");
        env
    }

    /// A fresh MariaDB server, its clients without the line.
    pub fn mariadb_line_off() -> Env {
        let mut env = Env::mariadb();
        env.url.push_str("?dlock_queue=off");
        env
    }

    /// A fresh MariaDB server with an empty `dlock` database.
    pub fn mariadb() -> Env {
        let m = servers_sql::Mariadb::start();
        let url = m.url();
        Env {
            mariadb: Some(m),
            ..Env::bare(url)
        }
    }

    /// `n` independent redis-servers: Redlock when n > 1.
    pub fn redlock(n: usize) -> Env {
        let redis: Vec<_> = (0..n).map(|_| servers::Redis::start()).collect();
        let url = redis.iter().map(|r| r.url()).collect::<Vec<_>>().join(",");
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
            url,
            redis,
            postgres: None,
            mariadb: None,
            zookeeper: None,
            ensemble: None,
            etcd: None,
            s3: None,
            namespace: None,
        }
    }

    /// The set-up `setup` for one test (`test` names it) on this test
    /// binary's one server of that set-up, made by `make` the first time it
    /// is asked for and kept until the binary exits (see `kept.rs`), in a
    /// namespace of the test's own (`DLOCK_NAMESPACE` for [`Env::cmd`], and
    /// the config file of its home for [`bare`]), with a home of its own: for
    /// the tests that neither stop, restart, freeze, signal nor reconfigure
    /// the server, nor crowd it. Set-ups of the same name share a server. A
    /// set-up without a server (SQLite) is made afresh for every test.
    pub fn shared(setup: &str, make: fn() -> Env, test: &str) -> Env {
        match kept::url(setup, make) {
            Some(url) => {
                let env = Env {
                    namespace: Some(kept::namespace(test)),
                    ..Env::bare(url)
                };
                // The same namespace in the config file of the Env's home,
                // for a `dlock` the test starts with `bare()` itself.
                let conf = env.dir.path().join("config/dlock");
                std::fs::create_dir_all(&conf).unwrap();
                std::fs::write(
                    conf.join("config.toml"),
                    format!("namespace = \"{}\"\n", env.ns()),
                )
                .unwrap();
                env
            }
            None => make(),
        }
    }

    /// [`Env::shared`] named after the running test (libtest names its
    /// thread after it).
    pub fn shared_here(setup: &str, make: fn() -> Env) -> Env {
        let test = std::thread::current()
            .name()
            .unwrap_or("test")
            .replace("::", ".");
        Env::shared(setup, make, &test)
    }

    /// The namespace the Env's `dlock`s run in.
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("dlock")
    }

    /// The Env's server processes (their pids) and their directories.
    pub fn server_processes(&self) -> (Vec<u32>, Vec<PathBuf>) {
        let (mut pids, mut dirs) = (vec![], vec![]);
        for r in &self.redis {
            pids.push(r.pid());
            dirs.push(r.dir().to_path_buf());
        }
        if let Some(p) = &self.postgres {
            pids.push(p.pid());
            dirs.push(p.dir().to_path_buf());
        }
        if let Some(m) = &self.mariadb {
            pids.push(m.pid());
            dirs.push(m.dir().to_path_buf());
        }
        if let Some(z) = &self.zookeeper {
            pids.push(z.pid());
            dirs.push(z.dir().to_path_buf());
        }
        if let Some(e) = &self.ensemble {
            pids.extend((0..3).map(|i| e.pid(i)));
            dirs.push(e.dir().to_path_buf());
        }
        if let Some(e) = &self.etcd {
            pids.push(e.pid());
            dirs.push(e.dir().to_path_buf());
        }
        if let Some(s) = &self.s3 {
            pids.push(s.pid());
            dirs.push(s.dir().to_path_buf());
        }
        (pids, dirs)
    }

    /// Whether [`Env::restart_server`] can restart this backend's server.
    pub fn can_restart(&self) -> bool {
        self.url.starts_with("redis://")
            || self.postgres.is_some()
            || self.mariadb.is_some()
            || self.zookeeper.is_some()
            || self.etcd.is_some()
            || self.s3.is_some()
    }

    /// Kill the backend's server(s), keep them down for `down`, and start
    /// them again on the same ports (Redis empty, the others with their data).
    pub fn restart_server(&mut self, down: Duration) {
        for r in &mut self.redis {
            r.stop();
        }
        if let Some(p) = &mut self.postgres {
            p.stop();
        }
        if let Some(m) = &mut self.mariadb {
            m.stop();
        }
        if let Some(z) = &mut self.zookeeper {
            z.stop();
        }
        if let Some(e) = &mut self.etcd {
            e.stop();
        }
        if let Some(s) = &mut self.s3 {
            s.stop();
        }
        std::thread::sleep(down);
        for r in &mut self.redis {
            r.restart();
        }
        if let Some(p) = &mut self.postgres {
            p.restart();
        }
        if let Some(m) = &mut self.mariadb {
            m.restart();
        }
        if let Some(z) = &mut self.zookeeper {
            z.restart();
        }
        if let Some(e) = &mut self.etcd {
            e.restart();
        }
        if let Some(s) = &mut self.s3 {
            s.restart();
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `dlock --backend URL ARGS...` with none of the developer's DLOCK_*
    /// settings or config files able to change the result.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = bare(self.dir.path());
        if let Some(ns) = &self.namespace {
            c.env("DLOCK_NAMESPACE", ns);
        }
        c.arg("--backend").arg(&self.url).args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run dlock")
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn dlock")
    }

    /// `dlock run --key K EXTRA -- sh -c 'echo $$ > PIDFILE; TAIL'`, once
    /// the child runs: the dlock process and the child's pid.
    pub fn run_child(&self, k: &str, extra: &[&str], tail: &str) -> (Child, i32) {
        let pidf = self.path(&format!("{k}.pid"));
        let script = format!("echo $$ > {}; {tail}", pidf.display());
        let mut args = vec!["run", "--key", k];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", &script]);
        let c = self
            .cmd(&args)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dlock");
        let pid = read_when_ready(&pidf, Duration::from_secs(30))
            .parse()
            .expect("a pid");
        (c, pid)
    }

    pub fn status_json(&self, keys: &[&str]) -> serde_json::Value {
        let mut a = vec!["status", "--json"];
        a.extend_from_slice(keys);
        let out = self.run(&a);
        assert_eq!(
            out.status.code(),
            Some(0),
            "status failed: {}",
            stderr(&out)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// `dlock doctor --json ARGS`: the exit code, and each check as
    /// (name, level, message).
    pub fn doctor(&self, args: &[&str]) -> (i32, Vec<(String, String, String)>) {
        let mut a = vec!["doctor", "--json"];
        a.extend_from_slice(args);
        let out = self.run(&a);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("doctor --json: {e}: {}", stderr(&out)));
        let checks = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let s = |f: &str| c[f].as_str().unwrap_or_default().to_string();
                (s("check"), s("level"), s("message"))
            })
            .collect();
        (code(&out), checks)
    }

    /// doctor fails, naming the member on `port` as not answering.
    pub fn doctor_names_a_member_down(&self, port: u16) {
        let (c, checks) = self.doctor(&["--connect-timeout", "2s"]);
        assert!(
            checks
                .iter()
                .any(|(n, l, m)| n == "member" && l == "fail" && m.contains(&port.to_string())),
            "{checks:?}"
        );
        assert_eq!(c, 1, "{checks:?}");
    }

    pub fn held(&self, key: &str) -> bool {
        self.status_json(&[key])[0]["held"].as_bool().unwrap()
    }
}

/// A lock held by another client of the same recipe shows in `status` as
/// held by one holder, with no dlock owner, in JSON and in the table
/// (listed by name, and in the namespace-wide listing).
pub fn foreign_holder_shown(env: &Env, key: &str) {
    let st = env.status_json(&[key]);
    let holders = st[0]["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 1, "{st}");
    assert!(holders[0]["owner"].is_null(), "not a dlock holder: {st}");
    for args in [vec!["status", key], vec!["status"]] {
        let out = env.run(&args);
        let table = stdout(&out);
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no row for {key}: {table}"));
        assert!(row.contains(" held "), "{table}");
        assert!(
            !row.contains(&format!("{}@", whoami())),
            "not shown as ours: {table}"
        );
    }
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "root".to_string())
}

/// `dlock` with a scrubbed environment rooted at `home`.
pub fn bare(home: &Path) -> Command {
    let mut c = Command::new(DLOCK);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DLOCK_") {
            c.env_remove(&k);
        }
    }
    // The test store's credentials (servers_s3.rs), never a developer's.
    for k in [
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ] {
        c.env_remove(k);
    }
    c.env("AWS_ACCESS_KEY_ID", servers_s3::KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", servers_s3::SECRET);
    c.env("HOME", home)
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env_remove("NO_COLOR");
    // SIGHUP, SIGINT and SIGQUIT as a terminal would deliver them,
    // however the tests were started: a shell's background job (`cargo
    // test &`) ignores SIGINT and SIGQUIT, `nohup` SIGHUP, their children
    // inherit that, and dlock leaves ignored what it found ignored (as
    // nohup asks), so a test that stops dlock with one would time out.
    unsafe {
        use std::os::unix::process::CommandExt;
        c.pre_exec(|| {
            use nix::sys::signal::{SigHandler, Signal, signal};
            for s in [Signal::SIGHUP, Signal::SIGINT, Signal::SIGQUIT] {
                signal(s, SigHandler::SigDfl).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    c
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn code(o: &Output) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    o.status
        .code()
        .unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0))
}

pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("kill");
}

pub fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); look at its state too.
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let after = &s[s.rfind(')').unwrap() + 2..];
            !after.starts_with('Z')
        }
        Err(_) => false,
    }
}

/// A child process killed when dropped, so a failing test never leaves a
/// client behind (one retrying a stopped server would hang the test run).
pub struct Reaped(pub Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Python script (`python3 -c`) that takes a lock with another client
/// library and prints `held` once it has it; `module` must be importable.
pub fn python_holder(module: &str, script: &str) -> Reaped {
    let python = servers::require("python3", "python3");
    let probe = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "python3 module `{module}` missing: pip install {module} (scripts/test.sh does)"
    );
    let mut c = Command::new(&python)
        .args(["-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(c.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(
        line.trim(),
        "held",
        "the {module} client did not take the lock"
    );
    Reaped(c)
}

/// Wait until `f` holds, or panic with `what` after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait for a file to appear and hold a non-empty line.
pub fn read_when_ready(path: &Path, limit: Duration) -> String {
    let mut s = String::new();
    wait_for(limit, &format!("{} to be written", path.display()), || {
        s = std::fs::read_to_string(path).unwrap_or_default();
        s.ends_with('\n')
    });
    s.trim().to_string()
}

/// Wait for a child with a bound; kill it and panic if it overruns.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process {} did not finish within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
