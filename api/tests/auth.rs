//! Authentication of the api, end to end over HTTP against real Postgres:
//! a fresh migrated database per test, the real router on a free port, and
//! for OIDC a real local HTTP server (axum) serving a discovery document
//! and a JWKS of keys generated here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chatpipe_api::agents::{self, NewAgent};
use chatpipe_api::auth::jwt::{AccessClaims, LocalTokens, AUDIENCE, ISSUER};
use chatpipe_api::auth::oidc::{OidcConfig, OidcVerifier};
use chatpipe_api::auth::{Auth, Role};
use chatpipe_api::config::Config;
use chatpipe_api::metrics::Metrics;
use chatpipe_api::routes::AppState;
use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
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

async fn database() -> (String, tokio_postgres::Client) {
    let name = format!("cp_test_{}", Uuid::new_v4().simple());
    let db_url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    chatpipe_core::db::ensure_database(&db_url).await.unwrap();
    chatpipe_core::db::migrate(&db_url).await.unwrap();
    let pg = chatpipe_core::db::connect(&db_url).await.unwrap();
    (db_url, pg)
}

/// How a test's api authenticates.
enum Setup {
    Off,
    /// `chatpipe-api` flags (besides the database URL), read like the
    /// binary reads them.
    Flags(Vec<String>),
    /// OIDC (and the JWT secret), built by hand to shorten the refetch
    /// interval.
    Oidc(OidcConfig),
}

