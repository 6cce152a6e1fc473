//! kubernetes-event-exporter's configuration as a pipeline.
//!
//! Its route tree, as its `pkg/exporter/route.go` and `rule.go` evaluate it: at each route,
//! an event matching any `drop` rule goes no further; each `match` rule that matches sends the
//! event to its `receiver` (if it names one); the sub-routes see the event only when every
//! `match` rule of the route matched. A rule matches when all its fields match, each a regular
//! expression searched in the event's field (`labels`/`annotations`: the key must be present
//! and its value match; `minCount`: the count at least that). The translation: per route, a
//! `filter` stage per drop rule (`exclude:` with the rule's conditions), per match rule a
//! `filter` with its conditions whose output goes to the receiver's sink, and a chain of those
//! conditions before the sub-routes; conditions become `matches:` (regexes), `message:` and
//! `min_count:`. An event reaches a sink once per route that sends it there, as it did.

use serde_json::Value;

use super::gotmpl;
use super::{Migration, Out, Secrets, kv, list, quote, stage_id};

const TOOL: &str = "kubernetes-event-exporter";

/// A rule's conditions as filter lines, and what they need.
struct Conditions {
    lines: Vec<String>,
    labels: bool,
    annotations: Vec<String>,
}

fn str_of(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The conditions of one rule (`None` fields ignored), with comments for what needs attention.
fn conditions(rule: &Value, at: &str, out: &mut Out) -> Conditions {
    let mut matches: Vec<(String, String)> = Vec::new();
    let mut lines = Vec::new();
    let mut c = Conditions {
        lines: Vec::new(),
        labels: false,
        annotations: Vec::new(),
    };
    let check = |field: &str, re: &str, out: &mut Out| {
        if regex::Regex::new(re).is_err() {
            out.attention(format!(
                "{at}: `{field}: {re}` is not a valid regular expression (kubernetes-event-exporter would have refused it too); `eventflow validate` names the line"
            ));
        }
    };
    for (go, ours) in [
        ("namespace", "namespace"),
        ("reason", "reason"),
        ("type", "type"),
        ("kind", "kind"),
        ("component", "source"),
        ("host", "host"),
    ] {
        let re = str_of(rule, go);
        if !re.is_empty() {
            check(go, &re, out);
            matches.push((ours.into(), re));
        }
    }
    let api = str_of(rule, "apiVersion");
    if !api.is_empty() {
        out.attention(format!(
            "{at}: `apiVersion: {api}` (the involved object's API version) has no equivalent among eventflow's event fields; the translated condition `object_api_version` fails validation until you replace it (e.g. with `kind`)"
        ));
        matches.push(("object_api_version".into(), api));
    }
    for (go, map) in [
        ("labels", "object_labels"),
        ("annotations", "object_annotations"),
    ] {
        if let Some(m) = rule.get(go).and_then(Value::as_object) {
            for (k, v) in m {
                let re = v.as_str().unwrap_or_default().to_string();
                check(&format!("{go}.{k}"), &re, out);
                matches.push((format!("{map}.{k}"), re));
                if go == "labels" {
                    c.labels = true;
                } else {
                    c.annotations.push(k.clone());
                }
            }
        }
    }
    let message = str_of(rule, "message");
    if !message.is_empty() {
        check("message", &message, out);
        lines.push(kv("message", &message));
    }
    if !matches.is_empty() {
        lines.push("matches:".into());
        for (k, v) in matches {
            lines.push(format!("  {}: {}", quote(&k), quote(&v)));
        }
    }
    if let Some(n) = rule
        .get("minCount")
        .and_then(Value::as_i64)
        .filter(|n| *n > 0)
    {
        lines.push(format!("min_count: {n}"));
    }
    c.lines = lines;
    c
}

/// The state of the route translation.
struct Routes<'a> {
    out: &'a mut Out,
    /// receiver name -> the stages that feed it.
    feeds: Vec<(String, Vec<String>)>,
    labels: bool,
    annotations: Vec<String>,
    filters: usize,
}

