//! The k8m event handler's file format (`eventhandler.yaml` of the k8m event handler), translated to a
//! pipeline.
//!
//! A file is in the k8m event handler's format when its top level has no `stages:` and has any of the k8m event handler's
//! sections (`database`, `watcher`, `worker`, `rule_config`, `webhook`). The translation
//! applies the k8m event handler's defaults and validation, honours each `enabled: false`, turns the k8m event handler's
//! DSNs into URLs, and writes pipeline YAML (with comments where eventflow behaves differently),
//! which is then loaded like any pipeline: `eventflow run` and `validate` use it directly and
//! `eventflow migrate` prints it.

use std::fmt::Write as _;

use super::Problem;
use crate::yaml::{Node, Pos, Value};

/// The k8m event handler's sections.
const SECTIONS: &[&str] = &["database", "watcher", "worker", "rule_config", "webhook"];

/// Whether a parsed file is in the k8m event handler's format.
pub fn is_k8m_format(root: &Node) -> bool {
    root.get("stages").is_none() && SECTIONS.iter().any(|s| root.get(s).is_some())
}

/// What a file in the k8m event handler's format turns into.
#[derive(Debug, Clone, PartialEq)]
pub enum Translated {
    /// Pipeline YAML.
    Pipeline(String),
    /// Nothing runs; the reason (e.g. `enabled: false`).
    Disabled(String),
}

/// Reads a file in the k8m event handler's format's fields with their positions, collecting problems.
struct Reader<'a> {
    problems: Vec<Problem>,
    root: &'a Node,
}

fn problem(pos: Pos, field: &str, message: impl Into<String>) -> Problem {
    Problem {
        pos: Some(pos),
        stage: None,
        field: Some(field.to_string()),
        message: message.into(),
    }
}

impl<'a> Reader<'a> {
    fn section(&mut self, name: &str) -> Option<&'a Node> {
        let n = self.root.get(name)?;
        match &n.value {
            Value::Map(_) => Some(n),
            Value::Null => None,
            other => {
                self.problems.push(problem(
                    n.pos,
                    name,
                    format!("expected a mapping, found {}", other.kind()),
                ));
                None
            }
        }
    }

    fn check_keys(&mut self, section: Option<&Node>, name: &str, known: &[&str]) {
        let Some(map) = section.and_then(Node::as_map) else {
            return;
        };
        for (k, (pos, _)) in map {
            if !known.contains(&k.as_str()) {
                self.problems.push(problem(
                    *pos,
                    &format!("{name}.{k}"),
                    format!(
                        "unknown field of the k8m event handler's format (known: {})",
                        known.join(", ")
                    ),
                ));
            }
        }
    }

    fn bool(&mut self, section: Option<&Node>, path: &str, key: &str, default: bool) -> bool {
        match section.and_then(|s| s.get(key)) {
            None => default,
            Some(Node {
                value: Value::Bool(b),
                ..
            }) => *b,
            Some(Node {
                value: Value::Null, ..
            }) => default,
            Some(n) => {
                self.problems.push(problem(
                    n.pos,
                    &field(path, key),
                    format!("expected true or false, found {}", n.value.kind()),
                ));
                default
            }
        }
    }

    fn uint(&mut self, section: Option<&Node>, path: &str, key: &str, default: u64) -> u64 {
        match section.and_then(|s| s.get(key)) {
            None => default,
            Some(Node {
                value: Value::Null, ..
            }) => default,
            Some(Node {
                value: Value::UInt(v),
                ..
            }) => *v,
            Some(Node {
                value: Value::Int(v),
                pos,
            }) => u64::try_from(*v).unwrap_or_else(|_| {
                self.problems
                    .push(problem(*pos, &field(path, key), "must not be negative"));
                default
            }),
            Some(n) => {
                self.problems.push(problem(
                    n.pos,
                    &field(path, key),
                    format!("expected a whole number, found {}", n.value.kind()),
                ));
                default
            }
        }
    }

    fn string(&mut self, section: Option<&Node>, path: &str, key: &str) -> Option<(Pos, String)> {
        match section.and_then(|s| s.get(key)) {
            None => None,
            Some(Node {
                value: Value::Null, ..
            }) => None,
            Some(n) => match n.as_str() {
                Some(s) => Some((n.pos, s.to_string())),
                None => match &n.value {
                    Value::Int(v) => Some((n.pos, v.to_string())),
                    Value::UInt(v) => Some((n.pos, v.to_string())),
                    other => {
                        self.problems.push(problem(
                            n.pos,
                            &field(path, key),
                            format!("expected a string, found {}", other.kind()),
                        ));
                        None
                    }
                },
            },
        }
    }

    fn strings(&mut self, section: Option<&Node>, path: &str, key: &str) -> Vec<String> {
        match section.and_then(|s| s.get(key)) {
            None => Vec::new(),
            Some(Node {
                value: Value::Null, ..
            }) => Vec::new(),
            Some(Node {
                value: Value::Seq(items),
                ..
            }) => items
                .iter()
                .filter_map(|i| {
                    if let Some(s) = i.as_str() {
                        Some(s.to_string())
                    } else {
                        self.problems.push(problem(
                            i.pos,
                            &field(path, key),
                            format!("expected a list of strings, found {}", i.value.kind()),
                        ));
                        None
                    }
                })
                .collect(),
            Some(n) => {
                self.problems.push(problem(
                    n.pos,
                    &field(path, key),
                    format!("expected a list of strings, found {}", n.value.kind()),
                ));
                Vec::new()
            }
        }
    }
}

