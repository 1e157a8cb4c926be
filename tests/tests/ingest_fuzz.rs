//! Fuzz of the whole pipeline through its front door: a random (seeded; the
//! seed is printed, and `CHATPIPE_FUZZ_SEED=<n>` replays it) stream of
//! webhook bodies is POSTed to the real `chatpipe-ingest` (16 requests in
//! flight, each at its planned time), read by two real `chatpipe-processor`
//! replicas and served by the real `chatpipe-api`.
//!
//! The stream: NEW_CONVERSATION / NEW_MESSAGE / CLOSE_CONVERSATION over a
//! small pool of conversations (some never created, some created after
//! their first messages — within and beyond L —, some closed, closed before
//! their last messages, closed twice), identical redeliveries (the same
//! bytes), the same event with its time written in another offset, lifecycle
//! events with another time for a taken id, message ids reused (same content
//! = redelivery; other content or another conversation = reuse; the id of a
//! group-of-one's reply), event times across the accepted range (the
//! extremes, odd offsets like `+23:59`, 0–9 fraction digits), contents with
//! arbitrary unicode (empty, emoji, control characters, noncharacters, a
//! content of exactly the size limit; never NUL), bodies escaped in every
//! way JSON allows, with extra fields, upper-case ids, reordered keys. A few
//! bodies are invalid on purpose (NUL in the content, UTC years 0 and
//! 10000, content over the limit, not JSON) and must be `400` naming the
//! field.
//!
//! Every request and its answers (status, `Idempotent-Replay`,
//! `Retry-After`, body) are recorded; a `503` is retried like a provider
//! would. Once the pipeline has settled (every partition's resume and
//! processed offsets at the log's end, no INBOUND row without reply, nothing
//! changing), the test reads the api (and, for cross-checks, Postgres) and
//! reports every violation at once, with the seed:
//! - every answer is 200/201/202/400 (503 only with `Retry-After`), the
//!   status fits the event type, a 400 names a field;
//! - every 202 NEW_MESSAGE is an INBOUND row of its conversation with its
//!   content, answered by exactly one reply, or visible in
//!   `/rejected-events?conversation_id=…` with a reason (an identical
//!   redelivery may share the fate of the first);
//! - every 201 NEW_CONVERSATION exists with `created_at` = its event time;
//!   every 200 CLOSE_CONVERSATION left it CLOSED with `updated_at` = its
//!   event time; one id never gets two first successes;
//! - every 400 left nothing: no conversation without a 201, no INBOUND row
//!   and no rejection that no 202 accounts for; and each lifecycle 400 is
//!   justified by what was answered before it;
//! - no reply lists an id twice, every INBOUND row is listed by exactly one
//!   reply (the one its row names), every reply's text is
//!   `"Mensagens recebidas:\n" + ids + "\n"`.
//!
//! Waits are bounded waits for an outcome, never latency thresholds.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Datelike, FixedOffset, TimeZone, Timelike, Utc};
use common::{Options, Pipeline};
use serde_json::Value;
use uuid::Uuid;

/// Roughly this many requests (valid-shaped and invalid).
const TARGET_REQUESTS: usize = 1_500;
/// Requests in flight at once.
const IN_FLIGHT: usize = 16;
/// Conversations start within this many ms of the stream's start.
const SPREAD_MS: i64 = 8_000;
/// Grouping gap of [`Options::short`], in ms (shapes the bursts).
const G_MS: i64 = 400;
/// How many times one request is retried after a `503`.
const MAX_RETRIES: usize = 30;
/// Longest wait for the pipeline to settle (bounds a failure only).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Consecutive settled polls (200 ms apart) before reading the outcome.
const SETTLED_POLLS: usize = 4;
/// The text every reply starts with.
const REPLY_PREFIX: &str = "Mensagens recebidas:\n";
/// Namespace of reply ids (UUIDv5 over the inbound ids of the group), as
/// documented; used only to send message ids that a reply will take.
const REPLY_NAMESPACE: Uuid = Uuid::from_u128(0x6368_6174_7069_7065_2d72_6570_6c79_0001);

// ---------------------------------------------------------------------------
// A small seeded generator (the tests crate has no `rand`)
// ---------------------------------------------------------------------------

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below((hi - lo) as u64) as i64
    }

    /// True with probability `percent` %.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize].clone()
    }

    fn uuid(&mut self) -> Uuid {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        b[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(b).into_uuid()
    }
}

fn seed() -> u64 {
    if let Some(s) = std::env::var("CHATPIPE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return s;
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Utc::now().timestamp_nanos_opt().unwrap_or_default() as u128);
    h.write_u32(std::process::id());
    h.finish()
}

// ---------------------------------------------------------------------------
// Event times
// ---------------------------------------------------------------------------

/// An event time: the instant and how the body writes it.
#[derive(Debug, Clone)]
struct When {
    at: DateTime<Utc>,
    text: String,
}

fn min_ts() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0)
        .single()
        .expect("year 1")
}

fn max_whole_ts() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59)
        .single()
        .expect("year 9999")
}

/// A random instant in the accepted range, with 0, 1, 3, 6 or 9 fraction
/// digits (returned with it).
fn random_instant(rng: &mut Rng) -> (DateTime<Utc>, u32) {
    let digits = rng.pick(&[0u32, 0, 0, 1, 3, 3, 6, 6, 9]);
    let whole = match rng.below(20) {
        0 | 1 => min_ts(),
        2 | 3 => max_whole_ts(),
        4..=8 => {
            let secs = rng.range(min_ts().timestamp(), max_whole_ts().timestamp() + 1);
            Utc.timestamp_opt(secs, 0).single().expect("in range")
        }
        _ => {
            Utc.with_ymd_and_hms(2025, 6, 4, 14, 20, 0)
                .single()
                .expect("constant")
                + chrono::Duration::seconds(rng.range(-20_000_000, 20_000_000))
        }
    };
    let unit = 10u64.pow(9 - digits);
    let nanos = if digits == 0 {
        0
    } else if rng.chance(20) {
        // All nines: 23:59:59.999999999 at the top of the range.
        1_000_000_000 - unit
    } else {
        rng.below(10u64.pow(digits)) * unit
    };
    (whole + chrono::Duration::nanoseconds(nanos as i64), digits)
}

/// Writes `at` as RFC 3339 with `digits` fraction digits and a random
/// offset (`Z`, `+00:00`, `±23:59`, any other), falling back to `Z` when
/// the local time would leave the years 0001–9999.
fn render(rng: &mut Rng, at: DateTime<Utc>, digits: u32) -> String {
    const EDGE: i32 = 23 * 3600 + 59 * 60;
    let offset = match rng.below(10) {
        0..=3 => None,
        4 => Some(0),
        5 => Some(EDGE),
        6 => Some(-EDGE),
        _ => Some(rng.range(-(23 * 60 + 59), 23 * 60 + 60) as i32 * 60),
    };
    let frac = if digits == 0 {
        String::new()
    } else {
        format!(
            ".{:0width$}",
            at.nanosecond() / 10u32.pow(9 - digits),
            width = digits as usize
        )
    };
    if let Some(local) = offset
        .and_then(FixedOffset::east_opt)
        .map(|o| at.with_timezone(&o))
        .filter(|l| (1..=9999).contains(&l.year()))
    {
        return format!(
            "{}{frac}{}",
            local.format("%Y-%m-%dT%H:%M:%S"),
            local.format("%:z")
        );
    }
    format!("{}{frac}Z", at.format("%Y-%m-%dT%H:%M:%S"))
}

