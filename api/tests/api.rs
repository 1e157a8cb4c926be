//! Postgres-backed tests of the api: a fresh database per test (created and
//! migrated with `chatpipe_core::db`), rows seeded directly, the real router
//! served on a free port and queried over HTTP.

use std::time::Duration;

use chatpipe_api::metrics::Metrics;
use chatpipe_api::routes::AppState;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use uuid::Uuid;

struct Api {
    base: String,
    db_url: String,
    pg: tokio_postgres::Client,
}

async fn start(role: &str) -> Api {
    let name = format!("chatpipe_api_t_{}", Uuid::new_v4().simple());
    let db_url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    chatpipe_core::db::ensure_database(&db_url).await.unwrap();
    chatpipe_core::db::migrate(&db_url).await.unwrap();
    let pg = chatpipe_core::db::connect(&db_url).await.unwrap();
    let pool =
        chatpipe_api::store::readonly_pool(&db_url, 4, Duration::from_secs(5), role).unwrap();
    let state = AppState {
        pool,
        default_limit: 50,
        max_limit: 500,
    };
    let app = chatpipe_api::app(state, Metrics::new().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Api {
        base: format!("http://{addr}"),
        db_url,
        pg,
    }
}

fn t(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_750_000_000 + s, 0).unwrap()
}