fn field(path: &str, key: &str) -> String {
    format!("{path}.{key}")
}

/// A YAML scalar for any string (JSON's string syntax is YAML's double-quoted style).
pub(crate) fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

fn list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| yaml_string(s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The k8m event handler's default DSN for a database type.
fn default_dsn(ty: &str) -> &'static str {
    match ty {
        "postgres" => {
            "host=localhost user=postgres password=postgres dbname=k8s_events sslmode=disable"
        }
        "mysql" => "user:password@tcp(localhost:3306)/k8s_events",
        _ => "k8s_events.db",
    }
}

const DSN_FORMS: &str = "accepted forms: sqlite: a file path (k8s_events.db) or sqlite://path; \
postgres: `host=... port=... user=... password=... dbname=... sslmode=...` or postgres://...; \
mysql: `user:password@tcp(host:port)/dbname?params` (the Go driver's form) or mysql://...";

/// Percent-encodes a URL component (userinfo, query values).
fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Splits `key=value key='quoted value'` pairs (libpq's keyword/value form).
fn libpq_pairs(dsn: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = dsn.trim().chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return None;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())).collect();
        }
        out.push((key, value));
    }
}

/// A k8m event handler DSN that cannot be turned into a database URL.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot read the {ty} DSN `{dsn}`: {why}; {DSN_FORMS}")]
pub struct DsnError {
    /// The database type it was read as.
    pub ty: String,
    pub dsn: String,
    /// What is wrong with it.
    pub why: String,
}

/// Turns a k8m event handler DSN into a database URL; the error lists the accepted forms.
pub fn dsn_to_url(ty: &str, dsn: &str) -> Result<String, DsnError> {
    let dsn = dsn.trim();
    let url = match ty {
        "sqlite" | "sqlite3" => sqlite_url(dsn),
        "postgres" | "postgresql" => postgres_url(dsn),
        "mysql" | "mariadb" => mysql_url(dsn),
        _ => Err("unknown database type".to_string()),
    };
    url.map_err(|why| DsnError {
        ty: ty.to_string(),
        dsn: dsn.to_string(),
        why,
    })
}

/// A SQLite path (`file:` prefix and Go driver options allowed); `Err` says why not.
fn sqlite_url(dsn: &str) -> Result<String, String> {
    if dsn.starts_with("sqlite:") {
        return Ok(dsn.to_string());
    }
    let path = dsn.strip_prefix("file:").unwrap_or(dsn);
    // Go drivers' options (`?_busy_timeout=...`) do not apply to sqlx.
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path.contains("://") {
        return Err(String::from("expected a file path"));
    }
    Ok(format!("sqlite://{path}"))
}