fn random_when(rng: &mut Rng) -> When {
    let (at, digits) = random_instant(rng);
    When {
        at,
        text: render(rng, at, digits),
    }
}

/// The same instant, possibly written differently.
fn rewritten(rng: &mut Rng, w: &When) -> When {
    let digits = if w.at.nanosecond() == 0 {
        rng.pick(&[0u32, 3, 9])
    } else {
        9
    };
    When {
        at: w.at,
        text: render(rng, w.at, digits),
    }
}

/// Another instant than `w`'s.
fn other_when(rng: &mut Rng, w: &When) -> When {
    loop {
        let o = random_when(rng);
        if (o.at - w.at).abs() >= chrono::Duration::seconds(1) {
            return o;
        }
    }
}

// ---------------------------------------------------------------------------
// Contents and bodies
// ---------------------------------------------------------------------------

const PIECES: &[&str] = &[
    "Olá",
    "ok",
    "tudo bem?",
    " ",
    "\n",
    "\r\n",
    "\t",
    "😀",
    "👨‍👩‍👧‍👦",
    "🇧🇷",
    "é",
    "e\u{301}",
    "\u{202e}",
    "\u{feff}",
    "\u{200b}",
    "\u{fffe}",
    "\u{ffff}",
    "\u{10ffff}",
    "\u{e000}",
    "\u{1}",
    "\u{1b}[31m",
    "\u{7f}",
    "\u{85}",
    "\u{9f}",
    "\u{2028}",
    "\\",
    "\"",
    "\\u0000",
    "'; DROP TABLE messages; --",
    "<script>alert(1)</script>",
    "中文",
    "עברית",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "%s%n",
    "{}",
    "null",
    "Mensagens recebidas:\n",
];

fn random_char(rng: &mut Rng) -> char {
    loop {
        let cp = match rng.below(4) {
            0 => rng.range(1, 0x20),
            1 => rng.range(0x20, 0x800),
            2 => rng.range(0x800, 0x1_0000),
            _ => rng.range(0x1_0000, 0x11_0000),
        };
        if let Some(c) = char::from_u32(cp as u32) {
            return c;
        }
    }
}

/// Arbitrary storable content (never NUL, at most the 16 KiB limit).
fn random_content(rng: &mut Rng) -> String {
    match rng.below(60) {
        0..=2 => String::new(),
        // Exactly the limit (16 KiB of UTF-8), in multi-byte characters.
        3 => {
            let mut s = "ç".repeat(8_191);
            s.push_str("ab");
            s
        }
        4 => "x".repeat(rng.range(1_000, 16_384) as usize),
        _ => {
            let mut s = String::new();
            for _ in 0..rng.range(1, 10) {
                if rng.chance(60) {
                    s.push_str(rng.pick(PIECES));
                } else {
                    for _ in 0..rng.range(1, 6) {
                        s.push(random_char(rng));
                    }
                }
            }
            s
        }
    }
}

/// A JSON string literal of `s`: serde_json's, or with every character
/// outside printable ASCII written as `\uXXXX` (surrogate pairs included).
fn json_string(s: &str, escape_all: bool) -> String {
    if !escape_all {
        return serde_json::to_string(s).expect("a string serialises");
    }
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            ' '..='~' if ch != '"' && ch != '\\' => out.push(ch),
            _ => {
                let mut buf = [0u16; 2];
                for unit in ch.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
        }
    }
    out.push('"');
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    NewConversation,
    NewMessage,
    Close,
}

impl Kind {
    fn wire(self) -> &'static str {
        match self {
            Kind::NewConversation => "NEW_CONVERSATION",
            Kind::NewMessage => "NEW_MESSAGE",
            Kind::Close => "CLOSE_CONVERSATION",
        }
    }
}

/// A valid-shaped event (for lifecycle events `conv == id`).
#[derive(Debug, Clone)]
struct Ev {
    kind: Kind,
    id: Uuid,
    conv: Uuid,
    content: String,
    when: When,
}

impl Ev {
    fn new_conversation(id: Uuid, when: When) -> Ev {
        Ev {
            kind: Kind::NewConversation,
            id,
            conv: id,
            content: String::new(),
            when,
        }
    }

    fn close(id: Uuid, when: When) -> Ev {
        Ev {
            kind: Kind::Close,
            id,
            conv: id,
            content: String::new(),
            when,
        }
    }

    fn message(id: Uuid, conv: Uuid, content: String, when: When) -> Ev {
        Ev {
            kind: Kind::NewMessage,
            id,
            conv,
            content,
            when,
        }
    }
}

