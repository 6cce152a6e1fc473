//! Secrets stay secret: the tokens, passwords and header values of a pipeline appear in no log
//! line (text and JSON, info to trace), no error and no CLI output of runs whose database and
//! webhooks fail, nor in the dead-letter table's reasons or `eventflow dead-letter` output.

mod support;

use std::path::Path;

use support::*;

const SECRETS: [&str; 5] = [
    "s3cr3t-url-token",
    "s3cr3t-header-value",
    "s3cr3t-db-pass",
    "s3cr3t-db-query",
    "s3cr3t-sign",
];

fn assert_clean(what: &str, text: &str) {
    for s in SECRETS {
        assert!(
            !text.contains(s),
            "{what} shows `{s}`:\n{}",
            text.lines()
                .filter(|l| l.contains(s))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn output(cmd: &mut std::process::Command) -> (Option<i32>, String) {
    let out = cmd.output().expect("run");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn webhooks_pipeline(dir: &Path, refusing: &str) -> std::path::PathBuf {
    write(
        dir,
        "hooks.yaml",
        &format!(
            "state:\n  url: sqlite://{state}\nstages:\n  f:\n    type: file\n    path: {events}\n  refused:\n    type: webhook\n    inputs: [f]\n    url: {refusing}?access_token=s3cr3t-url-token&x=1\n    headers: {{Authorization: 'Bearer s3cr3t-header-value'}}\n    durable: true\n    batch: {{max_events: 50, max_wait: 1ms}}\n  down:\n    type: webhook\n    inputs: [f]\n    url: http://u:s3cr3t-db-pass@127.0.0.1:1/hook?access_token=s3cr3t-url-token\n    format: dingtalk\n    secret: s3cr3t-sign\n    retries: 1\n    backoff: {{initial: 1ms, max: 2ms}}\n    batch: {{max_events: 50, max_wait: 1ms}}\n  bad_template:\n    type: webhook\n    inputs: [f]\n    url: {refusing}?access_token=s3cr3t-url-token\n    format: template\n    template: '{{\"a\": \"{{{{ message }}}}\"{{% if event.count < 3 %}} oops{{% endif %}}, \"k\": \"s3cr3t-header-value\"}}'\n    batch: {{max_events: 1, max_wait: 1ms}}\n",
            state = dir.join("state.db").display(),
            events = repo("pipelines/samples/events.json").display(),
        ),
    )
}

#[test]
fn no_secret_in_any_log_error_or_output() {
    let dir = tempfile::tempdir().expect("tmp");
    let (r, refusing) = Receiver::start();
    let _ = r.refusing(400);
    let hooks = webhooks_pipeline(dir.path(), &refusing);
    let db = write(
        dir.path(),
        "db.yaml",
        &format!(
            "stages:\n  f:\n    type: file\n    path: {}\n  db:\n    type: sql\n    inputs: [f]\n    url: postgres://eventflow:s3cr3t-db-pass@127.0.0.1:1/db?password=s3cr3t-db-query\n    connect_timeout: 1s\n",
            repo("pipelines/samples/events.json").display()
        ),
    );
    for format in ["text", "json"] {
        for level in ["info", "debug", "trace"] {
            let (code, text) = output(
                bin()
                    .args(["--log-format", format, "--log-level", level])
                    .args(["run", "--no-watch"])
                    .arg(&hooks),
            );
            // The run ends, its failed deliveries counted: exit 3.
            assert_eq!(code, Some(3), "{format}/{level}: {text}");
            assert!(
                text.contains("refused") || text.contains("400"),
                "the run did fail deliveries"
            );
            assert_clean(
                &format!("run with failing webhooks ({format}, {level})"),
                &text,
            );
            let (code, text) = output(
                bin()
                    .args(["--log-format", format, "--log-level", level])
                    .args(["run", "--no-watch"])
                    .arg(&db),
            );
            assert_eq!(code, Some(1), "{format}/{level}: {text}");
            assert!(
                text.contains("127.0.0.1:1"),
                "the error names the server: {text}"
            );
            assert_clean(
                &format!("run with a failing database ({format}, {level})"),
                &text,
            );
        }
    }

    // The dead letters, as stored and as the CLI shows them.
    let (code, list) = output(bin().args(["dead-letter", "list"]).arg(&hooks));
    assert_eq!(code, Some(0), "{list}");
    assert!(list.contains("400"), "{list}");
    assert_clean("dead-letter list", &list);
    let id = list
        .lines()
        .find_map(|l| l.split_whitespace().next()?.parse::<i64>().ok())
        .expect("a dead letter id");
    let (_, show) = output(
        bin()
            .args(["dead-letter", "show"])
            .arg(&hooks)
            .arg(id.to_string()),
    );
    assert!(show.contains("400"), "{show}");
    assert_clean("dead-letter show", &show);
    let (_, resend) = output(bin().args(["dead-letter", "resend"]).arg(&hooks));
    assert_clean("dead-letter resend", &resend);
    let stored = std::fs::read(dir.path().join("state.db")).expect("state db");
    assert_clean("the state database", &String::from_utf8_lossy(&stored));

    // Errors about bad values.
    let bad = write(
        dir.path(),
        "bad.yaml",
        "stages:\n  f:\n    type: file\n    path: /dev/null\n  w:\n    type: webhook\n    inputs: [f]\n    url: ftp://u:s3cr3t-db-pass@h/x?access_token=s3cr3t-url-token\n    headers: {'X-Token': \"s3cr3t-header-value\\u0001\"}\n  db:\n    type: sql\n    inputs: [f]\n    url: redis://u:s3cr3t-db-pass@h/?password=s3cr3t-db-query\n",
    );
    let (code, text) = output(bin().arg("validate").arg(&bad));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("field `url`") && text.contains("field `headers.X-Token`"),
        "{text}"
    );
    assert_clean("validate", &text);
    let (_, text) = output(bin().arg("run").arg(&bad));
    assert_clean("run of an invalid file", &text);
}

#[test]
fn a_kubeconfig_that_cannot_be_read_is_named_not_printed() {
    let dir = tempfile::tempdir().expect("tmp");
    let kc = write(
        dir.path(),
        "kubeconfig",
        "apiVersion: v1\nclusters: s3cr3t-header-value\nusers:\n- name: u\n  user:\n    token: s3cr3t-url-token\n",
    );
    let p = write(
        dir.path(),
        "p.yaml",
        &format!(
            "stages:\n  k:\n    type: kube_events\n    kubeconfig: {}\n  out:\n    type: stdout\n    inputs: [k]\n",
            kc.display()
        ),
    );
    let (code, text) = output(bin().arg("run").arg(&p));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&kc.display().to_string()),
        "names the file: {text}"
    );
    assert_clean("a bad kubeconfig", &text);
}

/// Chat webhooks that carry their key in the path (Slack, Discord, Feishu) show it as `***`
/// wherever the URL is shown — here a delivery that cannot connect logs the URL, and `explain`
/// prints the request — while a kubeconfig's path, which is not a secret, is shown.
#[test]
fn chat_keys_in_the_path_are_hidden_and_paths_are_not() {
    let dir = tempfile::tempdir().expect("tmp");
    let events = write(dir.path(), "one.jsonl", &(sample_line(1, "Warning") + "\n"));
    let p = write(
        dir.path(),
        "p.yaml",
        &format!(
            "stages:\n  f:\n    type: file\n    path: {}\n  slack:\n    type: webhook\n    inputs: [f]\n    url: https://hooks.slack.com/services/T0/B0/s3cr3t-url-token\n    format: slack\n    retries: 0\n    timeout: 1s\n  discord:\n    type: webhook\n    inputs: [f]\n    url: https://discord.com/api/webhooks/1/s3cr3t-header-value\n    retries: 0\n    timeout: 1s\n",
            events.display()
        ),
    );
    let (_, explained) = output(bin().arg("explain").arg(&p).arg(&events));
    assert!(
        explained.contains("https://hooks.slack.com/services/T0/B0/***"),
        "{explained}"
    );
    assert_clean("explain", &explained);
    let (_, text) = output(
        bin()
            .args(["--log-level", "debug", "run", "--no-watch"])
            .arg(&p),
    );
    assert_clean("a run whose chat webhooks fail", &text);

    let missing = dir.path().join("no-such-kubeconfig");
    let k = write(
        dir.path(),
        "k.yaml",
        &format!(
            "stages:\n  k:\n    type: kube_events\n    kubeconfig: {}\n  out:\n    type: stdout\n    inputs: [k]\n",
            missing.display()
        ),
    );
    let (code, text) = output(bin().arg("run").arg(&k));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "failed to read kubeconfig from '\"{}\"'",
            missing.display()
        )),
        "the path, not `***`: {text}"
    );
}