/// A libpq `key=value` DSN or a URL; `Err` says why not.
fn postgres_url(dsn: &str) -> Result<String, String> {
    if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        return Ok(dsn.to_string());
    }
    let Some(pairs) = libpq_pairs(dsn).filter(|p| !p.is_empty()) else {
        return Err(String::from("expected key=value pairs"));
    };
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let known = ["host", "port", "user", "password", "dbname", "sslmode"];
    if let Some((k, _)) = pairs
        .iter()
        .find(|(k, _)| !known.contains(&k.as_str()) && k != "TimeZone" && k != "timezone")
    {
        return Err(format!("unknown key `{k}`"));
    }
    let mut url = String::from("postgres://");
    if let Some(user) = get("user") {
        url.push_str(&percent_encode(user));
        if let Some(pw) = get("password") {
            url.push(':');
            url.push_str(&percent_encode(pw));
        }
        url.push('@');
    }
    url.push_str(get("host").unwrap_or("localhost"));
    url.push(':');
    url.push_str(get("port").unwrap_or("5432"));
    url.push('/');
    url.push_str(&percent_encode(get("dbname").unwrap_or("postgres")));
    if let Some(mode) = get("sslmode") {
        url.push_str("?sslmode=");
        url.push_str(&percent_encode(mode));
    }
    Ok(url)
}

/// A Go MySQL DSN (`user:pw@tcp(host:port)/db?params`) or a URL; `Err` says why not.
fn mysql_url(dsn: &str) -> Result<String, String> {
    if dsn.starts_with("mysql://") || dsn.starts_with("mariadb://") {
        return Ok(dsn.to_string());
    }
    // [user[:password]@][net[(addr)]]/dbname[?param1=value1&paramN=valueN]
    let Some(slash) = dsn.rfind('/') else {
        return Err(String::from("expected `/dbname`"));
    };
    let (head, tail) = (&dsn[..slash], &dsn[slash + 1..]);
    let (db, params) = tail.split_once('?').unwrap_or((tail, ""));
    let (creds, net) = match head.rfind('@') {
        Some(at) => (Some(&head[..at]), &head[at + 1..]),
        None => (None, head),
    };
    let mut query: Vec<String> = Vec::new();
    let host = if net.is_empty() {
        "localhost:3306".to_string()
    } else if let Some(addr) = net.strip_prefix("tcp(").and_then(|r| r.strip_suffix(')')) {
        if addr.contains(':') {
            addr.to_string()
        } else {
            format!("{addr}:3306")
        }
    } else if net == "tcp" {
        "localhost:3306".to_string()
    } else if let Some(sock) = net.strip_prefix("unix(").and_then(|r| r.strip_suffix(')')) {
        query.push(format!("socket={}", percent_encode(sock)));
        "localhost".to_string()
    } else {
        return Err(format!(
            "unknown network `{net}` (expected tcp(host:port) or unix(path))"
        ));
    };
    for p in params.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        match k {
            // Go-driver settings with no sqlx counterpart (sqlx uses utf8mb4 and
            // decodes times itself).
            "parseTime"
            | "loc"
            | "charset"
            | "collation"
            | "timeout"
            | "readTimeout"
            | "writeTimeout"
            | "allowNativePasswords" => {}
            "tls" => match v {
                "true" => query.push("ssl-mode=verify_identity".into()),
                "skip-verify" | "preferred" => query.push("ssl-mode=required".into()),
                "false" => query.push("ssl-mode=disabled".into()),
                _ => return Err(format!("unsupported tls={v}")),
            },
            _ => return Err(format!("unsupported parameter `{k}`")),
        }
    }
    let mut url = String::from("mysql://");
    if let Some(c) = creds {
        let (user, pw) = c.split_once(':').unwrap_or((c, ""));
        url.push_str(&percent_encode(user));
        if !pw.is_empty() {
            url.push(':');
            url.push_str(&percent_encode(pw));
        }
        url.push('@');
    }
    url.push_str(&host);
    url.push('/');
    url.push_str(db);
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    Ok(url)
}