/// A body for `ev`, written in one of the ways JSON and the contract allow.
fn encode(rng: &mut Rng, ev: &Ev) -> Vec<u8> {
    let upper = rng.chance(5);
    let escape_all = rng.chance(12);
    let extra = rng.chance(5);
    let reorder = rng.chance(20);
    let sep = if rng.chance(10) { " ,\n\t" } else { "," };
    let uid = |u: Uuid| {
        let s = u.to_string();
        if upper {
            s.to_uppercase()
        } else {
            s
        }
    };
    let mut data = vec![format!(r#""id":"{}""#, uid(ev.id))];
    if ev.kind == Kind::NewMessage {
        data.push(format!(
            r#""content":{}"#,
            json_string(&ev.content, escape_all)
        ));
        data.push(format!(r#""conversation_id":"{}""#, uid(ev.conv)));
    }
    let mut fields = vec![
        format!(r#""type":"{}""#, ev.kind.wire()),
        format!(r#""timestamp":{}"#, json_string(&ev.when.text, escape_all)),
        format!(r#""data":{{{}}}"#, data.join(sep)),
    ];
    if extra {
        fields.push(r#""provider":{"name":"fuzz","attempt":1,"tags":[null,true]}"#.into());
    }
    if reorder {
        fields.reverse();
    }
    format!("{{{}}}", fields.join(sep)).into_bytes()
}

fn reply_id_of(ids: &[Uuid]) -> Uuid {
    let mut name = Vec::with_capacity(ids.len() * 16);
    for id in ids {
        name.extend_from_slice(id.as_bytes());
    }
    Uuid::new_v5(&REPLY_NAMESPACE, &name)
}

// ---------------------------------------------------------------------------
// The plan
// ---------------------------------------------------------------------------

/// What a request is expected to be.
#[derive(Debug, Clone)]
enum Expect {
    /// A valid-shaped event.
    Event(Ev),
    /// Invalid on purpose: `400` naming `field`; `ids` must leave no trace.
    Invalid {
        field: &'static str,
        what: String,
        ids: Vec<Uuid>,
    },
}

#[derive(Debug, Clone)]
struct Step {
    /// Planned send time, ms after the start.
    at: i64,
    bytes: Vec<u8>,
    expect: Expect,
}

struct Planner<'a> {
    rng: &'a mut Rng,
    steps: Vec<Step>,
    /// Every message planned so far: (id, conversation, content, time).
    messages: Vec<(Uuid, Uuid, String, i64)>,
    /// Every conversation id used.
    conversations: Vec<Uuid>,
}

impl Planner<'_> {
    fn push(&mut self, at: i64, ev: Ev) -> Vec<u8> {
        let bytes = encode(self.rng, &ev);
        self.push_bytes(at, bytes.clone(), ev);
        bytes
    }

    fn push_bytes(&mut self, at: i64, bytes: Vec<u8>, ev: Ev) {
        if ev.kind == Kind::NewMessage {
            self.messages.push((ev.id, ev.conv, ev.content.clone(), at));
        }
        self.steps.push(Step {
            at: at.max(0),
            bytes,
            expect: Expect::Event(ev),
        });
    }

    fn invalid(
        &mut self,
        at: i64,
        bytes: Vec<u8>,
        field: &'static str,
        what: &str,
        ids: Vec<Uuid>,
    ) {
        self.steps.push(Step {
            at: at.max(0),
            bytes,
            expect: Expect::Invalid {
                field,
                what: what.to_owned(),
                ids,
            },
        });
    }

    /// A lifecycle event, maybe delivered again identically (same bytes or
    /// the same instant written differently) and maybe followed by one
    /// with another time for the same id.
    fn lifecycle(&mut self, at: i64, ev: Ev) {
        let bytes = self.push(at, ev.clone());
        if self.rng.chance(20) {
            let again = at + self.rng.range(0, 1_500);
            self.push_bytes(again, bytes, ev.clone());
        }
        if self.rng.chance(10) {
            let when = rewritten(self.rng, &ev.when);
            let again = at + self.rng.range(0, 1_500);
            self.push(again, Ev { when, ..ev.clone() });
        }
        if self.rng.chance(15) {
            let when = other_when(self.rng, &ev.when);
            let again = at + self.rng.range(-200, 1_500);
            self.push(again, Ev { when, ..ev });
        }
    }

    /// One message of conversation `c` at `t`: new, redelivered, or with a
    /// reused id.
    fn message(&mut self, t: i64, c: Uuid, mine: &mut Vec<(Ev, Vec<u8>)>) {
        let r = self.rng.below(100);
        if r < 7 && !mine.is_empty() {
            // Identical redelivery (the same bytes).
            let (ev, bytes) = mine[self.rng.below(mine.len() as u64) as usize].clone();
            self.push_bytes(t, bytes, ev);
            return;
        }
        if r < 10 && !mine.is_empty() {
            // The same message with another event time: a redelivery too.
            let (ev, _) = mine[self.rng.below(mine.len() as u64) as usize].clone();
            let when = random_when(self.rng);
            self.push(t, Ev { when, ..ev });
            return;
        }
        let when = random_when(self.rng);
        let mut t = t;
        let (id, content) = if r < 14 && !mine.is_empty() {
            // Reused id, other content, same conversation.
            let (ev, _) = mine[self.rng.below(mine.len() as u64) as usize].clone();
            let other = if ev.content.len() > 16_000 {
                "outra".to_owned()
            } else {
                format!("{} (outra)", ev.content)
            };
            (ev.id, other)
        } else if r < 18 && !self.messages.is_empty() {
            // Another conversation's message id, same or other content;
            // half of the time sent with the original (a race between
            // partitions and processors).
            let (id, _, content, at) =
                self.messages[self.rng.below(self.messages.len() as u64) as usize].clone();
            if self.rng.chance(50) {
                t = at + self.rng.range(0, 30);
            }
            if self.rng.chance(50) {
                (id, content)
            } else {
                (id, random_content(self.rng))
            }
        } else if r < 20 && !self.messages.is_empty() {
            // The id a group of one earlier message gets for its reply,
            // half of the time sent about when that reply is written.
            let (m, _, _, at) =
                self.messages[self.rng.below(self.messages.len() as u64) as usize].clone();
            if self.rng.chance(50) {
                t = at + self.rng.range(G_MS, G_MS + 1_000);
            }
            (reply_id_of(&[m]), random_content(self.rng))
        } else {
            (self.rng.uuid(), random_content(self.rng))
        };
        let ev = Ev::message(id, c, content, when);
        let bytes = self.push(t, ev.clone());
        mine.push((ev, bytes));
    }

    fn conversation(&mut self) {
        let c = self.rng.uuid();
        self.conversations.push(c);
        let start = self.rng.range(0, SPREAD_MS);
        let fate = self.rng.below(100);
        let created_at = match fate {
            0..=69 => Some(start),
            // Created after its first messages: within L (600 ms) or beyond.
            70..=84 => Some(start + self.rng.range(100, 1_600)),
            _ => None,
        };
        if let Some(at) = created_at {
            let when = random_when(self.rng);
            self.lifecycle(at, Ev::new_conversation(c, when));
        }
        let mut mine = Vec::new();
        let mut t = start + if fate < 70 { self.rng.range(0, 300) } else { 0 };
        let mut last = t;
        for _ in 0..self.rng.range(4, 34) {
            self.message(t, c, &mut mine);
            last = t;
            t += if self.rng.chance(25) {
                self.rng.range(G_MS + 50, 3 * G_MS)
            } else {
                self.rng.range(0, G_MS - 100)
            };
        }
        let closes = if created_at.is_some() { 50 } else { 15 };
        if self.rng.chance(closes) {
            // Sometimes before the last messages: those are then refused.
            let at = last + self.rng.range(-600, 1_000);
            let when = random_when(self.rng);
            self.lifecycle(at, Ev::close(c, when));
            if self.rng.chance(30) {
                for _ in 0..self.rng.range(1, 4) {
                    let after = at + self.rng.range(0, 800);
                    self.message(after, c, &mut mine);
                }
            }
        }
    }

    /// Bodies that must be `400` naming a field and leave no trace.
    fn invalid_bodies(&mut self) {
        let conv = self.rng.pick(&self.conversations);
        for _ in 0..4 {
            // NUL in the content (escaped, as JSON must write it).
            let m = self.rng.uuid();
            let mut content = random_content(self.rng);
            content.truncate(content.floor_char_boundary_compat(200));
            let at = self.rng.range(0, content.len() as i64 + 1) as usize;
            let at = content.floor_char_boundary_compat(at);
            content.insert(at, '\0');
            let ev = Ev::message(m, conv, content, random_when(self.rng));
            let bytes = encode(self.rng, &ev);
            let t = self.rng.range(0, SPREAD_MS);
            self.invalid(t, bytes, "data.content", "content with NUL", vec![m]);
        }
        // UTC years 0 and 10000 (valid RFC 3339 with their offsets), and
        // years RFC 3339 cannot write.
        for text in [
            "0000-12-31T23:59:59Z",
            "0001-01-01T00:00:00+00:01",
            "0001-01-01T23:58:59.999999999+23:59",
            "9999-12-31T23:59:59-00:01",
            "9999-12-31T00:01:00-23:59",
            "10000-01-01T00:00:00Z",
            "-0001-01-01T00:00:00Z",
        ] {
            let at = min_ts();
            let when = When {
                at,
                text: text.to_owned(),
            };
            let t = self.rng.range(0, SPREAD_MS);
            let ev = match self.rng.below(3) {
                0 => Ev::new_conversation(self.rng.uuid(), when),
                1 => Ev::close(self.rng.pick(&self.conversations), when),
                _ => Ev::message(self.rng.uuid(), conv, "fora do intervalo".into(), when),
            };
            let ids = if ev.kind == Kind::Close {
                Vec::new()
            } else {
                vec![ev.id]
            };
            let bytes = encode(self.rng, &ev);
            self.invalid(t, bytes, "timestamp", &format!("timestamp {text}"), ids);
        }
        // Content over the limit (16 KiB + 1 byte).
        let m = self.rng.uuid();
        let ev = Ev::message(m, conv, "y".repeat(16_385), random_when(self.rng));
        let bytes = encode(self.rng, &ev);
        let t = self.rng.range(0, SPREAD_MS);
        self.invalid(t, bytes, "data.content", "content over the limit", vec![m]);
        // Not JSON (or not a JSON object).
        let m = self.rng.uuid();
        let cut_ev = Ev::message(m, conv, "cortado".into(), random_when(self.rng));
        let valid = String::from_utf8(encode(self.rng, &cut_ev)).expect("utf-8");
        let cut = valid.len() - 3;
        let lone = format!(
            r#"{{"type":"NEW_MESSAGE","timestamp":"2025-06-04T14:20:00Z","data":{{"id":"{m}","content":"\ud800","conversation_id":"{conv}"}}}}"#
        );
        let not_json: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "an empty body"),
            (b"not json".to_vec(), "text"),
            (b"{".to_vec(), "an open brace"),
            (valid.as_bytes()[..cut].to_vec(), "a cut body"),
            (b"[1,2,3]".to_vec(), "an array"),
            (b"\"NEW_MESSAGE\"".to_vec(), "a string"),
            (vec![0xff, 0xfe, b'{', b'}'], "bytes that are not UTF-8"),
            (lone.into_bytes(), "a lone surrogate escape"),
            (b"{\"type\":\"NEW_MESSAGE\"}}".to_vec(), "trailing garbage"),
        ];
        for (bytes, what) in not_json {
            let t = self.rng.range(0, SPREAD_MS);
            self.invalid(t, bytes, "body", what, vec![m]);
        }
    }
}

/// `str::floor_char_boundary` (std has it only since Rust 1.91; the
/// workspace supports 1.85).
trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for String {
    fn floor_char_boundary_compat(&self, i: usize) -> usize {
        let mut i = i.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

fn plan(rng: &mut Rng) -> (Vec<Step>, Vec<Uuid>) {
    let mut p = Planner {
        rng,
        steps: Vec::new(),
        messages: Vec::new(),
        conversations: Vec::new(),
    };
    while p.steps.len() < TARGET_REQUESTS - 60 {
        p.conversation();
    }
    // Closes of conversations that never existed.
    for _ in 0..5 {
        let c = p.rng.uuid();
        p.conversations.push(c);
        let at = p.rng.range(0, SPREAD_MS);
        let when = random_when(p.rng);
        p.push(at, Ev::close(c, when));
    }
    p.invalid_bodies();
    let mut steps = p.steps;
    let conversations = p.conversations;
    steps.sort_by_key(|s| s.at);
    (steps, conversations)
}

// ---------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Attempt {
    status: u16,
    replay: Option<String>,
    retry_after: Option<String>,
    body: Value,
}

#[derive(Debug, Clone)]
struct Outcome {
    attempts: Vec<Attempt>,
    /// Wall clock before the first attempt was sent.
    before: DateTime<Utc>,
    /// Wall clock after the last answer arrived.
    after: DateTime<Utc>,
}

impl Outcome {
    fn last(&self) -> &Attempt {
        self.attempts.last().expect("at least one attempt")
    }
    fn status(&self) -> u16 {
        self.last().status
    }
    fn replay(&self) -> bool {
        self.last().replay.as_deref() == Some("true")
    }
    fn had_503(&self) -> bool {
        self.attempts.iter().any(|a| a.status == 503)
    }
}

/// POSTs `bytes`, retrying a `503` with `Retry-After` (capped at 1 s).
async fn send(http: &reqwest::Client, url: &str, bytes: &[u8]) -> Outcome {
    let before = Utc::now();
    let mut attempts = Vec::new();
    loop {
        let res = http
            .post(url)
            .header("content-type", "application/json")
            .body(bytes.to_vec())
            .send()
            .await;
        let attempt = match res {
            Ok(res) => {
                let header = |name: &str| {
                    res.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let (replay, retry_after) = (header("idempotent-replay"), header("retry-after"));
                let status = res.status().as_u16();
                let text = res.text().await.unwrap_or_default();
                Attempt {
                    status,
                    replay,
                    retry_after,
                    body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
                }
            }
            Err(e) => Attempt {
                status: 0,
                replay: None,
                retry_after: None,
                body: Value::String(format!("transport error: {e}")),
            },
        };
        let retry = attempt.status == 503 && attempts.len() < MAX_RETRIES;
        let wait = attempt
            .retry_after
            .as_deref()
            .and_then(|s| s.parse::<u64>().ok());
        attempts.push(attempt);
        match (retry, wait) {
            (true, Some(secs)) => {
                tokio::time::sleep(
                    Duration::from_secs(secs)
                        .clamp(Duration::from_millis(100), Duration::from_secs(1)),
                )
                .await
            }
            _ => break,
        }
    }
    Outcome {
        attempts,
        before,
        after: Utc::now(),
    }
}

/// Sends every step at its planned time, `IN_FLIGHT` at once.
async fn run(p: &Pipeline, steps: Arc<Vec<Step>>) -> Vec<Outcome> {
    let url = format!("{}/webhook/", p.ingest.base_url());
    let next = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<Vec<Option<Outcome>>>> = Arc::new(Mutex::new(vec![None; steps.len()]));
    let t0 = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (steps, next, results, http, url) = (
            Arc::clone(&steps),
            Arc::clone(&next),
            Arc::clone(&results),
            p.http.clone(),
            url.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(step) = steps.get(i) else { break };
                tokio::time::sleep_until(t0 + Duration::from_millis(step.at as u64)).await;
                let outcome = send(&http, &url, &step.bytes).await;
                results.lock().expect("results lock")[i] = Some(outcome);
            }
        }));
    }
    for w in workers {
        w.await.expect("a sender task panicked");
    }
    let results = std::mem::take(&mut *results.lock().expect("results lock"));
    results
        .into_iter()
        .map(|o| o.expect("every step was sent"))
        .collect()
}

// ---------------------------------------------------------------------------
// Settling and reading back
// ---------------------------------------------------------------------------

async fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = chatpipe_core::kafka::consumer_config(
            &chatpipe_core::kafka::KafkaConnection::plaintext(&bootstrap),
            &format!("ingest-fuzz-{}", Uuid::new_v4().simple()),
            Duration::from_millis(10),
        )
        .create()
        .expect("consumer");
        (0..partitions)
            .map(|p| {
                c.fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1
            })
            .collect()
    })
    .await
    .expect("watermark task")
}

