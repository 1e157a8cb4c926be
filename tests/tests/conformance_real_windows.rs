//! The conformance subset at the spec's real windows: grouping gap
//! G = 5 s and late-arrival tolerance L = 6 s (the processor's defaults,
//! passed explicitly). Each case waits on the api with a deadline; the
//! sleeps only create the arrival gaps the rule is about, and every case
//! checks from the POSTs' wall-clock bounds that the gap it meant to
//! create really happened.

mod common;

use std::time::Duration;

use chatpipe_tests::{expected_reply, new_conversation, new_message};
use chrono::Utc;
use common::{chrono, event_time, inbound_ids, outbound, time, Options, Pipeline};
use uuid::Uuid;

#[tokio::test]
async fn real_single_message_is_answered_five_seconds_after_its_arrival() {
    let p = Pipeline::start(Options::real()).await;
    let (c, m) = (Uuid::new_v4(), Uuid::new_v4());
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    let sent = p
        .post_ok(&new_message(m, c, "Olá", event_time(5)), 202)
        .await;
    let view = p.wait_replies(c, 1).await;
    let first_seen = Utc::now();
    let gap = chrono(p.opts.gap);
    assert!(
        first_seen >= sent.before + gap,
        "the reply was visible {} after the message, before G = 5 s",
        first_seen - sent.before
    );
    let replies = outbound(&view);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["content"], expected_reply(&[m]));
    let arrival = time(&replies[0]["timestamp"]) - gap;
    let slack = chrono::Duration::milliseconds(2);
    assert!(arrival >= sent.before - slack && arrival <= sent.after + slack);
}

#[tokio::test]
async fn real_messages_three_seconds_apart_are_one_group() {
    let p = Pipeline::start(Options::real()).await;
    let c = Uuid::new_v4();
    let (m1, m2) = (Uuid::new_v4(), Uuid::new_v4());
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    let a = p
        .post_ok(&new_message(m1, c, "um", event_time(1)), 202)
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = p
        .post_ok(&new_message(m2, c, "dois", event_time(4)), 202)
        .await;
    assert!(
        b.after - a.before < chrono(p.opts.gap),
        "precondition: gap < G"
    );
    let view = p.wait_replies(c, 1).await;
    assert_eq!(inbound_ids(&view), [m1.to_string(), m2.to_string()]);
    let replies = outbound(&view);
    assert_eq!(replies.len(), 1, "{view}");
    assert_eq!(replies[0]["content"], expected_reply(&[m1, m2]));
}

#[tokio::test]
async fn real_messages_more_than_five_seconds_apart_are_two_groups() {
    let p = Pipeline::start(Options::real()).await;
    let c = Uuid::new_v4();
    let (m1, m2) = (Uuid::new_v4(), Uuid::new_v4());
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    let a = p
        .post_ok(&new_message(m1, c, "um", event_time(1)), 202)
        .await;
    tokio::time::sleep(Duration::from_millis(5600)).await;
    let b = p
        .post_ok(&new_message(m2, c, "dois", event_time(7)), 202)
        .await;
    assert!(
        b.before - a.after > chrono(p.opts.gap),
        "precondition: gap > G"
    );
    let view = p.wait_replies(c, 2).await;
    let contents: Vec<String> = outbound(&view)
        .iter()
        .map(|r| r["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(contents, [expected_reply(&[m1]), expected_reply(&[m2])]);
}

#[tokio::test]
async fn real_new_conversation_four_seconds_late_still_attaches_the_message() {
    let p = Pipeline::start(Options::real()).await;
    let (c, m) = (Uuid::new_v4(), Uuid::new_v4());
    let msg = p
        .post_ok(&new_message(m, c, "cheguei antes", event_time(5)), 202)
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let conv = p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    assert!(
        conv.after - msg.before < chrono(p.opts.tolerance),
        "precondition: within L"
    );
    let view = p.wait_replies(c, 1).await;
    assert_eq!(inbound_ids(&view), [m.to_string()]);
    assert_eq!(outbound(&view)[0]["content"], expected_reply(&[m]));
    assert!(p.rejected(c).await.is_empty());
}

#[tokio::test]
async fn real_new_conversation_seven_seconds_late_rejects_the_message() {
    let p = Pipeline::start(Options::real()).await;
    let (c, m) = (Uuid::new_v4(), Uuid::new_v4());
    let msg = p
        .post_ok(&new_message(m, c, "cedo demais", event_time(5)), 202)
        .await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let conv = p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    assert!(
        conv.before - msg.after > chrono(p.opts.tolerance),
        "precondition: past L"
    );
    let rejected = p.wait_rejected(c, m).await;
    assert_eq!(rejected["event_type"], "NEW_MESSAGE");
    let view = p.conversation(c).await.expect("the conversation exists");
    assert!(inbound_ids(&view).is_empty(), "{view}");
    assert!(outbound(&view).is_empty(), "{view}");
}