/// How a translation writes secret values (database URLs with a password or a query,
/// webhook URLs with a query or userinfo, header values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// As they are (loading a file in the k8m event handler's format; `eventflow migrate --show-secrets`).
    Inline,
    /// As `${EVENTFLOW_...}` references, listed in a comment at the top with redacted values
    /// (`eventflow migrate`).
    Env,
}

/// Writes values into the translation, keeping secrets out of it in [`Secrets::Env`] mode
/// (every `eventflow migrate` translation uses it).
pub(crate) struct Writer {
    mode: Secrets,
    refs: Vec<(String, String)>,
}

impl Writer {
    pub(crate) fn new(mode: Secrets) -> Writer {
        Writer {
            mode,
            refs: Vec::new(),
        }
    }

    /// The comment that lists the variables secrets are read from (empty without any):
    /// `origin` names the file they came from.
    pub(crate) fn header(&self, origin: &str) -> String {
        if self.refs.is_empty() {
            return String::new();
        }
        let mut head = format!(
            "# Secrets are not printed: the values below are read from the environment.\n\
             # Set each variable to the value of {origin} (shown redacted), or run\n\
             # `eventflow migrate --show-secrets` to print them in place.\n"
        );
        for (name, shown) in &self.refs {
            let _ = writeln!(head, "#   {name}: {shown}");
        }
        head
    }

    /// `value` quoted, or a `${name}` reference if it holds a secret and secrets stay out. A
    /// value that reads the environment already (`Bearer ${TOKEN:-x}`) holds no secret of its
    /// own: it is kept as written, so the migrated file reads the same variables.
    pub(crate) fn secret(&mut self, name: &str, value: &str, is_secret: bool) -> String {
        if self.mode == Secrets::Inline || !is_secret || value.contains("${") {
            return yaml_string(value);
        }
        if !self.refs.iter().any(|(n, _)| n == name) {
            let shown = if value.contains("://") {
                crate::redact::url(value)
            } else {
                "***".to_string()
            };
            self.refs.push((name.to_string(), shown));
        }
        format!("\"${{{name}}}\"")
    }
}

/// A URL holds a secret if redacting it changes it.
pub(crate) fn url_has_secret(url: &str) -> bool {
    crate::redact::url(url) != url
}

/// Translates a file in the k8m event handler's format (parsed, `${ENV}` substituted or not) into
/// pipeline YAML.
pub fn translate(root: &Node) -> Result<Translated, Vec<Problem>> {
    translate_with(root, Secrets::Inline)
}

/// [`translate`], writing secrets as `mode` says.
pub fn translate_with(root: &Node, mode: Secrets) -> Result<Translated, Vec<Problem>> {
    let s = read_settings(root)?;
    if !s.enabled {
        return Ok(Translated::Disabled(
            "the event handler is disabled (`enabled: false`)".into(),
        ));
    }
    if !s.watcher_on {
        return Ok(Translated::Disabled(
            "the watcher is disabled (`watcher.enabled: false`): no events are read".into(),
        ));
    }
    Ok(Translated::Pipeline(write_pipeline(&s, mode)))
}

/// What a file in the k8m event handler's format says, with its defaults filled in (its
/// sections' `enabled` flags are bools, as in the file).
#[allow(clippy::struct_excessive_bools)]
struct Settings {
    enabled: bool,
    url: String,
    max_conns: u64,
    watcher_on: bool,
    resync: u64,
    buffer: u64,
    worker_on: bool,
    batch_size: u64,
    interval: u64,
    max_retries: u64,
    rules_on: bool,
    reverse: bool,
    namespaces: Vec<String>,
    reasons: Vec<String>,
    types: Vec<String>,
    hook_on: bool,
    hook_url: Option<String>,
    method: String,
    timeout: u64,
    retries: u64,
    headers: Vec<(String, String)>,
}

