//! The Kubernetes client configuration shared by everything that talks to an API server (the
//! `kube_events` source, leader election): in-cluster service account, then `$KUBECONFIG`, then
//! `~/.kube/config`, or an explicit kubeconfig file and context.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Why no client could be configured. Messages pass through [`crate::redact::parse_error`]
/// because a kubeconfig's parse error can quote a token; the kube error itself is therefore not
/// kept as a source, except for [`ClientError::Build`] which names no file content.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Neither in-cluster configuration nor a kubeconfig file was found.
    #[error("no Kubernetes configuration found (looked for: {looked_for}): {reason}")]
    NotFound { looked_for: String, reason: String },
    /// The kubeconfig file named in the pipeline cannot be read or parsed.
    #[error("field `kubeconfig`: cannot read {}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    /// The kubeconfig was read but its context cannot be used (unknown context, bad cert).
    #[error("{what}: {reason}")]
    Context { what: String, reason: String },
    /// The configuration is complete but the client cannot be built from it.
    #[error("cannot build the Kubernetes client: {0}")]
    Build(#[source] kube::Error),
}

/// Where the client configuration is looked for, for messages.
fn sources() -> String {
    let kc = std::env::var("KUBECONFIG").unwrap_or_default();
    format!(
        "in-cluster service account (KUBERNETES_SERVICE_HOST {}), $KUBECONFIG ({}), ~/.kube/config",
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            "set"
        } else {
            "not set"
        },
        if kc.is_empty() {
            "not set"
        } else {
            kc.as_str()
        }
    )
}

fn redacted(e: &impl std::fmt::Display) -> String {
    crate::redact::parse_error(&e.to_string())
}

/// [`redacted`], keeping the kubeconfig paths it names: a path is not a secret.
fn redacted_keeping(e: &impl std::fmt::Display, paths: &[String]) -> String {
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    crate::redact::parse_error_keeping(&e.to_string(), &paths)
}

/// The files a default kubeconfig is read from: `$KUBECONFIG`'s, else `~/.kube/config`.
fn default_paths() -> Vec<String> {
    let mut paths: Vec<String> = std::env::var("KUBECONFIG")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(home) = std::env::var_os("HOME") {
        paths.push(
            std::path::Path::new(&home)
                .join(".kube/config")
                .display()
                .to_string(),
        );
    }
    paths
}

fn default_kubeconfig() -> Result<Kubeconfig, ClientError> {
    Kubeconfig::read().map_err(|e| ClientError::NotFound {
        looked_for: sources(),
        reason: redacted_keeping(&e, &default_paths()),
    })
}

/// Whether any client configuration can be found without a pipeline saying where.
pub fn config_available() -> Result<(), ClientError> {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return Ok(());
    }
    default_kubeconfig().map(|_| ())
}

/// The client config of a kubeconfig's context (`context`, else its current one), and the
/// context's name. `what` names the file in errors.
async fn from_kubeconfig(
    kc: Kubeconfig,
    context: Option<&str>,
    what: String,
) -> Result<(kube::Config, String), ClientError> {
    let name = context
        .map(str::to_string)
        .or_else(|| kc.current_context.clone())
        .unwrap_or_else(|| "default".to_string());
    let opts = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let cfg = kube::Config::from_custom_kubeconfig(kc, &opts)
        .await
        .map_err(|e| ClientError::Context {
            what,
            reason: redacted(&e),
        })?;
    Ok((cfg, name))
}

/// The client configuration, and a name for the cluster (the context's, or `in-cluster`).
pub async fn client_config(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<(kube::Config, String), ClientError> {
    let (mut cfg, name) = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| ClientError::Unreadable {
                path: path.to_path_buf(),
                reason: redacted_keeping(&e, &[path.display().to_string()]),
            })?;
            let what = format!("field `kubeconfig`: {}", path.display());
            from_kubeconfig(kc, context, what).await?
        }
        None => match context.map_or_else(|| kube::Config::incluster().ok(), |_| None) {
            Some(cfg) => (cfg, "in-cluster".to_string()),
            None => from_kubeconfig(default_kubeconfig()?, context, "kubeconfig".into()).await?,
        },
    };
    if let Some(p) = cfg.proxy_url.take() {
        tracing::warn!(proxy = %crate::redact::url(&p.to_string()), "HTTPS_PROXY is ignored for the Kubernetes API (eventflow connects directly)");
    }
    Ok((cfg, name))
}

/// A client for the configured API server, and the cluster's name.
pub async fn connect(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<(kube::Client, String), ClientError> {
    connect_to(kubeconfig, context)
        .await
        .map(|(c, name, _)| (c, name))
}

/// [`connect`], and the API server's URL for messages (credentials redacted).
pub async fn connect_to(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<(kube::Client, String, String), ClientError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (cfg, name) = client_config(kubeconfig, context).await?;
    let server = crate::redact::url(&cfg.cluster_url.to_string());
    let client = kube::Client::try_from(cfg).map_err(ClientError::Build)?;
    Ok((client, name, server))
}
