//! Helpers for tests that drive the real `eventflow` binary.
#![allow(dead_code)]

pub mod elasticsearch;
pub mod loki;
pub mod nats;
pub mod oncall;
pub mod otlp;
pub mod receiver;
#[allow(unused_imports)]
pub use receiver::{Got, Receiver};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_eventflow"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG");
    c
}

/// [`bin`] with the wall clock moved by `shift` (faketime's syntax: `+365d`), for the guard
/// that nothing depends on the date it runs; `None`, said on stderr, where faketime is not
/// installed (`.ci/services.sh` installs it, so CI always runs these).
pub fn bin_at(shift: &str) -> Option<Command> {
    if Command::new("faketime").arg("--version").output().is_err() {
        eprintln!("SKIPPED: faketime is not installed (`.ci/services.sh` installs it)");
        return None;
    }
    let mut c = Command::new("faketime");
    // The calendar moves; the monotonic clock does not (timers and timeouts stay true).
    c.env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .args(["-f", shift, env!("CARGO_BIN_EXE_eventflow")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG");
    Some(c)
}

pub fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// Replaces a file the way editors do: write a temporary file, rename it over the old one.
pub fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-edit");
    std::fs::write(&tmp, text).expect("write tmp");
    std::fs::rename(&tmp, path).expect("rename");
}

pub fn sample_line(i: usize, ty: &str) -> String {
    sample_line_ns(i, ty, "shop")
}

/// The time every [`sample_line`] of this test process is stamped with: a minute before the
/// process started, to the second. Relative to now, never a fixed date: a strict receiver with an
/// age limit (Loki refuses entries older than a week) turns a fixed date into a failure later on.
/// One value per process, so the same `i` always gives the same line.
pub fn sample_time() -> &'static str {
    static AT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    AT.get_or_init(|| {
        (chrono::Utc::now() - chrono::Duration::minutes(1))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    })
}

pub fn sample_line_ns(i: usize, ty: &str, ns: &str) -> String {
    let at = sample_time();
    serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("web.{i:016x}"), "namespace": ns, "uid": format!("uid-{i}"),
                     "resourceVersion": (1000 + i).to_string(), "creationTimestamp": at},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": "web"},
        "reason": "BackOff", "message": format!("Back-off restarting failed container, round {i}"),
        "source": {"component": "kubelet", "host": "worker-1"},
        "firstTimestamp": at, "lastTimestamp": at,
        "count": 1, "type": ty
    })
    .to_string()
}

pub fn lines_of(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A test that fails does not leave its processes behind.
impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A reader that reads nothing until its gate's sender is dropped.
struct Gated<R>(Option<mpsc::Receiver<()>>, R);

impl<R: std::io::Read> std::io::Read for Gated<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(gate) = self.0.take() {
            let _ = gate.recv();
        }
        self.1.read(buf)
    }
}

/// A running `eventflow run` with its stdout and stderr read line by line.
pub struct Running {
    pub child: Child,
    pub out: mpsc::Receiver<String>,
    pub logs: mpsc::Receiver<String>,
    pub seen_logs: Vec<String>,
    /// How many of `seen_logs` a [`Running::wait_log`] has passed over already.
    waited: usize,
    /// With [`Running::start_unread`]: stdout is read once this is dropped.
    hold: Option<mpsc::Sender<()>>,
}

impl Running {
    pub fn start(args: &[&str], pipeline: &Path) -> Running {
        Running::start_cmd(bin(), args, pipeline)
    }

    /// [`Running::start`], but nothing reads stdout until [`Running::stop`]: the pipeline's
    /// output backs up, so events are still inside it when the test acts.
    pub fn start_unread(args: &[&str], pipeline: &Path) -> Running {
        let (hold, gate) = mpsc::channel::<()>();
        let mut r = Running::spawn(bin(), args, pipeline, Some(gate));
        r.hold = Some(hold);
        r
    }

    /// [`Running::start`] with a command prepared by the caller (working directory, env).
    pub fn start_cmd(cmd: Command, args: &[&str], pipeline: &Path) -> Running {
        Running::spawn(cmd, args, pipeline, None)
    }