impl Routes<'_> {
    fn need(&mut self, c: &Conditions) {
        self.labels |= c.labels;
        for a in &c.annotations {
            if !self.annotations.contains(a) {
                self.annotations.push(a.clone());
            }
        }
    }

    fn feed(&mut self, receiver: &str, stage: &str) {
        match self.feeds.iter_mut().find(|(r, _)| r == receiver) {
            Some((_, v)) => {
                if !v.iter().any(|s| s == stage) {
                    v.push(stage.to_string());
                }
            }
            None => self
                .feeds
                .push((receiver.to_string(), vec![stage.to_string()])),
        }
    }

    fn filter(&mut self, id: &str, comment: &str, input: &str, lines: Vec<String>) {
        let mut all = vec!["type: filter".to_string(), format!("inputs: [{input}]")];
        all.extend(lines);
        self.out.stage(id, Some(comment), &all);
        self.filters += 1;
    }

    /// One route at `path` (`route`, `route-1`, `route-1-2`), fed by `input`.
    fn route(&mut self, r: &Value, input: &str, path: &str) {
        let mut gate = input.to_string();
        let rules = |k: &str| {
            r.get(k)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        for (i, d) in rules("drop").iter().enumerate() {
            let at = format!("{path} drop[{i}]");
            let c = conditions(d, &at, self.out);
            if c.lines.is_empty() {
                self.out.raw(&format!(
                    "# {at} has no conditions: it drops every event here, so nothing below {path} is translated"
                ));
                return;
            }
            self.need(&c);
            let id = stage_id(&format!("{path}-drop-{i}"));
            let mut lines = vec!["exclude:".to_string()];
            lines.extend(c.lines.iter().map(|l| format!("  {l}")));
            self.filter(&id, &format!("{at}: drop what matches"), &gate, lines);
            gate = id;
        }
        let mut all_gate = gate.clone();
        for (j, m) in rules("match").iter().enumerate() {
            let at = format!("{path} match[{j}]");
            let c = conditions(m, &at, self.out);
            self.need(&c);
            let receiver = str_of(m, "receiver");
            let rule_stage = if c.lines.is_empty() {
                gate.clone()
            } else {
                let id = stage_id(&format!("{path}-match-{j}"));
                let what = if receiver.is_empty() {
                    format!("{at}: a condition of the routes below")
                } else {
                    format!("{at}: to `{receiver}`")
                };
                self.filter(&id, &what, &gate, c.lines.clone());
                id
            };
            if !receiver.is_empty() {
                self.feed(&receiver, &rule_stage);
            }
            if !c.lines.is_empty() {
                if all_gate == gate {
                    all_gate = rule_stage;
                } else {
                    let id = stage_id(&format!("{path}-all-{j}"));
                    self.filter(
                        &id,
                        &format!("{at}, for the routes below (every match rule must match)"),
                        &all_gate,
                        c.lines.clone(),
                    );
                    all_gate = id;
                }
            }
        }
        for (k, sub) in rules("routes").iter().enumerate() {
            self.route(sub, &all_gate, &format!("{path}-{k}"));
        }
    }
}

/// An index name lowercased (Elasticsearch's rule), strftime placeholders kept.
fn lowercase_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut after_percent = false;
    for c in s.chars() {
        out.push(if after_percent {
            c
        } else {
            c.to_ascii_lowercase()
        });
        after_percent = c == '%' && !after_percent;
    }
    out
}

/// A Go template as ours, or the original with an `ATTENTION` (and a field that fails
/// validation: `untranslated_go_template`).
fn template(
    t: &str,
    at: &str,
    whole: &str,
    out: &mut Out,
    lines: &mut Vec<String>,
) -> Option<String> {
    match gotmpl::translate(t, whole) {
        Ok(s) => Some(s),
        Err(why) => {
            out.attention(format!(
                "{at}: the Go template {why} has no translation; rewrite it as a minijinja template (docs/stages.md) and remove `untranslated_go_template`"
            ));
            lines.push(format!(
                "# ATTENTION: {at}: rewrite this Go template for eventflow"
            ));
            lines.push(kv("untranslated_go_template", t));
            None
        }
    }
}

