//! Twilio Programmable Messaging webhooks, SMS/MMS and WhatsApp
//! (<https://www.twilio.com/docs/messaging/guides/webhook-request>).
//!
//! **Authenticity**
//! (<https://www.twilio.com/docs/usage/webhooks/webhooks-security>): Twilio
//! signs the URL it called followed by every POST parameter, sorted by
//! name, as `name` + `value` without separators:
//! `X-Twilio-Signature: base64(HMAC-SHA1(authToken, url + params))`
//! ([`signature`]). Like Twilio's own validators, the URL is tried as given,
//! without its port when it has one, and with the scheme's default port
//! when it has none (Twilio has signed both ways). When the channel has an
//! `accountSid` credential, a request of another account (`AccountSid`) is
//! refused too.
//!
//! **Payload**: one form per call, either a contact's message or a status
//! callback of one of chatpipe's messages. A status callback has a
//! `MessageStatus` (or `SmsStatus`) other than `received`/`receiving`:
//!
//! | `MessageStatus` | item |
//! |---|---|
//! | `sent` / `delivered` / `read` | Status Sent / Delivered / Read |
//! | `undelivered`, `failed`, `canceled` | Status Failed, code `ErrorCode`, reason `ErrorMessage` else the status |
//! | `queued`, `accepted`, `scheduled`, `sending`, any other | Ignored(`MessageStatus …`) |
//!
//! A message: contact `From` (`+15551234567`, `whatsapp:+15551234567`),
//! id `MessageSid` (else `SmsSid`), display name `ProfileName` (WhatsApp),
//! no timestamp (Twilio sends none: the caller uses the arrival time). Its
//! kind comes from the first media's `MediaContentType0` when `NumMedia` >
//! 0 (`image/*` Image, `audio/*` Audio, `video/*` Video, else Document;
//! media id `MediaUrl0`, text the `Body` as caption; further media are
//! not kept), else Location when it has `Latitude`/`Longitude` (WhatsApp;
//! text `"lat,lon"` then `Label` or `Address`), else Text (`Body`).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::channel::Channel;
use crate::inbound::{
    constant_time_eq, header, location_text, non_empty, Inbound, InboundError, InboundMessage,
    MessageKind, ReportedStatus, StatusReport, WebhookRequest,
};

/// The header Twilio signs requests in.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";

/// The credential holding the account's auth token (the HMAC key).
pub const AUTH_TOKEN_CREDENTIAL: &str = "authToken";

/// The credential holding the account's SID (`AC…`).
pub const ACCOUNT_SID_CREDENTIAL: &str = "accountSid";

/// `base64(HMAC-SHA1(auth_token, url + name₁ + value₁ + name₂ + value₂ …))`
/// with the parameters sorted by name, then value: the `X-Twilio-Signature`
/// of a POST of `params` (decoded) to `url`.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(auth_token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The body's form parameters, decoded, in order.
pub fn form_params(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// Checks `X-Twilio-Signature` over `request.url` and the form body, then
/// the `AccountSid` when the channel has an `accountSid`.
///
/// Fails closed: a channel without a (non-empty) `authToken` accepts
/// nothing.
pub fn verify(channel: &Channel, request: &WebhookRequest<'_>) -> Result<(), InboundError> {
    let refuse = |reason: String| InboundError::unauthenticated(SIGNATURE_HEADER, reason);
    let token = channel
        .credential(AUTH_TOKEN_CREDENTIAL)
        .map_err(|e| refuse(e.to_string()))?;
    if token.is_empty() {
        return Err(refuse(format!(
            "channel {:?} has an empty {AUTH_TOKEN_CREDENTIAL:?} credential",
            channel.name()
        )));
    }
    let given = header(request, SIGNATURE_HEADER)?
        .ok_or_else(|| refuse(format!("{SIGNATURE_HEADER} header missing")))?;
    let params = form_params(request.body);
    let matches = url_variants(request.url).iter().any(|url| {
        constant_time_eq(
            signature(token, url, &params).as_bytes(),
            given.trim().as_bytes(),
        )
    });
    if !matches {
        return Err(refuse(format!(
            "{SIGNATURE_HEADER} does not match the URL and parameters"
        )));
    }
    if let Ok(expected) = channel.credential(ACCOUNT_SID_CREDENTIAL) {
        if let Some(account) = first(&params, "AccountSid") {
            if !expected.is_empty() && account != expected {
                return Err(refuse(format!(
                    "AccountSid {account} is not the channel's account"
                )));
            }
        }
    }
    Ok(())
}

/// The URLs Twilio may have signed for `url`: as given; without its port
/// when it has one; with the scheme's default port when it has none.
fn url_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_owned()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return variants;
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, host_port) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    // The port follows the last `:` after an IPv6 literal's `]`.
    let host_end = host_port.rfind(']').map_or(0, |i| i + 1);
    let (host, port) = match host_port[host_end..].rfind(':') {
        Some(colon) => {
            let colon = host_end + colon;
            (&host_port[..colon], Some(&host_port[colon + 1..]))
        }
        None => (host_port, None),
    };
    match port {
        Some(_) => variants.push(format!("{scheme}://{userinfo}{host}{tail}")),
        None => {
            let default = match scheme.to_ascii_lowercase().as_str() {
                "https" => Some("443"),
                "http" => Some("80"),
                _ => None,
            };
            if let Some(default) = default {
                variants.push(format!("{scheme}://{userinfo}{host}:{default}{tail}"));
            }
        }
    }
    variants
}