impl Api {
    async fn get(&self, path: &str) -> (u16, Value) {
        let res = reqwest::get(format!("{}{}", self.base, path))
            .await
            .unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
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

    async fn message(&self, id: Uuid, conv: Uuid, dir: &str, content: &str, ts: DateTime<Utc>) {
        self.pg
            .execute(
                "INSERT INTO messages (id, conversation_id, direction, content, \"timestamp\", arrival) \
                 VALUES ($1, $2, $3, $4, $5, $5)",
                &[&id, &conv, &dir, &content, &ts],
            )
            .await
            .unwrap();
    }

    async fn rejected(&self, conv: Uuid, event_id: Uuid, reason: &str, offset: i64) {
        let event = serde_json::json!({"type":"NEW_MESSAGE","timestamp":"2025-06-04T14:20:05Z",
            "data":{"id":event_id,"conversation_id":conv,"content":"x"}});
        self.pg
            .execute(
                "INSERT INTO rejected_events (event_type, event_id, conversation_id, reason, event, \
                 arrival, source_topic, source_partition, source_offset) \
                 VALUES ('NEW_MESSAGE', $1, $2, $3, $4, now(), 't', 0, $5)",
                &[&event_id, &conv, &reason, &event, &offset],
            )
            .await
            .unwrap();
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let url = self.db_url.clone();
        // Best effort: drop the database from a fresh thread and runtime.
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

#[tokio::test]
async fn conversation_has_the_spec_shape_and_order() {
    let api = start("").await;
    let c = Uuid::new_v4();
    api.conversation(c, "OPEN", t(0)).await;
    let (m1, m2, m3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    // Inserted out of order; m3 (OUTBOUND) shares m2's timestamp.
    api.message(m3, c, "OUTBOUND", "Mensagens recebidas:\nx\n", t(5))
        .await;
    api.message(m2, c, "INBOUND", "second", t(5)).await;
    api.message(m1, c, "INBOUND", "Olá", t(1)).await;
    for path in [
        format!("/conversations/{c}/"),
        format!("/conversations/{c}"),
    ] {
        let (status, body) = api.get(&path).await;
        assert_eq!(status, 200, "{body}");
        let obj = body.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort();
        // The spec's shape, plus the channel and contact (null for a
        // conversation of the plain webhook).
        assert_eq!(
            keys,
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
        assert_eq!(body["channel"], Value::Null);
        assert_eq!(body["contact"], Value::Null);
        assert_eq!(body["id"], c.to_string());
        assert_eq!(body["status"], "OPEN");
        assert_eq!(body["created_at"], "2025-06-15T15:06:40Z");
        let msgs = body["messages"].as_array().unwrap();
        let ids: Vec<&str> = msgs.iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [m1.to_string(), m2.to_string(), m3.to_string()]);
        assert_eq!(
            msgs[0],
            serde_json::json!({"id": m1, "type": "INBOUND", "content": "Olá",
                               "timestamp": "2025-06-15T15:06:41Z", "channel": null,
                               "author": {"kind": "contact", "id": null, "name": null},
                               "kind": "text", "media_id": null, "delivery": null})
        );
        assert_eq!(msgs[2]["type"], "OUTBOUND");
        assert_eq!(msgs[2]["author"]["kind"], "bot");
    }
    // An empty conversation has an empty list.
    let e = Uuid::new_v4();
    api.conversation(e, "CLOSED", t(3)).await;
    let (status, body) = api.get(&format!("/conversations/{e}/")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "CLOSED");
    assert_eq!(body["messages"], serde_json::json!([]));
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404_json() {
    let api = start("").await;
    for path in [
        format!("/conversations/{}/", Uuid::new_v4()),
        "/conversations/not-a-uuid/".to_owned(),
        "/conversations/123/".to_owned(),
        format!("/conversations/{}/messages", Uuid::new_v4()),
        "/nope".to_owned(),
    ] {
        let (status, body) = api.get(&path).await;
        assert_eq!(status, 404, "{path}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
}

#[tokio::test]
async fn listing_pages_through_everything_once() {
    let api = start("").await;
    let mut open = Vec::new();
    for i in 0..23 {
        let id = Uuid::new_v4();
        // Several share a created_at so the id tie-break matters.
        let created = t(i / 3);
        let status = if i % 4 == 0 { "CLOSED" } else { "OPEN" };
        api.conversation(id, status, created).await;
        if status == "OPEN" {
            open.push(id.to_string());
        }
    }
    for (filter, expected) in [
        ("", 23usize),
        ("&status=OPEN", open.len()),
        ("&status=CLOSED", 23 - open.len()),
    ] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut path = format!("/conversations/?limit=5{filter}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, body) = api.get(&path).await;
            assert_eq!(status, 200, "{body}");
            pages += 1;
            for c in body["conversations"].as_array().unwrap() {
                seen.push((
                    c["created_at"].as_str().unwrap().to_owned(),
                    c["id"].as_str().unwrap().to_owned(),
                ));
                if filter.contains("OPEN") {
                    assert_eq!(c["status"], "OPEN");
                }
            }
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen.len(), expected, "{filter}");
        assert_eq!(pages, expected.div_ceil(5).max(1), "{filter}");
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.reverse();
        assert_eq!(seen, sorted, "newest first, no duplicates: {filter}");
        sorted.dedup();
        assert_eq!(sorted.len(), expected);
    }
}

#[tokio::test]
async fn messages_and_rejected_events_paginate() {
    let api = start("").await;
    let c = Uuid::new_v4();
    api.conversation(c, "OPEN", t(0)).await;
    let mut expected = Vec::new();
    for i in 0..12 {
        let id = Uuid::new_v4();
        api.message(id, c, "INBOUND", &format!("m{i}"), t(i / 2))
            .await;
        expected.push((t(i / 2), 0, id));
        if i % 4 == 3 {
            let r = Uuid::new_v4();
            api.message(r, c, "OUTBOUND", "reply", t(i / 2)).await;
            expected.push((t(i / 2), 1, r));
        }
    }
    expected.sort();
    let expected: Vec<String> = expected.iter().map(|(_, _, id)| id.to_string()).collect();
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, body) = api
            .get(&format!(
                "/conversations/{c}/messages?limit=4&cursor={cursor}"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["conversation_id"], c.to_string());
        seen.extend(
            body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned()),
        );
        match body["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    // The full view agrees with the paginated one.
    let (_, full) = api.get(&format!("/conversations/{c}/")).await;
    let full: Vec<String> = full["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(full, expected);

    let other = Uuid::new_v4();
    let mut ids = Vec::new();
    for i in 0..7 {
        let e = Uuid::new_v4();
        let (conv, reason) = if i % 2 == 0 {
            (c, "conversation_closed")
        } else {
            (other, "conversation_not_created_in_time")
        };
        api.rejected(conv, e, reason, i).await;
        ids.push((conv, reason, e));
    }
    let (status, body) = api
        .get(&format!("/rejected-events?conversation_id={c}"))
        .await;
    assert_eq!(status, 200, "{body}");
    let got: Vec<&str> = body["rejected_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    let want: Vec<String> = ids
        .iter()
        .rev()
        .filter(|(conv, _, _)| *conv == c)
        .map(|(_, _, e)| e.to_string())
        .collect();
    assert_eq!(got, want);
    let first = &body["rejected_events"][0];
    assert_eq!(first["reason"], "conversation_closed");
    assert_eq!(first["event"]["type"], "NEW_MESSAGE");
    assert_eq!(first["source_topic"], "t");
    let (_, body) = api
        .get("/rejected-events?reason=conversation_not_created_in_time&limit=2")
        .await;
    assert_eq!(body["rejected_events"].as_array().unwrap().len(), 2);
    let next = body["next_cursor"].as_str().unwrap().to_owned();
    let (_, body2) = api
        .get(&format!(
            "/rejected-events?reason=conversation_not_created_in_time&limit=2&cursor={next}"
        ))
        .await;
    assert_eq!(body2["rejected_events"].as_array().unwrap().len(), 1);
    assert!(body2["next_cursor"].is_null());
}

#[tokio::test]
async fn bad_parameters_are_400_json_never_500() {
    let api = start("").await;
    let c = Uuid::new_v4();
    api.conversation(c, "OPEN", t(0)).await;
    let msg_cursor = chatpipe_api::pagination::Cursor::Rejected { id: 1 }.encode();
    for (path, field) in [
        ("/conversations/?status=open".to_owned(), "status"),
        ("/conversations/?status=DELETED".to_owned(), "status"),
        ("/conversations/?limit=0".to_owned(), "limit"),
        ("/conversations/?limit=501".to_owned(), "limit"),
        ("/conversations/?limit=ten".to_owned(), "limit"),
        ("/conversations/?cursor=%%%".to_owned(), "cursor"),
        ("/conversations/?cursor=bm9wZQ".to_owned(), "cursor"),
        (format!("/conversations/?cursor={msg_cursor}"), "cursor"),
        (format!("/conversations/{c}/messages?limit=-3"), "limit"),
        (format!("/conversations/{c}/messages?cursor=zzz"), "cursor"),
        (
            "/rejected-events?conversation_id=nope".to_owned(),
            "conversation_id",
        ),
        (
            format!("/rejected-events?reason={}", "x".repeat(200)),
            "reason",
        ),
        (
            "/rejected-events?limit=100000000000000000000".to_owned(),
            "limit",
        ),
    ] {
        let (status, body) = api.get(&path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["field"], field, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().len() > 3);
    }
    let (status, body) = api.get("/conversations/?limit=1&limit=2").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn connections_are_read_only_and_the_role_works() {
    for role in ["", chatpipe_api::store::READONLY_ROLE] {
        let api = start(role).await;
        let pool = chatpipe_api::store::readonly_pool(&api.db_url, 1, Duration::from_secs(5), role)
            .unwrap();
        let client = pool.get().await.unwrap();
        let err = client
            .execute(
                "INSERT INTO conversations (id, created_at, updated_at) VALUES ($1, now(), now())",
                &[&Uuid::new_v4()],
            )
            .await
            .unwrap_err();
        assert!(
            format!("{err:?}").contains("read-only")
                || format!("{err:?}").contains("permission denied"),
            "{err:?}"
        );
        if !role.is_empty() {
            // Even an explicit read-write transaction cannot write as the role.
            let err = client
                .batch_execute("BEGIN READ WRITE; DELETE FROM conversations; COMMIT;")
                .await
                .unwrap_err();
            assert!(format!("{err:?}").contains("permission denied"), "{err:?}");
            client.batch_execute("ROLLBACK").await.unwrap();
            let current: String = client
                .query_one("SELECT current_user::text", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(current, role);
        }
        let (status, _) = api.get("/conversations/").await;
        assert_eq!(status, 200);
        let (status, body) = api.get("/readyz").await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn openapi_docs_viewer_and_metrics_are_served() {
    let api = start("").await;
    let (status, doc) = api.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/",
        "/viewer/",
        "/viewer/app.js",
        "/viewer/app.css",
        "/docs",
        "/docs/",
        "/docs/swagger-initializer.js",
    ] {
        let res = reqwest::get(format!("{}{}", api.base, path)).await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "{path}");
        let body = res.text().await.unwrap();
        assert!(
            !body.contains("https://"),
            "{path} must not load remote assets"
        );
    }
    let _ = api
        .get(&format!("/conversations/{}/", Uuid::new_v4()))
        .await;
    let _ = api.get("/healthz").await;
    let res = reqwest::get(format!("{}/metrics", api.base)).await.unwrap();
    let text = res.text().await.unwrap();
    assert!(
        text.contains(r#"chatpipe_api_requests_total{method="GET",route="/conversations/{id}/",status="404"} 1"#),
        "{text}"
    );
    assert!(text.contains("chatpipe_api_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn readonly_role_migration_is_safe_on_many_databases_at_once() {
    // Roles are cluster-wide: V300 must succeed when several databases of
    // one server migrate concurrently (and when the role already exists).
    let names: Vec<String> = (0..6)
        .map(|_| format!("chatpipe_api_t_{}", Uuid::new_v4().simple()))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for name in names.clone() {
        tasks.spawn(async move {
            let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
            chatpipe_core::db::ensure_database(&url).await?;
            chatpipe_core::db::migrate(&url).await
        });
    }
    while let Some(r) = tasks.join_next().await {
        let applied = r.unwrap().unwrap();
        assert!(
            applied.iter().any(|m| m.contains("api_readonly_role")),
            "{applied:?}"
        );
    }
    let admin = chatpipe_core::db::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = $1",
            &[&chatpipe_api::store::READONLY_ROLE],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    for name in names {
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_unreachable_database_is_503_json_not_500() {
    // Nothing listens on port 1.
    let pool = chatpipe_api::store::readonly_pool(
        "postgres://postgres@127.0.0.1:1/nowhere",
        2,
        Duration::from_secs(1),
        "",
    )
    .unwrap();
    let app = chatpipe_api::app(
        AppState {
            pool,
            default_limit: 50,
            max_limit: 500,
        },
        Metrics::new().unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    for path in [
        format!("/conversations/{}/", Uuid::new_v4()),
        "/conversations/".to_owned(),
        "/rejected-events".to_owned(),
    ] {
        let res = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        assert_eq!(res.status().as_u16(), 503, "{path}");
        assert_eq!(
            res.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        let body: Value = res.json().await.unwrap();
        assert!(body["error"].is_string());
    }
    let res = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(res.status().as_u16(), 503);
    // Bad input is still judged before the database is needed.
    let res = reqwest::get(format!("http://{addr}/conversations/?limit=0"))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let res = reqwest::get(format!("http://{addr}/conversations/nope/"))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
}
