//! The spec scenarios end to end: real broker, real Postgres, the real
//! `chatpipe-processor` binary. Windows are shortened (G = 500 ms,
//! L = 600 ms) except in `real_windows_5s_6s`.

mod common;

use std::time::Duration;

use chatpipe_tests::{create_topic, eventually, expected_reply, kafka_bootstrap, TestDb};
use common::*;
use uuid::Uuid;

const SHORT: &[(&str, &str)] = &[
    ("CHATPIPE_GROUPING_GAP", "500ms"),
    ("CHATPIPE_LATE_TOLERANCE", "600ms"),
];

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_scenarios_short_windows() {
    let bootstrap = kafka_bootstrap().await;
    let topic = create_topic(&bootstrap, 4).await;
    let db = TestDb::create().await.unwrap();
    let _p = processor(&db, &bootstrap, &topic, SHORT).await;
    let prod = Producer::new(&bootstrap, &topic);

    // Burst → one reply, ids in arrival order; and a gap > G splits.
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (a1, a2, a3, b1, b2) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    prod.send(&conv(a)).await;
    prod.send(&conv(b)).await;
    prod.send(&msg(a1, a)).await;
    prod.send(&msg(b1, b)).await;
    sleep_ms(100).await;
    prod.send(&msg(a2, a)).await;
    sleep_ms(100).await;
    prod.send(&msg(a3, a)).await;
    // Duplicate delivery of a2: changes nothing.
    prod.send(&msg(a2, a)).await;
    sleep_ms(800).await;
    prod.send(&msg(b2, b)).await;

    // Orphan attached: the message 300 ms before its conversation.
    let (c, c1) = (Uuid::new_v4(), Uuid::new_v4());
    prod.send(&msg(c1, c)).await;
    sleep_ms(300).await;
    prod.send(&conv(c)).await;

    // Orphan rejected: its conversation never comes.
    let (d, d1) = (Uuid::new_v4(), Uuid::new_v4());
    prod.send(&msg(d1, d)).await;

    // Close flushes at once; a message after the close is rejected.
    let (e, e1, e2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    prod.send(&conv(e)).await;
    prod.send(&msg(e1, e)).await;
    prod.send(&close(e)).await;
    prod.send(&msg(e2, e)).await;
    // Close of an unknown conversation is rejected.
    let unknown = Uuid::new_v4();
    prod.send(&close(unknown)).await;

    let wait = Duration::from_secs(20);
    eventually(wait, "reply of a", || async {
        let r = replies_of(&db, a).await;
        (r.len() == 1).then_some(r)
    })
    .await
    .map(|r| assert_eq!(r[0].0, expected_reply(&[a1, a2, a3])))
    .unwrap();
    eventually(wait, "two replies of b", || async {
        let r = replies_of(&db, b).await;
        (r.len() == 2).then_some(r)
    })
    .await
    .map(|r| {
        assert_eq!(r[0].0, expected_reply(&[b1]));
        assert_eq!(r[1].0, expected_reply(&[b2]));
    })
    .unwrap();
    eventually(wait, "reply of the attached orphan", || async {
        let r = replies_of(&db, c).await;
        (r.len() == 1).then_some(r)
    })
    .await
    .map(|r| assert_eq!(r[0].0, expected_reply(&[c1])))
    .unwrap();
    eventually(wait, "orphan rejection", || async {
        let r = rejections_of(&db, d1).await;
        (!r.is_empty()).then_some(r)
    })
    .await
    .map(|r| assert_eq!(r, vec!["conversation_not_created_in_time".to_string()]))
    .unwrap();
    eventually(wait, "close flush and rejection", || async {
        let r = rejections_of(&db, e2).await;
        let replies = replies_of(&db, e).await;
        (!r.is_empty() && replies.len() == 1).then_some((r, replies))
    })
    .await
    .map(|(r, replies)| {
        assert_eq!(r, vec!["conversation_closed".to_string()]);
        assert_eq!(replies[0].0, expected_reply(&[e1]));
    })
    .unwrap();
    eventually(wait, "close of unknown rejected", || async {
        let r = rejections_of(&db, unknown).await;
        (!r.is_empty()).then_some(r)
    })
    .await
    .map(|r| assert_eq!(r, vec!["conversation_not_found".to_string()]))
    .unwrap();

    let s = snapshot(&db).await;
    assert_eq!(s.conversations.get(&e).map(String::as_str), Some("CLOSED"));
    assert_eq!(s.conversations.get(&a).map(String::as_str), Some("OPEN"));
    assert_eq!(s.unreplied, 0);
    assert_eq!(s.inbound.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_windows_5s_6s() {
    let bootstrap = kafka_bootstrap().await;
    let topic = create_topic(&bootstrap, 2).await;
    let db = TestDb::create().await.unwrap();
    let mut p = processor(&db, &bootstrap, &topic, &[]).await;
    let prod = Producer::new(&bootstrap, &topic);
    let (c, m1, m2, m3) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    // An orphan 1 s ahead of its conversation, then a trickle every 3 s.
    prod.send(&msg(m1, c)).await;
    sleep_ms(1_000).await;
    prod.send(&conv(c)).await;
    sleep_ms(2_000).await;
    prod.send(&msg(m2, c)).await;
    sleep_ms(3_000).await;
    let last = prod.send(&msg(m3, c)).await;
    sleep_ms(4_000).await;
    assert!(
        replies_of(&db, c).await.is_empty(),
        "no reply before last + 5 s"
    );
    // The accepted messages are visible already, without reply.
    assert_eq!(
        inbound_of(&db, c).await,
        vec![(m1, None), (m2, None), (m3, None)],
        "INBOUND rows are written when accepted"
    );
    let r = eventually(Duration::from_secs(10), "the reply", || async {
        let r = replies_of(&db, c).await;
        (!r.is_empty()).then_some(r)
    })
    .await
    .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, expected_reply(&[m1, m2, m3]));
    assert_eq!(r[0].1, last + 5_000, "timestamp = last arrival + G");
    assert!(r[0].2 >= last + 5_000, "written after last arrival + G");
    let reply = chatpipe_processor::engine::reply::reply_id(&[m1, m2, m3]);
    assert_eq!(
        inbound_of(&db, c).await,
        vec![(m1, Some(reply)), (m2, Some(reply)), (m3, Some(reply))],
        "the reply is recorded on its INBOUND rows"
    );
    // SIGTERM: the batch in progress is committed and the process exits 0.
    assert!(p.kill(), "graceful shutdown on SIGTERM");
}
