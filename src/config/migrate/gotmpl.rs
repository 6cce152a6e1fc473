//! Go templates (kubernetes-event-exporter's `layout`, messages and titles, with sprig) as
//! eventflow's minijinja templates. What is translated: field references of the event
//! (`{{ .Reason }}`, `{{ .InvolvedObject.Name }}`, `{{ .InvolvedObject.Labels.app }}`,
//! `{{ index .InvolvedObject.Labels "app" }}`), the whole event (`{{ toJson . }}`), its time
//! (`{{ .GetTimestampMs }}`, `{{ .GetTimestampISO8601 }}`), and the sprig functions `upper`,
//! `lower`, `trim`, `quote` on them. Anything else (conditions, loops, other functions) is not
//! guessed at: the caller keeps the original and marks it for editing.

/// The field a Go path of `kube.EnhancedEvent` reads, in eventflow's names.
fn field(path: &str) -> Option<String> {
    let f = match path {
        ".Message" | ".Note" => "message",
        ".Reason" => "reason",
        ".Type" => "type",
        ".Count" => "count",
        ".Namespace" | ".ObjectMeta.Namespace" => "namespace",
        ".Name" | ".ObjectMeta.Name" => "name",
        ".UID" | ".ObjectMeta.UID" => "uid",
        ".ResourceVersion" | ".ObjectMeta.ResourceVersion" => "resource_version",
        ".InvolvedObject.Kind" => "kind",
        ".InvolvedObject.Name" => "object_name",
        ".InvolvedObject.Namespace" => "object_namespace",
        ".InvolvedObject.UID" => "object_uid",
        ".InvolvedObject.FieldPath" => "field_path",
        ".Source.Component" | ".ReportingController" => "source",
        ".Source.Host" | ".ReportingInstance" => "host",
        ".FirstTimestamp" => "first_seen",
        ".LastTimestamp" => "last_seen",
        ".ClusterName" => "cluster",
        ".GetTimestampMs" => "event_time_ms",
        ".GetTimestampISO8601" => "event_time_iso",
        _ => {
            for (prefix, map) in [
                (".InvolvedObject.Labels.", "object_labels"),
                (".InvolvedObject.Annotations.", "object_annotations"),
            ] {
                if let Some(key) = path.strip_prefix(prefix)
                    && !key.is_empty()
                    && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Some(format!("{map}.{key}"));
                }
            }
            return None;
        }
    };
    Some(f.to_string())
}

/// One action's pipeline (`.Reason | upper`, `upper .Reason`, `index .X.Labels "k"`) as a
/// minijinja expression, or `None`.
fn expression(action: &str, whole_event: &str) -> Option<String> {
    let words: Vec<&str> = action.split_whitespace().collect();
    match words.as_slice() {
        [path] if path.starts_with('.') => field(path),
        ["toJson" | "toPrettyJson" | "toRawJson", "."] => Some(format!("{whole_event} | tojson")),
        [
            "toJson" | "toPrettyJson" | "toRawJson",
            ".InvolvedObject.Labels",
        ] => Some("object_labels | tojson".into()),
        [
            "toJson" | "toPrettyJson" | "toRawJson",
            ".InvolvedObject.Annotations",
        ] => Some("object_annotations | tojson".into()),
        ["toJson" | "toPrettyJson" | "toRawJson", path] => {
            Some(format!("{} | tojson", field(path)?))
        }
        ["index", map, key] => {
            let key = key.strip_prefix('"')?.strip_suffix('"')?;
            if key.contains('\'') || key.contains('\\') {
                return None;
            }
            let m = match *map {
                ".InvolvedObject.Labels" => "object_labels",
                ".InvolvedObject.Annotations" => "object_annotations",
                _ => return None,
            };
            Some(format!("{m}['{key}']"))
        }
        [f @ ("upper" | "lower" | "trim"), path] => {
            Some(format!("{} | {f}", expression(path, whole_event)?))
        }
        ["quote", path] => Some(format!("{} | tojson", expression(path, whole_event)?)),
        [path, "|", f @ ("upper" | "lower" | "trim")] => {
            Some(format!("{} | {f}", expression(path, whole_event)?))
        }
        _ => None,
    }
}

