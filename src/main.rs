//! The `eventflow` command line. Parsing arguments and printing; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use eventflow::config::{self, graph};
use eventflow::run::Outcome;
use eventflow::types::Dur;

// mimalloc: events are allocated on one worker thread and freed on another (the sink's);
// glibc's malloc serializes those frees on arena locks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "eventflow",
    version,
    about = "Turns Kubernetes Events into actions through a declarative pipeline"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace) or a full filter like `RUST_LOG`'s.
    #[arg(long, global = true, env = "EVENTFLOW_LOG_LEVEL")]
    log_level: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum TestFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until SIGINT/SIGTERM, or until every source has finished.
    Run {
        /// The pipeline file. Without one: the embedded default pipeline (watch the current
        /// kubeconfig context or the in-cluster service account, keep Warnings, store them in
        /// ./eventflow.db, print them).
        pipeline: Option<PathBuf>,
        /// How long shutdown may take to deliver in-flight events.
        #[arg(long, default_value = "60s", value_parser = parse_dur)]
        shutdown_timeout: Dur,
        /// Do not reload when the file changes (SIGHUP and POST /-/reload still do).
        #[arg(long)]
        no_watch: bool,
        /// Quiet time after a change to the file before it is reloaded.
        #[arg(long, default_value = "200ms", value_parser = parse_dur)]
        reload_debounce: Dur,
    },
    /// Check pipeline files; print every problem with its line and column.
    Validate {
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
        /// Also print the pipeline's memory bound: each cache, queue and pool by its settings,
        /// and their sum.
        #[arg(long)]
        memory: bool,
        /// With --memory: exit 1 when the bound exceeds this (a pod's limit: `256Mi`, `1Gi`,
        /// or bytes).
        #[arg(long, value_parser = parse_memory_limit, requires = "memory")]
        memory_limit: Option<u64>,
    },
    /// Print the JSON Schema of pipeline files (or, with --markdown, the reference in docs/).
    Schema {
        /// The reference of every field as Markdown (docs/reference.md) instead of JSON.
        #[arg(long)]
        markdown: bool,
    },
    /// Print the index template of a pipeline's `elasticsearch` stage (what `install_template:
    /// true` installs), for `PUT /_index_template/<name>`.
    ElasticsearchTemplate {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The stage, when the pipeline has several `elasticsearch` stages.
        #[arg(long)]
        stage: Option<String>,
    },
    /// Run the `tests:` cases of pipeline files (no network, no database, no cluster).
    Test {
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
        /// Read the cases from this file (a YAML file with a `tests:` list) instead.
        #[arg(long)]
        tests: Option<PathBuf>,
        /// `text` (one line per case, failures with the actual values) or `json`.
        #[arg(long, value_enum, default_value_t = TestFormat::Text)]
        format: TestFormat,
    },
    /// Show what each stage would do with one event, and why (no network, no database).
    Explain {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The event: a JSON or YAML file (`-`: stdin) with an Event as the API server gives it
        /// (either API version; `kubectl get event NAME -o yaml`) or as `stdout` prints it; a
        /// list explains each.
        event: PathBuf,
        /// The source it enters at (default: every source).
        #[arg(long)]
        stage: Option<String>,
        /// The cluster name of an API-server Event.
        #[arg(long, default_value = "default")]
        cluster: String,
        /// JSON for tools instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the events leaving a stage of a running eventflow (entering it, for a sink), live,
    /// as JSON lines. The running process must have an `api:` block.
    Tap {
        /// The stage to watch.
        #[arg(long)]
        stage: String,
        /// The running eventflow's API endpoint.
        #[arg(long, default_value = "127.0.0.1:9464")]
        api: String,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Print a shell completion script: `eventflow completions bash > /etc/bash_completion.d/eventflow`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a pipeline's stage graph (Mermaid flowchart, or Graphviz DOT).
    Graph {
        pipeline: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Print the pipeline equivalent to another tool's configuration: the k8m event handler's
    /// eventhandler.yaml (the default), kubernetes-event-exporter's config.yaml, or kube-eventer's
    /// flags (`--sink=...`, or a file of them), with comments where eventflow behaves
    /// differently and `ATTENTION` where something needs editing.
    Migrate {
        /// The configuration file (for kube-eventer: a file of its flags, one per line or as
        /// a container's `args`/`command` list; or give `--sink` instead).
        file: Option<PathBuf>,
        /// Which tool's configuration it is.
        #[arg(long, value_enum, default_value_t = MigrateFrom::K8m)]
        from: MigrateFrom,
        /// kube-eventer's `--sink=<type>:<url>?<options>` values (repeat it), instead of a file.
        #[arg(long = "sink", value_name = "SINK", allow_hyphen_values = true)]
        sinks: Vec<String>,
        /// Print passwords, tokens and header values in place (by default they become
        /// `${EVENTFLOW_...}` references, listed at the top with redacted values).
        #[arg(long)]
        show_secrets: bool,
    },
    /// Inspect, re-send or delete the deliveries durable sinks (webhook, loki) gave up on (kept in the
    /// pipeline's `state` database).
    DeadLetter {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// List the dead letters, oldest first.
    List {
        pipeline: PathBuf,
        /// Only those of this stage.
        #[arg(long)]
        stage: Option<String>,
    },
    /// Each stage's queue (events waiting and the oldest's age; durable sinks) and dead letters.
    Status {
        pipeline: PathBuf,
        /// Only this stage.
        #[arg(long)]
        stage: Option<String>,
    },
    /// Print one dead letter as JSON, with its events.
    Show { pipeline: PathBuf, id: i64 },
    /// Send dead letters again with the stage's current settings; delivered ones are deleted,
    /// failed ones stay with the new reason. Exit 1 if any failed.
    Resend {
        pipeline: PathBuf,
        /// The ids to send (all, or all of --stage, when none are given).
        ids: Vec<i64>,
        #[arg(long)]
        stage: Option<String>,
    },
    /// Delete dead letters without sending them.
    Delete {
        pipeline: PathBuf,
        #[arg(required = true)]
        ids: Vec<i64>,
    },
}

/// Writes `text` to standard output. A reader that went away (`eventflow schema | head -1`) ends
/// the command quietly with success, as it does for other command-line tools; any other write
/// error ends it with a message and exit 1. Never a panic.
fn out(text: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `print!` through [`out`].
macro_rules! outp {
    ($($t:tt)*) => { out(&format!($($t)*)) };
}

/// `println!` through [`out`].
macro_rules! outln {
    ($($t:tt)*) => { out(&format!("{}\n", format_args!($($t)*))) };
}

/// The pipeline `eventflow run` runs without a file.
const DEFAULT_PIPELINE: &str = include_str!("../pipelines/default.yaml");

fn parse_dur(s: &str) -> Result<Dur, String> {
    eventflow::types::parse_duration(s).map(Dur)
}

fn init_logging(level: Option<&str>, format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let wanted = level
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_string());
    let mut filter = EnvFilter::try_new(&wanted).unwrap_or_else(|e| {
        eprintln!("warning: log level `{wanted}` is not understood ({e}); logging at info");
        EnvFilter::new("info")
    });
    // The TLS verifier logs each certificate it refuses at ERROR, without the stage; the
    // webhook's own line says the same with the stage and what happens next.
    if !wanted.contains("rustls_platform_verifier")
        && let Ok(d) = "rustls_platform_verifier=off".parse()
    {
        filter = filter.add_directive(d);
    }
    // The kube client logs every failed request at ERROR ("failed with error ...", no stage,
    // no server); the source's own line says the same with the stage, the API server and
    // what happens next.
    if !wanted.contains("kube_client")
        && let Ok(d) = "kube_client::client::builder=off".parse()
    {
        filter = filter.add_directive(d);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    let builder = metrics_exporter_prometheus::PrometheusBuilder::new();
    let builder = match builder.set_buckets(eventflow::metrics::BUCKETS) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "histogram buckets rejected; metrics disabled");
            return None;
        }
    };
    let builder = match builder.set_buckets_for_metric(
        metrics_exporter_prometheus::Matcher::Full(eventflow::metrics::AGE.to_string()),
        eventflow::metrics::AGE_BUCKETS,
    ) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "histogram buckets rejected; metrics disabled");
            return None;
        }
    };
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    eventflow::metrics::describe();
    eventflow::metrics::describe_engine();
    for t in eventflow::stages::REGISTRY.types() {
        (t.describe)();
    }
    Some(handle)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref(), cli.log_format);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            // Each cause once: many errors repeat their cause's text in their own.
            let e: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("error: {}", eventflow::types::error_chain(e));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Run {
            pipeline,
            shutdown_timeout,
            no_watch,
            reload_debounce,
        } => {
            let opts = eventflow::run::RunOptions {
                shutdown_timeout: shutdown_timeout.0,
                watch: !no_watch,
                debounce: reload_debounce.0,
                metrics: None,
            };
            run(pipeline.as_deref(), opts)
        }
        Command::Validate {
            pipelines,
            memory,
            memory_limit,
        } => Ok(validate(&pipelines, memory, memory_limit)),
        Command::Schema { markdown: false } => {
            outp!("{}", eventflow::pipeline_schema());
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { markdown: true } => {
            outp!("{}", eventflow::pipeline_reference());
            Ok(ExitCode::SUCCESS)
        }
        Command::ElasticsearchTemplate { pipeline, stage } => {
            Ok(elasticsearch_template(&pipeline, stage.as_deref()))
        }
        Command::Test {
            pipelines,
            tests,
            format,
        } => Ok(run_tests(&pipelines, tests.as_deref(), format)),
        Command::Explain {
            pipeline,
            event,
            stage,
            cluster,
            json,
        } => explain(&pipeline, &event, stage.as_deref(), &cluster, json),
        Command::Tap { stage, api, limit } => tap(&stage, &api, limit),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "eventflow", &mut script);
            out(&String::from_utf8_lossy(&script));
            Ok(ExitCode::SUCCESS)
        }
        Command::Graph { pipeline, format } => Ok(print_graph(&pipeline, format)),
        Command::DeadLetter { action } => dead_letter(&action),
        Command::Migrate {
            file,
            from,
            sinks,
            show_secrets,
        } => match (from, file) {
            (MigrateFrom::K8m, Some(file)) => migrate(&file, show_secrets),
            (MigrateFrom::K8m, None) => {
                eprintln!("eventflow migrate: give the k8m event handler's file");
                Ok(ExitCode::FAILURE)
            }
            (from, file) => migrate_peer(from, file.as_deref(), &sinks, show_secrets),
        },
    }
}

