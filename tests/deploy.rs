//! What ships for running eventflow in a cluster: the Kubernetes manifests, the Dockerfile,
//! and an OCI image built here (no Docker engine, no registry: buildah from scratch) in which
//! the real binary validates the image's pipeline and runs the image's default command as the
//! non-root user.
//! The manifests are also rendered and validated against the Kubernetes schemas by `.ci/run`.

mod support;

use std::process::Command;

use support::*;

/// The objects of a multi-document YAML text, as JSON values.
fn documents(text: &str) -> Vec<serde_json::Value> {
    text.split("\n---")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_saphyr::from_str::<serde_json::Value>(d).expect("a YAML object"))
        .collect()
}

/// The kustomize base as rendered by kubectl, or (without kubectl) its source files.
fn rendered() -> Vec<serde_json::Value> {
    match Command::new("kubectl")
        .args(["kustomize", "deploy/kubernetes"])
        .current_dir(repo(""))
        .output()
    {
        Ok(out) if out.status.success() => documents(&String::from_utf8_lossy(&out.stdout)),
        _ => {
            eprintln!("kubectl not found: reading deploy/kubernetes/*.yaml without kustomize");
            [
                "namespace",
                "rbac",
                "secret",
                "deployment",
                "service",
                "networkpolicy",
            ]
            .iter()
            .flat_map(|f| {
                documents(
                    &std::fs::read_to_string(repo(&format!("deploy/kubernetes/{f}.yaml")))
                        .expect("manifest"),
                )
            })
            .collect()
        }
    }
}

fn of_kind<'a>(objs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

/// `(group, resource, verbs)` of every rule of a role, sorted.
fn grants_of(role: &serde_json::Value) -> Vec<(String, String, Vec<String>)> {
    let mut grants: Vec<(String, String, Vec<String>)> = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .flat_map(|r| {
            let verbs: Vec<String> = r["verbs"]
                .as_array()
                .expect("verbs")
                .iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect();
            let groups = r["apiGroups"].as_array().cloned().unwrap_or_default();
            let resources = r["resources"].as_array().cloned().unwrap_or_default();
            groups.into_iter().flat_map(move |g| {
                let verbs = verbs.clone();
                resources.clone().into_iter().map(move |res| {
                    (
                        g.as_str().unwrap_or("").to_string(),
                        res.as_str().unwrap_or("").to_string(),
                        verbs.clone(),
                    )
                })
            })
        })
        .collect();
    grants.sort();
    grants
}

#[test]
fn the_cluster_role_grants_what_the_sources_use_and_nothing_more() {
    let objs = rendered();
    let roles = of_kind(&objs, "ClusterRole");
    assert_eq!(roles.len(), 2);
    let named = |n: &str| {
        roles
            .iter()
            .find(|r| r["metadata"]["name"] == n)
            .unwrap_or_else(|| panic!("ClusterRole {n}"))
    };
    let rw = |g: &str| {
        (
            g.to_string(),
            "events".to_string(),
            vec!["get".into(), "list".into(), "watch".into()],
        )
    };
    assert_eq!(
        grants_of(named("eventflow-read-events")),
        vec![rw(""), rw("events.k8s.io")]
    );
    // `enrich` with its defaults: list and watch on namespaces and on its default kinds.
    let defaults: eventflow::stages::enrich::EnrichConfig =
        serde_json::from_str("{}").expect("defaults");
    let mut wanted: Vec<(String, String, Vec<String>)> = eventflow::stages::enrich::KINDS
        .iter()
        .filter(|(kind, ..)| *kind == "Namespace" || defaults.kinds.iter().any(|k| k == kind))
        .map(|(_, group, _, plural, _)| {
            (
                (*group).to_string(),
                (*plural).to_string(),
                vec!["list".into(), "watch".into()],
            )
        })
        .collect();
    wanted.sort();
    assert_eq!(grants_of(named("eventflow-read-metadata")), wanted);
    // The namespaced Role: leases only, for leader election.
    let role = of_kind(&objs, "Role");
    assert_eq!(role.len(), 1);
    assert_eq!(
        role[0]["rules"],
        serde_json::json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "create", "update"]}])
    );
    // Bound to the service account the Deployment runs as.
    let sa = "eventflow";
    for b in of_kind(&objs, "ClusterRoleBinding")
        .iter()
        .chain(&of_kind(&objs, "RoleBinding"))
    {
        assert_eq!(b["subjects"][0]["name"], sa);
    }
    let deploy = of_kind(&objs, "Deployment");
    assert_eq!(
        deploy[0]["spec"]["template"]["spec"]["serviceAccountName"],
        sa
    );
}

