//! WhatsApp Cloud API (Meta Graph API) text messages.
//!
//! `POST {base}/{version}/{phone_number_id}/messages` with
//! `Authorization: Bearer {access_token}` and JSON
//! `{"messaging_product":"whatsapp","recipient_type":"individual","to",
//! "type":"text","text":{"preview_url":false,"body"}}`; success
//! `{"messaging_product":"whatsapp","contacts":[…],"messages":[{"id":"wamid…"}]}`;
//! failure `{"error":{"message","type","code","error_subcode",
//! "error_data":{"messaging_product","details"},"fbtrace_id"}}`.
//!
//! | error `code` | outcome |
//! |---|---|
//! | 131047 (re-engagement: more than 24 hours since the customer last replied) | permanent, reason says a template is required |
//! | 131026 (undeliverable), 131051 (unsupported type), 100 (invalid parameter), 190 and 0 (access token), 10 and 200–299 (permission), other codes | permanent `<code>` |
//! | 130429 (throughput), 131056 (pair rate limit), 80007 and 4 (rate limits), 131048 (spam rate limit) | transient, `Retry-After` honoured |
//! | 131000 (something went wrong), 131016 (service unavailable), 1 and 2 (temporary API errors), any HTTP 5xx or 429 | transient |

use http::HeaderMap;
use serde::Deserialize;

use super::{
    by_status, json_body, retry_after_header, shorten, BuildError, ProviderRequest, SendOutcome,
};
use crate::ChannelType;

/// The request that sends `text` to WhatsApp user `to` (a `wa_id`).
pub fn request(
    base: &str,
    version: &str,
    phone_number_id: &str,
    access_token: &str,
    to: &str,
    text: &str,
) -> Result<ProviderRequest, BuildError> {
    json_body(
        ChannelType::WhatsappCloud,
        http::Request::post(format!("{base}/{version}/{phone_number_id}/messages")).header(
            http::header::AUTHORIZATION,
            format!("Bearer {access_token}"),
        ),
        &serde_json::json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "text",
            "text": { "preview_url": false, "body": text },
        }),
    )
}

#[derive(Deserialize)]
struct Answer {
    messages: Option<Vec<MessageRef>>,
    error: Option<GraphError>,
}

#[derive(Deserialize)]
struct MessageRef {
    id: String,
}

#[derive(Deserialize)]
struct GraphError {
    message: Option<String>,
    code: Option<i64>,
    error_subcode: Option<i64>,
    error_data: Option<ErrorData>,
}

#[derive(Deserialize)]
struct ErrorData {
    details: Option<String>,
}

/// Error codes worth retrying (rate limits and temporary failures).
const TRANSIENT: &[i64] = &[130429, 131056, 80007, 4, 131048, 131000, 131016, 1, 2];

