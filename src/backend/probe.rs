//! What a backend tells `doctor` about itself: findings, each with the fix.
//! They live here, beside the lock contract rather than in `doctor`, so
//! that the backends depend on nothing above them.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Info,
    Warn,
    Fail,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// One finding.
#[derive(Debug, Clone)]
pub struct Check {
    pub level: Level,
    /// A short name: `reachable`, `round-trip`, `clock`, `persistence`, ...
    pub name: &'static str,
    pub message: String,
    pub fix: Option<String>,
}

impl Check {
    pub fn new(level: Level, name: &'static str, message: impl Into<String>) -> Check {
        Check {
            level,
            name,
            message: message.into(),
            fix: None,
        }
    }

    pub fn ok(name: &'static str, message: impl Into<String>) -> Check {
        Check::new(Level::Ok, name, message)
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}
