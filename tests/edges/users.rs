//! Truthful at the edges (issue 24): a SQLite database shared across users
//! (a directory every user may write) and by a group, and the files
//! another user may plant beside it.

use super::*;

/// A second local user for the shared-file tests, made if missing (the
/// tests run as root, as `scripts/test.sh` does): its uid and gid.
fn second_user() -> (u32, u32) {
    static USER: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *USER.get_or_init(|| {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the shared-file tests need root, to act as a second user (scripts/test.sh runs as root)"
        );
        let name = "dlock-test-other";
        let lookup = || nix::unistd::User::from_name(name).unwrap();
        if lookup().is_none() {
            let useradd = servers::require("useradd", "passwd");
            let out = std::process::Command::new(useradd)
                .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])
                .output()
                .unwrap();
            assert!(
                lookup().is_some(),
                "useradd {name} failed: {}",
                stderr(&out)
            );
        }
        let u = lookup().unwrap();
        (u.uid.as_raw(), u.gid.as_raw())
    })
}

/// A directory every user may write, as `/tmp` (mode 1777), or `mode`.
fn shared_dir(mode: u32) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    d
}

/// `sh -c 'umask 022; exec "$@"'` as root, or as the second user with
/// `setpriv`, running dlock on `url` with a clean environment homed in `home`.
fn dlock_as(
    other: bool,
    home: &std::path::Path,
    url: &str,
    args: &[&str],
) -> std::process::Command {
    let mut c = if other {
        let (uid, gid) = second_user();
        let mut c = std::process::Command::new(servers::require("setpriv", "util-linux"));
        c.args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "sh",
        ]);
        c
    } else {
        std::process::Command::new("sh")
    };
    c.args([
        "-c",
        "umask 022; exec \"$@\"",
        "sh",
        DLOCK,
        "--backend",
        url,
    ])
    .args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DLOCK_") {
            c.env_remove(&k);
        }
    }
    c.env("HOME", home)
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .stdin(Stdio::null());
    c
}

fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Item 14: the cross-user recipe as the README gives it. Root's dlock
/// (umask 022) makes the database in a directory every user may write;
/// another user then takes, waits for and is refused the same locks, and
/// root sees that user's holds. A database made before, mode 644, is
/// refused at once with what to change.
#[test]
fn a_database_in_a_shared_directory_is_shared_across_users() {
    let shared = shared_dir(0o1777);
    let db = shared.path().join("team.db");
    let url = format!("sqlite:{}", db.display());
    let home = shared.path();
    let out = dlock_as(false, home, &url, &["run", "--key", "k", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        mode_of(&db),
        0o666,
        "the database is for every user of the directory"
    );
    assert_eq!(mode_of(&shared.path().join("team.db.wait")), 0o1777);
    let out = dlock_as(true, home, &url, &["run", "--key", "k", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "the other user writes it: {}", stderr(&out));
    // They exclude each other, and a waiter of one user wakes when the
    // other lets go.
    let ready = shared.path().join("ready");
    let mut holder = dlock_as(
        true,
        home,
        &url,
        &[
            "run",
            "--key",
            "k",
            "--",
            "sh",
            "-c",
            &format!("echo go > {}; sleep 1", ready.display()),
        ],
    )
    .spawn()
    .unwrap();
    read_when_ready(&ready, Duration::from_secs(20));
    let out = dlock_as(
        false,
        home,
        &url,
        &["run", "-n", "--key", "k", "--", "true"],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    let waited = Instant::now();
    let out = dlock_as(
        false,
        home,
        &url,
        &["run", "-w", "20s", "--key", "k", "--", "true"],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(waited.elapsed() < Duration::from_secs(5));
    assert_eq!(wait_timeout(&mut holder, Duration::from_secs(10)), 0);

    // A database that an older dlock made 644.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let started = Instant::now();
    let out = dlock_as(true, home, &url, &["run", "--key", "k", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(stderr(&out).contains("chmod 666"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(3), "said at once");
}

/// The name of the wake file of key `k` in the default namespace: made by
/// a run on a scratch database, since it depends on the key only.
fn wake_name(k: &str) -> std::ffi::OsString {
    let scratch = tempfile::tempdir().unwrap();
    let db = scratch.path().join("probe.db");
    let url = format!("sqlite:{}", db.display());
    // A waiter opens the wake file: hold the key, then wait for it briefly.
    let ready = scratch.path().join("ready");
    let mut h = dlock_as(
        false,
        scratch.path(),
        &url,
        &[
            "run",
            "--key",
            k,
            "--",
            "sh",
            "-c",
            &format!("echo go > {}; sleep 5", ready.display()),
        ],
    )
    .spawn()
    .unwrap();
    read_when_ready(&ready, Duration::from_secs(20));
    let _ = dlock_as(
        false,
        scratch.path(),
        &url,
        &["run", "-w", "200ms", "--key", k, "--", "true"],
    )
    .output();
    let _ = h.kill();
    let _ = h.wait();
    let mut names: Vec<_> = std::fs::read_dir(scratch.path().join("probe.db.wait"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    names.pop().unwrap()
}

/// Item 15: a `.wait` directory another user made beside a shared
/// database, with a link where a wake file will be, does not make root's
/// dlock create a file where the link points: it is refused, at once,
/// saying why. So are a `.wait` others may write without the sticky bit,
/// a wake file that is a link (in root's own directory), and a database
/// path that is another user's link.
#[test]
fn files_planted_by_another_user_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (uid, gid) = second_user();
    let name = wake_name("k");
    let shared = shared_dir(0o1777);
    let home = shared.path();
    let db = shared.path().join("team.db");
    let url = format!("sqlite:{}", db.display());
    let wait = shared.path().join("team.db.wait");
    let victim = shared.path().join("victim");

    // The other user's directory, with a link named like k's wake file.
    std::fs::create_dir(&wait).unwrap();
    std::os::unix::fs::symlink(&victim, wait.join(&name)).unwrap();
    std::os::unix::fs::lchown(wait.join(&name), Some(uid), Some(gid)).unwrap();
    std::os::unix::fs::chown(&wait, Some(uid), Some(gid)).unwrap();
    let ready = shared.path().join("ready");
    // A holder and a waiter: each would open the wake file.
    let mut h = dlock_as(
        false,
        home,
        &url,
        &[
            "run",
            "--key",
            "k",
            "--",
            "sh",
            "-c",
            &format!("echo go > {}; sleep 2", ready.display()),
        ],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let out = dlock_as(
        false,
        home,
        &url,
        &["run", "-w", "3s", "--key", "k", "--", "true"],
    )
    .output()
    .unwrap();
    let held = wait_timeout(&mut h, Duration::from_secs(20));
    assert!(!victim.exists(), "a file was made through the planted link");
    assert_eq!(held, 69, "the holder refuses the directory");
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("owned by dlock-test-other"),
        "{}",
        stderr(&out)
    );

    // Root's own directory, but anyone may rename in it.
    std::fs::remove_dir_all(&wait).unwrap();
    std::fs::create_dir(&wait).unwrap();
    std::fs::set_permissions(&wait, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = dlock_as(false, home, &url, &["run", "--key", "k", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(stderr(&out).contains("chmod +t"), "{}", stderr(&out));

    // Root's sticky directory, with a link another user put in it.
    std::fs::set_permissions(&wait, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::symlink(&victim, wait.join(&name)).unwrap();
    std::os::unix::fs::lchown(wait.join(&name), Some(uid), Some(gid)).unwrap();
    let mut h = dlock_as(
        false,
        home,
        &url,
        &["run", "--key", "k", "--", "sh", "-c", "sleep 1"],
    )
    .spawn()
    .unwrap();
    let _ = dlock_as(
        false,
        home,
        &url,
        &["run", "-w", "3s", "--key", "k", "--", "true"],
    )
    .output();
    wait_timeout(&mut h, Duration::from_secs(20));
    assert!(!victim.exists(), "a file was made through the planted link");

    // The database path itself, as another user's link.
    let link = shared.path().join("link.db");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(uid), Some(gid)).unwrap();
    let out = dlock_as(
        false,
        home,
        &format!("sqlite:{}", link.display()),
        &["run", "--key", "k", "--", "true"],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("symbolic link owned by"),
        "{}",
        stderr(&out)
    );
    assert!(!victim.exists(), "the database was made through the link");

    // SQLite's own files beside it, as another user's link.
    let wal = shared.path().join("team.db-wal");
    let _ = std::fs::remove_file(&wal);
    std::os::unix::fs::symlink(&victim, &wal).unwrap();
    std::os::unix::fs::lchown(&wal, Some(uid), Some(gid)).unwrap();
    let out = dlock_as(false, home, &url, &["run", "--key", "k", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("team.db-wal is a symbolic link"),
        "{}",
        stderr(&out)
    );
    assert!(!victim.exists(), "SQLite wrote through the link");
}

/// Item 14, the group variant: in a setgid directory of a group (2775),
/// the database is 0664 with that group and its `.wait` 3775, and a member
/// of the group who is not its owner writes it.
#[test]
fn a_database_in_a_group_directory_is_shared_by_the_group() {
    let (_, gid) = second_user();
    let shared = shared_dir(0o2775);
    std::os::unix::fs::chown(shared.path(), None, Some(gid)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o2775)).unwrap();
    let db = shared.path().join("team.db");
    let url = format!("sqlite:{}", db.display());
    // The other user's home must be theirs to read: give it the dir.
    let home = shared.path();
    let out = dlock_as(false, home, &url, &["run", "--key", "g", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(mode_of(&db), 0o664);
    assert_eq!(std::fs::metadata(&db).unwrap().gid(), gid);
    assert_eq!(mode_of(&shared.path().join("team.db.wait")), 0o3775);
    let out = dlock_as(true, home, &url, &["run", "--key", "g", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(
        code(&out),
        0,
        "a member of the group writes it: {}",
        stderr(&out)
    );
}
