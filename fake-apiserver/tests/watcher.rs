//! The real kube watcher against the fake: the fidelity matrix of the facts document.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fake_apiserver::{CloseMode, FakeApiServer, Op, sample_event};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::api::events::v1::Event as EventsEvent;
use kube::Api;
use kube::runtime::watcher::{self, Event};

const T: Duration = Duration::from_secs(10);

fn names<K: kube::Resource>(evs: &[Event<K>]) -> Vec<String> {
    evs.iter()
        .map(|e| match e {
            Event::Init => "Init".to_string(),
            Event::InitDone => "InitDone".to_string(),
            Event::InitApply(k) => {
                format!("InitApply({})", k.meta().name.clone().unwrap_or_default())
            }
            Event::Apply(k) => format!("Apply({})", k.meta().name.clone().unwrap_or_default()),
            Event::Delete(k) => format!("Delete({})", k.meta().name.clone().unwrap_or_default()),
        })
        .collect()
}

type Rx<K> = tokio::sync::mpsc::UnboundedReceiver<Result<Event<K>, watcher::Error>>;

/// Polls the watcher continuously (it only makes requests while polled).
fn spawn<K>(api: Api<K>, cfg: watcher::Config) -> Rx<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut s = watcher::watcher(api, cfg).boxed();
        while let Some(item) = s.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    rx
}

async fn take<K>(s: &mut Rx<K>, n: usize) -> Vec<Event<K>> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(T, s.recv()).await {
            Ok(Some(Ok(e))) => out.push(e),
            Ok(Some(Err(e))) => panic!("unexpected watcher error: {e}"),
            _ => panic!("stream ended or timed out after {} items", out.len()),
        }
    }
    out
}

fn seed(f: &FakeApiServer, n: usize) {
    for i in 0..n {
        f.create(
            "default",
            sample_event("default", &format!("pod-{i}.1"), "BackOff", "Warning", "m"),
        )
        .unwrap();
    }
}

#[tokio::test]
async fn paginated_list_then_watch_from_the_list_rv() {
    let f = FakeApiServer::start().await.unwrap();
    seed(&f, 5);
    let api: Api<CoreEvent> = Api::all(f.client());
    let mut s = spawn(api, watcher::Config::default().page_size(2));
    let evs = take(&mut s, 7).await;
    assert_eq!(names(&evs)[0], "Init");
    assert_eq!(names(&evs)[6], "InitDone");
    let rv = f.rv().to_string();
    let w = f
        .wait_for_request(fake_apiserver::Recorded::is_watch, T)
        .await
        .unwrap();
    assert_eq!(w.rv(), Some(rv.as_str()));
    let lists: Vec<_> = f
        .requests()
        .into_iter()
        .filter(fake_apiserver::Recorded::is_list)
        .collect();
    assert_eq!(lists.len(), 3);
    assert!(!lists[0].has_continue() && lists[1].has_continue() && lists[2].has_continue());

    // B: create, patch, delete.
    f.create(
        "default",
        sample_event("default", "new.1", "Pulled", "Normal", "m"),
    )
    .unwrap();
    f.bump_count("default", "new.1").unwrap();
    f.delete("default", "new.1").unwrap();
    assert_eq!(
        names(&take(&mut s, 3).await),
        ["Apply(new.1)", "Apply(new.1)", "Delete(new.1)"]
    );

    // C and D: a graceful close and an abort resume from the last rv, no duplicates.
    for mode in [CloseMode::Graceful, CloseMode::Abort] {
        let before = f.requests().iter().filter(|r| r.is_watch()).count();
        f.close_watches(mode);
        assert!(
            f.wait_for_requests(before + 1, fake_apiserver::Recorded::is_watch, T)
                .await
        );
        let last = f
            .requests()
            .into_iter()
            .rfind(fake_apiserver::Recorded::is_watch)
            .unwrap();
        assert_eq!(last.rv(), Some(f.rv().to_string().as_str()));
        f.create(
            "default",
            sample_event("default", &format!("after-{mode:?}.1"), "X", "Normal", "m"),
        )
        .unwrap();
        assert_eq!(
            names(&take(&mut s, 1).await),
            [format!("Apply(after-{mode:?}.1)")]
        );
    }
}

#[tokio::test]
async fn expired_watch_relists_and_503_is_absorbed_by_the_client() {
    let f = FakeApiServer::start().await.unwrap();
    seed(&f, 3);
    f.faults(|x| x.expire_next_watch = 1);
    f.fail_next(Op::List, 503, "ServiceUnavailable", "later");
    let api: Api<CoreEvent> = Api::all(f.client());
    let mut s = spawn(api, watcher::Config::default());
    let _ = take(&mut s, 5).await;
    match tokio::time::timeout(T, s.recv()).await {
        Ok(Some(Err(watcher::Error::WatchError(st)))) => assert_eq!(st.code, 410),
        other => panic!("expected a 410 watch error, got {other:?}"),
    }
    assert_eq!(names(&take(&mut s, 5).await)[0], "Init");
    let lists = f.requests().iter().filter(|r| r.is_list()).count();
    assert_eq!(lists, 3, "one retried 503, the first list, the relist");
}

#[tokio::test]
async fn events_api_token_auth_and_malformed_lines() {
    let f = FakeApiServer::start().await.unwrap();
    seed(&f, 2);
    f.faults(|x| x.require_bearer = Some("s3cr3t".into()));
    let dir = std::env::temp_dir().join(format!("fake-kc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kc = dir.join("kubeconfig");
    f.write_kubeconfig(&kc, Some("s3cr3t")).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&kc).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    cfg.proxy_url = None;
    let client = kube::Client::try_from(cfg).unwrap();
    let api: Api<EventsEvent> = Api::all(client);
    let mut s = spawn(api, watcher::Config::default());
    let evs = take(&mut s, 4).await;
    match &evs[1] {
        Event::InitApply(e) => assert_eq!(e.note.as_deref(), Some("m")),
        _ => panic!("expected an item"),
    }
    assert!(
        f.requests()
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer s3cr3t"))
    );
    assert!(f.wait_for_watchers(1, T).await);
    f.inject_line("{not json");
    match tokio::time::timeout(T, s.recv()).await {
        Ok(Some(Err(watcher::Error::WatchFailed(_)))) => {}
        other => panic!("expected a watch failure, got {other:?}"),
    }
    f.create(
        "default",
        sample_event("default", "later.1", "X", "Normal", "after"),
    )
    .unwrap();
    assert_eq!(names(&take(&mut s, 1).await), ["Apply(later.1)"]);
}