/// The first value of parameter `name`.
fn first<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Normalises a form body: one message, one status report, or one ignored
/// status.
pub fn parse(body: &[u8]) -> Result<Vec<Inbound>, InboundError> {
    let params = form_params(body);
    let get = |name: &str| first(&params, name);
    let sid = get("MessageSid")
        .or(get("SmsSid"))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| InboundError::malformed("MessageSid", "missing"))?;
    let status = get("MessageStatus").or(get("SmsStatus"));
    match status {
        Some(status) if !matches!(status, "received" | "receiving") => {
            Ok(vec![parse_status(sid, status, &get)])
        }
        _ => Ok(vec![Inbound::Message(parse_message(sid, &get)?)]),
    }
}

fn parse_status<'a>(sid: &str, status: &str, get: &impl Fn(&str) -> Option<&'a str>) -> Inbound {
    let reported = match status {
        "sent" => ReportedStatus::Sent,
        "delivered" => ReportedStatus::Delivered,
        "read" => ReportedStatus::Read,
        "undelivered" | "failed" | "canceled" => ReportedStatus::Failed,
        other => return Inbound::Ignored(format!("MessageStatus {other}")),
    };
    let (code, reason) = match reported {
        ReportedStatus::Failed => (
            non_empty(get("ErrorCode")),
            non_empty(get("ErrorMessage")).or(Some(status.to_owned())),
        ),
        _ => (None, None),
    };
    Inbound::Status(StatusReport {
        provider_message_id: sid.to_owned(),
        status: reported,
        at: None,
        code,
        reason,
    })
}

fn parse_message<'a>(
    sid: &str,
    get: &impl Fn(&str) -> Option<&'a str>,
) -> Result<InboundMessage, InboundError> {
    let from = get("From")
        .filter(|f| !f.is_empty())
        .ok_or_else(|| InboundError::malformed("From", "missing"))?;
    let num_media = match get("NumMedia").map(str::trim).filter(|n| !n.is_empty()) {
        None => 0,
        Some(n) => n.parse::<u32>().map_err(|e| {
            InboundError::malformed("NumMedia", format!("{n:?} is not a count: {e}"))
        })?,
    };
    let body = non_empty(get("Body"));
    let mut message = InboundMessage {
        provider_user_id: from.to_owned(),
        display_name: non_empty(get("ProfileName")),
        provider_message_id: sid.to_owned(),
        timestamp: None,
        kind: MessageKind::Text,
        text: body,
        media_id: None,
        media_type: None,
    };
    if num_media > 0 {
        let media_type = non_empty(get("MediaContentType0"));
        message.kind = media_kind(media_type.as_deref());
        message.media_id = non_empty(get("MediaUrl0"));
        message.media_type = media_type;
    } else if let (Some(latitude), Some(longitude)) = (get("Latitude"), get("Longitude")) {
        let coordinate = |name: &str, value: &str| {
            value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| InboundError::malformed(name, format!("{value:?} is not a number")))
        };
        let label = non_empty(get("Label")).or(non_empty(get("Address")));
        message.kind = MessageKind::Location;
        message.text = Some(location_text(
            coordinate("Latitude", latitude)?,
            coordinate("Longitude", longitude)?,
            label.as_deref(),
        ));
    }
    Ok(message)
}

