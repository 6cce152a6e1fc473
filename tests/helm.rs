//! The Helm chart (`deploy/helm/eventflow`) with the real helm: what it renders with its
//! defaults and with each values file of its `ci/` folder. The rendered pipeline validates
//! with the real binary, its RBAC grants what that pipeline's stages need and nothing more,
//! the defaults render what the kustomize base does, wrong values are refused, and the chart's
//! README lists every value. `.ci/check-deploy.sh` lints and validates the same renders against
//! the Kubernetes schemas. Without helm (`.ci/install-helm.sh` installs it) the tests say so
//! and skip.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::*;

const CHART: &str = "deploy/helm/eventflow";

fn helm_installed() -> bool {
    let ok = Command::new("helm").arg("version").output().is_ok();
    if !ok {
        eprintln!("SKIPPED: helm is not installed (`.ci/install-helm.sh` installs it)");
    }
    ok
}

/// `helm template` of the chart with `args` (values files, `--set`): the objects, or helm's
/// error text.
fn template(args: &[&str]) -> Result<Vec<Value>, String> {
    let out = Command::new("helm")
        .args(["template", "eventflow", CHART, "--namespace", "eventflow"])
        .args(args)
        .current_dir(repo(""))
        .output()
        .expect("helm");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split("\n---")
        .filter_map(|d| serde_saphyr::from_str::<Value>(d).ok())
        .filter(Value::is_object)
        .collect())
}

/// The kind of each volume of a pod (`configMap`, `emptyDir`, ...), in order.
fn volume_kinds(pod: &Value) -> Vec<String> {
    pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            v.as_object()
                .map(|o| {
                    o.keys()
                        .filter(|k| *k != "name")
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default()
        })
        .collect()
}

fn ci_values() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo(&format!("{CHART}/ci")))
        .expect("ci/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "{files:?}");
    files
}

fn of_kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

/// `(group, resource, verb)` of every rule of some roles.
fn grants<'a>(roles: impl IntoIterator<Item = &'a Value>) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for role in roles {
        for r in role["rules"].as_array().into_iter().flatten() {
            let strings = |k: &str| -> Vec<String> {
                r[k].as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            };
            for g in strings("apiGroups") {
                for res in strings("resources") {
                    for v in strings("verbs") {
                        out.insert((g.clone(), res.clone(), v));
                    }
                }
            }
        }
    }
    out
}