impl Reader<'_> {
    /// Reports top-level fields the format does not have.
    fn unknown_top_level(&mut self) {
        if let Some(map) = self.root.as_map() {
            for (k, (pos, _)) in map {
                if k != "enabled" && !SECTIONS.contains(&k.as_str()) {
                    self.problems.push(problem(
                        *pos,
                        k,
                        format!(
                            "unknown top-level field of the k8m event handler's format (known: enabled, {})",
                            SECTIONS.join(", ")
                        ),
                    ));
                }
            }
        }
    }

    /// `database.type` and `database.dsn` as a database URL (empty after a problem).
    fn database_url(&mut self, database: Option<&Node>) -> String {
        let (ty_pos, ty) = self.string(database, "database", "type").unwrap_or((
            database.map_or(self.root.pos, |d| d.pos),
            "sqlite".to_string(),
        ));
        let ty = ty.to_lowercase();
        let dsn = self.string(database, "database", "dsn");
        if [
            "sqlite",
            "sqlite3",
            "postgres",
            "postgresql",
            "mysql",
            "mariadb",
        ]
        .contains(&ty.as_str())
        {
            let (pos, dsn) = dsn.unwrap_or((ty_pos, default_dsn(&ty).to_string()));
            match dsn_to_url(&ty, &dsn) {
                Ok(u) => u,
                Err(e) => {
                    self.problems
                        .push(problem(pos, "database.dsn", e.to_string()));
                    String::new()
                }
            }
        } else {
            self.problems.push(problem(
                ty_pos,
                "database.type",
                format!("unknown database type `{ty}` (expected sqlite, postgres or mysql)"),
            ));
            String::new()
        }
    }

    /// `webhook.headers`: a mapping of strings.
    fn headers(&mut self, webhook: Option<&Node>) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = Vec::new();
        if let Some(h) = webhook.and_then(|w| w.get("headers")) {
            match h.as_map() {
                Some(map) => {
                    for (k, (_, v)) in map {
                        match v.as_str() {
                            Some(s) => headers.push((k.clone(), s.to_string())),
                            None => self.problems.push(problem(
                                v.pos,
                                &format!("webhook.headers.{k}"),
                                "expected a string",
                            )),
                        }
                    }
                }
                None if matches!(h.value, Value::Null) => {}
                None => self.problems.push(problem(
                    h.pos,
                    "webhook.headers",
                    format!("expected a mapping, found {}", h.value.kind()),
                )),
            }
        }
        headers
    }
}