/// A snapshot of the processors' progress: (partition, resume, processed)
/// rows, INBOUND rows without reply, message rows, rejections.
async fn progress(
    db: &tokio_postgres::Client,
    topic: &str,
) -> Result<(Vec<(i32, i64, i64)>, i64, i64, i64), tokio_postgres::Error> {
    let mut parts: Vec<(i32, i64, i64)> = db
        .query(
            "SELECT partition, resume_offset, processed_offset FROM processor_partitions
              WHERE topic = $1",
            &[&topic],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    parts.sort();
    let count =
        |sql: &'static str| async move { db.query_one(sql, &[]).await.map(|r| r.get::<_, i64>(0)) };
    let unreplied =
        count("SELECT count(*) FROM messages WHERE direction = 'INBOUND' AND reply_id IS NULL")
            .await?;
    let rows = count("SELECT count(*) FROM messages").await?;
    let rejected = count("SELECT count(*) FROM rejected_events").await?;
    Ok((parts, unreplied, rows, rejected))
}

/// Waits until every partition's resume and processed offsets are at the
/// log's end, no INBOUND row lacks its reply, and nothing changed for a
/// few polls. Returns the last state when it does not settle in time.
async fn settle(p: &Pipeline, ends: &[i64]) -> Result<(), String> {
    let db = p.db.client().await.map_err(|e| format!("db: {e:#}"))?;
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    let mut stable = 0;
    let mut previous = None;
    loop {
        let snapshot = progress(&db, &p.topic).await.map_err(|e| e.to_string())?;
        let (parts, unreplied, _, _) = &snapshot;
        let at_end = parts.len() == ends.len()
            && parts.iter().all(|(part, resume, processed)| {
                let end = ends[*part as usize];
                *resume == end && *processed == end
            });
        if at_end && *unreplied == 0 && previous.as_ref() == Some(&snapshot) {
            stable += 1;
            if stable >= SETTLED_POLLS {
                return Ok(());
            }
        } else {
            stable = 0;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "not settled after {SETTLE_TIMEOUT:?}: log ends {ends:?}, (partition, resume, processed) {parts:?}, INBOUND without reply {unreplied}; {}",
                processor_state(p).await
            ));
        }
        previous = Some(snapshot);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each processor's `/readyz` and its per-partition gauges, for a report.
async fn processor_state(p: &Pipeline) -> String {
    const GAUGES: [&str; 6] = [
        "chatpipe_processor_lag_records",
        "chatpipe_processor_open_groups",
        "chatpipe_processor_buffered_orphans",
        "chatpipe_processor_held_inbound",
        "chatpipe_processor_consecutive_failures",
        "chatpipe_processor_owned_partitions",
    ];
    let mut out = Vec::new();
    for (i, proc) in p.processors.iter().enumerate() {
        let base = proc.base_url();
        let get = |path: &'static str| {
            let url = format!("{base}{path}");
            async move {
                match p.http.get(&url).send().await {
                    Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(e) => (0, e.to_string()),
                }
            }
        };
        let (status, ready) = get("/readyz").await;
        let (_, metrics) = get("/metrics").await;
        let gauges: Vec<&str> = metrics
            .lines()
            .filter(|l| GAUGES.iter().any(|g| l.starts_with(g)))
            .collect();
        out.push(format!(
            "processor {i}: /readyz {status} {ready}; {gauges:?}"
        ));
    }
    out.join("; ")
}

