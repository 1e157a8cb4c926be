//! The outbox against real Postgres: a reply of a channel conversation is
//! queued for delivery (one `deliveries` row, one `queued` event, one
//! `message_meta` row) in the transaction that writes it, on the normal
//! path and on the stranded-rows path of a partition reset; a reply of
//! another conversation queues nothing; a replayed batch queues nothing
//! twice. And the replies carry what the reply policy answered.

use std::collections::HashSet;

use chatpipe_core::Event;
use chatpipe_processor::engine::domain::{EngineConfig, Record};
use chatpipe_processor::engine::effects::{AnsweredBy, Effect};
use chatpipe_processor::engine::logcheck::PositionCheck;
use chatpipe_processor::engine::reply::reply_id;
use chatpipe_processor::engine::window::PartitionEngine;
use chatpipe_processor::metrics::Metrics;
use chatpipe_processor::ownership::{claim, PositionUpdate};
use chatpipe_processor::reply_policy::{PolicyConfig, ReplyPolicy};
use chatpipe_processor::store::{
    queue_deliveries, reset_partition, resolve_reply_ids, write_batch, PartitionBatch,
};
use chatpipe_tests::TestDb;
use chrono::{DateTime, Utc};
use uuid::Uuid;

const T0: i64 = 1_750_000_000_000;

fn rec(offset: i64, at: i64, event: Event) -> Record {
    Record {
        offset,
        arrival_ms: T0 + at,
        event,
    }
}

fn new_conv(id: Uuid) -> Event {
    Event::NewConversation {
        id,
        timestamp: Utc::now(),
    }
}

fn msg(id: Uuid, c: Uuid, content: &str, at: DateTime<Utc>) -> Event {
    Event::NewMessage {
        id,
        conversation_id: c,
        content: content.to_owned(),
        timestamp: at,
    }
}

/// Makes `conv` a channel conversation of a contact on channel `tg`.
async fn seed_channel(c: &tokio_postgres::Client, conv: Uuid) -> Uuid {
    let contact = Uuid::new_v4();
    c.execute(
        "INSERT INTO contacts (id, channel, provider_user_id, display_name) VALUES ($1, 'tg', $2, 'Ana')",
        &[&contact, &contact.simple().to_string()],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO channel_conversations (conversation_id, channel, contact_id) VALUES ($1, 'tg', $2)",
        &[&conv, &contact],
    )
    .await
    .unwrap();
    contact
}

