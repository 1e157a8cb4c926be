//! Crash test: `kill -9` the processor at random moments (≥ 10 times) while
//! 1,000 conversations send bursts; afterwards every inbound is stored once,
//! each burst is answered by exactly one reply listing exactly its ids, and
//! the database equals that of a run without crashes over the same log.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatpipe_tests::{create_topic, PrivateBroker, TestDb};
use common::*;
use futures::future::join_all;
use rand::Rng;
use uuid::Uuid;

const CONVERSATIONS: usize = 1_000;
const BURSTS: usize = 4;
const PER_BURST: usize = 3;
/// Records produced concurrently.
const CHUNK: usize = 50;

fn envs() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CHATPIPE_GROUPING_GAP", "1s"),
        ("CHATPIPE_LATE_TOLERANCE", "1200ms"),
        // Bursts carry explicit arrival stamps (100 ms apart within a burst,
        // seconds between bursts); a wall-clock watermark this far behind
        // never overtakes a burst still being sent, so the bursts, not the
        // broker's speed, decide the groups.
        ("CHATPIPE_WATERMARK_ALLOWANCE", "5s"),
        ("CHATPIPE_POLL_BATCH_SIZE", "500"),
        // Fewer empty fetches: the SQLite broker is CPU-bound on this box.
        ("CHATPIPE_FETCH_WAIT", "500ms"),
    ]
}

