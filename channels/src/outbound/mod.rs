//! Sending a message through a channel, and what the provider's answer
//! means for the delivery.
//!
//! Each provider file holds two pure functions: `request` builds the HTTP
//! request of a text message (method, URL, headers, body) and `classify`
//! reads the provider's answer (status, headers, body) into a
//! [`SendOutcome`]. [`Sender`] is the only I/O: one HTTP client that
//! executes a built request and tells a failure before the request was
//! written (safe to retry) from one after (the provider may have accepted
//! the message: `ambiguous`).
//!
//! Secrets: the Telegram bot token is part of the URL, so no error or log
//! line here ever shows a request URL.

use std::time::Duration;

use http::HeaderMap;

use crate::channel::{Channel, MissingCredential};
use crate::ChannelType;

pub mod telegram;
pub mod twilio;
pub mod whatsapp;

/// The outcome of one provider call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Accepted; the provider's id of the message (Telegram
    /// `{chat_id}:{message_id}`, WhatsApp `wamid…`, Twilio `SM…`), which
    /// its status reports name.
    Sent {
        /// The provider's message id.
        provider_message_id: String,
    },
    /// Failed, worth retrying (429, 5xx, network, timeout…).
    Transient {
        /// Provider error code, or `http_<status>`, `network`, `timeout`.
        code: String,
        /// Its explanation.
        reason: String,
        /// How long the provider asked to wait (`Retry-After`,
        /// Telegram `parameters.retry_after`).
        retry_after: Option<Duration>,
        /// Whether the provider may have accepted the message although
        /// the call failed (a timeout or a connection cut after the
        /// request was sent): a retry may then send it twice.
        ambiguous: bool,
    },
    /// Failed for good (blocked by the user, outside WhatsApp's 24-hour
    /// window, invalid number, bad credentials…).
    Permanent {
        /// Provider error code.
        code: String,
        /// Its explanation.
        reason: String,
    },
}

impl SendOutcome {
    /// A transient failure that the provider did not accept (no retry-after).
    pub fn transient(code: impl Into<String>, reason: impl Into<String>) -> SendOutcome {
        SendOutcome::Transient {
            code: code.into(),
            reason: reason.into(),
            retry_after: None,
            ambiguous: false,
        }
    }

    /// A permanent failure.
    pub fn permanent(code: impl Into<String>, reason: impl Into<String>) -> SendOutcome {
        SendOutcome::Permanent {
            code: code.into(),
            reason: reason.into(),
        }
    }

    /// `sent`, `transient` or `permanent` (a metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            SendOutcome::Sent { .. } => "sent",
            SendOutcome::Transient { .. } => "transient",
            SendOutcome::Permanent { .. } => "permanent",
        }
    }

    /// The failure's code (`None` when sent).
    pub fn code(&self) -> Option<&str> {
        match self {
            SendOutcome::Sent { .. } => None,
            SendOutcome::Transient { code, .. } | SendOutcome::Permanent { code, .. } => Some(code),
        }
    }
}

/// A provider call, built and not sent yet: method, URL, headers and body.
pub type ProviderRequest = http::Request<Vec<u8>>;

/// Why a request could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The channel lacks a credential the call needs.
    #[error(transparent)]
    MissingCredential(#[from] MissingCredential),
    /// The parts do not make a valid HTTP request (e.g. a credential with
    /// characters a URL or header cannot hold). Never shows the URL.
    #[error("cannot build the {provider} request: {reason}")]
    Invalid {
        /// The provider.
        provider: ChannelType,
        /// What is wrong.
        reason: String,
    },
}

/// The request that sends `text` to `to` (the contact's
/// `provider_user_id`) through `channel`; `whatsapp_api_version` is the
/// Graph API version of WhatsApp Cloud calls (`v21.0`).
pub fn build_request(
    channel: &Channel,
    to: &str,
    text: &str,
    whatsapp_api_version: &str,
) -> Result<ProviderRequest, BuildError> {
    let base = channel.decl.api_base_url();
    match channel.kind() {
        ChannelType::Telegram => {
            telegram::request(&base, channel.credential("botToken")?, to, text)
        }
        ChannelType::WhatsappCloud => whatsapp::request(
            &base,
            whatsapp_api_version,
            channel.credential("phoneNumberId")?,
            channel.credential("accessToken")?,
            to,
            text,
        ),
        ChannelType::Twilio => twilio::request(
            &base,
            &twilio::Account {
                sid: channel.credential("accountSid")?,
                auth_token: channel.credential("authToken")?,
                from: channel.credential("from")?,
            },
            to,
            text,
        ),
    }
}

/// What the answer of provider `kind` (status, headers, body) means.
pub fn classify(kind: ChannelType, status: u16, headers: &HeaderMap, body: &[u8]) -> SendOutcome {
    match kind {
        ChannelType::Telegram => telegram::classify(status, headers, body),
        ChannelType::WhatsappCloud => whatsapp::classify(status, headers, body),
        ChannelType::Twilio => twilio::classify(status, headers, body),
    }
}

