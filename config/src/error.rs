//! Configuration errors that point at the offending spot.
//!
//! Parse errors come from `toml` with a byte span; semantic errors come from
//! [`crate::Validate`] with a dotted field path that the loader turns back
//! into a span. Both end up as `file:line:column: field: message`.

use std::path::PathBuf;

/// A semantic problem found after parsing: which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path from the top of the file, e.g. `output_limit.soft`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Where in the file an error was found. Line and column are 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax errors, unknown fields, wrong types.
    #[error("{}{message}", fmt_location(file, location.as_ref(), field.as_deref()))]
    Parse {
        file: PathBuf,
        location: Option<Location>,
        field: Option<String>,
        message: String,
    },
    /// Values that parse but make no sense together or on their own.
    #[error("{}{message}", fmt_location(file, location.as_ref(), Some(field)))]
    Invalid {
        file: PathBuf,
        location: Option<Location>,
        field: String,
        message: String,
    },
}

fn fmt_location(
    file: &std::path::Path,
    location: Option<&Location>,
    field: Option<&str>,
) -> String {
    let mut out = file.display().to_string();
    if let Some(loc) = location {
        out.push_str(&format!(":{}:{}", loc.line, loc.column));
    }
    out.push_str(": ");
    if let Some(field) = field {
        out.push_str(field);
        out.push_str(": ");
    }
    out
}
