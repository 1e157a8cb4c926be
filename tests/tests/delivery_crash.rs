//! `kill -9` of the delivery component under load loses nothing: the real
//! `chatpipe-delivery` binary sends a backlog of deliveries to the test
//! kit's fake Telegram server and is killed with SIGKILL three times while
//! it works; each time it is started again. Every message reaches the
//! provider at least once, every delivery ends `sent`, and every message
//! the provider received twice (the window between the provider's answer
//! and the commit of the outcome) is one the component counted as a
//! possible duplicate in the delivery's timeline.

use std::collections::HashMap;
use std::time::Duration;

use chatpipe_tests::fakes::FakeTelegram;
use chatpipe_tests::{eventually, Service, TestDb};
use uuid::Uuid;

const TOKEN: &str = "4242:crash-bot-token";
const N: usize = 400;

async fn queue(db: &tokio_postgres::Client, n: usize) -> Vec<String> {
    let contacts: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let chats: Vec<String> = (0..n).map(|i| (500_000 + i).to_string()).collect();
    let convs: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let msgs: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let texts: Vec<String> = (0..n).map(|i| format!("crash test reply {i}")).collect();
    let kinds: Vec<String> = vec!["tg".to_owned(); n];
    db.execute(
        "INSERT INTO contacts (id, channel, provider_user_id) SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[])",
        &[&contacts, &kinds, &chats],
    )
    .await
    .expect("contacts");
    db.execute(
        "INSERT INTO conversations (id, status, created_at, updated_at) SELECT c, 'OPEN', now(), now() FROM unnest($1::uuid[]) c",
        &[&convs],
    )
    .await
    .expect("conversations");
    db.execute(
        "INSERT INTO channel_conversations (conversation_id, channel, contact_id) SELECT c, 'tg', k FROM unnest($1::uuid[], $2::uuid[]) AS u(c, k)",
        &[&convs, &contacts],
    )
    .await
    .expect("channel conversations");
    db.execute(
        "INSERT INTO messages (id, conversation_id, direction, content, \"timestamp\", arrival) SELECT m, c, 'OUTBOUND', t, now(), now() FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS u(m, c, t)",
        &[&msgs, &convs, &texts],
    )
    .await
    .expect("messages");
    db.execute(
        "WITH q AS (INSERT INTO deliveries (message_id, conversation_id, channel, contact_id) SELECT m, c, 'tg', k FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS u(m, c, k) RETURNING id) INSERT INTO delivery_events (delivery_id, event, source) SELECT id, 'queued', 'processor' FROM q",
        &[&msgs, &convs, &contacts],
    )
    .await
    .expect("deliveries");
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_delivery_under_load_loses_nothing_and_counts_double_sends() {
    let db = TestDb::create().await.expect("db");
    let client = db.client().await.expect("client");
    let telegram = FakeTelegram::start(TOKEN).await.expect("fake telegram");
    let channels =
        serde_json::json!([{"name": "tg", "type": "telegram", "apiBaseUrl": telegram.base_url()}])
            .to_string();
    let texts = queue(&client, N).await;
    let env = [
        ("CHATPIPE_POSTGRES_URL", db.url.as_str()),
        ("CHATPIPE_CHANNELS", channels.as_str()),
        ("CHATPIPE_CHANNEL_TG_BOT_TOKEN", TOKEN),
        ("CHATPIPE_DELIVERY_CONCURRENCY", "16"),
        // ~4 s of work, so the kills land in the middle of it.
        ("CHATPIPE_DELIVERY_CHANNEL_RATE", "100"),
        ("CHATPIPE_DELIVERY_LEASE", "2s"),
    ];
    let mut delivery = Service::spawn("chatpipe-delivery", &env)
        .await
        .expect("delivery");
    let mut kills = 0;
    for round in 1..=3 {
        let target = round * N / 5;
        eventually(Duration::from_secs(60), "deliveries progress", || async {
            (telegram.sent().len() >= target).then_some(())
        })
        .await
        .expect("progress before the kill");
        delivery.kill9();
        kills += 1;
        delivery.start().await.expect("restart");
        delivery
            .wait_ready(Duration::from_secs(30))
            .await
            .expect("ready again");
    }
    telegram
        .wait_for_sent(N, Duration::from_secs(120))
        .await
        .expect("every message delivered");
    // Every delivery ends sent (settled after the last restart).
    eventually(Duration::from_secs(60), "every delivery sent", || async {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'sent'), count(*) FROM deliveries",
                &[],
            )
            .await
            .ok()?;
        let (done, all): (i64, i64) = (row.get(0), row.get(1));
        (done == all && all == N as i64).then_some(())
    })
    .await
    .expect("all sent");
    // Nothing lost (read again: `wait_for_sent` counts double sends too).
    let sent = telegram.sent();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in &sent {
        *counts.entry(s.text.as_str()).or_default() += 1;
    }
    for t in &texts {
        assert!(counts.contains_key(t.as_str()), "{t} was never sent");
    }
    // Every double send was counted as a possible duplicate.
    let doubles: Vec<&str> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(t, _)| *t)
        .collect();
    let flagged: i64 = client
        .query_one(
            "SELECT count(DISTINCT delivery_id) FROM delivery_events WHERE event = 'possible_duplicate'",
            &[],
        )
        .await
        .expect("events")
        .get(0);
    println!(
        "{kills} kills: {} messages, {} sent twice, {flagged} deliveries flagged as possible duplicates",
        N,
        doubles.len()
    );
    assert!(
        doubles.len() as i64 <= flagged,
        "{} double sends but only {flagged} flagged: {doubles:?}",
        doubles.len()
    );
    // At most the calls in flight at each kill can be sent twice.
    assert!(doubles.len() <= kills * 16, "{doubles:?}");
}
