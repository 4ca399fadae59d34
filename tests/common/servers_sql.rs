//! Real SQL servers for the tests, started on free loopback ports in
//! temporary directories, and killed when the test ends (or, shared, when
//! the test binary does: `kept.rs`): PostgreSQL and MariaDB, in the style of
//! `servers::Redis`. A missing server binary fails
//! the test with the Debian package to install.
//!
//! Self-contained (no `super::`), so it can be included on its own.
//!
//! Both servers `chdir` into their data directory, and PostgreSQL's own
//! processes (checkpointer, walwriter, backends...) outlive a killed
//! postmaster for a moment: `stop()` ends the child, then kills every process
//! whose working directory is still that data directory, and waits until none
//! is left, so a `restart()` never meets the old server's shared memory (even
//! after a test's own `signal(SIGKILL)`).
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

/// A free TCP port on 127.0.0.1 (bound, then released for the server).
fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn locate(binary: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
        .map(|dir| Path::new(dir).join(binary))
        .find(|p| p.is_file())
}

/// The first of `binaries` found (newer name first, older alias after).
fn find(binaries: &[&str], package: &str) -> PathBuf {
    binaries.iter().find_map(|b| locate(b)).unwrap_or_else(|| {
        panic!(
            "{} not found: install the Debian package `{package}` (scripts/test.sh does)",
            binaries[0]
        )
    })
}