/// (message id, conversation, channel, contact, status) of every delivery.
async fn deliveries(c: &tokio_postgres::Client) -> Vec<(Uuid, Uuid, String, Uuid, String)> {
    c.query(
        "SELECT message_id, conversation_id, channel, contact_id, status FROM deliveries ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

/// (message id, event, source) of every delivery event.
async fn events(c: &tokio_postgres::Client) -> Vec<(Uuid, String, String)> {
    c.query(
        "SELECT d.message_id, e.event, e.source FROM delivery_events e
           JOIN deliveries d ON d.id = e.delivery_id ORDER BY e.id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// (message id, conversation, channel, author kind) of every message_meta row.
async fn metas(c: &tokio_postgres::Client) -> Vec<(Uuid, Uuid, Option<String>, Option<String>)> {
    c.query(
        "SELECT message_id, conversation_id, channel, author_kind FROM message_meta ORDER BY created_at, message_id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// Feeds `records` to `engine` and returns the partition's batch.
fn feed(engine: &mut PartitionEngine, epoch: i64, records: Vec<Record>) -> PartitionBatch {
    engine.begin_batch(100);
    let mut effects = vec![];
    for r in records {
        engine.on_record(r, &mut effects);
    }
    PartitionBatch {
        position: PositionUpdate {
            partition: 0,
            epoch,
            resume_offset: engine.resume_offset(),
            processed_offset: engine.next_offset(),
            watermark_ms: engine.watermark(),
        },
        effects,
    }
}

#[tokio::test]
async fn channel_replies_are_queued_once_and_others_not_at_all() {
    let db = TestDb::create().await.unwrap();
    let mut c = db.client().await.unwrap();
    let topic = "topic-outbox";
    let epoch = claim(&c, topic, 0, "test").await.unwrap().epoch;
    let (ch, plain) = (Uuid::new_v4(), Uuid::new_v4());
    let contact = seed_channel(&c, ch).await;
    let (m1, m2, p1) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let t1 = DateTime::parse_from_rfc3339("2025-06-01T10:00:00.250Z")
        .unwrap()
        .with_timezone(&Utc);
    let mut engine = PartitionEngine::new(EngineConfig::default(), 0);
    let first = feed(
        &mut engine,
        epoch,
        vec![
            rec(0, 0, new_conv(ch)),
            rec(1, 0, new_conv(plain)),
            rec(2, 1_000, msg(m1, ch, "what's the price?", t1)),
            rec(3, 1_100, msg(p1, plain, "hi", t1)),
            rec(4, 2_000, msg(m2, ch, "thanks", t1)),
        ],
    );
    write_batch(&mut c, topic, std::slice::from_ref(&first))
        .await
        .unwrap();
    assert!(deliveries(&c).await.is_empty(), "no reply yet");
    // A later record closes both groups (its arrival passes last + G).
    let mut second = feed(
        &mut engine,
        epoch,
        vec![rec(5, 60_000, new_conv(Uuid::new_v4()))],
    );
    // The replies carry their groups' messages in arrival order.
    let replies: Vec<_> = second
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Outbound(o) => Some(o.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(replies.len(), 2);
    let ch_reply = replies.iter().find(|o| o.conversation_id == ch).unwrap();
    let texts: Vec<(Uuid, &str, DateTime<Utc>)> = ch_reply
        .messages
        .iter()
        .map(|m| (m.id, m.content.as_str(), m.timestamp))
        .collect();
    assert_eq!(
        texts,
        vec![(m1, "what's the price?", t1), (m2, "thanks", t1)]
    );
    // The policy answers before the write (as the pipeline does).
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        r#"{"rules":[{"keyword":"price","answer":"It costs 10 EUR."}]}"#,
    )
    .unwrap();
    let policy = ReplyPolicy::new(
        &PolicyConfig {
            template: "Got {{ count }}.".into(),
            rules_file: Some(rules),
            rules_refresh: std::time::Duration::from_secs(1),
            bot_url: None,
            bot_timeout: std::time::Duration::from_secs(1),
            bot_token: None,
        },
        Metrics::new().unwrap(),
    )
    .unwrap();
    policy.answer_effects(second.effects.iter_mut()).await;
    resolve_reply_ids(&c, std::slice::from_mut(&mut second), &HashSet::new())
        .await
        .unwrap();
    let written = write_batch(&mut c, topic, std::slice::from_ref(&second))
        .await
        .unwrap();
    assert_eq!(written.deliveries_queued, 1);

    let r_ch = reply_id(&[m1, m2]);
    let r_plain = reply_id(&[p1]);
    let contents: Vec<(Uuid, String)> = c
        .query(
            "SELECT id, content FROM messages WHERE direction = 'OUTBOUND' ORDER BY content",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        contents,
        vec![
            (r_plain, "Got 1.".to_owned()),
            (r_ch, "It costs 10 EUR.".to_owned())
        ]
    );
    let answered: Vec<AnsweredBy> = second
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Outbound(o) => Some(o.answered_by),
            _ => None,
        })
        .collect();
    assert!(answered.contains(&AnsweredBy::Faq) && answered.contains(&AnsweredBy::Template));

    let expected_deliveries = vec![(r_ch, ch, "tg".to_owned(), contact, "queued".to_owned())];
    let expected_events = vec![(r_ch, "queued".to_owned(), "processor".to_owned())];
    let expected_metas = vec![(r_ch, ch, Some("tg".to_owned()), Some("bot".to_owned()))];
    assert_eq!(deliveries(&c).await, expected_deliveries);
    assert_eq!(events(&c).await, expected_events);
    assert_eq!(metas(&c).await, expected_metas);

    // A replayed batch (a crash after the commit, before the positions
    // were known) writes nothing new and queues nothing.
    let again = write_batch(&mut c, topic, &[first, second]).await.unwrap();
    assert_eq!(again.deliveries_queued, 0);
    // And the statement itself never queues a delivery twice.
    assert_eq!(
        queue_deliveries(&c, &[r_ch, r_plain], &[ch, plain])
            .await
            .unwrap(),
        0
    );
    assert_eq!(queue_deliveries(&c, &[], &[]).await.unwrap(), 0);
    assert_eq!(deliveries(&c).await, expected_deliveries);
    assert_eq!(events(&c).await, expected_events);
    assert_eq!(metas(&c).await, expected_metas);
}

#[tokio::test]
async fn queue_order_follows_the_batch() {
    let db = TestDb::create().await.unwrap();
    let c = db.client().await.unwrap();
    let conv = Uuid::new_v4();
    seed_channel(&c, conv).await;
    let other = Uuid::new_v4();
    seed_channel(&c, other).await;
    let ids: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let convs: Vec<Uuid> = (0..20)
        .map(|i| if i % 3 == 0 { other } else { conv })
        .collect();
    assert_eq!(queue_deliveries(&c, &ids, &convs).await.unwrap(), 20);
    let queued: Vec<Uuid> = deliveries(&c).await.into_iter().map(|d| d.0).collect();
    assert_eq!(queued, ids, "delivery ids follow the replies' order");
}

#[tokio::test]
async fn stranded_replies_of_a_reset_are_queued() {
    let db = TestDb::create().await.unwrap();
    let mut c = db.client().await.unwrap();
    let topic = "topic-reset";
    let first_claim = claim(&c, topic, 0, "test").await.unwrap();
    let (ch, plain) = (Uuid::new_v4(), Uuid::new_v4());
    seed_channel(&c, ch).await;
    let (m1, p1) = (Uuid::new_v4(), Uuid::new_v4());
    let mut engine = PartitionEngine::new(EngineConfig::default(), 0);
    // Accepted, visible, groups still open: their records pin offset 2.
    let batch = feed(
        &mut engine,
        first_claim.epoch,
        vec![
            rec(0, 0, new_conv(ch)),
            rec(1, 0, new_conv(plain)),
            rec(2, 1_000, msg(m1, ch, "opening hours?", Utc::now())),
            rec(3, 1_000, msg(p1, plain, "hello", Utc::now())),
        ],
    );
    write_batch(&mut c, topic, &[batch]).await.unwrap();
    let stored = chatpipe_processor::ownership::positions_if_owner(&c, topic, 0, first_claim.epoch)
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        r#"{"rules":[{"regex":"(?i)open(ing)? hours","answer":"9 to 5."}]}"#,
    )
    .unwrap();
    let policy = ReplyPolicy::new(
        &PolicyConfig {
            template: chatpipe_settings::processor::DEFAULT_REPLY_TEMPLATE.into(),
            rules_file: Some(rules),
            rules_refresh: std::time::Duration::from_secs(1),
            bot_url: None,
            bot_timeout: std::time::Duration::from_secs(1),
            bot_token: None,
        },
        Metrics::new().unwrap(),
    )
    .unwrap();
    // Retention removed the records: the log starts at 10.
    let reset = reset_partition(
        &mut c,
        topic,
        0,
        first_claim.epoch,
        PositionCheck::BeforeStart,
        stored,
        (10, 12),
        "test",
        &EngineConfig::default(),
        &policy,
    )
    .await
    .unwrap();
    assert_eq!(reset.stranded_answered, 2);
    assert_eq!(reset.deliveries_queued, 1);
    let r_ch = reply_id(&[m1]);
    let replies: Vec<(Uuid, String)> = c
        .query(
            "SELECT id, content FROM messages WHERE direction = 'OUTBOUND' ORDER BY content",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        replies,
        vec![
            (r_ch, "9 to 5.".to_owned()),
            (reply_id(&[p1]), format!("Mensagens recebidas:\n{p1}\n")),
        ]
    );
    let d = deliveries(&c).await;
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].0, d[0].1, d[0].4.as_str()), (r_ch, ch, "queued"));
    assert_eq!(
        events(&c).await,
        vec![(r_ch, "queued".to_owned(), "processor".to_owned())]
    );
    assert_eq!(
        metas(&c).await,
        vec![(r_ch, ch, Some("tg".to_owned()), Some("bot".to_owned()))]
    );
}
