//! `filter`: keeps or drops events by rules.
//!
//! The k8m event handler's rules, as its documentation states them: `namespaces`, `reasons` and `types` are
//! whitelists matched exactly; an event matches when it is in every non-empty list (OR inside
//! a list, AND across lists); an empty or missing list is no condition. `reverse: true` keeps
//! exactly the events that match *none* of the non-empty lists. A filter with no conditions
//! keeps everything, reversed or not. Beyond the k8m event handler: `kinds`, `sources`, `clusters` (exact),
//! `names` (globs on the involved object's name), `message` (a regex searched in the message),
//! `labels`, `namespace_labels` (label key -> values, `*` = present) and `owners` (globs over
//! `Kind/name` of the top controller), which read what an `enrich` stage added,
//! and an `exclude:` block with the same fields, which drops what matches all of its non-empty
//! conditions and wins over everything else. Dropped events are counted as
//! `eventflow_events_discarded_total{reason="filtered"}`.

use futures::future::BoxFuture;
use metrics::Counter;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::{
    BuildContext, BuildError, Explanation, Function, FunctionTransform, Stage, StageConfig,
    StageKind, StageType, Step, Verdict,
};
use crate::event::Batch;
use crate::event::{EventData, LabelMap};
use crate::types::{Glob, Pattern};

macro_rules! conditions {
    ($(#[$m:meta])* $name:ident { $($extra:tt)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Namespaces of the Event (exact match).
            #[serde(default)]
            pub namespaces: Vec<String>,
            /// Reasons, e.g. `BackOff`, `FailedScheduling` (exact match).
            #[serde(default)]
            pub reasons: Vec<String>,
            /// Event types: `Normal`, `Warning` (exact match).
            #[serde(default)]
            pub types: Vec<String>,
            /// Kinds of the involved object, e.g. `Pod`, `Node` (exact match).
            #[serde(default)]
            pub kinds: Vec<String>,
            /// Globs over the involved object's name, e.g. `web-*`.
            #[serde(default)]
            pub names: Vec<Glob>,
            /// A regular expression searched in the message.
            #[serde(default)]
            pub message: Option<Pattern>,
            /// Reporting components, e.g. `kubelet`, `default-scheduler` (exact match).
            #[serde(default)]
            pub sources: Vec<String>,
            /// Cluster names (exact match).
            #[serde(default)]
            pub clusters: Vec<String>,
            /// Labels of the involved object (set by an `enrich` stage before this filter):
            /// label key -> accepted values (exact); `"*"` accepts any value of a present key.
            /// Every listed key must match.
            #[serde(default)]
            pub labels: std::collections::BTreeMap<String, Vec<String>>,
            /// Labels of the event's namespace (set by `enrich`), like `labels`.
            #[serde(default)]
            pub namespace_labels: std::collections::BTreeMap<String, Vec<String>>,
            /// Globs over the top controller of the involved object as `Kind/name` (set by
            /// `enrich`), e.g. `Deployment/payments-*`.
            #[serde(default)]
            pub owners: Vec<Glob>,
            /// Regular expressions searched in event fields (unanchored, as Go's
            /// `regexp.MatchString`: anchor with `^...$`): field -> pattern, e.g.
            /// `{reason: "BackOff|Failed.*", namespace: "^kube-"}`. A label or annotation
            /// (`object_labels.app`) must be present to match. Every listed field must match.
            #[serde(default)]
            pub matches: std::collections::BTreeMap<String, Pattern>,
            /// Only events that happened at least this many times (`count`).
            #[serde(default)]
            pub min_count: Option<i64>,
            $($extra)*
        }

        impl $name {
            fn rules(&self) -> Rules {
                Rules::new(&Lists {
                    namespaces: &self.namespaces,
                    reasons: &self.reasons,
                    types: &self.types,
                    kinds: &self.kinds,
                    names: &self.names,
                    message: self.message.as_ref(),
                    sources: &self.sources,
                    clusters: &self.clusters,
                    labels: &self.labels,
                    namespace_labels: &self.namespace_labels,
                    owners: &self.owners,
                    matches: &self.matches,
                    min_count: self.min_count,
                })
            }

            /// Unknown field names in `matches` (with the block's prefix for messages).
            fn check_matches(&self, prefix: &str, out: &mut Vec<crate::component::Invalid>) {
                for k in self.matches.keys() {
                    if crate::event::Field::parse(k).is_none() {
                        let hint = crate::types::did_you_mean(
                            k,
                            crate::event::Field::ALL.iter().map(|(n, _)| *n),
                        )
                        .map(|d| format!("; did you mean `{d}`?"))
                        .unwrap_or_default();
                        out.push(crate::component::Invalid::new(
                            format!("{prefix}matches.{k}"),
                            format!("`{k}` is not an event field{hint}"),
                        ));
                    }
                }
            }
        }
    };
}

