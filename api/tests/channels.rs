//! The channel endpoints of the api against real Postgres: a fresh migrated
//! database per test, rows seeded directly (as ingest, the processor and
//! chatpipe-delivery would write them), the real router on a free port,
//! queried over HTTP.

use std::collections::BTreeSet;
use std::time::Duration;

use chatpipe_api::agents::{self, NewAgent};
use chatpipe_api::auth::Role;
use chatpipe_api::config::Config;
use chatpipe_api::metrics::Metrics;
use chatpipe_api::routes::AppState;
use chatpipe_settings::channels::{parse_channels, Channels};
use chrono::{DateTime, TimeZone, Utc};
use clap::Parser;
use serde_json::{json, Value};
use uuid::Uuid;

const SECRET: &str = "test-secret-test-secret-test-secret-0123";

struct Api {
    base: String,
    db_url: String,
    pg: tokio_postgres::Client,
    http: reqwest::Client,
    metrics: Metrics,
}

/// How a test's api runs.
struct Setup {
    /// With `--jwt-secret` (password sign-in, bearer tokens).
    auth: bool,
    /// `SET ROLE` of the pool ("" keeps the login role).
    role: &'static str,
    /// `--channels`.
    channels: &'static str,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            auth: false,
            role: "",
            channels: r#"[{"name":"tg","type":"telegram"},{"name":"wa","type":"whatsappCloud"}]"#,
        }
    }
}

async fn start(setup: Setup) -> Api {
    let name = format!("chatpipe_api_ch_{}", Uuid::new_v4().simple());
    let db_url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    chatpipe_core::db::ensure_database(&db_url).await.unwrap();
    chatpipe_core::db::migrate(&db_url).await.unwrap();
    let pg = chatpipe_core::db::connect(&db_url).await.unwrap();
    let metrics = Metrics::new().unwrap();
    let pool =
        chatpipe_api::store::readonly_pool(&db_url, 8, Duration::from_secs(5), setup.role).unwrap();
    let auth = if setup.auth {
        let config = Config::try_parse_from([
            "chatpipe-api",
            "--postgres-url",
            &db_url,
            "--jwt-secret",
            SECRET,
        ])
        .unwrap();
        chatpipe_api::auth_of(&config, &metrics).unwrap()
    } else {
        None
    };
    let channels: Channels = parse_channels(setup.channels).unwrap();
    let state = AppState {
        pool,
        default_limit: 50,
        max_limit: 500,
    };
    let app = chatpipe_api::app_with(state, metrics.clone(), auth, channels);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Api {
        base: format!("http://{addr}"),
        db_url,
        pg,
        http: reqwest::Client::new(),
        metrics,
    }
}

fn t(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_750_000_000 + s, 0).unwrap()
}

