//! dedup, aggregate and `rate_limit` running in the real engine, with tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use eventflow::component::StageKind;
use eventflow::engine::Topology;
use eventflow::event::{Event, EventData, Finalizers};
use eventflow::stages::aggregate::AggregateConfig;
use eventflow::stages::dedup::DedupConfig;
use eventflow::stages::rate_limit::RateLimitConfig;
use eventflow::testkit::{ChannelSource, CountingSink, PipelineBuilder, event};
use eventflow::yaml;

fn cfg<T: serde::de::DeserializeOwned>(yaml: &str) -> Arc<T> {
    Arc::new(yaml::from_node(&yaml::parse(yaml).expect("yaml")).expect("config"))
}

fn backoff(uid: &str, count: i64) -> EventData {
    EventData {
        reason: "BackOff".into(),
        kind: "Pod".into(),
        object_name: "web".into(),
        object_namespace: "shop".into(),
        type_: "Warning".into(),
        count,
        ..event(uid)
    }
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn aggregate_emits_on_window_close_and_flushes_open_windows_at_shutdown() {
    let (src, feed) = ChannelSource::new(4);
    let sink = CountingSink::collecting();
    let p = PipelineBuilder::new()
        .stage("src", "channel", StageKind::Source, &[], Arc::new(src), 0)
        .stage(
            "agg",
            "aggregate",
            StageKind::Transform,
            &["src"],
            cfg::<AggregateConfig>("window: 1m"),
            0,
        )
        .stage(
            "out",
            "counting",
            StageKind::Sink,
            &["agg"],
            Arc::new(sink.clone()),
            0,
        )
        .build();
    let topo = Topology::start(p).await.expect("start");
    feed.send((1..=5).map(|c| backoff("u1", c)).collect()).await;
    settle().await;
    assert_eq!(sink.get(), 0, "the window is open");
    tokio::time::sleep(Duration::from_secs(61)).await;
    settle().await;
    let got = sink.events();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].summary.as_ref().map(|s| (s.events, s.occurrences)),
        Some((5, 5))
    );
    // A new window, cut short by shutdown: flushed, not lost.
    let ack = feed.send(vec![backoff("u1", 9), backoff("u2", 1)]).await;
    settle().await;
    assert!(topo.shutdown(Duration::from_secs(5)).await.is_empty());
    let got = sink.events();
    assert_eq!(
        got.len(),
        2,
        "both Event objects are BackOffs of one Pod: one group"
    );
    // u1 grew 5 -> 9 (+4); u2 is seen for the first time with count 1.
    assert_eq!(
        got[1].summary.as_ref().map(|s| (s.events, s.occurrences)),
        Some((2, 5))
    );
    assert_eq!(
        ack.await.expect("ack"),
        eventflow::event::ack::Status::Delivered
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limit_wait_slows_the_source_and_drops_nothing() {
    let (src, feed) = ChannelSource::new(1);
    let sink = CountingSink::recording();
    let p = PipelineBuilder::new()
        .stage("src", "channel", StageKind::Source, &[], Arc::new(src), 0)
        .stage(
            "rl",
            "rate_limit",
            StageKind::Transform,
            &["src"],
            cfg::<RateLimitConfig>("limit: 10\nper: 1s\nwhen_limited: wait"),
            0,
        )
        .stage(
            "out",
            "counting",
            StageKind::Sink,
            &["rl"],
            Arc::new(sink.clone()),
            0,
        )
        .build();
    let topo = Topology::start(p).await.expect("start");
    let start = tokio::time::Instant::now();
    for i in 0..100 {
        feed.send_plain(vec![Event::new(event(&i.to_string()), Finalizers::None)])
            .await;
    }
    let fed = start.elapsed();
    drop(feed);
    assert!(topo.shutdown(Duration::from_secs(60)).await.is_empty());
    assert_eq!(sink.get(), 100, "nothing dropped");
    let uids = sink.uids();
    assert_eq!(
        uids,
        (0..100).map(|i| i.to_string()).collect::<Vec<_>>(),
        "in order"
    );
    // 100 events at 10/s with a burst of 10: about 9 s; the feeder was held back for most of it.
    assert!(
        start.elapsed() >= Duration::from_millis(8900),
        "{:?}",
        start.elapsed()
    );
    assert!(
        fed >= Duration::from_secs(6),
        "the source was slowed down: fed in {fed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn dedup_drops_repeats_in_the_engine() {
    let (src, feed) = ChannelSource::new(4);
    let sink = CountingSink::recording();
    let p = PipelineBuilder::new()
        .stage("src", "channel", StageKind::Source, &[], Arc::new(src), 0)
        .stage(
            "d",
            "dedup",
            StageKind::Transform,
            &["src"],
            cfg::<DedupConfig>("window: 10m"),
            0,
        )
        .stage(
            "out",
            "counting",
            StageKind::Sink,
            &["d"],
            Arc::new(sink.clone()),
            0,
        )
        .build();
    let topo = Topology::start(p).await.expect("start");
    let ack = feed
        .send(vec![backoff("u1", 1), backoff("u1", 2), backoff("u2", 1)])
        .await;
    settle().await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    feed.send(vec![backoff("u1", 3)]).await;
    settle().await;
    assert!(topo.shutdown(Duration::from_secs(5)).await.is_empty());
    assert_eq!(sink.uids(), vec!["u1", "u2", "u1"]);
    assert_eq!(
        ack.await.expect("ack"),
        eventflow::event::ack::Status::Delivered,
        "a dropped repeat is done"
    );
}
