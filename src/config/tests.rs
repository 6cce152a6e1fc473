use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "NS" => Some("shop".into()),
        _ => None,
    }
}

fn load(text: &str) -> Result<Pipeline, ConfigError> {
    load_str(text, "p.yaml", &env)
}

fn problems(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => vec![],
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

const GOOD: &str = "\
version: 1
stages:
  src:
    type: file
    path: pipelines/samples/events.json
  warn:
    type: filter
    inputs: [src]
    types: [Warning]
    namespaces: ['${NS}']
  out:
    type: stdout
    inputs: warn
";

#[test]
fn a_scalar_is_a_one_item_list() {
    let p = load(GOOD).unwrap();
    assert_eq!(p.stages["out"].inputs, vec!["warn"]);
    assert!(load(&GOOD.replace("types: [Warning]", "types: Warning")).is_ok());
}

#[test]
fn a_good_file_loads() {
    let p = load(GOOD).unwrap();
    assert_eq!(p.stages.len(), 3);
    assert_eq!(p.stages["out"].inputs, vec!["warn"]);
    assert_eq!(
        p.stages["warn"].node.get("namespaces").unwrap().to_json(),
        serde_json::json!(["shop"])
    );
}

#[test]
fn every_error_is_reported_with_its_position() {
    let text = "\
version: 1
stages:
  src:
    type: file
    path: x.json
    folow: true
  warn:
    type: filter
    inputs: [src, nope]
    message: '(unclosed'
  agg:
    type: no_such_type
    inputs: [warn]
  out:
    type: stdout
    inputs: [warn]
  out2:
    type: stdout
    inputs: [out]
  f2:
    type: filter
    inputs: [src]
    names: ['[z-a]']
    types: {a: 1}
";
    let got = problems(text);
    let expect = [
        "p.yaml:6:5: stage `src`, field `folow`: unknown field `folow`",
        "p.yaml:10:14: stage `warn`, field `message`: invalid regular expression",
        "p.yaml:12:11: stage `agg`, field `type`: unknown stage type `no_such_type`",
        "p.yaml:23:13: stage `f2`, field `names[0]`: invalid glob",
        "p.yaml:24:12: stage `f2`, field `types`: ",
        "p.yaml:19:14: stage `out2`, field `inputs`: `out` is a sink",
    ];
    for e in expect {
        assert!(
            got.iter().any(|g| g.starts_with(e)),
            "missing {e:?} in:\n{}",
            got.join("\n")
        );
    }
}

#[test]
fn graph_errors() {
    let text = "\
stages:
  a:
    type: file
    path: x
    inputs: [b]
  b:
    type: filter
    inputs: [c]
  c:
    type: filter
    inputs: [b]
  d:
    type: filter
  e:
    type: stdout
    inputs: [c, c]
  f:
    type: filter
    inputs: [missing]
";
    let got = problems(text).join("\n");
    for needle in [
        "p.yaml:5:13: stage `a`, field `inputs`: `file` is a source",
        "p.yaml:12:3: stage `d`, field `inputs`: missing `inputs:`",
        "p.yaml:16:17: stage `e`, field `inputs`: `c` is listed twice",
        "p.yaml:19:14: stage `f`, field `inputs`: unknown input `missing`",
        "the stages form a cycle: b -> c -> b",
        "stage `f`: no stage reads this stage's output",
    ] {
        assert!(got.contains(needle), "missing {needle:?} in:\n{got}");
    }
}

#[test]
fn env_errors_name_the_variable_and_position() {
    let got = problems("stages:\n  a:\n    type: file\n    path: ${MISSING_PATH}\n");
    assert!(
        got.iter()
            .any(|g| g.starts_with("p.yaml:4:11: environment variable `MISSING_PATH` is not set")),
        "{got:?}"
    );
}

#[test]
fn header_errors() {
    let got = problems("version: 2\napi:\n  listen: nowhere\nstages: {}\n");
    assert!(
        got.iter()
            .any(|g| g.starts_with("p.yaml:3:11: field `api.listen`")),
        "{got:?}"
    );
    let got = problems("version: 2\nstages: {}\n");
    assert!(
        got.iter().any(|g| g.contains("unsupported version 2")),
        "{got:?}"
    );
    let got = problems("verison: 1\nstages: {}\n");
    assert!(
        got.iter()
            .any(|g| g.starts_with("p.yaml:1:1: field `verison`: unknown field")),
        "{got:?}"
    );
}

#[test]
fn bad_durations_and_ids() {
    let got = problems(
        "stages:\n  Bad_Id:\n    type: file\n    path: x\n  s:\n    type: file\n    path: x\n    poll_interval: 5\n",
    );
    assert!(
        got.iter()
            .any(|g| g.starts_with("p.yaml:2:3: stage `Bad_Id`: invalid stage id")),
        "{got:?}"
    );
    assert!(got.iter().any(|g| g.starts_with("p.yaml:8:20: stage `s`, field `poll_interval`: invalid duration `5`: a unit is required")), "{got:?}");
}

#[test]
fn syntax_errors_have_positions() {
    let got = problems("stages:\n  a: [1, 2\n");
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("p.yaml:"), "{got:?}");
    assert!(!got[0].starts_with("p.yaml: "), "no position in {got:?}");
}

#[test]
fn diff_by_stage() {
    let old = load(GOOD).unwrap();
    let new = load(&GOOD.replace("types: [Warning]", "types: [Normal]").replace("  out:\n    type: stdout\n    inputs: warn\n", "  out:\n    type: stdout\n    inputs: [warn]\n  out2:\n    type: stdout\n    inputs: [src]\n")).unwrap();
    let d = diff::Diff::between(&old, &new);
    assert_eq!(d.changed, vec!["warn", "out"]);
    assert_eq!(d.added, vec!["out2"]);
    assert_eq!(d.kept, vec!["src"]);
    assert!(d.removed.is_empty());
    assert!(diff::Diff::between(&old, &load(GOOD).unwrap()).is_empty());
}
