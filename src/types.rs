//! Small value types used in stage configs. Each one checks its text while it is deserialized,
//! so a bad duration, regex or glob is reported at its own line and column at load time.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, de};

/// A duration written with a unit: `500ms`, `30s`, `5m`, `1h`, `7d`, or a sum such as `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
}

/// The longest duration a file may write: 100 years. Every duration is added to clocks and
/// instants at run time; this bound keeps that arithmetic (and moka's and tokio's timers)
/// far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses `500ms`, `30s`, `5m`, `1h`, `7d`, `1h30m`; at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = parse_unbounded(text)?;
    if d > MAX_DURATION {
        return Err(format!(
            "duration `{}` is too long: at most 100 years (36500d)",
            text.trim()
        ));
    }
    Ok(d)
}

fn parse_unbounded(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration: write a number with a unit, such as `30s`".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration `{text}`: expected a number, such as `30s`"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration `{text}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            "" => {
                return Err(format!(
                    "invalid duration `{text}`: a unit is required (ms, s, m, h or d), e.g. `{n}s`"
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration `{text}`: unknown unit `{other}` (expected ms, s, m, h or d)"
                ));
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(86_400_000) && ms > 0 {
            write!(f, "{}d", ms / 86_400_000)
        } else if ms.is_multiple_of(3_600_000) && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(Dur).map_err(de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(ms|s|m|h|d))+$",
            "description": "A duration with a unit: 500ms, 30s, 5m, 1h, 7d (or a sum such as 1h30m).",
            "examples": ["500ms", "30s", "5m", "1h", "7d"]
        })
    }
}

/// A value a stage config refuses: the field (a dotted path as written in the file, such as
/// `batch.max_events` or `headers.X-Token`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An error and its causes on one line (`a: b: c`), each cause once: libraries often repeat
/// their cause's text in their own message.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

/// A regular expression (Rust `regex` syntax), compiled when the file is loaded.
#[derive(Clone)]
pub struct Pattern(pub regex::Regex);

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.0.as_str())
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        regex::Regex::new(&s).map(Pattern).map_err(|e| {
            de::Error::custom(format!(
                "invalid regular expression: {}",
                one_line(&e.to_string())
            ))
        })
    }
}

/// Written back as its source (the reference states defaults through this).
impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl JsonSchema for Pattern {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Regex".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "regex",
            "description": "A regular expression (Rust regex syntax); unanchored: it matches anywhere in the text unless you write ^ and $."})
    }
}

/// A shell-style glob (`*`, `?`, `[abc]`, `{a,b}`), compiled when the file is loaded.
#[derive(Clone)]
pub struct Glob {
    pub text: String,
    /// A set of this one glob: a set is compiled with a size limit and says when a pattern
    /// exceeds it (a lone matcher panics instead: `'*'` x 95,000 did).
    pub matcher: globset::GlobSet,
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.text)
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let glob = globset::GlobBuilder::new(&text)
            .literal_separator(false)
            .build()
            .map_err(|e| {
                de::Error::custom(format!("invalid glob: {}", one_line(&e.to_string())))
            })?;
        let matcher = globset::GlobSetBuilder::new()
            .add(glob)
            .build()
            .map_err(|e| {
                de::Error::custom(format!(
                    "the glob is too large to compile ({} bytes): {}",
                    text.len(),
                    one_line(&e.to_string())
                        .chars()
                        .take(200)
                        .collect::<String>()
                ))
            })?;
        Ok(Glob { text, matcher })
    }
}

/// As written (the schema's defaults show it).
impl serde::Serialize for Glob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl JsonSchema for Glob {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Glob".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string",
            "description": "A glob over the whole value: * any run of characters, ? one character, [abc] a set, {a,b} alternatives."})
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("7d", 604_800_000),
            ("1h30m", 5_400_000),
        ];
        for (text, ms) in ok {
            assert_eq!(parse_duration(text).unwrap().as_millis(), ms, "{text}");
            assert_eq!(
                Dur(parse_duration(text).unwrap()).to_string().as_str(),
                match text {
                    "1h30m" => "90m",
                    t => t,
                }
            );
        }
        for bad in ["", "30", "5x", "s", "1.5s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_are_bounded_at_100_years() {
        assert_eq!(parse_duration("36500d").unwrap(), MAX_DURATION);
        for big in [
            "36501d",
            "99999999999999999d",
            "18446744073709551615s",
            "99999999999999999999999ms",
            "36500d1ms",
        ] {
            let e = parse_duration(big).unwrap_err();
            assert!(
                e.contains("too long") || e.contains("too large"),
                "{big}: {e}"
            );
        }
    }
}

/// Edit distance (insertions, deletions, substitutions; ASCII case ignored).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_ascii_lowercase().chars().collect();
    let b: Vec<char> = b.to_ascii_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The length of the longest common subsequence of `a` and `b`.
fn common_subsequence(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev = vec![0usize; b.len() + 1];
    for ca in a.chars() {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = if ca == *cb {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The one of `candidates` that `word` was most likely meant to be: the closest by edit
/// distance, if it is within a third of the word's length (at least 1, at most 3); among
/// equally close ones, the one sharing the most letters in order, then one that `word`
/// starts with (`type_` -> `type`).
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| {
            (
                *d,
                std::cmp::Reverse(common_subsequence(word, c)),
                !word.starts_with(c),
            )
        })
        .map(|(_, c)| c)
}

#[cfg(test)]
mod suggest_tests {
    use super::did_you_mean;

    #[test]
    fn close_words_are_suggested_and_far_ones_are_not() {
        let fields = ["namespaces", "reasons", "types", "inputs", "type"];
        assert_eq!(did_you_mean("typs", fields), Some("types"));
        assert_eq!(did_you_mean("namespace", fields), Some("namespaces"));
        assert_eq!(did_you_mean("type_", fields), Some("type"));
        assert_eq!(did_you_mean("input", fields), Some("inputs"));
        assert_eq!(
            did_you_mean("kube_event", ["kube_events", "file"]),
            Some("kube_events")
        );
        assert_eq!(did_you_mean("color", fields), None);
    }
}

/// `~/...` as the user's home directory (`$HOME`); any other path as it is.
pub fn expand_home(path: std::path::PathBuf) -> std::path::PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => std::path::PathBuf::from(home).join(rest),
        _ => path,
    }
}

thread_local! {
    /// The directory of the pipeline file being read, while [`with_base_dir`] reads it.
    static BASE_DIR: std::cell::RefCell<Option<std::path::PathBuf>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `read` (the parsing of a pipeline file) with relative paths resolving against `dir`,
/// as Prometheus and kubectl resolve the paths in their config files.
pub fn with_base_dir<T>(dir: &std::path::Path, read: impl FnOnce() -> T) -> T {
    let before = BASE_DIR.with(|b| b.replace(Some(dir.to_path_buf())));
    let out = read();
    BASE_DIR.with(|b| *b.borrow_mut() = before);
    out
}

/// A path as written in a pipeline file: `~` expanded ([`expand_home`]), a relative path
/// joined to the file's directory while one is read ([`with_base_dir`]).
pub fn resolve_path(path: std::path::PathBuf) -> std::path::PathBuf {
    let path = expand_home(path);
    if path.is_absolute() {
        return path;
    }
    BASE_DIR.with(|b| match &*b.borrow() {
        Some(dir) => dir.join(&path),
        None => path,
    })
}

/// A database URL as written in a pipeline file: a `sqlite:` file with a relative path gets
/// [`resolve_path`]'s treatment; every other URL is kept as it is.
pub fn resolve_db_url(url: String) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return url;
    };
    let (file, query) = rest
        .split_once('?')
        .map_or((rest, None), |(f, q)| (f, Some(q)));
    if file.is_empty() || file.starts_with(':') || file.starts_with('/') {
        return url;
    }
    let resolved = resolve_path(std::path::PathBuf::from(file));
    if !resolved.is_absolute() {
        return url;
    }
    match query {
        Some(q) => format!("sqlite://{}?{q}", resolved.display()),
        None => format!("sqlite://{}", resolved.display()),
    }
}

/// Deserializes a path field ([`resolve_path`]).
pub fn home_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::path::PathBuf, D::Error> {
    <std::path::PathBuf as serde::Deserialize>::deserialize(d).map(resolve_path)
}

/// [`home_path`] for an optional field.
pub fn home_path_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::path::PathBuf>, D::Error> {
    <Option<std::path::PathBuf> as serde::Deserialize>::deserialize(d).map(|p| p.map(resolve_path))
}

/// Deserializes a database URL field ([`resolve_db_url`]).
pub fn db_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(resolve_db_url)
}

#[cfg(test)]
mod home_tests {
    #[test]
    fn a_leading_tilde_is_the_home_directory() {
        let Some(home) = std::env::var_os("HOME") else {
            eprintln!("SKIPPED: no $HOME");
            return;
        };
        let home = std::path::PathBuf::from(home);
        assert_eq!(
            super::expand_home("~/.kube/prod.yaml".into()),
            home.join(".kube/prod.yaml")
        );
        assert_eq!(super::expand_home("~".into()), home);
        assert_eq!(
            super::expand_home("a/~/b".into()),
            std::path::PathBuf::from("a/~/b")
        );
        assert_eq!(
            super::expand_home("~bob/x".into()),
            std::path::PathBuf::from("~bob/x")
        );
    }
}

#[cfg(test)]
mod base_dir_tests {
    use std::path::{Path, PathBuf};

    #[test]
    fn relative_paths_and_sqlite_files_join_the_pipeline_files_directory() {
        let dir = Path::new("/srv/pipelines");
        super::with_base_dir(dir, || {
            assert_eq!(
                super::resolve_path("events.json".into()),
                PathBuf::from("/srv/pipelines/events.json")
            );
            assert_eq!(
                super::resolve_path("/abs/events.json".into()),
                PathBuf::from("/abs/events.json")
            );
            assert_eq!(
                super::resolve_db_url("sqlite://out.db".into()),
                "sqlite:///srv/pipelines/out.db"
            );
            assert_eq!(
                super::resolve_db_url("sqlite:../out.db?mode=rwc".into()),
                "sqlite:///srv/pipelines/../out.db?mode=rwc"
            );
            assert_eq!(
                super::resolve_db_url("sqlite:///abs.db".into()),
                "sqlite:///abs.db"
            );
            assert_eq!(
                super::resolve_db_url("sqlite::memory:".into()),
                "sqlite::memory:"
            );
            assert_eq!(
                super::resolve_db_url("postgres://h/db".into()),
                "postgres://h/db"
            );
        });
        // Outside a pipeline file's reading, a relative path stays relative.
        assert_eq!(
            super::resolve_path("events.json".into()),
            PathBuf::from("events.json")
        );
    }
}
