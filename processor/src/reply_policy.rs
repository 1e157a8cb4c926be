//! The reply policy's I/O: asking the reply bot over HTTP, and keeping the
//! FAQ rules of a file in memory (re-read when its content changes). What
//! the answers mean and which one wins is pure
//! ([`crate::engine::policy`]); this module only fetches them.
//!
//! - **The rules cache.** The rules in use are one immutable
//!   [`ReplyRules`] behind a lock, replaced as a whole: a batch answers
//!   all its replies with the same rules. [`ReplyPolicy::spawn_rules_refresh`]
//!   reads the file every `refresh`; when its content changed it is parsed
//!   and, if good, replaces the rules ([`ReplyRulesLoaded`]). A file that
//!   cannot be read or parsed keeps the rules in use
//!   ([`ReplyRulesRejected`]), and `/readyz` lists a warning until a good
//!   file is loaded (the replica stays ready).
//! - **The bot.** The replies of a batch are asked concurrently (at most
//!   [`BOT_CONCURRENCY`] at a time), each bounded by the bot timeout, so a
//!   slow bot costs a batch about one timeout. A reply the bot did not
//!   answer falls back to the rules, then the template
//!   ([`ReplyBotFellBack`]).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;

use crate::engine::effects::{Effect, Outbound};
use crate::engine::policy::{
    apply, bot_answer, bot_request, decide, BotFailure, ReplyRules, ReplyTemplate,
    MAX_BOT_BODY_BYTES,
};
use crate::events::{
    InternalEvent, ReplyBotFellBack, ReplyRulesLoaded, ReplyRulesRejected, ReplyTemplateFailed,
};
use crate::health::Health;
use crate::metrics::Metrics;

/// Most bot requests in flight at once.
pub const BOT_CONCURRENCY: usize = 32;

/// The `/readyz` condition key of an unusable rules file.
const RULES_CONDITION: &str = "reply_rules_file";

/// What the reply policy is made of (the processor's `--reply-*` flags).
#[derive(Clone)]
pub struct PolicyConfig {
    /// The reply template (minijinja).
    pub template: String,
    /// The FAQ rules file, if any.
    pub rules_file: Option<PathBuf>,
    /// How often the rules file is checked for changes.
    pub rules_refresh: Duration,
    /// The reply bot's URL, if any.
    pub bot_url: Option<String>,
    /// How long the bot may take for one reply.
    pub bot_timeout: Duration,
    /// Bearer token sent to the bot.
    pub bot_token: Option<String>,
}

impl std::fmt::Debug for PolicyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyConfig")
            .field("template", &self.template)
            .field("rules_file", &self.rules_file)
            .field("rules_refresh", &self.rules_refresh)
            .field("bot_url", &self.bot_url)
            .field("bot_timeout", &self.bot_timeout)
            .field("bot_token", &self.bot_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl PolicyConfig {
    /// The policy of the processor's command line.
    pub fn from_args(args: &chatpipe_settings::processor::ProcessorArgs) -> Self {
        Self {
            template: args.reply_template.clone(),
            rules_file: args.reply_rules_file.as_ref().map(PathBuf::from),
            rules_refresh: args.reply_rules_refresh,
            bot_url: args.reply_bot_url.clone(),
            bot_timeout: args.reply_bot_timeout,
            bot_token: args.reply_bot_token.as_ref().map(|t| t.expose().to_owned()),
        }
    }
}

/// The reply bot's client.
struct Bot {
    client: reqwest::Client,
    url: reqwest::Url,
    token: Option<String>,
    timeout: Duration,
}

impl Bot {
    /// Asks the bot to answer `reply`: its checked answer, or why there is
    /// none (and what went wrong, for the log).
    async fn ask(&self, reply: &Outbound) -> Result<String, (BotFailure, String)> {
        let body = bot_request(reply);
        let call = async {
            let mut request = self.client.post(self.url.clone()).json(&body);
            if let Some(t) = &self.token {
                request = request.bearer_auth(t);
            }
            let mut response = request.send().await.map_err(|e| transport(&e))?;
            let status = response.status().as_u16();
            if !response.status().is_success() {
                return Err((BotFailure::Status(status), format!("status {status}")));
            }
            let mut buf = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| transport(&e))? {
                buf.extend_from_slice(&chunk);
                if buf.len() > MAX_BOT_BODY_BYTES {
                    return Err((BotFailure::TooLarge, BotFailure::TooLarge.to_string()));
                }
            }
            bot_answer(status, &buf).map_err(|f| (f, f.to_string()))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err((
                BotFailure::Timeout,
                format!("no answer within {:?}", self.timeout),
            )),
        }
    }
}

