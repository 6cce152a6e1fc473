//! The OTLP receiver of the tests: `otlp_receiver.py`, built from the official Python packages
//! (`opentelemetry-proto`, `grpcio`, `grpcio-status`), an independent decoder of the wire
//! format over gRPC and HTTP/protobuf. CI installs them in a virtual environment
//! (`.ci/services.sh`) and points `EVENTFLOW_TEST_OTLP_PYTHON` at its interpreter
//! (`.ci/test-env.sh`); elsewhere a test without it says on stderr that it skipped.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;

pub struct Receiver {
    child: Child,
    pub grpc: u16,
    pub http: u16,
    requests: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    /// Starts a receiver giving `answers` to its first requests (see the script), or `None`
    /// (said on stderr) when no interpreter with the packages is configured.
    pub fn start(test: &str, answers: &[&str]) -> Option<Receiver> {
        Self::start_with(test, &[], answers)
    }

    /// [`Receiver::start`] serving gRPC over TLS with `cert` (a chain) and `key`.
    pub fn start_tls(
        test: &str,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Option<Receiver> {
        let (c, k) = (cert.display().to_string(), key.display().to_string());
        Self::start_with(test, &["--tls", &c, &k], &[])
    }

    fn start_with(test: &str, options: &[&str], answers: &[&str]) -> Option<Receiver> {
        let Ok(python) = std::env::var("EVENTFLOW_TEST_OTLP_PYTHON") else {
            eprintln!(
                "{test}: SKIPPED — no OTLP receiver: set EVENTFLOW_TEST_OTLP_PYTHON to a Python with opentelemetry-proto, grpcio and grpcio-status (.ci/services.sh makes one)"
            );
            return None;
        };
        let mut child = Command::new(python)
            .arg(super::repo("tests/support/otlp_receiver.py"))
            .args(options)
            .args(answers)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the OTLP receiver starts");
        let lines = super::lines_of(child.stdout.take().expect("stdout"));
        let first = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the OTLP receiver prints its ports");
        let ports: Value = serde_json::from_str(&first).expect("ports as JSON");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let r = requests.clone();
        std::thread::spawn(move || {
            for line in lines {
                if let Ok(v) = serde_json::from_str(&line) {
                    r.lock().unwrap_or_else(PoisonError::into_inner).push(v);
                }
            }
        });
        Some(Receiver {
            child,
            grpc: ports["grpc"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .expect("grpc port"),
            http: ports["http"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .expect("http port"),
            requests,
        })
    }

    /// Every request so far, as the script reported it.
    pub fn requests(&self) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The requests once `n` have been reported and no more came for a moment. The script
    /// reports a request before it answers, but over a pipe: what the answer caused
    /// (a metric, a log line, an exit) can be seen before the report is.
    pub fn requests_settled(&self, n: usize) -> Vec<Value> {
        super::wait_until("the receiver's reports", Duration::from_secs(10), || {
            self.requests().len() >= n
        });
        std::thread::sleep(Duration::from_millis(300));
        self.requests()
    }

    /// The log records of the requests it accepted, each with its resource's attributes
    /// (`{"resource": {key: value}, "record": <OTLP JSON>}`).
    pub fn accepted_records(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for r in self.requests() {
            if !(r["answer"] == "ok"
                || r["answer"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("partial")))
            {
                continue;
            }
            for rl in r["request"]["resourceLogs"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let resource = attrs(&rl["resource"]["attributes"]);
                for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
                    for lr in sl["logRecords"].as_array().into_iter().flatten() {
                        out.push(serde_json::json!({"resource": resource, "record": lr, "scope": sl["scope"]}));
                    }
                }
            }
        }
        out
    }
}

/// OTLP JSON attributes as `{key: value}` (strings as strings, ints as their decimal text).
pub fn attrs(list: &Value) -> Value {
    let mut m = serde_json::Map::new();
    for kv in list.as_array().into_iter().flatten() {
        let v = &kv["value"];
        let value = v
            .get("stringValue")
            .or_else(|| v.get("intValue"))
            .cloned()
            .unwrap_or(Value::Null);
        m.insert(kv["key"].as_str().unwrap_or_default().to_string(), value);
    }
    Value::Object(m)
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
