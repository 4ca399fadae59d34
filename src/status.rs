//! How locks and holders are shown to people (`status`, busy messages) and
//! to programs (`status --json`).

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::backend::{Holder, KeyStatus};

pub use crate::human::human_duration;

fn ago(t: SystemTime, now: SystemTime) -> String {
    match now.duration_since(t) {
        Ok(d) => format!("{} ago", human_duration(d)),
        Err(_) => "just now".to_string(),
    }
}

fn until(t: SystemTime, now: SystemTime) -> String {
    match t.duration_since(now) {
        Ok(d) => format!("in {}", human_duration(d)),
        Err(_) => "expired".to_string(),
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The pid recorded for a lease taken by `dlock acquire`: no process holds
/// it, the handle does.
pub const HANDLE_PID: u32 = 0;

/// Whether `h` is a lock left to lapse by a run that has ended
/// (`--lock-at-least`): its process was on this host and is gone, yet the
/// lease is live and not a dead holder's (which the backend would break).
pub fn lapsing(h: &Holder) -> bool {
    let Some(pid) = h.pid.filter(|p| *p != HANDLE_PID) else {
        return false;
    };
    if h.dead || h.host.as_deref() != Some(crate::host::hostname().as_str()) {
        return false;
    }
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// `alice@build-3`, or whatever part of it is known.
pub fn who(h: &Holder) -> String {
    match (&h.owner, &h.host) {
        (Some(o), Some(host)) => format!("{o}@{host}"),
        (Some(o), None) => o.clone(),
        (None, Some(host)) => format!("?@{host}"),
        (None, None) => "unknown".to_string(),
    }
}

/// One line about a holder, for the busy message.
pub fn describe_holder(h: &Holder) -> String {
    let now = SystemTime::now();
    let how = if h.shared { "shared by" } else { "held by" };
    let mut s = format!("{how} {}", who(h));
    let mut extra = Vec::new();
    match h.pid {
        Some(HANDLE_PID) => extra.push("a handle from `dlock acquire`".to_string()),
        Some(p) if lapsing(h) => extra.push(format!(
            "pid {p}, which has ended: kept until it lapses (--lock-at-least)"
        )),
        Some(p) => extra.push(format!("pid {p}")),
        None => {}
    }
    if let Some(t) = h.token {
        extra.push(format!("token {t}"));
    }
    if h.dead {
        extra.push("dead: its process is gone".to_string());
    }
    if !extra.is_empty() {
        s.push_str(&format!(" ({})", extra.join(", ")));
    }
    if let Some(a) = h.acquired_at {
        s.push_str(&format!(" since {}", ago(a, now)));
    }
    if let Some(e) = h.expires_at {
        s.push_str(&format!(", lease expires {}", until(e, now)));
    }
    s
}

/// The slot `h` holds: the one recorded, or 0 for the exclusive holder
/// of a mutex; none for a shared holder.
pub fn slot_of(h: &Holder, limit: u32) -> Option<u32> {
    h.slot.or((!h.shared && limit <= 1).then_some(0))
}

/// `1st`, `2nd`, `3rd`, `11th`, `22nd`: a place in line.
pub fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Where this process stands in a key's line (1 for first), if it is in it.
pub fn my_place(k: &KeyStatus) -> Option<usize> {
    let (pid, host) = (std::process::id(), crate::host::hostname());
    k.queue
        .iter()
        .position(|w| w.pid == Some(pid) && w.host.as_deref() == Some(host.as_str()))
        .map(|i| i + 1)
}

pub fn to_json(statuses: &[KeyStatus]) -> Value {
    Value::Array(
        statuses
            .iter()
            .map(|k| {
                json!({
                    "key": k.key,
                    // Unknown when the key could not be read.
                    "held": k.unreadable.is_none().then_some(!k.holders.is_empty()),
                    // No limit applies to a key held shared.
                    "limit": (!k.holders.iter().any(|h| h.shared)).then_some(k.limit),
                    "holders": k.holders.iter().map(|h| json!({
                        "owner": h.owner,
                        "host": h.host,
                        "pid": h.pid.filter(|p| *p != HANDLE_PID),
                        "handle": h.pid == Some(HANDLE_PID),
                        "token": h.token,
                        "acquired_at": h.acquired_at.map(rfc3339),
                        "expires_at": h.expires_at.map(rfc3339),
                        "dead": h.dead,
                        "lapse": lapsing(h),
                        "mode": if h.shared { "shared" } else { "exclusive" },
                        "slot": slot_of(h, k.limit),
                    })).collect::<Vec<_>>(),
                    "waiters": k.waiters,
                    // First in line first.
                    "queue": k.queue.iter().map(|w| json!({
                        "owner": w.owner,
                        "host": w.host,
                        "pid": w.pid.filter(|p| *p != HANDLE_PID),
                        "since": w.acquired_at.map(rfc3339),
                        "mode": if w.shared { "shared" } else { "exclusive" },
                        "dead": w.dead,
                    })).collect::<Vec<_>>(),
                    "unreadable": k.unreadable,
                })
            })
            .collect(),
    )
}

/// ANSI styles, or nothing when colour is off.
#[derive(Debug, Clone, Copy)]
pub struct Paint(pub bool);

impl Paint {
    pub const BOLD: &'static str = "1";
    pub const DIM: &'static str = "2";
    pub const RED: &'static str = "31";
    pub const GREEN: &'static str = "32";
    pub const YELLOW: &'static str = "33";
    pub const MAGENTA: &'static str = "35";

    pub fn paint(self, style: &str, text: &str) -> String {
        if self.0 && !style.is_empty() && !text.is_empty() {
            format!("\x1b[{style}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// The `status` table, one line per holder (a free key gets one line).
/// Colour marks free and held keys, expired leases and holders that are not
/// dlock (another client of the same recipe, whose owner is unknown).
pub fn table(statuses: &[KeyStatus], paint: Paint) -> String {
    let now = SystemTime::now();
    // Each row's cells, and the style of each cell ("" for none).
    let mut styles: Vec<[&str; 8]> = vec![[Paint::BOLD; 8]];
    let mut rows: Vec<[String; 8]> = vec![[
        "KEY".into(),
        "STATE".into(),
        "HOLDER".into(),
        "PID".into(),
        "SINCE".into(),
        "EXPIRES".into(),
        "TOKEN".into(),
        "WAITERS".into(),
    ]];
    let dash = || "-".to_string();
    for k in statuses {
        let waiters = k.waiters.map_or_else(dash, |w| w.to_string());
        let shared = k.holders.iter().filter(|h| h.shared).count();
        let state = |n: usize| {
            if shared > 0 {
                format!("shared {shared}")
            } else if k.limit > 1 {
                format!("held {n}/{}", k.limit)
            } else {
                "held".to_string()
            }
        };
        // A key with no holder to list: unreadable, or free.
        let bare = match &k.unreadable {
            Some(why) => Some((Paint::RED, "unreadable", why.clone())),
            None if k.holders.is_empty() => Some((Paint::GREEN, "free", dash())),
            None => None,
        };
        if let Some((paint, word, detail)) = bare {
            styles.push(["", paint, "", "", "", "", "", ""]);
            rows.push([
                k.key.clone(),
                word.into(),
                detail,
                dash(),
                dash(),
                dash(),
                dash(),
                waiters,
            ]);
            continue;
        }
        for (i, h) in k.holders.iter().enumerate() {
            let expired = h.expires_at.is_some_and(|e| e <= now);
            let lapse = lapsing(h);
            styles.push([
                "",
                Paint::YELLOW,
                if h.owner.is_none() {
                    Paint::MAGENTA
                } else {
                    ""
                },
                if h.dead { Paint::RED } else { "" },
                "",
                if expired { Paint::RED } else { "" },
                "",
                "",
            ]);
            rows.push([
                if i == 0 { k.key.clone() } else { String::new() },
                match (i, slot_of(h, k.limit).filter(|_| k.limit > 1)) {
                    (0, Some(n)) => format!("{} slot {n}", state(k.holders.len())),
                    (0, None) => state(k.holders.len()),
                    (_, Some(n)) => format!("slot {n}"),
                    (_, None) => String::new(),
                },
                who(h),
                match (h.pid, h.dead) {
                    (Some(HANDLE_PID), _) => "handle".to_string(),
                    (Some(p), true) => format!("{p} dead"),
                    (Some(p), false) if lapse => format!("{p} ended"),
                    (Some(p), false) => p.to_string(),
                    (None, true) => "dead".to_string(),
                    (None, false) => dash(),
                },
                h.acquired_at.map_or_else(dash, |a| ago(a, now)),
                match h.expires_at {
                    Some(e) if lapse => format!("kept until it lapses {}", until(e, now)),
                    Some(e) => until(e, now),
                    None => dash(),
                },
                h.token.map_or_else(dash, |t| t.to_string()),
                if i == 0 {
                    waiters.clone()
                } else {
                    String::new()
                },
            ]);
        }
        // The line, first in line first.
        for (i, w) in k.queue.iter().enumerate() {
            let pid_style = if w.dead { Paint::RED } else { "" };
            styles.push(["", Paint::DIM, "", pid_style, "", "", "", ""]);
            rows.push([
                String::new(),
                format!(
                    "{} in line{}",
                    ordinal(i + 1),
                    if w.shared { " (shared)" } else { "" }
                ),
                who(w),
                match (w.pid, w.dead) {
                    (Some(p), true) => format!("{p} dead"),
                    (Some(p), false) => p.to_string(),
                    (None, _) => dash(),
                },
                w.acquired_at
                    .map_or_else(dash, |a| format!("waiting {}", ago(a, now))),
                dash(),
                dash(),
                String::new(),
            ]);
        }
    }
    let mut widths = [0usize; 8];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (r, st) in rows.iter().zip(&styles) {
        let last = r.iter().rposition(|c| !c.is_empty()).unwrap_or(0);
        let cells = r.iter().zip(widths).zip(st).take(last + 1).enumerate();
        let line = cells
            .map(|(i, ((c, w), style))| {
                let pad = if i == last { 0 } else { w - c.chars().count() };
                format!("{}{}", paint.paint(style, c), " ".repeat(pad))
            })
            .collect::<Vec<_>>()
            .join("  ");
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Compare key names as people do: digits as numbers (`job-2` before
/// `job-10`), the rest as text.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut digits = None;
        for (i, c) in s.char_indices() {
            let d = c.is_ascii_digit();
            if digits.is_some_and(|was| was != d) {
                out.push((digits.unwrap_or(false), &s[start..i]));
                start = i;
            }
            digits = Some(d);
        }
        if start < s.len() {
            out.push((digits.unwrap_or(false), &s[start..]));
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, xa), (db, xb)) in ca.iter().zip(&cb) {
        let ord = if *da && *db {
            let (ta, tb) = (xa.trim_start_matches('0'), xb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            xa.cmp(xb)
        };
        if ord != std::cmp::Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_with_numbers_as_numbers() {
        let mut keys = vec![
            "job-11", "job-2", "job-10", "job-1", "a", "job-02", "b7", "b10",
        ];
        keys.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            keys,
            vec![
                "a", "b7", "b10", "job-1", "job-02", "job-2", "job-10", "job-11"
            ]
        );
    }

    #[test]
    fn places_in_line_read_well() {
        let got: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111]
            .into_iter()
            .map(ordinal)
            .collect();
        assert_eq!(
            got,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd",
                "101st", "111th"
            ]
        );
    }
}