/// `eventflow run`: the file, or the embedded default pipeline when a cluster is reachable.
fn run(
    pipeline: Option<&std::path::Path>,
    mut opts: eventflow::run::RunOptions,
) -> anyhow::Result<ExitCode> {
    let loaded = if let Some(path) = pipeline {
        eventflow::load_file(path)
    } else {
        if let Err(e) = eventflow::kube_client::config_available() {
            eprintln!(
                "{e}\n\nWithout a pipeline file, eventflow watches the current Kubernetes context. To try it without a cluster, run the bundled demo instead:\n    eventflow run pipelines/demo.yaml"
            );
            return Ok(ExitCode::FAILURE);
        }
        tracing::info!("no pipeline file given: running the embedded default pipeline");
        eventflow::load_str(DEFAULT_PIPELINE, "<embedded default pipeline>", &|k| {
            std::env::var(k).ok()
        })
    };
    let p = match loaded {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(why) = &p.disabled {
        tracing::info!("{why}; nothing to run");
        return Ok(ExitCode::SUCCESS);
    }
    opts.metrics = install_metrics();
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let outcome = rt.block_on(eventflow::run::run(p, opts))?;
    Ok(match outcome {
        Outcome::Drained => ExitCode::SUCCESS,
        Outcome::Incomplete(_) | Outcome::Failed(_) => ExitCode::FAILURE,
        Outcome::Undelivered(_) => ExitCode::from(3),
        // As a shell reports a process ended by the signal: 128 + its number.
        Outcome::Interrupted("SIGTERM") => ExitCode::from(143),
        Outcome::Interrupted(_) => ExitCode::from(130),
    })
}

/// `eventflow validate`: every problem of every file; exit 1 on any.
/// A memory size as Kubernetes writes it (`256Mi`, `1Gi`, `500M`) or bytes.
fn parse_memory_limit(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 256Mi, 1Gi, 500M)"))?;
    let mult: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => {
            return Err(format!(
                "`{s}`: unknown unit `{unit}` (Ki, Mi, Gi, K, M, G)"
            ));
        }
    };
    Ok(n.saturating_mul(mult))
}