/// The conditions of a filter or of its `exclude:` block, borrowed.
struct Lists<'a> {
    namespaces: &'a [String],
    reasons: &'a [String],
    types: &'a [String],
    kinds: &'a [String],
    names: &'a [Glob],
    message: Option<&'a Pattern>,
    sources: &'a [String],
    clusters: &'a [String],
    labels: &'a std::collections::BTreeMap<String, Vec<String>>,
    namespace_labels: &'a std::collections::BTreeMap<String, Vec<String>>,
    owners: &'a [Glob],
    matches: &'a std::collections::BTreeMap<String, Pattern>,
    min_count: Option<i64>,
}

conditions!(
    /// Keeps or drops events by rules (the k8m event handler's `rule_config`, and more).
    FilterConfig {
        /// Keep the events that match none of the non-empty conditions above (the k8m event handler's
        /// documented `reverse`). A filter with no conditions keeps everything either way.
        #[serde(default)]
        pub reverse: bool,
        /// Drop the events that match all of these non-empty conditions, whatever the rest says.
        #[serde(default)]
        pub exclude: Option<Conditions>,
    }
);

conditions!(
    /// Conditions of an `exclude:` block.
    Conditions {}
);

/// The compiled test for one set of conditions.
#[derive(Debug, Clone, Default)]
struct Rules {
    tests: Vec<Test>,
}

/// Reads one text field of an event.
type Getter = fn(&EventData) -> &str;

