//! Reading a config file: parse, deserialize, validate, locate errors.

use crate::error::{ConfigError, FieldError, Location};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Semantic checks that run after a config has been deserialized.
pub trait Validate {
    fn validate(&self) -> Result<(), FieldError>;
}

/// Reads and checks the config file at `path`.
pub fn load_file<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(&text, path)
}

/// The config at `path`, or the loopback defaults when no file is given:
/// how every binary's `--config` works.
pub fn load_or_default<T: DeserializeOwned + Validate + Default>(
    path: Option<&Path>,
) -> Result<T, ConfigError> {
    match path {
        Some(path) => load_file(path),
        None => Ok(T::default()),
    }
}

/// Parses `text` as if read from `path` (the path only labels errors).
pub fn parse_str<T: DeserializeOwned + Validate>(
    text: &str,
    path: &Path,
) -> Result<T, ConfigError> {
    let value: T = toml::from_str(text).map_err(|e| {
        let location = e.span().map(|span| locate(text, span.start));
        ConfigError::Parse {
            file: path.to_path_buf(),
            location,
            field: None,
            message: e.message().trim_end().to_string(),
        }
    })?;
    value.validate().map_err(|FieldError { field, message }| {
        let location = field_span(text, &field).map(|offset| locate(text, offset));
        ConfigError::Invalid {
            file: path.to_path_buf(),
            location,
            field,
            message,
        }
    })?;
    Ok(value)
}

/// Byte offset of the value of a dotted field, if the file sets it. A field
/// left at its default has no position; the error then names only the field.
fn field_span(text: &str, field: &str) -> Option<usize> {
    enum Node<'a> {
        Item(&'a toml_edit::Item),
        Table(&'a toml_edit::Table),
    }
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut node = Node::Table(doc.as_table());
    for part in field.split('.') {
        node = match node {
            Node::Table(t) => Node::Item(t.get(part)?),
            Node::Item(item) => match part.parse::<usize>() {
                Ok(index) => {
                    if let Some(tables) = item.as_array_of_tables() {
                        Node::Table(tables.get(index)?)
                    } else {
                        // Array elements are values, not items; no config nests below one.
                        return item.as_array()?.get(index)?.span().map(|s| s.start);
                    }
                }
                Err(_) => Node::Item(item.get(part)?),
            },
        };
    }
    let span = match node {
        Node::Item(item) => item.span(),
        Node::Table(table) => table.span(),
    };
    span.map(|s| s.start)
}

fn locate(text: &str, offset: usize) -> Location {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Location {
        line,
        column: before[line_start..].chars().count() + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_means_defaults_and_a_missing_file_is_an_error() {
        let cfg: crate::BrokerConfig = load_or_default(None).unwrap();
        assert_eq!(cfg, crate::BrokerConfig::default());
        let err = load_or_default::<crate::BrokerConfig>(Some(Path::new("/nonexistent/x.toml")))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/x.toml: cannot read config file"),
            "{err}"
        );
    }

    #[test]
    fn locate_counts_lines_and_columns_from_one() {
        let text = "a = 1\nbb = 2\n";
        let loc = locate(text, 11);
        assert_eq!((loc.line, loc.column), (2, 6));
        let loc = locate(text, 0);
        assert_eq!((loc.line, loc.column), (1, 1));
    }

    #[test]
    fn field_span_finds_nested_values_and_array_items() {
        let text = "bind = [\"a\", \"b\"]\n[limits]\nmax = 3\n";
        assert_eq!(
            field_span(text, "limits.max"),
            Some(text.find('3').unwrap())
        );
        assert_eq!(
            field_span(text, "bind.1"),
            Some(text.find("\"b\"").unwrap())
        );
        assert_eq!(field_span(text, "limits.nothing"), None);
        let text = "[[pool]]\nname = \"a\"\n[[pool]]\nname = \"b\"\n";
        assert_eq!(
            field_span(text, "pool.1.name"),
            Some(text.find("\"b\"").unwrap())
        );
    }
}
