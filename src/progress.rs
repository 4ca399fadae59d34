//! The live "waiting for ..." line on a terminal.
//!
//! While `run` or `acquire` waits for a busy lock and stderr is a terminal,
//! one line, redrawn in place, says what dlock waits for, for how long, and
//! who holds it. It is erased once the wait ends. Without a terminal (cron,
//! CI logs), with `-q`, `-v` or `--log-format json`, nothing is drawn: cron
//! mail stays quiet and logs stay line-oriented.

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::cli::LogFormat;
use crate::config::{LockSettings, Settings};
use crate::lease::Keeper;
use crate::status::{describe_holder, human_duration};

/// Drawn only after this, so an uncontended lock never flickers a line.
const FIRST_DRAW: Duration = Duration::from_millis(300);
const TICK: Duration = Duration::from_millis(250);
/// How often the holder is looked up again.
const LOOKUP_EVERY: Duration = Duration::from_secs(2);
const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

pub struct WaitLine {
    enabled: bool,
    keys: Vec<String>,
    lookup_timeout: Duration,
    drawn: Cell<bool>,
}

impl WaitLine {
    pub fn new(s: &Settings, lock: &LockSettings) -> WaitLine {
        let enabled = !s.quiet
            && s.verbose == 0
            && s.log_format == LogFormat::Text
            && std::io::stderr().is_terminal();
        WaitLine {
            enabled,
            keys: lock.keys.clone(),
            lookup_timeout: s.connect_timeout.min(LOOKUP_EVERY),
            drawn: Cell::new(false),
        }
    }

    /// Redraw the line until dropped; never returns.
    pub async fn show(
        &self,
        backend: &dyn Backend,
        namespace: &str,
        keeper: &Keeper,
        started: Instant,
    ) {
        if !self.enabled {
            return std::future::pending().await;
        }
        tokio::time::sleep_until((started + FIRST_DRAW).into()).await;
        let mut holder = String::new();
        let mut looked_up: Option<(Instant, String)> = None;
        for frame in 0usize.. {
            let held: Vec<String> = keeper.leases().into_iter().map(|l| l.key).collect();
            let waiting_for = self
                .keys
                .iter()
                .find(|k| !held.contains(k))
                .cloned()
                .unwrap_or_default();
            let stale = looked_up
                .as_ref()
                .is_none_or(|(at, k)| at.elapsed() >= LOOKUP_EVERY || *k != waiting_for);
            if stale {
                holder = self.holder(backend, namespace, &waiting_for).await;
                looked_up = Some((Instant::now(), waiting_for.clone()));
            }
            let secs = started.elapsed().as_secs();
            let mut line = format!(
                "{} dlock: waiting {} for {waiting_for:?}",
                SPINNER[frame % SPINNER.len()],
                if secs == 0 {
                    "0s".to_string()
                } else {
                    human_duration(Duration::from_secs(secs))
                }
            );
            if self.keys.len() > 1 {
                line.push_str(&format!(
                    " ({} of {} keys held)",
                    held.len(),
                    self.keys.len()
                ));
            }
            if !holder.is_empty() {
                line.push_str(": ");
                line.push_str(&holder);
            }
            self.draw(&line);
            tokio::time::sleep(TICK).await;
        }
    }

    async fn holder(&self, backend: &dyn Backend, namespace: &str, key: &str) -> String {
        let keys = [key.to_string()];
        let st = tokio::time::timeout(self.lookup_timeout, backend.status(namespace, &keys)).await;
        let Ok(Ok(st)) = st else {
            return String::new();
        };
        let Some(k) = st.first() else {
            return String::new();
        };
        let held = match k.holders.as_slice() {
            [h] => describe_holder(h),
            hs if hs.len() > 1 => format!("{} holders", hs.len()),
            _ => "just freed".to_string(),
        };
        // Where we stand, where the backend lists its line.
        match crate::status::my_place(k) {
            Some(n) => format!("{} in line; {held}", crate::status::ordinal(n)),
            None => held,
        }
    }

    fn draw(&self, line: &str) {
        let line = fit(line, terminal_width().saturating_sub(1).max(20));
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r\x1b[2K{line}");
        let _ = e.flush();
        self.drawn.set(true);
    }

    /// Erase the line, if one was drawn.
    pub fn clear(&self) {
        if self.drawn.replace(false) {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K");
            let _ = e.flush();
        }
    }
}

/// The line cut to `width` characters at a word boundary, with an
/// ellipsis, rather than mid-word.
fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let head: String = line.chars().take(width.saturating_sub(1)).collect();
    let cut = match head.rfind(' ') {
        Some(i) if head[..i].chars().count() >= width / 2 => &head[..i],
        _ => head.as_str(),
    };
    format!("{}…", cut.trim_end_matches([' ', ',', ':', '(']))
}

fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills the winsize we pass; fd 2 is only queried.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 {
            usize::from(ws.ws_col)
        } else {
            80
        }
    }
}

#[cfg(test)]
mod fit_tests {
    use super::fit;

    #[test]
    fn cuts_at_a_word() {
        assert_eq!(fit("short", 20), "short");
        let l = "waiting 3s for \"deploy\": held by alice@build-3 (pid 4242, token 17)";
        let f = fit(l, 40);
        assert!(f.chars().count() <= 40, "{f}");
        assert!(f.ends_with('…'), "{f}");
        assert!(l.starts_with(f.trim_end_matches('…')), "{f}");
        let next = l[f.trim_end_matches('…').len()..].chars().next();
        assert!(
            matches!(next, Some(' ' | ',' | ':' | '(')),
            "cut mid-word: {f}"
        );
    }
}