/// A transport failure of a provider call, as the HTTP client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    /// No connection was made (refused, DNS, TLS handshake, connect
    /// timeout): the request was never written.
    Connect,
    /// The call timed out after the connection was made.
    Timeout,
    /// The connection failed after it was made (reset, closed mid-answer).
    Other,
}

/// What a transport failure means: before the request was written it is a
/// plain transient failure; after, the provider may have accepted the
/// message (`ambiguous`).
pub fn classify_transport(failure: TransportFailure, detail: &str) -> SendOutcome {
    let (code, ambiguous) = match failure {
        TransportFailure::Connect => ("network", false),
        TransportFailure::Timeout => ("timeout", true),
        TransportFailure::Other => ("network", true),
    };
    SendOutcome::Transient {
        code: code.to_owned(),
        reason: shorten(detail),
        retry_after: None,
        ambiguous,
    }
}

/// `Retry-After` in seconds (the form the three providers use), if any.
pub fn retry_after_header(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The outcome of an answer whose body this module does not understand:
/// 429 and 5xx are transient, other statuses permanent (`http_<status>`).
pub(crate) fn by_status(status: u16, headers: &HeaderMap, body: &[u8]) -> SendOutcome {
    let code = format!("http_{status}");
    let reason = if body.is_empty() {
        format!("HTTP {status}")
    } else {
        shorten(&String::from_utf8_lossy(body))
    };
    if status == 429 || status >= 500 {
        SendOutcome::Transient {
            code,
            reason,
            retry_after: retry_after_header(headers),
            ambiguous: false,
        }
    } else if (200..300).contains(&status) {
        // Accepted, but without the id we need: the message may have gone.
        SendOutcome::Transient {
            code: "unreadable_answer".to_owned(),
            reason: format!("HTTP {status} without a message id: {reason}"),
            retry_after: None,
            ambiguous: true,
        }
    } else {
        SendOutcome::Permanent { code, reason }
    }
}

/// At most 500 characters of a provider's explanation.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 500;
    let s = s.trim();
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

pub(crate) fn json_body(
    provider: ChannelType,
    builder: http::request::Builder,
    body: &serde_json::Value,
) -> Result<ProviderRequest, BuildError> {
    let bytes = serde_json::to_vec(body).map_err(|e| BuildError::Invalid {
        provider,
        reason: e.to_string(),
    })?;
    finish(
        provider,
        builder.header(http::header::CONTENT_TYPE, "application/json"),
        bytes,
    )
}

pub(crate) fn finish(
    provider: ChannelType,
    builder: http::request::Builder,
    body: Vec<u8>,
) -> Result<ProviderRequest, BuildError> {
    builder.body(body).map_err(|e| BuildError::Invalid {
        provider,
        // http's errors name the kind of part at fault, not its value.
        reason: e.to_string(),
    })
}

/// Calls providers: one HTTP client (connection pool, TLS with the system
/// and webpki roots, no redirects) shared by every channel.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    whatsapp_api_version: String,
}

impl Sender {
    /// A sender whose calls time out after `request_timeout`, calling
    /// WhatsApp Cloud's Graph API version `whatsapp_api_version` (`v21.0`).
    pub fn new(
        request_timeout: Duration,
        whatsapp_api_version: impl Into<String>,
    ) -> Result<Sender, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("chatpipe-delivery/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Sender {
            client,
            whatsapp_api_version: whatsapp_api_version.into(),
        })
    }

    /// The Graph API version of WhatsApp Cloud calls.
    pub fn whatsapp_api_version(&self) -> &str {
        &self.whatsapp_api_version
    }

    /// Sends `text` to `to` through `channel` and classifies the answer. A
    /// request that cannot be built is a permanent failure
    /// (`missing_credential`, `invalid_request`).
    pub async fn send(&self, channel: &Channel, to: &str, text: &str) -> SendOutcome {
        match build_request(channel, to, text, &self.whatsapp_api_version) {
            Ok(request) => self.execute(channel.kind(), request).await,
            Err(e @ BuildError::MissingCredential(_)) => {
                SendOutcome::permanent("missing_credential", e.to_string())
            }
            Err(e @ BuildError::Invalid { .. }) => {
                SendOutcome::permanent("invalid_request", e.to_string())
            }
        }
    }

    /// Executes a built request of provider `kind` and classifies the
    /// answer.
    pub async fn execute(&self, kind: ChannelType, request: ProviderRequest) -> SendOutcome {
        let request = match reqwest::Request::try_from(request) {
            Ok(r) => r,
            Err(e) => {
                return SendOutcome::permanent("invalid_request", e.without_url().to_string())
            }
        };
        let response = match self.client.execute(request).await {
            Ok(r) => r,
            Err(e) => return classify_transport(transport_failure(&e), &describe(e)),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        match response.bytes().await {
            Ok(body) => classify(kind, status, &headers, &body),
            // The answer's head arrived: an error status stands on its
            // own; a success whose body was cut leaves the id unknown.
            Err(_) if !(200..300).contains(&status) => classify(kind, status, &headers, &[]),
            Err(e) => classify_transport(transport_failure(&e), &describe(e)),
        }
    }
}