fn transport(e: &reqwest::Error) -> (BotFailure, String) {
    let kind = if e.is_timeout() {
        BotFailure::Timeout
    } else {
        BotFailure::Transport
    };
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        detail.push_str(": ");
        detail.push_str(&inner.to_string());
        source = inner.source();
    }
    (kind, detail)
}

struct Inner {
    template: ReplyTemplate,
    rules: RwLock<Arc<ReplyRules>>,
    rules_file: Option<(PathBuf, Duration, Vec<u8>)>,
    bot: Option<Bot>,
    metrics: Metrics,
}

/// The reply policy the processor applies to every reply before writing
/// it: bot, then FAQ rules, then template. Cheap to clone (shared).
#[derive(Clone)]
pub struct ReplyPolicy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ReplyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyPolicy")
            .field("template", &self.inner.template.source())
            .field("rules", &self.rules().len())
            .field(
                "rules_file",
                &self.inner.rules_file.as_ref().map(|(p, _, _)| p),
            )
            .field("bot_url", &self.inner.bot.as_ref().map(|b| b.url.as_str()))
            .finish()
    }
}

impl ReplyPolicy {
    /// The original policy: no bot, no rules, the default template (the
    /// original text).
    pub fn original(metrics: Metrics) -> Self {
        let template = ReplyTemplate::new(chatpipe_settings::processor::DEFAULT_REPLY_TEMPLATE)
            .unwrap_or_else(|e| unreachable!("the default reply template is valid: {e}"));
        Self::with_parts(template, ReplyRules::empty(), None, None, metrics)
    }