/// What the api (and Postgres) show once settled.
struct Seen {
    /// Conversation id → its view (`None`: 404).
    views: HashMap<Uuid, Option<Value>>,
    /// Conversation id → its rejected events (all pages).
    rejected: HashMap<Uuid, Vec<Value>>,
    /// Message rows: id → (conversation, OUTBOUND?, content, reply_id).
    rows: HashMap<Uuid, (Uuid, bool, String, Option<Uuid>)>,
    /// `rejected_events` rows of the topic.
    db_rejected: i64,
}

async fn read_back(p: &Pipeline, conversations: &[Uuid]) -> Seen {
    let mut views = HashMap::new();
    let mut rejected = HashMap::new();
    for &c in conversations {
        let (status, view) = p.get(&format!("/conversations/{c}/")).await;
        let view = match status {
            200 => Some(view),
            404 => None,
            other => panic!("GET /conversations/{c}/ answered {other}: {view}"),
        };
        views.insert(c, view);
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/rejected-events?conversation_id={c}&limit=500");
            if let Some(cur) = &cursor {
                path.push_str(&format!("&cursor={cur}"));
            }
            let (status, page) = p.get(&path).await;
            assert_eq!(status, 200, "GET {path}: {page}");
            all.extend(
                page["rejected_events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        rejected.insert(c, all);
    }
    let db = p.db.client().await.expect("db client");
    let rows = db
        .query(
            "SELECT id, conversation_id, direction = 'OUTBOUND', content, reply_id FROM messages",
            &[],
        )
        .await
        .expect("messages")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect();
    let db_rejected = db
        .query_one(
            "SELECT count(*) FROM rejected_events WHERE source_topic = $1",
            &[&p.topic],
        )
        .await
        .expect("rejected_events")
        .get(0);
    Seen {
        views,
        rejected,
        rows,
        db_rejected,
    }
}

// ---------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Equal at Postgres' precision (less than a microsecond apart).
fn same_us(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    (a - b).abs() < chrono::Duration::microseconds(1)
}

fn uuid_of(v: &Value) -> Option<Uuid> {
    v.as_str().and_then(|s| s.parse().ok())
}

/// Short printable form of a body for violation messages.
fn show(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.len() > 300 {
        let cut = s.to_string().floor_char_boundary_compat(300);
        format!("{}… ({} bytes)", &s[..cut], bytes.len())
    } else {
        s.into_owned()
    }
}

struct Req<'a> {
    i: usize,
    step: &'a Step,
    ev: &'a Ev,
    out: &'a Outcome,
}

impl Req<'_> {
    fn describe(&self) -> String {
        format!(
            "request #{} {} id {} conv {} body {} (answered {} {}{})",
            self.i,
            self.ev.kind.wire(),
            self.ev.id,
            self.ev.conv,
            show(&self.step.bytes),
            self.out.status(),
            self.out.last().body,
            if self.out.replay() {
                " Idempotent-Replay: true"
            } else {
                ""
            }
        )
    }
}

/// The valid-shaped requests of `kind` for conversation `conv`.
fn all_of<'r, 'a>(reqs: &'r [Req<'a>], kind: Kind, conv: Uuid) -> Vec<&'r Req<'a>> {
    reqs.iter()
        .filter(|r| r.ev.kind == kind && r.ev.conv == conv)
        .collect()
}

/// Those of them whose final answer is `status`.
fn answered<'r, 'a>(reqs: &'r [Req<'a>], kind: Kind, conv: Uuid, status: u16) -> Vec<&'r Req<'a>> {
    all_of(reqs, kind, conv)
        .into_iter()
        .filter(|r| r.out.status() == status)
        .collect()
}