fn transport_failure(e: &reqwest::Error) -> TransportFailure {
    if e.is_connect() {
        TransportFailure::Connect
    } else if e.is_timeout() {
        TransportFailure::Timeout
    } else {
        TransportFailure::Other
    }
}

/// The error and its causes, without the URL (it may hold a token).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpipe_settings::channels::ChannelDecl;
    use proptest::prelude::*;

    #[test]
    fn transport_failures_before_the_request_are_not_ambiguous() {
        assert_eq!(
            classify_transport(TransportFailure::Connect, "connection refused"),
            SendOutcome::Transient {
                code: "network".into(),
                reason: "connection refused".into(),
                retry_after: None,
                ambiguous: false
            }
        );
        for f in [TransportFailure::Timeout, TransportFailure::Other] {
            match classify_transport(f, "x") {
                SendOutcome::Transient { ambiguous, .. } => assert!(ambiguous, "{f:?}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn unknown_answers_go_by_status() {
        let h = HeaderMap::new();
        assert!(matches!(
            by_status(502, &h, b"<html>bad gateway</html>"),
            SendOutcome::Transient {
                ambiguous: false,
                ..
            }
        ));
        assert_eq!(by_status(418, &h, b"").code(), Some("http_418"));
        assert!(matches!(
            by_status(200, &h, b"{}"),
            SendOutcome::Transient {
                ambiguous: true,
                ..
            }
        ));
        let mut h = HeaderMap::new();
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static(" 7 "),
        );
        assert_eq!(retry_after_header(&h), Some(Duration::from_secs(7)));
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after_header(&h), None);
    }

    #[test]
    fn shorten_cuts_on_a_character_boundary() {
        let long = "é".repeat(600);
        let s = shorten(&long);
        assert_eq!(s.chars().count(), 501);
        assert_eq!(shorten(" ok "), "ok");
    }

    #[test]
    fn build_request_names_a_missing_credential() {
        let channel = Channel {
            decl: ChannelDecl {
                name: "tg".into(),
                kind: ChannelType::Telegram,
                api_base_url: None,
                webhook_url: None,
            },
            credentials: Default::default(),
        };
        let err = build_request(&channel, "1", "hi", "v21.0").unwrap_err();
        assert!(err.to_string().contains("botToken"), "{err}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_plain_transient_failure() {
        // Bind then drop: nothing listens on that port any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let channel = Channel {
            decl: ChannelDecl {
                name: "tg".into(),
                kind: ChannelType::Telegram,
                api_base_url: Some(format!("http://127.0.0.1:{port}")),
                webhook_url: None,
            },
            credentials: [("botToken".to_owned(), "123:SECRET".to_owned())].into(),
        };
        let sender = Sender::new(Duration::from_secs(2), "v21.0").unwrap();
        match sender.send(&channel, "42", "hi").await {
            SendOutcome::Transient {
                code,
                reason,
                ambiguous,
                ..
            } => {
                assert_eq!(code, "network");
                assert!(!ambiguous);
                assert!(!reason.contains("SECRET"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_call_that_times_out_after_connecting_is_ambiguous() {
        // Accepts connections and reads, never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let channel = Channel {
            decl: ChannelDecl {
                name: "wa".into(),
                kind: ChannelType::WhatsappCloud,
                api_base_url: Some(format!("http://{addr}")),
                webhook_url: None,
            },
            credentials: [
                ("accessToken".to_owned(), "SECRET".to_owned()),
                ("phoneNumberId".to_owned(), "1065".to_owned()),
            ]
            .into(),
        };
        let sender = Sender::new(Duration::from_millis(300), "v21.0").unwrap();
        match sender.send(&channel, "1555", "hi").await {
            SendOutcome::Transient {
                code, ambiguous, ..
            } => {
                assert_eq!(code, "timeout");
                assert!(ambiguous);
            }
            other => panic!("{other:?}"),
        }
        server.abort();
    }

    proptest! {
        /// No answer makes a classifier panic, and only a 2xx is ever sent.
        #[test]
        fn classifiers_take_any_answer(status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..200)) {
            for kind in ChannelType::ALL {
                let out = classify(kind, status, &HeaderMap::new(), &body);
                let sent = matches!(out, SendOutcome::Sent { .. });
                if sent {
                    prop_assert!((200..300).contains(&status));
                }
            }
        }

        /// A 5xx is never a permanent failure, whatever its body says.
        #[test]
        fn server_errors_are_transient(status in 500u16..600, code in 0i64..200_000, pick in 0usize..3) {
            let body = match pick {
                0 => serde_json::json!({"ok": false, "error_code": status, "description": "x"}),
                1 => serde_json::json!({"error": {"message": "x", "code": code}}),
                _ => serde_json::json!({"code": code, "message": "x", "status": status}),
            };
            let out = classify(ChannelType::ALL[pick], status, &HeaderMap::new(), body.to_string().as_bytes());
            let transient = matches!(out, SendOutcome::Transient { .. });
            prop_assert!(transient, "{:?}", out);
        }
    }
}