async fn start(setup: Setup) -> Api {
    let (db_url, pg) = database().await;
    let metrics = Metrics::new().unwrap();
    let pool = chatpipe_api::store::readonly_pool(&db_url, 4, Duration::from_secs(5), "").unwrap();
    let auth = match setup {
        Setup::Off => None,
        Setup::Flags(flags) => {
            let mut argv = vec![
                "chatpipe-api".to_owned(),
                "--postgres-url".to_owned(),
                db_url.clone(),
            ];
            argv.extend(flags);
            let config = Config::try_parse_from(argv).unwrap();
            chatpipe_api::auth_of(&config, &metrics).unwrap()
        }
        Setup::Oidc(oidc) => Some(Arc::new(Auth {
            local: Some(
                LocalTokens::new(
                    SECRET.as_bytes(),
                    Duration::from_secs(900),
                    Duration::from_secs(3600),
                )
                .unwrap(),
            ),
            oidc: Some(OidcVerifier::new(oidc, metrics.clone()).unwrap()),
            pool: chatpipe_api::store::readwrite_pool(&db_url, 2, Duration::from_secs(5), "")
                .unwrap(),
            metrics: metrics.clone(),
        })),
    };
    let state = AppState {
        pool,
        default_limit: 50,
        max_limit: 500,
    };
    let app = chatpipe_api::app_with_auth(state, metrics.clone(), auth);
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

fn secret_flags() -> Setup {
    Setup::Flags(vec!["--jwt-secret".into(), SECRET.into()])
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
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

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let (s, v, _) = self.call(reqwest::Method::GET, path, token, None).await;
        (s, v)
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let (s, v, _) = self
            .call(reqwest::Method::POST, path, token, Some(body))
            .await;
        (s, v)
    }

    async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let (s, v, _) = self
            .call(reqwest::Method::PATCH, path, token, Some(body))
            .await;
        (s, v)
    }

    async fn agent(&self, username: &str, password: &str, role: Role) -> Uuid {
        agents::create(
            &self.pg,
            &NewAgent {
                username,
                password,
                role,
                display_name: None,
            },
        )
        .await
        .unwrap()
        .id
    }

    /// Signs in; returns (access, refresh).
    async fn sign_in(&self, username: &str, password: &str) -> (String, String) {
        let (status, body) = self
            .post(
                "/auth/token",
                None,
                json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        (
            body["access_token"].as_str().unwrap().to_owned(),
            body["refresh_token"].as_str().unwrap().to_owned(),
        )
    }

    fn failures(&self, reason: &str) -> u64 {
        self.metrics
            .auth_failures
            .with_label_values(&[reason])
            .get()
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

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn local_claims(sub: Uuid, scope: &str) -> Value {
    json!({"sub": sub, "username": "x", "role": "agent", "scope": scope,
           "iat": now(), "exp": now() + 600, "iss": ISSUER, "aud": AUDIENCE})
}

const DATA: [&str; 4] = [
    "/conversations/",
    "/conversations/00000000-0000-0000-0000-000000000001/",
    "/conversations/00000000-0000-0000-0000-000000000001/messages",
    "/rejected-events",
];

#[tokio::test]
async fn with_auth_off_everything_is_open_and_accounts_are_not_served() {
    let api = start(Setup::Off).await;
    for path in ["/conversations/", "/rejected-events"] {
        let (status, body) = api.get(path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, _) = api.get(DATA[1], None).await;
    assert_eq!(status, 404);
    // A token is ignored when authentication is off.
    let (status, _) = api.get("/conversations/", Some("garbage")).await;
    assert_eq!(status, 200);
    for (path, post) in [
        ("/auth/token", true),
        ("/auth/token/refresh", true),
        ("/agents", false),
        ("/agents/", false),
        ("/agents/me", false),
    ] {
        let (status, body) = if post {
            api.post(path, None, json!({})).await
        } else {
            api.get(path, None).await
        };
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("not configured"),
            "{path}: {body}"
        );
    }
    assert_eq!(api.metrics.auth_enabled.get(), 0);
}

#[tokio::test]
async fn with_auth_on_data_needs_a_token_and_public_endpoints_stay_public() {
    let api = start(secret_flags()).await;
    assert_eq!(api.metrics.auth_enabled.get(), 1);
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/docs/",
        "/docs/swagger-initializer.js",
        "/",
        "/viewer/",
        "/viewer/app.js",
        "/viewer/app.css",
    ] {
        let res = reqwest::get(format!("{}{}", api.base, path)).await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "{path}");
    }
    for path in DATA.iter().chain(&["/agents", "/agents/me"]) {
        for token in [None, Some("garbage"), Some("a.b.c")] {
            let (status, body, headers) = api.call(reqwest::Method::GET, path, token, None).await;
            assert_eq!(status, 401, "{path} {token:?}: {body}");
            assert_eq!(body["field"], "authorization", "{path}: {body}");
            let challenge = headers["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
        }
    }
    // Another scheme is no token.
    let res = api
        .http
        .get(format!("{}/conversations/", api.base))
        .basic_auth("admin", Some("password"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert!(api.failures("missing_token") >= 7);
    assert!(api.failures("malformed_token") >= 6);
    let metrics = reqwest::get(format!("{}/metrics", api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("chatpipe_api_auth_failures_total{reason=\"missing_token\"}"));
}

#[tokio::test]
async fn tokens_are_issued_refreshed_rotated_and_reuse_is_refused() {
    let api = start(secret_flags()).await;
    let id = api.agent("Ana", "correct horse", Role::Agent).await;

    // Wrong password and unknown user read the same.
    let (s1, wrong_pw) = api
        .post(
            "/auth/token",
            None,
            json!({"username": "ana", "password": "wrong horse"}),
        )
        .await;
    let (s2, no_user) = api
        .post(
            "/auth/token",
            None,
            json!({"username": "bob", "password": "correct horse"}),
        )
        .await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(wrong_pw, no_user);
    assert_eq!(api.failures("bad_credentials"), 2);
    // Missing fields are a 400 naming the field.
    let (status, body) = api
        .post("/auth/token", None, json!({"username": "ana"}))
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("password")),
        "{body}"
    );
    let (status, body) = api.post("/auth/token", None, json!([1, 2])).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("body")),
        "{body}"
    );

    // Usernames are case-insensitive.
    let (status, body) = api
        .post(
            "/auth/token",
            None,
            json!({"username": "ANA", "password": "correct horse"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let access = body["access_token"].as_str().unwrap();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let (status, _) = api.get("/conversations/", Some(access)).await;
    assert_eq!(status, 200);
    let (status, me) = api.get("/agents/me", Some(access)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["id"], id.to_string());
    assert!(me.get("password_hash").is_none());
    // The claims are the contract's.
    let payload = access.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["sub"], id.to_string());
    assert_eq!(claims["username"], "Ana");
    assert_eq!(claims["role"], "agent");
    assert_eq!(claims["scope"], "conversations:read messages:send");
    assert_eq!(claims["iss"], "chatpipe");
    assert_eq!(claims["aud"], "chatpipe-api");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    // Only the hash of the refresh token is stored.
    let stored: i64 = api
        .pg
        .query_one(
            "SELECT count(*) FROM agent_refresh_tokens WHERE token_hash = $1",
            &[&refresh.as_bytes()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);

    // Refresh: a new pair; the old refresh token is spent.
    let (status, body) = api
        .post(
            "/auth/token/refresh",
            None,
            json!({"refresh_token": refresh}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let access2 = body["access_token"].as_str().unwrap().to_owned();
    let refresh2 = body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh2, refresh);
    let (status, _) = api.get("/conversations/", Some(&access2)).await;
    assert_eq!(status, 200);
    // Reusing the spent token is refused, and revokes the agent's others.
    let (status, body) = api
        .post(
            "/auth/token/refresh",
            None,
            json!({"refresh_token": refresh}),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(api.failures("refresh_token_reused"), 1);
    let (status, _) = api
        .post(
            "/auth/token/refresh",
            None,
            json!({"refresh_token": refresh2}),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = api
        .post(
            "/auth/token/refresh",
            None,
            json!({"refresh_token": "made-up"}),
        )
        .await;
    assert_eq!(status, 401);

    // A password change revokes refresh tokens; the new password works.
    let (_, refresh3) = api.sign_in("ana", "correct horse").await;
    let (status, body) = api
        .patch(
            &format!("/agents/{id}"),
            Some(&access2),
            json!({"password": "battery staple"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = api
        .post(
            "/auth/token/refresh",
            None,
            json!({"refresh_token": refresh3}),
        )
        .await;
    assert_eq!(status, 401);
    api.sign_in("ana", "battery staple").await;

    // A disabled agent cannot sign in or refresh.
    let admin = api.agent("root", "root-password", Role::Admin).await;
    let (admin_token, _) = api.sign_in("root", "root-password").await;
    let (_, refresh4) = api.sign_in("ana", "battery staple").await;
    let (status, body) = api
        .patch(
            &format!("/agents/{id}"),
            Some(&admin_token),
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(
        (status, body["disabled"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let (status, _) = api
        .post(
            "/auth/token",
            None,
            json!({"username": "ana", "password": "battery staple"}),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = api
        .post(
            "/auth/token/refresh",
            None,
            json!({"refresh_token": refresh4}),
        )
        .await;
    assert_eq!(status, 401);
    // Deleting an agent deletes its refresh tokens.
    let (_, refresh5) = api.sign_in("root", "root-password").await;
    api.pg
        .execute("DELETE FROM agents WHERE id = $1", &[&admin])
        .await
        .unwrap();
    let (status, _) = api
        .post(
            "/auth/token/refresh",
            None,
            json!({"refresh_token": refresh5}),
        )
        .await;
    assert_eq!(status, 401);
    assert!(
        api.metrics
            .auth_successes
            .with_label_values(&["password"])
            .get()
            >= 5
    );
}

#[tokio::test]
async fn expired_forged_and_unsigned_tokens_are_refused() {
    let api = start(secret_flags()).await;
    let id = api.agent("ana", "correct horse", Role::Admin).await;
    let all = "conversations:read messages:send admin";
    let good = hs256(&local_claims(id, all), SECRET.as_bytes());
    let (status, _) = api.get("/conversations/", Some(&good)).await;
    assert_eq!(status, 200);

    let mut expired = local_claims(id, all);
    expired["iat"] = json!(now() - 7200);
    expired["exp"] = json!(now() - 3600);
    let mut wrong_aud = local_claims(id, all);
    wrong_aud["aud"] = json!("another-api");
    let mut wrong_iss = local_claims(id, all);
    wrong_iss["iss"] = json!("someone");
    let b64 = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(local_claims(id, all))
    );
    for (what, token, reason) in [
        (
            "expired",
            hs256(&expired, SECRET.as_bytes()),
            "expired_token",
        ),
        (
            "wrong key",
            hs256(
                &local_claims(id, all),
                b"another-secret-another-secret-another",
            ),
            "bad_signature",
        ),
        (
            "wrong audience",
            hs256(&wrong_aud, SECRET.as_bytes()),
            "bad_claims",
        ),
        (
            "wrong issuer",
            hs256(&wrong_iss, SECRET.as_bytes()),
            "bad_claims",
        ),
        ("alg none", unsigned, "malformed_token"),
    ] {
        let before = api.failures(reason);
        for path in DATA {
            let (status, body) = api.get(path, Some(&token)).await;
            assert_eq!(status, 401, "{what} {path}: {body}");
            assert_eq!(body["field"], "authorization");
        }
        assert_eq!(api.failures(reason), before + 4, "{what}");
    }
    // An RS256 token when no OIDC issuer is configured.
    let rs_header = b64(json!({"alg": "RS256", "typ": "JWT", "kid": "x"}));
    let rs = format!("{rs_header}.{}.c2ln", b64(local_claims(id, all)));
    let (status, _) = api.get("/conversations/", Some(&rs)).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_missing_scope_is_403() {
    let api = start(secret_flags()).await;
    let id = Uuid::new_v4();
    let token = hs256(&local_claims(id, "messages:send"), SECRET.as_bytes());
    for path in DATA {
        let (status, body, headers) = api
            .call(reqwest::Method::GET, path, Some(&token), None)
            .await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"], "missing scope conversations:read");
        assert_eq!(body["field"], "authorization");
        assert!(headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope"));
    }
    assert_eq!(api.failures("missing_scope"), 4);
    let reader = hs256(&local_claims(id, "conversations:read"), SECRET.as_bytes());
    let (status, body) = api.get("/agents", Some(&reader)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "missing scope admin");
}

#[tokio::test]
async fn agents_are_managed_by_admins_and_agents_manage_only_themselves() {
    let api = start(secret_flags()).await;
    let root = api.agent("root", "root-password", Role::Admin).await;
    let (admin, _) = api.sign_in("root", "root-password").await;

    // An admin creates agents; validation names the field.
    for (body, field) in [
        (
            json!({"username": "", "password": "12345678", "role": "agent"}),
            "username",
        ),
        (
            json!({"username": "a b", "password": "12345678", "role": "agent"}),
            "username",
        ),
        (
            json!({"username": "x".repeat(65), "password": "12345678", "role": "agent"}),
            "username",
        ),
        (
            json!({"username": "bob", "password": "short", "role": "agent"}),
            "password",
        ),
        (
            json!({"username": "bob", "password": "12345678", "role": "boss"}),
            "role",
        ),
        (json!({"username": "bob", "password": "12345678"}), "role"),
        (
            json!({"username": "bob", "password": 12345678, "role": "agent"}),
            "password",
        ),
        (
            json!({"username": "bob", "password": "12345678", "role": "agent", "x": 1}),
            "body",
        ),
    ] {
        let (status, resp) = api.post("/agents", Some(&admin), body.clone()).await;
        assert_eq!(status, 400, "{body}: {resp}");
        assert_eq!(resp["field"], field, "{body}: {resp}");
        assert!(!resp.to_string().contains("12345678"), "{resp}");
    }
    let (status, bob) = api
        .post(
            "/agents",
            Some(&admin),
            json!({"username": "bob", "password": "bob-password", "role": "agent", "display_name": "Bob"}),
        )
        .await;
    assert_eq!(status, 201, "{bob}");
    assert_eq!(bob["role"], "agent");
    assert_eq!(bob["display_name"], "Bob");
    assert_eq!(bob["disabled"], false);
    assert!(!bob.to_string().contains("argon2"), "{bob}");
    let bob_id = bob["id"].as_str().unwrap().to_owned();
    let (status, body) = api
        .post(
            "/agents",
            Some(&admin),
            json!({"username": "BOB", "password": "other-password", "role": "agent"}),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (409, Some("username")),
        "{body}"
    );
    let stored: String = api
        .pg
        .query_one(
            "SELECT password_hash FROM agents WHERE username = 'bob'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("$argon2id$"), "{stored}");

    // An agent cannot create or list agents, nor read others.
    let (agent, _) = api.sign_in("bob", "bob-password").await;
    let (status, _) = api
        .post(
            "/agents",
            Some(&agent),
            json!({"username": "eve", "password": "eve-password", "role": "admin"}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = api.get("/agents", Some(&agent)).await;
    assert_eq!(status, 403);
    let (status, _) = api.get(&format!("/agents/{root}"), Some(&agent)).await;
    assert_eq!(status, 403);
    let (status, _) = api
        .patch(
            &format!("/agents/{root}"),
            Some(&agent),
            json!({"display_name": "x"}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/agents/{root}"),
            Some(&agent),
            None,
        )
        .await;
    assert_eq!(status, 403);

    // It reads and updates itself, but not its role or disabled flag.
    let (status, me) = api.get(&format!("/agents/{bob_id}"), Some(&agent)).await;
    assert_eq!((status, me["username"].as_str()), (200, Some("bob")));
    let (status, me) = api
        .patch(
            &format!("/agents/{bob_id}"),
            Some(&agent),
            json!({"display_name": "Robert"}),
        )
        .await;
    assert_eq!(
        (status, me["display_name"].as_str()),
        (200, Some("Robert")),
        "{me}"
    );
    for body in [json!({"role": "admin"}), json!({"disabled": false})] {
        let (status, resp) = api
            .patch(&format!("/agents/{bob_id}"), Some(&agent), body.clone())
            .await;
        assert_eq!(status, 403, "{body}: {resp}");
    }
    let (status, resp) = api
        .patch(
            &format!("/agents/{bob_id}"),
            Some(&agent),
            json!({"password": "short"}),
        )
        .await;
    assert_eq!((status, resp["field"].as_str()), (400, Some("password")));
    let role: String = api
        .pg
        .query_one("SELECT role FROM agents WHERE username = 'bob'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(role, "agent");

    // The admin lists (paginated), promotes, clears the name and deletes.
    api.agent("carol", "carol-password", Role::Agent).await;
    let (status, page) = api.get("/agents?limit=2", Some(&admin)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["agents"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (status, page2) = api
        .get(&format!("/agents?limit=2&cursor={cursor}"), Some(&admin))
        .await;
    assert_eq!(status, 200, "{page2}");
    assert_eq!(page2["agents"].as_array().unwrap().len(), 1);
    assert!(page2["next_cursor"].is_null());
    let mut names: Vec<String> = page["agents"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["agents"].as_array().unwrap())
        .map(|a| a["username"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["bob", "carol", "root"]);
    let (status, body) = api.get("/agents?cursor=bad", Some(&admin)).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("cursor")));
    let (status, body) = api
        .patch(
            &format!("/agents/{bob_id}"),
            Some(&admin),
            json!({"role": "admin", "display_name": null}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "admin");
    assert!(body["display_name"].is_null());
    // An admin cannot demote, disable or delete itself.
    let (status, _) = api
        .patch(
            &format!("/agents/{root}"),
            Some(&admin),
            json!({"role": "agent"}),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/agents/{root}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 409);
    let (status, _, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/agents/{bob_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = api.get(&format!("/agents/{bob_id}"), Some(&admin)).await;
    assert_eq!(status, 404);
    let (status, _) = api.get("/agents/not-a-uuid", Some(&admin)).await;
    assert_eq!(status, 404);
    assert_eq!(
        api.metrics
            .agent_changes
            .with_label_values(&["deleted"])
            .get(),
        1
    );
}

#[tokio::test]
async fn short_secrets_are_refused_at_start() {
    let (db_url, _pg) = database().await;
    let config = Config::try_parse_from([
        "chatpipe-api",
        "--postgres-url",
        &db_url,
        "--jwt-secret",
        "too-short",
    ])
    .unwrap();
    let err = chatpipe_api::auth_of(&config, &Metrics::new().unwrap()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("at least 32 bytes"), "{msg}");
    assert!(!msg.contains("too-short"), "{msg}");
    let admin = chatpipe_core::db::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    let name = db_url.rsplit('/').next().unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------
// OIDC
// ---------------------------------------------------------------------------

/// A local identity provider: its discovery document and JWKS over HTTP.
struct Issuer {
    url: String,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<Mutex<u32>>,
}

async fn issuer() -> Issuer {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let jwks = Arc::new(Mutex::new(json!({"keys": []})));
    let fetches = Arc::new(Mutex::new(0));
    let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/keys")});
    let (j, f) = (jwks.clone(), fetches.clone());
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { axum::Json(discovery) }),
        )
        .route(
            "/keys",
            get(move || async move {
                *f.lock().unwrap() += 1;
                let doc = j.lock().unwrap().clone();
                axum::Json(doc)
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Issuer { url, jwks, fetches }
}

struct RsaKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
    public_der: Vec<u8>,
}

fn rsa_key(kid: &str) -> RsaKey {
    use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
    let public = private.to_public_key();
    let der = private.to_pkcs1_der().unwrap();
    RsaKey {
        kid: kid.to_owned(),
        encoding: EncodingKey::from_rsa_der(der.as_bytes()),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be())}),
        public_der: public.to_pkcs1_der().unwrap().as_bytes().to_vec(),
    }
}

fn ec_key(kid: &str) -> (EncodingKey, Value) {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::EncodePrivateKey;
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    let der = secret.to_pkcs8_der().unwrap();
    let point = secret.public_key().to_encoded_point(false);
    let jwk = json!({"kty": "EC", "kid": kid, "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
        "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())});
    (EncodingKey::from_ec_der(der.as_bytes()), jwk)
}

fn sign(alg: Algorithm, kid: &str, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

#[tokio::test]
async fn oidc_tokens_verify_against_the_issuers_jwks() {
    let idp = issuer().await;
    let started = std::time::Instant::now();
    let rsa = rsa_key("rsa-1");
    eprintln!("RSA key generated in {:?}", started.elapsed());
    let (ec, ec_jwk) = ec_key("ec-1");
    *idp.jwks.lock().unwrap() = json!({"keys": [rsa.jwk, ec_jwk]});
    let mut config = OidcConfig::new(&idp.url, None, Some("chatpipe-test"));
    config.min_refetch_interval = Duration::from_millis(200);
    let api = start(Setup::Oidc(config)).await;

    let claims = |scope: Value| {
        json!({"sub": "user-1", "iss": idp.url, "aud": ["other", "chatpipe-test"],
               "exp": now() + 600, "iat": now(), "scope": scope})
    };
    let rs = sign(
        Algorithm::RS256,
        "rsa-1",
        &claims(json!("openid conversations:read")),
        &rsa.encoding,
    );
    let es = sign(
        Algorithm::ES256,
        "ec-1",
        &claims(json!("conversations:read")),
        &ec.clone(),
    );
    for token in [&rs, &es] {
        for path in DATA {
            let (status, body) = api.get(path, Some(token)).await;
            assert_ne!(status, 401, "{path}: {body}");
            assert_ne!(status, 403, "{path}: {body}");
        }
    }
    assert_eq!(*idp.fetches.lock().unwrap(), 1, "the JWKS is cached");
    // Scopes from `scp` (an array).
    let mut scp = claims(Value::Null);
    scp.as_object_mut().unwrap().remove("scope");
    scp["scp"] = json!(["conversations:read"]);
    let (status, _) = api
        .get(
            "/conversations/",
            Some(&sign(Algorithm::RS256, "rsa-1", &scp, &rsa.encoding)),
        )
        .await;
    assert_eq!(status, 200);
    // Without the scope: 403; an OIDC token is no agent.
    let no_scope = sign(
        Algorithm::RS256,
        "rsa-1",
        &claims(json!("openid")),
        &rsa.encoding,
    );
    let (status, _) = api.get("/conversations/", Some(&no_scope)).await;
    assert_eq!(status, 403);
    let (status, _) = api.get("/agents/me", Some(&rs)).await;
    assert_eq!(status, 404);
    // An OIDC admin may manage agents.
    let admin = sign(Algorithm::ES256, "ec-1", &claims(json!("admin")), &ec);
    let (status, body) = api.get("/agents", Some(&admin)).await;
    assert_eq!(status, 200, "{body}");

    // Refused: wrong audience, issuer, expired, unknown key, a key used
    // with another algorithm, and HS256 signed with the RSA public key.
    let mut wrong_aud = claims(json!("conversations:read"));
    wrong_aud["aud"] = json!("chatpipe-api");
    let mut wrong_iss = claims(json!("conversations:read"));
    wrong_iss["iss"] = json!("http://evil.example");
    let mut expired = claims(json!("conversations:read"));
    expired["exp"] = json!(now() - 3600);
    let ok = claims(json!("conversations:read"));
    let (stranger, _) = ec_key("ec-1");
    let confusion = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(rsa.kid.clone());
        jsonwebtoken::encode(&header, &ok, &EncodingKey::from_secret(&rsa.public_der)).unwrap()
    };
    let confusion_jwk = {
        // HS256 with the JWK's modulus bytes as the secret.
        let n = URL_SAFE_NO_PAD
            .decode(rsa.jwk["n"].as_str().unwrap())
            .unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(rsa.kid.clone());
        jsonwebtoken::encode(&header, &ok, &EncodingKey::from_secret(&n)).unwrap()
    };
    for (what, token) in [
        (
            "wrong audience",
            sign(Algorithm::RS256, "rsa-1", &wrong_aud, &rsa.encoding),
        ),
        (
            "wrong issuer",
            sign(Algorithm::RS256, "rsa-1", &wrong_iss, &rsa.encoding),
        ),
        (
            "expired",
            sign(Algorithm::RS256, "rsa-1", &expired, &rsa.encoding),
        ),
        (
            "forged EC key",
            sign(Algorithm::ES256, "ec-1", &ok, &stranger),
        ),
        (
            "EC kid with RS256",
            sign(Algorithm::RS256, "ec-1", &ok, &rsa.encoding),
        ),
        ("HS256 with the RSA public key", confusion),
        ("HS256 with the JWK modulus", confusion_jwk),
    ] {
        let (status, body) = api.get("/conversations/", Some(&token)).await;
        assert_eq!(status, 401, "{what}: {body}");
    }

    // A rotated key: an unknown kid makes the api fetch the JWKS again
    // (at most once per interval).
    let rsa2 = rsa_key("rsa-2");
    let fetches = *idp.fetches.lock().unwrap();
    let rotated = sign(Algorithm::RS256, "rsa-2", &ok, &rsa2.encoding);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (status, _) = api.get("/conversations/", Some(&rotated)).await;
    assert_eq!(status, 401, "not published yet");
    assert_eq!(*idp.fetches.lock().unwrap(), fetches + 1);
    // Within the interval, unknown kids do not refetch.
    for _ in 0..5 {
        let (status, _) = api.get("/conversations/", Some(&rotated)).await;
        assert_eq!(status, 401);
    }
    assert_eq!(*idp.fetches.lock().unwrap(), fetches + 1);
    idp.jwks.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(rsa2.jwk.clone());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (status, body) = api.get("/conversations/", Some(&rotated)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(*idp.fetches.lock().unwrap(), fetches + 2);
    assert!(
        api.metrics
            .auth_successes
            .with_label_values(&["bearer_oidc"])
            .get()
            > 5
    );
    assert!(api.failures("unknown_key") >= 6);
    // The api's own tokens keep working next to the issuer's.
    api.agent("ana", "correct horse", Role::Agent).await;
    let (local, _) = api.sign_in("ana", "correct horse").await;
    let (status, _) = api.get("/conversations/", Some(&local)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_unreachable_issuer_is_a_401_not_a_hang() {
    // Nothing listens on port 1.
    let mut config = OidcConfig::new("http://127.0.0.1:1", None, None);
    config.http_timeout = Duration::from_secs(2);
    let api = start(Setup::Oidc(config)).await;
    let (ec, _) = ec_key("k");
    let token = sign(
        Algorithm::ES256,
        "k",
        &json!({"sub": "u", "iss": "http://127.0.0.1:1", "aud": "chatpipe-api",
                "exp": now() + 60, "scope": "conversations:read"}),
        &ec,
    );
    let (status, body) = api.get("/conversations/", Some(&token)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(api.failures("jwks_unavailable"), 1);
    assert_eq!(
        api.metrics.jwks_fetches.with_label_values(&["error"]).get(),
        1
    );
}

#[test]
fn local_claims_round_trip_through_the_api_signer() {
    let t = LocalTokens::new(
        SECRET.as_bytes(),
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
    .unwrap();
    let c = AccessClaims::new(
        Uuid::new_v4(),
        "ana",
        Role::Admin,
        now(),
        Duration::from_secs(60),
    );
    let p = t.verify(&t.sign(&c).unwrap()).unwrap();
    assert!(p.has(chatpipe_api::auth::Scope::Admin));
}

#[tokio::test]
async fn the_api_role_runs_authentication_and_the_readonly_role_cannot_see_agents() {
    let api = start(Setup::Flags(vec![
        "--jwt-secret".into(),
        SECRET.into(),
        "--db-role".into(),
        "chatpipe_api".into(),
    ]))
    .await;
    api.agent("root", "root-password", Role::Admin).await;
    let (admin, refresh) = api.sign_in("root", "root-password").await;
    let (status, body) = api
        .post(
            "/agents",
            Some(&admin),
            json!({"username": "ana", "password": "ana-password", "role": "agent"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api
        .post(
            "/auth/token/refresh",
            None,
            json!({"refresh_token": refresh}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = api.get("/conversations/", Some(&admin)).await;
    assert_eq!(status, 200);
    // No other role reads the agents tables.
    for table in ["agents", "agent_refresh_tokens"] {
        let err = api
            .pg
            .batch_execute(&format!(
                "BEGIN; SET LOCAL ROLE {}; SELECT * FROM {table}; COMMIT;",
                chatpipe_api::store::READONLY_ROLE
            ))
            .await
            .unwrap_err();
        assert!(format!("{err:?}").contains("permission denied"), "{err:?}");
        api.pg.batch_execute("ROLLBACK").await.unwrap();
    }
}

/// With password sign-in, an api whose database role cannot use the agents
/// tables (`chatpipe_api_readonly`) is not ready, and says how to fix it;
/// as `chatpipe_api` it is.
#[tokio::test]
async fn readiness_says_when_the_role_cannot_use_the_agents_tables() {
    for (role, ready) in [("chatpipe_api_readonly", false), ("chatpipe_api", true)] {
        let api = start(Setup::Flags(vec![
            "--jwt-secret".into(),
            SECRET.into(),
            "--db-role".into(),
            role.into(),
        ]))
        .await;
        let (status, body) = api.get("/readyz", None).await;
        if ready {
            assert_eq!(status, 200, "{role}: {body}");
        } else {
            assert_eq!(status, 503, "{role}: {body}");
            assert!(
                body.to_string()
                    .contains("CHATPIPE_API_DB_ROLE=chatpipe_api"),
                "{role}: {body}"
            );
        }
    }
}