/// What a pipeline's stages need of the API: Events always (a source), the metadata an
/// `enrich` stage watches, Leases with leader election.
fn needed(pipeline: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    let stages = pipeline["stages"].as_object().expect("stages");
    for s in stages.values() {
        match s["type"].as_str() {
            Some("kube_events") => {
                for g in ["", "events.k8s.io"] {
                    for v in ["get", "list", "watch"] {
                        out.insert((g.into(), "events".into(), v.into()));
                    }
                }
            }
            Some("enrich") => {
                let cfg: eventflow::stages::enrich::EnrichConfig =
                    serde_json::from_value(Value::Object(
                        s.as_object()
                            .expect("stage")
                            .iter()
                            .filter(|(k, _)| *k != "type" && *k != "inputs")
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    ))
                    .expect("enrich config");
                for (kind, group, _, plural, _) in eventflow::stages::enrich::KINDS {
                    if *kind == "Namespace" || cfg.kinds.iter().any(|k| k == kind) {
                        for v in ["list", "watch"] {
                            out.insert(((*group).into(), (*plural).into(), v.into()));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The pipeline of the chart's ConfigMap, as a value.
fn pipeline_of(objs: &[Value]) -> Option<Value> {
    of_kind(objs, "ConfigMap")
        .into_iter()
        .find(|c| c["data"]["pipeline.yaml"].is_string())
        .map(|c| {
            serde_saphyr::from_str(c["data"]["pipeline.yaml"].as_str().unwrap_or_default())
                .expect("pipeline YAML")
        })
}

#[test]
fn every_ci_values_file_renders_a_pipeline_that_validates_and_rbac_that_fits_it() {
    if !helm_installed() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    for values in ci_values() {
        let name = values
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let objs = template(&["-f", values.to_str().unwrap_or_default()])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let Some(pipeline) = pipeline_of(&objs) else {
            // existingConfigMap: the user's pipeline, not rendered.
            assert!(name.contains("existing"), "{name}: no pipeline rendered");
            let d = of_kind(&objs, "Deployment")[0];
            assert_eq!(
                d["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"],
                "my-pipeline"
            );
            continue;
        };
        // The real binary validates it, with the environment the Deployment gives it.
        let file = write(
            dir.path(),
            &format!("{name}.yaml"),
            &serde_json::to_string(&pipeline).expect("json"),
        );
        let out = bin()
            .arg("validate")
            .arg(&file)
            .env("WEBHOOK_URL", "http://receiver.example/hook")
            .env("EVENTFLOW_STATE_URL", "postgres://u:p@db.example:5432/e")
            .output()
            .expect("validate");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // RBAC: exactly what the stages need (plus Leases for leader election).
        if of_kind(&objs, "ClusterRole").is_empty() {
            assert!(name.contains("rbac-off"), "{name}: no ClusterRole");
            continue;
        }
        assert_eq!(
            grants(of_kind(&objs, "ClusterRole")),
            needed(&pipeline),
            "{name}: the ClusterRole"
        );
        let leases: BTreeSet<(String, String, String)> = ["get", "list", "create", "update"]
            .iter()
            .map(|v| ("coordination.k8s.io".into(), "leases".into(), (*v).into()))
            .collect();
        let ha = pipeline.get("leader_election").is_some();
        assert_eq!(
            grants(of_kind(&objs, "Role")),
            if ha { leases } else { BTreeSet::new() },
            "{name}: the Role"
        );
        // Every binding names the service account the Deployment runs as.
        let d = of_kind(&objs, "Deployment")[0];
        let sa = &d["spec"]["template"]["spec"]["serviceAccountName"];
        for b in of_kind(&objs, "ClusterRoleBinding")
            .into_iter()
            .chain(of_kind(&objs, "RoleBinding"))
        {
            assert_eq!(&b["subjects"][0]["name"], sa, "{name}");
        }
    }
}

#[test]
fn several_replicas_elect_a_leader_on_shared_state_and_keep_one_available() {
    if !helm_installed() {
        return;
    }
    let objs = template(&["-f", &format!("{CHART}/ci/ha-postgres-values.yaml")]).expect("ha");
    let p = pipeline_of(&objs).expect("pipeline");
    assert_eq!(p["leader_election"]["lease"], "eventflow");
    assert_eq!(p["state"]["url"], "${EVENTFLOW_STATE_URL}");
    let d = of_kind(&objs, "Deployment")[0];
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let env = &d["spec"]["template"]["spec"]["containers"][0]["env"];
    let names: Vec<&str> = env
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        names.contains(&"POD_NAME") && names.contains(&"EVENTFLOW_STATE_URL"),
        "{names:?}"
    );
    assert_eq!(of_kind(&objs, "PodDisruptionBudget").len(), 1);
    let secret = of_kind(&objs, "Secret")
        .into_iter()
        .find(|s| s["metadata"]["name"] == "eventflow-state")
        .expect("the state Secret");
    assert!(
        secret["stringData"]["STATE_URL"]
            .as_str()
            .unwrap_or_default()
            .starts_with("postgres://")
    );
    // Local state with several replicas is refused, saying what to do.
    let e = template(&["--set", "replicaCount=3"]).unwrap_err();
    assert!(
        e.contains("replicaCount: 3 replicas need shared state: set externalDatabase.url"),
        "{e}"
    );
}

#[test]
fn wrong_values_are_refused_with_the_value_named() {
    if !helm_installed() {
        return;
    }
    for (set, says) in [
        (
            "replicaCount=0",
            "replicaCount: Must be greater than or equal to 1",
        ),
        (
            "image.pullPolicy=Sometimes",
            "image.pullPolicy must be one of the following",
        ),
        (
            "replicaCont=2",
            "Additional property replicaCont is not allowed",
        ),
        ("image.digest=abc", "image.digest: Does not match pattern"),
        (
            "shutdownTimeout=1m",
            "shutdownTimeout: Does not match pattern",
        ),
        (
            "externalDatabase.url=redis://x",
            "externalDatabase.url: Does not match pattern",
        ),
        (
            "enrich.enabled=true,enrich.kinds[0]=Widget",
            "enrich.kinds.0",
        ),
    ] {
        let e = template(&["--set", set]).unwrap_err();
        assert!(e.contains(says), "{set}: {e}");
    }
    let e = template(&["--set", "pipeline=nonsense"]).unwrap_err();
    assert!(e.contains("pipeline: not a YAML map"), "{e}");
    let e = template(&["--set", "pipeline.stage.k8s.type=kube_events"]).unwrap_err();
    assert!(e.contains("pipeline: it has no `stages:` map"), "{e}");
}

/// With the defaults, the chart renders the kustomize base's Deployment, RBAC and pipeline in
/// substance (names and labels differ). The base's metadata and Lease roles are the chart's
/// `enrich.enabled` and several replicas: compared with those switched on.
#[test]
fn the_defaults_render_what_the_kustomize_base_does() {
    if !helm_installed() {
        return;
    }
    let base = Command::new("kubectl")
        .args(["kustomize", "deploy/kubernetes"])
        .current_dir(repo(""))
        .output();
    let Ok(base) = base.map(|o| String::from_utf8_lossy(&o.stdout).to_string()) else {
        eprintln!("SKIPPED: kubectl is not installed");
        return;
    };
    let base: Vec<Value> = base
        .split("\n---")
        .filter_map(|d| serde_saphyr::from_str::<Value>(d).ok())
        .filter(Value::is_object)
        .collect();
    let chart = template(&[]).expect("defaults");
    // The pipeline.
    let base_pipeline: Value = serde_saphyr::from_str(
        of_kind(&base, "ConfigMap")[0]["data"]["pipeline.yaml"]
            .as_str()
            .unwrap_or_default(),
    )
    .expect("base pipeline");
    assert_eq!(pipeline_of(&chart).expect("chart pipeline"), base_pipeline);
    // The Deployment's pod, but for names and labels.
    let pod = |objs: &[Value]| of_kind(objs, "Deployment")[0]["spec"]["template"]["spec"].clone();
    let (b, c) = (pod(&base), pod(&chart));
    for k in ["securityContext", "terminationGracePeriodSeconds"] {
        assert_eq!(b[k], c[k], "{k}");
    }
    let (bc, cc) = (&b["containers"][0], &c["containers"][0]);
    for k in [
        "image",
        "args",
        "ports",
        "livenessProbe",
        "readinessProbe",
        "resources",
        "securityContext",
        "volumeMounts",
        "imagePullPolicy",
    ] {
        assert_eq!(bc[k], cc[k], "container {k}");
    }
    let env_names = |c: &Value| -> BTreeSet<String> {
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["name"].as_str().map(str::to_string))
            .collect()
    };
    let mut chart_env = env_names(cc);
    // The chart passes the pipeline's secrets as a whole Secret (envFrom).
    chart_env.insert("WEBHOOK_URL".into());
    let mut base_env = env_names(bc);
    base_env.remove("EVENTFLOW_API_TOKEN"); // optional there, `apiTokenSecret` in the chart
    assert_eq!(base_env, chart_env);
    assert_eq!(volume_kinds(&b), volume_kinds(&c));
    assert_eq!(b["volumes"][1]["emptyDir"], c["volumes"][1]["emptyDir"]);
    assert_eq!(
        of_kind(&base, "Deployment")[0]["spec"]["strategy"],
        of_kind(&chart, "Deployment")[0]["spec"]["strategy"]
    );
    // RBAC.
    assert_eq!(
        grants(
            of_kind(&base, "ClusterRole")
                .into_iter()
                .filter(|r| r["metadata"]["name"] == "eventflow-read-events")
        ),
        grants(of_kind(&chart, "ClusterRole"))
    );
    let full = template(&[
        "--set",
        "enrich.enabled=true,replicaCount=2,externalDatabase.url=postgres://u:p@db:5432/e",
    ])
    .expect("enrich + HA");
    assert_eq!(
        grants(of_kind(&base, "ClusterRole")),
        grants(of_kind(&full, "ClusterRole"))
    );
    assert_eq!(
        grants(of_kind(&base, "Role")),
        grants(of_kind(&full, "Role"))
    );
}

/// The files the chart carries (helm reads only files inside the chart) are the repository's:
/// the Grafana dashboard and the alerts.
#[test]
fn the_files_the_chart_carries_are_the_repositorys() {
    assert_eq!(
        std::fs::read_to_string(repo("deploy/grafana/eventflow.json")).expect("dashboard"),
        std::fs::read_to_string(repo("deploy/helm/eventflow/files/eventflow.json")).expect("copy"),
        "files/eventflow.json is a copy of deploy/grafana/eventflow.json"
    );
    let kustomize_rules: Value = serde_saphyr::from_str::<Value>(
        &std::fs::read_to_string(repo("deploy/kubernetes/monitoring/prometheusrule.yaml"))
            .expect("rules"),
    )
    .expect("yaml")["spec"]["groups"][0]["rules"]
        .clone();
    let chart_rules: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo("deploy/helm/eventflow/files/rules.yaml")).expect("rules"),
    )
    .expect("yaml");
    assert_eq!(
        kustomize_rules, chart_rules,
        "files/rules.yaml is the kustomize PrometheusRule's"
    );
}

#[test]
fn the_chart_is_the_crates_version_and_its_readme_lists_every_value() {
    let chart: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo(&format!("{CHART}/Chart.yaml"))).expect("Chart.yaml"),
    )
    .expect("yaml");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["kubeVersion"], ">=1.25.0-0");
    let values = std::fs::read_to_string(repo(&format!("{CHART}/values.yaml"))).expect("values");
    let readme = std::fs::read_to_string(repo(&format!("{CHART}/README.md"))).expect("README");
    let table = parameter_table(&values);
    assert!(
        readme.contains(&table),
        "the chart's README is not current: replace its parameters table with\n{table}"
    );
    // Every value has its @param line (leaves of the values, maps given whole with [object]).
    let tree: Value = serde_saphyr::from_str(&values).expect("values yaml");
    let documented: BTreeSet<String> = params(&values).into_iter().map(|(k, ..)| k).collect();
    let mut missing = Vec::new();
    leaves(&tree, "", &documented, &mut missing);
    assert!(
        missing.is_empty(),
        "values without a `## @param` line: {missing:?}"
    );
}

