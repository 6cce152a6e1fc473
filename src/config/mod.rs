//! Pipeline files: reading, validating and comparing them. Pure data: nothing in here spawns a
//! task or touches the network.
//!
//! Loading goes YAML text -> [`yaml::Node`] (positions kept) -> `${ENV}` substitution -> the
//! header and each stage deserialized separately -> graph checks. Every problem found on the
//! way is collected, so one `validate` run shows all of them, each with its line and column.

pub mod cases;
pub mod diff;
pub mod graph;
mod inherit;
pub mod k8m;
pub mod migrate;
pub mod reference;
pub mod schema;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::{Registry, StageConfig, StageKind, StageType};
use crate::state::StateConfig;
use crate::yaml::{self, Node, Pos};

/// The engine's own HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on for `GET /metrics`, `/healthz`, `/readyz` and `POST /-/reload`:
    /// `IP:port`, `localhost:port`, or `:port` for every interface (as `0.0.0.0:port`). Binding
    /// to all interfaces is an explicit choice.
    #[serde(default = "default_listen", deserialize_with = "listen_addr")]
    #[schemars(with = "String")]
    pub listen: SocketAddr,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

fn listen_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    parse_listen(&s).map_err(serde::de::Error::custom)
}

/// An address to listen on as users write them: `127.0.0.1:9464`, `[::1]:9464`,
/// `localhost:9464`, or `:9464` (every interface, as in Go and Prometheus).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    if let Ok(a) = t.parse() {
        return Ok(a);
    }
    let port = |p: &str| p.parse::<u16>().ok();
    if let Some(p) = t.strip_prefix(':').and_then(port) {
        return Ok(SocketAddr::from(([0, 0, 0, 0], p)));
    }
    if let Some(p) = t.strip_prefix("localhost:").and_then(port) {
        return Ok(SocketAddr::from(([127, 0, 0, 1], p)));
    }
    Err(format!(
        "`{s}` is not an address to listen on; expected `IP:port` (`127.0.0.1:9464`, `0.0.0.0:9464` for every interface, `[::1]:9464`), `localhost:9464` or `:9464` (every interface)"
    ))
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
        }
    }
}

/// The file's header: everything but the stages.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The file format version. Only `1` exists.
    #[serde(default = "one")]
    pub version: u32,
    /// The engine's HTTP endpoint (metrics, health, reload). Off when absent.
    #[serde(default)]
    pub api: Option<ApiConfig>,
    /// Checkpoints and durable queues. Default: `sqlite://eventflow-state.db`.
    #[serde(default)]
    pub state: Option<StateConfig>,
    /// Several replicas, one leading (running the sources and delivering durable webhook
    /// queues) by a Kubernetes Lease. Off when absent. Needs `state` on PostgreSQL or MySQL.
    #[serde(default)]
    pub leader_election: Option<crate::leader::LeaderElectionConfig>,
    /// The stages, keyed by id (`[a-z0-9_-]+`).
    #[serde(default)]
    #[schemars(with = "std::collections::BTreeMap<String, serde_json::Value>")]
    pub stages: serde::de::IgnoredAny,
    /// Test cases `eventflow test` runs: inputs fed to a source, expectations on what stages
    /// let out and sinks would write. `run` ignores them.
    #[serde(default)]
    #[schemars(extend("default" = []))]
    pub tests: Vec<cases::TestCase>,
}

fn one() -> u32 {
    1
}

/// A stage as written in the file.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub id: String,
    pub type_name: &'static str,
    pub kind: StageKind,
    pub inputs: Vec<String>,
    pub config: Arc<dyn StageConfig>,
    /// The stage's whole YAML node after substitution: what reload compares.
    pub node: Node,
    pub pos: Pos,
}

/// A loaded and validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub path: Option<PathBuf>,
    /// SHA-256 of the file's text as loaded (reload compares it to skip unchanged files).
    pub digest: Option<[u8; 32]>,
    pub version: u32,
    pub api: Option<ApiConfig>,
    pub state: Option<StateConfig>,
    pub leader_election: Option<crate::leader::LeaderElectionConfig>,
    pub stages: IndexMap<String, StageSpec>,
    /// The `tests:` cases (`eventflow test`).
    pub tests: Vec<cases::TestCase>,
    /// A file in the k8m event handler's format that turns everything off says so here (and has no stages).
    pub disabled: Option<String>,
}

