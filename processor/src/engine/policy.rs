//! The reply policy (pure): what a group's reply says.
//!
//! Three answerers, asked in order; the first that answers wins:
//!
//! 1. **the reply bot** (when one is configured): the shell asks it over
//!    HTTP ([`bot_request`]) and hands its answer, or why there is none,
//!    to [`decide`]; [`bot_answer`] checks what it said (2xx, JSON
//!    `{"content": "…"}`, not empty, at most [`MAX_REPLY_CHARS`]
//!    characters, no NUL). Any failure falls through to the rules.
//! 2. **the FAQ rules** ([`ReplyRules`]): going from the group's newest
//!    message to its oldest, the first rule (in file order) that matches
//!    a message answers. A keyword matches case-insensitively as a whole
//!    word (not preceded or followed by a letter, digit or underscore); a
//!    regex matches anywhere in the message.
//! 3. **the reply template** ([`ReplyTemplate`], minijinja): always
//!    answers. The default template renders the original text exactly
//!    ([`crate::engine::reply::reply_text`]); should a template fail to
//!    render for some group, the original text is the answer.
//!
//! The reply's id does not depend on its content: it stays
//! [`crate::engine::reply::reply_id`] of the group.

use std::fmt;

use minijinja::value::Value;
use uuid::Uuid;

use crate::engine::effects::{AnsweredBy, Outbound, ReplyMessage};
use crate::engine::reply::reply_text;

/// Most characters (Unicode scalar values) of an answer from the bot or a
/// rule (Telegram's limit for one message; WhatsApp's is larger).
pub const MAX_REPLY_CHARS: usize = 4096;

/// Most bytes of a bot's response body that are read.
pub const MAX_BOT_BODY_BYTES: usize = 64 * 1024;

/// Most template instructions one rendering may run (minijinja fuel): a
/// template looping without bound fails instead of holding a batch.
const TEMPLATE_FUEL: u64 = 1_000_000;

/// Largest compiled size of one rule's regex.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A template or rules file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The reply template does not compile, or fails to render a sample
    /// group.
    #[error("reply template: {0}")]
    Template(String),
    /// The rules file is not the expected JSON.
    #[error("reply rules: {0}")]
    RulesFile(String),
    /// One rule is wrong (`index` counts from 0, in file order).
    #[error("reply rule {index}: {error}")]
    Rule {
        /// Position of the rule in the file.
        index: usize,
        /// What is wrong with it.
        error: String,
    },
}

/// The reply template: a minijinja template with the variables `ids` (the
/// group's message ids, as strings), `messages` (their contents), both in
/// arrival order, `count` (how many) and `conversation_id`. Undefined
/// variables are errors (a misspelt name refuses the start instead of
/// rendering nothing), nothing is escaped, and the template's text is kept
/// as written (a trailing newline included).
pub struct ReplyTemplate {
    env: minijinja::Environment<'static>,
    source: String,
}

impl fmt::Debug for ReplyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyTemplate")
            .field("source", &self.source)
            .finish()
    }
}

const TEMPLATE_NAME: &str = "reply";

impl ReplyTemplate {
    /// Compiles `source` and renders it once for a sample group, so a
    /// template that cannot render (a misspelt variable, an unknown
    /// filter) is refused here rather than at its first reply.
    pub fn new(source: &str) -> Result<Self, PolicyError> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_fuel(Some(TEMPLATE_FUEL));
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .map_err(|e| PolicyError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| PolicyError::Template(describe(&e)))?;
        let t = Self {
            env,
            source: source.to_owned(),
        };
        let sample = [
            ReplyMessage {
                id: Uuid::from_u128(1),
                content: "hello".to_owned(),
                timestamp: chrono::DateTime::UNIX_EPOCH,
            },
            ReplyMessage {
                id: Uuid::from_u128(2),
                content: "how much is it?".to_owned(),
                timestamp: chrono::DateTime::UNIX_EPOCH,
            },
        ];
        t.render(Uuid::from_u128(3), &sample)
            .map_err(PolicyError::Template)?;
        Ok(t)
    }

    /// The template's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The reply to the group of `messages` (arrival order) of
    /// `conversation_id`, or why the template could not render it.
    pub fn render(
        &self,
        conversation_id: Uuid,
        messages: &[ReplyMessage],
    ) -> Result<String, String> {
        let ids: Value = messages
            .iter()
            .map(|m| Value::from(m.id.hyphenated().to_string()))
            .collect();
        let contents: Value = messages
            .iter()
            .map(|m| Value::from(m.content.as_str()))
            .collect();
        let ctx = Value::from_pairs([
            ("ids", ids),
            ("messages", contents),
            ("count", Value::from(messages.len())),
            (
                "conversation_id",
                Value::from(conversation_id.hyphenated().to_string()),
            ),
        ]);
        self.env
            .get_template(TEMPLATE_NAME)
            .and_then(|t| t.render(ctx))
            .map_err(|e| describe(&e))
    }
}