/// `(key, type, description)` of every `## @param` line.
fn params(values: &str) -> Vec<(String, String, String)> {
    values
        .lines()
        .filter_map(|l| l.trim().strip_prefix("## @param "))
        .map(|rest| {
            let (key, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let (ty, desc) = match rest.strip_prefix('[') {
                Some(r) => {
                    let (t, d) = r.split_once("] ").unwrap_or((r, ""));
                    (t.to_string(), d.to_string())
                }
                None => (String::new(), rest.to_string()),
            };
            (key.to_string(), ty, desc)
        })
        .collect()
}

fn leaves(v: &Value, prefix: &str, documented: &BTreeSet<String>, missing: &mut Vec<String>) {
    match v.as_object() {
        Some(map) if !map.is_empty() && !documented.contains(prefix) => {
            for (k, child) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(child, &key, documented, missing);
            }
        }
        _ => {
            if !documented.contains(prefix) {
                missing.push(prefix.to_string());
            }
        }
    }
}

/// The README's parameters table, made from the `## @param` lines and the values' defaults.
fn parameter_table(values: &str) -> String {
    let tree: Value = serde_saphyr::from_str(values).expect("values yaml");
    let mut out = String::from("| Name | Description | Default |\n|---|---|---|\n");
    for (key, _, desc) in params(values) {
        let mut v = &tree;
        for part in key.split('.') {
            v = &v[part];
        }
        let default = match v {
            Value::String(s) if s.is_empty() => "`\"\"`".to_string(),
            Value::String(s) => format!("`{s}`"),
            Value::Object(m) if m.len() > 3 => "see values.yaml".to_string(),
            other => format!("`{other}`"),
        };
        out.push_str(&format!(
            "| `{key}` | {} | {} |\n",
            desc.replace('|', "\\|"),
            default.replace('|', "\\|")
        ));
    }
    out
}