/// What a send answer means (see the module's table).
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> SendOutcome {
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
        return by_status(status, headers, body);
    };
    if (200..300).contains(&status) {
        return match answer.messages.as_deref() {
            Some([first, ..]) if !first.id.is_empty() => SendOutcome::Sent {
                provider_message_id: first.id.clone(),
            },
            _ => by_status(status, headers, body),
        };
    }
    let Some(error) = answer.error else {
        return by_status(status, headers, body);
    };
    let Some(code) = error.code else {
        return by_status(status, headers, body);
    };
    let message = error
        .message
        .as_deref()
        .unwrap_or("WhatsApp gave no message");
    let mut reason = match error.error_data.and_then(|d| d.details) {
        Some(details) if !details.is_empty() => format!("{message}: {details}"),
        _ => message.to_owned(),
    };
    if let Some(sub) = error.error_subcode {
        reason.push_str(&format!(" (subcode {sub})"));
    }
    if code == 131047 {
        reason = format!(
            "outside the 24-hour customer service window: more than 24 hours since the \
             customer last replied, only a template message can be sent ({reason})"
        );
    }
    let reason = shorten(&reason);
    if TRANSIENT.contains(&code) || status >= 500 || status == 429 {
        SendOutcome::Transient {
            code: code.to_string(),
            reason,
            retry_after: retry_after_header(headers),
            ambiguous: false,
        }
    } else {
        SendOutcome::permanent(code.to_string(), reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn builds_a_text_message() {
        let r = request(
            "https://graph.facebook.com",
            "v21.0",
            "1065",
            "EAAG",
            "15551234567",
            "hi",
        )
        .unwrap();
        assert_eq!(r.method(), http::Method::POST);
        assert_eq!(
            r.uri().to_string(),
            "https://graph.facebook.com/v21.0/1065/messages"
        );
        assert_eq!(r.headers()["authorization"], "Bearer EAAG");
        assert_eq!(r.headers()["content-type"], "application/json");
        let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": "15551234567",
                "type": "text",
                "text": {"preview_url": false, "body": "hi"}
            })
        );
    }

    fn err(status: u16, code: i64, message: &str, details: &str) -> SendOutcome {
        let body = serde_json::json!({"error": {
            "message": message, "type": "OAuthException", "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details},
            "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam"
        }});
        classify(status, &HeaderMap::new(), body.to_string().as_bytes())
    }

    #[test]
    fn classification_table() {
        let ok = br#"{"messaging_product":"whatsapp","contacts":[{"input":"15551234567","wa_id":"15551234567"}],"messages":[{"id":"wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"}]}"#;
        assert_eq!(
            classify(200, &HeaderMap::new(), ok),
            SendOutcome::Sent {
                provider_message_id: "wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"
                    .into()
            }
        );
        let permanent = [
            (400, 131047, "Re-engagement message", "Message failed to send because more than 24 hours have passed since the customer last replied to this number."),
            (400, 131026, "Message Undeliverable.", "Unable to deliver message."),
            (400, 131051, "Unsupported message type", "Message type is not currently supported."),
            (400, 100, "(#100) Invalid parameter", "Parameter value is not valid"),
            (401, 190, "Error validating access token: Session has expired", ""),
            (401, 0, "(#0) AuthException", "We were unable to authenticate the app user"),
        ];
        for (status, code, message, details) in permanent {
            match err(status, code, message, details) {
                SendOutcome::Permanent { code: c, reason } => {
                    assert_eq!(c, code.to_string());
                    assert!(reason.contains(message), "{reason}");
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        match err(400, 131047, "Re-engagement message", "x") {
            SendOutcome::Permanent { reason, .. } => {
                assert!(reason.contains("24-hour"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let transient = [
            (400, 130429, "(#130429) Rate limit hit"),
            (
                400,
                131056,
                "(Business Account, Consumer Account) pair rate limit hit",
            ),
            (400, 80007, "Rate limit issues"),
            (400, 4, "(#4) Application request limit reached"),
            (400, 131048, "Spam rate limit hit"),
            (500, 131000, "Something went wrong"),
            (503, 131016, "Service unavailable"),
        ];
        for (status, code, message) in transient {
            assert!(
                matches!(err(status, code, message, ""), SendOutcome::Transient { code: c, ambiguous: false, .. } if c == code.to_string()),
                "{code}"
            );
        }
        // An unknown code on a 5xx is still transient.
        assert!(matches!(
            err(502, 999999, "x", ""),
            SendOutcome::Transient { .. }
        ));
    }

    #[test]
    fn retry_after_is_honoured() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("12"),
        );
        let body = br#"{"error":{"message":"(#130429) Rate limit hit","type":"OAuthException","code":130429,"error_subcode":2494055,"fbtrace_id":"A"}}"#;
        match classify(400, &h, body) {
            SendOutcome::Transient {
                retry_after,
                reason,
                ..
            } => {
                assert_eq!(retry_after, Some(Duration::from_secs(12)));
                assert!(reason.contains("subcode 2494055"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unreadable_answers_go_by_status() {
        assert!(matches!(
            classify(503, &HeaderMap::new(), b"upstream"),
            SendOutcome::Transient { .. }
        ));
        assert!(matches!(
            classify(200, &HeaderMap::new(), br#"{"messages":[]}"#),
            SendOutcome::Transient {
                ambiguous: true,
                ..
            }
        ));
        assert_eq!(
            classify(403, &HeaderMap::new(), b"{}").code(),
            Some("http_403")
        );
    }
}
