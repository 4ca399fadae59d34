//! The documentation's examples are tested, so a flag renamed in the code
//! breaks a test, not a reader.
//!
//! For README.md, CONTRIBUTING.md and every page under docs/:
//!
//! 1. Every `dlock ...` command line in a shell-like code block is parsed
//!    with the real command-line definition ([`dlock::cli::Cli`]). Which
//!    lines are commands depends on the block's language: `sh`/`bash`/
//!    `shell`: every line; `console`: lines after `$ `; `cron`: the command
//!    after the five schedule fields; `ini`: the value of `Exec*=` (a
//!    systemd unit). `cargo run [--release] -- ARGS` counts as `dlock ARGS`
//!    (the README's first command). A block preceded by
//!    `<!-- docs-test: skip -->` is not parsed; such blocks are counted and
//!    capped.
//! 2. A block preceded by `<!-- docs-test: run -->` (optionally
//!    `<!-- docs-test: run, exit=N -->`) is also run by `/bin/sh -e`, with
//!    the built binary first in PATH, in a scratch directory with its own
//!    HOME and XDG directories and none of the developer's DLOCK_* variables
//!    (as tests/common does), so it runs against the embedded default
//!    (SQLite). Its exit status is checked. `./NAME.sh` scripts a block
//!    names are stand-ins that print their name and arguments; `cargo run
//!    --release --` is a shell function that runs the built binary (building
//!    a release inside the test would take minutes).
//! 3. Every relative link resolves to an existing file, and every `#anchor`
//!    to a heading of the file it points into (GitHub's heading ids).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches};

const DLOCK: &str = env!("CARGO_BIN_EXE_dlock");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Fewer than these means the extractor or the markers broke, not that the
/// docs got shorter.
const MIN_PARSED: usize = 60;
const MIN_RUN_BLOCKS: usize = 15;
const MIN_RUN_LINES: usize = 40;
/// Blocks excluded from parsing with `<!-- docs-test: skip -->`.
const MAX_SKIPPED: usize = 2;

// ---------------------------------------------------------------------------
// Reading the Markdown

/// The files whose examples and links are checked, relative to the root.
fn pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let root = Path::new(ROOT);
    let mut out = vec![root.join("README.md"), root.join("CONTRIBUTING.md")];
    walk(&root.join("docs"), &mut out);
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(ROOT).unwrap_or(p).display().to_string()
}

/// A fenced code block.
struct Block {
    file: String,
    /// 1-based line of the opening fence.
    line: usize,
    /// The info string's first word, lower case (`sh` of "sh title=x").
    lang: String,
    /// The `docs-test:` marker on the last non-blank line before the fence.
    marker: Option<String>,
    body: String,
}

fn blocks(file: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = Vec::new();
    let mut last_nonblank = "";
    let mut open: Option<(String, Block)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some((fence, block)) = &mut open {
            if trimmed.trim_end() == fence {
                out.push(open.take().unwrap().1);
                // A block right after this one takes no marker from before it.
                last_nonblank = trimmed;
            } else {
                block.body.push_str(line);
                block.body.push('\n');
            }
            continue;
        }
        let fence: String = trimmed
            .chars()
            .take_while(|&c| c == '`' || c == '~')
            .collect();
        if fence.len() >= 3 && fence.chars().all(|c| c == fence.chars().next().unwrap()) {
            let info = trimmed[fence.len()..].trim();
            let lang = info
                .split(|c: char| c.is_whitespace() || c == ',' || c == '{')
                .next()
                .unwrap_or_default()
                .to_lowercase();
            let marker = last_nonblank
                .trim()
                .strip_prefix("<!--")
                .and_then(|m| m.strip_suffix("-->"))
                .and_then(|m| m.trim().strip_prefix("docs-test:"))
                .map(|m| m.trim().to_string());
            open = Some((
                fence,
                Block {
                    file: rel(file),
                    line: i + 1,
                    lang,
                    marker,
                    body: String::new(),
                },
            ));
        }
        if !line.trim().is_empty() {
            last_nonblank = line;
        }
    }
    assert!(
        open.is_none(),
        "{}: a code block is never closed",
        rel(file)
    );
    out
}

// ---------------------------------------------------------------------------
// Taking shell apart (docs/shell.rs) and links (docs/links.rs)

#[path = "docs/shell.rs"]
mod shell;
use shell::*;

#[path = "docs/links.rs"]
mod links;

// ---------------------------------------------------------------------------
// Parsing with the real command line

/// The CLI definition with every `env = ...` removed, so the developer's
/// DLOCK_* variables cannot make a line parse (or fail) here.
fn cli_without_env() -> clap::Command {
    fn strip(c: clap::Command) -> clap::Command {
        let names: Vec<String> = c
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        let mut c = c.mut_args(|a| a.env(None::<&str>));
        for n in names {
            c = c.mut_subcommand(n, strip);
        }
        c
    }
    strip(dlock::cli::Cli::command())
}