/// Every answer is one the contract allows; returns the valid-shaped
/// requests with their outcomes.
fn check_answers<'a>(
    steps: &'a [Step],
    outcomes: &'a [Outcome],
    bad: &mut Vec<String>,
) -> Vec<Req<'a>> {
    let mut reqs = Vec::new();
    for (i, (step, out)) in steps.iter().zip(outcomes).enumerate() {
        for a in &out.attempts {
            let ok = match a.status {
                200 | 201 | 202 | 400 => true,
                503 => a.retry_after.as_deref().is_some_and(|r| !r.is_empty()),
                _ => false,
            };
            if !ok {
                bad.push(format!(
                    "request #{i} {}: answered {} (Retry-After {:?}): {}",
                    show(&step.bytes),
                    a.status,
                    a.retry_after,
                    a.body
                ));
            }
            if a.replay.is_some()
                && (a.replay.as_deref() != Some("true") || !matches!(a.status, 200 | 201))
            {
                bad.push(format!(
                    "request #{i}: Idempotent-Replay {:?} on a {} answer",
                    a.replay, a.status
                ));
            }
        }
        let last = out.last();
        if last.status == 503 {
            bad.push(format!(
                "request #{i}: still 503 after {} attempts: {}",
                out.attempts.len(),
                last.body
            ));
        }
        if last.status == 400 {
            let error_ok = last.body["error"].as_str().is_some_and(|e| !e.is_empty());
            if !error_ok || !last.body["field"].is_string() {
                bad.push(format!(
                    "request #{i}: a 400 without error and field: {}",
                    last.body
                ));
            }
        }
        match &step.expect {
            Expect::Invalid { field, what, .. } => {
                if last.status != 400 || last.body["field"] != *field {
                    bad.push(format!(
                        "request #{i} ({what}): expected 400 naming {field}, answered {} {} for {}",
                        last.status,
                        last.body,
                        show(&step.bytes)
                    ));
                }
            }
            Expect::Event(ev) => {
                let r = Req { i, step, ev, out };
                let success = match ev.kind {
                    Kind::NewConversation => 201,
                    Kind::NewMessage => 202,
                    Kind::Close => 200,
                };
                let status = last.status;
                if status != success && status != 400 && status != 503 {
                    bad.push(format!("{}: not {success} or 400", r.describe()));
                }
                if status == success {
                    let b = &last.body;
                    let want = match ev.kind {
                        Kind::NewConversation => "created",
                        Kind::NewMessage => "accepted",
                        Kind::Close => "closed",
                    };
                    let body_ok = b["status"] == want
                        && uuid_of(&b["conversation_id"]) == Some(ev.conv)
                        && (ev.kind != Kind::NewMessage || uuid_of(&b["id"]) == Some(ev.id));
                    if !body_ok {
                        bad.push(format!("{}: unexpected success body", r.describe()));
                    }
                    if ev.kind == Kind::NewMessage && out.replay() {
                        bad.push(format!("{}: a replay header on a 202", r.describe()));
                    }
                }
                if status == 400 {
                    let field = last.body["field"].as_str().unwrap_or_default();
                    let allowed: &[&str] = match ev.kind {
                        Kind::NewMessage => &["data.conversation_id", "data.id"],
                        _ => &["data.id"],
                    };
                    if !allowed.contains(&field) {
                        bad.push(format!(
                            "{}: a valid-shaped event refused naming {field:?}; body {}",
                            r.describe(),
                            show(&step.bytes)
                        ));
                    }
                }
                reqs.push(r);
            }
        }
    }

    reqs
}

/// 201s exist with their time, 200s closed, one first success per id,
/// lifecycle 400s justified, no conversation without a 201.
fn check_lifecycle(reqs: &[Req], seen: &Seen, bad: &mut Vec<String>) {
    for (&c, view) in &seen.views {
        let oks = answered(reqs, Kind::NewConversation, c, 201);
        let firsts = oks.iter().filter(|r| !r.out.replay()).count();
        if firsts > 1 {
            bad.push(format!(
                "conversation {c}: {firsts} NEW_CONVERSATION answered 201 without Idempotent-Replay: {:?}",
                oks.iter().map(|r| r.describe()).collect::<Vec<_>>()
            ));
        }
        for r in &oks {
            if !oks.iter().all(|o| same_us(o.ev.when.at, r.ev.when.at)) {
                bad.push(format!(
                    "{}: another 201 for the id has another time",
                    r.describe()
                ));
            }
            if r.out.replay() {
                let first = all_of(reqs, Kind::NewConversation, c).iter().any(|o| {
                    o.ev.when.at == r.ev.when.at
                        && ((o.out.status() == 201 && !o.out.replay()) || o.out.had_503())
                });
                if !first {
                    bad.push(format!(
                        "{}: a replay of a NEW_CONVERSATION that never succeeded",
                        r.describe()
                    ));
                }
            }
        }
        match (oks.first(), view) {
            (Some(r), Some(v)) => {
                if !parse_time(&v["created_at"]).is_some_and(|t| same_us(t, r.ev.when.at)) {
                    bad.push(format!(
                        "{}: the api shows created_at {} for event time {}",
                        r.describe(),
                        v["created_at"],
                        r.ev.when.at.to_rfc3339()
                    ));
                }
            }
            (Some(r), None) => bad.push(format!(
                "{}: answered 201 but the api answers 404",
                r.describe()
            )),
            (None, Some(v)) => bad.push(format!(
                "conversation {c} never answered 201 but the api shows it: status {} created_at {}",
                v["status"], v["created_at"]
            )),
            (None, None) => {}
        }
        // 400 NEW_CONVERSATION: justified by a 201 that started before it
        // was answered, for another time.
        for r in answered(reqs, Kind::NewConversation, c, 400) {
            if oks.iter().any(|o| o.ev.when.at == r.ev.when.at) {
                bad.push(format!(
                    "{}: refused although a NEW_CONVERSATION with the same id and time was answered 201 (an identical redelivery must be a replay)",
                    r.describe()
                ));
            }
            if !oks.iter().any(|o| o.out.before < r.out.after) {
                bad.push(format!(
                    "{}: refused as existing, but no NEW_CONVERSATION for it was answered 201 before",
                    r.describe()
                ));
            }
        }

        // Closes.
        let coks = answered(reqs, Kind::Close, c, 200);
        let firsts = coks.iter().filter(|r| !r.out.replay()).count();
        if firsts > 1 {
            bad.push(format!(
                "conversation {c}: {firsts} CLOSE_CONVERSATION answered 200 without Idempotent-Replay: {:?}",
                coks.iter().map(|r| r.describe()).collect::<Vec<_>>()
            ));
        }
        for r in &coks {
            if !coks.iter().all(|o| same_us(o.ev.when.at, r.ev.when.at)) {
                bad.push(format!(
                    "{}: another 200 for the id has another time",
                    r.describe()
                ));
            }
            if r.out.replay() {
                let first = all_of(reqs, Kind::Close, c).iter().any(|o| {
                    o.ev.when.at == r.ev.when.at
                        && ((o.out.status() == 200 && !o.out.replay()) || o.out.had_503())
                });
                if !first {
                    bad.push(format!(
                        "{}: a replay of a CLOSE_CONVERSATION that never succeeded",
                        r.describe()
                    ));
                }
            }
            if oks.is_empty() {
                bad.push(format!(
                    "{}: closed a conversation that was never created",
                    r.describe()
                ));
            }
            match view {
                Some(v) => {
                    let updated = parse_time(&v["updated_at"]);
                    if v["status"] != "CLOSED" || !updated.is_some_and(|t| same_us(t, r.ev.when.at))
                    {
                        bad.push(format!(
                            "{}: the api shows status {} updated_at {} (event time {})",
                            r.describe(),
                            v["status"],
                            v["updated_at"],
                            r.ev.when.at.to_rfc3339()
                        ));
                    }
                }
                None => bad.push(format!(
                    "{}: answered 200 but the api answers 404",
                    r.describe()
                )),
            }
        }
        let close_503 = all_of(reqs, Kind::Close, c).iter().any(|r| r.out.had_503());
        if coks.is_empty() && !close_503 {
            if let Some(v) = view {
                if v["status"] != "OPEN" {
                    bad.push(format!(
                        "conversation {c} is {} although no CLOSE_CONVERSATION was answered 200",
                        v["status"]
                    ));
                }
            }
        }
        // 400 CLOSE_CONVERSATION: an identical close answered 200 before
        // this one was sent makes it a replay; one sent concurrently (or
        // later) may legitimately find the conversation not created yet.
        for r in answered(reqs, Kind::Close, c, 400) {
            if coks
                .iter()
                .any(|o| o.ev.when.at == r.ev.when.at && o.out.after < r.out.before)
            {
                bad.push(format!(
                    "{}: refused although a CLOSE_CONVERSATION with the same id and time was answered 200 (an identical redelivery must be a replay)",
                    r.describe()
                ));
            }
            if coks.is_empty() {
                if let Some(o) = oks.iter().find(|o| o.out.after < r.out.before) {
                    bad.push(format!(
                        "{}: refused, although the conversation was created before it was sent ({}) and never closed",
                        r.describe(),
                        o.describe()
                    ));
                }
            }
        }
    }
}

