//! A real `nats-server -js` for the tests (Debian's `nats-server`, installed by
//! `.ci/services.sh`): started on a free port with a store in a temporary directory, killed
//! when dropped; helpers make a stream the way an operator would and read back what it holds.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::Value;

const BINARY: &str = "/usr/sbin/nats-server";

/// A running `nats-server -js`; killed when dropped.
pub struct Nats {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn installed() -> bool {
    if std::path::Path::new(BINARY).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{BINARY} is missing: .ci/services.sh installs it"
    );
    eprintln!("SKIPPED: {BINARY} is not installed (bash .ci/services.sh installs it)");
    false
}

impl Nats {
    pub fn start() -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("nats")
            .local_addr()
            .expect("nats")
            .port();
        Self::start_on(port, tempfile::tempdir().expect("nats"))
    }

    pub fn start_on(port: u16, dir: tempfile::TempDir) -> Nats {
        let child = Command::new(BINARY)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats");
        super::wait_until("nats-server listens", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Nats { child, port, dir }
    }

    /// Stops the server (SIGKILL), and returns what a restart needs: its port and store.
    pub fn stop(mut self) -> (u16, tempfile::TempDir) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("nats"));
        (self.port, dir)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn js(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(self.url()).await.expect("nats"))
    }

    /// The stream `EVENTS` capturing `subjects`, with a two-minute duplicate window.
    pub async fn stream(&self, subjects: &[&str]) {
        self.js()
            .await
            .create_stream(jetstream::stream::Config {
                name: "EVENTS".into(),
                subjects: subjects.iter().map(|s| (*s).to_string()).collect(),
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .expect("nats");
    }

    /// Every message in `EVENTS`: (subject, Nats-Msg-Id, payload).
    pub async fn messages(&self) -> Vec<(String, String, Value)> {
        let js = self.js().await;
        let stream = js.get_stream("EVENTS").await.expect("nats");
        let n = stream.cached_info().state.messages;
        if n == 0 {
            return Vec::new();
        }
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                ack_policy: jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .expect("nats");
        let mut batch = consumer
            .fetch()
            .max_messages(usize::try_from(n).expect("nats"))
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .expect("nats");
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            let m = m.expect("nats");
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(ToString::to_string)
                .unwrap_or_default();
            out.push((
                m.subject.to_string(),
                id,
                serde_json::from_slice(&m.payload).expect("nats"),
            ));
        }
        out
    }

    pub async fn count(&self) -> u64 {
        let js = self.js().await;
        let mut s = js.get_stream("EVENTS").await.expect("nats");
        s.info().await.expect("nats").state.messages
    }
}