impl Pipeline {
    /// A pipeline of `stages` with every header setting at its default (no file, no API, the
    /// default state, no election, no test cases).
    pub fn of_stages(stages: IndexMap<String, StageSpec>) -> Pipeline {
        Pipeline {
            path: None,
            digest: None,
            version: 1,
            api: None,
            state: None,
            leader_election: None,
            stages,
            tests: Vec::new(),
            disabled: None,
        }
    }

    /// Each stage's [`StageConfig::warnings`], as lines like a [`ConfigError`]'s (file, line
    /// and column, stage, field), prefixed `warning:`.
    pub fn warnings(&self) -> Vec<String> {
        let file = self
            .path
            .as_ref()
            .map_or_else(|| "<pipeline>".to_string(), |p| p.display().to_string());
        let problems: Vec<Problem> = self
            .stages
            .values()
            .flat_map(|s| {
                s.config.warnings().into_iter().map(|w| {
                    let pos = field_pos(&s.node, &w.field).unwrap_or(s.pos);
                    Problem::new(
                        Some(pos),
                        Some(&s.id),
                        Some(&w.field),
                        format!("warning: {}", w.message),
                    )
                })
            })
            .collect();
        problems
            .into_iter()
            .map(|p| {
                ConfigError {
                    file: file.clone(),
                    problems: vec![p],
                }
                .to_string()
            })
            .collect()
    }

    /// The ids of the stages that read from `id`.
    pub fn consumers_of<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a StageSpec> + 'a {
        self.stages
            .values()
            .filter(move |s| s.inputs.iter().any(|i| i == id))
    }
}

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub pos: Option<Pos>,
    pub stage: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl Problem {
    fn new(
        pos: Option<Pos>,
        stage: Option<&str>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Problem {
            pos,
            stage: stage.map(str::to_string),
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

/// The most problems a [`ConfigError`] prints; the rest are counted.
pub const MAX_PRINTED_PROBLEMS: usize = 50;

impl fmt::Display for ConfigError {
    /// One line per problem, in file order; the same message for the same stage and field
    /// (e.g. one mistake repeated over many lines) once, with a count; at most
    /// [`MAX_PRINTED_PROBLEMS`] lines, then how many more there are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // (stage, field, message) -> the first such problem and how many there are.
        type Key<'a> = (&'a Option<String>, &'a Option<String>, &'a str);
        let mut groups: IndexMap<Key, (&Problem, usize)> = IndexMap::new();
        for p in &self.problems {
            groups
                .entry((&p.stage, &p.field, p.message.as_str()))
                .or_insert((p, 0))
                .1 += 1;
        }
        for (i, (p, n)) in groups.values().enumerate() {
            if i == MAX_PRINTED_PROBLEMS {
                let rest: usize = groups.values().skip(i).map(|(_, n)| n).sum();
                write!(f, "\n{}: ... and {rest} more problems", self.file)?;
                break;
            }
            if i > 0 {
                writeln!(f)?;
            }
            self.write_one(f, p)?;
            if *n > 1 {
                write!(f, " ({n} times)")?;
            }
        }
        Ok(())
    }
}

impl ConfigError {
    fn write_one(&self, f: &mut fmt::Formatter<'_>, p: &Problem) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(pos) = p.pos.filter(|p| p.line > 0) {
            write!(f, ":{}:{}", pos.line, pos.column)?;
        }
        f.write_str(": ")?;
        match (&p.stage, &p.field) {
            (Some(s), Some(fl)) => write!(f, "stage `{s}`, field `{fl}`: ")?,
            (Some(s), None) => write!(f, "stage `{s}`: ")?,
            (None, Some(fl)) => write!(f, "field `{fl}`: ")?,
            (None, None) => {}
        }
        f.write_str(&p.message)
    }
}

/// Reads and validates a pipeline file whose stages are of the types in `types`.
pub fn load_file(path: &Path, types: Registry) -> Result<Pipeline, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        problems: vec![Problem::new(
            None,
            None,
            None,
            format!("cannot read the file: {e}"),
        )],
    })?;
    let dir = std::path::absolute(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut p = crate::types::with_base_dir(&dir, || {
        load_str(&text, &file, &|name| std::env::var(name).ok(), types)
    })?;
    p.path = Some(path.to_path_buf());
    p.digest = Some(
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(
            text.as_bytes(),
        ))
        .into(),
    );
    Ok(p)
}