    /// The policy `config` describes. Refuses (with the reason) a template
    /// that does not compile or render, a rules file that cannot be read
    /// or parsed, and a bot URL that is not `http(s)://`.
    pub fn new(config: &PolicyConfig, metrics: Metrics) -> anyhow::Result<Self> {
        let template = ReplyTemplate::new(&config.template)
            .context("--reply-template (CHATPIPE_REPLY_TEMPLATE)")?;
        let (rules, rules_file) = match &config.rules_file {
            None => (ReplyRules::empty(), None),
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("reading the FAQ rules file {}", path.display()))?;
                let rules = parse_rules(&bytes)
                    .with_context(|| format!("the FAQ rules file {}", path.display()))?;
                (
                    rules,
                    Some((
                        path.clone(),
                        config.rules_refresh.max(Duration::from_millis(10)),
                        bytes,
                    )),
                )
            }
        };
        let bot = match &config.bot_url {
            None => None,
            Some(url) => {
                let url = reqwest::Url::parse(url)
                    .with_context(|| format!("--reply-bot-url {url:?} is not a URL"))?;
                anyhow::ensure!(
                    matches!(url.scheme(), "http" | "https"),
                    "--reply-bot-url {url} must be http:// or https://"
                );
                anyhow::ensure!(
                    !config.bot_timeout.is_zero(),
                    "--reply-bot-timeout must be above 0"
                );
                let client = reqwest::Client::builder()
                    .timeout(config.bot_timeout)
                    .user_agent(concat!("chatpipe-processor/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .context("building the reply bot's HTTP client")?;
                Some(Bot {
                    client,
                    url,
                    token: config.bot_token.clone(),
                    timeout: config.bot_timeout,
                })
            }
        };
        let policy = Self::with_parts(template, rules, rules_file, bot, metrics);
        if let Some((path, _, _)) = &policy.inner.rules_file {
            ReplyRulesLoaded {
                path: &path.display().to_string(),
                rules: policy.rules().len(),
            }
            .emit(&policy.inner.metrics);
        }
        Ok(policy)
    }

    fn with_parts(
        template: ReplyTemplate,
        rules: ReplyRules,
        rules_file: Option<(PathBuf, Duration, Vec<u8>)>,
        bot: Option<Bot>,
        metrics: Metrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                template,
                rules: RwLock::new(Arc::new(rules)),
                rules_file,
                bot,
                metrics,
            }),
        }
    }

    /// The rules in use.
    pub fn rules(&self) -> Arc<ReplyRules> {
        match self.inner.rules.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_rules(&self, rules: ReplyRules) {
        let rules = Arc::new(rules);
        match self.inner.rules.write() {
            Ok(mut g) => *g = rules,
            Err(p) => *p.into_inner() = rules,
        }
    }

    /// Whether a bot is asked.
    pub fn has_bot(&self) -> bool {
        self.inner.bot.is_some()
    }

    /// Answers every reply among `effects` (sets its content and what
    /// answered it). Never fails: a reply nothing else answers gets the
    /// template's text (or the original text).
    pub async fn answer_effects<'a>(&self, effects: impl IntoIterator<Item = &'a mut Effect>) {
        let replies: Vec<&mut Outbound> = effects
            .into_iter()
            .filter_map(|e| match e {
                Effect::Outbound(o) => Some(o),
                _ => None,
            })
            .collect();
        self.answer(replies).await;
    }

    /// Answers `replies`: the bot first (all of them concurrently), then
    /// the FAQ rules, then the template.
    pub async fn answer(&self, mut replies: Vec<&mut Outbound>) {
        if replies.is_empty() {
            return;
        }
        let inner = &self.inner;
        let asked: Vec<Option<Result<String, (BotFailure, String)>>> = match &inner.bot {
            None => replies.iter().map(|_| None).collect(),
            Some(bot) => {
                futures::stream::iter(replies.iter().map(|o| bot.ask(o)))
                    .buffered(BOT_CONCURRENCY)
                    .map(Some)
                    .collect()
                    .await
            }
        };
        let failures: Vec<(BotFailure, String)> = asked
            .iter()
            .filter_map(|a| match a {
                Some(Err(f)) => Some(f.clone()),
                _ => None,
            })
            .collect();
        ReplyBotFellBack {
            failures: &failures,
            asked: if inner.bot.is_some() {
                replies.len()
            } else {
                0
            },
        }
        .emit(&inner.metrics);
        let rules = self.rules();
        for (o, bot) in replies.iter_mut().zip(asked) {
            let bot = bot.map(|r| r.map_err(|(f, _)| f));
            let decision = decide(bot, &rules, &inner.template, o);
            if let Some(e) = &decision.template_error {
                ReplyTemplateFailed {
                    conversation_id: o.conversation_id,
                    error: e,
                }
                .emit(&inner.metrics);
            }
            apply(o, decision);
        }
    }

    /// Keeps the FAQ rules in step with their file (when there is one):
    /// checks it every refresh interval and, when its content changed,
    /// loads it or keeps the rules in use (warning on `health` until a good
    /// file is loaded). Runs until aborted.
    pub fn spawn_rules_refresh(&self, health: Health) -> Option<tokio::task::JoinHandle<()>> {
        let (path, refresh, first) = self.inner.rules_file.clone()?;
        let policy = self.clone();
        Some(tokio::spawn(async move {
            let shown = path.display().to_string();
            // The content last read (`None` after a failed read).
            let mut last: Option<Vec<u8>> = Some(first);
            loop {
                tokio::time::sleep(refresh).await;
                let read = tokio::fs::read(&path).await;
                let outcome = match read {
                    Ok(bytes) if last.as_ref() == Some(&bytes) => continue,
                    Ok(bytes) => {
                        let parsed = parse_rules(&bytes).map_err(|e| format!("{e:#}"));
                        last = Some(bytes);
                        parsed
                    }
                    Err(e) => {
                        if last.is_none() {
                            // Still unreadable: reported already.
                            continue;
                        }
                        last = None;
                        Err(format!("cannot be read: {e}"))
                    }
                };
                match outcome {
                    Ok(rules) => {
                        let n = rules.len();
                        policy.set_rules(rules);
                        ReplyRulesLoaded {
                            path: &shown,
                            rules: n,
                        }
                        .emit(&policy.inner.metrics);
                        health.set_condition(RULES_CONDITION, None);
                    }
                    Err(error) => {
                        let event = ReplyRulesRejected {
                            path: &shown,
                            error: &error,
                            kept: policy.rules().len(),
                        };
                        health.set_condition(RULES_CONDITION, Some(event.warning()));
                        event.emit(&policy.inner.metrics);
                    }
                }
            }
        }))
    }
}

