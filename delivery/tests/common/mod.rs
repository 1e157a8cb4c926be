//! Seeding the outbox of a fresh database, and reading it back.

#![allow(dead_code)]

use std::time::Duration;

use chatpipe_channels::ids;
use chatpipe_delivery::store::Store;
use chatpipe_tests::TestDb;
use uuid::Uuid;

/// A fresh migrated database; its URL without TLS so the worker LISTENs.
pub async fn database() -> (TestDb, String, tokio_postgres::Client) {
    let db = TestDb::create().await.expect("creating a test database");
    let url = format!("{}?sslmode=disable", db.url);
    let pg = db.client().await.expect("connecting");
    (db, url, pg)
}

/// A store of worker `owner` with `lease`.
pub fn store(url: &str, owner: &str, lease: Duration) -> Store {
    let pool = chatpipe_core::db::pool(url, 4).expect("pool");
    Store::new(pool, owner, lease)
}

/// Queues `text` to contact `user` of `channel` in `conversation`, as the
/// processor does; returns the delivery id.
pub async fn queue(
    pg: &tokio_postgres::Client,
    channel: &str,
    user: &str,
    conversation: Uuid,
    text: &str,
) -> i64 {
    let contact = ids::contact_id(channel, user);
    pg.execute(
        "INSERT INTO contacts (id, channel, provider_user_id) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
        &[&contact, &channel, &user],
    )
    .await
    .expect("contact");
    let message = Uuid::new_v4();
    pg.execute(
        "INSERT INTO messages (id, conversation_id, direction, content, \"timestamp\", arrival)
         VALUES ($1, $2, 'OUTBOUND', $3, now(), now())",
        &[&message, &conversation, &text],
    )
    .await
    .expect("message");
    let id: i64 = pg
        .query_one(
            "WITH d AS (INSERT INTO deliveries (message_id, conversation_id, channel, contact_id)
                        VALUES ($1, $2, $3, $4) RETURNING id)
             INSERT INTO delivery_events (delivery_id, event, source)
             SELECT id, 'queued', 'processor' FROM d RETURNING delivery_id",
            &[&message, &conversation, &channel, &contact],
        )
        .await
        .expect("delivery")
        .get(0);
    id
}

/// A delivery's row, as the tests read it.
#[derive(Debug, Clone)]
pub struct Row {
    pub status: String,
    pub attempts: i32,
    pub provider_message_id: Option<String>,
    pub error_code: Option<String>,
    pub error_reason: Option<String>,
    pub lease_owner: Option<String>,
    pub delivered_at_set: bool,
}

pub async fn row(pg: &tokio_postgres::Client, id: i64) -> Row {
    let r = pg
        .query_one(
            "SELECT status, attempts, provider_message_id, error_code, error_reason, lease_owner,
                    delivered_at IS NOT NULL
               FROM deliveries WHERE id = $1",
            &[&id],
        )
        .await
        .expect("delivery row");
    Row {
        status: r.get(0),
        attempts: r.get(1),
        provider_message_id: r.get(2),
        error_code: r.get(3),
        error_reason: r.get(4),
        lease_owner: r.get(5),
        delivered_at_set: r.get(6),
    }
}

/// The delivery's timeline: (event, code, source).
pub async fn events(pg: &tokio_postgres::Client, id: i64) -> Vec<(String, Option<String>, String)> {
    pg.query(
        "SELECT event, code, source FROM delivery_events WHERE delivery_id = $1 ORDER BY id",
        &[&id],
    )
    .await
    .expect("events")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// The names of the delivery's events.
pub async fn event_names(pg: &tokio_postgres::Client, id: i64) -> Vec<String> {
    events(pg, id).await.into_iter().map(|e| e.0).collect()
}