fn validate(pipelines: &[PathBuf], memory: bool, memory_limit: Option<u64>) -> ExitCode {
    let mut failed = false;
    for path in pipelines {
        match eventflow::load_file(path) {
            Ok(p) => {
                match &p.disabled {
                    Some(why) => outln!("{}: ok ({why})", path.display()),
                    None => outln!("{}: ok ({} stages)", path.display(), p.stages.len()),
                }
                for w in p.warnings() {
                    eprintln!("{w}");
                }
                if memory {
                    let budget = eventflow::budget::Budget::of(&p);
                    outp!("{}", budget.table());
                    if let Some(limit) = memory_limit
                        && budget.total() > limit
                    {
                        failed = true;
                        eprintln!(
                            "{}: the memory bound ({}) exceeds the limit ({}): lower the largest settings above, or raise the limit",
                            path.display(),
                            eventflow::budget::mib(budget.total()),
                            eventflow::budget::mib(limit)
                        );
                    }
                }
            }
            Err(e) => {
                failed = true;
                eprintln!("{e}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `eventflow test`: exit 1 when a file does not load or a case fails.
fn run_tests(
    pipelines: &[PathBuf],
    tests: Option<&std::path::Path>,
    format: TestFormat,
) -> ExitCode {
    let mut failed = false;
    let (mut passed_n, mut failed_n) = (0, 0);
    let mut files = Vec::new();
    for path in pipelines {
        let p = match eventflow::load_file(path) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                failed = true;
                continue;
            }
        };
        let cases = match tests {
            Some(t) => match config::load_cases(t, &p) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    failed = true;
                    continue;
                }
            },
            None => p.tests.clone(),
        };
        if format == TestFormat::Text {
            outln!("running {} cases of {}", cases.len(), path.display());
        }
        let reports = eventflow::authoring::test::run_cases(&p, &cases);
        for r in &reports {
            if r.passed {
                passed_n += 1;
            } else {
                failed_n += 1;
                failed = true;
            }
            if format == TestFormat::Text {
                outln!(
                    "case `{}` ... {}",
                    r.name,
                    if r.passed { "ok" } else { "FAILED" }
                );
                for f in &r.failures {
                    outln!("    {f}");
                }
            }
        }
        files.push(serde_json::json!({"file": path.display().to_string(), "cases": reports}));
    }
    match format {
        TestFormat::Text => outln!(
            "\ntest result: {}. {passed_n} passed; {failed_n} failed",
            if failed { "FAILED" } else { "ok" }
        ),
        TestFormat::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "passed": passed_n,
                "failed": failed_n,
                "files": files,
            }))
            .unwrap_or_default()
        ),
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `eventflow tap`: streams `GET /-/tap` to stdout.
fn tap(stage: &str, api: &str, limit: Option<u64>) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let base = if api.contains("://") {
        api.to_string()
    } else {
        format!("http://{api}")
    };
    let mut url = format!("{}/-/tap?stage={stage}", base.trim_end_matches('/'));
    if let Some(n) = limit {
        url.push_str(&format!("&limit={n}"));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    rt.block_on(async {
        let mut req = reqwest::Client::new().get(&url);
        if let Ok(token) = std::env::var(eventflow::api::TOKEN_ENV) {
            req = req.bearer_auth(token);
        }
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let e: &(dyn std::error::Error + 'static) = &e;
                eprintln!(
                    "cannot reach eventflow's API at {base} (is it running with an `api:` block?): {}",
                    eventflow::types::error_chain(e)
                );
                return Ok(ExitCode::FAILURE);
            }
        };
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            eprintln!("{status}: {}", text.trim_end());
            return Ok(ExitCode::FAILURE);
        }
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = resp.chunk().await.context("the tap ended")? {
            if out.write_all(&chunk).and_then(|()| out.flush()).is_err() {
                break;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `eventflow explain`.
fn explain(
    pipeline: &std::path::Path,
    event: &std::path::Path,
    stage: Option<&str>,
    cluster: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::{IsTerminal, Read};
    let p = match eventflow::load_file(pipeline) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let text = if event.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the event from stdin")?;
        s
    } else {
        std::fs::read_to_string(event)
            .with_context(|| format!("cannot read {}", event.display()))?
    };
    let events = match eventflow::authoring::events_from_text(&text, cluster) {
        Ok(v) if !v.is_empty() => v,
        Ok(_) => {
            eprintln!("{}: no event in it", event.display());
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => {
            eprintln!("{}: {e}", event.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut all = Vec::new();
    for e in &events {
        let reports = match eventflow::authoring::explain::explain(&p, e, stage) {
            Ok(r) => r,
            Err(why) => {
                eprintln!("{}: {why}", pipeline.display());
                return Ok(ExitCode::FAILURE);
            }
        };
        if json {
            all.push(serde_json::json!({"event": e, "stages": reports}));
        } else {
            outp!(
                "{}",
                eventflow::authoring::explain::render_text(
                    e,
                    &reports,
                    std::io::stdout().is_terminal()
                )
            );
        }
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// `eventflow graph`.
fn print_graph(pipeline: &std::path::Path, format: GraphFormat) -> ExitCode {
    let p = match eventflow::load_file(pipeline) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match format {
        GraphFormat::Mermaid => outp!("{}", graph::mermaid(&p.stages)),
        GraphFormat::Dot => outp!("{}", graph::dot(&p.stages)),
    }
    ExitCode::SUCCESS
}

/// The tools `eventflow migrate` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum MigrateFrom {
    /// The k8m event handler's eventhandler.yaml.
    K8m,
    /// kubernetes-event-exporter's config.yaml.
    KubernetesEventExporter,
    /// kube-eventer's flags.
    KubeEventer,
}

/// `eventflow migrate --from kubernetes-event-exporter | kube-eventer`.
fn migrate_peer(
    from: MigrateFrom,
    file: Option<&std::path::Path>,
    sinks: &[String],
    show_secrets: bool,
) -> anyhow::Result<ExitCode> {
    use eventflow::config::migrate;
    let mode = if show_secrets {
        migrate::Secrets::Inline
    } else {
        migrate::Secrets::Env
    };
    let text = match file {
        Some(p) => Some((
            p.display().to_string(),
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        )),
        None => None,
    };
    let result = match (from, &text) {
        (MigrateFrom::KubernetesEventExporter, Some((_, t))) => {
            migrate::exporter::translate(t, mode)
        }
        (MigrateFrom::KubernetesEventExporter, None) => {
            Err("give kubernetes-event-exporter's config.yaml".to_string())
        }
        (_, t) => {
            let mut args: Vec<String> = sinks.iter().map(|s| format!("--sink={s}")).collect();
            if let Some((_, t)) = t {
                args.extend(migrate::eventer::flags_of(t));
            }
            migrate::eventer::translate(&args, mode)
        }
    };
    let name = text
        .as_ref()
        .map_or_else(|| "--sink".to_string(), |(n, _)| n.clone());
    match result {
        Ok(m) => {
            outp!("{}", m.yaml);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{name}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn migrate(path: &std::path::Path, show_secrets: bool) -> anyhow::Result<ExitCode> {
    use eventflow::config::k8m;
    use eventflow::yaml as tree;
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?;
    let root = match tree::parse(&text) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}:{}: {}", e.pos, e.message);
            return Ok(ExitCode::FAILURE);
        }
    };
    if !k8m::is_k8m_format(&root) {
        eprintln!(
            "{name}: not in the k8m event handler's format (it has `stages:` or none of database, watcher, worker, rule_config, webhook); it is a pipeline already"
        );
        return Ok(ExitCode::FAILURE);
    }
    let mode = if show_secrets {
        k8m::Secrets::Inline
    } else {
        k8m::Secrets::Env
    };
    match k8m::translate_with(&root, mode) {
        Ok(k8m::Translated::Pipeline(yaml)) => {
            outp!("{yaml}");
            Ok(ExitCode::SUCCESS)
        }
        Ok(k8m::Translated::Disabled(why)) => {
            eprintln!("{name}: {why}; there is no pipeline to run");
            Ok(ExitCode::FAILURE)
        }
        Err(problems) => {
            eprintln!(
                "{}",
                config::ConfigError {
                    file: name,
                    problems
                }
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `eventflow elasticsearch-template`: the template of the pipeline's `elasticsearch` stage.
fn elasticsearch_template(path: &std::path::Path, stage: Option<&str>) -> ExitCode {
    use eventflow::stages::elasticsearch as es;
    let p = match eventflow::load_file(path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let stages: Vec<_> = p
        .stages
        .values()
        .filter(|s| s.type_name == es::TYPE.name && stage.is_none_or(|id| s.id == id))
        .collect();
    let chosen = match stages.as_slice() {
        [one] => *one,
        [] => {
            match stage {
                Some(id) => eprintln!("{}: no `elasticsearch` stage `{id}`", path.display()),
                None => eprintln!(
                    "{}: the pipeline has no `elasticsearch` stage",
                    path.display()
                ),
            }
            return ExitCode::FAILURE;
        }
        many => {
            let ids: Vec<&str> = many.iter().map(|s| s.id.as_str()).collect();
            eprintln!(
                "{}: several `elasticsearch` stages ({}); say which with --stage",
                path.display(),
                ids.join(", ")
            );
            return ExitCode::FAILURE;
        }
    };
    match eventflow::yaml::from_node_skipping::<es::ElasticsearchConfig>(
        &chosen.node,
        &["type", "inputs"],
    ) {
        Ok(cfg) => {
            let t = serde_json::to_string_pretty(&cfg.template()).unwrap_or_default();
            outp!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stage `{}`: {e}", chosen.id);
            ExitCode::FAILURE
        }
    }
}

/// The stages of `p` that can have dead letters, each with a way to make its sender: the sinks
/// with `durable: true` (webhook, loki, otlp), and, with a `kube_events` source, every other sink.
fn letter_stages(
    p: &eventflow::config::Pipeline,
) -> Result<Vec<eventflow::stages::webhook::dead_letter::LetterStage>, String> {
    use eventflow::stages::webhook::dead_letter::LetterStage;
    use eventflow::stages::webhook::durable::Sender;
    use eventflow::stages::{loki, otlp, webhook};
    use std::sync::Arc;
    let mut out = Vec::new();
    for s in p.stages.values() {
        let id = s.id.clone();
        let bad = |e: eventflow::yaml::DeError| format!("stage `{}`: {e}", s.id);
        if s.type_name == webhook::TYPE.name {
            let cfg: webhook::WebhookConfig =
                eventflow::yaml::from_node_skipping(&s.node, &["type", "inputs"]).map_err(bad)?;
            if cfg.durable {
                out.push(LetterStage {
                    id: id.clone(),
                    make: Box::new(move || {
                        let (cfg, id) = (cfg.clone(), id.clone());
                        Box::pin(async move {
                            cfg.delivery(&id)
                                .await
                                .map(|d| Arc::new(d) as Arc<dyn Sender>)
                                .map_err(Into::into)
                        })
                    }),
                });
            }
        } else if s.type_name == otlp::TYPE.name {
            let cfg: otlp::OtlpConfig =
                eventflow::yaml::from_node_skipping(&s.node, &["type", "inputs"]).map_err(bad)?;
            if cfg.durable {
                out.push(LetterStage {
                    id: id.clone(),
                    make: Box::new(move || {
                        // Made inside the runtime: the gRPC channel starts a task.
                        let (cfg, id) = (cfg.clone(), id.clone());
                        Box::pin(async move {
                            cfg.exporter(&id)
                                .map(|d| Arc::new(d) as Arc<dyn Sender>)
                                .map_err(Into::into)
                        })
                    }),
                });
            }
        } else if s.type_name == loki::TYPE.name {
            let cfg: loki::LokiConfig =
                eventflow::yaml::from_node_skipping(&s.node, &["type", "inputs"]).map_err(bad)?;
            if cfg.durable {
                out.push(LetterStage {
                    id: id.clone(),
                    make: Box::new(move || {
                        let made = cfg
                            .pusher(&id)
                            .map(|d| Arc::new(d) as Arc<dyn Sender>)
                            .map_err(Into::into);
                        Box::pin(async move { made })
                    }),
                });
            }
        }
    }
    // Sources give up on events sinks refused: those are dead letters of the refusing sink.
    let gives_up = p
        .stages
        .values()
        .any(|s| s.type_name == eventflow::stages::kube_events::TYPE.name);
    if gives_up {
        for s in p.stages.values() {
            if s.kind != eventflow::component::StageKind::Sink || out.iter().any(|d| d.id == s.id) {
                continue;
            }
            let (pipeline, id) = (p.clone(), s.id.clone());
            out.push(LetterStage {
                id: s.id.clone(),
                make: Box::new(move || {
                    let replay = webhook::replay::Replay::new(pipeline.clone(), &id);
                    Box::pin(async move { Ok(Arc::new(replay) as Arc<dyn Sender>) })
                }),
            });
        }
    }
    Ok(out)
}

fn dead_letter(action: &DeadLetterAction) -> anyhow::Result<ExitCode> {
    use eventflow::stages::webhook::dead_letter as dl;
    let path = match &action {
        DeadLetterAction::List { pipeline, .. }
        | DeadLetterAction::Status { pipeline, .. }
        | DeadLetterAction::Show { pipeline, .. }
        | DeadLetterAction::Resend { pipeline, .. }
        | DeadLetterAction::Delete { pipeline, .. } => pipeline,
    };
    let p = match eventflow::load_file(path)
        .map_err(|e| e.to_string())
        .and_then(|p| {
            Ok(dl::Target {
                state_url: p.state.clone().unwrap_or_default().url,
                stages: letter_stages(&p)?,
            })
        }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = rt.block_on(async {
        match &action {
            DeadLetterAction::List { stage, .. } => {
                dl::list(&p, stage.as_deref()).await.map(|t| (t, true))
            }
            DeadLetterAction::Status { stage, .. } => {
                dl::status(&p, stage.as_deref()).await.map(|t| (t, true))
            }
            DeadLetterAction::Show { id, .. } => dl::show(&p, *id).await.map(|t| (t + "\n", true)),
            DeadLetterAction::Resend { ids, stage, .. } => {
                dl::resend(&p, stage.as_deref(), ids).await.map(|r| {
                    let ok = r.failed == 0;
                    (
                        format!(
                            "{}{} delivered, {} failed\n",
                            r.report, r.delivered, r.failed
                        ),
                        ok,
                    )
                })
            }
            DeadLetterAction::Delete { ids, .. } => dl::delete(&p, ids).await.map(|d| {
                let mut text = format!("{} dead letters deleted\n", d.deleted);
                for id in &d.missing {
                    text.push_str(&format!("no dead letter with id {id}\n"));
                }
                (text, d.missing.is_empty())
            }),
        }
    });
    match result {
        Ok((text, ok)) => {
            outp!("{text}");
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