/// Every 202 is stored and answered or visibly rejected; every INBOUND row,
/// reply and rejection is accounted for; message 400s are justified.
/// Returns the number of rejections the api lists.
fn check_messages(reqs: &[Req], seen: &Seen, bad: &mut Vec<String>) -> i64 {
    // INBOUND rows and replies, as the api shows them.
    let mut inbound: HashMap<Uuid, (Uuid, String, Value)> = HashMap::new();
    let mut listed: HashMap<Uuid, Vec<(Uuid, Uuid)>> = HashMap::new(); // member → (reply, conversation)
    for (&c, view) in &seen.views {
        let Some(v) = view else { continue };
        for m in v["messages"].as_array().into_iter().flatten() {
            let Some(id) = uuid_of(&m["id"]) else {
                bad.push(format!(
                    "conversation {c}: a message without a UUID id: {m}"
                ));
                continue;
            };
            let content = m["content"].as_str().unwrap_or_default().to_owned();
            match m["type"].as_str() {
                Some("INBOUND") => {
                    if inbound
                        .insert(id, (c, content, m["timestamp"].clone()))
                        .is_some()
                    {
                        bad.push(format!("INBOUND {id} is shown twice"));
                    }
                }
                Some("OUTBOUND") => {
                    let Some(rest) = content.strip_prefix(REPLY_PREFIX) else {
                        bad.push(format!("reply {id} in {c} has text {content:?}"));
                        continue;
                    };
                    let lines: Vec<&str> = rest.split_terminator('\n').collect();
                    if !content.ends_with('\n') || lines.is_empty() {
                        bad.push(format!("reply {id} in {c} has text {content:?}"));
                    }
                    let mut mine = HashSet::new();
                    for line in lines {
                        let member = match Uuid::try_parse(line) {
                            Ok(u) if u.to_string() == line => u,
                            _ => {
                                bad.push(format!("reply {id} in {c} lists {line:?}: {content:?}"));
                                continue;
                            }
                        };
                        if !mine.insert(member) {
                            bad.push(format!(
                                "reply {id} in {c} lists {member} twice: {content:?}"
                            ));
                        }
                        listed.entry(member).or_default().push((id, c));
                    }
                }
                other => bad.push(format!("conversation {c}: message {id} of type {other:?}")),
            }
        }
    }
    // Every listed id is an INBOUND row of the reply's conversation.
    for (member, by) in &listed {
        for (reply, c) in by {
            match inbound.get(member) {
                Some((mc, _, _)) if mc == c => {}
                other => bad.push(format!(
                    "reply {reply} in {c} lists {member}, which is not an INBOUND message of {c} (shown: {other:?}; row: {:?})",
                    seen.rows.get(member)
                )),
            }
        }
    }
    // Every INBOUND row: listed by exactly one reply, the one its row
    // names; accounted for by a 202 with its conversation and content.
    let accepted: Vec<&Req> = reqs
        .iter()
        .filter(|r| r.ev.kind == Kind::NewMessage && r.out.status() == 202)
        .collect();
    let mut accepted_by_key: HashMap<(Uuid, Uuid, &str), Vec<&Req>> = HashMap::new();
    for r in &accepted {
        accepted_by_key
            .entry((r.ev.id, r.ev.conv, r.ev.content.as_str()))
            .or_default()
            .push(r);
    }
    let requests_with_id = |id: &Uuid| -> Vec<String> {
        reqs.iter()
            .filter(|r| r.ev.kind == Kind::NewMessage && r.ev.id == *id)
            .map(|r| r.describe())
            .collect()
    };
    for (id, (c, content, ts)) in &inbound {
        let by = listed.get(id).map(Vec::as_slice).unwrap_or_default();
        let row_reply = seen.rows.get(id).and_then(|r| r.3);
        if by.len() != 1 {
            bad.push(format!(
                "INBOUND {id} of {c} is listed by {} replies (reply, conversation): {by:?}; its row names reply {row_reply:?}; requests with this id: {:?}",
                by.len(),
                requests_with_id(id)
            ));
        }
        if by.len() == 1 && row_reply != Some(by[0].0) {
            bad.push(format!(
                "INBOUND {id} of {c} is listed by reply {} but its row names {row_reply:?}",
                by[0].0
            ));
        }
        match accepted_by_key.get(&(*id, *c, content.as_str())) {
            None => bad.push(format!(
                "INBOUND {id} of {c} with content {content:?} matches no request answered 202 (requests with this id: {:?})",
                requests_with_id(id)
            )),
            Some(rs) => {
                let t = parse_time(ts);
                if !rs.iter().any(|r| t.is_some_and(|t| same_us(t, r.ev.when.at))) {
                    bad.push(format!(
                        "INBOUND {id} of {c} shows timestamp {ts}, the time of none of its 202 requests: {:?}",
                        rs.iter().map(|r| r.ev.when.text.clone()).collect::<Vec<_>>()
                    ));
                }
            }
        }
    }
    // Every 202 NEW_MESSAGE: stored and answered, or visibly rejected.
    let rejection_matches = |rej: &Value, ev: &Ev| {
        rej["event_type"] == "NEW_MESSAGE"
            && uuid_of(&rej["event_id"]) == Some(ev.id)
            && uuid_of(&rej["conversation_id"]) == Some(ev.conv)
            && uuid_of(&rej["event"]["data"]["conversation_id"]) == Some(ev.conv)
            && rej["event"]["data"]["content"].as_str() == Some(ev.content.as_str())
    };
    for r in &accepted {
        let ev = r.ev;
        // Stored: an INBOUND row of its conversation with its content.
        // Whether exactly one reply lists it is checked (and reported)
        // with the INBOUND rows above.
        let stored = inbound
            .get(&ev.id)
            .is_some_and(|(c, content, _)| *c == ev.conv && *content == ev.content);
        let rejected = seen.rejected.get(&ev.conv).is_some_and(|rs| {
            rs.iter().any(|rej| {
                rejection_matches(rej, ev) && rej["reason"].as_str().is_some_and(|s| !s.is_empty())
            })
        });
        if !stored && !rejected {
            let elsewhere: Vec<String> = seen
                .rejected
                .values()
                .flatten()
                .filter(|rej| uuid_of(&rej["event_id"]) == Some(ev.id))
                .map(|rej| {
                    format!(
                        "{} in {}: {}",
                        rej["reason"], rej["conversation_id"], rej["detail"]
                    )
                })
                .collect();
            bad.push(format!(
                "{}: silently dropped — content {:?}; shown INBOUND: {:?}; row: {:?}; rejections with this id: {elsewhere:?}",
                r.describe(),
                ev.content.chars().take(80).collect::<String>(),
                inbound.get(&ev.id).map(|(c, content, _)| (c, content.chars().take(80).collect::<String>())),
                seen.rows.get(&ev.id).map(|(c, out, content, reply)| (c, out, content.chars().take(80).collect::<String>(), reply)),
            ));
        }
    }
    // Every rejection is accounted for by a 202 (a 400 leaves nothing; a
    // lifecycle success is never rejected by the processor).
    let mut total_rejected = 0;
    for (c, rs) in &seen.rejected {
        for rej in rs {
            total_rejected += 1;
            if rej["reason"].as_str().is_none_or(str::is_empty) {
                bad.push(format!("rejection without reason in {c}: {rej}"));
            }
            if rej["event_type"] == "NEW_MESSAGE" {
                let ok = accepted.iter().any(|r| rejection_matches(rej, r.ev));
                if !ok {
                    bad.push(format!(
                        "rejection in {c} matches no request answered 202: {} {} {}",
                        rej["reason"], rej["event_id"], rej["event"]
                    ));
                }
            } else {
                let id = uuid_of(&rej["event_id"]);
                let answers: Vec<String> = reqs
                    .iter()
                    .filter(|r| r.ev.kind != Kind::NewMessage && Some(r.ev.id) == id)
                    .map(|r| r.describe())
                    .collect();
                bad.push(format!(
                    "the processor rejected a lifecycle event that ingest decided: {} {} {} {}; requests: {answers:?}",
                    rej["event_type"], rej["reason"], rej["event"], rej["detail"]
                ));
            }
        }
    }
    // 400 NEW_MESSAGE: justified by what was answered before it.
    for r in reqs
        .iter()
        .filter(|r| r.ev.kind == Kind::NewMessage && r.out.status() == 400)
    {
        let ev = r.ev;
        let field = r.out.last().body["field"].as_str();
        let closed_before = answered(reqs, Kind::Close, ev.conv, 200)
            .iter()
            .any(|o| o.out.before < r.out.after);
        if field == Some("data.conversation_id") && !closed_before {
            bad.push(format!(
                "{}: refused as CLOSED, but no CLOSE_CONVERSATION of it was answered 200 before",
                r.describe()
            ));
        }
        let taken = seen
            .rows
            .get(&ev.id)
            .is_some_and(|(c, outbound, _, _)| *outbound || *c != ev.conv);
        if field == Some("data.id") && !taken {
            bad.push(format!(
                "{}: refused as a taken id, but the id is stored as {:?}",
                r.describe(),
                seen.rows.get(&ev.id)
            ));
        }
    }

    total_rejected
}