/// Reads and checks a file in the k8m event handler's format (with its defaults).
fn read_settings(root: &Node) -> Result<Settings, Vec<Problem>> {
    let mut r = Reader {
        problems: Vec::new(),
        root,
    };
    r.unknown_top_level();
    let enabled = r.bool(Some(root), "", "enabled", true);
    let database = r.section("database");
    let watcher = r.section("watcher");
    let worker = r.section("worker");
    let rules = r.section("rule_config");
    let webhook = r.section("webhook");
    r.check_keys(database, "database", &["type", "dsn", "max_conns"]);
    r.check_keys(
        watcher,
        "watcher",
        &["enabled", "resync_interval", "buffer_size"],
    );
    r.check_keys(
        worker,
        "worker",
        &["enabled", "batch_size", "process_interval", "max_retries"],
    );
    r.check_keys(
        rules,
        "rule_config",
        &["enabled", "reverse", "namespaces", "reasons", "types"],
    );
    r.check_keys(
        webhook,
        "webhook",
        &["enabled", "url", "method", "headers", "timeout", "retries"],
    );
    let url = r.database_url(database);
    let max_conns = r.uint(database, "database", "max_conns", 10);

    // watcher
    let watcher_on = r.bool(watcher, "watcher", "enabled", true);
    let resync = r.uint(watcher, "watcher", "resync_interval", 300);
    let buffer = r.uint(watcher, "watcher", "buffer_size", 1000);

    // worker
    let worker_on = r.bool(worker, "worker", "enabled", true);
    let batch_size = r.uint(worker, "worker", "batch_size", 100).max(1);
    let interval = r.uint(worker, "worker", "process_interval", 5000);
    let max_retries = r.uint(worker, "worker", "max_retries", 3);

    // rules
    let rules_on = r.bool(rules, "rule_config", "enabled", true);
    let reverse = r.bool(rules, "rule_config", "reverse", false);
    let namespaces = r.strings(rules, "rule_config", "namespaces");
    let reasons = r.strings(rules, "rule_config", "reasons");
    let types = r.strings(rules, "rule_config", "types");

    // webhook
    let hook_on = r.bool(webhook, "webhook", "enabled", false);
    let hook_url = r.string(webhook, "webhook", "url");
    let method = r
        .string(webhook, "webhook", "method")
        .map_or("POST".to_string(), |(_, m)| m);
    let timeout = r.uint(webhook, "webhook", "timeout", 30);
    let retries = r.uint(webhook, "webhook", "retries", 3);
    let headers = r.headers(webhook);
    if hook_on && hook_url.as_ref().is_none_or(|(_, u)| u.trim().is_empty()) {
        r.problems.push(problem(
            webhook.map_or(root.pos, |w| w.pos),
            "webhook.url",
            "the webhook is enabled but has no url (the k8m event handler's validation)",
        ));
    }
    if !r.problems.is_empty() {
        return Err(r.problems);
    }
    Ok(Settings {
        enabled,
        url,
        max_conns,
        watcher_on,
        resync,
        buffer,
        worker_on,
        batch_size,
        interval,
        max_retries,
        rules_on,
        reverse,
        namespaces,
        reasons,
        types,
        hook_on,
        hook_url: hook_url.map(|(_, u)| u),
        method,
        timeout,
        retries,
        headers,
    })
}

