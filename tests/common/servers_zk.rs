//! Real ZooKeeper servers for the tests, started on free loopback ports in
//! temporary directories, and killed when the test ends (or, shared, when
//! the test binary does: `kept.rs`): one
//! standalone server (`Zookeeper`) or a three-server quorum
//! (`ZookeeperEnsemble`), in the style of `servers::Redis`. A missing `java`
//! or ZooKeeper jar fails the test with the Debian package to install.
//!
//! Self-contained (no `super::`), so it can be included on its own.
//!
//! Each server is one JVM, run directly as our child (`java -cp ...
//! QuorumPeerMain zoo.cfg`, as Debian's zkServer.sh start-foreground does),
//! so killing the child kills the server. The classpath is Debian's
//! `/usr/share/java/zookeeper.jar`, whose manifest `Class-Path` names its
//! dependencies (zookeeper-jute, netty, slf4j-api, ...), plus
//! `/usr/share/java/slf4j-simple.jar` as the slf4j binding, so that the
//! server logs (to `zookeeper.log` in its directory, with the JVM's own
//! stdout and stderr) rather than to slf4j's no-op logger.
//!
//! `tickTime` is 200 ms, so sessions may be as short as 400 ms (and as long
//! as 60 s) and session-expiry tests are quick. `forceSync=no`: every write
//! still reaches the OS before the client hears of it, so a killed server
//! (not a crashed machine) loses nothing. Otherwise the servers run as
//! shipped: no TTL nodes (`Zookeeper::start_with_ttl` turns them on), the
//! default `maxClientCnxns` (60 per client address).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

/// The server's jar; its manifest brings the rest of the classpath.
const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
/// Named by that manifest, and in the same Debian package.
const JUTE_JAR: &str = "/usr/share/java/zookeeper-jute.jar";
/// An slf4j binding (libslf4j-java, a dependency of libzookeeper-java):
/// without one the server logs nothing at all.
const SLF4J_SIMPLE_JAR: &str = "/usr/share/java/slf4j-simple.jar";

/// How long a server (a JVM) may take to start, or a quorum to form, on a
/// busy machine.
const START_LIMIT: Duration = Duration::from_secs(30);

/// `n` distinct free TCP ports on 127.0.0.1 (all bound at once, then
/// released for the servers).
fn ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn locate(binary: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/usr/lib/jvm/default-java/bin"])
        .map(|dir| Path::new(dir).join(binary))
        .find(|p| p.is_file())
}

/// `java` and the classpath of Debian's ZooKeeper.
fn java_and_classpath() -> (PathBuf, String) {
    let java = locate("java").unwrap_or_else(|| {
        panic!(
            "java not found: install the Debian package `zookeeper` (it brings \
             default-jre; scripts/test.sh does)"
        )
    });
    for jar in [ZOOKEEPER_JAR, JUTE_JAR] {
        assert!(
            Path::new(jar).is_file(),
            "{jar} not found: install the Debian package `zookeeper` (scripts/test.sh does)"
        );
    }
    let mut cp = ZOOKEEPER_JAR.to_string();
    if Path::new(SLF4J_SIMPLE_JAR).is_file() {
        cp.push(':');
        cp.push_str(SLF4J_SIMPLE_JAR);
    }
    (java, cp)
}

/// A `java` command for a quick-starting, small JVM with our classpath.
fn jvm(log_level: &str) -> Command {
    let (java, cp) = java_and_classpath();
    let mut c = Command::new(java);
    c.args([
        "-Xmx128m",
        "-XX:+UseSerialGC",
        // C1 only: starts faster, and spares the CPU of a small machine.
        "-XX:TieredStopAtLevel=1",
        // No /tmp/hsperfdata_USER/PID, which a SIGKILL would leave behind.
        "-XX:-UsePerfData",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.net.preferIPv4Stack=true",
        "-Dzookeeper.jmx.log4j.disable=true",
    ])
    .arg(format!(
        "-Dorg.slf4j.simpleLogger.defaultLogLevel={log_level}"
    ))
    .args([
        "-Dorg.slf4j.simpleLogger.showDateTime=true",
        "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
    ])
    .arg("-cp")
    .arg(cp);
    c
}

fn send(pid: u32, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("kill");
}

/// A temporary directory in /tmp, whatever TMPDIR says.
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

