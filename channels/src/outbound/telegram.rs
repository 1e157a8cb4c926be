//! Telegram Bot API `sendMessage`.
//!
//! `POST {base}/bot{token}/sendMessage` with JSON `{"chat_id", "text"}`;
//! success `{"ok":true,"result":{"message_id":…,"chat":{"id":…},…}}`;
//! failure `{"ok":false,"error_code":N,"description":"…",
//! "parameters":{"retry_after":S}}` where `error_code` is the HTTP status.
//!
//! | answer | outcome |
//! |---|---|
//! | 200 `ok` with `result.message_id` | sent, id `{chat.id}:{message_id}` |
//! | 429 | transient, `parameters.retry_after` (else `Retry-After`) |
//! | 5xx | transient |
//! | 401, 404 (bad token) | permanent `unauthorized` |
//! | 403 (bot blocked, user deactivated, bot kicked) | permanent `403` |
//! | other 4xx (`chat not found`, empty or too long text…) | permanent `<error_code>` |

use std::time::Duration;

use http::HeaderMap;
use serde::Deserialize;

use super::{
    by_status, json_body, retry_after_header, shorten, BuildError, ProviderRequest, SendOutcome,
};
use crate::ChannelType;

/// The `sendMessage` request of `text` to chat `chat_id` (a decimal chat
/// id, sent as a number; anything else, e.g. `@channel`, as a string).
pub fn request(
    base: &str,
    bot_token: &str,
    chat_id: &str,
    text: &str,
) -> Result<ProviderRequest, BuildError> {
    let chat: serde_json::Value = match chat_id.parse::<i64>() {
        Ok(n) => n.into(),
        Err(_) => chat_id.into(),
    };
    json_body(
        ChannelType::Telegram,
        http::Request::post(format!("{base}/bot{bot_token}/sendMessage")),
        &serde_json::json!({ "chat_id": chat, "text": text }),
    )
}

#[derive(Deserialize)]
struct Answer {
    ok: bool,
    result: Option<Message>,
    error_code: Option<u16>,
    description: Option<String>,
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
struct Message {
    message_id: i64,
    chat: Chat,
}

#[derive(Deserialize)]
struct Chat {
    id: i64,
}

#[derive(Deserialize)]
struct Parameters {
    retry_after: Option<u64>,
    migrate_to_chat_id: Option<i64>,
}

/// What a `sendMessage` answer means (see the module's table).
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> SendOutcome {
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
        return by_status(status, headers, body);
    };
    if answer.ok {
        return match answer.result {
            Some(m) if (200..300).contains(&status) => SendOutcome::Sent {
                provider_message_id: format!("{}:{}", m.chat.id, m.message_id),
            },
            _ => by_status(status, headers, body),
        };
    }
    let code = answer.error_code.unwrap_or(status);
    let mut reason = shorten(
        answer
            .description
            .as_deref()
            .unwrap_or("Telegram gave no description"),
    );
    let params = answer.parameters.unwrap_or(Parameters {
        retry_after: None,
        migrate_to_chat_id: None,
    });
    if let Some(to) = params.migrate_to_chat_id {
        reason.push_str(&format!(" (the group is now chat {to})"));
    }
    match code {
        429 => SendOutcome::Transient {
            code: "429".to_owned(),
            reason,
            retry_after: params
                .retry_after
                .map(Duration::from_secs)
                .or_else(|| retry_after_header(headers)),
            ambiguous: false,
        },
        c if c >= 500 || status >= 500 => SendOutcome::Transient {
            code: c.to_string(),
            reason,
            retry_after: retry_after_header(headers),
            ambiguous: false,
        },
        401 | 404 => SendOutcome::permanent(
            "unauthorized",
            format!("{reason}: the bot token is not valid"),
        ),
        c => SendOutcome::permanent(c.to_string(), reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> HeaderMap {
        HeaderMap::new()
    }

    #[test]
    fn builds_send_message() {
        let r = request("https://api.telegram.org", "123:ABC", "-1001234", "héllo").unwrap();
        assert_eq!(r.method(), http::Method::POST);
        assert_eq!(
            r.uri().to_string(),
            "https://api.telegram.org/bot123:ABC/sendMessage"
        );
        assert_eq!(r.headers()["content-type"], "application/json");
        let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"chat_id": -1001234, "text": "héllo"})
        );
        let r = request("http://x", "t", "@mychannel", "a").unwrap();
        let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(body["chat_id"], "@mychannel");
        assert!(request("http://x", "bad token\n", "1", "a").is_err());
    }

    #[test]
    fn classification_table() {
        let table: &[(u16, &str, SendOutcome)] = &[
            (
                200,
                r#"{"ok":true,"result":{"message_id":52,"from":{"id":1,"is_bot":true,"first_name":"b"},"chat":{"id":987654321,"first_name":"A","type":"private"},"date":1700000000,"text":"hi"}}"#,
                SendOutcome::Sent { provider_message_id: "987654321:52".into() },
            ),
            (
                429,
                r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 35","parameters":{"retry_after":35}}"#,
                SendOutcome::Transient {
                    code: "429".into(),
                    reason: "Too Many Requests: retry after 35".into(),
                    retry_after: Some(Duration::from_secs(35)),
                    ambiguous: false,
                },
            ),
            (
                403,
                r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#,
                SendOutcome::permanent("403", "Forbidden: bot was blocked by the user"),
            ),
            (
                403,
                r#"{"ok":false,"error_code":403,"description":"Forbidden: user is deactivated"}"#,
                SendOutcome::permanent("403", "Forbidden: user is deactivated"),
            ),
            (
                403,
                r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was kicked from the group chat"}"#,
                SendOutcome::permanent("403", "Forbidden: bot was kicked from the group chat"),
            ),
            (
                400,
                r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
                SendOutcome::permanent("400", "Bad Request: chat not found"),
            ),
            (
                400,
                r#"{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001}}"#,
                SendOutcome::permanent(
                    "400",
                    "Bad Request: group chat was upgraded to a supergroup chat (the group is now chat -1001)",
                ),
            ),
            (
                401,
                r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#,
                SendOutcome::permanent("unauthorized", "Unauthorized: the bot token is not valid"),
            ),
            (
                404,
                r#"{"ok":false,"error_code":404,"description":"Not Found"}"#,
                SendOutcome::permanent("unauthorized", "Not Found: the bot token is not valid"),
            ),
            (
                502,
                r#"{"ok":false,"error_code":502,"description":"Bad Gateway"}"#,
                SendOutcome::transient("502", "Bad Gateway"),
            ),
            (
                502,
                "<html><body>502 Bad Gateway</body></html>",
                SendOutcome::transient("http_502", "<html><body>502 Bad Gateway</body></html>"),
            ),
        ];
        for (status, body, want) in table {
            assert_eq!(
                &classify(*status, &none(), body.as_bytes()),
                want,
                "{status} {body}"
            );
        }
    }

    #[test]
    fn retry_after_falls_back_to_the_header() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("3"),
        );
        let out = classify(
            429,
            &h,
            br#"{"ok":false,"error_code":429,"description":"Too Many Requests"}"#,
        );
        assert!(
            matches!(out, SendOutcome::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(3))
        );
    }

    #[test]
    fn ok_without_a_result_is_ambiguous() {
        let out = classify(200, &none(), br#"{"ok":true}"#);
        assert!(
            matches!(
                out,
                SendOutcome::Transient {
                    ambiguous: true,
                    ..
                }
            ),
            "{out:?}"
        );
    }
}