/// Waits until every inbound is stored and nothing changes for longer
/// than G + allowance (all groups replied).
async fn settled(db: &TestDb, inbound: usize) -> Snapshot {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let a = snapshot(db).await;
        if a.inbound.len() == inbound {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let b = snapshot(db).await;
            if a == b {
                return b;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not settled: {} inbound",
            a.inbound.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every inbound is in exactly one reply, and every reply is one row.
fn check_replies(s: &Snapshot) {
    assert_eq!(s.reply_rows as usize, s.replies.len(), "duplicate replies");
    let mut seen = std::collections::BTreeSet::new();
    for (_, text) in &s.replies {
        for line in text.lines().skip(1) {
            let id: Uuid = line.parse().unwrap();
            assert!(seen.insert(id), "{id} in two replies");
        }
    }
    assert_eq!(seen, s.inbound);
    assert_eq!(s.unreplied, 0);
}

/// (conversation, burst number) → the burst's message ids in arrival order.
type Bursts = BTreeMap<(Uuid, usize), Vec<Uuid>>;

/// Each burst (its ids in order) is exactly one reply's ids, and every
/// reply is one burst.
fn check_bursts(s: &Snapshot, bursts: &Bursts) {
    let mut expected: Vec<(Uuid, Vec<Uuid>)> = bursts
        .iter()
        .map(|((c, _), ids)| (*c, ids.clone()))
        .collect();
    let mut got: Vec<(Uuid, Vec<Uuid>)> = s
        .replies
        .iter()
        .map(|(c, text)| {
            let ids = text.lines().skip(1).map(|l| l.parse().unwrap()).collect();
            (*c, ids)
        })
        .collect();
    expected.sort();
    got.sort();
    assert_eq!(got.len(), expected.len(), "one reply per burst");
    assert_eq!(got, expected, "each reply lists exactly one burst's ids");
}

/// The broker for this test: a Tansu of its own with file (SQLite)
/// storage. (It used to wedge after ~13 restarts of the consumer while
/// records carried a header: see `EVENT_RECORDS_HAVE_HEADERS`.) Not the
/// memory engine: Tansu 0.6.0's memory storage misreports
/// partition end offsets and cannot serve a fetch from an offset inside a
/// multi-record batch, which is exactly what a restarted processor asks for
/// when its resume offset points inside a batch (the test then stalled a
/// few dozen records short of the end).
async fn broker() -> PrivateBroker {
    PrivateBroker::start().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_bursts_changes_nothing() {
    let started = std::time::Instant::now();
    let broker = broker().await;
    let bootstrap = broker.bootstrap.clone();
    let topic = create_topic(&bootstrap, 4).await;
    let db = TestDb::create().await.unwrap();
    let mut p = processor(&db, &bootstrap, &topic, &envs()).await;

    let convs: Vec<Uuid> = (0..CONVERSATIONS).map(|_| Uuid::new_v4()).collect();
    let done = Arc::new(AtomicBool::new(false));
    // (conversation, burst) → its message ids in arrival order.
    let bursts: Arc<Mutex<Bursts>> = Arc::default();
    let producer = {
        let (bootstrap, topic, convs, done, bursts) = (
            bootstrap.clone(),
            topic.clone(),
            convs.clone(),
            done.clone(),
            bursts.clone(),
        );
        tokio::spawn(async move {
            let prod = Producer::with_linger(&bootstrap, &topic, Duration::from_millis(50));
            for chunk in convs.chunks(CHUNK) {
                join_all(chunk.iter().map(|c| prod.send_ev(conv(*c)))).await;
            }
            for burst in 0..BURSTS {
                let base = chrono::Utc::now().timestamp_millis();
                for round in 0..PER_BURST {
                    // CHUNK conversations at a time (the SQLite broker is
                    // slower than memory storage). Arrival stamps 100 ms
                    // apart within a burst decide the groups, not the send
                    // rate; the reference run reads the same log.
                    let at = base + 100 * round as i64;
                    for chunk in convs.chunks(CHUNK) {
                        let sends: Vec<_> = chunk
                            .iter()
                            .map(|c| {
                                let id = Uuid::new_v4();
                                if let Ok(mut b) = bursts.lock() {
                                    b.entry((*c, burst)).or_default().push(id);
                                }
                                (msg(id, *c), at)
                            })
                            .collect();
                        join_all(sends.iter().map(|(e, at)| prod.send_at(e, *at))).await;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if burst + 1 < BURSTS {
                    tokio::time::sleep(Duration::from_millis(2_500)).await;
                }
            }
            // Close every other conversation: flushes its last group.
            for chunk in convs.iter().step_by(2).collect::<Vec<_>>().chunks(CHUNK) {
                join_all(chunk.iter().map(|c| prod.send_ev(close(**c)))).await;
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    let mut kills = 0;
    while kills < 10 || !done.load(Ordering::SeqCst) {
        // Long enough for a restarted processor to replay and fetch from
        // the SQLite broker before the next kill.
        let wait = rand::rng().random_range(500..2_500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        p.kill9();
        kills += 1;
        if let Err(e) = p.start().await {
            // The SQLite broker can be slow to answer a new client under
            // this load; readiness is not what this test measures.
            eprintln!("restart {kills}: {e:#}; waiting longer");
            p.wait_ready(Duration::from_secs(300)).await.unwrap();
        }
    }
    producer.await.unwrap();
    eprintln!("killed the processor {kills} times");

    let inbound = CONVERSATIONS * BURSTS * PER_BURST;
    if std::env::var("CRASH_DIAG").is_ok() {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let text = reqwest::get(format!("{}/metrics", p.base_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for l in text.lines().filter(|l| {
            l.starts_with("chatpipe_processor_lag")
                || l.starts_with("chatpipe_processor_open")
                || l.starts_with("chatpipe_processor_buffered")
                || l.starts_with("chatpipe_processor_rejections")
        }) {
            eprintln!("{l}");
        }
        let c = db.client().await.unwrap();
        for r in c.query("SELECT partition, resume_offset, processed_offset, owner_epoch FROM processor_partitions", &[]).await.unwrap() {
            let (pa, ro, po, e): (i32, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
            eprintln!("partition {pa}: resume {ro} processed {po} epoch {e}");
        }
        let s = snapshot(&db).await;
        eprintln!(
            "inbound {} rejected {:?}",
            s.inbound.len(),
            s.rejected.len()
        );
    }
    let crashed = settled(&db, inbound).await;
    check_replies(&crashed);
    let bursts = bursts.lock().unwrap().clone();
    assert_eq!(bursts.len(), CONVERSATIONS * BURSTS);
    check_bursts(&crashed, &bursts);
    assert!(crashed.rejected.is_empty(), "{:?}", crashed.rejected);
    drop(p);

    // The same log, processed once without crashes.
    let reference_db = TestDb::create().await.unwrap();
    let reference_processor = processor(&reference_db, &bootstrap, &topic, &envs()).await;
    let reference = settled(&reference_db, inbound).await;
    drop(reference_processor);
    assert_eq!(crashed, reference);
    eprintln!(
        "crash test finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(broker);
}
