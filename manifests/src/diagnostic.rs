//! Located problems found in a Cluster file.

use std::fmt;

use serde::Serialize;

/// 1-based line and column in the source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem: where it is, which field, what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub location: Option<Location>,
    /// Field path as users read it: `spec.hosts[1].address` ("" for the whole document).
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

/// `s` with control characters (which a hostile file could use to rewrite the terminal)
/// written as escapes.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl Diagnostic {
    /// Text from the file may reach `path` and `message`: control characters are escaped.
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            location: None,
            path: printable(&path.into()),
            message: printable(&message.into()),
            hint: None,
        }
    }

    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(path, message)
        }
    }

    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    pub fn at_opt(mut self, location: Option<Location>) -> Self {
        self.location = location;
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(printable(&hint.into()));
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// All problems of one file, printable as a report (`file:line:col: error: path: message`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub file: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| !d.is_error())
    }

    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    /// Sorts by position (unlocated last), errors before warnings at one position.
    pub fn sort(&mut self) {
        self.diagnostics.sort_by(|a, b| {
            let key = |d: &Diagnostic| (d.location.is_none(), d.location, d.severity);
            key(a).cmp(&key(b))
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            match d.location {
                Some(l) => write!(f, "{}:{}:{}: ", self.file, l.line, l.column)?,
                None => write!(f, "{}: ", self.file)?,
            }
            let sev = match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            if d.path.is_empty() {
                writeln!(f, "{sev}: {}", d.message)?;
            } else {
                writeln!(f, "{sev}: {}: {}", d.path, d.message)?;
            }
            if let Some(h) = &d.hint {
                writeln!(f, "    hint: {h}")?;
            }
        }
        let (e, w) = (self.errors().count(), self.warnings().count());
        if e + w > 0 {
            writeln!(
                f,
                "{}: {e} error{}, {w} warning{}",
                self.file,
                if e == 1 { "" } else { "s" },
                if w == 1 { "" } else { "s" }
            )?;
        }
        Ok(())
    }
}