/// Reads the `tests:` cases of a separate file (`eventflow test --tests FILE`) for pipeline
/// `p`: a YAML file with a top-level `tests:` list, checked like the section in a pipeline.
pub fn load_cases(path: &Path, p: &Pipeline) -> Result<Vec<cases::TestCase>, ConfigError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TestsFile {
        tests: Vec<cases::TestCase>,
    }
    let file = path.display().to_string();
    let fail = |problems| ConfigError {
        file: file.clone(),
        problems,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(vec![Problem::new(
            None,
            None,
            None,
            format!("cannot read the file: {e}"),
        )])
    })?;
    let root = yaml::parse(&text).map_err(|e| fail(vec![syntax_problem(&text, e)]))?;
    let dir = std::path::absolute(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let parsed = crate::types::with_base_dir(&dir, || yaml::from_node::<TestsFile>(&root))
        .map_err(|e| fail(vec![de_problem(None, e)]))?;
    let mut problems = Vec::new();
    check_cases(&root, &parsed.tests, &p.stages, &mut problems);
    if problems.is_empty() {
        Ok(parsed.tests)
    } else {
        Err(fail(problems))
    }
}

/// Parses and validates pipeline text. `file` is the name used in messages; `env` looks up
/// `${NAME}` references.
pub fn load_str(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
    types: Registry,
) -> Result<Pipeline, ConfigError> {
    let fail = |problems| ConfigError {
        file: file.to_string(),
        problems,
    };
    let mut root = yaml::parse(text).map_err(|e| fail(vec![syntax_problem(text, e)]))?;
    let mut problems: Vec<Problem> = yaml::substitute_env(&mut root, env)
        .into_iter()
        .map(|(pos, m)| Problem::new(Some(pos), None, None, m))
        .collect();
    if k8m::is_k8m_format(&root) {
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        return match k8m::translate(&root).map_err(fail)? {
            k8m::Translated::Disabled(why) => Ok(Pipeline {
                disabled: Some(why),
                ..Pipeline::of_stages(IndexMap::new())
            }),
            // Values are substituted already: the translation is loaded without `${...}`.
            k8m::Translated::Pipeline(text) => load_str(
                &text,
                &format!(
                    "{file} (as translated from the k8m event handler's format; see `eventflow migrate`)"
                ),
                &|_| None,
                types,
            ),
        };
    }
    if !matches!(root.value, yaml::Value::Map(_)) {
        problems.push(Problem::new(
            Some(root.pos),
            None,
            None,
            format!(
                "a pipeline file is a mapping with a `stages:` key, found {}",
                root.value.kind()
            ),
        ));
        return Err(fail(problems));
    }
    let header = match yaml::from_node::<Header>(&root) {
        Ok(h) => Some(h),
        Err(e) => {
            problems.push(de_problem(None, e));
            None
        }
    };
    if let Some(h) = &header
        && h.version != 1
    {
        let pos = root.get("version").map(|n| n.pos);
        problems.push(Problem::new(
            pos,
            None,
            Some("version"),
            format!(
                "unsupported version {}: this eventflow reads version 1",
                h.version
            ),
        ));
    }
    if let Some(Some(state)) = header.as_ref().map(|h| &h.state)
        && let Err(e) = crate::state::db::check_url(&state.url)
    {
        let pos = root.get("state").and_then(|s| s.get("url")).map(|n| n.pos);
        problems.push(Problem::new(pos, None, Some("state.url"), e.to_string()));
    }
    let mut failed = std::collections::HashMap::new();
    inherit::kube_connection(&mut root);
    let stages = parse_stages(&root, &mut problems, &mut failed, types);
    graph::check(&stages, &failed, &mut problems);
    if let Some(h) = &header
        && let Some(le) = &h.leader_election
    {
        check_election(&root, le, h.state.as_ref(), &stages, &mut problems);
    }
    if let Some(h) = &header {
        check_cases(&root, &h.tests, &stages, &mut problems);
    }
    if !problems.is_empty() {
        return Err(fail(problems));
    }
    let header = header.ok_or_else(|| fail(vec![]))?;
    Ok(Pipeline {
        path: None,
        digest: None,
        version: header.version,
        api: header.api,
        state: header.state,
        leader_election: header.leader_election,
        stages,
        tests: header.tests,
        disabled: None,
    })
}