fn connects(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn send(pid: u32, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("kill");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A temporary directory in /tmp: short enough for Unix socket paths (108
/// bytes) and traversable by another OS user whatever TMPDIR says.
fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("tempdir in /tmp")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Processes (not zombies) whose working directory is `dir`.
fn dwellers(dir: &Path) -> Vec<i32> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut pids = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_link(e.path().join("cwd")).ok().as_deref() == Some(&dir) {
            pids.push(pid);
        }
    }
    pids
}

/// End `child` and reap it: first with `first` if given (SIGCONT after it, in
/// case the child is stopped), with SIGKILL if it is still there after a
/// while; then kill whatever else still lives in `dir`, and wait until
/// nothing does.
fn kill_all(child: Option<Child>, first: Option<Signal>, dir: &Path) -> Result<(), String> {
    if let Some(mut c) = child {
        if let Some(sig) = first {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, sig);
            let _ = nix::sys::signal::kill(pid, Signal::SIGCONT);
            let start = Instant::now();
            while matches!(c.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    let start = Instant::now();
    loop {
        let left = dwellers(dir);
        if left.is_empty() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "server processes {left:?} in {} would not die",
                dir.display()
            ));
        }
        for pid in left {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Why a launch failed: the server died (perhaps the port was taken between
/// `port()` and its bind, worth another port), or never got ready.
enum Failed {
    Died(String),
    Timeout(String),
}

impl Failed {
    fn message(self) -> String {
        match self {
            Failed::Died(m) | Failed::Timeout(m) => m,
        }
    }
}

/// Poll until `ready()`, failing early if the child exits.
fn wait_ready(
    child: &mut Child,
    what: &str,
    log: &Path,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), Failed> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Failed::Died(format!(
                "{what} exited ({status}) while starting; {}:\n{}",
                log.display(),
                tail(log)
            )));
        }
        if ready() {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(Failed::Timeout(format!(
                "{what} did not start within {limit:?}; {}:\n{}",
                log.display(),
                tail(log)
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Start a new server up to three times, on a new port each time it died.
fn with_ports<T>(mut attempt: impl FnMut() -> Result<T, Failed>) -> T {
    let mut n = 0;
    loop {
        n += 1;
        match attempt() {
            Ok(t) => return t,
            Err(Failed::Died(m)) if n < 3 => eprintln!("retrying on another port: {m}"),
            Err(e) => panic!("{}", e.message()),
        }
    }
}

// ---------------------------------------------------------------- PostgreSQL

/// The bin directory of the highest PostgreSQL version installed.
fn pg_bin() -> PathBuf {
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for e in std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
    {
        let bin = e.path().join("bin");
        if !bin.join("postgres").is_file() || !bin.join("initdb").is_file() {
            continue;
        }
        let version: Vec<u32> = e
            .file_name()
            .to_string_lossy()
            .split('.')
            .map(|p| p.parse().unwrap_or(0))
            .collect();
        if best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    match best {
        Some((_, bin)) => bin,
        None => panic!(
            "postgres not found in /usr/lib/postgresql/*/bin: install the Debian package \
             `postgresql` (scripts/test.sh does)"
        ),
    }
}

/// A PostgreSQL server on its own port, with a `dlock` database and the
/// superuser `postgres` trusted without a password. initdb and postgres will
/// not run as root: as root, they run as the `postgres` OS user (made by the
/// Debian package), which owns the temporary directory.
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// (uid, gid) to run as, when we are root.
    user: Option<(u32, u32)>,
    child: Option<Child>,
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = pg_bin();
        let dir = scratch("dlock-pg.");
        let user = is_root().then(|| {
            let u = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("no `postgres` OS user: install the Debian package `postgresql`");
            std::os::unix::fs::chown(dir.path(), Some(u.uid.as_raw()), Some(u.gid.as_raw()))
                .expect("chown the tempdir to postgres");
            (u.uid.as_raw(), u.gid.as_raw())
        });
        let mut pg = Postgres {
            port: 0,
            dir,
            bin,
            user,
            child: None,
        };
        pg.initdb();
        with_ports(|| {
            pg.port = port();
            pg.launch()
        });
        let out = Command::new(pg.bin.join("psql"))
            .args(["-X", "-q", "-h", "127.0.0.1", "-p", &pg.port.to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                "create database dlock",
            ])
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE")
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "create database dlock: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    /// Its directory (data/, postgres.log, the socket).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.user {
            // std drops the supplementary groups too when root sets uid.
            c.uid(uid).gid(gid);
        }
        c
    }

    fn initdb(&self) {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.data())
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "--no-instructions",
            ])
            .args(["-E", "UTF8", "--locale=C"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn launch(&mut self) -> Result<(), Failed> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("open postgres.log");
        let mut child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(self.dir.path())
            // No fsync, but every commit still reaches the OS at once, so a
            // killed server (not a crashed machine) loses nothing.
            .args(["-c", "fsync=off", "-c", "shared_buffers=16MB"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        // The port opens before recovery ends ("the database system is
        // starting up"): postmaster.pid's 8th line says when it is "ready",
        // and its 1st whose file it is (a killed server leaves its own).
        let pidfile = self.data().join("postmaster.pid");
        let (pid, port) = (child.id().to_string(), self.port);
        let res = wait_ready(
            &mut child,
            "postgres",
            &self.log(),
            Duration::from_secs(10),
            || {
                std::fs::read_to_string(&pidfile).is_ok_and(|s| {
                    let lines: Vec<&str> = s.lines().map(str::trim).collect();
                    lines.first() == Some(&pid.as_str()) && lines.get(7) == Some(&"ready")
                }) && connects(port)
            },
        );
        if res.is_err() {
            let _ = kill_all(Some(child), Some(Signal::SIGQUIT), &self.data());
        } else {
            self.child = Some(child);
        }
        res
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/dlock", self.port)
    }

    /// Turn TLS on (a reload, no restart) with this certificate and key,
    /// which are copied where the server's OS user may read them.
    pub fn enable_tls(&self, cert: &str, key: &str) {
        let (c, k) = (
            self.dir.path().join("srv.pem"),
            self.dir.path().join("srv.key"),
        );
        std::fs::copy(cert, &c).expect("copy the certificate");
        std::fs::copy(key, &k).expect("copy the key");
        std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod the key");
        if let Some((uid, gid)) = self.user {
            for f in [&c, &k] {
                std::os::unix::fs::chown(f, Some(uid), Some(gid)).expect("chown");
            }
        }
        // One statement per psql: ALTER SYSTEM may not share a transaction.
        self.psql(&format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            c.display()
        ));
        self.psql(&format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            k.display()
        ));
        self.psql("ALTER SYSTEM SET ssl = on");
        self.psql("SELECT pg_reload_conf()");
    }

    /// Run SQL as the superuser in the `dlock` database; panics on failure.
    pub fn psql(&self, sql: &str) {
        let out = self
            .command("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                "dlock",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The postmaster's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Stop it like a crash: SIGQUIT, PostgreSQL's immediate shutdown (no
    /// checkpoint: the restart recovers from the WAL; clients lose their
    /// connections), by which the postmaster ends and reaps its own
    /// processes (a SIGKILLed one leaves them to be killed here, and reaped
    /// by init whenever it does). SIGKILL after 5 s, and the leftovers too.
    pub fn stop(&mut self) {
        kill_all(self.child.take(), Some(Signal::SIGQUIT), &self.data()).unwrap();
    }

    /// Kill it and start it again on the same port and data, which it keeps.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.launch() {
            panic!("{}", e.message());
        }
    }

    pub fn signal(&self, sig: Signal) {
        send(self.pid(), sig);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // A SIGSTOPped server would not die of SIGTERM.
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), Signal::SIGCONT);
        }
        // No panic in drop (it would abort a test already failing).
        let _ = kill_all(self.child.take(), Some(Signal::SIGQUIT), &self.data());
    }
}

// ------------------------------------------------------------------ MariaDB

/// A MariaDB server on its own port, with a `dlock` database and a user
/// `dlock`@`127.0.0.1` (password `dlock`) that owns it, made at install time.
pub struct Mariadb {
    pub port: u16,
    dir: tempfile::TempDir,
    /// mariadbd, found before mariadb-install-db needs it too.
    bin: PathBuf,
    child: Option<Child>,
    /// Extra server options (TLS files).
    extra: Vec<String>,
}

