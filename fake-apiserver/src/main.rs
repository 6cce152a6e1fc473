//! `fake-apiserver`: runs the fake Kubernetes API server on its own, so `eventflow run` can be
//! pointed at it through a kubeconfig and driven through the admin API under `/__fake/`.

use std::path::PathBuf;

use clap::Parser;
use fake_apiserver::FakeApiServer;
use serde_json::Value;

#[derive(Parser)]
#[command(about = "A fake Kubernetes API server serving Events (core/v1 and events.k8s.io/v1)")]
struct Args {
    /// Port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Write a kubeconfig for this server here.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// Require this bearer token (and put it in the kubeconfig).
    #[arg(long)]
    token: Option<String>,
    /// Pre-load Events from a JSON `EventList` or array (core/v1 or events.k8s.io/v1 shapes).
    #[arg(long)]
    load: Option<PathBuf>,
    /// After loading, bump the count of a random loaded Event every this many milliseconds.
    #[arg(long)]
    tick_ms: Option<u64>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let server = FakeApiServer::start_on(args.port).await?;
    if let Some(t) = &args.token {
        let t = t.clone();
        server.faults(|f| f.require_bearer = Some(t));
    }
    if let Some(path) = &args.kubeconfig_out {
        server.write_kubeconfig(path, args.token.as_deref())?;
        eprintln!("kubeconfig written to {}", path.display());
    }
    let mut loaded = Vec::new();
    if let Some(path) = &args.load {
        let text = std::fs::read_to_string(path)?;
        let doc: Value = serde_json::from_str(&text)?;
        let items = match doc {
            Value::Array(a) => a,
            Value::Object(mut o) => match o.remove("items") {
                Some(Value::Array(a)) => a,
                _ => vec![Value::Object(o)],
            },
            _ => Vec::new(),
        };
        for mut item in items {
            let ns = item
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string();
            let flavor = if item.get("regarding").is_some() || item.get("note").is_some() {
                fake_apiserver::Flavor::Events
            } else {
                fake_apiserver::Flavor::Core
            };
            if let Some(m) = item.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("uid");
                m.remove("resourceVersion");
            }
            let item = fake_apiserver::from_flavor(item, flavor);
            let name = item
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            // A later version of an Event already loaded (the same name) is a change to it.
            let r = match server.create(&ns, item.clone()) {
                Err(e) if e.code == 409 => server.patch(&ns, &name, &item),
                other => other,
            };
            match r {
                Ok(_) => loaded.push((ns, name)),
                Err(e) => eprintln!("skipped an event: {e}"),
            }
        }
        eprintln!("loaded {} events from {}", loaded.len(), path.display());
    }
    eprintln!("fake API server listening on {}", server.url());
    match args.tick_ms {
        Some(ms) if !loaded.is_empty() => {
            let mut i = 0usize;
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                i = (i * 7 + 3) % loaded.len();
                let (ns, name) = &loaded[i];
                let _ = server.bump_count(ns, name);
            }
        }
        _ => {
            tokio::signal::ctrl_c().await?;
        }
    }
    Ok(())
}