fn ts(s: i64) -> String {
    chatpipe_core::event::format_timestamp(t(s))
}

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value, headers)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (s, v, _) = self
            .call(reqwest::Method::GET, path, None, None, None)
            .await;
        (s, v)
    }

    async fn get_as(&self, path: &str, token: &str) -> (u16, Value) {
        let (s, v, _) = self
            .call(reqwest::Method::GET, path, Some(token), None, None)
            .await;
        (s, v)
    }

    /// `POST /conversations/{c}/messages`.
    async fn send(
        &self,
        c: Uuid,
        content: &str,
        key: Option<&str>,
        token: Option<&str>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        self.call(
            reqwest::Method::POST,
            &format!("/conversations/{c}/messages"),
            token,
            key,
            Some(json!({ "content": content })),
        )
        .await
    }

    async fn retry(&self, id: i64, token: Option<&str>) -> (u16, Value) {
        let (s, v, _) = self
            .call(
                reqwest::Method::POST,
                &format!("/deliveries/{id}/retry"),
                token,
                None,
                None,
            )
            .await;
        (s, v)
    }

    async fn count(&self, sql: &str) -> i64 {
        self.pg.query_one(sql, &[]).await.unwrap().get(0)
    }

    async fn conversation(&self, id: Uuid, status: &str, created: DateTime<Utc>) {
        self.pg
            .execute(
                "INSERT INTO conversations (id, status, created_at, updated_at, closed_at) \
                 VALUES ($1, $2, $3, $3, $4)",
                &[
                    &id,
                    &status,
                    &created,
                    &(status == "CLOSED").then_some(created),
                ],
            )
            .await
            .unwrap();
    }

    /// A contact of `channel`; returns its id.
    async fn contact(
        &self,
        channel: &str,
        user: &str,
        name: Option<&str>,
        created: DateTime<Utc>,
    ) -> Uuid {
        let id = Uuid::new_v4();
        self.pg
            .execute(
                "INSERT INTO contacts (id, channel, provider_user_id, display_name, created_at, \
                 last_seen_at) VALUES ($1, $2, $3, $4, $5, $5)",
                &[&id, &channel, &user, &name, &created],
            )
            .await
            .unwrap();
        id
    }

    /// A conversation `contact` opened through `channel`.
    async fn channel_conversation(
        &self,
        id: Uuid,
        channel: &str,
        contact: Uuid,
        status: &str,
        created: DateTime<Utc>,
    ) {
        self.conversation(id, status, created).await;
        self.pg
            .execute(
                "INSERT INTO channel_conversations (conversation_id, channel, contact_id, created_at) \
                 VALUES ($1, $2, $3, $4)",
                &[&id, &channel, &contact, &created],
            )
            .await
            .unwrap();
    }

    async fn message(&self, id: Uuid, conv: Uuid, dir: &str, content: &str, at: DateTime<Utc>) {
        self.pg
            .execute(
                "INSERT INTO messages (id, conversation_id, direction, content, \"timestamp\", arrival) \
                 VALUES ($1, $2, $3, $4, $5, $5)",
                &[&id, &conv, &dir, &content, &at],
            )
            .await
            .unwrap();
    }

    /// A `message_meta` row.
    #[allow(clippy::too_many_arguments)]
    async fn meta(
        &self,
        message: Uuid,
        conv: Uuid,
        channel: &str,
        contact: Option<Uuid>,
        agent: Option<Uuid>,
        author: &str,
        kind: &str,
        media: Option<&str>,
    ) {
        self.pg
            .execute(
                "INSERT INTO message_meta (message_id, conversation_id, channel, contact_id, \
                 agent_id, author_kind, kind, media_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &message, &conv, &channel, &contact, &agent, &author, &kind, &media,
                ],
            )
            .await
            .unwrap();
    }

    /// A delivery of `message` in `status` with a `queued` event (and a
    /// `failed` one when failed); returns its id.
    async fn delivery(
        &self,
        message: Uuid,
        conv: Uuid,
        channel: &str,
        contact: Uuid,
        status: &str,
    ) -> i64 {
        let failed = status == "failed";
        let id: i64 = self
            .pg
            .query_one(
                "INSERT INTO deliveries (message_id, conversation_id, channel, contact_id, status, \
                 attempts, error_code, error_reason, failed_at, sent_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $9 THEN now() END, \
                         CASE WHEN $5 IN ('sent', 'delivered', 'read') THEN now() END) \
                 RETURNING id",
                &[
                    &message,
                    &conv,
                    &channel,
                    &contact,
                    &status,
                    &(if failed { 3i32 } else { 0 }),
                    &failed.then_some("403"),
                    &failed.then_some("Forbidden: bot was blocked by the user"),
                    &failed,
                ],
            )
            .await
            .unwrap()
            .get(0);
        self.pg
            .execute(
                "INSERT INTO delivery_events (delivery_id, event, source) VALUES ($1, 'queued', 'processor')",
                &[&id],
            )
            .await
            .unwrap();
        if failed {
            self.pg
                .execute(
                    "INSERT INTO delivery_events (delivery_id, event, code, reason, source) \
                     VALUES ($1, 'failed', '403', 'Forbidden: bot was blocked by the user', 'delivery')",
                    &[&id],
                )
                .await
                .unwrap();
        }
        id
    }

    /// Creates an agent and signs it in; returns (id, access token).
    async fn agent(&self, username: &str, role: Role) -> (Uuid, String) {
        let id = agents::create(
            &self.pg,
            &NewAgent {
                username,
                password: "correct horse battery",
                role,
                display_name: None,
            },
        )
        .await
        .unwrap()
        .id;
        let (status, body, _) = self
            .call(
                reqwest::Method::POST,
                "/auth/token",
                None,
                None,
                Some(json!({"username": username, "password": "correct horse battery"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        (id, body["access_token"].as_str().unwrap().to_owned())
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let url = self.db_url.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let name = url.rsplit('/').next().unwrap().to_owned();
                if let Ok(admin) =
                    chatpipe_core::db::connect("postgres://postgres@127.0.0.1:5432/postgres").await
                {
                    let _ = admin
                        .execute(
                            &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                            &[],
                        )
                        .await;
                }
            })
        })
        .join();
    }
}

/// A Telegram conversation of contact "Ana" with one INBOUND message.
async fn tg_conversation(api: &Api) -> (Uuid, Uuid) {
    let ana = api.contact("tg", "1001", Some("Ana"), t(0)).await;
    let c = Uuid::new_v4();
    api.channel_conversation(c, "tg", ana, "OPEN", t(0)).await;
    let m = Uuid::new_v4();
    api.message(m, c, "INBOUND", "Olá", t(1)).await;
    api.meta(m, c, "tg", Some(ana), None, "contact", "text", None)
        .await;
    (c, ana)
}