/// The `tests:` cases name stages that exist, enter at a source, and are well formed.
pub fn check_cases(
    root: &Node,
    cases: &[cases::TestCase],
    stages: &IndexMap<String, StageSpec>,
    problems: &mut Vec<Problem>,
) {
    let sources: Vec<&str> = stages
        .values()
        .filter(|s| s.kind == StageKind::Source)
        .map(|s| s.id.as_str())
        .collect();
    for (i, case) in cases.iter().enumerate() {
        let mut bad = |field: String, message: String| {
            let pos = field_pos(root, &field).or(Some(root.pos));
            problems.push(Problem::new(pos, None, Some(&field), message));
        };
        match &case.at {
            Some(at) if !sources.contains(&at.as_str()) => bad(
                format!("tests[{i}].at"),
                format!(
                    "`{at}` is not a source of this pipeline (sources: {})",
                    sources.join(", ")
                ),
            ),
            None if sources.len() > 1 => bad(
                format!("tests[{i}].at"),
                format!(
                    "the pipeline has several sources: name the one the inputs enter at ({})",
                    sources.join(", ")
                ),
            ),
            _ => {}
        }
        for (j, input) in case.inputs.iter().enumerate() {
            if let Some(e) = input.validate() {
                bad(format!("tests[{i}].inputs[{j}]"), e.message);
            }
            if let Some(f) = &input.file
                && !f.exists()
            {
                bad(
                    format!("tests[{i}].inputs[{j}].file"),
                    format!("{} does not exist", f.display()),
                );
            }
        }
        for stage in case.expect.keys() {
            if !stages.contains_key(stage) {
                let hint = crate::types::did_you_mean(stage, stages.keys().map(String::as_str))
                    .map(|m| format!(": did you mean `{m}`?"))
                    .unwrap_or_default();
                bad(
                    format!("tests[{i}].expect.{stage}"),
                    format!("no stage `{stage}` in this pipeline{hint}"),
                );
            }
        }
        for (field, message) in cases::check_conditions(case) {
            bad(format!("tests[{i}].{field}"), message);
        }
    }
}

/// What leader election needs: sane durations, a shared state database, sources that pause
/// on a standby.
fn check_election(
    root: &Node,
    le: &crate::leader::LeaderElectionConfig,
    state: Option<&StateConfig>,
    stages: &IndexMap<String, StageSpec>,
    problems: &mut Vec<Problem>,
) {
    let section = root.get("leader_election");
    for i in le.validate() {
        let pos = section
            .and_then(|s| s.get(&i.field))
            .or(section)
            .map(|n| n.pos);
        let field = format!("leader_election.{}", i.field);
        problems.push(Problem::new(pos, None, Some(&field), i.message));
    }
    let url = state.map_or_else(|| StateConfig::default().url, |s| s.url.clone());
    if matches!(
        crate::state::db::backend_of(&url),
        Some(crate::state::db::Backend::Sqlite)
    ) {
        let pos = root
            .get("state")
            .and_then(|s| s.get("url"))
            .or(section)
            .map(|n| n.pos);
        problems.push(Problem::new(
            pos,
            None,
            Some("state.url"),
            "leader_election needs the state on PostgreSQL or MySQL: with SQLite each replica would keep its own checkpoint and webhook queue, so a new leader would start over and send again",
        ));
    }
    for s in stages.values() {
        if s.kind == StageKind::Source && s.type_name != "kube_events" {
            problems.push(Problem::new(
                Some(s.pos),
                Some(&s.id),
                None,
                format!(
                    "with leader_election only `kube_events` sources can run (a `{}` source cannot pause on a standby, so every replica would read it)",
                    s.type_name
                ),
            ));
        }
    }
}

fn de_problem(stage: Option<&str>, e: yaml::DeError) -> Problem {
    let field = (!e.path.is_empty()).then(|| e.path.join(".").replace(".[", "["));
    let mut message = e.message;
    // "unknown field `typs`, expected one of `namespaces`, `types`, ...": say which was meant.
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((word, expected)) = rest.split_once('`')
    {
        let mut known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        if stage.is_some() && e.path.len() == 1 {
            known.extend(["type", "inputs"]);
        }
        if let Some(meant) = crate::types::did_you_mean(word, known) {
            message = format!("{message}; did you mean `{meant}`?");
        }
    }
    // "invalid value: integer `-5`, expected u32": a count or size written negative.
    if let Some(rest) = message.strip_prefix("invalid value: integer `-")
        && let Some((n, ty)) = rest.split_once("`, expected ")
        && (ty.starts_with('u') && ty[1..].chars().all(|c| c.is_ascii_alphanumeric()))
    {
        message = format!("must be a positive number, found -{n}");
    }
    Problem {
        pos: e.pos,
        stage: stage.map(str::to_string),
        field,
        message,
    }
}

