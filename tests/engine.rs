//! The engine's promises, through the real topology: acknowledgements wait for every sink,
//! fan-out and fan-in deliver every event, a slow sink slows the source, shutdown drains, and
//! a middle stage replaced many times while events flow loses and repeats nothing.

mod support;

use std::sync::Arc;
use std::time::Duration;

use eventflow::component::StageKind;
use eventflow::engine::Topology;
use eventflow::event::ack::Status;
use eventflow::testkit::{
    ChannelSource, CountingSink, PipelineBuilder, event, filter, source_filter_sink,
};
use support::wait_for;
use tokio::sync::Semaphore;

#[tokio::test]
async fn an_event_fanned_out_to_two_sinks_is_acknowledged_after_both_commit() {
    let (src, feed) = ChannelSource::new(4);
    let (gate_a, gate_b) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    let (a, b) = (
        CountingSink::gated(gate_a.clone()),
        CountingSink::gated(gate_b.clone()),
    );
    let p = PipelineBuilder::new()
        .stage("src", "channel", StageKind::Source, &[], Arc::new(src), 0)
        .stage(
            "a",
            "counting",
            StageKind::Sink,
            &["src"],
            Arc::new(a.clone()),
            0,
        )
        .stage(
            "b",
            "counting",
            StageKind::Sink,
            &["src"],
            Arc::new(b.clone()),
            0,
        )
        .build();
    let topo = Topology::start(p).await.expect("start");
    let mut ack = feed.send(vec![event("e1"), event("e2")]).await;

    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(ack.try_recv().is_err(), "nothing committed yet");
    gate_a.add_permits(1);
    wait_for("sink a", Duration::from_secs(20), || a.get() == 2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(ack.try_recv().is_err(), "only one of two sinks committed");
    gate_b.add_permits(1);
    let status = tokio::time::timeout(Duration::from_secs(5), ack)
        .await
        .expect("acked")
        .expect("status");
    assert_eq!(status, Status::Delivered);
    assert_eq!((a.get(), b.get()), (2, 2));
    assert!(topo.shutdown(Duration::from_secs(5)).await.is_empty());
}

#[tokio::test]
async fn events_dropped_by_a_filter_are_acknowledged_as_done() {
    let (src, feed) = ChannelSource::new(4);
    let sink = CountingSink::recording();
    let p = source_filter_sink(Arc::new(src), "types: [Warning]", Arc::new(sink.clone()));
    let topo = Topology::start(p).await.expect("start");
    let ack = feed.send(vec![event("normal-only")]).await;
    let status = tokio::time::timeout(Duration::from_secs(5), ack)
        .await
        .expect("acked")
        .expect("status");
    assert_eq!(status, Status::Delivered);
    assert_eq!(sink.get(), 0);
    topo.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn fan_in_delivers_the_union() {
    let (s1, f1) = ChannelSource::new(4);
    let (s2, f2) = ChannelSource::new(4);
    let sink = CountingSink::recording();
    let p = PipelineBuilder::new()
        .stage("s1", "channel", StageKind::Source, &[], Arc::new(s1), 0)
        .stage("s2", "channel", StageKind::Source, &[], Arc::new(s2), 0)
        .stage(
            "out",
            "counting",
            StageKind::Sink,
            &["s1", "s2"],
            Arc::new(sink.clone()),
            0,
        )
        .build();
    let topo = Topology::start(p).await.expect("start");
    f1.send(vec![event("a"), event("b")]).await;
    f2.send(vec![event("c")]).await;
    wait_for("3 events", Duration::from_secs(20), || sink.get() == 3).await;
    let mut got = sink.uids();
    got.sort();
    assert_eq!(got, vec!["a", "b", "c"]);
    topo.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_stuck_sink_slows_the_source_instead_of_growing_memory() {
    let (src, feed) = ChannelSource::new(1);
    let gate = Arc::new(Semaphore::new(0));
    let sink = CountingSink::gated(gate.clone());
    let p = source_filter_sink(Arc::new(src), "{}", Arc::new(sink.clone()));
    let topo = Topology::start(p).await.expect("start");
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acc = accepted.clone();
    let feeder = tokio::spawn(async move {
        for i in 0..1000 {
            feed.send_plain(vec![eventflow::event::Event::new(
                event(&i.to_string()),
                eventflow::event::Finalizers::default(),
            )])
            .await;
            acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    // Source queue (1) + two edges of CHANNEL_CAPACITY batches + one batch held in each task.
    let bound = 1 + 2 * eventflow::component::CHANNEL_CAPACITY + 4;
    assert!(
        n <= bound,
        "{n} batches accepted while the sink was stuck (bound {bound})"
    );
    gate.add_permits(10_000);
    feeder.await.expect("feeder");
    wait_for("all 1000", Duration::from_secs(20), || sink.get() == 1000).await;
    topo.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_delivers_every_event_already_read() {
    let (src, feed) = ChannelSource::new(64);
    let gate = Arc::new(Semaphore::new(0));
    let sink = CountingSink::gated(gate.clone());
    let p = source_filter_sink(Arc::new(src), "{}", Arc::new(sink.clone()));
    let topo = Topology::start(p).await.expect("start");
    let mut acks = Vec::new();
    for i in 0..10 {
        acks.push(
            feed.send((0..10).map(|j| event(&format!("{i}-{j}"))).collect())
                .await,
        );
    }
    // Let the source hand everything to the graph, then shut down while the sink is stuck.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let g = gate.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        g.add_permits(1000);
    });
    assert!(topo.shutdown(Duration::from_secs(10)).await.is_empty());
    assert_eq!(sink.get(), 100);
    for a in acks {
        assert_eq!(a.await.expect("ack"), Status::Delivered);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_middle_stage_while_events_flow_loses_and_repeats_nothing() {
    const N: usize = 50_000;
    const RELOADS: i64 = 30;
    let (src, feed) = ChannelSource::new(8);
    let src = Arc::new(src);
    let sink = Arc::new(CountingSink::recording());
    let pipeline = |version: i64| {
        // Each version is a changed filter (its YAML differs), so each reload rebuilds it.
        PipelineBuilder::new()
            .stage("src", "channel", StageKind::Source, &[], src.clone(), 0)
            .stage(
                "mid",
                "filter",
                StageKind::Transform,
                &["src"],
                filter("types: [Normal]"),
                version,
            )
            .stage(
                "out",
                "counting",
                StageKind::Sink,
                &["mid"],
                sink.clone(),
                0,
            )
            .build()
    };
    let mut topo = Topology::start(pipeline(0)).await.expect("start");
    let feeder = tokio::spawn(async move {
        for chunk in 0..N / 100 {
            let batch = (0..100)
                .map(|i| {
                    eventflow::event::Event::new(
                        event(&(chunk * 100 + i).to_string()),
                        eventflow::event::Finalizers::default(),
                    )
                })
                .collect();
            feed.send_plain(batch).await;
            if chunk % 10 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    for v in 1..=RELOADS {
        let report = topo.apply(pipeline(v)).await.expect("reload");
        assert_eq!(report.diff.changed, vec!["mid"]);
        assert_eq!(report.diff.kept, vec!["src", "out"]);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    feeder.await.expect("feeder");
    assert!(topo.shutdown(Duration::from_secs(20)).await.is_empty());
    let mut uids = sink.uids();
    assert_eq!(uids.len(), N, "events lost or repeated");
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), N, "some events arrived twice");
}

/// A stage type whose build panics (a bug), for the rollback test.
#[derive(Debug)]
struct PanicsWhenBuilt;

impl eventflow::component::StageConfig for PanicsWhenBuilt {
    fn build<'a>(
        &'a self,
        _cx: &'a eventflow::component::BuildContext,
    ) -> futures::future::BoxFuture<
        'a,
        Result<eventflow::component::Stage, eventflow::component::BuildError>,
    > {
        Box::pin(async { panic!("a bug in a stage type's build") })
    }
}

#[tokio::test]
async fn a_panic_while_building_a_reloaded_stage_rolls_back_and_the_pipeline_keeps_running() {
    let (src, feed) = ChannelSource::new(4);
    let sink = CountingSink::recording();
    let p = source_filter_sink(Arc::new(src), "types: [Normal]", Arc::new(sink.clone()));
    let mut topo = Topology::start(p.clone()).await.expect("start");
    let mut bad = p.clone();
    let extra = PipelineBuilder::new()
        .stage(
            "extra",
            "panics",
            StageKind::Sink,
            &["src"],
            Arc::new(PanicsWhenBuilt),
            0,
        )
        .build();
    bad.stages.extend(extra.stages);
    let err = topo.apply(bad).await.expect_err("the build panicked");
    assert!(err.to_string().contains("panicked while building"), "{err}");
    assert!(
        err.to_string().contains("a bug in a stage type's build"),
        "{err}"
    );
    // Untouched: events still flow, and nothing is reported failed.
    let ack = feed.send(vec![event("after")]).await;
    let status = tokio::time::timeout(Duration::from_secs(5), ack)
        .await
        .expect("acked")
        .expect("status");
    assert_eq!(status, Status::Delivered);
    assert_eq!(sink.uids(), vec!["after"]);
    assert!(topo.shutdown(Duration::from_secs(5)).await.is_empty());
}

#[tokio::test]
async fn a_batch_held_by_a_sink_that_stops_without_committing_fails() {
    let (src, feed) = ChannelSource::new(4);
    let gate = Arc::new(Semaphore::new(0));
    let sink = CountingSink::gated(gate.clone());
    let p = PipelineBuilder::new()
        .stage("src", "channel", StageKind::Source, &[], Arc::new(src), 0)
        .stage(
            "a",
            "counting",
            StageKind::Sink,
            &["src"],
            Arc::new(sink),
            0,
        )
        .build();
    let topo = Topology::start(p).await.expect("start");
    let ack = feed.send(vec![event("held")]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.close(); // the sink gives up before its commit: the batch is dropped unacknowledged
    let status = tokio::time::timeout(Duration::from_secs(5), ack)
        .await
        .expect("acked")
        .expect("status");
    assert_eq!(
        status,
        Status::Errored,
        "dropped without an outcome is a failure"
    );
    topo.shutdown(Duration::from_secs(5)).await;
}

/// Two pipelines in one process, each with a webhook stage `hook`: the one whose receiver is
/// down is not ready; the other one does not see that (health belongs to its pipeline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipelines_in_one_process_keep_their_health_apart() {
    let hook = |url: &str| -> Arc<dyn eventflow::component::StageConfig> {
        let yaml = format!(
            "url: {url}\nunready_after: 100ms\nretries: 1000\nbackoff: {{initial: 10ms, max: 20ms}}\n"
        );
        Arc::new(
            eventflow::yaml::from_node::<eventflow::stages::webhook::WebhookConfig>(
                &eventflow::yaml::parse(&yaml).expect("yaml"),
            )
            .expect("webhook config"),
        )
    };
    let good_url = support::receiver(0);
    let (src_a, feed_a) = ChannelSource::new(4);
    let (src_b, feed_b) = ChannelSource::new(4);
    let a = eventflow::testkit::source_to_sink(
        Arc::new(src_a),
        "hook",
        "webhook",
        hook("http://127.0.0.1:1/down"),
        0,
    )
    .build();
    let b =
        eventflow::testkit::source_to_sink(Arc::new(src_b), "hook", "webhook", hook(&good_url), 0)
            .build();
    let ta = Topology::start(a).await.expect("start a");
    let tb = Topology::start(b).await.expect("start b");
    let _ack_a = feed_a.send(vec![event("a1")]).await;
    let ack_b = feed_b.send(vec![event("b1")]).await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), ack_b)
            .await
            .expect("b delivers")
            .expect("status"),
        Status::Delivered
    );
    wait_for("pipeline a not ready", Duration::from_secs(20), || {
        !ta.health().problems().is_empty()
    })
    .await;
    assert!(
        ta.health().problems()[0].contains("stage `hook`"),
        "{:?}",
        ta.health().problems()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tb.health().problems().is_empty(),
        "b sees only its own stages: {:?}",
        tb.health().problems()
    );
    tb.shutdown(Duration::from_secs(5)).await;
    ta.shutdown(Duration::from_millis(200)).await;
}

/// Two pipelines in one process with the same stage ids have their own tap points: a listener
/// on one sees its events only (tap points were one process-wide registry).
#[tokio::test]
async fn two_pipelines_in_one_process_have_their_own_taps() {
    let start = || async {
        let (src, feed) = ChannelSource::new(4);
        let p = source_filter_sink(
            Arc::new(src),
            "types: [Warning]",
            Arc::new(CountingSink::default()),
        );
        (Topology::start(p).await.expect("start"), feed)
    };
    let (a, feed_a) = start().await;
    let (b, feed_b) = start().await;
    let mut on_a = a.taps().point("f").subscribe(16);
    let mut on_b = b.taps().point("f").subscribe(16);
    let mut e = event("only-in-a");
    e.type_ = "Warning".into();
    feed_a.send(vec![e]).await.await.expect("acked");
    let line = tokio::time::timeout(Duration::from_secs(5), on_a.rx.recv())
        .await
        .expect("a tapped line")
        .expect("open");
    assert!(line.contains("only-in-a"), "{line}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(on_b.rx.try_recv().is_err(), "b's tap saw a's event");
    drop(feed_b);
    assert!(a.shutdown(Duration::from_secs(5)).await.is_empty());
    assert!(b.shutdown(Duration::from_secs(5)).await.is_empty());
}