fn parse(args: &[String]) -> Result<(), String> {
    let argv = std::iter::once("dlock".to_string()).chain(args.iter().cloned());
    match cli_without_env().try_get_matches_from(argv) {
        Ok(m) => dlock::cli::Cli::from_arg_matches(&m)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn every_dlock_command_line_in_the_docs_parses() {
    let mut parsed = 0;
    let mut skipped = Vec::new();
    let mut failures = Vec::new();
    for page in pages() {
        for b in blocks(&page) {
            if b.marker.as_deref() == Some("skip") {
                skipped.push(format!("{}:{}", b.file, b.line));
                continue;
            }
            for (line, args) in invocations(&b) {
                parsed += 1;
                if let Err(e) = parse(&args) {
                    failures.push(format!(
                        "{}:{}: {line}\n  args {args:?}\n  {e}",
                        b.file, b.line
                    ));
                }
            }
        }
    }
    eprintln!(
        "docs: parsed {parsed} dlock command lines; {} block(s) skipped {skipped:?}",
        skipped.len()
    );
    assert!(
        failures.is_empty(),
        "{} command line(s) in the docs do not parse:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        parsed >= MIN_PARSED,
        "only {parsed} dlock command lines found (expected at least {MIN_PARSED}): is the extractor broken?"
    );
    assert!(
        skipped.len() <= MAX_SKIPPED,
        "{} blocks are excluded from parsing (at most {MAX_SKIPPED}): {skipped:?}",
        skipped.len()
    );
}

// ---------------------------------------------------------------------------
// Running the examples that work on the embedded default

/// `run` or `run, exit=N`: the exit status expected of a block to run.
fn run_marker(b: &Block) -> Option<i32> {
    let m = b.marker.as_deref()?;
    let mut parts = m.split(',').map(str::trim);
    if parts.next()? != "run" {
        return None;
    }
    let mut code = 0;
    for p in parts {
        match p.strip_prefix("exit=") {
            Some(n) => code = n.parse().unwrap_or_else(|_| panic!("bad marker {m:?}")),
            None => panic!("{}:{}: unknown docs-test option {p:?}", b.file, b.line),
        }
    }
    Some(code)
}

/// What every block runs after: the stand-in for `cargo run --release --`.
const PREAMBLE: &str = r#"
cargo() {
  if [ "$1" = run ] && [ "$2" = --release ] && [ "$3" = -- ]; then
    shift 3; dlock "$@"
  else
    echo "docs test: only 'cargo run --release -- ...' is stood in for" >&2; return 1
  fi
}
"#;

/// Run one block; Err with what it printed if its status is not `expect`.
fn run_block(b: &Block, expect: i32) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let work = tmp.path().join("work");
    let bin = tmp.path().join("bin");
    for d in [&home, &work, &bin] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::os::unix::fs::symlink(DLOCK, bin.join("dlock")).unwrap();
    // Stand-ins for the scripts an example runs (./report.sh and the like).
    for name in stand_ins(&b.body) {
        let p = work.join(&name);
        std::fs::write(&p, format!("#!/bin/sh\necho \"{name} $*\"\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = work.join("example.sh");
    std::fs::write(&script, format!("{PREAMBLE}\n{}", b.body)).unwrap();

    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-e").arg(&script).current_dir(&work);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DLOCK_") {
            cmd.env_remove(&k);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin.clone()];
    paths.extend(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(paths).unwrap())
        .env("HOME", &home)
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            // The block's own process group, which this test started.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
            return Err("timed out after 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    if code == expect {
        Ok(())
    } else {
        Err(format!(
            "exit {code}, expected {expect}\n--- stdout\n{}--- stderr\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `./NAME` words of a block that name a script (`./report.sh`), or a
/// program the examples use as a stand-in name.
fn stand_ins(body: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in body.match_indices("./") {
        if i > 0 && !body[..i].ends_with([' ', '\t', '\'', '"']) {
            continue;
        }
        let name: String = body[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            .collect();
        if name.ends_with(".sh") {
            out.insert(name);
        }
    }
    out
}

#[test]
fn the_examples_marked_to_run_work_on_the_embedded_default() {
    let mut run_blocks = 0;
    let mut run_lines = 0;
    let mut failures = Vec::new();
    for page in pages() {
        for b in blocks(&page) {
            let Some(expect) = run_marker(&b) else {
                continue;
            };
            assert!(
                matches!(b.lang.as_str(), "sh" | "bash" | "shell"),
                "{}:{}: only sh blocks can be run",
                b.file,
                b.line
            );
            run_blocks += 1;
            run_lines += invocations(&b).len();
            if let Err(e) = run_block(&b, expect) {
                failures.push(format!("{}:{}:\n{}\n{e}", b.file, b.line, b.body));
            }
        }
    }
    eprintln!("docs: ran {run_blocks} blocks with {run_lines} dlock command lines");
    assert!(
        failures.is_empty(),
        "{} example block(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(
        run_blocks >= MIN_RUN_BLOCKS && run_lines >= MIN_RUN_LINES,
        "only {run_blocks} blocks / {run_lines} dlock lines ran (expected at least \
         {MIN_RUN_BLOCKS} / {MIN_RUN_LINES}): are the markers still there?"
    );
}

// ---------------------------------------------------------------------------
// The README's promises about itself

#[test]
fn the_readme_is_a_front_door_with_the_two_commands() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 300,
        "README.md has {lines} lines; keep it at most 300 (the rest goes in docs/)"
    );
    // The first command runs dlock on the embedded default (run above, as
    // a marked block); the second is the whole suite, which CI runs.
    assert!(readme.contains("cargo run --release -- run --key demo"));
    assert!(
        readme.contains("\nscripts/test.sh\n"),
        "the README names the test command"
    );
    assert!(readme.contains("`.ci/run` runs `scripts/test.sh`"));
    let ci = std::fs::read_to_string(Path::new(ROOT).join(".ci/run")).unwrap();
    assert!(
        ci.contains("scripts/test.sh"),
        ".ci/run runs scripts/test.sh"
    );
}
