//! Webhook authenticity end to end (real binaries, real broker, real
//! Postgres, shortened windows): `chatpipe-ingest` started with
//! `CHATPIPE_WEBHOOK_SECRETS` (two secrets, as during a rotation) answers
//! unsigned, forged, stale and future-dated webhooks `401` naming the header
//! and lets none of them reach the pipeline, while a conversation signed
//! with either secret gets its reply.
//!
//! The signatures are made here with an HMAC-SHA256 of this file's own
//! (checked against the Standard Webhooks test vector), independent of
//! ingest's implementation.

mod common;

use std::time::Duration;

use chatpipe_tests::{expected_reply, new_conversation, new_message};
use chrono::Utc;
use common::{event_time, outbound, Options, Pipeline};
use serde_json::Value;
use uuid::Uuid;

const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW: &str = "whsec_c2Vjb25kIHNlY3JldCBvZiB0aGUgcm90YXRpb24hIQ==";
const FORGED: &str = "whsec_bm90IGEgc2VjcmV0IG9mIHRoaXMgaW5nZXN0ISE=";

// ---------------------------------------------------------------------------
// Signing (SHA-256, HMAC, base64: small and independent of ingest's crates)
// ---------------------------------------------------------------------------

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(msg);
    let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&sha256(&inner));
    sha256(&outer)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_encode(data: &[u8]) -> String {
    let mut s = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                s.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn b64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = B64.iter().position(|&x| x == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` under `secret`.
fn signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = b64_decode(secret.strip_prefix("whsec_").expect("whsec_ secret"));
    let mut msg = format!("{id}.{timestamp}.").into_bytes();
    msg.extend_from_slice(body);
    format!("v1,{}", b64_encode(&hmac_sha256(&key, &msg)))
}

/// The three Standard Webhooks headers of `body` signed with `secret`.
fn signed(secret: &str, body: &[u8], timestamp: i64) -> Vec<(&'static str, String)> {
    let id = format!("msg_{}", Uuid::new_v4().simple());
    let sig = signature(secret, &id, timestamp, body);
    vec![
        ("webhook-id", id),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", sig),
    ]
}

#[test]
fn the_test_signer_reproduces_the_published_vector() {
    assert_eq!(
        signature(
            OLD,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
}

// ---------------------------------------------------------------------------
// The pipeline
// ---------------------------------------------------------------------------

/// POSTs `body` with `headers` to the pipeline's ingest.
async fn post(p: &Pipeline, body: &Value, headers: &[(&str, String)]) -> (u16, Value) {
    let mut r = p
        .http
        .post(format!("{}/webhook/", p.ingest.base_url()))
        .header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    let r = r
        .body(body.to_string())
        .send()
        .await
        .expect("POST /webhook/");
    let status = r.status().as_u16();
    (status, r.json::<Value>().await.unwrap_or(Value::Null))
}

async fn post_signed(p: &Pipeline, secret: &str, body: &Value, status: u16) {
    let bytes = body.to_string().into_bytes();
    let (code, reply) = post(p, body, &signed(secret, &bytes, Utc::now().timestamp())).await;
    assert_eq!(code, status, "signed POST {body}: {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_signed_webhooks_reach_the_pipeline_and_get_their_reply() {
    let mut opts = Options::short();
    opts.ingest_env = vec![("CHATPIPE_WEBHOOK_SECRETS".into(), format!("{OLD}  {NEW}"))];
    let p = Pipeline::start(opts).await;

    // Refused: unsigned, forged, stale, future-dated, tampered.
    let intruder = Uuid::new_v4();
    let open = new_conversation(intruder, event_time(0));
    let bytes = open.to_string().into_bytes();
    let now = Utc::now().timestamp();
    let other = new_conversation(Uuid::new_v4(), event_time(0))
        .to_string()
        .into_bytes();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![], "webhook-id"),
        (signed(FORGED, &bytes, now), "webhook-signature"),
        (signed(OLD, &bytes, now - 3600), "webhook-timestamp"),
        (signed(NEW, &bytes, now + 3600), "webhook-timestamp"),
        (signed(NEW, &other, now), "webhook-signature"),
    ];
    for (headers, field) in &cases {
        let (code, reply) = post(&p, &open, headers).await;
        assert_eq!(code, 401, "{headers:?}: {reply}");
        assert_eq!(reply["field"], *field, "{headers:?}: {reply}");
        assert!(reply["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // A message to it, unsigned, is refused as well.
    let (code, _) = post(
        &p,
        &new_message(Uuid::new_v4(), intruder, "let me in", event_time(1)),
        &[],
    )
    .await;
    assert_eq!(code, 401);

    // A conversation signed with the new secret, its message with the old
    // one (a rotation in progress): the reply comes.
    let c = Uuid::new_v4();
    let m = Uuid::new_v4();
    post_signed(&p, NEW, &new_conversation(c, event_time(0)), 201).await;
    post_signed(
        &p,
        OLD,
        &new_message(m, c, "olá, assinado", event_time(1)),
        202,
    )
    .await;
    let view = p.wait_replies(c, 1).await;
    let replies = outbound(&view);
    assert_eq!(replies.len(), 1, "{view}");
    assert_eq!(replies[0]["content"], expected_reply(&[m]), "{view}");

    // Nothing of the refused requests reached the pipeline, and each was
    // counted by reason.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        p.conversation(intruder).await,
        None,
        "a refused conversation was stored"
    );
    let metrics = p
        .http
        .get(format!("{}/metrics", p.ingest.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failures: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("chatpipe_ingest_webhook_auth_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(failures, cases.len() as u64 + 1, "{metrics}");
}