/// The kind of a media message from its MIME type.
fn media_kind(media_type: Option<&str>) -> MessageKind {
    let top = media_type
        .and_then(|t| t.split('/').next())
        .map(|t| t.trim().to_ascii_lowercase());
    match top.as_deref() {
        Some("image") => MessageKind::Image,
        Some("audio") => MessageKind::Audio,
        Some("video") => MessageKind::Video,
        _ => MessageKind::Document,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::inbound::testing::{channel, headers};
    use crate::ChannelType;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn encode(params: &[(String, String)]) -> String {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter())
            .finish()
    }

    /// The request validator test vector of Twilio's SDKs
    /// (twilio-python `tests/unit/test_request_validator.py`, also the
    /// twilio-php documentation).
    const DOCS_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    fn docs_params() -> Vec<(String, String)> {
        pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ])
    }

    #[test]
    fn signature_matches_twilios_test_vectors() {
        assert_eq!(
            signature("12345", DOCS_URL, &docs_params()),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        // Order of the parameters does not matter.
        let mut reversed = docs_params();
        reversed.reverse();
        assert_eq!(
            signature("12345", DOCS_URL, &reversed),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        // Repeated names sort by value.
        let repeated = pairs(&[
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
        ]);
        assert_eq!(
            signature("12345", DOCS_URL, &repeated),
            "IK+Dwps556ElfBT0I3Rgjkr1wJU="
        );
        // The same URL with the default port.
        assert_eq!(
            signature(
                "12345",
                "https://mycompany.com:443/myapp.php?foo=1&bar=2",
                &docs_params()
            ),
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        );
    }

    fn tw_channel() -> Channel {
        channel(
            ChannelType::Twilio,
            &[
                ("accountSid", "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"),
                ("authToken", "12345"),
                ("from", "+15557654321"),
            ],
        )
    }

    fn check(
        channel: &Channel,
        url: &str,
        signature: Option<&str>,
        body: &str,
    ) -> Result<(), InboundError> {
        let headers = match signature {
            Some(s) => headers(&[("X-Twilio-Signature", s)]),
            None => headers(&[]),
        };
        verify(
            channel,
            &WebhookRequest {
                url,
                headers: &headers,
                body: body.as_bytes(),
            },
        )
    }

    #[test]
    fn signature_accept_and_reject() {
        let c = tw_channel();
        let body = encode(&docs_params());
        assert_eq!(
            check(&c, DOCS_URL, Some("RSOYDt4T1cUTdK1PDd93/VVr8B8="), &body),
            Ok(())
        );
        // Twilio's validators accept the URL signed with or without its port.
        assert_eq!(
            check(
                &c,
                "https://mycompany.com:1234/myapp.php?foo=1&bar=2",
                Some("RSOYDt4T1cUTdK1PDd93/VVr8B8="),
                &body
            ),
            Ok(())
        );
        assert_eq!(
            check(&c, DOCS_URL, Some("kvajT1Ptam85bY51eRf/AJRuM3w="), &body),
            Ok(())
        );
        assert_eq!(
            check(
                &c,
                "http://mycompany.com/myapp.php?foo=1&bar=2",
                Some("0ZXoZLH/DfblKGATFgpif+LLRf4="),
                &body
            ),
            Ok(())
        );

        let tampered = body.replace("1234", "9999");
        let wrong_token = channel(ChannelType::Twilio, &[("authToken", "54321")]);
        let empty_token = channel(ChannelType::Twilio, &[("authToken", "")]);
        let refused = [
            check(
                &c,
                DOCS_URL,
                Some("RSOYDt4T1cUTdK1PDd93/VVr8B8="),
                &tampered,
            ),
            check(
                &c,
                "https://mycompany.com/myapp.php?foo=1&bar=3",
                Some("RSOYDt4T1cUTdK1PDd93/VVr8B8="),
                &body,
            ),
            check(
                &wrong_token,
                DOCS_URL,
                Some("RSOYDt4T1cUTdK1PDd93/VVr8B8="),
                &body,
            ),
            check(
                &empty_token,
                DOCS_URL,
                Some(&signature("", DOCS_URL, &docs_params())),
                &body,
            ),
            check(&c, DOCS_URL, None, &body),
            check(&c, DOCS_URL, Some(""), &body),
            check(&c, DOCS_URL, Some("rsoydt4t1cutdk1pdd93/vvr8b8="), &body),
        ];
        for (i, result) in refused.into_iter().enumerate() {
            match result {
                Err(InboundError::Unauthenticated { header, .. }) => {
                    assert_eq!(header, SIGNATURE_HEADER)
                }
                other => panic!("case {i}: expected unauthenticated, got {other:?}"),
            }
        }
    }

    #[test]
    fn another_account_is_refused() {
        let url = "https://hooks.example.com/channels/tw/webhook";
        let params = pairs(&[
            ("MessageSid", "SM1"),
            ("From", "+1555"),
            ("AccountSid", "ACother"),
        ]);
        let body = encode(&params);
        let sig = signature("12345", url, &params);
        assert_eq!(
            check(&tw_channel(), url, Some(&sig), &body),
            Err(InboundError::unauthenticated(
                SIGNATURE_HEADER,
                "AccountSid ACother is not the channel's account"
            ))
        );
        let without_sid = channel(ChannelType::Twilio, &[("authToken", "12345")]);
        assert_eq!(check(&without_sid, url, Some(&sig), &body), Ok(()));
    }

    #[test]
    fn url_variants_add_or_remove_the_port() {
        assert_eq!(
            url_variants("https://a.example/p?q=1"),
            vec!["https://a.example/p?q=1", "https://a.example:443/p?q=1"]
        );
        assert_eq!(
            url_variants("http://a.example"),
            vec!["http://a.example", "http://a.example:80"]
        );
        assert_eq!(
            url_variants("https://u:p@a.example:8443/p"),
            vec!["https://u:p@a.example:8443/p", "https://u:p@a.example/p"]
        );
        assert_eq!(
            url_variants("https://[::1]:8443/p"),
            vec!["https://[::1]:8443/p", "https://[::1]/p"]
        );
        assert_eq!(
            url_variants("https://[::1]/p"),
            vec!["https://[::1]/p", "https://[::1]:443/p"]
        );
        assert_eq!(url_variants("not a url"), vec!["not a url"]);
    }

    /// An inbound SMS as Twilio posts it (the parameters of its incoming
    /// message webhook documentation).
    const SMS: &str = "ToCountry=US&ToState=CA&SmsMessageSid=SM0123456789abcdef0123456789abcdef&NumMedia=0\
        &ToCity=&FromZip=94105&SmsSid=SM0123456789abcdef0123456789abcdef&FromState=CA&SmsStatus=received\
        &FromCity=SAN+FRANCISCO&Body=Hello+there%21&FromCountry=US&To=%2B15557654321&ToZip=&NumSegments=1\
        &MessageSid=SM0123456789abcdef0123456789abcdef&AccountSid=ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX\
        &From=%2B15551234567&ApiVersion=2010-04-01";

    #[test]
    fn sms_message() {
        assert_eq!(
            parse(SMS.as_bytes()),
            Ok(vec![Inbound::Message(InboundMessage {
                provider_user_id: "+15551234567".into(),
                display_name: None,
                provider_message_id: "SM0123456789abcdef0123456789abcdef".into(),
                timestamp: None,
                kind: MessageKind::Text,
                text: Some("Hello there!".into()),
                media_id: None,
                media_type: None,
            })])
        );
    }

    fn message(params: &[(&str, &str)]) -> InboundMessage {
        let body = encode(&pairs(params));
        match parse(body.as_bytes()).as_deref() {
            Ok([Inbound::Message(m)]) => m.clone(),
            other => panic!("expected one message, got {other:?}"),
        }
    }

    #[test]
    fn whatsapp_media_and_location() {
        let base = [
            ("MessageSid", "MM1"),
            ("From", "whatsapp:+15551234567"),
            ("To", "whatsapp:+14155238886"),
            ("ProfileName", "Ann"),
            ("WaId", "15551234567"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut p = base.to_vec();
            p.extend_from_slice(extra);
            message(&p)
        };
        let img = "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1";
        let cases = [
            (
                vec![
                    ("NumMedia", "1"),
                    ("MediaContentType0", "image/jpeg"),
                    ("MediaUrl0", img),
                    ("Body", "look"),
                ],
                (
                    MessageKind::Image,
                    Some("look"),
                    Some(img),
                    Some("image/jpeg"),
                ),
            ),
            (
                vec![
                    ("NumMedia", "1"),
                    ("MediaContentType0", "audio/ogg"),
                    ("MediaUrl0", img),
                    ("Body", ""),
                ],
                (MessageKind::Audio, None, Some(img), Some("audio/ogg")),
            ),
            (
                vec![
                    ("NumMedia", "2"),
                    ("MediaContentType0", "video/mp4"),
                    ("MediaUrl0", img),
                    ("MediaContentType1", "image/png"),
                    ("MediaUrl1", "u1"),
                ],
                (MessageKind::Video, None, Some(img), Some("video/mp4")),
            ),
            (
                vec![
                    ("NumMedia", "1"),
                    ("MediaContentType0", "application/pdf"),
                    ("MediaUrl0", img),
                ],
                (
                    MessageKind::Document,
                    None,
                    Some(img),
                    Some("application/pdf"),
                ),
            ),
            (
                vec![
                    ("NumMedia", "1"),
                    ("MediaContentType0", "text/vcard"),
                    ("MediaUrl0", img),
                ],
                (MessageKind::Document, None, Some(img), Some("text/vcard")),
            ),
            (
                vec![
                    ("NumMedia", "0"),
                    ("Latitude", "37.7749"),
                    ("Longitude", "-122.4194"),
                    ("Label", "Office"),
                    ("MessageType", "location"),
                ],
                (
                    MessageKind::Location,
                    Some("37.7749,-122.4194 Office"),
                    None,
                    None,
                ),
            ),
            (
                vec![("NumMedia", "0"), ("Body", "hi"), ("MessageType", "text")],
                (MessageKind::Text, Some("hi"), None, None),
            ),
        ];
        for (extra, expected) in cases {
            let m = with(&extra);
            assert_eq!(
                (
                    m.kind,
                    m.text.as_deref(),
                    m.media_id.as_deref(),
                    m.media_type.as_deref()
                ),
                expected,
                "{extra:?}"
            );
            assert_eq!(m.provider_user_id, "whatsapp:+15551234567");
            assert_eq!(m.display_name.as_deref(), Some("Ann"));
        }
    }

    fn status(params: &[(&str, &str)]) -> Inbound {
        let body = encode(&pairs(params));
        match parse(body.as_bytes()) {
            Ok(mut items) if items.len() == 1 => items.remove(0),
            other => panic!("expected one item, got {other:?}"),
        }
    }

    #[test]
    fn status_callbacks() {
        let report = |status, code: Option<&str>, reason: Option<&str>| {
            Inbound::Status(StatusReport {
                provider_message_id: "SM9".into(),
                status,
                at: None,
                code: code.map(Into::into),
                reason: reason.map(Into::into),
            })
        };
        let callback = |s: &'static str| {
            vec![
                ("SmsSid", "SM9"),
                ("SmsStatus", s),
                ("MessageStatus", s),
                ("To", "+15551234567"),
                ("MessageSid", "SM9"),
                ("AccountSid", "AC1"),
                ("From", "+15557654321"),
                ("ApiVersion", "2010-04-01"),
            ]
        };
        assert_eq!(
            status(&callback("sent")),
            report(ReportedStatus::Sent, None, None)
        );
        assert_eq!(
            status(&callback("delivered")),
            report(ReportedStatus::Delivered, None, None)
        );
        assert_eq!(
            status(&callback("read")),
            report(ReportedStatus::Read, None, None)
        );
        let mut undelivered = callback("undelivered");
        undelivered.push(("ErrorCode", "30003"));
        assert_eq!(
            status(&undelivered),
            report(ReportedStatus::Failed, Some("30003"), Some("undelivered"))
        );
        let mut failed = callback("failed");
        failed.extend([("ErrorCode", "30007"), ("ErrorMessage", "Message filtered")]);
        assert_eq!(
            status(&failed),
            report(
                ReportedStatus::Failed,
                Some("30007"),
                Some("Message filtered")
            )
        );
        assert_eq!(
            status(&callback("canceled")),
            report(ReportedStatus::Failed, None, Some("canceled"))
        );
        for s in [
            "queued",
            "accepted",
            "scheduled",
            "sending",
            "partially_delivered",
        ] {
            assert_eq!(
                status(&callback(s)),
                Inbound::Ignored(format!("MessageStatus {s}"))
            );
        }
        // Only the legacy name.
        assert_eq!(
            status(&[("SmsSid", "SM9"), ("SmsStatus", "delivered")]),
            report(ReportedStatus::Delivered, None, None)
        );
    }

    #[test]
    fn malformed_forms_name_the_field() {
        assert_eq!(
            parse(b""),
            Err(InboundError::malformed("MessageSid", "missing"))
        );
        assert_eq!(
            parse(b"MessageSid=SM1&Body=hi"),
            Err(InboundError::malformed("From", "missing"))
        );
        assert!(matches!(
            parse(b"MessageSid=SM1&From=%2B1&NumMedia=lots"),
            Err(InboundError::Malformed { field, .. }) if field == "NumMedia"
        ));
        assert!(matches!(
            parse(b"MessageSid=SM1&From=%2B1&Latitude=north&Longitude=1"),
            Err(InboundError::Malformed { field, .. }) if field == "Latitude"
        ));
    }

    #[test]
    fn verify_and_parse_round_trip() {
        let c = tw_channel();
        let url = "https://hooks.example.com/channels/tw/webhook";
        let params = form_params(SMS.as_bytes());
        let h = headers(&[("x-twilio-signature", &signature("12345", url, &params))]);
        let request = WebhookRequest {
            url,
            headers: &h,
            body: SMS.as_bytes(),
        };
        let items = crate::inbound::verify_and_parse(&c, &request).expect("accepted");
        assert!(
            matches!(items.as_slice(), [Inbound::Message(m)] if m.text.as_deref() == Some("Hello there!"))
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&body);
        }

        #[test]
        fn never_panics_on_forms(params in prop::collection::vec(
            (prop::sample::select(vec!["MessageSid", "SmsSid", "From", "Body", "NumMedia", "MediaUrl0",
                "MediaContentType0", "MessageStatus", "SmsStatus", "ErrorCode", "Latitude", "Longitude", "x"]),
             ".{0,12}"),
            0..10,
        )) {
            let params: Vec<(String, String)> = params.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let _ = parse(encode(&params).as_bytes());
        }

        /// A signature over the form as sent verifies; changing any value
        /// or the URL does not.
        #[test]
        fn signature_round_trip(
            token in "[0-9a-f]{32}",
            path in "[a-z/]{0,12}",
            params in prop::collection::vec(("[A-Za-z0-9]{1,10}", ".{0,16}"), 1..8),
            change in any::<prop::sample::Index>(),
        ) {
            let c = channel(ChannelType::Twilio, &[("authToken", &token)]);
            let url = format!("https://hooks.example.com/{path}");
            let params: Vec<(String, String)> = params;
            let body = encode(&params);
            let sig = signature(&token, &url, &params);
            prop_assert_eq!(check(&c, &url, Some(&sig), &body), Ok(()));
            let mut changed = params.clone();
            let i = change.index(changed.len());
            changed[i].1.push('!');
            prop_assert!(check(&c, &url, Some(&sig), &encode(&changed)).is_err());
            let other_url = format!("{url}x");
            prop_assert!(check(&c, &other_url, Some(&sig), &body).is_err());
        }
    }
}