/// `text` with its Go actions as minijinja ones, or the first action that cannot be. `whole_event`
/// names the variable that is the whole event where the template is used (`event`).
pub fn translate(text: &str, whole_event: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "an unclosed `{{`".to_string())?;
        let raw = &after[..end];
        let action = raw.trim_start_matches('-').trim_end_matches('-').trim();
        let expr = expression(action, whole_event).ok_or_else(|| format!("`{{{{{raw}}}}}`"))?;
        out.push_str("{{ ");
        out.push_str(&expr);
        out.push_str(" }}");
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    // A literal `{%` or `{#` would start a minijinja block or comment.
    if out.contains("{%") || out.contains("{#") {
        return Err("`{%` or `{#` in the text".into());
    }
    Ok(out)
}

/// Whether a translated template reads labels or annotations (then an `enrich` stage must
/// come first), and which annotation keys.
pub fn needs(text: &str) -> (bool, Vec<String>) {
    let labels = text.contains("object_labels");
    let mut annotations = Vec::new();
    for part in text.split("object_annotations").skip(1) {
        let key: String = part
            .trim_start_matches(['.', '[', '\''])
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
            .collect();
        let key = key.trim_end_matches('.').to_string();
        if !key.is_empty() && !annotations.contains(&key) {
            annotations.push(key);
        }
    }
    (labels || !annotations.is_empty(), annotations)
}

/// A Go time layout (`kube-events-{2006-01-02}`: the braces hold the layout) as strftime
/// (`kube-events-%Y-%m-%d`), or `None` when it uses what strftime cannot say.
pub fn index_format(layout: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = layout;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}')? + open;
        let mut inner = rest[open + 1..close].to_string();
        for (go, c) in [
            ("2006", "%Y"),
            ("January", "%B"),
            ("Jan", "%b"),
            ("01", "%m"),
            ("02", "%d"),
            ("15", "%H"),
            ("04", "%M"),
            ("05", "%S"),
            ("06", "%y"),
        ] {
            inner = inner.replace(go, c);
        }
        if inner.chars().any(|c| c.is_ascii_digit()) {
            return None;
        }
        out.push_str(&inner);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_actions_become_minijinja() {
        assert_eq!(
            translate(
                "Event {{ .Reason }} for {{ .InvolvedObject.Namespace }}/{{ .InvolvedObject.Name }}",
                "event"
            ),
            Ok("Event {{ reason }} for {{ object_namespace }}/{{ object_name }}".into())
        );
        assert_eq!(
            translate("{{ toJson . }}", "event"),
            Ok("{{ event | tojson }}".into())
        );
        assert_eq!(
            translate("{{ .GetTimestampMs }}", "event"),
            Ok("{{ event_time_ms }}".into())
        );
        assert_eq!(
            translate(
                r#"{{ index .InvolvedObject.Labels "app.kubernetes.io/name" }}"#,
                "event"
            ),
            Ok("{{ object_labels['app.kubernetes.io/name'] }}".into())
        );
        assert_eq!(
            translate("{{- upper .Type -}}", "event"),
            Ok("{{ type | upper }}".into())
        );
        assert!(translate("{{ if .Count }}x{{ end }}", "event").is_err());
        assert!(translate("{{ .Weird }}", "event").is_err());
        assert_eq!(
            index_format("kube-events-{2006-01-02}"),
            Some("kube-events-%Y-%m-%d".into())
        );
        assert_eq!(
            needs("{{ object_annotations['team.io/owner'] }} {{ object_labels.app }}"),
            (true, vec!["team.io/owner".to_string()])
        );
    }
}
