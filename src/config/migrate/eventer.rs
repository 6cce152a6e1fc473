//! kube-eventer's command line (`--source=kubernetes:...`, one `--sink=<type>:<url>?<options>`
//! per sink) as a pipeline: one sink per `--sink`, each behind a `filter` with its options, as
//! its sink code applies them (`level`: Warning sends Warnings only, Normal sends both;
//! `namespaces` and `kinds`: exact, comma-separated; the webhook's `reason`: regular
//! expressions, any of them).

use super::{Migration, Out, Secrets, kv, list, quote, stage_id};

const TOOL: &str = "kube-eventer";

/// One `--sink`: its type, URL (without the options) and options (in order, repeats kept).
struct Sink {
    url: String,
    opts: Vec<(String, String)>,
}

impl Sink {
    fn all(&self, k: &str) -> Vec<String> {
        self.opts
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn one(&self, k: &str) -> Option<String> {
        self.all(k).into_iter().next()
    }

    /// The comma-separated values of `k` (its first occurrence), as kube-eventer reads them.
    fn values(&self, k: &str) -> Vec<String> {
        self.one(k)
            .filter(|v| !v.is_empty())
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `dingtalk:https://x/robot/send?access_token=T&level=Warning`: the URL keeps the
/// parameters that are not kube-eventer's options.
fn parse_sink(spec: &str, options: &[&str]) -> Result<Sink, String> {
    let (_, rest) = spec
        .split_once(':')
        .ok_or_else(|| format!("`{spec}` is not <type>:<url>"))?;
    // kube-eventer takes options after `?` and after `&` (its docs write `<url>&level=...`).
    let (base, query) = match rest.split_once('?') {
        Some((b, q)) => (b.to_string(), q.to_string()),
        None => match rest.split_once('&') {
            Some((b, q)) => (b.to_string(), q.to_string()),
            None => (rest.to_string(), String::new()),
        },
    };
    let mut opts = Vec::new();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if options.contains(&k) {
            opts.push((k.to_string(), percent_decode(v)));
        } else {
            kept.push(pair.to_string());
        }
    }
    let url = if kept.is_empty() {
        base
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(Sink { url, opts })
}

/// The filter lines of a sink's options: `level` (with `default_warning`, Warnings unless
/// `level=Normal`), `namespaces`, `kinds`, `reason`.
fn filter_lines(s: &Sink, default_warning: bool, namespace_field: &str) -> Vec<String> {
    let mut l = Vec::new();
    match s.one("level").as_deref() {
        Some("Normal") => {}
        Some(_) => l.push("types: [Warning]".into()),
        None if default_warning => l.push("types: [Warning]".into()),
        None => {}
    }
    let mut matches = Vec::new();
    let namespaces = s.values("namespaces");
    if !namespaces.is_empty() {
        let alt: Vec<String> = namespaces.iter().map(|n| regex::escape(n)).collect();
        matches.push((
            namespace_field.to_string(),
            format!("^(?:{})$", alt.join("|")),
        ));
    }
    let kinds = s.values("kinds");
    if !kinds.is_empty() {
        l.push(format!("kinds: {}", list(&kinds)));
    }
    let reasons = s.values("reason");
    if !reasons.is_empty() {
        let alt: Vec<String> = reasons.iter().map(|r| format!("(?:{r})")).collect();
        matches.push(("reason".to_string(), alt.join("|")));
    }
    if !matches.is_empty() {
        l.push("matches:".into());
        for (k, v) in matches {
            l.push(format!("  {k}: {}", quote(&v)));
        }
    }
    l
}

const WEBHOOK_OPTS: [&str; 8] = [
    "level",
    "namespaces",
    "kinds",
    "reason",
    "method",
    "header",
    "custom_body_configmap",
    "custom_body_configmap_namespace",
];
const DINGTALK_OPTS: [&str; 8] = [
    "level",
    "namespaces",
    "kinds",
    "label",
    "msg_type",
    "sign",
    "cluster_id",
    "region",
];

/// kube-eventer's default webhook body, as an eventflow template.
const DEFAULT_BODY: &str = r#"{"EventType": "{{ type }}", "EventKind": "{{ kind }}", "EventReason": "{{ reason }}", "EventTime": "{{ last_seen }}", "EventMessage": "{{ message }}"}"#;

/// The flags in a file: one per line, or a container's `command`/`args` list (YAML `- --sink=...`
/// items, or a JSON-style list), `#` comments ignored.
pub fn flags_of(text: &str) -> Vec<String> {
    let Ok(flag) = regex::Regex::new(r#"--(?:sink|source)=[^\s"']+"#) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| {
            flag.find_iter(l)
                .map(|m| m.as_str().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Translates kube-eventer's flags (`--sink=...` and `--source=...`, as arguments or lines of
/// a file).
#[allow(clippy::too_many_lines)]
pub fn translate(args: &[String], mode: Secrets) -> Result<Migration, String> {
    let mut out = Out::new(mode);
    let mut sinks = Vec::new();
    let mut source = vec!["type: kube_events".to_string()];
    for a in args {
        let a = a.trim().trim_matches('"').trim_matches('\'');
        let a = a.trim_start_matches("- ").trim();
        if let Some(spec) = a.strip_prefix("--sink=") {
            sinks.push(spec.to_string());
        } else if let Some(src) = a.strip_prefix("--source=") {
            let server = src.trim_start_matches("kubernetes:");
            if !server.is_empty() && !server.starts_with("https://kubernetes.default") {
                source.push(format!(
                    "# --source={src}: eventflow reads the in-cluster service account or the kubeconfig (`kubeconfig:`)"
                ));
            }
        } else if !a.is_empty() && !a.starts_with('#') {
            out.note(&format!("{a}: not a --sink or --source flag; left out"));
        }
    }
    if sinks.is_empty() {
        return Err("no `--sink=...` flag".into());
    }
    out.stage(
        "k8s",
        Some("the Events of the cluster (kube-eventer's --source)"),
        &source,
    );
    out.note("Differs: a sink acknowledges what it delivered, and the source checkpoints only that, so nothing is lost\nor sent twice across restarts (kube-eventer keeps nothing: a restart misses or repeats events).");
    let mut made = 0;
    let mut missing = Vec::new();
    for (i, spec) in sinks.iter().enumerate() {
        let kind = spec.split(':').next().unwrap_or_default().to_string();
        let name = if sinks
            .iter()
            .filter(|s| s.starts_with(&format!("{kind}:")))
            .count()
            > 1
        {
            format!("{kind}-{i}")
        } else {
            kind.clone()
        };
        let id = stage_id(&name);
        let at = format!("--sink={kind}:…");
        let (filter, lines, comment): (Vec<String>, Vec<String>, String) = match kind.as_str() {
            "dingtalk" => {
                let s = parse_sink(spec, &DINGTALK_OPTS)?;
                let mut l = vec!["type: webhook".to_string(), "format: dingtalk".to_string()];
                l.push(format!("url: {}", out.url(&name, "url", &s.url)));
                if let Some(sign) = s.one("sign") {
                    l.push(format!("secret: {}", out.secret(&name, "secret", &sign)));
                }
                let labels = s.all("label");
                let mut c = format!("{at}: DingTalk markdown messages");
                if !labels.is_empty() {
                    c.push_str(&format!(
                        "; its label(s) {} are the source's `cluster` in eventflow's message",
                        labels.join(", ")
                    ));
                }
                (filter_lines(&s, true, "namespace"), l, c)
            }
            "webhook" => {
                let s = parse_sink(spec, &WEBHOOK_OPTS)?;
                let mut l = vec!["type: webhook".to_string()];
                l.push(format!("url: {}", out.url(&name, "url", &s.url)));
                l.push(format!(
                    "method: {}",
                    s.one("method").unwrap_or_else(|| "GET".into())
                ));
                let headers = s.all("header");
                if !headers.is_empty() {
                    l.push("headers:".into());
                    for h in headers {
                        let (k, v) = h.split_once('=').unwrap_or((&h, ""));
                        let v = out.secret(&name, &format!("header_{}", stage_id(k)), v);
                        l.push(format!("  {}: {v}", quote(k)));
                    }
                }
                l.push("format: template".into());
                if let Some(cm) = s.one("custom_body_configmap") {
                    out.attention(format!(
                        "{at}: its body template is in the ConfigMap `{cm}`: copy it into `template:` here (Go `{{{{ .Reason }}}}` becomes `{{{{ reason }}}}`) and remove `untranslated_body_configmap`"
                    ));
                    l.push(kv("untranslated_body_configmap", &cm));
                }
                l.push(kv("template", DEFAULT_BODY));
                (
                    filter_lines(&s, false, "object_namespace"),
                    l,
                    format!(
                        "{at}: kube-eventer's default body (its method, GET unless `method=`, kept)"
                    ),
                )
            }
            "wechat" => {
                let s = parse_sink(
                    spec,
                    &[
                        "level",
                        "namespaces",
                        "kinds",
                        "label",
                        "corp_id",
                        "corp_secret",
                        "agent_id",
                        "to_user",
                    ],
                )?;
                let var = super::env_name(&name, "robot_url");
                out.attention(format!(
                    "{at}: kube-eventer sent through a WeCom application (corp_id/agent_id); eventflow posts to a WeCom group robot: create one and set {var}"
                ));
                let l = vec![
                    "type: webhook".to_string(),
                    "format: wecom".to_string(),
                    format!("url: {}", quote(&format!("${{{var}}}"))),
                ];
                (
                    filter_lines(&s, true, "namespace"),
                    l,
                    format!("{at}: WeCom markdown messages"),
                )
            }
            "elasticsearch" => {
                let s = parse_sink(
                    spec,
                    &[
                        "nodes",
                        "index",
                        "esUserName",
                        "esUserSecret",
                        "maxRetries",
                        "healthCheck",
                        "sniff",
                        "startupHealthcheckTimeout",
                        "ver",
                        "bulkWorkers",
                        "cluster_name",
                        "pipeline",
                    ],
                )?;
                let mut nodes = s.all("nodes");
                if nodes.is_empty() && !s.url.is_empty() {
                    nodes.push(s.url.clone());
                }
                let mut l = vec![
                    "type: elasticsearch".to_string(),
                    format!("urls: {}", list(&nodes)),
                ];
                l.push(kv(
                    "index",
                    &s.one("index")
                        .unwrap_or_else(|| "heapster".into())
                        .to_ascii_lowercase(),
                ));
                if let Some(u) = s.one("esUserName") {
                    l.push(kv("username", &u));
                    let p = s.one("esUserSecret").unwrap_or_default();
                    l.push(format!("password: {}", out.secret(&name, "password", &p)));
                }
                if let Some(r) = s.one("maxRetries") {
                    l.push(format!("retries: {}", r.parse::<u32>().unwrap_or(0)));
                }
                (
                    Vec::new(),
                    l,
                    format!(
                        "{at}: documents follow eventflow's scheme (ECS and Elastic's Kubernetes names), one per Event object"
                    ),
                )
            }
            "mysql" => {
                out.attention(format!(
                    "{at}: kube-eventer's MySQL table (k8s_event: name, namespace, event_id, type, reason, message, kind, first/last_occurrence_time) is not eventflow's: point a `sql` sink at a new table (it creates its own) and set {}",
                    super::env_name(&name, "url")
                ));
                let l = vec![
                    "type: sql".to_string(),
                    format!(
                        "url: {}",
                        quote(&format!("${{{}}}", super::env_name(&name, "url")))
                    ),
                    "table: k8s_events".to_string(),
                ];
                (
                    Vec::new(),
                    l,
                    format!("{at}: a `sql` sink on eventflow's own table"),
                )
            }
            "log" => (
                Vec::new(),
                vec!["type: stdout".to_string()],
                format!("{at}: events as JSON lines on standard output"),
            ),
            other => {
                missing.push(other.to_string());
                out.raw(&format!(
                    "# --sink={other}:…: eventflow has no {other} sink; its events are not sent anywhere. A `webhook`\n# to a bridge, or `nats` (JetStream) for a queue, may stand in for it."
                ));
                continue;
            }
        };
        let input = if filter.is_empty() {
            "k8s".to_string()
        } else {
            let fid = format!("{id}-filter");
            let mut f = vec!["type: filter".to_string(), "inputs: [k8s]".to_string()];
            f.extend(filter);
            out.stage(
                &fid,
                Some(&format!(
                    "{at}: its level, namespaces, kinds and reason options"
                )),
                &f,
            );
            fid
        };
        let mut lines = lines;
        lines.insert(1, format!("inputs: [{input}]"));
        out.stage(&id, Some(&comment), &lines);
        made += 1;
    }
    if !missing.is_empty() {
        out.attention(format!(
            "sinks without an eventflow equivalent (commented out): {}",
            missing.join(", ")
        ));
    }
    let summary = format!("{made} of {} --sink flag(s) as sinks", sinks.len());
    Ok(out.finish(TOOL, &summary, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_urls_keep_their_own_parameters() {
        let s = parse_sink(
            "dingtalk:https://oapi.dingtalk.com/robot/send?access_token=abc&label=c1&level=Normal",
            &DINGTALK_OPTS,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.url,
            "https://oapi.dingtalk.com/robot/send?access_token=abc"
        );
        assert_eq!(s.one("level").as_deref(), Some("Normal"));
        let w = parse_sink(
            "webhook:http://x/hook&level=Warning&namespaces=a,b&header=k=v",
            &WEBHOOK_OPTS,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.url, "http://x/hook");
        assert_eq!(w.values("namespaces"), ["a", "b"]);
        assert_eq!(w.all("header"), ["k=v"]);
    }
}