/// A YAML syntax error, with the stage it is in when the text says and a hint.
fn syntax_problem(text: &str, e: yaml::SyntaxError) -> Problem {
    let stage = usize::try_from(e.pos.line)
        .ok()
        .and_then(|line| stage_at_line(text, line));
    Problem::new(
        Some(e.pos),
        stage.as_deref(),
        None,
        with_indentation_hint(e.message),
    )
}

/// A YAML syntax error that is almost always a key indented too much or too little says so.
fn with_indentation_hint(message: String) -> String {
    const INDENTATION: [&str; 5] = [
        "mapping values are not allowed",
        "did not find expected key",
        "did not find expected '-'",
        "block sequence entries are not allowed",
        "while parsing a block",
    ];
    if INDENTATION.iter().any(|m| message.contains(m)) {
        format!(
            "{message} (check the indentation: a stage's fields are indented under its id, each by the same number of spaces, and a key is followed by `: `)"
        )
    } else {
        message
    }
}

/// The id of the stage whose lines include `line` (1-based), read from the raw text: the last
/// key before it at the indentation of the first key under a top-level `stages:`. For
/// messages about text that does not parse.
fn stage_at_line(text: &str, line: usize) -> Option<String> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let content = |l: &str| !l.trim().is_empty() && !l.trim_start().starts_with('#');
    let lines: Vec<&str> = text.lines().take(line).collect();
    let start = lines.iter().position(|l| l.trim_end() == "stages:")?;
    let ids_at = indent(lines[start + 1..].iter().copied().find(|l| content(l))?);
    if ids_at == 0 {
        return None;
    }
    let end = line.saturating_sub(1).min(lines.len()).max(start + 1);
    lines[start + 1..end]
        .iter()
        .copied()
        .filter(|l| content(l))
        .take_while(|l| indent(l) > 0)
        .filter(|l| indent(l) == ids_at)
        .filter_map(|l| l.trim().strip_suffix(':').map(str::to_string))
        .filter(|id| valid_id(id))
        .last()
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn parse_stages(
    root: &Node,
    problems: &mut Vec<Problem>,
    failed: &mut graph::Failed,
    types: Registry,
) -> IndexMap<String, StageSpec> {
    let mut out = IndexMap::new();
    let Some(stages_node) = root.get("stages") else {
        problems.push(Problem::new(
            Some(root.pos),
            None,
            Some("stages"),
            "the file has no `stages:`; a pipeline needs at least one source and one sink",
        ));
        return out;
    };
    let map = match stages_node.as_map() {
        Some(m) if !m.is_empty() => m,
        _ if matches!(stages_node.value, yaml::Value::Null | yaml::Value::Map(_)) => {
            problems.push(Problem::new(
                Some(stages_node.pos),
                None,
                Some("stages"),
                "`stages:` is empty; a pipeline needs at least one source and one sink",
            ));
            return out;
        }
        _ => {
            problems.push(Problem::new(
                Some(stages_node.pos),
                None,
                Some("stages"),
                format!(
                    "expected a mapping of stage ids to stages, found {}",
                    stages_node.value.kind()
                ),
            ));
            return out;
        }
    };
    for (id, (kpos, node)) in map {
        if !valid_id(id) {
            problems.push(Problem::new(
                Some(*kpos),
                Some(id),
                None,
                "invalid stage id: use lowercase letters, digits, `_` and `-`",
            ));
            continue;
        }
        match parse_stage(id, *kpos, node, problems, types) {
            Some(spec) => {
                out.insert(id.clone(), spec);
            }
            None => {
                failed.insert(id.clone(), failed_inputs(node));
            }
        }
    }
    out
}

/// The inputs of a stage that failed to parse, with their positions, so that edges to unknown
/// stages are still reported.
fn failed_inputs(node: &Node) -> Vec<(String, Option<Pos>)> {
    match node.get("inputs").map(|n| (n, &n.value)) {
        Some((n, yaml::Value::Str(s))) => vec![(s.clone(), Some(n.pos))],
        Some((_, yaml::Value::Seq(items))) => items
            .iter()
            .filter_map(|i| i.as_str().map(|s| (s.to_string(), Some(i.pos))))
            .collect(),
        _ => vec![],
    }
}