/// The pipeline equivalent to `s`, with secrets written as `mode` says.
fn write_pipeline(s: &Settings, mode: Secrets) -> String {
    let Settings {
        url,
        max_conns,
        resync,
        buffer,
        worker_on,
        batch_size,
        interval,
        max_retries,
        rules_on,
        reverse,
        namespaces,
        reasons,
        types,
        hook_on,
        hook_url,
        method,
        timeout,
        retries,
        headers,
        ..
    } = s;
    let mut w = Writer::new(mode);
    let db_url = w.secret("EVENTFLOW_DB_URL", url, url_has_secret(url));
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Translated by eventflow from the k8m event handler's format (eventhandler.yaml).\n\
         # The k8m event handler's database also keeps eventflow's state (watch checkpoint, webhook queue).\n\
         version: 1\nstate:\n  url: {db_url}\nstages:"
    );
    let _ = writeln!(
        y,
        "  watcher:\n    type: kube_events\n    # watcher.buffer_size: at most this many events wait between the watcher and the stages\n    # after it.\n    buffer_size: {buffer}\n    # watcher.resync_interval ({resync}s) is not needed: eventflow keeps one watch open, resumes it\n    # from the last resourceVersion, relists on 410 Gone, and never sends a version twice."
    );
    let upstream = if *rules_on {
        let _ = writeln!(
            y,
            "  rules:\n    type: filter\n    inputs: [watcher]\n    # rule_config: exact matches; all non-empty lists must match; reverse keeps what matches none.\n    reverse: {reverse}\n    namespaces: {}\n    reasons: {}\n    types: {}",
            list(namespaces),
            list(reasons),
            list(types)
        );
        "rules"
    } else {
        "watcher"
    };
    let _ = writeln!(
        y,
        "  store:\n    type: sql\n    inputs: [{upstream}]\n    url: {db_url}\n    table: k8s_events\n    max_conns: {max_conns}\n    # A repeat of an event (same uid, higher count) updates its row (count, last seen, message)\n    # instead of being dropped by the unique key as in the k8m event handler."
    );
    if *hook_on && *worker_on {
        let hook_url = hook_url.clone().unwrap_or_default();
        let _ = writeln!(
            y,
            "  webhook:\n    type: webhook\n    inputs: [{upstream}]\n    url: {}\n    method: {}\n    timeout: {timeout}s",
            w.secret(
                "EVENTFLOW_WEBHOOK_URL",
                &hook_url,
                url_has_secret(&hook_url)
            ),
            yaml_string(method)
        );
        if !headers.is_empty() {
            let _ = writeln!(y, "    headers:");
            for (i, (k, v)) in headers.iter().enumerate() {
                let name = format!("EVENTFLOW_WEBHOOK_HEADER_{}", i + 1);
                let _ = writeln!(y, "      {}: {}", yaml_string(k), w.secret(&name, v, true));
            }
        }
        let _ = writeln!(
            y,
            "    # The k8m event handler's batch body {{\"events\": [...], \"count\": N, \"timestamp\": T}}, also for one event.\n    format: seed\n    # worker.batch_size and worker.process_interval: events per request, longest wait to fill one.\n    batch: {{max_events: {batch_size}, max_wait: {interval}ms}}\n    # Differs from the k8m event handler: failed pushes are retried with exponential backoff (not once per\n    # worker tick) from a queue in the state database that survives restarts, for up to\n    # retry_for; what still fails goes to a dead-letter table (`eventflow dead-letter`)\n    # instead of being marked processed and dropped. `retries` (worker.max_retries\n    # {max_retries}, webhook.retries {retries}: the larger) applies to `eventflow dead-letter resend`.\n    retries: {}\n    durable: true\n    retry_for: 24h\n    # The k8m event handler's `processed` and `attempts` columns of k8s_events follow the deliveries.\n    mark_rows: {{url: {db_url}, table: k8s_events}}",
            max_retries.max(retries),
        );
    }
    y.insert_str(0, &w.header("the k8m event handler file"));
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsns_of_every_form() {
        let ok = |ty: &str, dsn: &str| dsn_to_url(ty, dsn).unwrap();
        assert_eq!(ok("sqlite", "k8s_events.db"), "sqlite://k8s_events.db");
        assert_eq!(ok("sqlite", "/data/ev.db"), "sqlite:///data/ev.db");
        assert_eq!(
            ok("sqlite", "file:ev.db?_busy_timeout=5000"),
            "sqlite://ev.db"
        );
        assert_eq!(
            ok(
                "postgres",
                "host=localhost user=postgres password=postgres dbname=k8s_events sslmode=disable"
            ),
            "postgres://postgres:postgres@localhost:5432/k8s_events?sslmode=disable"
        );
        assert_eq!(
            ok(
                "postgres",
                "host=db.example port=6432 user=ev password='p@ss w0rd' dbname=events"
            ),
            "postgres://ev:p%40ss%20w0rd@db.example:6432/events"
        );
        assert_eq!(
            ok("mysql", "user:password@tcp(localhost:3306)/k8s_events"),
            "mysql://user:password@localhost:3306/k8s_events"
        );
        assert_eq!(
            ok(
                "mysql",
                "root:s3cr%t@tcp(10.0.0.5)/ev?charset=utf8mb4&parseTime=True&loc=Local"
            ),
            "mysql://root:s3cr%25t@10.0.0.5:3306/ev"
        );
        assert_eq!(
            ok("mysql", "u:p@unix(/run/mysqld/mysqld.sock)/ev"),
            "mysql://u:p@localhost/ev?socket=%2Frun%2Fmysqld%2Fmysqld.sock"
        );
        assert_eq!(
            ok("mysql", "u@/ev?tls=true"),
            "mysql://u@localhost:3306/ev?ssl-mode=verify_identity"
        );
        for (ty, dsn) in [
            ("postgres", "this is not a dsn"),
            ("postgres", "host=x bogus=1"),
            ("mysql", "user:pw@tcp(host:3306)"),
            ("mysql", "user:pw@udp(host)/db"),
            ("sqlite", "http://x"),
        ] {
            let e = dsn_to_url(ty, dsn).unwrap_err();
            assert_eq!(e.ty, ty);
            assert!(e.to_string().contains("accepted forms"), "{e}");
        }
    }
}