impl Mariadb {
    pub fn start() -> Mariadb {
        Mariadb::start_with(vec![])
    }

    /// A server that offers TLS with this certificate, key and CA.
    pub fn start_tls(cert: &str, key: &str, ca: &str) -> Mariadb {
        Mariadb::start_with(vec![
            format!("--ssl-cert={cert}"),
            format!("--ssl-key={key}"),
            format!("--ssl-ca={ca}"),
        ])
    }

    fn start_with(extra: Vec<String>) -> Mariadb {
        let mut m = Mariadb {
            port: 0,
            dir: scratch("dlock-mariadb."),
            bin: find(&["mariadbd", "mysqld"], "mariadb-server"),
            child: None,
            extra,
        };
        m.install();
        with_ports(|| {
            m.port = port();
            m.launch()
        });
        m
    }

    /// Its directory (data/, error.log, the socket).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("s.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }

    /// Options for both the bootstrap and the server: small and unsynced.
    /// Commits are still written to the OS at once (flush-log-at-trx-commit
    /// 2, not 0), so a killed server (not a crashed machine) loses nothing.
    fn tuning() -> [&'static str; 6] {
        [
            "--skip-name-resolve",
            "--innodb-log-file-size=8M",
            "--innodb-buffer-pool-size=16M",
            "--innodb-temp-data-file-path=ibtmp1:1M:autoextend",
            "--innodb-flush-log-at-trx-commit=2",
            // io_uring/libaio may be refused in containers.
            "--innodb-use-native-aio=0",
        ]
    }

    fn install(&self) {
        let bin = find(
            &["mariadb-install-db", "mysql_install_db"],
            "mariadb-server",
        );
        let sql = self.dir.path().join("init.sql");
        // The bootstrap runs with --skip-grant-tables: FLUSH PRIVILEGES loads
        // the grant tables so that CREATE USER works.
        std::fs::write(
            &sql,
            "FLUSH PRIVILEGES;\n\
             CREATE DATABASE dlock;\n\
             CREATE USER 'dlock'@'127.0.0.1' IDENTIFIED BY 'dlock';\n\
             GRANT ALL ON dlock.* TO 'dlock'@'127.0.0.1';\n",
        )
        .expect("write init.sql");
        let mut c = Command::new(bin);
        c.arg("--no-defaults") // must come first
            .arg(format!("--datadir={}", self.data().display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--extra-file={}", sql.display()))
            // Its own tmpdir: parallel bootstraps in /tmp lose their
            // temporary tables ("Unknown table 'mysql.tmp_user_sys'").
            .arg(format!("--tmpdir={}", self.dir.path().display()))
            .args(Self::tuning())
            .current_dir(self.dir.path());
        if is_root() {
            c.arg("--user=root");
        }
        let out = c.output().expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn launch(&mut self) -> Result<(), Failed> {
        let mut c = Command::new(&self.bin);
        c.arg("--no-defaults") // must come first
            .arg(format!("--datadir={}", self.data().display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("mariadbd.pid").display()
            ))
            .arg(format!("--log-error={}", self.log().display()))
            .arg(format!("--tmpdir={}", self.dir.path().display()))
            .args([&format!("--port={}", self.port), "--bind-address=127.0.0.1"])
            .arg("--skip-log-bin")
            .args(Self::tuning())
            .args(&self.extra)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            c.arg("--user=root");
        }
        let mut child = c.spawn().expect("start mariadbd");
        // The Unix socket is made after the TCP port is bound (a bind failure
        // aborts before it), and a server that greets on it is accepting:
        // that tells ours from another server that took the port.
        let socket = self.socket();
        let port = self.port;
        let res = wait_ready(
            &mut child,
            "mariadbd",
            &self.log(),
            Duration::from_secs(10),
            || greets(&socket) && connects(port),
        );
        if res.is_err() {
            let _ = kill_all(Some(child), None, &self.data());
        } else {
            self.child = Some(child);
        }
        res
    }

    pub fn url(&self) -> String {
        format!("mysql://dlock:dlock@127.0.0.1:{}/dlock", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kill it (a crash: SIGKILL).
    pub fn stop(&mut self) {
        kill_all(self.child.take(), None, &self.data()).unwrap();
    }

    /// Kill it and start it again on the same port and data, which it keeps.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.launch() {
            panic!("{}", e.message());
        }
    }

    pub fn signal(&self, sig: Signal) {
        send(self.pid(), sig);
    }
}

/// Whether a MySQL-protocol server sends its greeting on this Unix socket.
fn greets(socket: &Path) -> bool {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 5];
    // 3-byte length, sequence 0, then protocol version 10 (0xff: an error).
    s.read_exact(&mut buf).is_ok() && buf[4] == 10
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // A SIGSTOPped server would not die of SIGTERM.
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), Signal::SIGCONT);
        }
        let _ = kill_all(self.child.take(), None, &self.data());
    }
}