/// A `layout` (a map of Go templates) as a JSON body template.
fn layout_json(v: &Value, at: &str, out: &mut Out, lines: &mut Vec<String>) -> Option<String> {
    match v {
        Value::String(s) => {
            let t = template(s, at, "event", out, lines)?;
            // A JSON string literal whose `{{ }}` print escaped (the webhook's JSON templates).
            Some(format!(
                "\"{}\"",
                t.replace('\\', "\\\\").replace('"', "\\\"")
            ))
        }
        Value::Object(m) => {
            let mut parts = Vec::new();
            for (k, x) in m {
                parts.push(format!(
                    "{}: {}",
                    serde_json::to_string(k).unwrap_or_default(),
                    layout_json(x, &format!("{at}.{k}"), out, lines)?
                ));
            }
            Some(format!("{{{}}}", parts.join(", ")))
        }
        Value::Array(a) => {
            let mut parts = Vec::new();
            for (i, x) in a.iter().enumerate() {
                parts.push(layout_json(x, &format!("{at}[{i}]"), out, lines)?);
            }
            Some(format!("[{}]", parts.join(", ")))
        }
        other => Some(other.to_string()),
    }
}

fn headers(cfg: &Value, owner: &str, out: &mut Out) -> Vec<String> {
    let Some(h) = cfg.get("headers").and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut lines = vec!["headers:".to_string()];
    for (k, v) in h {
        let v = v.as_str().unwrap_or_default();
        let value = out.secret(owner, &format!("header_{}", stage_id(k)), v);
        lines.push(format!("  {}: {value}", quote(k)));
    }
    lines
}

fn tls(cfg: &Value, at: &str, out: &mut Out) -> Vec<String> {
    let mut lines = Vec::new();
    let Some(t) = cfg.get("tls") else {
        return lines;
    };
    if t.get("insecureSkipVerify").and_then(Value::as_bool) == Some(true) {
        lines.push("insecure_skip_verify: true".into());
    }
    let ca = str_of(t, "caFile");
    if !ca.is_empty() {
        lines.push(kv("ca_file", &ca));
    }
    if !str_of(t, "certFile").is_empty() || !str_of(t, "keyFile").is_empty() {
        out.attention(format!(
            "{at}: `tls.certFile`/`keyFile` (a client certificate) has no equivalent in eventflow's sinks"
        ));
        lines.push(
            "# ATTENTION: the client certificate (tls.certFile/keyFile) is not supported".into(),
        );
    }
    lines
}