/// A minijinja error with its position and cause.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// How a rule recognises a message.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// A keyword: case-insensitive, as a whole word.
    Keyword {
        /// The keyword as written (trimmed).
        keyword: String,
        /// Its compiled form.
        regex: regex::Regex,
    },
    /// A regular expression (Rust `regex` syntax), anywhere in the message.
    Regex(regex::Regex),
}

impl Matcher {
    /// A keyword matcher: `keyword` (trimmed, not empty) not preceded or
    /// followed by a letter, digit or underscore, in any letter case.
    pub fn keyword(keyword: &str) -> Result<Self, String> {
        let keyword = keyword.trim();
        if keyword.is_empty() {
            return Err("the keyword is empty".to_owned());
        }
        let pattern = format!(r"(?i)(?:^|[^\w]){}(?:[^\w]|$)", regex::escape(keyword));
        let regex = regex::RegexBuilder::new(&pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| format!("keyword {keyword:?}: {e}"))?;
        Ok(Matcher::Keyword {
            keyword: keyword.to_owned(),
            regex,
        })
    }

    /// A regex matcher.
    pub fn regex(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("the regex is empty".to_owned());
        }
        regex::RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(Matcher::Regex)
            .map_err(|e| format!("regex {pattern:?}: {e}"))
    }

    /// Whether `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        match self {
            Matcher::Keyword { regex, .. } | Matcher::Regex(regex) => regex.is_match(text),
        }
    }
}

/// One FAQ rule: a matcher and its answer.
#[derive(Debug, Clone)]
pub struct Rule {
    /// What it recognises.
    pub matcher: Matcher,
    /// What it answers.
    pub answer: String,
}

/// The FAQ rules, in file order.
#[derive(Debug, Clone, Default)]
pub struct ReplyRules {
    rules: Vec<Rule>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    rules: Vec<RawRule>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    keyword: Option<String>,
    regex: Option<String>,
    answer: String,
}

impl ReplyRules {
    /// No rules.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The rules of a rules file:
    /// `{"rules":[{"keyword":"price","answer":"…"},{"regex":"…","answer":"…"}]}`.
    /// Each rule has exactly one of `keyword` and `regex`, and an answer
    /// that is not empty, holds no NUL and has at most
    /// [`MAX_REPLY_CHARS`] characters.
    pub fn parse(json: &str) -> Result<Self, PolicyError> {
        let file: RulesFile =
            serde_json::from_str(json).map_err(|e| PolicyError::RulesFile(e.to_string()))?;
        let mut rules = Vec::with_capacity(file.rules.len());
        for (index, raw) in file.rules.into_iter().enumerate() {
            let rule_error = |error: String| PolicyError::Rule { index, error };
            let matcher = match (&raw.keyword, &raw.regex) {
                (Some(k), None) => Matcher::keyword(k),
                (None, Some(r)) => Matcher::regex(r),
                (Some(_), Some(_)) => Err("has both `keyword` and `regex`; give one".to_owned()),
                (None, None) => Err("has neither `keyword` nor `regex`".to_owned()),
            }
            .map_err(rule_error)?;
            check_content(&raw.answer).map_err(|e| rule_error(format!("answer: {e}")))?;
            rules.push(Rule {
                matcher,
                answer: raw.answer,
            });
        }
        Ok(Self { rules })
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The answer to a group of `messages` (arrival order): going from
    /// the newest message to the oldest, the answer of the first rule (in
    /// file order) that matches a message; `None` when none does.
    pub fn answer(&self, messages: &[ReplyMessage]) -> Option<&str> {
        if self.rules.is_empty() {
            return None;
        }
        messages.iter().rev().find_map(|m| {
            self.rules
                .iter()
                .find(|r| r.matcher.matches(&m.content))
                .map(|r| r.answer.as_str())
        })
    }
}

/// Why the bot's answer was not used (the `reason` label of
/// `chatpipe_processor_reply_bot_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BotFailure {
    /// No answer within the timeout.
    Timeout,
    /// The request could not be sent or the response not read.
    Transport,
    /// A status other than 2xx.
    Status(u16),
    /// The body is larger than [`MAX_BOT_BODY_BYTES`].
    TooLarge,
    /// The body is not JSON with a string `content`.
    BadJson,
    /// `content` is empty (or only whitespace).
    Empty,
    /// `content` has more than [`MAX_REPLY_CHARS`] characters.
    TooLong,
    /// `content` holds NUL (no Postgres text can).
    Nul,
}