/// A four-letter word (`ruok`, `srvr`, `conf`, `stat`, `mntr`...) to the
/// server on `port`, its whole answer; `None` if it does not answer within
/// a second (not listening, stopped, or closing without a word).
fn four_letter(port: u16, word: &str) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(word.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The `Mode:` that `srvr` reports (`standalone`, `leader`, `follower`),
/// `None` while the server is not serving (starting, electing, no quorum).
fn mode(port: u16) -> Option<String> {
    let srvr = four_letter(port, "srvr")?;
    srvr.lines()
        .find_map(|l| l.strip_prefix("Mode: "))
        .map(|m| m.trim().to_string())
}

/// Run ZooKeeper's command-line client (`org.apache.zookeeper.ZooKeeperMain
/// -server SERVERS ARGS...`, as zkCli.sh does) once, connected first (up to
/// 10 s).
fn cli(servers: &str, args: &[&str]) -> Output {
    jvm("warn")
        .arg("org.apache.zookeeper.ZooKeeperMain")
        // Else the command runs at once, and fails with ConnectionLoss when
        // the first server tried (at random) is down.
        .args(["-waitforconnection", "-timeout", "10000"])
        .args(["-server", servers])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run java org.apache.zookeeper.ZooKeeperMain")
}

/// The data of znode `path` by the client, `None` if it does not exist. The
/// client prints its connection events before the data.
fn cli_get(servers: &str, path: &str) -> Option<String> {
    let out = cli(servers, &["get", path]);
    if !out.status.success() {
        return None;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let data = match stdout.find("WatchedEvent state:SyncConnected") {
        Some(i) => stdout[i..].split_once('\n').map_or("", |(_, rest)| rest),
        None => &stdout,
    };
    Some(data.strip_suffix('\n').unwrap_or(data).to_string())
}

/// Why a launch failed: a server died (perhaps a port was taken between
/// `ports()` and its bind, worth other ports), or never got ready.
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

/// Start new servers up to three times, on new ports each time one died.
fn with_ports<T>(mut attempt: impl FnMut() -> Result<T, Failed>) -> T {
    let mut n = 0;
    loop {
        n += 1;
        match attempt() {
            Ok(t) => return t,
            Err(Failed::Died(m)) if n < 3 => eprintln!("retrying on other ports: {m}"),
            Err(e) => panic!("{}", e.message()),
        }
    }
}

/// Kill a server and reap it: SIGCONT (as for the other servers: a test may
/// have SIGSTOPped it), then SIGKILL, a crash.
fn kill(child: Option<Child>) {
    if let Some(mut c) = child {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), Signal::SIGCONT);
        let _ = c.kill();
        let _ = c.wait();
    }
}

// ------------------------------------------------------------------- a server

/// One ZooKeeper server: its directory (zoo.cfg, data/, zookeeper.log), its
/// client port and, in a quorum, its id and quorum and election ports.
struct Node {
    dir: PathBuf,
    /// 0 when standalone, else `server.ID` and `myid`.
    id: usize,
    port: u16,
    child: Option<Child>,
    /// TTL nodes on (`zookeeper.extendedTypesEnabled=true`); off, as
    /// shipped, unless asked for.
    ttl_nodes: bool,
}

impl Node {
    fn new(dir: PathBuf, id: usize) -> Node {
        Node {
            dir,
            id,
            port: 0,
            child: None,
            ttl_nodes: false,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("zookeeper.log")
    }

    fn config(&self) -> PathBuf {
        self.dir.join("zoo.cfg")
    }

    /// A fresh data directory and zoo.cfg; `quorum` lists every server's
    /// (quorum port, election port), in id order.
    fn configure(&self, quorum: &[(u16, u16)]) {
        let _ = std::fs::remove_dir_all(self.data());
        std::fs::create_dir_all(self.data()).expect("create the data directory");
        let mut cfg = format!(
            "tickTime=200\n\
             minSessionTimeout=400\n\
             maxSessionTimeout=60000\n\
             dataDir={}\n\
             clientPort={}\n\
             clientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n\
             4lw.commands.whitelist=*\n\
             forceSync=no\n\
             preAllocSize=1024\n",
            self.data().display(),
            self.port,
        );
        if !quorum.is_empty() {
            // 10 s for a follower to sync with a new leader; a stopped
            // leader (or follower) is dropped after 2 s.
            cfg.push_str("initLimit=50\nsyncLimit=10\n");
            for (i, (q, e)) in quorum.iter().enumerate() {
                cfg.push_str(&format!("server.{}=127.0.0.1:{q}:{e}\n", i + 1));
            }
            std::fs::write(self.data().join("myid"), format!("{}\n", self.id)).expect("write myid");
        }
        std::fs::write(self.config(), cfg).expect("write zoo.cfg");
    }

    /// Start the JVM on the zoo.cfg already written; do not wait.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("open zookeeper.log");
        let mut java = jvm("info");
        // Container (and TTL) znodes are reaped within a second, not a minute.
        java.arg("-Dznode.container.checkIntervalMs=100");
        if self.ttl_nodes {
            // TTL znodes: off in a stock server.
            java.arg("-Dzookeeper.extendedTypesEnabled=true");
        }
        let child = java
            // An election waits at most 1 s (not 60) for a late peer.
            .arg("-Dzookeeper.fastleader.maxNotificationInterval=1000")
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(self.config())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .expect("start java (ZooKeeper)");
        self.child = Some(child);
    }

