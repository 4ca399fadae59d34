//! Real servers for the tests, started on free loopback ports in temporary
//! directories, and killed when the test ends (or, shared by the tests of a
//! binary, when the binary does: `kept.rs`). A missing server binary fails
//! the test with the Debian package to install.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A throwaway CA and a server certificate for 127.0.0.1 made with the
/// openssl CLI in `dir`: (certificate, key, CA certificate) paths.
pub fn test_certificates(dir: &Path) -> (String, String, String) {
    let openssl = require("openssl", "openssl");
    let run = |args: &[&str]| {
        let st = Command::new(&openssl)
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    };
    let subj = |cn: &str| format!("/CN={cn}");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        &subj("dlock-test-ca"),
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        &subj("127.0.0.1"),
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let p = |f: &str| dir.join(f).display().to_string();
    (p("srv.pem"), p("srv.key"), p("ca.pem"))
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn require(binary: &str, package: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
    {
        let p = Path::new(dir).join(binary);
        if p.is_file() {
            return p;
        }
    }
    panic!("{binary} not found: install the Debian package `{package}` (scripts/test.sh does)");
}

/// Wait until `port` answers; false if `child` exits first. A port from
/// [`free_port`] can be taken before the server binds it (it is in the
/// ephemeral range, so another test's outgoing connection may get it, or
/// a cluster node's bus port, port + 10000, may be in use): then the
/// server exits at once, and the caller tries another port.
fn wait_started(port: u16, child: &mut Child, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        assert!(
            start.elapsed() < limit,
            "server on port {port} did not start within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_port(port: u16, limit: Duration) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < limit,
            "server on port {port} did not start within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A redis-server on its own port, without persistence (as the tests of a
/// restart "empty" need).
pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra arguments; a leading config file path makes it a sentinel.
    extra: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// A redis-server with extra arguments (`--replicaof`, cluster mode...).
    pub fn start_with(extra: &[&str]) -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        // A port taken between `free_port` and the bind: another one.
        for _ in 0..5 {
            if r.spawn() {
                return r;
            }
            r.port = free_port();
        }
        panic!("redis-server exited at start on 5 free ports in a row");
    }

    /// A redis-server that speaks only TLS, on `port`.
    pub fn start_tls(cert: &str, key: &str, ca: &str) -> Redis {
        let port = free_port();
        let extra = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            ca,
            "--tls-auth-clients",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut r = Redis {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            extra,
        };
        r.launch();
        r
    }

    /// A Redis Sentinel watching `master` at `primary_port` (quorum 1, quick
    /// failure detection).
    pub fn sentinel(master: &str, primary_port: u16) -> Redis {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\n\
                 sentinel monitor {master} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {master} 400\n\
                 sentinel failover-timeout {master} 4000\n"
            ),
        )
        .unwrap();
        let mut r = Redis {
            port,
            dir,
            child: None,
            extra: vec![conf.display().to_string(), "--sentinel".into()],
        };
        r.launch();
        r
    }

    /// `redis-cli -p PORT ARGS...`, its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(require("redis-cli", "redis-tools"))
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Start the server; whether it came up (false: it exited at once).
    fn spawn(&mut self) -> bool {
        let bin = require("redis-server", "redis-server");
        let mut cmd = Command::new(bin);
        if self.extra.first().is_some_and(|a| a.ends_with(".conf")) {
            cmd.args(&self.extra);
        } else {
            let port = self.port.to_string();
            cmd.args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(&self.extra);
        }
        let child = cmd
            .args(["--protected-mode", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_started(
            self.port,
            self.child.as_mut().unwrap(),
            Duration::from_secs(10),
        )
    }

    /// Start the server on its port again (it must get it back).
    fn launch(&mut self) {
        assert!(
            self.spawn(),
            "redis-server exited at start on port {}",
            self.port
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Its directory (`--dir`, where it runs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill it and start it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        super::signal(self.pid(), sig);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // A SIGSTOPped server would not die of SIGTERM.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
        self.stop();
    }
}

/// One etcd member on its own ports and data directory.
pub struct Etcd {
    pub port: u16,
    peer: u16,
    name: String,
    cluster: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// (certificate, key, CA) when clients must speak TLS.
    tls: Option<(String, String, String)>,
    /// More `etcd` flags.
    extra: Vec<String>,
}

impl Etcd {
    /// A single member serving clients over TLS only.
    pub fn start_tls(cert: &str, key: &str, ca: &str) -> Etcd {
        let peer = free_port();
        let mut e = Etcd::member(
            "n1",
            free_port(),
            peer,
            format!("n1=http://127.0.0.1:{peer}"),
        );
        e.tls = Some((cert.into(), key.into(), ca.into()));
        e.spawn();
        wait_port(e.port, Duration::from_secs(20));
        e.wait_healthy();
        e
    }

    /// A single-member cluster.
    pub fn start() -> Etcd {
        Etcd::start_with(&[])
    }

    /// A single-member cluster started with more `etcd` flags.
    pub fn start_with(flags: &[&str]) -> Etcd {
        let peer = free_port();
        let mut e = Etcd::member(
            "n1",
            free_port(),
            peer,
            format!("n1=http://127.0.0.1:{peer}"),
        );
        e.extra = flags.iter().map(|f| f.to_string()).collect();
        e.spawn();
        wait_port(e.port, Duration::from_secs(20));
        e.wait_healthy();
        e
    }

    fn member(name: &str, port: u16, peer: u16, cluster: String) -> Etcd {
        Etcd {
            port,
            peer,
            name: name.into(),
            cluster,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            tls: None,
            extra: Vec::new(),
        }
    }

    /// Three members on loopback, started together.
    pub fn cluster() -> Vec<Etcd> {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("n{}=http://127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Etcd> = ports
            .iter()
            .enumerate()
            .map(|(i, (c, p))| Etcd::member(&format!("n{}", i + 1), *c, *p, cluster.clone()))
            .collect();
        for m in members.iter_mut() {
            m.spawn();
        }
        for m in &members {
            wait_port(m.port, Duration::from_secs(30));
            m.wait_healthy();
        }
        members
    }

    /// Whether this member is the cluster's leader now.
    pub fn is_leader(&self) -> bool {
        self.ctl(&["endpoint", "status"]).split(", ").nth(4) == Some("true")
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start a stopped member again on its data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        wait_port(self.port, Duration::from_secs(30));
        self.wait_healthy();
    }

    fn wait_healthy(&self) {
        let start = Instant::now();
        while !self.ctl(&["endpoint", "health"]).contains("is healthy") {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "etcd on port {} not healthy",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn(&mut self) {
        let bin = require("etcd", "etcd-server");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new(bin)
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.cluster, "--log-level", "warn"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(match &self.tls {
                Some((cert, key, _)) => {
                    vec!["--cert-file", cert.as_str(), "--key-file", key.as_str()]
                }
                None => vec![],
            })
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.port)
    }

    /// `etcdctl --endpoints ... ARGS`, stdout and stderr together.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(require("etcdctl", "etcd-client"))
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &format!("127.0.0.1:{}", self.port)])
            .args(match &self.tls {
                Some((_, _, ca)) => vec!["--cacert", ca.as_str()],
                None => vec![],
            })
            .args(args)
            .output()
            .expect("etcdctl");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Its directory (data/, etcd.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        super::signal(self.pid(), sig);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
