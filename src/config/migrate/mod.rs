//! `eventflow migrate --from kubernetes-event-exporter | kube-eventer`: the configurations of
//! the two most used peers as pipelines. Each translation says on its first line what it
//! translated and what needs attention; whatever has no equivalent is a comment that says so
//! (never left out silently), and what cannot be translated faithfully is marked `ATTENTION`
//! and written so that `eventflow validate` fails on that line until it is edited.

pub mod eventer;
pub mod exporter;
pub mod gotmpl;

use std::fmt::Write as _;

pub use super::k8m::Secrets;
use super::k8m::{Writer, yaml_string};

/// A translation: the pipeline text, and what needs a person's attention.
#[derive(Debug)]
pub struct Migration {
    pub yaml: String,
    pub attention: Vec<String>,
}

/// The stage id of a name: lowercase letters, digits, `_` and `-`.
pub fn stage_id(name: &str) -> String {
    let id: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if id.is_empty() { "sink".into() } else { id }
}

/// The name of the environment variable that holds a secret of `owner`'s `field`.
pub(crate) fn env_name(owner: &str, field: &str) -> String {
    format!("EVENTFLOW_{owner}_{field}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A stage written, or lines written as they are.
enum Item {
    Stage {
        id: String,
        comment: Option<String>,
        lines: Vec<String>,
    },
    Raw(String),
}

/// The pipeline being written: stages in order, comments, attention items.
pub(crate) struct Out {
    pub w: Writer,
    head: Vec<String>,
    items: Vec<Item>,
    pub attention: Vec<String>,
}

impl Out {
    pub fn new(mode: Secrets) -> Out {
        Out {
            w: Writer::new(mode),
            head: Vec::new(),
            items: Vec::new(),
            attention: Vec::new(),
        }
    }

    /// A comment at the top of the file.
    pub fn note(&mut self, text: &str) {
        self.head.push(text.to_string());
    }

    /// A stage: `id`, then its lines (already indented by four spaces).
    pub fn stage(&mut self, id: &str, comment: Option<&str>, lines: &[String]) {
        self.items.push(Item::Stage {
            id: id.to_string(),
            comment: comment.map(str::to_string),
            lines: lines.to_vec(),
        });
    }

    /// Lines written as they are (comments, commented-out blocks), indented as stages.
    pub fn raw(&mut self, lines: &str) {
        self.items.push(Item::Raw(lines.to_string()));
    }

    /// Appends the stages written into `other`.
    pub fn push_stages(&mut self, other: &mut Out) {
        self.items.append(&mut other.items);
    }

    /// Comments out the `filter` stages whose output nobody reads (they fed only receivers
    /// eventflow has no sink for), until none is left.
    pub fn prune(&mut self) {
        loop {
            let read: Vec<String> = self
                .items
                .iter()
                .filter_map(|i| match i {
                    Item::Stage { lines, .. } => lines
                        .iter()
                        .find_map(|l| l.strip_prefix("inputs: [")?.strip_suffix(']')),
                    Item::Raw(_) => None,
                })
                .flat_map(|ins| ins.split(", ").map(str::to_string).collect::<Vec<_>>())
                .collect();
            let unread = self.items.iter().position(|i| {
                matches!(i, Item::Stage { id, lines, .. }
                    if lines.first().is_some_and(|l| l == "type: filter") && !read.contains(id))
            });
            let Some(at) = unread else { return };
            if let Item::Stage { id, lines, .. } = &self.items[at] {
                let mut block = format!(
                    "# `{id}` fed only receivers eventflow has no sink for, so it is left out:\n# {id}:\n"
                );
                for l in lines {
                    block.push_str(&format!("#   {l}\n"));
                }
                self.items[at] = Item::Raw(block);
            }
        }
    }

    fn stages_text(&self) -> String {
        let mut y = String::new();
        for i in &self.items {
            match i {
                Item::Stage { id, comment, lines } => {
                    if let Some(c) = comment {
                        for l in c.lines() {
                            let _ = writeln!(y, "  # {l}");
                        }
                    }
                    let _ = writeln!(y, "  {id}:");
                    for l in lines {
                        let _ = writeln!(y, "    {l}");
                    }
                }
                Item::Raw(text) => {
                    for l in text.lines() {
                        let _ = writeln!(y, "  {l}");
                    }
                }
            }
        }
        y
    }

    /// Something the user has to do; also a comment in place.
    pub fn attention(&mut self, what: String) {
        self.attention.push(what);
    }

    /// A value that may be a secret, as a `${...}` reference unless secrets are shown.
    pub fn secret(&mut self, owner: &str, field: &str, value: &str) -> String {
        self.w
            .secret(&env_name(owner, field), value, !value.is_empty())
    }

    /// A URL, as a reference when it holds credentials.
    pub fn url(&mut self, owner: &str, field: &str, value: &str) -> String {
        self.w.secret(
            &env_name(owner, field),
            value,
            super::k8m::url_has_secret(value),
        )
    }

    /// The file: a first line with the summary, the secrets, the notes, then `top` (the
    /// settings before `stages:`) and the stages.
    pub fn finish(self, tool: &str, summary: &str, top: &str) -> Migration {
        let mut y = String::new();
        let n = self.attention.len();
        let _ = writeln!(
            y,
            "# Translated from {tool} by `eventflow migrate`: {summary}; {}.",
            if n == 0 {
                "nothing needs attention".to_string()
            } else {
                format!("{n} item(s) need attention (search for ATTENTION)")
            }
        );
        y.push_str(&self.w.header(&format!("the {tool} configuration")));
        for a in &self.attention {
            let _ = writeln!(y, "# ATTENTION: {a}");
        }
        for note in &self.head {
            for l in note.lines() {
                let _ = writeln!(y, "# {l}");
            }
        }
        y.push_str("version: 1\n");
        y.push_str(top);
        y.push_str("stages:\n");
        y.push_str(&self.stages_text());
        Migration {
            yaml: y,
            attention: self.attention,
        }
    }
}

/// `key: "value"` (a YAML line).
pub(crate) fn kv(key: &str, value: &str) -> String {
    format!("{key}: {}", yaml_string(value))
}

/// `[a, b]` of strings.
pub(crate) fn list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| yaml_string(s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

pub(crate) fn quote(s: &str) -> String {
    yaml_string(s)
}