/// Invalid bodies leave no trace; Postgres holds what the api shows.
fn check_traces(steps: &[Step], seen: &Seen, total_rejected: i64, bad: &mut Vec<String>) {
    for (i, step) in steps.iter().enumerate() {
        let Expect::Invalid { ids, what, .. } = &step.expect else {
            continue;
        };
        for id in ids {
            // The id may also be used by a valid request (not here: fresh).
            if seen.rows.contains_key(id) {
                bad.push(format!(
                    "request #{i} ({what}) was refused but message {id} is stored"
                ));
            }
            if seen.views.get(id).is_some_and(Option::is_some) {
                bad.push(format!(
                    "request #{i} ({what}) was refused but conversation {id} exists"
                ));
            }
            if seen
                .rejected
                .values()
                .flatten()
                .any(|rej| uuid_of(&rej["event_id"]) == Some(*id))
            {
                bad.push(format!(
                    "request #{i} ({what}) was refused but {id} was rejected by the processor"
                ));
            }
        }
    }

    // --- Cross-checks with Postgres ------------------------------------------
    for (id, (c, outbound, content, _)) in &seen.rows {
        let shown = seen.views.get(c).and_then(Option::as_ref).and_then(|v| {
            v["messages"]
                .as_array()?
                .iter()
                .find(|m| uuid_of(&m["id"]) == Some(*id))
                .cloned()
        });
        let ok = shown.as_ref().is_some_and(|m| {
            m["content"].as_str() == Some(content.as_str())
                && m["type"] == if *outbound { "OUTBOUND" } else { "INBOUND" }
        });
        if !ok {
            bad.push(format!(
                "message row {id} of {c} (OUTBOUND {outbound}) is not shown as stored by the api: {shown:?}"
            ));
        }
    }
    if seen.db_rejected != total_rejected {
        bad.push(format!(
            "rejected_events has {} rows for the topic, the api lists {total_rejected} for the conversations of the test",
            seen.db_rejected
        ));
    }
}

/// Every violation of the checks of the module doc.
fn violations(steps: &[Step], outcomes: &[Outcome], seen: &Seen) -> Vec<String> {
    let mut bad = Vec::new();
    let reqs = check_answers(steps, outcomes, &mut bad);
    check_lifecycle(&reqs, seen, &mut bad);
    let total_rejected = check_messages(&reqs, seen, &mut bad);
    check_traces(steps, seen, total_rejected, &mut bad);
    bad
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_valid_shaped_events_through_ingest_are_never_silently_dropped() {
    let seed = seed();
    eprintln!("ingest_fuzz: seed {seed} (replay with CHATPIPE_FUZZ_SEED={seed})");
    let mut rng = Rng(seed);
    let (steps, conversations) = plan(&mut rng);
    let steps = Arc::new(steps);

    let mut opts = Options::short();
    opts.partitions = 4;
    opts.processors = 2;
    let mut p = Pipeline::start(opts).await;
    let started = tokio::time::Instant::now();

    let outcomes = run(&p, Arc::clone(&steps)).await;
    let sent_in = started.elapsed();
    let mut answers: BTreeMap<(String, u16, bool, String), usize> = BTreeMap::new();
    for (step, out) in steps.iter().zip(&outcomes) {
        let kind = match &step.expect {
            Expect::Event(ev) => ev.kind.wire().to_owned(),
            Expect::Invalid { .. } => "invalid".to_owned(),
        };
        let field = out.last().body["field"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *answers
            .entry((kind, out.status(), out.replay(), field))
            .or_default() += 1;
    }
    let retried = outcomes.iter().filter(|o| o.attempts.len() > 1).count();
    eprintln!(
        "ingest_fuzz: {} requests in {sent_in:?} ({retried} retried after 503); answers (type, status, replay, field): {answers:?}",
        steps.len()
    );

    let ends = end_offsets(&p.bootstrap, &p.topic, p.opts.partitions).await;
    let settled = settle(&p, &ends).await;
    let mut all_convs: Vec<Uuid> = conversations.clone();
    for step in steps.iter() {
        match &step.expect {
            Expect::Event(ev) => all_convs.push(ev.conv),
            Expect::Invalid { ids, .. } => all_convs.extend(ids),
        }
    }
    all_convs.sort();
    all_convs.dedup();
    let seen = read_back(&p, &all_convs).await;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for rej in seen.rejected.values().flatten() {
        *reasons
            .entry(rej["reason"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    eprintln!(
        "ingest_fuzz: settled {:?} after {:?}; log ends {ends:?}; {} INBOUND, {} replies; rejections {reasons:?}",
        settled.is_ok(),
        started.elapsed(),
        seen.rows.values().filter(|r| !r.1).count(),
        seen.rows.values().filter(|r| r.1).count(),
    );

    let mut bad = Vec::new();
    if let Err(e) = settled {
        bad.push(e);
    }
    for (i, proc) in p.processors.iter_mut().enumerate() {
        if !proc.is_running() {
            bad.push(format!("processor {i} is no longer running"));
        }
    }
    if !p.ingest.is_running() {
        bad.push("ingest is no longer running".to_owned());
    }
    bad.extend(violations(&steps, &outcomes, &seen));
    assert!(
        bad.is_empty(),
        "seed {seed} (replay with CHATPIPE_FUZZ_SEED={seed}): {} violations:\n{}",
        bad.len(),
        bad.join("\n")
    );
}