impl BotFailure {
    /// Every reason label, for metrics.
    pub const REASONS: [&'static str; 8] = [
        "timeout",
        "transport",
        "status",
        "too_large",
        "bad_json",
        "empty",
        "too_long",
        "nul",
    ];

    /// Label value.
    pub fn reason(self) -> &'static str {
        match self {
            BotFailure::Timeout => "timeout",
            BotFailure::Transport => "transport",
            BotFailure::Status(_) => "status",
            BotFailure::TooLarge => "too_large",
            BotFailure::BadJson => "bad_json",
            BotFailure::Empty => "empty",
            BotFailure::TooLong => "too_long",
            BotFailure::Nul => "nul",
        }
    }
}

impl fmt::Display for BotFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BotFailure::Timeout => f.write_str("no answer within the timeout"),
            BotFailure::Transport => f.write_str("request failed"),
            BotFailure::Status(s) => write!(f, "answered status {s}"),
            BotFailure::TooLarge => write!(f, "body larger than {MAX_BOT_BODY_BYTES} bytes"),
            BotFailure::BadJson => f.write_str("body is not JSON with a string `content`"),
            BotFailure::Empty => f.write_str("`content` is empty"),
            BotFailure::TooLong => {
                write!(f, "`content` is longer than {MAX_REPLY_CHARS} characters")
            }
            BotFailure::Nul => f.write_str("`content` holds NUL"),
        }
    }
}

/// Whether `content` can be a reply: not empty (or only whitespace), no
/// NUL, at most [`MAX_REPLY_CHARS`] characters.
pub fn check_content(content: &str) -> Result<(), BotFailure> {
    if content.trim().is_empty() {
        Err(BotFailure::Empty)
    } else if content.contains('\0') {
        Err(BotFailure::Nul)
    } else if content.chars().count() > MAX_REPLY_CHARS {
        Err(BotFailure::TooLong)
    } else {
        Ok(())
    }
}

/// The reply in a bot's response (`status`, `body`): a 2xx status and a
/// JSON object whose `content` is a string that passes [`check_content`].
pub fn bot_answer(status: u16, body: &[u8]) -> Result<String, BotFailure> {
    if !(200..300).contains(&status) {
        return Err(BotFailure::Status(status));
    }
    if body.len() > MAX_BOT_BODY_BYTES {
        return Err(BotFailure::TooLarge);
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        content: String,
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|_| BotFailure::BadJson)?;
    check_content(&answer.content)?;
    Ok(answer.content)
}

/// The body of the request asking the bot to answer `reply`:
/// `{"conversation_id","reply_id","messages":[{"id","content","timestamp"}]}`
/// (messages in arrival order, timestamps RFC 3339 in UTC).
pub fn bot_request(reply: &Outbound) -> serde_json::Value {
    let messages: Vec<serde_json::Value> = reply
        .messages
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id,
                "content": m.content,
                "timestamp": m.timestamp.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            })
        })
        .collect();
    serde_json::json!({
        "conversation_id": reply.conversation_id,
        "reply_id": reply.id,
        "messages": messages,
    })
}

/// What the policy answers for one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Who answered.
    pub answered_by: AnsweredBy,
    /// The reply's text.
    pub content: String,
    /// Why the template could not render (the original text answered
    /// instead).
    pub template_error: Option<String>,
}

