//! The webhook's chat formats against receivers that implement each service's documented
//! request contract strictly (`tests/support/chat_receiver.py`: Teams Workflows with the card
//! validated against the Adaptive Card 1.4 JSON schema, Google Chat, Discord, Telegram,
//! Mattermost): hostile values arrive intact as the reader sees them, and over-long messages
//! are cut within each service's limits without breaking a character, an escape or a tag.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;

struct Chats {
    child: Child,
    port: u16,
    requests: Arc<Mutex<Vec<Value>>>,
}

impl Chats {
    fn start(test: &str) -> Option<Chats> {
        let Ok(python) = std::env::var("EVENTFLOW_TEST_OTLP_PYTHON") else {
            eprintln!(
                "{test}: SKIPPED — no Python with jsonschema: set EVENTFLOW_TEST_OTLP_PYTHON (.ci/services.sh makes one)"
            );
            return None;
        };
        let mut child = Command::new(python)
            .arg(support::repo("tests/support/chat_receiver.py"))
            .arg(support::repo(
                "tests/data/adaptive-cards/adaptive-card-1.4.json",
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = support::lines_of(child.stdout.take().unwrap());
        let first: Value =
            serde_json::from_str(&lines.recv_timeout(Duration::from_secs(30)).unwrap()).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let r = requests.clone();
        std::thread::spawn(move || {
            for line in lines {
                if let Ok(v) = serde_json::from_str(&line) {
                    r.lock().unwrap_or_else(PoisonError::into_inner).push(v);
                }
            }
        });
        Some(Chats {
            child,
            port: u16::try_from(first["port"].as_u64().unwrap()).unwrap(),
            requests,
        })
    }

    fn requests(&self) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Chats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The formats and where each posts on the receiver.
const FORMATS: [(&str, &str, &str); 5] = [
    ("teams_workflow", "/teams-workflow", ""),
    ("google_chat", "/google-chat", ""),
    ("discord", "/discord", ""),
    (
        "telegram",
        "/bot123:ABC/sendMessage",
        "    chat_id: '-1001234567890'\n",
    ),
    ("mattermost", "/mattermost", ""),
];

/// A pipeline: the events file to each format's stage.
fn pipeline(dir: &std::path::Path, events: &std::path::Path, port: u16) -> std::path::PathBuf {
    let mut text = format!(
        "stages:\n  src:\n    type: file\n    path: {}\n    follow: true\n    poll_interval: 20ms\n    cluster: prod\n",
        events.display()
    );
    for (format, path, extra) in FORMATS {
        text.push_str(&format!(
            "  {format}:\n    type: webhook\n    inputs: [src]\n    url: http://127.0.0.1:{port}{path}\n    format: {format}\n    retries: 0\n{extra}"
        ));
    }
    support::write(dir, "p.yaml", &text)
}

fn line(i: usize, message: &str) -> String {
    let mut v: Value = serde_json::from_str(&support::sample_line(i, "Warning")).unwrap();
    v["message"] = Value::String(message.to_string());
    v.to_string()
}

/// Values that break naive formatting: quotes and backslashes (JSON), markup of every kind,
/// HTML entities and tags, template syntax, newlines and tabs, emoji and CJK.
const HOSTILE: [&str; 6] = [
    "quote \" and \\ backslash",
    "line\nbreak\ttab",
    "emoji 🚀 and 中文",
    "</script><script>alert(1)</script> & &amp; <b>",
    "{{ event.reason }} {% if x %} ${HOME}",
    "*bold* _it_ ~s~ `code` | > # [x](y) @everyone",
];

#[test]
fn hostile_values_arrive_intact_in_every_chat_format() {
    let Some(chats) = Chats::start("hostile_values_arrive_intact_in_every_chat_format") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let events = support::write(dir.path(), "events.jsonl", "");
    let p = pipeline(dir.path(), &events, chats.port);
    let r = support::Running::start(&[], &p);
    let lines: Vec<String> = HOSTILE
        .iter()
        .enumerate()
        .map(|(i, m)| line(i, m))
        .collect();
    support::append(&events, &lines);
    let want = HOSTILE.len() * FORMATS.len();
    support::wait_until(
        "every format posted every event",
        Duration::from_secs(30),
        || chats.requests().len() == want,
    );
    drop(r.stop_ok());
    let requests = chats.requests();
    let refused: Vec<&Value> = requests.iter().filter(|r| r["status"] == 400).collect();
    assert!(
        refused.is_empty(),
        "refused by the services' contracts: {refused:#?}"
    );
    for (format, path, _) in FORMATS {
        let seen: Vec<&str> = requests
            .iter()
            .filter(|r| r["path"] == path)
            .filter_map(|r| r["visible"].as_str())
            .collect();
        for m in HOSTILE {
            assert!(
                seen.iter().any(|v| v.contains(m)),
                "{format}: {m:?} not seen intact in {seen:#?}"
            );
        }
    }
    // Discord: no mention is resolved (`@everyone` is text).
    let discord = requests.iter().find(|r| r["path"] == "/discord").unwrap();
    assert_eq!(
        discord["body"]["allowed_mentions"]["parse"],
        Value::Array(vec![])
    );
    // Google Chat: repeats of one problem share a thread.
    let keys: Vec<&Value> = requests
        .iter()
        .filter(|r| r["path"] == "/google-chat")
        .map(|r| &r["body"]["thread"]["threadKey"])
        .collect();
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    assert_eq!(keys[0], "prod/shop/Pod/web/BackOff");
}

#[test]
fn over_long_messages_are_cut_within_each_services_limits() {
    let Some(chats) = Chats::start("over_long_messages_are_cut_within_each_services_limits") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let events = support::write(dir.path(), "events.jsonl", "");
    let p = pipeline(dir.path(), &events, chats.port);
    let r = support::Running::start(&[], &p);
    // 60,000 characters: multi-byte ones, and characters every markup escapes, everywhere.
    let unit = "é<&>🚀*\\_";
    let huge = unit.repeat(60_000 / unit.chars().count());
    support::append(&events, &[line(1, &huge)]);
    support::wait_until("every format posted", Duration::from_secs(30), || {
        chats.requests().len() == FORMATS.len()
    });
    drop(r.stop_ok());
    for req in chats.requests() {
        assert_ne!(req["status"], 400, "refused: {}", req["refused"]);
        let visible = req["visible"].as_str().unwrap();
        assert!(visible.contains('…'), "{}: not cut", req["path"]);
        // What is left of the message is a prefix of it, in whole characters.
        let start = visible.find("é<&>").unwrap();
        let kept = &visible[start..visible.find('…').unwrap()];
        assert!(huge.starts_with(kept), "{}: {kept:?}", req["path"]);
    }
}

#[test]
fn telegram_needs_a_chat_id() {
    let dir = tempfile::tempdir().unwrap();
    let p = support::write(
        dir.path(),
        "p.yaml",
        "stages:\n  src: {type: file, path: x.jsonl}\n  tg: {type: webhook, inputs: [src], url: 'https://api.telegram.org/botX/sendMessage', format: telegram}\n",
    );
    let out = support::bin().args(["validate"]).arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("chat_id") && err.contains("telegram"), "{err}");
}