#[tokio::test]
async fn an_agent_answer_to_a_channel_conversation_is_queued_in_one_transaction() {
    let api = start(Setup::default()).await;
    let (c, ana) = tg_conversation(&api).await;
    let (status, body, headers) = api.send(c, "Hi Ana, how can I help?", None, None).await;
    assert_eq!(status, 202, "{body}");
    assert!(headers.get("idempotent-replay").is_none());
    assert_eq!(keys(&body), ["channel", "conversation_id", "id", "status"]);
    assert_eq!(body["conversation_id"], c.to_string());
    assert_eq!(body["status"], "queued");
    assert_eq!(body["channel"], "tg");
    let id: Uuid = body["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(id.get_version_num(), 4);

    let row = api
        .pg
        .query_one(
            "SELECT m.direction, m.content, m.reply_id, m.\"timestamp\" = m.arrival AS same, \
                    abs(extract(epoch FROM now() - m.\"timestamp\")) < 60 AS recent, \
                    mm.author_kind, mm.agent_id, mm.channel, mm.kind, mm.contact_id, \
                    d.status, d.channel AS d_channel, d.contact_id AS d_contact, d.attempts \
             FROM messages m JOIN message_meta mm ON mm.message_id = m.id \
             JOIN deliveries d ON d.message_id = m.id WHERE m.id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>("direction"), "OUTBOUND");
    assert_eq!(row.get::<_, String>("content"), "Hi Ana, how can I help?");
    assert_eq!(row.get::<_, Option<Uuid>>("reply_id"), None);
    assert!(row.get::<_, bool>("same"));
    assert!(row.get::<_, bool>("recent"));
    assert_eq!(row.get::<_, String>("author_kind"), "agent");
    assert_eq!(row.get::<_, Option<Uuid>>("agent_id"), None);
    assert_eq!(
        row.get::<_, Option<String>>("channel").as_deref(),
        Some("tg")
    );
    assert_eq!(row.get::<_, String>("kind"), "text");
    assert_eq!(row.get::<_, Option<Uuid>>("contact_id"), None);
    assert_eq!(row.get::<_, String>("status"), "queued");
    assert_eq!(row.get::<_, String>("d_channel"), "tg");
    assert_eq!(row.get::<_, Uuid>("d_contact"), ana);
    assert_eq!(row.get::<_, i32>("attempts"), 0);
    let events = api
        .pg
        .query(
            "SELECT e.event, e.source FROM delivery_events e JOIN deliveries d ON d.id = e.delivery_id \
             WHERE d.message_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let events: Vec<(String, String)> = events.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(events, [("queued".to_owned(), "api".to_owned())]);

    // The conversation view shows it with its author and delivery.
    let (status, view) = api.get(&format!("/conversations/{c}/")).await;
    assert_eq!(status, 200, "{view}");
    let msgs = view["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    let sent = &msgs[1];
    assert_eq!(sent["id"], id.to_string());
    assert_eq!(sent["type"], "OUTBOUND");
    assert_eq!(
        sent["author"],
        json!({"kind": "agent", "id": null, "name": null})
    );
    assert_eq!(sent["delivery"]["status"], "queued");
    assert_eq!(sent["channel"], "tg");
    assert_eq!(
        api.metrics
            .agent_messages
            .with_label_values(&["queued"])
            .get(),
        1
    );
}

#[tokio::test]
async fn a_plain_conversation_stores_the_answer_with_nothing_to_deliver() {
    let api = start(Setup::default()).await;
    let c = Uuid::new_v4();
    api.conversation(c, "OPEN", t(0)).await;
    let (status, body, _) = api.send(c, "stored only", None, None).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "stored");
    assert_eq!(body["channel"], Value::Null);
    assert_eq!(api.count("SELECT count(*) FROM deliveries").await, 0);
    assert_eq!(api.count("SELECT count(*) FROM messages").await, 1);
    let (_, view) = api.get(&format!("/conversations/{c}/")).await;
    let m = &view["messages"][0];
    assert_eq!(m["author"]["kind"], "agent");
    assert_eq!(m["delivery"], Value::Null);
    assert_eq!(m["channel"], Value::Null);
    assert_eq!(view["channel"], Value::Null);
    assert_eq!(view["contact"], Value::Null);
    assert_eq!(
        api.metrics
            .agent_messages
            .with_label_values(&["stored"])
            .get(),
        1
    );
}

#[tokio::test]
async fn the_conversation_view_adds_channel_contact_authors_and_deliveries() {
    let api = start(Setup::default()).await;
    let (c, ana) = tg_conversation(&api).await;
    let inbound: Uuid = api
        .pg
        .query_one("SELECT id FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    // A photo from Ana, the bot's reply (failed) and a plain conversation's
    // message without meta.
    let photo = Uuid::new_v4();
    api.message(photo, c, "INBOUND", "", t(2)).await;
    api.meta(
        photo,
        c,
        "tg",
        Some(ana),
        None,
        "contact",
        "image",
        Some("AgAD-file"),
    )
    .await;
    let reply = Uuid::new_v4();
    api.message(reply, c, "OUTBOUND", "Mensagens recebidas", t(3))
        .await;
    api.meta(reply, c, "tg", None, None, "bot", "text", None)
        .await;
    api.delivery(reply, c, "tg", ana, "failed").await;
    let updated: DateTime<Utc> = api
        .pg
        .query_one("SELECT updated_at FROM deliveries", &[])
        .await
        .unwrap()
        .get(0);

    for path in [
        format!("/conversations/{c}/"),
        format!("/conversations/{c}"),
    ] {
        let (status, view) = api.get(&path).await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(
            keys(&view),
            [
                "channel",
                "contact",
                "created_at",
                "id",
                "messages",
                "status",
                "updated_at"
            ]
        );
        assert_eq!(view["channel"], "tg");
        assert_eq!(
            view["contact"],
            json!({"id": ana, "provider_user_id": "1001", "display_name": "Ana"})
        );
        let msgs = view["messages"].as_array().unwrap();
        assert_eq!(
            msgs[0],
            json!({"id": inbound, "type": "INBOUND", "content": "Olá", "timestamp": ts(1),
                   "channel": "tg", "author": {"kind": "contact", "id": ana, "name": "Ana"},
                   "kind": "text", "media_id": null, "delivery": null})
        );
        assert_eq!(msgs[1]["kind"], "image");
        assert_eq!(msgs[1]["media_id"], "AgAD-file");
        assert_eq!(
            msgs[2],
            json!({"id": reply, "type": "OUTBOUND", "content": "Mensagens recebidas",
                   "timestamp": ts(3), "channel": "tg",
                   "author": {"kind": "bot", "id": null, "name": null},
                   "kind": "text", "media_id": null,
                   "delivery": {"status": "failed", "error_code": "403",
                                "error_reason": "Forbidden: bot was blocked by the user",
                                "updated_at": chatpipe_core::event::format_timestamp(updated)}})
        );
        // The messages listing is consistent with the view.
        let (status, page) = api.get(&format!("/conversations/{c}/messages")).await;
        assert_eq!(status, 200);
        assert_eq!(page["messages"], view["messages"]);
    }

    // A plain conversation: null channel, contact and author id.
    let p = Uuid::new_v4();
    api.conversation(p, "OPEN", t(0)).await;
    let (m1, m2) = (Uuid::new_v4(), Uuid::new_v4());
    api.message(m1, p, "INBOUND", "hi", t(1)).await;
    api.message(m2, p, "OUTBOUND", "reply", t(2)).await;
    let (_, view) = api.get(&format!("/conversations/{p}/")).await;
    assert_eq!(view["channel"], Value::Null);
    assert_eq!(view["contact"], Value::Null);
    assert_eq!(
        view["messages"][0],
        json!({"id": m1, "type": "INBOUND", "content": "hi", "timestamp": ts(1),
               "channel": null, "author": {"kind": "contact", "id": null, "name": null},
               "kind": "text", "media_id": null, "delivery": null})
    );
    assert_eq!(view["messages"][1]["author"]["kind"], "bot");
}

#[tokio::test]
async fn idempotency_keys_replay_the_first_answer_and_refuse_other_requests() {
    let api = start(Setup::default()).await;
    let (c, _) = tg_conversation(&api).await;
    let (status, first, headers) = api.send(c, "once", Some("key-1"), None).await;
    assert_eq!(status, 202, "{first}");
    assert!(headers.get("idempotent-replay").is_none());
    for _ in 0..2 {
        let (status, again, headers) = api.send(c, "once", Some("key-1"), None).await;
        assert_eq!(status, 202, "{again}");
        assert_eq!(again, first);
        assert_eq!(headers["idempotent-replay"], "true");
    }
    // Still replayed once the delivery moved on.
    api.pg
        .execute("UPDATE deliveries SET status = 'sent'", &[])
        .await
        .unwrap();
    let (_, again, _) = api.send(c, "once", Some("key-1"), None).await;
    assert_eq!(again, first);
    assert_eq!(
        api.count("SELECT count(*) FROM messages WHERE direction = 'OUTBOUND'")
            .await,
        1
    );
    // The same key for another content or conversation is refused.
    let other = Uuid::new_v4();
    api.conversation(other, "OPEN", t(0)).await;
    for (conv, content) in [(c, "twice"), (other, "once")] {
        let (status, body, _) = api.send(conv, content, Some("key-1"), None).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["field"], "idempotency-key");
    }
    assert_eq!(api.count("SELECT count(*) FROM deliveries").await, 1);
    // Without a key, every request is a new message.
    for _ in 0..2 {
        let (status, _, _) = api.send(c, "once", None, None).await;
        assert_eq!(status, 202);
    }
    assert_eq!(api.count("SELECT count(*) FROM deliveries").await, 3);
    let n = |o: &str| api.metrics.agent_messages.with_label_values(&[o]).get();
    assert_eq!((n("queued"), n("replayed"), n("key_reused")), (3, 3, 2));
}

#[tokio::test]
async fn concurrent_requests_with_one_key_store_one_message() {
    let api = start(Setup::default()).await;
    let (c, _) = tg_conversation(&api).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (http, url) = (
                api.http.clone(),
                format!("{}/conversations/{c}/messages", api.base),
            );
            tokio::spawn(async move {
                let res = http
                    .post(url)
                    .header("Idempotency-Key", "race")
                    .json(&json!({"content": "racing"}))
                    .send()
                    .await
                    .unwrap();
                let status = res.status().as_u16();
                let headers = res.headers().clone();
                let body: Value = res.json().await.unwrap();
                (status, body, headers)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    let ids: BTreeSet<String> = answers
        .iter()
        .map(|(status, body, _)| {
            assert_eq!(*status, 202, "{body}");
            body["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    let replays = answers
        .iter()
        .filter(|(_, _, h)| h.get("idempotent-replay").is_some())
        .count();
    assert_eq!(replays, 7);
    assert_eq!(
        api.count("SELECT count(*) FROM messages WHERE direction = 'OUTBOUND'")
            .await,
        1
    );
    assert_eq!(api.count("SELECT count(*) FROM deliveries").await, 1);
}

#[tokio::test]
async fn bad_requests_unknown_and_closed_conversations_write_nothing() {
    let api = start(Setup::default()).await;
    let (c, ana) = tg_conversation(&api).await;
    let closed = Uuid::new_v4();
    api.channel_conversation(closed, "tg", ana, "CLOSED", t(5))
        .await;
    let path = format!("/conversations/{c}/messages");
    let post = |body: reqwest::Body, content_type: &'static str| {
        api.http
            .post(format!("{}{path}", api.base))
            .header("content-type", content_type)
            .body(body)
    };
    for (body, field) in [
        (json!({}), "content"),
        (json!({"content": ""}), "content"),
        (json!({"content": "  \n "}), "content"),
        (json!({"content": "a\u{0}b"}), "content"),
        (json!({"content": "é".repeat(4097)}), "content"),
        (json!({"content": 5}), "content"),
        (json!({"content": "hi", "extra": 1}), "body"),
        (json!(["hi"]), "body"),
    ] {
        let res = post(body.to_string().into(), "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400, "{body}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["field"], field, "{body}: {err}");
    }
    let res = post("{not json".into(), "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let res = post("content=hi".into(), "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    // 4096 characters is the limit, inclusive.
    let (status, body, _) = api.send(c, &"é".repeat(4096), None, None).await;
    assert_eq!(status, 202, "{body}");
    for key in ["has space", &"k".repeat(256), ""] {
        let (status, body, _) = api.send(c, "hi", Some(key), None).await;
        assert_eq!(status, 400, "{key:?}: {body}");
        assert_eq!(body["field"], "idempotency-key");
    }
    let before = api.count("SELECT count(*) FROM messages").await;
    for id in [Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        let (status, body, _) = api
            .call(
                reqwest::Method::POST,
                &format!("/conversations/{id}/messages"),
                None,
                None,
                Some(json!({"content": "hi"})),
            )
            .await;
        assert_eq!(status, 404, "{body}");
    }
    let (status, body, _) = api.send(closed, "too late", Some("k-closed"), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("CLOSED"), "{body}");
    assert_eq!(api.count("SELECT count(*) FROM messages").await, before);
    assert_eq!(
        api.count("SELECT count(*) FROM message_idempotency_keys")
            .await,
        0
    );
    assert_eq!(api.count("SELECT count(*) FROM deliveries").await, 1);
}

#[tokio::test]
async fn no_message_is_stored_without_its_delivery() {
    let api = start(Setup::default()).await;
    let (c, _) = tg_conversation(&api).await;
    // The outbox refuses this message: the whole transaction must go.
    api.pg
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'outbox unavailable'; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT ON deliveries \
             FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await
        .unwrap();
    let (status, body, _) = api.send(c, "lost?", Some("atomic"), None).await;
    assert_eq!(status, 503, "{body}");
    for table in ["deliveries", "delivery_events", "message_idempotency_keys"] {
        assert_eq!(
            api.count(&format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
    assert_eq!(
        api.count("SELECT count(*) FROM messages WHERE direction = 'OUTBOUND'")
            .await,
        0
    );
    assert_eq!(
        api.count("SELECT count(*) FROM message_meta WHERE author_kind = 'agent'")
            .await,
        0
    );
    // Once the outbox works, the same key stores it (nothing was kept).
    api.pg
        .batch_execute("DROP TRIGGER refuse ON deliveries")
        .await
        .unwrap();
    let (status, body, headers) = api.send(c, "lost?", Some("atomic"), None).await;
    assert_eq!(status, 202, "{body}");
    assert!(headers.get("idempotent-replay").is_none());
    // Every OUTBOUND message of a channel conversation has its delivery.
    assert_eq!(
        api.count(
            "SELECT count(*) FROM messages m JOIN channel_conversations cc \
             ON cc.conversation_id = m.conversation_id \
             WHERE m.direction = 'OUTBOUND' \
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id)"
        )
        .await,
        0
    );
}

/// A seeded message: (timestamp, OUTBOUND, id, conversation).
type FeedRow = (i64, bool, Uuid, Uuid);

#[tokio::test]
async fn the_message_feed_pages_through_everything_once_newest_first() {
    let api = start(Setup::default()).await;
    let ana = api.contact("tg", "1", Some("Ana"), t(0)).await;
    let bob = api.contact("wa", "2", None, t(0)).await;
    let (ca, cb, plain) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    api.channel_conversation(ca, "tg", ana, "OPEN", t(0)).await;
    api.channel_conversation(cb, "wa", bob, "OPEN", t(0)).await;
    api.conversation(plain, "OPEN", t(0)).await;
    let agent = Uuid::new_v4();
    // (timestamp, direction, id) descending, with ties on the timestamp.
    let mut all: Vec<FeedRow> = Vec::new();
    for i in 0..25i64 {
        let conv = [ca, cb, plain][(i % 3) as usize];
        let outbound = i % 2 == 1;
        let id = Uuid::new_v4();
        let at = i / 4;
        api.message(
            id,
            conv,
            if outbound { "OUTBOUND" } else { "INBOUND" },
            &format!("m{i}"),
            t(at),
        )
        .await;
        if outbound && i % 5 == 1 {
            api.meta(id, conv, "tg", None, Some(agent), "agent", "text", None)
                .await;
        }
        all.push((at, outbound, id, conv));
    }
    all.sort();
    all.reverse();
    let expected: Vec<String> = all.iter().map(|(_, _, id, _)| id.to_string()).collect();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/messages?limit=4".to_owned(),
            Some(c) => format!("/messages?limit=4&cursor={c}"),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{page}");
        for m in page["messages"].as_array().unwrap() {
            seen.push(m["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, expected);

    // One item's shape: the view's message plus its conversation.
    let (_, page) = api.get("/messages?limit=1").await;
    let first = &page["messages"][0];
    let mut want = vec![
        "author",
        "channel",
        "content",
        "conversation_id",
        "delivery",
        "id",
        "kind",
        "media_id",
        "timestamp",
        "type",
    ];
    want.sort();
    assert_eq!(keys(first), want);
    assert_eq!(first["conversation_id"], all[0].3.to_string());

    // Filters.
    let ids = |page: &Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let filter = |f: &dyn Fn(&FeedRow) -> bool| -> Vec<String> {
        all.iter()
            .filter(|m| f(m))
            .map(|m| m.2.to_string())
            .collect()
    };
    let (_, page) = api.get(&format!("/messages?conversation_id={cb}")).await;
    assert_eq!(ids(&page), filter(&|m| m.3 == cb));
    let (_, page) = api.get(&format!("/messages?contact_id={ana}")).await;
    assert_eq!(ids(&page), filter(&|m| m.3 == ca));
    let (_, page) = api.get("/messages?direction=INBOUND").await;
    assert_eq!(ids(&page), filter(&|m| !m.1));
    let (_, page) = api.get(&format!("/messages?agent_id={agent}")).await;
    let by_agent = ids(&page);
    assert_eq!(by_agent.len(), 3, "{page}");
    for m in page["messages"].as_array().unwrap() {
        assert_eq!(m["author"]["kind"], "agent");
        assert_eq!(m["author"]["id"], agent.to_string());
    }
    let (_, page) = api
        .get(&format!("/messages?contact_id={ana}&direction=OUTBOUND"))
        .await;
    assert_eq!(ids(&page), filter(&|m| m.3 == ca && m.1));

    for (query, field) in [
        ("conversation_id=x", "conversation_id"),
        ("contact_id=1", "contact_id"),
        ("agent_id=nope", "agent_id"),
        ("direction=inbound", "direction"),
        ("limit=0", "limit"),
        ("cursor=abc", "cursor"),
    ] {
        let (status, body) = api.get(&format!("/messages?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["field"], field, "{query}");
    }
    // A cursor of another listing is refused.
    let (_, convs) = api.get("/conversations/?limit=1").await;
    let foreign = convs["next_cursor"].as_str().unwrap();
    let (status, body) = api.get(&format!("/messages?cursor={foreign}")).await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "cursor");
}

#[tokio::test]
async fn contacts_page_and_show_their_conversations() {
    let api = start(Setup::default()).await;
    let mut expected = Vec::new();
    for i in 0..13i64 {
        let channel = if i % 3 == 0 { "wa" } else { "tg" };
        let id = api
            .contact(channel, &format!("user-{i}"), None, t(i / 3))
            .await;
        expected.push((t(i / 3), id, channel));
    }
    expected.sort();
    expected.reverse();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/contacts?limit=5".to_owned(),
            Some(c) => format!("/contacts?limit=5&cursor={c}"),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{page}");
        for c in page["contacts"].as_array().unwrap() {
            seen.push(c["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let want: Vec<String> = expected.iter().map(|(_, id, _)| id.to_string()).collect();
    assert_eq!(seen, want);
    let (_, page) = api.get("/contacts?channel=wa").await;
    let wa: Vec<&str> = page["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    let want_wa: Vec<String> = expected
        .iter()
        .filter(|(_, _, ch)| *ch == "wa")
        .map(|(_, id, _)| id.to_string())
        .collect();
    assert_eq!(wa, want_wa);
    let (status, page) = api.get("/contacts?channel=gone").await;
    assert_eq!(status, 200);
    assert_eq!(page["contacts"], json!([]));
    for (query, field) in [
        ("channel=Bad_Name", "channel"),
        ("limit=x", "limit"),
        ("cursor=zzz", "cursor"),
    ] {
        let (status, body) = api.get(&format!("/contacts?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["field"], field);
    }

    // One contact with two conversations.
    let ana = api.contact("tg", "ana", Some("Ana"), t(100)).await;
    let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
    api.channel_conversation(old, "tg", ana, "CLOSED", t(100))
        .await;
    api.channel_conversation(new, "tg", ana, "OPEN", t(200))
        .await;
    let (status, body) = api.get(&format!("/contacts/{ana}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"id": ana, "channel": "tg", "provider_user_id": "ana", "display_name": "Ana",
        "created_at": ts(100), "last_seen_at": ts(100),
        "conversations": [
            {"id": new, "status": "OPEN", "created_at": ts(200), "updated_at": ts(200),
             "closed_at": null},
            {"id": old, "status": "CLOSED", "created_at": ts(100), "updated_at": ts(100),
             "closed_at": ts(100)},
        ]})
    );
    let (_, page) = api.get("/contacts?limit=1").await;
    assert_eq!(
        keys(&page["contacts"][0]),
        [
            "channel",
            "created_at",
            "display_name",
            "id",
            "last_seen_at",
            "provider_user_id"
        ]
    );
    for id in [Uuid::new_v4().to_string(), "nope".to_owned()] {
        let (status, body) = api.get(&format!("/contacts/{id}")).await;
        assert_eq!(status, 404, "{body}");
    }
}

#[tokio::test]
async fn channels_list_the_declared_ones_with_their_counts() {
    let api = start(Setup::default()).await;
    let (c, ana) = tg_conversation(&api).await;
    let closed = Uuid::new_v4();
    api.channel_conversation(closed, "tg", ana, "CLOSED", t(9))
        .await;
    api.contact("tg", "1002", None, t(0)).await;
    // Rows of a channel no longer declared are not listed.
    api.contact("old", "x", None, t(0)).await;
    for status in ["queued", "queued", "failed", "sent"] {
        let m = Uuid::new_v4();
        api.message(m, c, "OUTBOUND", "x", t(2)).await;
        api.delivery(m, c, "tg", ana, status).await;
    }
    let (status, body) = api.get("/channels").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"channels": [
            {"name": "tg", "type": "telegram", "webhook_path": "/channels/tg/webhook",
             "contacts": 2, "open_conversations": 1, "deliveries_queued": 2,
             "deliveries_failed": 1},
            {"name": "wa", "type": "whatsappCloud", "webhook_path": "/channels/wa/webhook",
             "contacts": 0, "open_conversations": 0, "deliveries_queued": 0,
             "deliveries_failed": 0},
        ]})
    );
    // No channel declared: an empty list.
    let bare = start(Setup {
        channels: "",
        ..Setup::default()
    })
    .await;
    let (status, body) = bare.get("/channels").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"channels": []}));
}

#[tokio::test]
async fn deliveries_list_show_their_timeline_and_only_failed_ones_retry() {
    let api = start(Setup::default()).await;
    let (c, ana) = tg_conversation(&api).await;
    let bob = api.contact("wa", "b", None, t(0)).await;
    let cw = Uuid::new_v4();
    api.channel_conversation(cw, "wa", bob, "OPEN", t(0)).await;
    let mut ids = Vec::new();
    for i in 0..11 {
        let (conv, channel, contact) = if i % 2 == 0 {
            (c, "tg", ana)
        } else {
            (cw, "wa", bob)
        };
        let status = ["queued", "failed", "sent", "delivered"][i % 4];
        let m = Uuid::new_v4();
        api.message(m, conv, "OUTBOUND", &format!("d{i}"), t(2))
            .await;
        let id = api.delivery(m, conv, channel, contact, status).await;
        ids.push((id, status, channel, conv));
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/deliveries?limit=3".to_owned(),
            Some(c) => format!("/deliveries?limit=3&cursor={c}"),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{page}");
        for d in page["deliveries"].as_array().unwrap() {
            seen.push(d["id"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids.iter().map(|d| d.0).collect::<Vec<_>>());
    let listed = |page: &Value| -> Vec<i64> {
        page["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_i64().unwrap())
            .collect()
    };
    let (_, page) = api.get("/deliveries?status=failed").await;
    let failed: Vec<i64> = ids
        .iter()
        .filter(|d| d.1 == "failed")
        .map(|d| d.0)
        .collect();
    assert_eq!(listed(&page), failed);
    let (_, page) = api.get("/deliveries?channel=wa&status=failed").await;
    assert_eq!(listed(&page), failed, "every failed one is on wa");
    let (_, page) = api.get(&format!("/deliveries?conversation_id={c}")).await;
    let of_c: Vec<i64> = ids.iter().filter(|d| d.3 == c).map(|d| d.0).collect();
    assert_eq!(listed(&page), of_c);
    for (query, field) in [
        ("status=FAILED", "status"),
        ("channel=No", "channel"),
        ("conversation_id=1", "conversation_id"),
        ("limit=501", "limit"),
        ("cursor=x", "cursor"),
    ] {
        let (status, body) = api.get(&format!("/deliveries?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["field"], field);
    }

    // A failed delivery and its timeline.
    let dead = failed[0];
    let (status, d) = api.get(&format!("/deliveries/{dead}")).await;
    assert_eq!(status, 200, "{d}");
    let mut want = vec![
        "attempts",
        "channel",
        "contact_id",
        "content",
        "conversation_id",
        "delivered_at",
        "error_code",
        "error_reason",
        "events",
        "failed_at",
        "id",
        "message_id",
        "next_attempt_at",
        "provider_message_id",
        "queued_at",
        "read_at",
        "sent_at",
        "status",
        "updated_at",
    ];
    want.sort();
    assert_eq!(keys(&d), want);
    assert_eq!(d["status"], "failed");
    assert_eq!(d["attempts"], 3);
    assert_eq!(d["error_code"], "403");
    assert_eq!(d["channel"], "wa");
    assert!(d["failed_at"].is_string());
    assert!(d["content"].as_str().unwrap().starts_with('d'));
    let events: Vec<(&str, &str)> = d["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["source"].as_str().unwrap()))
        .collect();
    assert_eq!(events, [("queued", "processor"), ("failed", "delivery")]);
    assert_eq!(
        keys(&d["events"][0]),
        ["at", "code", "event", "id", "reason", "source"]
    );

    // Retry: queued again, attempts 0, the failure kept in the timeline.
    let (status, r) = api.retry(dead, None).await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(r["status"], "queued");
    assert_eq!(r["attempts"], 0);
    assert_eq!(r["error_code"], Value::Null);
    assert_eq!(r["failed_at"], Value::Null);
    let last = r["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event"], "retried");
    assert_eq!(last["source"], "api");
    assert_eq!(last["code"], "403");
    assert_eq!(last["reason"], "Forbidden: bot was blocked by the user");
    let due: bool = api
        .pg
        .query_one(
            "SELECT next_attempt_at <= now() AND lease_owner IS NULL FROM deliveries WHERE id = $1",
            &[&dead],
        )
        .await
        .unwrap()
        .get(0);
    assert!(due);
    let (_, again) = api.get(&format!("/deliveries/{dead}")).await;
    assert_eq!(again, r);
    assert_eq!(api.metrics.delivery_retries.get(), 1);
    // Only from failed.
    let (status, body) = api.retry(dead, None).await;
    assert_eq!(status, 409, "{body}");
    let sent = ids.iter().find(|d| d.1 == "sent").unwrap().0;
    let (status, body) = api.retry(sent, None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("sent"));
    for id in ["999999", "0", "x"] {
        let (status, _, _) = api
            .call(
                reqwest::Method::POST,
                &format!("/deliveries/{id}/retry"),
                None,
                None,
                None,
            )
            .await;
        assert_eq!(status, 404, "{id}");
        let (status, _) = api.get(&format!("/deliveries/{id}")).await;
        assert_eq!(status, 404, "{id}");
    }
    assert_eq!(api.metrics.delivery_retries.get(), 1);
}

#[tokio::test]
async fn scopes_guard_every_channel_route_and_agents_are_recorded() {
    let api = start(Setup {
        auth: true,
        ..Setup::default()
    })
    .await;
    let (c, ana) = tg_conversation(&api).await;
    let m = Uuid::new_v4();
    api.message(m, c, "OUTBOUND", "x", t(2)).await;
    let dead = api.delivery(m, c, "tg", ana, "failed").await;
    let reads = [
        "/messages".to_owned(),
        "/contacts".to_owned(),
        format!("/contacts/{ana}"),
        "/channels".to_owned(),
        "/deliveries".to_owned(),
        format!("/deliveries/{dead}"),
        format!("/conversations/{c}/"),
    ];
    // No token: 401 everywhere, nothing written.
    for path in &reads {
        let (status, body) = api.get(path).await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    let (status, _, _) = api.send(c, "hi", None, None).await;
    assert_eq!(status, 401);
    let (status, _) = api.retry(dead, None).await;
    assert_eq!(status, 401);

    let hs = |scope: &str| {
        let now = Utc::now().timestamp();
        let claims = json!({"sub": Uuid::new_v4(), "username": "x", "role": "agent",
            "scope": scope, "iat": now, "exp": now + 600,
            "iss": chatpipe_api::auth::jwt::ISSUER, "aud": chatpipe_api::auth::jwt::AUDIENCE});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let reader = hs("conversations:read");
    let sender = hs("messages:send");
    for path in &reads {
        let (status, body) = api.get_as(path, &sender).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"], "missing scope conversations:read");
        let (status, body) = api.get_as(path, &reader).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, body, _) = api.send(c, "hi", None, Some(&reader)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "missing scope messages:send");
    let (status, _) = api.retry(dead, Some(&reader)).await;
    assert_eq!(status, 403);
    assert_eq!(
        api.count("SELECT count(*) FROM message_meta WHERE author_kind = 'agent'")
            .await,
        0
    );
    let (status, body) = api.retry(dead, Some(&sender)).await;
    assert_eq!(status, 202, "{body}");

    // A signed-in agent's message records the agent; keys are per agent.
    let (ana_agent, ana_token) = api.agent("ana.agent", Role::Agent).await;
    let (bob_agent, bob_token) = api.agent("bob", Role::Admin).await;
    let (status, first, _) = api.send(c, "from ana", Some("k"), Some(&ana_token)).await;
    assert_eq!(status, 202, "{first}");
    let (status, other, headers) = api.send(c, "from bob", Some("k"), Some(&bob_token)).await;
    assert_eq!(status, 202, "{other}");
    assert!(headers.get("idempotent-replay").is_none());
    assert_ne!(first["id"], other["id"]);
    let (status, _, headers) = api.send(c, "from ana", Some("k"), Some(&ana_token)).await;
    assert_eq!(status, 202);
    assert_eq!(headers["idempotent-replay"], "true");
    let owners: Vec<Uuid> = api
        .pg
        .query(
            "SELECT agent_id FROM message_idempotency_keys ORDER BY created_at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(owners, [ana_agent, bob_agent]);
    let (_, view) = api
        .get_as(&format!("/conversations/{c}/"), &ana_token)
        .await;
    let authors: Vec<&Value> = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["author"]["kind"] == "agent")
        .map(|m| &m["author"])
        .collect();
    assert_eq!(
        authors,
        [
            &json!({"kind": "agent", "id": ana_agent, "name": "ana.agent"}),
            &json!({"kind": "agent", "id": bob_agent, "name": "bob"}),
        ]
    );
    let (_, page) = api
        .get_as(&format!("/messages?agent_id={ana_agent}"), &ana_token)
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    assert_eq!(page["messages"][0]["id"], first["id"]);
}

#[tokio::test]
async fn routes_are_counted_by_pattern() {
    let api = start(Setup::default()).await;
    let (c, _) = tg_conversation(&api).await;
    api.send(c, "hi", None, None).await;
    api.get("/deliveries/1").await;
    api.get(&format!("/contacts/{}", Uuid::new_v4())).await;
    let text = reqwest::get(format!("{}/metrics", api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"route="/conversations/{id}/messages",status="202""#,
        r#"route="/deliveries/{id}",status="200""#,
        r#"route="/contacts/{id}",status="404""#,
    ] {
        assert!(text.contains(line), "{line} not in metrics");
    }
    assert!(!text.contains(&c.to_string()));
    assert!(text.contains(r#"chatpipe_api_agent_messages_total{outcome="queued"} 1"#));
}

/// The read-only role of V300, which deployments may assume for the api
/// (the conformance suite does), reads every view the channel endpoints
/// serve; it cannot write, so sending is a 503, never a partial write.
#[tokio::test]
async fn the_readonly_role_reads_the_channel_views() {
    let api = start(Setup {
        role: chatpipe_api::store::READONLY_ROLE,
        ..Setup::default()
    })
    .await;
    let (c, ana) = tg_conversation(&api).await;
    let m = Uuid::new_v4();
    api.message(m, c, "OUTBOUND", "x", t(2)).await;
    api.meta(m, c, "tg", None, None, "bot", "text", None).await;
    let d = api.delivery(m, c, "tg", ana, "sent").await;
    for path in [
        format!("/conversations/{c}/"),
        format!("/conversations/{c}/messages"),
        "/messages".to_owned(),
        "/contacts".to_owned(),
        format!("/contacts/{ana}"),
        "/channels".to_owned(),
        "/deliveries".to_owned(),
        format!("/deliveries/{d}"),
    ] {
        let (status, body) = api.get(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, _, _) = api.send(c, "hi", None, None).await;
    assert_eq!(status, 503);
    assert_eq!(
        api.count("SELECT count(*) FROM messages WHERE direction = 'OUTBOUND'")
            .await,
        1
    );
}