#[test]
fn the_deployment_is_locked_down_and_drains_within_its_grace_period() {
    let objs = rendered();
    let d = of_kind(&objs, "Deployment")[0].clone();
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(c["resources"]["limits"]["memory"].is_string());
    // The drain timeout stays below the grace period, or SIGKILL cuts the drain short.
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let i = args
        .iter()
        .position(|a| *a == "--shutdown-timeout")
        .expect("--shutdown-timeout");
    let drain = eventflow::types::parse_duration(args[i + 1]).expect("duration");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    assert!(
        drain.as_secs() + 5 <= grace,
        "drain {drain:?} vs grace {grace}s"
    );
    // State and the pipeline: the only writable path is the state volume.
    let mounts = c["volumeMounts"].as_array().expect("mounts");
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/var/lib/eventflow")
    );
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/etc/eventflow" && m["readOnly"] == true)
    );
    // The Service exposes the metrics port and nothing else.
    let svc = of_kind(&objs, "Service")[0].clone();
    assert_eq!(svc["spec"]["ports"].as_array().map(Vec::len), Some(1));
    assert_eq!(svc["spec"]["ports"][0]["port"], 9464);
    assert_eq!(
        svc["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
}

#[test]
fn the_pipeline_in_the_config_map_validates_and_its_secret_comes_from_the_environment() {
    let objs = rendered();
    let cm = of_kind(&objs, "ConfigMap")[0].clone();
    let text = cm["data"]["pipeline.yaml"]
        .as_str()
        .expect("pipeline.yaml")
        .to_string();
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(dir.path(), "pipeline.yaml", &text);
    let out = bin()
        .arg("validate")
        .arg(&p)
        .env("WEBHOOK_URL", "https://hooks.example.com/x?token=t")
        .output()
        .expect("validate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bin()
        .arg("validate")
        .arg(&p)
        .env_remove("WEBHOOK_URL")
        .output()
        .expect("validate");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("WEBHOOK_URL"),
        "the webhook URL is not in the file: it comes from the Secret"
    );
    assert!(
        !text.contains("hooks.slack.com"),
        "no real endpoint in the manifests"
    );
}

/// The memory figures the Deployment's comment quotes are the ones docs/operations.md gives.
#[test]
fn the_deployments_memory_figures_are_those_of_the_docs() {
    let deployment =
        std::fs::read_to_string(repo("deploy/kubernetes/deployment.yaml")).expect("deployment");
    let ops = std::fs::read_to_string(repo("docs/operations.md")).expect("operations.md");
    let figures: Vec<&str> = deployment
        .lines()
        .filter(|l| l.trim_start().starts_with('#'))
        .flat_map(|l| l.split(|c: char| !c.is_ascii_digit() && c != '~'))
        .filter(|w| w.starts_with('~') && w.len() > 1)
        .collect();
    assert!(figures.len() >= 4, "{figures:?}");
    for f in figures {
        assert!(
            ops.contains(&format!("{f} MB")),
            "`{f} MB` of deployment.yaml is not in docs/operations.md"
        );
    }
}

#[test]
fn the_dockerfile_follows_the_rules_that_matter() {
    let text = std::fs::read_to_string(repo("Dockerfile")).expect("Dockerfile");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let froms: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .copied()
        .collect();
    assert_eq!(froms.len(), 2, "multi-stage");
    for f in &froms {
        let image = f.split_whitespace().nth(1).expect("an image");
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "pinned base: {f}"
        );
    }
    let last_user = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER");
    assert!(last_user.contains("65532"), "non-root: {last_user}");
    assert!(text.contains("cargo build --locked --release"), "--locked");
    assert!(lines.contains(&"ENTRYPOINT [\"eventflow\"]"));
    assert!(lines.contains(&"CMD [\"run\", \"/etc/eventflow/pipeline.yaml\"]"));
    assert!(text.contains("org.opencontainers.image.title"));
    for l in &lines {
        let upper = l.to_uppercase();
        if upper.starts_with("ENV ") || upper.starts_with("ARG ") {
            for word in ["SECRET", "TOKEN", "PASSWORD", "KEY"] {
                assert!(!upper.contains(word), "no secret baked in: {l}");
            }
        }
    }
    let ignore = std::fs::read_to_string(repo(".dockerignore")).expect(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
    // The image carries its own pipeline (state and tables under /var/lib/eventflow, the API on
    // the exposed port), and the build context keeps it.
    assert!(text.contains(
        "install -D -m 0644 deploy/image/pipeline.yaml /out/etc/eventflow/pipeline.yaml"
    ));
    assert!(
        ignore.lines().any(|l| l.trim() == "!deploy/image/"),
        "{ignore}"
    );
    let image_pipeline =
        std::fs::read_to_string(repo("deploy/image/pipeline.yaml")).expect("image pipeline");
    assert!(image_pipeline.contains("listen: 0.0.0.0:9464") && lines.contains(&"EXPOSE 9464"));
    for url in [
        "sqlite:///var/lib/eventflow/eventflow.db",
        "sqlite:///var/lib/eventflow/eventflow-state.db",
    ] {
        assert!(image_pipeline.contains(url), "{url}");
    }
}

/// Stops a `buildah run`: SIGTERM, which it passes on to the process in the container (a
/// SIGKILL would leave that one running), then SIGKILL if it has not ended in 20 s.
fn stop(running: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &running.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while matches!(running.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = running.kill();
    let _ = running.wait();
}

/// `buildah` (vfs storage, as the image build uses) with `args`: success, stdout, stderr.
fn buildah(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("buildah")
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .expect("buildah");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn an_oci_image_built_here_runs_the_binary_as_the_non_root_user() {
    if Command::new("buildah").arg("--version").output().is_err() {
        eprintln!("SKIPPED: buildah is not installed (`.ci/services.sh` installs it)");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let tar = dir.path().join("eventflow.oci.tar");
    let built = Command::new("bash")
        .arg(repo("deploy/image/build-oci.sh"))
        .arg(env!("CARGO_BIN_EXE_eventflow"))
        .arg(&tar)
        .arg("eventflow:test")
        .output()
        .expect("build-oci.sh");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let (ok, ctr, err) = buildah(&["from", &format!("oci-archive:{}", tar.display())]);
    assert!(ok, "{err}");
    let (ok, config, err) = buildah(&["inspect", "--type", "container", &ctr]);
    assert!(ok, "{err}");
    let config: serde_json::Value = serde_json::from_str(&config).expect("inspect json");
    let image = &config["OCIv1"]["config"];
    assert_eq!(image["User"], "65532:65532");
    assert_eq!(image["Entrypoint"], serde_json::json!(["eventflow"]));
    assert_eq!(
        image["Cmd"],
        serde_json::json!(["run", "/etc/eventflow/pipeline.yaml"])
    );
    // The real binary, in the image, as its user.
    let in_image = |args: &[&str]| {
        let mut all = vec![
            "run",
            "--isolation",
            "chroot",
            "--user",
            "65532:65532",
            &ctr,
            "--",
            "/usr/local/bin/eventflow",
        ];
        all.extend_from_slice(args);
        buildah(&all)
    };
    // It validates the pipeline the image carries.
    let (ok, out, err) = in_image(&["validate", "/etc/eventflow/pipeline.yaml"]);
    assert!(ok, "validate in the image: {out}\n{err}");
    assert!(out.contains("ok"), "{out}");
    // And runs a pipeline that keeps its state and table under /var/lib/eventflow.
    let p = write(
        dir.path(),
        "p.yaml",
        "state:\n  url: sqlite:///var/lib/eventflow/state.db\nstages:\n  f:\n    type: file\n    path: /etc/eventflow/events.json\n  db:\n    type: sql\n    inputs: [f]\n    url: sqlite:///var/lib/eventflow/events.db\n",
    );
    let files = [
        (p, "/etc/eventflow/p.yaml"),
        (
            repo("pipelines/samples/events.json"),
            "/etc/eventflow/events.json",
        ),
    ];
    for (from, to) in &files {
        let (ok, _, err) = buildah(&["copy", &ctr, &from.display().to_string(), to]);
        assert!(ok, "{err}");
    }
    let (ok, out, err) = in_image(&["run", "--no-watch", "/etc/eventflow/p.yaml"]);
    assert!(ok, "run in the image as 65532: {out}\n{err}");
    assert!(err.contains("pipeline drained"), "{err}");

    the_images_default_command_starts(&ctr, image, dir.path());
}

/// The image's own default command (`docker run eventflow`, no arguments) starts: it watches
/// the API server of $KUBECONFIG (in a cluster: the pod's service account), stores Warnings
/// under /var/lib/eventflow, and serves metrics on the exposed port of every interface.
/// Removes the container.
fn the_images_default_command_starts(ctr: &str, image: &serde_json::Value, dir: &std::path::Path) {
    let (_rt, fake, kc) = fake_cluster(dir);
    let (ok, _, err) = buildah(&[
        "copy",
        ctr,
        &kc.display().to_string(),
        "/etc/eventflow/kubeconfig",
    ]);
    assert!(ok, "{err}");
    let uid = create_event(&fake, "default", "web-1.17", "BackOff", "Warning");
    let exposed: Vec<String> = image["ExposedPorts"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    assert!(
        exposed.len() == 1 && exposed[0].trim_end_matches("/tcp") == "9464",
        "{exposed:?}"
    );
    let mut default_cmd: Vec<String> = Vec::new();
    for part in ["Entrypoint", "Cmd"] {
        default_cmd.extend(
            image[part]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string)),
        );
    }
    // The image's port, on the host's network (chroot isolation): it must be free, or what
    // answers is not this container.
    drop(
        std::net::TcpListener::bind("0.0.0.0:9464").expect("port 9464 is free for the image's API"),
    );
    let mut running = Command::new("buildah")
        .args([
            "--storage-driver",
            "vfs",
            "run",
            "--isolation",
            "chroot",
            "--user",
            "65532:65532",
        ])
        .args(["--env", "KUBECONFIG=/etc/eventflow/kubeconfig", ctr, "--"])
        .args(&default_cmd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("buildah run");
    let printed = lines_of(running.stdout.take().expect("stdout"));
    let logs = lines_of(running.stderr.take().expect("stderr"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let stored = loop {
        let m = std::net::TcpStream::connect("127.0.0.1:9464")
            .ok()
            .map(|_| http(9464, "GET", "/metrics").1)
            .unwrap_or_default();
        if m.contains("eventflow_events_sent_total{stage=\"store\",type=\"sql\"} 1") {
            break m;
        }
        if std::time::Instant::now() > deadline || matches!(running.try_wait(), Ok(Some(_))) {
            stop(&mut running);
            let logs: Vec<String> = logs.iter().collect();
            let _ = buildah(&["rm", ctr]);
            panic!(
                "the image's default command ({default_cmd:?}) did not start and store the event; metrics:\n{m}\nlogs:\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(stored.contains("eventflow_ready 1"), "{stored}");
    let line = printed
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the Warning printed");
    assert!(line.contains(&uid), "{line}");
    stop(&mut running);
    let (ok, mnt, err) = buildah(&["mount", ctr]);
    assert!(ok, "{err}");
    let data = std::path::Path::new(&mnt).join("var/lib/eventflow");
    let rows = sqlite_column(&data.join("eventflow.db"), "SELECT uid FROM k8s_events");
    let checkpoint = data.join("eventflow-state.db").exists();
    let _ = buildah(&["umount", ctr]);
    let _ = buildah(&["rm", ctr]);
    assert!(rows.contains(&uid), "{rows:?}");
    assert!(checkpoint, "the state database is under /var/lib/eventflow");
}

#[test]
fn the_ha_overlay_runs_two_replicas_with_election_and_a_disruption_budget() {
    let out = match Command::new("kubectl")
        .args(["kustomize", "deploy/kubernetes-ha"])
        .current_dir(repo(""))
        .output()
    {
        Ok(out) if out.status.success() => out,
        _ => {
            eprintln!("SKIPPED the HA overlay: kubectl (kustomize) not found");
            return;
        }
    };
    let objs = documents(&String::from_utf8_lossy(&out.stdout));
    let d = of_kind(&objs, "Deployment")[0].clone();
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    let env = d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .clone();
    let var = |name: &str| env.iter().find(|e| e["name"] == name).cloned();
    assert_eq!(
        var("POD_NAME").expect("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert!(var("STATE_URL").is_some());
    let pdb = of_kind(&objs, "PodDisruptionBudget");
    assert_eq!(pdb.len(), 1);
    assert_eq!(pdb[0]["spec"]["minAvailable"], 1);
    let lease_rules: Vec<serde_json::Value> = of_kind(&objs, "Role")
        .iter()
        .flat_map(|r| r["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["resources"] == serde_json::json!(["leases"]))
        .collect();
    assert_eq!(
        lease_rules[0]["verbs"],
        serde_json::json!(["get", "list", "create", "update"]),
        "what leader election calls, nothing more (list: per-source membership)"
    );
    assert_eq!(lease_rules.len(), 1, "one rule for leases");
    // The pipeline validates with a shared state URL, and is refused with a local one.
    let cm = of_kind(&objs, "ConfigMap")[0].clone();
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(
        dir.path(),
        "pipeline.yaml",
        cm["data"]["pipeline.yaml"].as_str().expect("pipeline.yaml"),
    );
    let validate = |state: &str| {
        bin()
            .arg("validate")
            .arg(&p)
            .env("WEBHOOK_URL", "https://hooks.example.com/x")
            .env("STATE_URL", state)
            .output()
            .expect("validate")
    };
    let ok = validate("postgres://eventflow:pw@postgres:5432/eventflow");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = validate("sqlite:///var/lib/eventflow/state.db");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("leader_election needs the state"));
}
