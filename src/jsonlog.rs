//! Messages on stderr, and `--log-format json`: there, every line on stderr
//! is one JSON object with typed fields (`timestamp`, `level`, `event`,
//! `message`, and the event's own fields), whoever wrote it: dlock's
//! events, the client libraries' lines (`event: "library"`, with their
//! `target`), the messages for the user (`event: "notice"`) and the final
//! error (`event: "error"`, with `exit_code`).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

static JSON: AtomicBool = AtomicBool::new(false);

/// Switch stderr to JSON lines (`--log-format json`).
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

pub fn is_json() -> bool {
    JSON.load(Ordering::Relaxed)
}

fn now() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

/// One JSON line for a message dlock prints itself.
pub fn line(level: &str, event: &str, message: &str, extra: &[(&str, Value)]) -> String {
    let mut m = Map::new();
    m.insert("timestamp".into(), now().into());
    m.insert("level".into(), level.into());
    m.insert("event".into(), event.into());
    m.insert("message".into(), message.into());
    for (k, v) in extra {
        m.insert((*k).into(), v.clone());
    }
    Value::Object(m).to_string()
}

/// A message for the user on stderr: `dlock: MESSAGE`, or a JSON line.
pub fn say(level: &str, message: &str) {
    if is_json() {
        stderr_line(&line(level, "notice", message, &[]));
    } else {
        stderr_line(&format!("dlock: {message}"));
    }
}

/// One line on stderr. A stderr that was closed (`2>&1 | head -1`) is not
/// an error: `eprintln!` would panic there, and a panic while the lock is
/// held would leave its lease behind.
pub fn stderr_line(s: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{s}");
}

/// Fields whose values are lists, recorded with `?` (Debug): written as
/// JSON arrays rather than strings holding one.
const LISTS: [&str; 2] = ["keys", "tokens"];

struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        let v = if LISTS.contains(&field.name()) {
            // Debug of a Vec of plain strings or numbers is a JSON array.
            match serde_json::from_str::<Value>(&text) {
                Ok(a @ Value::Array(_)) => a,
                _ => Value::String(text),
            }
        } else {
            Value::String(text)
        };
        self.0.insert(field.name().into(), v);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// The tracing event formatter for `--log-format json`.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut f = Fields(Map::new());
        event.record(&mut f);
        let mut m = Map::new();
        m.insert("timestamp".into(), now().into());
        m.insert("level".into(), meta.level().as_str().into());
        if !f.0.contains_key("event") {
            // A client library's line (the ZooKeeper client's, say).
            m.insert("event".into(), "library".into());
            m.insert("target".into(), meta.target().into());
        }
        if let Some(span) = ctx.lookup_current() {
            m.insert("span".into(), span.name().into());
        }
        m.extend(f.0);
        writeln!(w, "{}", Value::Object(m))
    }
}
