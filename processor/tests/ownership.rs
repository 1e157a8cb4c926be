//! Ownership and fencing: the fencing functions against Postgres, and two
//! (then three) processors on one topic.

mod common;

use std::time::Duration;

use chatpipe_processor::engine::effects::{Effect, Inbound};
use chatpipe_processor::ownership::{claim, fence_and_advance, PositionUpdate};
use chatpipe_processor::store::{write_batch, PartitionBatch, StoreError};
use chatpipe_tests::{create_topic, eventually, kafka_bootstrap, TestDb};
use chrono::Utc;
use common::*;
use futures::future::join_all;
use uuid::Uuid;

#[tokio::test]
async fn stale_owner_batch_is_refused() {
    let db = TestDb::create().await.unwrap();
    let mut c = db.client().await.unwrap();
    let first = claim(&c, "topic-a", 0, "old").await.unwrap();
    let second = claim(&c, "topic-a", 0, "new").await.unwrap();
    assert_eq!(second.epoch, first.epoch + 1);
    let update = |epoch| PositionUpdate {
        partition: 0,
        epoch,
        resume_offset: 5,
        processed_offset: 7,
        watermark_ms: None,
    };
    assert_eq!(
        fence_and_advance(&c, "topic-a", &[update(first.epoch)])
            .await
            .unwrap(),
        vec![0]
    );
    assert!(fence_and_advance(&c, "topic-a", &[update(second.epoch)])
        .await
        .unwrap()
        .is_empty());

    // A whole batch of the stale owner is refused and writes nothing.
    let m = Uuid::new_v4();
    let batch = PartitionBatch {
        position: update(first.epoch),
        effects: vec![Effect::Inbound(Inbound {
            id: m,
            conversation_id: Uuid::new_v4(),
            content: "x".into(),
            timestamp: Utc::now(),
            arrival_ms: 0,
            offset: 3,
        })],
    };
    match write_batch(&mut c, "topic-a", std::slice::from_ref(&batch)).await {
        Err(StoreError::Fenced(p)) => assert_eq!(p, vec![0]),
        other => panic!("expected fencing, got {other:?}"),
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // The current owner's batch goes through.
    let mut ok = batch.clone();
    ok.position = update(second.epoch);
    write_batch(&mut c, "topic-a", &[ok]).await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let stored: Option<Uuid> = c
        .query_opt("SELECT id FROM messages WHERE id = $1", &[&m])
        .await
        .unwrap()
        .map(|r| r.get(0));
    assert_eq!(stored, Some(m));
}

async fn wave(prod: &Producer, convs: &[Uuid], first: bool) {
    if first {
        join_all(convs.iter().map(|c| prod.send_ev(conv(*c)))).await;
    }
    for _ in 0..2 {
        join_all(convs.iter().map(|c| prod.send_ev(msg(Uuid::new_v4(), *c)))).await;
    }
}

async fn wait_groups(db: &TestDb, inbound: usize, groups: usize) -> Snapshot {
    eventually(Duration::from_secs(30), "groups replied", || async {
        let s = snapshot(db).await;
        (s.inbound.len() == inbound && s.reply_rows as usize == groups && s.unreplied == 0)
            .then_some(s)
    })
    .await
    .unwrap()
}

async fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processors_fencing_and_takeover() {
    let bootstrap = kafka_bootstrap().await;
    let topic = create_topic(&bootstrap, 4).await;
    let db = TestDb::create().await.unwrap();
    // Each wave sends two messages to each of 200 conversations; the gap is
    // wide enough that a loaded two-core box keeps every conversation's two
    // messages within it (waves are separated by waiting for their replies).
    let short = [
        ("CHATPIPE_GROUPING_GAP", "2s"),
        ("CHATPIPE_LATE_TOLERANCE", "3s"),
        ("CHATPIPE_PROCESSOR_REPLICAS", "2"),
    ];
    let env = |ordinal: &'static str| {
        let mut e = short.to_vec();
        e.push(("CHATPIPE_PROCESSOR_ORDINAL", ordinal));
        e
    };
    let p0 = processor(&db, &bootstrap, &topic, &env("0")).await;
    let mut p1 = processor(&db, &bootstrap, &topic, &env("1")).await;
    assert_eq!(
        metric(&p0.base_url(), "chatpipe_processor_owned_partitions").await,
        2.0
    );
    assert_eq!(
        metric(&p1.base_url(), "chatpipe_processor_owned_partitions").await,
        2.0
    );

    let prod = Producer::new(&bootstrap, &topic);
    let convs: Vec<Uuid> = (0..200).map(|_| Uuid::new_v4()).collect();
    wave(&prod, &convs, true).await;
    wait_groups(&db, 400, 200).await;

    // A second owner for ordinal 0 (e.g. a replacement pod while the old
    // one still runs): it claims partitions 0 and 2; the old owner's next
    // batch is refused and it drops them.
    let p0b = processor(&db, &bootstrap, &topic, &env("0")).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    wave(&prod, &convs, false).await;
    wait_groups(&db, 800, 400).await;
    eventually(Duration::from_secs(10), "old owner fenced", || async {
        (metric(&p0.base_url(), "chatpipe_processor_owned_partitions").await == 0.0).then_some(())
    })
    .await
    .unwrap();
    assert!(metric(&p0.base_url(), "chatpipe_processor_fenced_batches_total").await >= 1.0);
    assert_eq!(
        metric(&p0b.base_url(), "chatpipe_processor_owned_partitions").await,
        2.0
    );

    // Stop ordinal 1 hard, send more, restart it: its partitions are
    // processed again within seconds, nothing lost or duplicated.
    p1.kill9();
    wave(&prod, &convs, false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    p1.start().await.unwrap();
    let s = wait_groups(&db, 1200, 600).await;
    eprintln!("takeover caught up in {:?}", started.elapsed());
    assert_eq!(s.replies.len(), 600);
    assert!(s.rejected.is_empty());
}
