//! [`ConfigError`]: what is wrong with a config file, naming the file and the key.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Why a config file was rejected. `Display` gives one line: `file[:line:column]: key: message`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config file: {source}", file.display())]
    Read {
        /// The config file.
        file: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not TOML, has a key we do not know, or a value of the wrong TOML type.
    #[error("{}{}: {}{message}", file.display(), Position(*position), KeyPrefix(key.as_deref()))]
    Syntax {
        /// The config file.
        file: PathBuf,
        /// The key the error is about, when the TOML parser could say (e.g. `ca.foo`).
        key: Option<String>,
        /// 1-based line and column, when the TOML parser gave a position.
        position: Option<(usize, usize)>,
        /// The TOML parser's message, e.g. ``unknown field `foo`, expected one of ...``.
        message: String,
    },
    /// The file is valid TOML with known keys, but a value breaks a rule.
    #[error("{}: {key}: {message}", file.display())]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// The key, as a path: `ca.ca_ttl`, `federation[1].endpoint_spiffe_id`,
        /// `entry[0].selectors[2]`, or a section name (`workload_api`) when it is missing.
        key: String,
        /// What is wrong, e.g. `invalid duration "1x": unknown unit "x"`.
        message: String,
    },
}

impl ConfigError {
    /// The key the error is about (`ca.ca_ttl`, `entry[0].selectors[2]`), if there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Read { .. } => None,
            Self::Syntax { key, .. } => key.as_deref(),
            Self::Invalid { key, .. } => Some(key),
        }
    }

    /// The config file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            Self::Read { file, .. } | Self::Syntax { file, .. } | Self::Invalid { file, .. } => {
                file
            }
        }
    }

    /// Turns a TOML error into [`ConfigError::Syntax`], finding the key from the error's span.
    pub(crate) fn from_toml(file: &Path, text: &str, error: &toml::de::Error) -> Self {
        let span = error.span();
        Self::Syntax {
            file: file.to_owned(),
            key: span.as_ref().and_then(|span| key_at(text, span)),
            position: span.map(|span| line_column(text, span.start)),
            message: error.message().trim_end().to_owned(),
        }
    }
}

/// Formats `:line:column` or nothing.
struct Position(Option<(usize, usize)>);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((line, column)) => write!(f, ":{line}:{column}"),
            None => Ok(()),
        }
    }
}

/// Formats `key: ` or nothing.
struct KeyPrefix<'a>(Option<&'a str>);

impl fmt::Display for KeyPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(key) => write!(f, "{key}: "),
            None => Ok(()),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The dotted key path (`entry[0].selectors[2]`) of the smallest key or value whose span holds
/// `span`, found by parsing the document again with spans. `None` if the document does not parse.
fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    let mut best = None;
    let mut path = String::new();
    search_table(doc.get_ref(), span, &mut path, &mut best);
    best.map(|(_, path)| path)
}

/// Smallest enclosing span so far: its length and its key path.
type Best = Option<(usize, String)>;

fn search_table(table: &DeTable<'_>, target: &Range<usize>, path: &mut String, best: &mut Best) {
    for (key, value) in table.iter() {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key.get_ref());
        consider(&key.span(), target, path, best);
        search_value(value, target, path, best);
        path.truncate(len);
    }
}

fn search_value(
    value: &Spanned<DeValue<'_>>,
    target: &Range<usize>,
    path: &mut String,
    best: &mut Best,
) {
    consider(&value.span(), target, path, best);
    match value.get_ref() {
        DeValue::Table(table) => search_table(table, target, path, best),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                search_value(item, target, path, best);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

fn consider(span: &Range<usize>, target: &Range<usize>, path: &str, best: &mut Best) {
    let holds = span.start <= target.start && target.end <= span.end && !span.is_empty();
    if holds && best.as_ref().is_none_or(|(len, _)| span.len() <= *len) {
        *best = Some((span.len(), path.to_owned()));
    }
}
