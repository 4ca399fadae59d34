//! The command line: the configuration file, its errors, and its place
//! between flags, environment and defaults.

use super::*;

#[test]
fn config_file_errors_exit_78_naming_file_and_line() {
    let env = Env::sqlite();
    let cfg = env.path("bad.toml");
    std::fs::write(&cfg, "namespace = 'x'\nttl = [\n").unwrap();
    let out = env.run(&["--config", cfg.to_str().unwrap(), "status"]);
    assert_eq!(code(&out), 78, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("bad.toml") && err.contains("line"), "{err}");
    std::fs::write(&cfg, "namespace = 'x'\nbogus_key = 1\n").unwrap();
    let out = env.run(&["--config", cfg.to_str().unwrap(), "status"]);
    assert_eq!(code(&out), 78);
    assert!(stderr(&out).contains("line 2"), "{}", stderr(&out));
    std::fs::write(&cfg, "ttl = 'forever'\n").unwrap();
    let out = env.run(&["--config", cfg.to_str().unwrap(), "status"]);
    assert_eq!(code(&out), 78);
    assert!(stderr(&out).contains("line 1"), "{}", stderr(&out));
    let out = env.run(&[
        "--config",
        env.path("missing.toml").to_str().unwrap(),
        "status",
    ]);
    assert_eq!(code(&out), 78);
    assert!(stderr(&out).contains("missing.toml"));
    std::fs::write(&cfg, "namespace = 'x'\n").unwrap();
    let out = env.run(&[
        "--config",
        cfg.to_str().unwrap(),
        "--profile",
        "nope",
        "status",
    ]);
    assert_eq!(code(&out), 78);
    assert!(stderr(&out).contains("profile.nope"), "{}", stderr(&out));
}

#[test]
fn precedence_flag_env_file_default() {
    let dir = tempfile::tempdir().unwrap();
    let conf_dir = dir.path().join("config/dlock");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let db = dir.path().join("from-file.db");
    std::fs::write(
        conf_dir.join("config.toml"),
        format!(
            "backend = 'sqlite:{}'\nnamespace = 'file-ns'\n[profile.ci]\nnamespace = 'profile-ns'\n",
            db.display()
        ),
    )
    .unwrap();
    let ns = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = bare(dir.path());
        c.args(args).arg("status");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out)
    };
    assert!(
        ns(&[], &[]).contains("\"file-ns\""),
        "config file beats the default"
    );
    assert!(
        ns(&["--profile", "ci"], &[]).contains("\"profile-ns\""),
        "profile beats the top level"
    );
    assert!(
        ns(&[], &[("DLOCK_NAMESPACE", "env-ns")]).contains("\"env-ns\""),
        "env beats the file"
    );
    assert!(
        ns(
            &["--namespace", "flag-ns"],
            &[("DLOCK_NAMESPACE", "env-ns")]
        )
        .contains("\"flag-ns\""),
        "flag beats env"
    );
    assert!(
        ns(&[], &[]).contains("from-file.db"),
        "backend from the config file"
    );
    // With no config and no flags, the default lives under XDG_STATE_HOME.
    let empty = tempfile::tempdir().unwrap();
    let out = bare(empty.path())
        .args(["run", "--key", "demo", "--", "echo", "hello"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello\n");
    assert!(empty.path().join("state/dlock/locks.db").exists());
}

#[test]
fn config_sets_lock_options() {
    let env = Env::sqlite();
    let cfg = env.path("c.toml");
    std::fs::write(
        &cfg,
        "ttl = '45s'\nconflict-exit-code = 9\nno-wait = true\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let out = env.run(&[
        "--config",
        c,
        "run",
        "--key",
        "k",
        "--",
        "sh",
        "-c",
        "echo $DLOCK_TTL",
    ]);
    assert_eq!(stdout(&out).trim(), "45");
    let out = env.run(&[
        "--config",
        c,
        "run",
        "--ttl",
        "5s",
        "--key",
        "k",
        "--",
        "sh",
        "-c",
        "echo $DLOCK_TTL",
    ]);
    assert_eq!(stdout(&out).trim(), "5", "the flag beats the file");
    let h = stdout(&env.run(&["acquire", "--key", "k"]))
        .trim()
        .to_string();
    let out = env.run(&["--config", c, "run", "--key", "k", "--", "true"]);
    assert_eq!(
        code(&out),
        9,
        "no-wait and conflict-exit-code from the file"
    );
    assert_eq!(code(&env.run(&["release", &h])), 0);
}