#[derive(Debug, Clone)]
enum Test {
    /// The list's name, the event field's name, how to read it, the values.
    Exact(&'static str, &'static str, Getter, Vec<String>),
    Names(Vec<Glob>),
    Message(Pattern),
    /// The list's name, which map, key -> accepted values (`*`: present).
    Labels(&'static str, LabelMap, Vec<(String, Vec<String>)>),
    Owners(Vec<Glob>),
    /// Field name, field, pattern.
    Matches(Vec<(String, crate::event::Field, Pattern)>),
    MinCount(i64),
}

/// `Kind/name` of the event's top controller, or empty.
fn owner_of(e: &EventData) -> String {
    if e.owner_kind.is_empty() {
        String::new()
    } else {
        format!("{}/{}", e.owner_kind, e.owner_name)
    }
}

fn globs_text(globs: &[Glob]) -> String {
    globs
        .iter()
        .map(|g| g.text.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Test {
    /// `types: [Warning]`, and what the event has: for `eventflow explain`.
    fn describe(&self, e: &EventData) -> String {
        let list = |v: &[String]| v.join(", ");
        match self {
            Test::Exact(list_name, field, get, values) => {
                format!("`{list_name}: [{}]`: {field} is `{}`", list(values), get(e))
            }
            Test::Names(globs) => format!(
                "`names: [{}]`: object name is `{}`",
                globs_text(globs),
                e.object_name
            ),
            Test::Message(p) => format!("`message: {}`: searched in `{}`", p.0.as_str(), e.message),
            Test::Labels(list_name, map, wanted) => {
                let have = map.of(e);
                let parts: Vec<String> = wanted
                    .iter()
                    .map(|(k, values)| {
                        let v = have.and_then(|l| l.get(k));
                        format!(
                            "{k} in [{}] (has {})",
                            values.join(", "),
                            v.map_or_else(|| "no such label".to_string(), |v| format!("`{v}`"))
                        )
                    })
                    .collect();
                let note = if have.is_none() {
                    " — the event has no labels: is an `enrich` stage before this filter?"
                } else {
                    ""
                };
                format!("`{list_name}`: {}{note}", parts.join("; "))
            }
            Test::Owners(globs) => format!(
                "`owners: [{}]`: owner is `{}`",
                globs_text(globs),
                owner_of(e)
            ),
            Test::Matches(list) => list
                .iter()
                .map(|(name, f, p)| {
                    format!(
                        "`matches.{name}: {}`: {name} is `{}`",
                        p.0.as_str(),
                        e.get(f)
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            Test::MinCount(n) => format!("`min_count: {n}`: count is {}", e.count),
        }
    }

    fn matches(&self, e: &EventData) -> bool {
        match self {
            Test::Exact(_, _, get, values) => {
                let v = get(e);
                values.iter().any(|x| x == v)
            }
            Test::Names(globs) => globs.iter().any(|g| g.matcher.is_match(&e.object_name)),
            Test::Message(p) => p.0.is_match(&e.message),
            Test::Labels(_, map, wanted) => {
                let Some(have) = map.of(e) else {
                    return false;
                };
                wanted.iter().all(|(k, values)| {
                    have.get(k)
                        .is_some_and(|v| values.iter().any(|x| x == "*" || x == v))
                })
            }
            Test::Owners(globs) => {
                !e.owner_kind.is_empty() && {
                    let owner = owner_of(e);
                    globs.iter().any(|g| g.matcher.is_match(&owner))
                }
            }
            Test::Matches(list) => list.iter().all(|(_, f, p)| match f {
                crate::event::Field::Label(map, key) => map
                    .of(e)
                    .and_then(|l| l.get(&**key))
                    .is_some_and(|v| p.0.is_match(v)),
                f => p.0.is_match(&e.get(f)),
            }),
            Test::MinCount(n) => e.count >= *n,
        }
    }
}

impl Rules {
    fn new(l: &Lists<'_>) -> Rules {
        let mut tests = Vec::new();
        let exact: [(&str, &str, Getter, &[String]); 6] = [
            ("namespaces", "namespace", |e| &e.namespace, l.namespaces),
            ("reasons", "reason", |e| &e.reason, l.reasons),
            ("types", "type", |e| &e.type_, l.types),
            ("kinds", "kind", |e| &e.kind, l.kinds),
            ("sources", "source", |e| &e.source, l.sources),
            ("clusters", "cluster", |e| &e.cluster, l.clusters),
        ];
        for (list, field, get, values) in exact {
            if !values.is_empty() {
                tests.push(Test::Exact(list, field, get, values.to_vec()));
            }
        }
        if !l.names.is_empty() {
            tests.push(Test::Names(l.names.to_vec()));
        }
        if let Some(p) = l.message {
            tests.push(Test::Message(p.clone()));
        }
        for (list, map, wanted) in [
            ("labels", LabelMap::Object, l.labels),
            ("namespace_labels", LabelMap::Namespace, l.namespace_labels),
        ] {
            if !wanted.is_empty() {
                let pairs = wanted.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                tests.push(Test::Labels(list, map, pairs));
            }
        }
        if !l.owners.is_empty() {
            tests.push(Test::Owners(l.owners.to_vec()));
        }
        let matches: Vec<_> = l
            .matches
            .iter()
            .filter_map(|(k, p)| Some((k.clone(), crate::event::Field::parse(k)?, p.clone())))
            .collect();
        if !matches.is_empty() {
            tests.push(Test::Matches(matches));
        }
        if let Some(n) = l.min_count {
            tests.push(Test::MinCount(n));
        }
        Rules { tests }
    }

    /// In every non-empty list.
    fn matches_all(&self, e: &EventData) -> bool {
        self.tests.iter().all(|t| t.matches(e))
    }

    /// In none of the non-empty lists.
    fn matches_none(&self, e: &EventData) -> bool {
        !self.tests.iter().any(|t| t.matches(e))
    }
}

/// The decision for one event.
#[derive(Debug, Clone)]
pub struct Matcher {
    include: Rules,
    reverse: bool,
    exclude: Option<Rules>,
}

impl Matcher {
    pub fn new(c: &FilterConfig) -> Matcher {
        let include = c.rules();
        let exclude = c
            .exclude
            .as_ref()
            .map(Conditions::rules)
            .filter(|r| !r.tests.is_empty());
        Matcher {
            include,
            reverse: c.reverse,
            exclude,
        }
    }

    /// True if the event passes.
    pub fn keep(&self, e: &EventData) -> bool {
        if self.exclude.as_ref().is_some_and(|x| x.matches_all(e)) {
            return false;
        }
        if self.reverse {
            self.include.matches_none(e)
        } else {
            self.include.matches_all(e)
        }
    }
}

impl Matcher {
    /// [`Matcher::keep`], condition by condition.
    pub fn explain(&self, e: &EventData) -> Explanation {
        let mut steps = Vec::new();
        if let Some(x) = &self.exclude {
            for t in &x.tests {
                steps.push(Step::check(
                    t.matches(e),
                    format!("exclude {}", t.describe(e)),
                ));
            }
            if x.matches_all(e) {
                steps.push(Step::note(
                    "`exclude:` matches on every condition, so the event is dropped",
                ));
                return Explanation::new(Verdict::Dropped, steps);
            }
        }
        if self.include.tests.is_empty() {
            steps.push(Step::note("no conditions: every event is kept"));
            return Explanation::new(Verdict::Passes, steps);
        }
        for t in &self.include.tests {
            steps.push(Step::check(t.matches(e), t.describe(e)));
        }
        let keep = self.keep(e);
        steps.push(Step::note(match (self.reverse, keep) {
            (false, true) => "every condition matches, so the event is kept",
            (false, false) => "a condition does not match, so the event is dropped",
            (true, true) => "`reverse: true` and no condition matches, so the event is kept",
            (true, false) => "`reverse: true` and a condition matches, so the event is dropped",
        }));
        Explanation::new(
            if keep {
                Verdict::Passes
            } else {
                Verdict::Dropped
            },
            steps,
        )
    }
}

impl StageConfig for FilterConfig {
    fn validate(&self) -> Vec<crate::component::Invalid> {
        let mut out = Vec::new();
        self.check_matches("", &mut out);
        if let Some(x) = &self.exclude {
            x.check_matches("exclude.", &mut out);
        }
        out
    }

    fn explain(&self, event: &EventData) -> Explanation {
        Matcher::new(self).explain(event)
    }

    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            let t: Box<dyn crate::component::Transform> = Box::new(Function(FilterTransform {
                matcher: Matcher::new(self),
                filtered: crate::metrics::discarded(&cx.id, cx.type_name, "filtered"),
            }));
            Ok(Stage::Transform(t))
        })
    }
}

struct FilterTransform {
    matcher: Matcher,
    filtered: Counter,
}

impl FunctionTransform for FilterTransform {
    fn transform(&mut self, mut batch: Batch) -> Batch {
        let before = batch.len();
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        batch.retain(|e| {
            let keep = self.matcher.keep(e);
            if !keep {
                if debug {
                    tracing::debug!(uid = %e.uid, namespace = %e.namespace, reason = %e.reason, r#type = %e.type_, "event filtered out by the rules");
                }
                e.discard();
            }
            keep
        });
        let dropped = before - batch.len();
        if dropped > 0 {
            self.filtered.increment(dropped as u64);
        }
        batch
    }
}

pub const TYPE: StageType = StageType {
    name: "filter",
    kind: StageKind::Transform,
    summary: "keeps or drops events by namespace, reason, type, kind, name, message, source and cluster",
    parse: crate::component::parse_config::<FilterConfig>,
    schema: crate::component::schema_of::<FilterConfig>,
    describe: crate::component::no_metrics,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    fn matcher(yaml: &str) -> Matcher {
        let node = yaml::parse(yaml).unwrap();
        Matcher::new(&yaml::from_node::<FilterConfig>(&node).unwrap())
    }

    fn ev(ns: &str, reason: &str, ty: &str) -> EventData {
        EventData {
            namespace: ns.into(),
            reason: reason.into(),
            type_: ty.into(),
            kind: "Pod".into(),
            object_name: "web-7d4b9c-x2x9q".into(),
            message: "Back-off restarting failed container".into(),
            source: "kubelet".into(),
            cluster: "prod".into(),
            ..EventData::default()
        }
    }

    fn labelled(
        ns_team: Option<&str>,
        app: Option<&str>,
        owner: Option<(&str, &str)>,
    ) -> EventData {
        let map = |k: &str, v: Option<&str>| {
            v.map(|v| std::sync::Arc::new(crate::event::Labels::from([(k.into(), v.into())])))
        };
        let (owner_kind, owner_name) = owner.unwrap_or(("", ""));
        EventData {
            namespace_labels: map("team", ns_team),
            object_labels: map("app", app),
            owner_kind: owner_kind.into(),
            owner_name: owner_name.into(),
            ..ev("shop", "BackOff", "Warning")
        }
    }

    #[test]
    fn labels_namespace_labels_and_owners_read_what_enrich_added() {
        let by_team = matcher("namespace_labels: {team: [payments, billing]}");
        assert!(by_team.keep(&labelled(Some("payments"), None, None)));
        assert!(!by_team.keep(&labelled(Some("web"), None, None)));
        assert!(
            !by_team.keep(&labelled(None, None, None)),
            "no labels: no match"
        );

        let any_team = matcher("namespace_labels: {team: ['*']}\nreverse: true");
        assert!(any_team.keep(&labelled(None, None, None)), "unowned kept");
        assert!(!any_team.keep(&labelled(Some("x"), None, None)));

        let both = matcher("labels: {app: [api]}\nnamespace_labels: {team: [payments]}");
        assert!(both.keep(&labelled(Some("payments"), Some("api"), None)));
        assert!(!both.keep(&labelled(Some("payments"), Some("web"), None)));

        let owners = matcher("owners: ['Deployment/pay*']");
        assert!(owners.keep(&labelled(None, None, Some(("Deployment", "payments-api")))));
        assert!(!owners.keep(&labelled(None, None, Some(("StatefulSet", "payments-db")))));
        assert!(!owners.keep(&labelled(None, None, None)));

        let ex = matcher("exclude:\n  labels: {app: [noisy]}");
        assert!(!ex.keep(&labelled(None, Some("noisy"), None)));
        assert!(ex.keep(&labelled(None, Some("api"), None)));
        assert!(ex.keep(&labelled(None, None, None)));

        let text = by_team.explain(&labelled(None, None, None)).steps[0]
            .text
            .clone();
        assert!(
            text.contains("is an `enrich` stage before this filter"),
            "{text}"
        );
    }

    #[test]
    fn seed_rules_table() {
        // (rules, namespace, reason, type, kept?)
        let forward =
            "reverse: false\nnamespaces: [default]\nreasons: [FailedMount]\ntypes: [Warning]";
        let reverse =
            "reverse: true\nnamespaces: [kube-system]\nreasons: [Scheduled]\ntypes: [Normal]";
        let seed_example = "namespaces: [default, kube-system]\nreasons: [FailedMount, ImagePullBackOff]\ntypes: [Warning]";
        let cases: &[(&str, &str, &str, &str, bool)] = &[
            // The k8m event handler's forward example: all three conditions must hold.
            (forward, "default", "FailedMount", "Warning", true),
            (forward, "default", "FailedMount", "Normal", false),
            (forward, "shop", "FailedMount", "Warning", false),
            (forward, "default", "BackOff", "Warning", false),
            // The k8m event handler's reverse example: kept only if it matches none of the lists.
            (reverse, "default", "BackOff", "Warning", true),
            (reverse, "kube-system", "BackOff", "Warning", false),
            (reverse, "default", "Scheduled", "Warning", false),
            (reverse, "default", "BackOff", "Normal", false),
            (reverse, "kube-system", "Scheduled", "Normal", false),
            // The k8m event handler's example file: OR inside a list, AND across lists.
            (
                seed_example,
                "kube-system",
                "ImagePullBackOff",
                "Warning",
                true,
            ),
            (seed_example, "default", "FailedMount", "Warning", true),
            (seed_example, "shop", "FailedMount", "Warning", false),
            (seed_example, "default", "FailedMount", "Normal", false),
            // Empty and missing lists are no condition.
            (
                "namespaces: []\nreasons: [BackOff]",
                "anything",
                "BackOff",
                "Normal",
                true,
            ),
            ("types: [Warning]", "x", "y", "Warning", true),
            // No conditions: everything passes, reversed or not.
            ("{}", "x", "y", "Normal", true),
            ("reverse: true", "x", "y", "Normal", true),
            ("reverse: true\nnamespaces: []", "x", "y", "Normal", true),
            // Exact match, not substring or case-insensitive.
            ("namespaces: [default]", "default2", "y", "Normal", false),
            ("types: [warning]", "x", "y", "Warning", false),
        ];
        for (rules, ns, reason, ty, want) in cases {
            let m = matcher(rules);
            assert_eq!(
                m.keep(&ev(ns, reason, ty)),
                *want,
                "rules {rules:?} on ({ns}, {reason}, {ty})"
            );
        }
    }

    #[test]
    fn extended_fields_and_exclude() {
        let cases: &[(&str, bool)] = &[
            ("kinds: [Pod]", true),
            ("kinds: [Node]", false),
            ("names: ['web-*']", true),
            ("names: ['db-*', 'web-?d4b9c-*']", true),
            ("names: ['web']", false),
            ("message: 'restarting .* container'", true),
            ("message: '^restarting'", false),
            ("sources: [kubelet]", true),
            ("clusters: [prod, staging]", true),
            ("clusters: [staging]", false),
            // exclude wins over a matching include...
            ("types: [Warning]\nexclude: {namespaces: [default]}", false),
            // ...but only when all of its non-empty conditions match.
            (
                "types: [Warning]\nexclude: {namespaces: [default], reasons: [Other]}",
                true,
            ),
            ("exclude: {}", true),
            // exclude also wins in reverse mode.
            (
                "reverse: true\ntypes: [Normal]\nexclude: {kinds: [Pod]}",
                false,
            ),
            ("reverse: true\ntypes: [Normal]", true),
        ];
        for (rules, want) in cases {
            assert_eq!(
                matcher(rules).keep(&ev("default", "BackOff", "Warning")),
                *want,
                "{rules}"
            );
        }
    }
}
