//! Twilio Programmable Messaging (SMS and WhatsApp): create a Message.
//!
//! `POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json` with HTTP
//! basic auth `AccountSid:AuthToken` and the form `To`, `From`, `Body`;
//! success `201 {"sid":"SM…","status":"queued",…}`; failure
//! `{"code":21211,"message":"…","more_info":"https://www.twilio.com/docs/errors/21211","status":400}`.
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx with `sid` | sent, id `sid` |
//! | 429, code 20429 | transient, `Retry-After` honoured |
//! | 5xx (e.g. 20500, 20503) | transient |
//! | 21211 (invalid To), 21614 (not a mobile number), 21610 (unsubscribed: STOP), 21408 (region not enabled), 63016 (WhatsApp: outside the 24-hour window), 20003 (authentication), other 4xx | permanent `<code>` |

use base64::Engine;
use http::HeaderMap;
use serde::Deserialize;

use super::{
    by_status, finish, retry_after_header, shorten, BuildError, ProviderRequest, SendOutcome,
};
use crate::ChannelType;

/// A Twilio account's credentials and sender.
#[derive(Clone, Copy)]
pub struct Account<'a> {
    /// `AC…`.
    pub sid: &'a str,
    /// The auth token.
    pub auth_token: &'a str,
    /// The sender: a phone number, a messaging service or
    /// `whatsapp:+1…`.
    pub from: &'a str,
}

impl std::fmt::Debug for Account<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("sid", &self.sid)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

/// The `From` of a message to `to`: `from`, with a `whatsapp:` prefix when
/// `to` has one and `from` does not.
pub fn from_for(to: &str, from: &str) -> String {
    if to.starts_with("whatsapp:") && !from.starts_with("whatsapp:") {
        format!("whatsapp:{from}")
    } else {
        from.to_owned()
    }
}

/// The request that sends `text` to `to` (`+1555…` or `whatsapp:+1555…`).
pub fn request(
    base: &str,
    account: &Account<'_>,
    to: &str,
    text: &str,
) -> Result<ProviderRequest, BuildError> {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("To", to)
        .append_pair("From", &from_for(to, account.from))
        .append_pair("Body", text)
        .finish();
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", account.sid, account.auth_token));
    finish(
        ChannelType::Twilio,
        http::Request::post(format!(
            "{base}/2010-04-01/Accounts/{}/Messages.json",
            account.sid
        ))
        .header(http::header::AUTHORIZATION, format!("Basic {basic}"))
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        ),
        body.into_bytes(),
    )
}

#[derive(Deserialize)]
struct Answer {
    sid: Option<String>,
    code: Option<i64>,
    message: Option<String>,
    more_info: Option<String>,
}

/// What a create-Message answer means (see the module's table).
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> SendOutcome {
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
        return by_status(status, headers, body);
    };
    if (200..300).contains(&status) {
        return match answer.sid {
            Some(sid) if !sid.is_empty() => SendOutcome::Sent {
                provider_message_id: sid,
            },
            _ => by_status(status, headers, body),
        };
    }
    let Some(code) = answer.code else {
        return by_status(status, headers, body);
    };
    let mut reason = answer
        .message
        .unwrap_or_else(|| "Twilio gave no message".to_owned());
    if code == 63016 {
        reason = format!(
            "outside WhatsApp's 24-hour customer service window, only a template message can be sent ({reason})"
        );
    }
    if let Some(info) = answer.more_info {
        reason.push_str(&format!(" ({info})"));
    }
    let reason = shorten(&reason);
    if status == 429 || code == 20429 || status >= 500 {
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

    const ACCOUNT: Account<'static> = Account {
        sid: "AC123",
        auth_token: "tok",
        from: "+15550001111",
    };

    #[test]
    fn builds_a_form_with_basic_auth() {
        let r = request(
            "https://api.twilio.com",
            &ACCOUNT,
            "+15551234567",
            "a & b=ü",
        )
        .unwrap();
        assert_eq!(r.method(), http::Method::POST);
        assert_eq!(
            r.uri().to_string(),
            "https://api.twilio.com/2010-04-01/Accounts/AC123/Messages.json"
        );
        // base64("AC123:tok")
        assert_eq!(r.headers()["authorization"], "Basic QUMxMjM6dG9r");
        assert_eq!(
            r.headers()["content-type"],
            "application/x-www-form-urlencoded"
        );
        let form: Vec<(String, String)> = form_urlencoded::parse(r.body()).into_owned().collect();
        assert_eq!(
            form,
            vec![
                ("To".to_owned(), "+15551234567".to_owned()),
                ("From".to_owned(), "+15550001111".to_owned()),
                ("Body".to_owned(), "a & b=ü".to_owned()),
            ]
        );
    }

    #[test]
    fn whatsapp_recipients_get_a_whatsapp_sender() {
        assert_eq!(from_for("whatsapp:+1555", "+1666"), "whatsapp:+1666");
        assert_eq!(
            from_for("whatsapp:+1555", "whatsapp:+1666"),
            "whatsapp:+1666"
        );
        assert_eq!(from_for("+1555", "+1666"), "+1666");
        assert_eq!(from_for("+1555", "MG0123"), "MG0123");
    }

    #[test]
    fn classification_table() {
        let h = HeaderMap::new();
        let ok = br#"{"account_sid":"AC123","api_version":"2010-04-01","body":"hi","date_created":"Thu, 24 Aug 2023 05:01:45 +0000","direction":"outbound-api","error_code":null,"error_message":null,"from":"+15550001111","num_segments":"1","price":null,"sid":"SM1234567890abcdef1234567890abcdef","status":"queued","to":"+15551234567","uri":"/2010-04-01/Accounts/AC123/Messages/SM1234567890abcdef1234567890abcdef.json"}"#;
        assert_eq!(
            classify(201, &h, ok),
            SendOutcome::Sent {
                provider_message_id: "SM1234567890abcdef1234567890abcdef".into()
            }
        );
        let e = |status: u16, code: i64, message: &str| {
            let body = serde_json::json!({"code": code, "message": message,
                "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status});
            classify(status, &HeaderMap::new(), body.to_string().as_bytes())
        };
        for (status, code, message) in [
            (400, 21211, "The 'To' number +1555 is not a valid phone number."),
            (400, 21614, "'To' number is not a valid mobile number"),
            (400, 21610, "Attempt to send to unsubscribed recipient"),
            (400, 21408, "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: +37"),
            (400, 63016, "Failed to send freeform message because you are outside the allowed window."),
            (401, 20003, "Authenticate"),
            (404, 20404, "The requested resource was not found"),
        ] {
            match e(status, code, message) {
                SendOutcome::Permanent { code: c, reason } => {
                    assert_eq!(c, code.to_string());
                    assert!(reason.contains(message), "{reason}");
                    assert!(reason.contains("twilio.com/docs/errors"), "{reason}");
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        match e(400, 63016, "x") {
            SendOutcome::Permanent { reason, .. } => {
                assert!(reason.contains("24-hour"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        for (status, code) in [(429, 20429), (500, 20500), (503, 20503)] {
            assert!(
                matches!(
                    e(status, code, "x"),
                    SendOutcome::Transient {
                        ambiguous: false,
                        ..
                    }
                ),
                "{code}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("2"),
        );
        let body = br#"{"code":20429,"message":"Too Many Requests","more_info":"https://www.twilio.com/docs/errors/20429","status":429}"#;
        assert!(matches!(
            classify(429, &h, body),
            SendOutcome::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(2)
        ));
    }
}