fn parse_rules(bytes: &[u8]) -> anyhow::Result<ReplyRules> {
    let text = std::str::from_utf8(bytes).context("not UTF-8")?;
    Ok(ReplyRules::parse(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::effects::{AnsweredBy, ReplyMessage};
    use crate::engine::reply::{reply_id, reply_text};
    use uuid::Uuid;

    fn outbound(n: u128, text: &str) -> Effect {
        let id = Uuid::from_u128(n);
        Effect::Outbound(Outbound {
            id: reply_id(&[id]),
            conversation_id: Uuid::from_u128(1000 + n),
            content: reply_text(&[id]),
            answered_by: AnsweredBy::Template,
            messages: vec![ReplyMessage {
                id,
                content: text.to_owned(),
                timestamp: chrono::DateTime::UNIX_EPOCH,
            }],
            timestamp_ms: 0,
            last_arrival_ms: 0,
            inbound_ids: vec![id],
            flushed_by_close: false,
            capped: false,
        })
    }

    fn config(template: &str) -> PolicyConfig {
        PolicyConfig {
            template: template.to_owned(),
            rules_file: None,
            rules_refresh: Duration::from_millis(20),
            bot_url: None,
            bot_timeout: Duration::from_secs(2),
            bot_token: None,
        }
    }

    fn content(e: &Effect) -> (&str, AnsweredBy) {
        match e {
            Effect::Outbound(o) => (o.content.as_str(), o.answered_by),
            _ => ("", AnsweredBy::Template),
        }
    }

    #[tokio::test]
    async fn bad_settings_refuse_the_start_with_the_reason() {
        let m = Metrics::new().unwrap();
        let e = ReplyPolicy::new(&config("{{ nope }}"), m.clone()).unwrap_err();
        assert!(
            format!("{e:#}").contains("CHATPIPE_REPLY_TEMPLATE"),
            "{e:#}"
        );
        let mut c = config("x");
        c.rules_file = Some(PathBuf::from("/nonexistent/rules.json"));
        let e = ReplyPolicy::new(&c, m.clone()).unwrap_err();
        assert!(format!("{e:#}").contains("reading the FAQ rules file /nonexistent/rules.json"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.json");
        std::fs::write(&path, r#"{"rules":[{"answer":"x"}]}"#).unwrap();
        c.rules_file = Some(path);
        let e = ReplyPolicy::new(&c, m.clone()).unwrap_err();
        assert!(
            format!("{e:#}").contains("reply rule 0: has neither"),
            "{e:#}"
        );
        let mut c = config("x");
        c.bot_url = Some("ftp://bot".into());
        assert!(ReplyPolicy::new(&c, m.clone()).is_err());
        c.bot_url = Some("not a url".into());
        assert!(ReplyPolicy::new(&c, m).is_err());
        let token = PolicyConfig {
            bot_token: Some("s3cret".into()),
            ..config("x")
        };
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn rules_are_reloaded_when_the_file_changes_and_kept_when_it_breaks() {
        let m = Metrics::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.json");
        std::fs::write(&path, r#"{"rules":[{"keyword":"price","answer":"P1"}]}"#).unwrap();
        let mut c = config("T");
        c.rules_file = Some(path.clone());
        let policy = ReplyPolicy::new(&c, m.clone()).unwrap();
        assert_eq!((m.reply_rules_reloads.get(), m.reply_rules.get()), (1, 1));
        let health = Health::default();
        let task = policy.spawn_rules_refresh(health.clone()).unwrap();
        let answer = |text: &'static str| {
            let policy = policy.clone();
            async move {
                let mut e = [outbound(1, text)];
                policy.answer_effects(e.iter_mut()).await;
                let (c, by) = content(&e[0]);
                (c.to_owned(), by)
            }
        };
        assert_eq!(answer("price?").await, ("P1".to_owned(), AnsweredBy::Faq));
        assert_eq!(
            answer("hello").await,
            ("T".to_owned(), AnsweredBy::Template)
        );

        let wait_for = |what: &'static str, check: Box<dyn Fn() -> bool>| async move {
            for _ in 0..200 {
                if check() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{what} did not happen");
        };
        std::fs::write(
            &path,
            r#"{"rules":[{"keyword":"hello","answer":"H"},{"keyword":"price","answer":"P2"}]}"#,
        )
        .unwrap();
        let mm = m.clone();
        wait_for(
            "reload",
            Box::new(move || mm.reply_rules_reloads.get() == 2),
        )
        .await;
        assert_eq!(answer("price?").await, ("P2".to_owned(), AnsweredBy::Faq));
        assert_eq!(answer("hello").await, ("H".to_owned(), AnsweredBy::Faq));

        std::fs::write(&path, r#"{"rules":[{"keyword":"hello""#).unwrap();
        let mm = m.clone();
        wait_for(
            "rejection",
            Box::new(move || mm.reply_rules_reload_failures.get() == 1),
        )
        .await;
        assert_eq!(
            answer("hello").await,
            ("H".to_owned(), AnsweredBy::Faq),
            "kept"
        );
        let w = health.warnings();
        assert!(
            w.len() == 1 && w[0].contains("keeping the 2 rules"),
            "{w:?}"
        );
        // Unchanged: not reported again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(m.reply_rules_reload_failures.get(), 1);

        std::fs::remove_file(&path).unwrap();
        let mm = m.clone();
        wait_for(
            "unreadable",
            Box::new(move || mm.reply_rules_reload_failures.get() == 2),
        )
        .await;
        assert!(health.warnings()[0].contains("cannot be read"));

        std::fs::write(&path, r#"{"rules":[]}"#).unwrap();
        let mm = m.clone();
        wait_for(
            "recovery",
            Box::new(move || mm.reply_rules_reloads.get() == 3),
        )
        .await;
        assert!(health.warnings().is_empty());
        assert_eq!(m.reply_rules.get(), 0);
        assert_eq!(
            answer("hello").await,
            ("T".to_owned(), AnsweredBy::Template)
        );
        task.abort();
    }

    /// A bot that answers `Bot: <last message>` after `delay`, counting
    /// the requests in flight at once.
    async fn slow_bot(delay: Duration) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let peak = Arc::new(AtomicUsize::new(0));
        let now = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let (p, n) = (peak.clone(), now.clone());
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |body: axum::Json<serde_json::Value>| {
                let (p, n) = (p.clone(), n.clone());
                async move {
                    let inflight = n.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(inflight, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    n.fetch_sub(1, Ordering::SeqCst);
                    let last = body["messages"][0]["content"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    axum::Json(serde_json::json!({ "content": format!("Bot: {last}") }))
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, peak)
    }

    #[tokio::test]
    async fn a_batch_asks_the_bot_concurrently_and_bounded() {
        let m = Metrics::new().unwrap();
        let (url, peak) = slow_bot(Duration::from_millis(300)).await;
        let policy = ReplyPolicy::new(
            &PolicyConfig {
                bot_url: Some(url),
                bot_timeout: Duration::from_secs(5),
                ..config("T")
            },
            m.clone(),
        )
        .unwrap();
        assert!(policy.has_bot());
        let mut effects: Vec<Effect> = (0..40u128).map(|n| outbound(n, &format!("q{n}"))).collect();
        let started = std::time::Instant::now();
        policy.answer_effects(effects.iter_mut()).await;
        let took = started.elapsed();
        // 40 replies at most 32 at a time: two rounds of 300 ms, not 40.
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= BOT_CONCURRENCY);
        for (n, e) in effects.iter().enumerate() {
            assert_eq!(content(e), (format!("Bot: q{n}").as_str(), AnsweredBy::Bot));
        }
    }

    #[tokio::test]
    async fn a_slow_or_unreachable_bot_costs_one_timeout_and_falls_back() {
        let m = Metrics::new().unwrap();
        let (url, _) = slow_bot(Duration::from_secs(3)).await;
        let policy = ReplyPolicy::new(
            &PolicyConfig {
                bot_url: Some(url),
                bot_timeout: Duration::from_millis(200),
                ..config("T{{ count }}")
            },
            m.clone(),
        )
        .unwrap();
        let mut effects: Vec<Effect> = (0..10u128).map(|n| outbound(n, "x")).collect();
        let started = std::time::Instant::now();
        policy.answer_effects(effects.iter_mut()).await;
        assert!(
            started.elapsed() < Duration::from_millis(1_500),
            "{:?}",
            started.elapsed()
        );
        assert!(effects
            .iter()
            .all(|e| content(e) == ("T1", AnsweredBy::Template)));
        assert_eq!(
            m.reply_bot_failures.with_label_values(&["timeout"]).get(),
            10
        );

        // Nothing listens on the port: a transport failure.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", closed.local_addr().unwrap());
        drop(closed);
        let policy = ReplyPolicy::new(
            &PolicyConfig {
                bot_url: Some(url),
                ..config("T")
            },
            m.clone(),
        )
        .unwrap();
        let mut effects = [outbound(1, "x")];
        policy.answer_effects(effects.iter_mut()).await;
        assert_eq!(content(&effects[0]), ("T", AnsweredBy::Template));
        assert_eq!(
            m.reply_bot_failures.with_label_values(&["transport"]).get(),
            1
        );
    }

    #[tokio::test]
    async fn without_a_bot_or_rules_the_original_text_answers() {
        let m = Metrics::new().unwrap();
        let policy = ReplyPolicy::original(m.clone());
        let mut e = [outbound(1, "price"), outbound(2, "x")];
        let before = e.clone();
        policy.answer_effects(e.iter_mut()).await;
        assert_eq!(e, before);
        assert!(!policy.has_bot());
    }
}