    /// Whether the JVM has exited (reaped; the failure message if so).
    fn died(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(format!(
                    "zookeeper (port {}) exited ({status}) while starting; {}:\n{}",
                    self.port,
                    self.log().display(),
                    tail(&self.log())
                ))
            }
            _ => None,
        }
    }

    /// Whether this server is ours (`conf` names our data directory), says
    /// `imok`, and serves in one of `modes`; its mode if so.
    fn serving(&self, modes: &[&str]) -> Option<String> {
        if four_letter(self.port, "ruok").as_deref() != Some("imok") {
            return None;
        }
        let m = mode(self.port)?;
        if !modes.contains(&m.as_str()) {
            return None;
        }
        let conf = four_letter(self.port, "conf")?;
        let ours = format!("dataDir={}", self.data().display());
        conf.lines().any(|l| l.starts_with(&ours)).then_some(m)
    }

    fn timeout(&self, what: &str) -> String {
        format!(
            "{what} (port {}) did not start within {START_LIMIT:?}; {}:\n{}",
            self.port,
            self.log().display(),
            tail(&self.log())
        )
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn stop(&mut self) {
        kill(self.child.take());
    }
}

/// Wait until every node of `nodes` is serving in one of `modes` and
/// `done(modes seen)` holds; fail early if one dies.
fn wait_all(
    nodes: &mut [Node],
    modes: &[&str],
    done: impl Fn(&[String]) -> bool,
) -> Result<(), Failed> {
    let start = Instant::now();
    loop {
        for n in nodes.iter_mut() {
            if let Some(m) = n.died() {
                return Err(Failed::Died(m));
            }
        }
        let seen: Vec<String> = nodes.iter().filter_map(|n| n.serving(modes)).collect();
        if seen.len() == nodes.len() && done(&seen) {
            return Ok(());
        }
        if start.elapsed() > START_LIMIT {
            let slow = nodes
                .iter()
                .find(|n| n.serving(modes).is_none())
                .unwrap_or(&nodes[0]);
            return Err(Failed::Timeout(
                slow.timeout(&format!("zookeeper (modes seen: {seen:?})")),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ----------------------------------------------------------------- standalone

/// A standalone ZooKeeper server on its own port, keeping its data across
/// `restart()`.
pub struct Zookeeper {
    pub port: u16,
    dir: tempfile::TempDir,
    node: Node,
}

impl Zookeeper {
    /// A server as shipped: no TTL nodes, `maxClientCnxns` 60.
    pub fn start() -> Zookeeper {
        Self::start_as(false)
    }

    /// A server with TTL nodes on (`-Dzookeeper.extendedTypesEnabled=true`).
    pub fn start_with_ttl() -> Zookeeper {
        Self::start_as(true)
    }

    fn start_as(ttl_nodes: bool) -> Zookeeper {
        let dir = scratch("dlock-zk.");
        let mut node = Node::new(dir.path().to_path_buf(), 0);
        node.ttl_nodes = ttl_nodes;
        with_ports(|| {
            node.port = ports(1)[0];
            node.configure(&[]);
            Self::launch(&mut node)
        });
        Zookeeper {
            port: node.port,
            dir,
            node,
        }
    }

    fn launch(node: &mut Node) -> Result<(), Failed> {
        node.spawn();
        let res = wait_all(std::slice::from_mut(node), &["standalone"], |_| true);
        if res.is_err() {
            node.stop();
        }
        res
    }

    pub fn url(&self) -> String {
        format!("zk://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.node.pid()
    }

    /// Kill it (a crash: SIGKILL).
    pub fn stop(&mut self) {
        self.node.stop();
    }

    /// Kill it and start it again on the same port and data, which it keeps
    /// (sessions too: those not expired meanwhile live on).
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = Self::launch(&mut self.node) {
            panic!("{}", e.message());
        }
    }

    pub fn signal(&self, sig: Signal) {
        send(self.pid(), sig);
    }

    /// A four-letter word's answer (`ruok`, `srvr`, `cons`, `dump`...).
    pub fn four_letter(&self, word: &str) -> Option<String> {
        four_letter(self.port, word)
    }

    /// ZooKeeper's command-line client, once (`create /x y`, `get /x`,
    /// `ls /`...). Its stdout starts with connection events; errors (and
    /// "Created /x") go to stderr.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&format!("127.0.0.1:{}", self.port), args)
    }

    /// The data of znode `path`, `None` if it does not exist.
    pub fn get(&self, path: &str) -> Option<String> {
        cli_get(&format!("127.0.0.1:{}", self.port), path)
    }

    /// The server's directory (zoo.cfg, data/, zookeeper.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Zookeeper {
    fn drop(&mut self) {
        self.node.stop();
    }
}

// ------------------------------------------------------------------- ensemble

/// Three ZooKeeper servers on loopback forming one quorum. Servers are
/// indexed 0, 1, 2 (ZooKeeper ids 1, 2, 3).
pub struct ZookeeperEnsemble {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl ZookeeperEnsemble {
    /// Start the three servers at once, and wait until one leads and two
    /// follow.
    pub fn start() -> ZookeeperEnsemble {
        let dir = scratch("dlock-zk3.");
        let mut nodes: Vec<Node> = (1..=3)
            .map(|id| {
                let d = dir.path().join(format!("s{id}"));
                std::fs::create_dir_all(&d).expect("create a server directory");
                Node::new(d, id)
            })
            .collect();
        with_ports(|| {
            let p = ports(9);
            let quorum = [(p[3], p[6]), (p[4], p[7]), (p[5], p[8])];
            for (i, n) in nodes.iter_mut().enumerate() {
                n.port = p[i];
            }
            for n in nodes.iter() {
                n.configure(&quorum);
            }
            for n in nodes.iter_mut() {
                n.spawn();
            }
            let res = wait_all(&mut nodes, &["leader", "follower"], |seen| {
                seen.iter().filter(|m| *m == "leader").count() == 1
            });
            if res.is_err() {
                for n in nodes.iter_mut() {
                    n.stop();
                }
            }
            res
        });
        ZookeeperEnsemble { dir, nodes }
    }

    /// `zk://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`
    pub fn url(&self) -> String {
        format!("zk://{}", self.servers())
    }

    /// `127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`
    fn servers(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        hosts.join(",")
    }

    /// Server `i`'s client port.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.nodes[i].pid()
    }

    /// Each server's `srvr` mode (`leader`, `follower`), `None` for one
    /// not serving (stopped, killed, electing, or without a quorum). Asked
    /// in parallel: a SIGSTOPped server takes a second to time out.
    pub fn modes(&self) -> Vec<Option<String>> {
        std::thread::scope(|s| {
            let asks: Vec<_> = self
                .nodes
                .iter()
                .map(|n| {
                    let running = n.child.is_some();
                    let port = n.port;
                    s.spawn(move || if running { mode(port) } else { None })
                })
                .collect();
            asks.into_iter().map(|a| a.join().unwrap()).collect()
        })
    }

    /// The index of the server whose `srvr` says `Mode: leader` now, `None`
    /// while there is none (an election under way, or no quorum).
    pub fn leader_index(&self) -> Option<usize> {
        self.modes()
            .iter()
            .position(|m| m.as_deref() == Some("leader"))
    }

    /// Wait up to `limit` for a leader with at least one follower (a serving
    /// quorum of the three); its index.
    pub fn wait_leader(&self, limit: Duration) -> usize {
        let start = Instant::now();
        loop {
            let modes = self.modes();
            let leader = modes.iter().position(|m| m.as_deref() == Some("leader"));
            let followers = modes
                .iter()
                .filter(|m| m.as_deref() == Some("follower"))
                .count();
            if let Some(i) = leader.filter(|_| followers >= 1) {
                return i;
            }
            assert!(
                start.elapsed() < limit,
                "no ZooKeeper leader with a follower within {limit:?}: modes {modes:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill server `i` (a crash: SIGKILL).
    pub fn stop(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Start server `i` again (after `stop(i)`, or kill it first) on its
    /// port and data, and wait until it leads or follows.
    pub fn restart(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.stop();
        n.spawn();
        let res = wait_all(std::slice::from_mut(n), &["leader", "follower"], |_| true);
        if let Err(e) = res {
            n.stop();
            panic!("{}", e.message());
        }
    }

    pub fn signal(&self, i: usize, sig: Signal) {
        send(self.pid(i), sig);
    }

    /// A four-letter word's answer from server `i`.
    pub fn four_letter(&self, i: usize, word: &str) -> Option<String> {
        four_letter(self.nodes[i].port, word)
    }

    /// ZooKeeper's command-line client, once, against all three servers.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.servers(), args)
    }

    /// The data of znode `path`, `None` if it does not exist.
    pub fn get(&self, path: &str) -> Option<String> {
        cli_get(&self.servers(), path)
    }

    /// The ensemble's directory (s1/, s2/, s3/: zoo.cfg, data/,
    /// zookeeper.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ZookeeperEnsemble {
    fn drop(&mut self) {
        for n in self.nodes.iter_mut() {
            n.stop();
        }
    }
}