/// The answer to `reply`: the bot's (`bot`: its checked answer, or why it
/// has none; `None` when there is no bot), else the first matching rule's,
/// else the template's (else, should it fail, the original text).
pub fn decide(
    bot: Option<Result<String, BotFailure>>,
    rules: &ReplyRules,
    template: &ReplyTemplate,
    reply: &Outbound,
) -> Decision {
    if let Some(Ok(content)) = bot {
        return Decision {
            answered_by: AnsweredBy::Bot,
            content,
            template_error: None,
        };
    }
    if let Some(answer) = rules.answer(&reply.messages) {
        return Decision {
            answered_by: AnsweredBy::Faq,
            content: answer.to_owned(),
            template_error: None,
        };
    }
    match template.render(reply.conversation_id, &reply.messages) {
        Ok(content) => Decision {
            answered_by: AnsweredBy::Template,
            content,
            template_error: None,
        },
        Err(e) => Decision {
            answered_by: AnsweredBy::Template,
            content: reply_text(&reply.inbound_ids),
            template_error: Some(e),
        },
    }
}

/// Writes `decision` into `reply`.
pub fn apply(reply: &mut Outbound, decision: Decision) {
    reply.content = decision.content;
    reply.answered_by = decision.answered_by;
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpipe_settings::processor::DEFAULT_REPLY_TEMPLATE;
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    use crate::engine::reply::reply_id;

    fn message(n: u128, content: &str) -> ReplyMessage {
        ReplyMessage {
            id: Uuid::from_u128(n),
            content: content.to_owned(),
            timestamp: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    fn reply(messages: Vec<ReplyMessage>) -> Outbound {
        let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
        Outbound {
            id: reply_id(&ids),
            conversation_id: Uuid::from_u128(99),
            content: reply_text(&ids),
            answered_by: AnsweredBy::Template,
            messages,
            timestamp_ms: 0,
            last_arrival_ms: 0,
            inbound_ids: ids,
            flushed_by_close: false,
            capped: false,
        }
    }

    fn rules(json: &str) -> ReplyRules {
        ReplyRules::parse(json).unwrap()
    }

    fn default_template() -> ReplyTemplate {
        ReplyTemplate::new(DEFAULT_REPLY_TEMPLATE).unwrap()
    }

    #[test]
    fn the_default_template_is_the_original_text() {
        let t = default_template();
        let msgs = vec![message(1, "a"), message(2, "b")];
        let ids: Vec<Uuid> = msgs.iter().map(|m| m.id).collect();
        assert_eq!(t.render(Uuid::nil(), &msgs).unwrap(), reply_text(&ids));
        assert_eq!(
            t.render(Uuid::nil(), &[]).unwrap(),
            "Mensagens recebidas:\n"
        );
    }

    #[test]
    fn templates_see_every_variable_and_nothing_is_escaped() {
        let t = ReplyTemplate::new(
            "{{ count }} for {{ conversation_id }}: {{ messages | join(\" | \") }} [{{ ids[0] }}]\n",
        )
        .unwrap();
        let out = t
            .render(
                Uuid::from_u128(7),
                &[message(1, "<b>price?</b> & co"), message(2, "bye")],
            )
            .unwrap();
        assert_eq!(
            out,
            format!(
                "2 for {}: <b>price?</b> & co | bye [{}]\n",
                Uuid::from_u128(7),
                Uuid::from_u128(1)
            )
        );
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        let e = ReplyTemplate::new("{% for id in ids %}").unwrap_err();
        assert!(
            matches!(&e, PolicyError::Template(m) if m.contains("syntax")),
            "{e}"
        );
        let e = ReplyTemplate::new("Hi {{ idz }}").unwrap_err();
        assert!(
            matches!(&e, PolicyError::Template(m) if m.contains("undefined")),
            "{e}"
        );
        let e = ReplyTemplate::new("{{ ids | no_such_filter }}").unwrap_err();
        assert!(
            matches!(&e, PolicyError::Template(m) if m.contains("no_such_filter")),
            "{e}"
        );
        // Unbounded work is cut off by the fuel limit.
        let e = ReplyTemplate::new(
            "{% for a in range(10000) %}{% for b in range(10000) %}x{% endfor %}{% endfor %}",
        )
        .unwrap_err();
        assert!(
            matches!(&e, PolicyError::Template(m) if m.contains("fuel")),
            "{e}"
        );
    }

    #[test]
    fn keywords_match_whole_words_in_any_case() {
        let m = Matcher::keyword(" Price ").unwrap();
        for yes in [
            "price",
            "What's the PRICE?",
            "price: 3",
            "(price)",
            "a\nprice\nb",
            "preço, price",
        ] {
            assert!(m.matches(yes), "{yes:?}");
        }
        for no in [
            "prices",
            "pricey",
            "overprice",
            "pri ce",
            "price_list",
            "2price",
            "",
        ] {
            assert!(!m.matches(no), "{no:?}");
        }
        let m = Matcher::keyword("c++").unwrap();
        assert!(m.matches("I like c++!"));
        assert!(!m.matches("I like abc++"));
        assert!(!m.matches("I like c++2"));
        let m = Matcher::keyword("preço").unwrap();
        assert!(m.matches("Qual o PREÇO?"));
        assert!(!m.matches("preçomedio"));
        let m = Matcher::keyword("opening hours").unwrap();
        assert!(m.matches("Opening hours, please"));
        assert!(Matcher::keyword("  ").is_err());
    }

    #[test]
    fn rules_files_are_checked() {
        let r = rules(
            r#"{"rules":[{"keyword":"price","answer":"10 EUR"},{"regex":"(?i)open(ing)? hours","answer":"9-17"}]}"#,
        );
        assert_eq!(r.len(), 2);
        let bad = [
            (r#"{"rules":[{"answer":"x"}]}"#, "reply rule 0: has neither"),
            (
                r#"{"rules":[{"keyword":"a","regex":"b","answer":"x"}]}"#,
                "reply rule 0: has both",
            ),
            (
                r#"{"rules":[{"keyword":"a","answer":"x"},{"regex":"(","answer":"x"}]}"#,
                "reply rule 1: regex",
            ),
            (
                r#"{"rules":[{"keyword":"a","answer":"  "}]}"#,
                "reply rule 0: answer",
            ),
            (
                r#"{"rules":[{"keyword":"a","answer":"a\u0000b"}]}"#,
                "reply rule 0: answer",
            ),
            (
                r#"{"rules":[{"keyword":"a","answer":"x","typo":1}]}"#,
                "reply rules: unknown field",
            ),
            (
                r#"{"rules":[{"keyword":"","answer":"x"}]}"#,
                "reply rule 0: the keyword is empty",
            ),
            (r#"[]"#, "reply rules:"),
            (r#"{"rules":"#, "reply rules:"),
        ];
        for (json, want) in bad {
            let e = ReplyRules::parse(json).unwrap_err().to_string();
            assert!(e.starts_with(want), "{json}: {e}");
        }
        let long = format!(
            r#"{{"rules":[{{"keyword":"a","answer":"{}"}}]}}"#,
            "x".repeat(MAX_REPLY_CHARS + 1)
        );
        assert!(ReplyRules::parse(&long).is_err());
        let max = format!(
            r#"{{"rules":[{{"keyword":"a","answer":"{}"}}]}}"#,
            "é".repeat(MAX_REPLY_CHARS)
        );
        assert!(ReplyRules::parse(&max).is_ok());
        assert!(rules(r#"{"rules":[]}"#).is_empty());
    }

    #[test]
    fn the_newest_matching_message_decides_then_file_order() {
        let r = rules(
            r#"{"rules":[{"keyword":"price","answer":"P"},{"keyword":"hours","answer":"H"}]}"#,
        );
        let group = |texts: &[&str]| -> Vec<ReplyMessage> {
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| message(i as u128, t))
                .collect()
        };
        assert_eq!(r.answer(&group(&["price?", "and hours?"])), Some("H"));
        assert_eq!(r.answer(&group(&["hours?", "price?"])), Some("P"));
        assert_eq!(r.answer(&group(&["hours and price?", "thanks"])), Some("P"));
        assert_eq!(r.answer(&group(&["hello", "thanks"])), None);
        assert_eq!(r.answer(&[]), None);
    }

    #[test]
    fn bot_answers_are_checked() {
        assert_eq!(bot_answer(200, br#"{"content":"hi"}"#), Ok("hi".to_owned()));
        assert_eq!(
            bot_answer(201, br#"{"content":"hi","extra":1}"#),
            Ok("hi".to_owned())
        );
        assert_eq!(
            bot_answer(500, br#"{"content":"hi"}"#),
            Err(BotFailure::Status(500))
        );
        assert_eq!(bot_answer(302, b""), Err(BotFailure::Status(302)));
        assert_eq!(bot_answer(200, b"hi"), Err(BotFailure::BadJson));
        assert_eq!(
            bot_answer(200, br#"{"content":null}"#),
            Err(BotFailure::BadJson)
        );
        assert_eq!(
            bot_answer(200, br#"{"text":"hi"}"#),
            Err(BotFailure::BadJson)
        );
        assert_eq!(
            bot_answer(200, br#"{"content":" \n"}"#),
            Err(BotFailure::Empty)
        );
        assert_eq!(
            bot_answer(200, br#"{"content":"a\u0000"}"#),
            Err(BotFailure::Nul)
        );
        let long = format!(r#"{{"content":"{}"}}"#, "é".repeat(MAX_REPLY_CHARS + 1));
        assert_eq!(bot_answer(200, long.as_bytes()), Err(BotFailure::TooLong));
        let max = format!(r#"{{"content":"{}"}}"#, "é".repeat(MAX_REPLY_CHARS));
        assert!(bot_answer(200, max.as_bytes()).is_ok());
        let huge = vec![b' '; MAX_BOT_BODY_BYTES + 1];
        assert_eq!(bot_answer(200, &huge), Err(BotFailure::TooLarge));
        let labels: Vec<&str> = [
            BotFailure::Timeout,
            BotFailure::Transport,
            BotFailure::Status(404),
            BotFailure::TooLarge,
            BotFailure::BadJson,
            BotFailure::Empty,
            BotFailure::TooLong,
            BotFailure::Nul,
        ]
        .iter()
        .map(|f| f.reason())
        .collect();
        assert_eq!(labels, BotFailure::REASONS);
    }

    #[test]
    fn the_bot_request_carries_the_group() {
        let mut m = message(1, "hi");
        m.timestamp = DateTime::parse_from_rfc3339("2024-05-01T10:00:00.123Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = reply(vec![m, message(2, "there")]);
        let body = bot_request(&r);
        assert_eq!(body["conversation_id"], Uuid::from_u128(99).to_string());
        assert_eq!(body["reply_id"], r.id.to_string());
        assert_eq!(body["messages"][0]["id"], Uuid::from_u128(1).to_string());
        assert_eq!(body["messages"][0]["content"], "hi");
        assert_eq!(body["messages"][0]["timestamp"], "2024-05-01T10:00:00.123Z");
        assert_eq!(body["messages"][1]["content"], "there");
        assert_eq!(body["messages"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn decisions_follow_bot_then_rules_then_template() {
        let t = ReplyTemplate::new("T{{ count }}").unwrap();
        let r = rules(r#"{"rules":[{"keyword":"price","answer":"P"}]}"#);
        let faq = reply(vec![message(1, "the price?")]);
        let plain = reply(vec![message(1, "hello")]);
        let bot_ok = || Some(Ok("B".to_owned()));
        let bot_failed = || Some(Err(BotFailure::Timeout));
        let cases = [
            (bot_ok(), &faq, AnsweredBy::Bot, "B"),
            (bot_ok(), &plain, AnsweredBy::Bot, "B"),
            (bot_failed(), &faq, AnsweredBy::Faq, "P"),
            (bot_failed(), &plain, AnsweredBy::Template, "T1"),
            (None, &faq, AnsweredBy::Faq, "P"),
            (None, &plain, AnsweredBy::Template, "T1"),
        ];
        for (bot, group, by, text) in cases {
            let d = decide(bot, &r, &t, group);
            assert_eq!((d.answered_by, d.content.as_str()), (by, text));
            assert_eq!(d.template_error, None);
        }
        let mut o = faq.clone();
        apply(&mut o, decide(None, &r, &t, &faq));
        assert_eq!((o.content.as_str(), o.answered_by), ("P", AnsweredBy::Faq));
        assert_eq!(o.id, faq.id, "the id does not depend on the content");
    }

    #[test]
    fn a_template_that_fails_for_a_group_answers_the_original_text() {
        // Renders the sample group (2 messages), fails on a group of one.
        let t = ReplyTemplate::new("{{ ids[1] }}").unwrap();
        let one = reply(vec![message(5, "x")]);
        let d = decide(None, &ReplyRules::empty(), &t, &one);
        assert_eq!(d.answered_by, AnsweredBy::Template);
        assert_eq!(d.content, reply_text(&one.inbound_ids));
        assert!(d.template_error.is_some());
    }

    /// Whole-word, case-insensitive occurrence of `kw` in `text` (ASCII).
    fn reference_keyword(kw: &str, text: &str) -> bool {
        let (kw, text) = (kw.to_ascii_lowercase(), text.to_ascii_lowercase());
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        (0..text.len()).any(|i| {
            text[i..].starts_with(&kw)
                && !word(text[..i].chars().next_back())
                && !word(text[i + kw.len()..].chars().next())
        })
    }

    proptest! {
        #[test]
        fn the_default_template_equals_reply_text_for_any_ids(
            ids in proptest::collection::vec(any::<u128>(), 0..120),
            conv in any::<u128>(),
        ) {
            let t = default_template();
            let msgs: Vec<ReplyMessage> = ids.iter().map(|n| message(*n, "x")).collect();
            let uuids: Vec<Uuid> = msgs.iter().map(|m| m.id).collect();
            prop_assert_eq!(t.render(Uuid::from_u128(conv), &msgs).unwrap(), reply_text(&uuids));
            let d = decide(None, &ReplyRules::empty(), &t, &reply(msgs));
            prop_assert_eq!(d.content, reply_text(&uuids));
        }

        #[test]
        fn keywords_match_like_the_reference(
            kw in "[a-cA-C_1][a-cA-C_1 +]{0,3}[a-cA-C_1]",
            text in "[a-cA-C_1 +.,!]{0,24}",
        ) {
            let m = Matcher::keyword(&kw).unwrap();
            prop_assert_eq!(m.matches(&text), reference_keyword(&kw, &text), "{:?} in {:?}", kw, text);
        }

        #[test]
        fn a_keyword_between_separators_always_matches(
            kw in "[a-zA-Z]{1,8}",
            before in "[a-z ]{0,10}",
            after in "[a-z ]{0,10}",
            sep in "[ .,!?\n]",
            upper in any::<bool>(),
        ) {
            let shown = if upper { kw.to_uppercase() } else { kw.to_lowercase() };
            let text = format!("{before}{sep}{shown}{sep}{after}");
            prop_assert!(Matcher::keyword(&kw).unwrap().matches(&text));
            let glued = format!("{before}x{shown}{after}");
            prop_assert_eq!(
                Matcher::keyword(&kw).unwrap().matches(&glued),
                reference_keyword(&kw, &glued)
            );
        }

        /// The rule answer is the first rule matching the newest message
        /// that any rule matches (a direct model of the rule).
        #[test]
        fn rule_answers_follow_the_model(
            texts in proptest::collection::vec("(price|hours|hello|x)( (price|hours|hello|x)){0,2}", 0..5),
            order in proptest::collection::vec(0usize..3, 0..4),
        ) {
            let words = ["price", "hours", "hello"];
            let json = serde_json::json!({
                "rules": order.iter().enumerate().map(|(i, w)| serde_json::json!({
                    "keyword": words[*w], "answer": format!("{i}:{}", words[*w]),
                })).collect::<Vec<_>>()
            });
            let r = ReplyRules::parse(&json.to_string()).unwrap();
            let msgs: Vec<ReplyMessage> = texts.iter().enumerate().map(|(i, t)| message(i as u128, t)).collect();
            let model = texts.iter().rev().find_map(|t| {
                let ws: Vec<&str> = t.split(' ').collect();
                order.iter().enumerate().find(|(_, w)| ws.contains(&words[**w]))
                    .map(|(i, w)| format!("{i}:{}", words[*w]))
            });
            prop_assert_eq!(r.answer(&msgs).map(str::to_owned), model);
        }

        #[test]
        fn the_bot_wins_whenever_it_answers(
            bot in proptest::option::of(prop_oneof![
                "[a-z]{1,10}".prop_map(Ok),
                Just(Err(BotFailure::Timeout)),
                Just(Err(BotFailure::Status(503))),
            ]),
            text in "(price|hello)",
        ) {
            let t = default_template();
            let r = rules(r#"{"rules":[{"keyword":"price","answer":"P"}]}"#);
            let group = reply(vec![message(1, &text)]);
            let d = decide(bot.clone(), &r, &t, &group);
            let expected = match bot {
                Some(Ok(b)) => (AnsweredBy::Bot, b),
                _ if text == "price" => (AnsweredBy::Faq, "P".to_owned()),
                _ => (AnsweredBy::Template, reply_text(&group.inbound_ids)),
            };
            prop_assert_eq!((d.answered_by, d.content), expected);
        }
    }
}
