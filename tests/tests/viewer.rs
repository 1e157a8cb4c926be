//! The conversation viewer in a real browser: headless Chromium (Debian's
//! `chromium`) loads the viewer served by the api while the pipeline runs,
//! a screenshot is saved (its path is printed), and the rendered DOM must
//! show the conversation's INBOUND and OUTBOUND messages by id. A second
//! case drives Chromium through the DevTools pipe in real time and watches
//! messages and replies appear in an open page without a reload. With the
//! api's authentication on, the viewer asks for a sign-in (wrong
//! credentials are refused with a message), then shows the conversation,
//! renews its token, keeps it out of every browser storage and forgets it
//! on sign-out; Swagger UI at `/docs/` renders the api's document and calls
//! it with the bearer token given to its "Authorize" dialog.

#[path = "common/cdp.rs"]
mod cdp;
mod common;

use std::path::PathBuf;
use std::process::Command;

use chatpipe_tests::{close_conversation, expected_reply, new_conversation, new_message};
use common::{event_time, Options, Pipeline};
use uuid::Uuid;

fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CHATPIPE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or
/// `--screenshot=<file>`) and returns its stdout.
fn run_chromium(bin: &PathBuf, profile: &std::path::Path, mode: &str, url: &str) -> String {
    let out = Command::new(bin)
        .args(cdp::HEADLESS_ARGS)
        .args([
            "--hide-scrollbars",
            "--window-size=1280,900",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(url)
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn viewer_shows_inbound_outbound_and_rejected_events_in_chromium() {
    let Some(bin) = chromium() else {
        panic!("chromium not found: apt-get install -y chromium (the test script installs it)");
    };
    let p = Pipeline::start(Options::short()).await;
    let c = Uuid::new_v4();
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    let ms = [Uuid::new_v4(), Uuid::new_v4()];
    p.post_ok(&new_message(ms[0], c, "Olá, tudo bem?", event_time(5)), 202)
        .await;
    p.post_ok(
        &new_message(ms[1], c, "Preciso de ajuda com meu pedido", event_time(7)),
        202,
    )
    .await;
    let view = p.wait_replies(c, 1).await;
    let reply = common::outbound(&view)[0].clone();
    assert_eq!(reply["content"], expected_reply(&ms));
    let reply_id = reply["id"].as_str().unwrap().to_owned();
    // A rejected event for the same conversation (a message after the close).
    p.post_ok(&close_conversation(c, event_time(9)), 200).await;
    let raced = Uuid::new_v4();
    p.produce_direct(&chatpipe_core::event::Event::NewMessage {
        id: raced,
        conversation_id: c,
        content: "tarde demais".into(),
        timestamp: event_time(10),
    })
    .await;
    p.wait_rejected(c, raced).await;

    // Cargo's scratch directory for integration tests (under the target dir).
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("viewer-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("{}/#/conversations/{c}", p.api.base_url());
    let bin2 = bin.clone();
    let (dom_dir, url2) = (dir.join("profile-dom"), url.clone());
    let dom =
        tokio::task::spawn_blocking(move || run_chromium(&bin2, &dom_dir, "--dump-dom", &url2))
            .await
            .unwrap();
    for id in ms
        .iter()
        .map(Uuid::to_string)
        .chain([reply_id.clone(), raced.to_string()])
    {
        assert!(dom.contains(&id), "the viewer DOM lacks {id}:\n{dom:.4000}");
    }
    assert!(dom.contains(r#"data-type="INBOUND""#), "{dom:.4000}");
    assert!(dom.contains(r#"data-type="OUTBOUND""#), "{dom:.4000}");
    assert!(dom.contains("Mensagens recebidas:"), "{dom:.4000}");
    assert!(dom.contains("CLOSED"), "{dom:.4000}");
    // The conversation also appears in the list pane.
    assert!(
        dom.contains(&format!(r#"data-conversation-id="{c}""#)),
        "{dom:.4000}"
    );

    let shot = dir.join("viewer.png");
    let (shot_dir, mode) = (
        dir.join("profile-shot"),
        format!("--screenshot={}", shot.display()),
    );
    tokio::task::spawn_blocking(move || run_chromium(&bin, &shot_dir, &mode, &url))
        .await
        .unwrap();
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        shot.display()
    );
    println!("viewer screenshot: {}", shot.display());
}

async fn wait_for_dom(
    browser: &mut cdp::Browser,
    what: &str,
    expression: &str,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + common::EVENTUALLY;
    loop {
        let v = browser.eval(expression);
        if v == serde_json::Value::Bool(true) {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            let text = browser.eval("document.body.innerText");
            panic!("the page never showed {what}; it shows: {text}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn viewer_shows_new_messages_and_replies_live_without_reload() {
    let Some(bin) = chromium() else {
        panic!("chromium not found: apt-get install -y chromium (the test script installs it)");
    };
    let p = Pipeline::start(Options {
        gap: std::time::Duration::from_millis(1500),
        tolerance: std::time::Duration::from_millis(2000),
        ..Options::short()
    })
    .await;
    let c = Uuid::new_v4();
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("viewer-live-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut browser = cdp::Browser::start(&bin, &dir.join("profile"));
    browser.open(&format!("{}/#/conversations/{c}", p.api.base_url()));
    wait_for_dom(
        &mut browser,
        "the open, empty conversation",
        &format!(
            "document.getElementById('detail-id').textContent === '{c}' && \
             document.querySelectorAll('[data-message-id]').length === 0"
        ),
    )
    .await;
    assert_eq!(browser.eval("window.__loaded_once = 'yes'"), "yes");
    // Authentication off: no sign-in form, no account, nothing stored.
    assert_eq!(
        browser.eval(
            "document.body.dataset.authState === 'open' && \
             document.getElementById('sign-in-pane').hidden && \
             document.getElementById('account').hidden"
        ),
        true
    );

    let m1 = Uuid::new_v4();
    p.post_ok(&new_message(m1, c, "primeira ao vivo", event_time(1)), 202)
        .await;
    wait_for_dom(
        &mut browser,
        "the INBOUND message",
        &format!("!!document.querySelector('[data-message-id=\"{m1}\"][data-type=\"INBOUND\"]')"),
    )
    .await;
    let reply = p.wait_replies(c, 1).await;
    let reply_id = common::outbound(&reply)[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for_dom(
        &mut browser,
        "the OUTBOUND reply",
        &format!(
            "!!document.querySelector('[data-message-id=\"{reply_id}\"][data-type=\"OUTBOUND\"]')"
        ),
    )
    .await;
    let m2 = Uuid::new_v4();
    p.post_ok(&new_message(m2, c, "segunda ao vivo", event_time(2)), 202)
        .await;
    p.wait_replies(c, 2).await;
    wait_for_dom(
        &mut browser,
        "the second message and its reply",
        &format!(
            "!!document.querySelector('[data-message-id=\"{m2}\"]') && \
             document.querySelectorAll('[data-type=\"OUTBOUND\"]').length === 2"
        ),
    )
    .await;
    // Same page all along: no reload happened.
    assert_eq!(browser.eval("window.__loaded_once"), "yes");
    let shot = dir.join("viewer-live.png");
    browser.screenshot(&shot);
    assert!(std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0) > 10_000);
    println!("viewer live screenshot: {}", shot.display());
}

/// Creates an agent with the real `chatpipe-admin agent create`, the
/// password on standard input.
fn create_agent(db_url: &str, username: &str, role: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(chatpipe_tests::binary("chatpipe-admin"))
        .args([
            "agent",
            "create",
            "--username",
            username,
            "--role",
            role,
            "--password-stdin",
        ])
        .env("CHATPIPE_POSTGRES_URL", db_url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting chatpipe-admin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "chatpipe-admin agent create failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!printed.contains(password), "the password was printed");
}

/// A JavaScript string literal of `s` (JSON is valid JavaScript).
fn js(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Types `username` and `password` into the viewer's sign-in form and
/// submits it as a person would (the submit button).
fn submit_sign_in(browser: &mut cdp::Browser, username: &str, password: &str) {
    let r = browser.eval(&format!(
        "document.getElementById('sign-in-username').value = {}; \
         document.getElementById('sign-in-password').value = {}; \
         document.getElementById('sign-in-submit').click(); 'sent'",
        js(username),
        js(password)
    ));
    assert_eq!(r, "sent");
}

/// No browser storage holds anything, and no JWT is anywhere in the page.
const NOTHING_STORED: &str = "localStorage.length === 0 && sessionStorage.length === 0 && \
     document.cookie === '' && !document.documentElement.outerHTML.includes('eyJ')";

#[tokio::test]
async fn viewer_signs_in_renews_and_signs_out_when_the_api_requires_a_token() {
    let Some(bin) = chromium() else {
        panic!("chromium not found: apt-get install -y chromium (the test script installs it)");
    };
    let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let p = Pipeline::start(Options {
        api_env: vec![
            ("CHATPIPE_API_JWT_SECRET".into(), secret),
            // The role that also reads and updates the agents.
            ("CHATPIPE_API_DB_ROLE".into(), "chatpipe_api".into()),
            // Short-lived access tokens, so the viewer renews one while
            // the test watches.
            ("CHATPIPE_API_ACCESS_TOKEN_TTL".into(), "4s".into()),
        ],
        ..Options::short()
    })
    .await;
    let (status, _) = p.get("/conversations/").await;
    assert_eq!(status, 401, "the api must require a token");
    let password = format!("pw-{}", Uuid::new_v4().simple());
    create_agent(&p.db.url, "ana", "admin", &password);

    let c = Uuid::new_v4();
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    let ms = [Uuid::new_v4(), Uuid::new_v4()];
    p.post_ok(&new_message(ms[0], c, "Olá, tudo bem?", event_time(5)), 202)
        .await;
    p.post_ok(
        &new_message(ms[1], c, "Preciso de ajuda", event_time(7)),
        202,
    )
    .await;

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("viewer-auth-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut browser = cdp::Browser::start(&bin, &dir.join("profile"));
    browser.open(&format!("{}/#/conversations/{c}", p.api.base_url()));

    // The api answered 401: the form replaces the viewer, accessibly.
    wait_for_dom(
        &mut browser,
        "the sign-in form",
        "document.body.dataset.authState === 'signed-out' && \
         !document.getElementById('sign-in-pane').hidden && \
         document.getElementById('viewer').hidden",
    )
    .await;
    let form = browser.eval(
        "(() => { const u = document.getElementById('sign-in-username'); \
          const pw = document.getElementById('sign-in-password'); \
          return [u.autocomplete, pw.autocomplete, pw.type, \
            !!document.querySelector('label[for=sign-in-username]'), \
            !!document.querySelector('label[for=sign-in-password]'), \
            document.getElementById('sign-in-error').getAttribute('role'), \
            document.querySelectorAll('[data-message-id]').length]; })()",
    );
    assert_eq!(
        form,
        serde_json::json!([
            "username",
            "current-password",
            "password",
            true,
            true,
            "alert",
            0
        ])
    );

    // Wrong credentials: a clear message, still signed out.
    submit_sign_in(&mut browser, "ana", "not-the-password");
    wait_for_dom(
        &mut browser,
        "the wrong-credentials message",
        "!document.getElementById('sign-in-error').hidden && \
         document.getElementById('sign-in-error').textContent.includes('Wrong username or password') && \
         document.body.dataset.authState === 'signed-out'",
    )
    .await;
    assert_eq!(
        browser.eval("document.querySelectorAll('[data-message-id]').length"),
        0
    );

    // Right credentials: the conversation with its messages and reply.
    submit_sign_in(&mut browser, "ana", &password);
    let both = ms
        .iter()
        .map(|m| {
            format!("!!document.querySelector('[data-message-id=\"{m}\"][data-type=\"INBOUND\"]')")
        })
        .collect::<Vec<_>>()
        .join(" && ");
    wait_for_dom(
        &mut browser,
        "the conversation's messages and reply after signing in",
        &format!(
            "document.body.dataset.authState === 'signed-in' && \
             document.getElementById('sign-in-pane').hidden && {both} && \
             !!document.querySelector('[data-type=\"OUTBOUND\"]') && \
             document.getElementById('detail-id').textContent === '{c}'"
        ),
    )
    .await;
    assert_eq!(
        browser.eval("document.getElementById('sign-in-error').hidden"),
        true
    );
    assert_eq!(
        browser.eval("document.getElementById('sign-in-password').value"),
        ""
    );
    assert_eq!(
        browser.eval("document.getElementById('account-name').textContent"),
        "signed in as ana"
    );
    assert_eq!(browser.eval(NOTHING_STORED), true, "a token was stored");
    let shot = dir.join("viewer-signed-in.png");
    browser.screenshot(&shot);
    println!("signed-in viewer screenshot: {}", shot.display());

    // The 4 s access token is renewed before it expires, and the viewer
    // goes on reading with the new one (a message posted after the renewal
    // appears).
    wait_for_dom(
        &mut browser,
        "a token renewal",
        "Number(document.body.dataset.tokenRefreshes) >= 1",
    )
    .await;
    let m3 = Uuid::new_v4();
    p.post_ok(
        &new_message(m3, c, "depois da renovação", event_time(20)),
        202,
    )
    .await;
    wait_for_dom(
        &mut browser,
        "a message posted after the renewal",
        &format!(
            "!!document.querySelector('[data-message-id=\"{m3}\"]') && \
             document.body.dataset.authState === 'signed-in'"
        ),
    )
    .await;
    assert_eq!(browser.eval(NOTHING_STORED), true, "a token was stored");

    // Sign-out: the form again, and nothing read stays on screen.
    assert_eq!(
        browser.eval("document.getElementById('sign-out').click(); 'ok'"),
        "ok"
    );
    wait_for_dom(
        &mut browser,
        "the sign-in form after signing out",
        "document.body.dataset.authState === 'signed-out' && \
         !document.getElementById('sign-in-pane').hidden && \
         document.querySelectorAll('[data-message-id]').length === 0 && \
         document.querySelectorAll('[data-conversation-id]').length === 0",
    )
    .await;
    // Still signed out a poll period later (no poll resumed with a token).
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    assert_eq!(
        browser.eval(
            "document.body.dataset.authState === 'signed-out' && \
             document.querySelectorAll('[data-message-id]').length === 0"
        ),
        true
    );
    assert_eq!(browser.eval(NOTHING_STORED), true);
}

#[tokio::test]
async fn swagger_ui_renders_the_document_and_calls_the_api_with_a_bearer_token() {
    let Some(bin) = chromium() else {
        panic!("chromium not found: apt-get install -y chromium (the test script installs it)");
    };
    let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let p = Pipeline::start(Options {
        api_env: vec![
            ("CHATPIPE_API_JWT_SECRET".into(), secret),
            ("CHATPIPE_API_DB_ROLE".into(), "chatpipe_api".into()),
        ],
        ..Options::short()
    })
    .await;
    let password = format!("pw-{}", Uuid::new_v4().simple());
    create_agent(&p.db.url, "bo", "admin", &password);
    let token: serde_json::Value = p
        .http
        .post(format!("{}/auth/token", p.api.base_url()))
        .json(&serde_json::json!({"username": "bo", "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("swagger-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut browser = cdp::Browser::start(&bin, &dir.join("profile"));
    browser.open(&format!("{}/docs", p.api.base_url()));
    // The document's operations and the Authorize button (the document
    // declares a security scheme).
    wait_for_dom(
        &mut browser,
        "Swagger UI with the api's operations",
        "document.querySelectorAll('.opblock').length >= 4 && \
         !!document.querySelector('.btn.authorize') && \
         document.body.innerText.includes('/conversations/')",
    )
    .await;
    let shot = dir.join("swagger.png");
    browser.screenshot(&shot);
    println!("swagger screenshot: {}", shot.display());

    // Authorize with the bearer token (Swagger UI's own API for what the
    // dialog does), then "Try it out" → "Execute" on GET /conversations/.
    let r = browser.eval(&format!(
        "window.ui.preauthorizeApiKey('bearerAuth', {}); \
         JSON.stringify(window.ui.authSelectors.authorized().toJS())",
        js(&token)
    ));
    assert!(
        r.as_str().unwrap_or_default().contains("bearerAuth"),
        "Swagger UI has no bearerAuth scheme: {r}"
    );
    let opened = browser.eval(
        "(() => { const op = [...document.querySelectorAll('.opblock-get')] \
            .find((o) => { const p = o.querySelector('.opblock-summary-path'); \
              return !!p && (p.dataset.path === '/conversations/' || \
                p.innerText.replace(/\\u200b/g, '').trim() === '/conversations/'); }); \
          if (!op) return 'no such operation'; \
          op.dataset.underTest = 'yes'; \
          (op.querySelector('.opblock-summary-control') || op.querySelector('.opblock-summary')).click(); return 'opened'; })()",
    );
    assert_eq!(opened, "opened");
    wait_for_dom(
        &mut browser,
        "the Try it out button",
        "!!document.querySelector('[data-under-test] .try-out__btn')",
    )
    .await;
    // `tryItOutEnabled` opens operations ready to execute; click "Try it
    // out" only if this Swagger UI did not.
    browser.eval(
        "(() => { if (document.querySelector('[data-under-test] .execute')) return; \
           const b = document.querySelector('[data-under-test] .try-out__btn'); \
           if (b && !b.classList.contains('cancel')) b.click(); })()",
    );
    wait_for_dom(
        &mut browser,
        "the Execute button",
        "!!document.querySelector('[data-under-test] .execute')",
    )
    .await;
    browser.eval("document.querySelector('[data-under-test] .execute').click()");
    wait_for_dom(
        &mut browser,
        "a 200 answer to the authorized call",
        "[...document.querySelectorAll('[data-under-test] .live-responses-table td.response-col_status')] \
           .some((td) => td.innerText.trim().startsWith('200'))",
    )
    .await;
    let curl =
        browser.eval("document.querySelector('[data-under-test] .curl-command')?.innerText ?? ''");
    assert!(
        curl.as_str()
            .unwrap_or_default()
            .contains("Authorization: Bearer"),
        "the call carried no bearer token: {curl}"
    );
}