    fn spawn(
        mut cmd: Command,
        args: &[&str],
        pipeline: &Path,
        gate: Option<mpsc::Receiver<()>>,
    ) -> Running {
        let mut child = cmd
            .arg("--log-format=json")
            .arg("run")
            .args(args)
            .arg(pipeline)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn eventflow");
        let stdout = child.stdout.take().expect("stdout");
        let out = match gate {
            None => lines_of(stdout),
            Some(gate) => lines_of(Gated(Some(gate), stdout)),
        };
        let logs = lines_of(child.stderr.take().expect("stderr"));
        let mut r = Running {
            child,
            out,
            logs,
            seen_logs: Vec::new(),
            waited: 0,
            hold: None,
        };
        r.wait_log("pipeline started");
        // Lines logged before the pipeline started (a source's first words) stay for the test.
        r.waited = 0;
        r
    }

    /// Waits for a log line containing `needle` that comes after the line the last wait
    /// returned (start-up lines included), returns it.
    pub fn wait_log(&mut self, needle: &str) -> String {
        if let Some(i) = self.seen_logs[self.waited..]
            .iter()
            .position(|l| l.contains(needle))
        {
            self.waited += i + 1;
            return self.seen_logs[self.waited - 1].clone();
        }
        self.waited = self.seen_logs.len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(l) = self.logs.recv_timeout(Duration::from_millis(50)) {
                self.seen_logs.push(l.clone());
                self.waited = self.seen_logs.len();
                if l.contains(needle) {
                    return l;
                }
            }
        }
        panic!(
            "no log line with {needle:?}; saw:\n{}",
            self.seen_logs.join("\n")
        );
    }

    /// A log line containing `needle` seen already (during start-up, say), or the next one.
    pub fn seen_or_wait_log(&mut self, needle: &str) -> String {
        match self.seen_logs.iter().find(|l| l.contains(needle)) {
            Some(l) => l.clone(),
            None => self.wait_log(needle),
        }
    }

    /// The port of the API endpoint (from its start-up log line).
    pub fn api_port(&mut self) -> u16 {
        let l = self
            .seen_logs
            .iter()
            .find(|l| l.contains("API endpoint"))
            .cloned()
            .unwrap_or_else(|| self.wait_log("API endpoint"));
        let v: serde_json::Value = serde_json::from_str(&l).expect("json log");
        let listen = v["fields"]["listen"]
            .as_str()
            .expect("listen field")
            .to_string();
        listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    /// The next stdout line as JSON.
    pub fn next_event(&mut self) -> serde_json::Value {
        let l = self
            .out
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no output line; logs:\n{}", self.seen_logs.join("\n")));
        serde_json::from_str(&l).expect("stdout line is JSON")
    }

    /// Asserts that no stdout line arrives within `d`.
    pub fn no_event_within(&mut self, d: Duration) {
        if let Ok(l) = self.out.recv_timeout(d) {
            panic!("unexpected output: {l}");
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// SIGTERM, then the exit status and every remaining stdout line.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<String>) {
        self.signal("-TERM");
        self.hold = None;
        let status = self.child.wait().expect("wait");
        let rest: Vec<String> = self.out.iter().collect();
        (status, rest)
    }

    /// [`Running::stop`], asserting the run ended well (exit 0; a failure shows the logs):
    /// every remaining stdout line, and every log line.
    pub fn stop_ok(mut self) -> (Vec<String>, Vec<String>) {
        self.signal("-TERM");
        self.hold = None;
        let rest: Vec<String> = self.out.iter().collect();
        let status = self.child.wait().expect("wait");
        self.seen_logs.extend(self.logs.iter());
        assert!(
            status.success(),
            "eventflow ended with {status}; logs:\n{}",
            self.seen_logs.join("\n")
        );
        (rest, std::mem::take(&mut self.seen_logs))
    }
}

pub fn append(path: &Path, lines: &[String]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    for l in lines {
        writeln!(f, "{l}").expect("append");
    }
    f.flush().expect("flush");
}

/// One HTTP request to `127.0.0.1:port`: (status, body). Status 0 when nothing answers.
/// The value of the first sample of `/metrics` on `port` that starts with `name_and_labels`
/// (0 when there is none).
pub fn metric(port: u16, name_and_labels: &str) -> f64 {
    let (_, body) = http(port, "GET", "/metrics");
    body.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

pub fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    http_with(port, method, path, &[])
}

/// [`http`] with extra request headers. (On a thread of its own: the blocking client may not
/// run inside an async test's runtime.)
pub fn http_with(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client");
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
            let mut req = client.request(method, format!("http://127.0.0.1:{port}{path}"));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            match req.send() {
                Ok(resp) => (resp.status().as_u16(), resp.text().unwrap_or_default()),
                Err(_) => (0, String::new()),
            }
        })
        .join()
        .unwrap_or_default()
    })
}