/// What `helm install` prints after installing (NOTES.txt), rendered with helm itself: how to
/// see the metrics and tap a stage, and a warning while the webhook URL is the placeholder.
/// (`helm install --dry-run` needs a cluster; the notes are rendered from a copy of the chart
/// in which they are a template like the others.)
#[test]
fn the_notes_say_how_to_see_the_metrics_and_tap_a_stage() {
    if !helm_installed() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let copy = dir.path().join("eventflow");
    let cp = Command::new("cp")
        .args(["-r"])
        .arg(repo(CHART))
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(cp.success());
    let notes = std::fs::read_to_string(copy.join("templates/NOTES.txt")).expect("NOTES.txt");
    std::fs::remove_file(copy.join("templates/NOTES.txt")).expect("rm");
    write(
        &copy.join("templates"),
        "_notes_test.tpl",
        &format!("{{{{- define \"notes.test\" -}}}}\n{notes}{{{{- end -}}}}\n"),
    );
    write(
        &copy.join("templates"),
        "notes.yaml",
        "kind: Notes\nnotes: |\n{{ include \"notes.test\" . | indent 2 }}\n",
    );
    let render = |set: &[&str]| {
        let out = Command::new("helm")
            .args(["template", "ev"])
            .arg(&copy)
            .args([
                "--namespace",
                "monitoring",
                "--show-only",
                "templates/notes.yaml",
            ])
            .args(set)
            .output()
            .expect("helm");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).expect("yaml");
        v["notes"].as_str().unwrap_or_default().to_string()
    };
    let text = render(&[]);
    for want in [
        "kubectl -n monitoring port-forward deploy/ev-eventflow 9464",
        "curl -s localhost:9464/metrics",
        "eventflow tap --stage k8s --api 127.0.0.1:9464",
        "secrets.WEBHOOK_URL is still the placeholder",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
    let text = render(&["--set", "secrets.WEBHOOK_URL=https://hooks.example/x"]);
    assert!(!text.contains("placeholder"), "{text}");
}
