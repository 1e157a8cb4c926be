//! Conformance under failure: the broker going away (503 + Retry-After,
//! nothing half-written), two ingest replicas racing on one conversation
//! id, and a processor crash in the middle of open groups (no reply lost,
//! none duplicated). Shortened windows.

mod common;

use std::time::Duration;

use chatpipe_tests::{expected_reply, new_conversation, new_message};
use common::{event_time, inbound_ids, outbound, Options, Pipeline};
use uuid::Uuid;

#[tokio::test]
async fn broker_down_is_503_with_retry_after_and_nothing_half_written() {
    let mut opts = Options::short();
    opts.private_broker = true;
    opts.ingest_env = vec![("CHATPIPE_PRODUCE_TIMEOUT".into(), "2s".into())];
    let mut p = Pipeline::start(opts).await;
    let ok = Uuid::new_v4();
    p.post_ok(&new_conversation(ok, event_time(0)), 201).await;

    p.broker.as_mut().unwrap().stop();
    let c = Uuid::new_v4();
    let base = p.ingest.base_url();
    let r = p.post_to(&base, &new_conversation(c, event_time(1))).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.body["__retry_after"].as_str().is_some(),
        "503 must carry Retry-After: {}",
        r.body
    );
    let r = p
        .post_to(
            &base,
            &new_message(Uuid::new_v4(), ok, "sem broker", event_time(2)),
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    // Nothing half-written: the refused NEW_CONVERSATION left no row, so the
    // same id is accepted once the broker is back.
    assert_eq!(p.get(&format!("/conversations/{c}/")).await.0, 404);
    p.broker.as_mut().unwrap().restart().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = p.post_to(&base, &new_conversation(c, event_time(3))).await;
        if r.status == 201 {
            break;
        }
        assert_eq!(r.status, 503, "while the broker comes back: {}", r.body);
        assert!(
            tokio::time::Instant::now() < deadline,
            "ingest never recovered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = Uuid::new_v4();
    p.post_ok(&new_message(m, c, "de volta", event_time(4)), 202)
        .await;
    let view = p.wait_replies(c, 1).await;
    assert_eq!(outbound(&view)[0]["content"], expected_reply(&[m]));
}

#[tokio::test]
async fn two_ingest_replicas_never_both_create_one_id() {
    let p = Pipeline::start(Options::short()).await;
    let second = p.spawn_ingest().await;
    let bases = [p.ingest.base_url(), second.base_url()];
    // An idempotent replay of a success says so (and wrote nothing).
    let fresh = |x: &common::Posted| x.header("idempotent-replay").is_none();
    for round in 0..20 {
        // The same event to both replicas at once: one creation, and one
        // replay of it answered like the first success.
        let c = Uuid::new_v4();
        let body = new_conversation(c, event_time(round));
        let (a, b) = tokio::join!(p.post_to(&bases[0], &body), p.post_to(&bases[1], &body));
        assert_eq!(
            (a.status, b.status),
            (201, 201),
            "round {round}: {} / {}",
            a.body,
            b.body
        );
        assert!(
            fresh(&a) != fresh(&b),
            "round {round}: exactly one creation: {} / {}",
            a.body,
            b.body
        );
        // Different events for one id: exactly one 201.
        let d = Uuid::new_v4();
        let (one, other) = (
            new_conversation(d, event_time(round)),
            new_conversation(d, event_time(round + 1)),
        );
        let (a, b) = tokio::join!(p.post_to(&bases[0], &one), p.post_to(&bases[1], &other));
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [201, 400],
            "round {round}: {} / {}",
            a.body,
            b.body
        );
        // Closing races the same way.
        let close = chatpipe_tests::close_conversation(c, event_time(round + 1));
        let (a, b) = tokio::join!(p.post_to(&bases[0], &close), p.post_to(&bases[1], &close));
        assert_eq!((a.status, b.status), (200, 200), "round {round}");
        assert!(fresh(&a) != fresh(&b), "round {round}: exactly one close");
        let (one, other) = (
            chatpipe_tests::close_conversation(d, event_time(round + 2)),
            chatpipe_tests::close_conversation(d, event_time(round + 3)),
        );
        let (a, b) = tokio::join!(p.post_to(&bases[0], &one), p.post_to(&bases[1], &other));
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [200, 400],
            "round {round}: {} / {}",
            a.body,
            b.body
        );
    }
}

#[tokio::test]
async fn processor_crash_mid_group_loses_and_duplicates_no_reply() {
    let mut p = Pipeline::start(Options {
        gap: Duration::from_millis(1500),
        tolerance: Duration::from_millis(2000),
        ..Options::short()
    })
    .await;
    let mut convs = Vec::new();
    for i in 0..20 {
        let c = Uuid::new_v4();
        p.post_ok(&new_conversation(c, event_time(0)), 201).await;
        let ms: Vec<Uuid> = (0..2).map(|_| Uuid::new_v4()).collect();
        for (j, m) in ms.iter().enumerate() {
            p.post_ok(
                &new_message(*m, c, &format!("c{i}"), event_time(1 + j as i64)),
                202,
            )
            .await;
        }
        convs.push((c, ms));
    }
    // Crash while (most of) these groups are open, then restart.
    p.processors[0].kill9();
    let more = Uuid::new_v4();
    let c0 = convs[0].0;
    p.post_ok(
        &new_message(more, c0, "durante a queda", event_time(5)),
        202,
    )
    .await;
    p.processors[0].start().await.expect("processor restarts");
    let mut replies_seen = Vec::new();
    for (idx, (c, ms)) in convs.iter().enumerate() {
        let mut want = ms.clone();
        if idx == 0 {
            want.push(more);
        }
        let want_ids: Vec<String> = want.iter().map(Uuid::to_string).collect();
        let view = p
            .wait_conversation(*c, "every inbound message replied", |v| {
                let mut covered = replied_ids(v);
                covered.sort();
                let mut w = want_ids.clone();
                w.sort();
                inbound_ids(v) == want_ids && covered == w
            })
            .await;
        assert_eq!(
            inbound_ids(&view),
            want.iter().map(Uuid::to_string).collect::<Vec<_>>()
        );
        // Every inbound message is covered by exactly one reply.
        let replies = outbound(&view);
        let covered = replied_ids(&view);
        let mut sorted = covered.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), covered.len(), "an id replied twice: {view}");
        let mut want_sorted: Vec<String> = want.iter().map(Uuid::to_string).collect();
        want_sorted.sort();
        assert_eq!(sorted, want_sorted, "{view}");
        replies_seen.push(replies.len());
    }
    // And nothing more appears later.
    tokio::time::sleep(p.opts.gap * 2).await;
    for ((c, _), n) in convs.iter().zip(replies_seen) {
        let later = p.conversation(*c).await.unwrap();
        assert_eq!(outbound(&later).len(), n, "{later}");
    }
}

/// Ids listed in the OUTBOUND replies of a view, with repetitions.
fn replied_ids(view: &serde_json::Value) -> Vec<String> {
    outbound(view)
        .iter()
        .flat_map(|r| {
            r["content"]
                .as_str()
                .unwrap_or_default()
                .lines()
                .skip(1)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}