/// A receiver on a free port that refuses the first `failures` requests with a 500; its URL.
pub fn receiver(failures: usize) -> String {
    let (r, url) = receiver::Receiver::start();
    let _ = r.failing_first(failures, 500);
    url
}

/// The seed's table, as its GORM model creates it on each backend.
pub fn seed_ddl(backend: &str, table: &str) -> Vec<String> {
    let (id, ts, boolean) = match backend {
        "postgres" => ("id BIGSERIAL PRIMARY KEY", "TIMESTAMPTZ", "BOOLEAN"),
        "mysql" => (
            "id BIGINT AUTO_INCREMENT PRIMARY KEY",
            "DATETIME(3)",
            "TINYINT(1)",
        ),
        _ => (
            "id INTEGER PRIMARY KEY AUTOINCREMENT",
            "DATETIME",
            "NUMERIC",
        ),
    };
    vec![
        format!(
            "CREATE TABLE {table} ({id}, evt_key VARCHAR(255) NOT NULL, cluster VARCHAR(255), namespace VARCHAR(255), name VARCHAR(255), type VARCHAR(50), reason VARCHAR(255), level VARCHAR(50), message TEXT, timestamp {ts}, processed {boolean} NOT NULL DEFAULT FALSE, attempts INTEGER NOT NULL DEFAULT 0, created_at {ts}, updated_at {ts})"
        ),
        format!("CREATE UNIQUE INDEX idx_seed_{table}_evt_key ON {table} (evt_key)"),
        format!(
            "INSERT INTO {table} (evt_key, cluster, namespace, name, type, reason, level, message, processed, attempts) VALUES ('seed-1', 'c', 'default', 'a', 'Warning', 'FailedMount', 'warning', 'from the seed', TRUE, 2), ('seed-2', 'c', 'default', 'b', 'Normal', 'Pulled', 'info', 'also seed', FALSE, 0)"
        ),
    ]
}

/// Waits (polling) until `cond` holds; fails the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_until`] for async tests: sleeps on the runtime between checks.
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The rows of `sql` in a `SQLite` file (empty if it cannot be read). Runs on a thread of its
/// own, so async tests can call it too.
pub fn sqlite_rows<T>(db: &Path, sql: &'static str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let Ok(pool) =
                    sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await
                else {
                    return Vec::new();
                };
                let rows = sqlx::query_as(sql)
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_default();
                pool.close().await;
                rows
            })
        })
        .join()
        .unwrap_or_default()
    })
}

/// The first column of `sql`'s rows in a `SQLite` file, as text.
pub fn sqlite_column(db: &Path, sql: &'static str) -> std::collections::BTreeSet<String> {
    sqlite_rows::<(String,)>(db, sql)
        .into_iter()
        .map(|(u,)| u)
        .collect()
}

/// A fake API server with a kubeconfig for it in `dir`, and the runtime that serves it.
pub fn fake_cluster(
    dir: &Path,
) -> (
    tokio::runtime::Runtime,
    fake_apiserver::FakeApiServer,
    PathBuf,
) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let fake = rt
        .block_on(fake_apiserver::FakeApiServer::start())
        .expect("fake API server");
    let kc = dir.join("kubeconfig");
    fake.write_kubeconfig(&kc, None).expect("kubeconfig");
    (rt, fake, kc)
}

/// Creates an Event in the fake API server; returns its uid.
pub fn create_event(
    fake: &fake_apiserver::FakeApiServer,
    ns: &str,
    name: &str,
    reason: &str,
    ty: &str,
) -> String {
    fake.create(ns, fake_apiserver::sample_event(ns, name, reason, ty, "m"))
        .expect("create")["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`, ...) of `pid`, or of this process;
/// `None` when it cannot be read.
pub fn proc_status_kb(pid: Option<u32>, field: &str) -> Option<u64> {
    let who = pid.map_or_else(|| "self".to_string(), |p| p.to_string());
    let status = std::fs::read_to_string(format!("/proc/{who}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A TCP port free on 127.0.0.1 at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