/// One receiver as sink lines (without `inputs`), a comment, or `None` when eventflow has no
/// such sink (a commented block is written instead).
#[allow(clippy::too_many_lines)]
fn receiver(name: &str, r: &Value, out: &mut Out) -> Result<(Vec<String>, String), String> {
    let at = format!("receiver `{name}`");
    let (kind, cfg) = r
        .as_object()
        .and_then(|m| m.iter().find(|(k, _)| *k != "name"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .ok_or_else(|| format!("{at} has no sink"))?;
    let mut l: Vec<String> = Vec::new();
    let comment;
    match kind.as_str() {
        "webhook" | "teams" => {
            l.push("type: webhook".into());
            let endpoint = str_of(&cfg, "endpoint");
            l.push(format!("url: {}", out.url(name, "url", &endpoint)));
            l.extend(headers(&cfg, name, out));
            l.extend(tls(&cfg, &at, out));
            match cfg.get("layout") {
                Some(layout) if !layout.is_null() => {
                    let mut extra = Vec::new();
                    match layout_json(layout, &format!("{at} layout"), out, &mut extra) {
                        Some(body) => {
                            l.push("format: template".into());
                            l.push(kv("template", &body));
                        }
                        None => l.extend(extra),
                    }
                    comment = format!("{at} ({kind}): its layout as a template");
                }
                _ if kind == "teams" => {
                    l.push("format: teams".into());
                    comment = format!(
                        "{at} (teams): an Adaptive Card (for a new Teams Workflow webhook use `format: teams_workflow`)"
                    );
                }
                _ => {
                    l.push("format: json".into());
                    comment = format!(
                        "{at} (webhook): without a layout it posted the Kubernetes Event object; eventflow posts its normalized event (docs/stages.md, \"The event\")"
                    );
                }
            }
        }
        "slack" => {
            l.push("type: webhook".into());
            l.push("format: slack".into());
            l.push(format!(
                "url: {}",
                quote(&format!("${{{}}}", super::env_name(name, "webhook_url")))
            ));
            out.attention(format!(
                "{at}: kubernetes-event-exporter posted with a bot token to channel `{}`; eventflow posts to a Slack incoming webhook: create one for that channel and set {}",
                str_of(&cfg, "channel"),
                super::env_name(name, "webhook_url")
            ));
            comment = format!(
                "{at} (slack): its message, title, fields and colours become eventflow's Slack message"
            );
        }
        "loki" => {
            l.push("type: loki".into());
            l.push(format!(
                "url: {}",
                out.url(name, "url", &str_of(&cfg, "url"))
            ));
            if let Some(labels) = cfg.get("streamLabels").and_then(Value::as_object) {
                l.push("static_labels:".into());
                for (k, v) in labels {
                    l.push(format!(
                        "  {}: {}",
                        quote(k),
                        quote(v.as_str().unwrap_or_default())
                    ));
                }
            }
            l.extend(headers(&cfg, name, out));
            l.extend(tls(&cfg, &at, out));
            comment = if cfg.get("layout").is_some_and(|x| !x.is_null()) {
                format!(
                    "{at} (loki): its layout is not translated: each line is the event as JSON (`line: json`)"
                )
            } else {
                format!("{at} (loki)")
            };
        }
        "opsgenie" => {
            l.push("type: opsgenie".into());
            let key = str_of(&cfg, "apiKey");
            if key.is_empty() {
                let var = super::env_name(name, "api_key");
                out.attention(format!("{at}: its apiKey is empty: set {var}"));
                l.push(format!("api_key: {}", quote(&format!("${{{var}}}"))));
            } else {
                l.push(format!("api_key: {}", out.secret(name, "api_key", &key)));
            }
            let api = str_of(&cfg, "URL");
            if api.contains("eu") {
                l.push("url: https://api.eu.opsgenie.com".into());
            }
            let p = str_of(&cfg, "priority");
            if !p.is_empty() {
                l.push(format!("priority: {{\"*\": {}}}", quote(&p)));
            }
            for (go, ours) in [("message", "message"), ("description", "description")] {
                let t = str_of(&cfg, go);
                if !t.is_empty()
                    && let Some(s) = template(&t, &format!("{at} {go}"), "event", out, &mut l)
                {
                    l.push(kv(ours, &s));
                }
            }
            let alias = str_of(&cfg, "alias");
            if alias.contains(".UID") {
                l.push("key: [uid]".into());
            } else if !alias.is_empty() {
                l.push(format!(
                    "# alias was {}: eventflow's alias is the problem key (`key:` fields)",
                    quote(&alias)
                ));
            }
            if let Some(tags) = cfg.get("tags").and_then(Value::as_array) {
                let fixed: Vec<String> = tags
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|t| !t.contains("{{"))
                    .map(str::to_string)
                    .collect();
                l.push(format!("tags: {}", list(&fixed)));
                if fixed.len() < tags.len() {
                    l.push("# templated tags are not supported: the event's fields are in the alert's details".into());
                }
            }
            comment = format!(
                "{at} (opsgenie): differs: eventflow closes the alert after resolve_after without events (kubernetes-event-exporter never closed them)"
            );
        }
        "elasticsearch" | "opensearch" => {
            l.push("type: elasticsearch".into());
            let hosts: Vec<String> = cfg
                .get("hosts")
                .and_then(Value::as_array)
                .map(|h| {
                    h.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            l.push(format!("urls: {}", list(&hosts)));
            let index = str_of(&cfg, "index");
            let format = str_of(&cfg, "indexFormat");
            if !format.is_empty() {
                if let Some(f) = gotmpl::index_format(&format) {
                    l.push(kv("index", &lowercase_name(&f)));
                } else {
                    out.attention(format!("{at}: indexFormat `{format}` has no strftime form"));
                    l.push(kv("untranslated_index_format", &format));
                }
            } else if !index.is_empty() {
                l.push(kv("index", &lowercase_name(&index)));
            }
            let user = str_of(&cfg, "username");
            if !user.is_empty() {
                l.push(kv("username", &user));
                let pw = str_of(&cfg, "password");
                l.push(format!("password: {}", out.secret(name, "password", &pw)));
            }
            let api_key = str_of(&cfg, "apiKey");
            if !api_key.is_empty() {
                l.push(format!(
                    "api_key: {}",
                    out.secret(name, "api_key", &api_key)
                ));
            }
            if !str_of(&cfg, "cloudID").is_empty() {
                out.attention(format!("{at}: `cloudID` is not supported: give the deployment's Elasticsearch endpoint in `urls`"));
            }
            l.extend(headers(&cfg, name, out));
            l.extend(tls(&cfg, &at, out));
            let mut notes = vec![format!(
                "{at} ({kind}): ids are always the Event's uid (its `useEventID: true`) and label keys always de-dotted; no `_type` (Elasticsearch 8 refuses it)"
            )];
            if cfg.get("layout").is_some_and(|x| !x.is_null()) {
                notes.push("its layout is not translated: documents follow eventflow's scheme (docs/stages.md)".into());
            }
            comment = notes.join("; ");
        }
        "stdout" => {
            l.push("type: stdout".into());
            comment = if cfg.get("layout").is_some_and(|x| !x.is_null()) {
                format!(
                    "{at} (stdout): its layout is not translated: eventflow prints the event as JSON"
                )
            } else {
                format!("{at} (stdout)")
            };
        }
        other => {
            return Err(other.to_string());
        }
    }
    Ok((l, comment))
}

/// The top-level settings: the source's lines and what goes before `stages:`, with notes for
/// what has no equivalent.
fn settings(root: &Value, out: &mut Out) -> (Vec<String>, String) {
    let mut top = String::new();
    let mut source = vec!["type: kube_events".to_string()];
    let cluster = str_of(root, "clusterName");
    if !cluster.is_empty() {
        source.push(kv("cluster", &cluster));
    }
    let ns = str_of(root, "namespace");
    if !ns.is_empty() {
        source.push(format!("namespaces: {}", list(&[ns])));
    }
    if root.get("maxEventAgeSeconds").is_some() {
        out.note("maxEventAgeSeconds is not needed: eventflow checkpoints what its sinks acknowledged and reads each\nEvent change once, across restarts, instead of skipping events older than an age (set the source's\n`max_event_age` only to ignore old Events on a first start).");
    }
    for k in ["kubeQPS", "kubeBurst"] {
        if root.get(k).is_some() {
            out.note(&format!("{k}: eventflow watches Events with one watch per source (no client-side rate limit to set)."));
        }
    }
    for k in [
        "throttlePeriod",
        "cacheSize",
        "omitLookup",
        "metricsNamePrefix",
    ] {
        if root.get(k).is_some() {
            out.note(&format!("{k}: no equivalent (eventflow's `enrich` caches objects from watches; metrics are eventflow_*)."));
        }
    }
    let level = str_of(root, "logLevel");
    let format = str_of(root, "logFormat");
    if !level.is_empty() || !format.is_empty() {
        out.note(&format!(
            "Logging: run `eventflow run{}{} pipeline.yaml`.",
            if level.is_empty() {
                String::new()
            } else {
                format!(" --log-level {level}")
            },
            if format.is_empty() {
                String::new()
            } else {
                format!(
                    " --log-format {}",
                    if format == "json" { "json" } else { "text" }
                )
            }
        ));
    }
    if let Some(le) = root.get("leaderElection")
        && le.get("enabled").and_then(Value::as_bool) == Some(true)
    {
        let id = str_of(le, "leaderElectionID");
        top.push_str(&format!(
            "leader_election:\n  lease: {}\n",
            quote(if id.is_empty() { "eventflow" } else { &id })
        ));
        out.note("Several replicas elect a leader through a Lease (leader_election:); the state database must be shared\n(PostgreSQL or MySQL) for the standby to continue where the leader stopped.");
    }
    out.note("Differs: a sink acknowledges what it delivered, and the source checkpoints only that, so nothing is lost\nor sent twice across restarts; count updates of one Event are each a new version (dedup them with a `dedup` stage).");

    (source, top)
}

/// The source, and an `enrich` stage after it when rules or templates read labels or
/// annotations; the last of them is `events`.
fn source_stages(out: &mut Out, source: &[String], labels: bool, annotations: &[String]) {
    if labels || !annotations.is_empty() {
        out.stage(
            "k8s",
            Some("the Events of the cluster (the exporter's watch)"),
            source,
        );
        let mut e = vec!["type: enrich".to_string(), "inputs: [k8s]".to_string()];
        if !annotations.is_empty() {
            e.push(format!("object_annotations: {}", list(annotations)));
        }
        out.stage(
            "events",
            Some("the labels (and annotations) of the involved objects, which rules and templates read"),
            &e,
        );
    } else {
        out.stage(
            "events",
            Some("the Events of the cluster (the exporter's watch)"),
            source,
        );
    }
}

/// Translates kubernetes-event-exporter's configuration (YAML text).
pub fn translate(text: &str, mode: Secrets) -> Result<Migration, String> {
    let root: Value = serde_saphyr::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    if !root.is_object() {
        return Err("not a kubernetes-event-exporter configuration (a mapping with `route` and `receivers`)".into());
    }
    let mut out = Out::new(mode);
    let (source, top) = settings(&root, &mut out);
    // The route tree, into a buffer first: the source (and enrich) go before it.
    let mut routes_out = Out::new(mode);
    let mut routes = Routes {
        out: &mut routes_out,
        feeds: Vec::new(),
        labels: false,
        annotations: Vec::new(),
        filters: 0,
    };
    let route = root.get("route").cloned().unwrap_or(Value::Null);
    // Labels and annotations need an `enrich` stage: decided after reading the routes, so the
    // routes are translated against `events` (the source or the enrich stage).
    routes.route(&route, "events", "route");
    let (mut labels, mut annotations, feeds, filters) = (
        routes.labels,
        routes.annotations.clone(),
        routes.feeds.clone(),
        routes.filters,
    );
    out.attention.append(&mut routes_out.attention);

    // The receivers, before they are written: their templates may read labels too.
    let receivers = root
        .get("receivers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut sinks_text = Out::new(mode);
    let mut sinks = 0;
    let mut missing = Vec::new();
    for r in &receivers {
        let name = str_of(r, "name");
        let id = stage_id(&name);
        let inputs = feeds
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        match receiver(&name, r, &mut out) {
            Ok((mut lines, comment)) => {
                let (l, a) = gotmpl::needs(&lines.join("\n"));
                labels |= l && !inputs.is_empty();
                for x in a {
                    if !annotations.contains(&x) {
                        annotations.push(x);
                    }
                }
                if inputs.is_empty() {
                    let mut block = format!(
                        "# {comment}\n# Not routed to by any rule, so left out:\n# {id}:\n"
                    );
                    for l in &lines {
                        block.push_str(&format!("#   {l}\n"));
                    }
                    sinks_text.raw(&block);
                    continue;
                }
                lines.insert(1, format!("inputs: [{}]", inputs.join(", ")));
                sinks_text.stage(&id, Some(&comment), &lines);
                sinks += 1;
            }
            Err(kind) => {
                missing.push(format!("{name} ({kind})"));
                let fed = if inputs.is_empty() {
                    String::new()
                } else {
                    format!(" (fed by {})", inputs.join(", "))
                };
                sinks_text.raw(&format!(
                    "# receiver `{name}` ({kind}){fed}: eventflow has no {kind} sink. Events routed to it are not sent\n# anywhere; a `webhook` to a bridge, or `nats` (JetStream) for a queue, may stand in for it."
                ));
            }
        }
    }

    source_stages(&mut out, &source, labels, &annotations);
    out.push_stages(&mut routes_out);
    out.push_stages(&mut sinks_text);
    out.prune();
    for (name, _) in &feeds {
        if !receivers.iter().any(|r| str_of(r, "name") == *name) {
            out.attention(format!(
                "the routes send to `{name}`, which is not among the receivers"
            ));
        }
    }
    if !missing.is_empty() {
        out.attention(format!(
            "receivers without an eventflow sink (commented out): {}",
            missing.join(", ")
        ));
    }
    let summary = format!(
        "{} route filter(s), {} of {} receiver(s) as sinks",
        filters,
        sinks,
        receivers.len()
    );
    Ok(out.finish(TOOL, &summary, &top))
}
