//! The conversation viewer in a real browser: headless Chromium (Debian's
//! `chromium`) loads the viewer served by the api while the pipeline runs,
//! a screenshot is saved (its path is printed), and the rendered DOM must
//! show the conversation's INBOUND and OUTBOUND messages by id. A second
//! case drives Chromium through the DevTools pipe in real time and watches
//! messages and replies appear in an open page without a reload.

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
            let html = browser.eval("document.getElementById('detail-pane').innerText");
            panic!("the viewer never showed {what}; detail pane: {html}");
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
