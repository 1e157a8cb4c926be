//! The batch writes against real Postgres: an accepted INBOUND row is
//! visible (reply `NULL`) after the batch that accepts it; the batch that
//! closes its group writes the OUTBOUND and sets `reply_id` on the group's
//! rows (written by an earlier batch, or by the same one); replaying the
//! batches changes nothing.

use chatpipe_core::Event;
use chatpipe_processor::engine::domain::{EngineConfig, Record};
use chatpipe_processor::engine::effects::Effect;
use chatpipe_processor::engine::reply::reply_id;
use chatpipe_processor::engine::window::PartitionEngine;
use chatpipe_processor::ownership::{claim, PositionUpdate};
use chatpipe_processor::store::{write_batch, PartitionBatch};
use chatpipe_tests::TestDb;
use chrono::Utc;
use uuid::Uuid;

const T0: i64 = 1_750_000_000_000;

fn rec(offset: i64, at: i64, event: Event) -> Record {
    Record {
        offset,
        arrival_ms: T0 + at,
        event,
    }
}

fn msg(id: Uuid, c: Uuid) -> Event {
    Event::NewMessage {
        id,
        conversation_id: c,
        content: format!("content of {id}"),
        timestamp: Utc::now(),
    }
}

async fn rows(c: &tokio_postgres::Client) -> Vec<(Uuid, String, Option<Uuid>)> {
    c.query(
        "SELECT id, direction, reply_id FROM messages ORDER BY direction, arrival, id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[tokio::test]
async fn inbound_visible_after_accepting_batch_reply_set_on_close() {
    let db = TestDb::create().await.unwrap();
    let mut c = db.client().await.unwrap();
    let topic = "topic-visible";
    let epoch = claim(&c, topic, 0, "test").await.unwrap().epoch;
    let conv = Uuid::new_v4();
    let (m1, m2, m3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let batches: Vec<Vec<Record>> = vec![
        vec![
            rec(
                0,
                0,
                Event::NewConversation {
                    id: conv,
                    timestamp: Utc::now(),
                },
            ),
            rec(1, 1_000, msg(m1, conv)),
        ],
        // m2 joins m1's group; m3 (gap > G) closes it and opens its own,
        // which the last record's arrival closes in the same batch.
        vec![rec(2, 2_000, msg(m2, conv)), rec(3, 8_000, msg(m3, conv))],
        vec![rec(
            4,
            20_000,
            Event::CloseConversation {
                id: conv,
                timestamp: Utc::now(),
            },
        )],
    ];
    let mut engine = PartitionEngine::new(EngineConfig::default(), 0);
    let mut written = vec![];
    let mut states = vec![];
    engine.load_conversation(conv, Default::default());
    for records in &batches {
        engine.begin_batch(100);
        let mut effects: Vec<Effect> = vec![];
        for r in records {
            engine.on_record(r.clone(), &mut effects);
        }
        let b = PartitionBatch {
            position: PositionUpdate {
                partition: 0,
                epoch,
                resume_offset: engine.resume_offset(),
                processed_offset: engine.next_offset(),
                watermark_ms: engine.watermark(),
            },
            effects,
        };
        write_batch(&mut c, topic, std::slice::from_ref(&b))
            .await
            .unwrap();
        written.push(b);
        states.push(rows(&c).await);
    }
    let r12 = reply_id(&[m1, m2]);
    let r3 = reply_id(&[m3]);
    let inbound = |id, reply| (id, "INBOUND".to_string(), reply);
    let outbound = |id| (id, "OUTBOUND".to_string(), None);
    // After the accepting batch: visible, no reply.
    assert_eq!(states[0], vec![inbound(m1, None)]);
    // m1's group closed in batch 2 (its row from batch 1 is updated, m2's
    // is inserted with the reply); m3 is visible, its group still open.
    assert_eq!(
        states[1],
        vec![
            inbound(m1, Some(r12)),
            inbound(m2, Some(r12)),
            inbound(m3, None),
            outbound(r12)
        ]
    );
    // The close flushes m3's group.
    let last = vec![
        inbound(m1, Some(r12)),
        inbound(m2, Some(r12)),
        inbound(m3, Some(r3)),
        outbound(r12),
        outbound(r3),
    ];
    assert_eq!(states[2], last);

    // A replay after a crash that lost nothing: the engine re-emits the
    // open group's Inbound (row stored without reply) with its Outbound in
    // one batch; and every batch written again changes nothing.
    let mut replay = PartitionEngine::new(EngineConfig::default(), 0);
    let mut effects = vec![];
    replay.load_conversation(conv, Default::default());
    for r in batches.iter().flatten() {
        replay.on_record(r.clone(), &mut effects);
    }
    for b in written.iter().chain(std::iter::once(&PartitionBatch {
        position: written[2].position,
        effects,
    })) {
        write_batch(&mut c, topic, std::slice::from_ref(b))
            .await
            .unwrap();
    }
    assert_eq!(rows(&c).await, last);

    // The whole history twice in ONE batch (each effect repeated, the close
    // included) into an empty database: writable, and the same rows.
    let fresh = TestDb::create().await.unwrap();
    let mut f = fresh.client().await.unwrap();
    let epoch = claim(&f, topic, 0, "test").await.unwrap().epoch;
    let all: Vec<Effect> = written.iter().flat_map(|b| b.effects.clone()).collect();
    let twice = PartitionBatch {
        position: PositionUpdate {
            epoch,
            ..written[2].position
        },
        effects: all.iter().chain(all.iter()).cloned().collect(),
    };
    write_batch(&mut f, topic, &[twice]).await.unwrap();
    assert_eq!(rows(&f).await, last);
    let closed: Option<i64> = f
        .query_one(
            "SELECT closed_offset FROM processor_conversation_log WHERE conversation_id = $1",
            &[&conv],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(closed, Some(4));
}

/// A row stored without reply by an earlier batch, re-emitted by a replay
/// together with its group's reply: the insert's conflict path records the
/// reply on the stored row.
#[tokio::test]
async fn replayed_inbound_with_reply_in_same_batch_sets_reply() {
    let db = TestDb::create().await.unwrap();
    let mut c = db.client().await.unwrap();
    let topic = "topic-replay";
    let epoch = claim(&c, topic, 0, "test").await.unwrap().epoch;
    let conv = Uuid::new_v4();
    let m = Uuid::new_v4();
    let records = vec![
        rec(
            0,
            0,
            Event::NewConversation {
                id: conv,
                timestamp: Utc::now(),
            },
        ),
        rec(1, 1_000, msg(m, conv)),
    ];
    let position = |resume, processed| PositionUpdate {
        partition: 0,
        epoch,
        resume_offset: resume,
        processed_offset: processed,
        watermark_ms: None,
    };
    let mut engine = PartitionEngine::new(EngineConfig::default(), 0);
    engine.load_conversation(conv, Default::default());
    let mut first = vec![];
    for r in &records {
        engine.on_record(r.clone(), &mut first);
    }
    let b = PartitionBatch {
        position: position(engine.resume_offset(), engine.next_offset()),
        effects: first.clone(),
    };
    write_batch(&mut c, topic, &[b]).await.unwrap();
    assert_eq!(rows(&c).await, vec![(m, "INBOUND".to_string(), None)]);
    // Replay from the resume offset in one batch that also closes the group.
    let mut effects = first;
    engine.advance_watermark(T0 + 100_000, &mut effects);
    let b = PartitionBatch {
        position: position(engine.resume_offset(), engine.next_offset()),
        effects,
    };
    write_batch(&mut c, topic, &[b]).await.unwrap();
    let r = reply_id(&[m]);
    assert_eq!(
        rows(&c).await,
        vec![
            (m, "INBOUND".to_string(), Some(r)),
            (r, "OUTBOUND".to_string(), None)
        ]
    );
}

/// Two partitions of one batch accepted the same message id for different
/// conversations (neither could see the other's row when it decided): the
/// batch is refused as a whole (`IdTaken`, nothing written, where the
/// store once wrote the first row and silently dropped the second).
/// Written alone afterwards, the first to commit keeps the id and the
/// second is refused again, so it decides again seeing that row.
#[tokio::test]
async fn one_id_accepted_by_two_partitions_in_one_batch_is_refused() {
    use chatpipe_processor::store::StoreError;
    let db = TestDb::create().await.unwrap();
    let mut c = db.client().await.unwrap();
    let topic = "topic-collision";
    let m = Uuid::new_v4();
    let mut batches = Vec::new();
    for p in 0..2 {
        let epoch = claim(&c, topic, p, "test").await.unwrap().epoch;
        let conv = Uuid::new_v4();
        let mut engine = PartitionEngine::new(EngineConfig::default(), 0);
        engine.load_conversation(conv, Default::default());
        let mut effects = vec![];
        engine.on_record(
            rec(
                0,
                0,
                Event::NewConversation {
                    id: conv,
                    timestamp: Utc::now(),
                },
            ),
            &mut effects,
        );
        engine.on_record(rec(1, 1_000, msg(m, conv)), &mut effects);
        batches.push(PartitionBatch {
            position: PositionUpdate {
                partition: p,
                epoch,
                resume_offset: engine.resume_offset(),
                processed_offset: engine.next_offset(),
                watermark_ms: engine.watermark(),
            },
            effects,
        });
    }
    match write_batch(&mut c, topic, &batches).await {
        Err(StoreError::IdTaken(ids)) => assert_eq!(ids, vec![m]),
        other => panic!("expected IdTaken, got {other:?}"),
    }
    assert!(rows(&c).await.is_empty(), "nothing written");
    let conversations: i64 = c
        .query_one("SELECT count(*) FROM conversations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(conversations, 0, "the refused batch left nothing behind");

    write_batch(&mut c, topic, &batches[..1]).await.unwrap();
    match write_batch(&mut c, topic, &batches[1..]).await {
        Err(StoreError::IdTaken(ids)) => assert_eq!(ids, vec![m]),
        other => panic!("expected IdTaken, got {other:?}"),
    }
    assert_eq!(rows(&c).await, vec![(m, "INBOUND".to_string(), None)]);
}