#[derive(Deserialize)]
struct StageHead {
    #[serde(rename = "type")]
    type_name: Option<String>,
    inputs: Option<InputsField>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum InputsField {
    One(String),
    Many(Vec<String>),
}

fn parse_stage(
    id: &str,
    kpos: Pos,
    node: &Node,
    problems: &mut Vec<Problem>,
    types: Registry,
) -> Option<StageSpec> {
    if node.as_map().is_none() {
        let hint = if matches!(id, "type" | "inputs") {
            " (`{id}` looks like a field of the stage above, indented as a stage id: indent it under that stage)"
                .replace("{id}", id)
        } else if matches!(node.value, yaml::Value::Null) {
            " (a stage with nothing under it: are its fields indented under its id?)".to_string()
        } else {
            String::new()
        };
        problems.push(Problem::new(
            Some(node.pos),
            Some(id),
            None,
            format!(
                "expected a mapping with a `type:`, found {}{hint}",
                node.value.kind()
            ),
        ));
        return None;
    }
    let head: StageHead = match yaml::from_node_skipping(node, &[]) {
        Ok(h) => h,
        Err(e) => {
            problems.push(de_problem(Some(id), e));
            return None;
        }
    };
    let Some(type_name) = head.type_name else {
        problems.push(Problem::new(
            Some(kpos),
            Some(id),
            Some("type"),
            format!("missing `type:` (one of: {})", types.names().join(", ")),
        ));
        return None;
    };
    let type_pos = node.get("type").map(|n| n.pos);
    let Some(st) = types.lookup(&type_name) else {
        problems.push(Problem::new(
            type_pos,
            Some(id),
            Some("type"),
            format!(
                "unknown stage type `{type_name}`{} (expected one of: {})",
                crate::types::did_you_mean(&type_name, types.names().iter().copied())
                    .map(|t| format!(": did you mean `{t}`?"))
                    .unwrap_or_default(),
                types.names().join(", ")
            ),
        ));
        return None;
    };
    let inputs = match head.inputs {
        None => vec![],
        Some(InputsField::One(s)) => vec![s],
        Some(InputsField::Many(v)) => v,
    };
    let config = match (st.parse)(node) {
        Ok(c) => c,
        Err(e) => {
            collect_field_errors(id, st, node, e, problems);
            return None;
        }
    };
    let invalid = config.validate();
    if !invalid.is_empty() {
        for i in invalid {
            let pos = field_pos(node, &i.field).unwrap_or(kpos);
            problems.push(Problem::new(Some(pos), Some(id), Some(&i.field), i.message));
        }
        return None;
    }
    Some(StageSpec {
        id: id.to_string(),
        type_name: st.name,
        kind: st.kind,
        inputs,
        config,
        node: node.clone(),
        pos: kpos,
    })
}

/// Where a field (a dotted path; `a.b`, `list[2]`) is written in a stage, or its nearest
/// written parent (a defaulted field has no position of its own).
fn field_pos(node: &Node, field: &str) -> Option<Pos> {
    let mut at = node;
    let mut pos = None;
    for part in field.split('.') {
        let (key, index) = match part.split_once('[') {
            Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some(next) = at.get(key) else { break };
        at = next;
        pos = Some(at.pos);
        if let (Some(i), yaml::Value::Seq(items)) = (index, &at.value)
            && let Some(item) = items.get(i)
        {
            at = item;
            pos = Some(at.pos);
        }
    }
    pos
}

/// serde stops at a stage's first bad field. To show every bad field of the stage at once,
/// drop the offending key and try again, a bounded number of times. "missing field" errors for
/// keys we removed ourselves are not the user's problem and are skipped.
fn collect_field_errors(
    id: &str,
    st: &StageType,
    node: &Node,
    first: yaml::DeError,
    problems: &mut Vec<Problem>,
) {
    let mut node = node.clone();
    let mut removed: Vec<String> = Vec::new();
    let mut err = first;
    for _ in 0..32 {
        let is_ours = removed
            .iter()
            .any(|k| err.message.starts_with(&format!("missing field `{k}`")));
        if !is_ours {
            problems.push(de_problem(Some(id), err.clone()));
        }
        let Some(key) = err.path.first().cloned() else {
            return;
        };
        let yaml::Value::Map(m) = &mut node.value else {
            return;
        };
        if m.shift_remove(&key).is_none() {
            return;
        }
        removed.push(key);
        match (st.parse)(&node) {
            Ok(_) => return,
            Err(e) => err = e,
        }
    }
}

#[cfg(test)]
mod tests;
