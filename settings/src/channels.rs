//! The messenger channels a pipeline declares (`spec.channels`), as the
//! binaries that talk to them read them: ingest (inbound webhooks,
//! `POST /channels/{name}/webhook`), chatpipe-delivery (outbound calls)
//! and the api (`GET /channels`).
//!
//! What is not secret travels in one variable, [`CHANNELS_ENV`], as JSON
//! (`[{"name":"support-tg","type":"telegram","apiBaseUrl":"…"}]`); each
//! credential in a variable of its own, [`credential_env`]
//! (`CHATPIPE_CHANNEL_SUPPORT_TG_BOT_TOKEN`), which deployments set from
//! the channel's Secret and never write to a ConfigMap.

use serde::{Deserialize, Serialize};

/// The variable that holds the declared channels, as JSON.
pub const CHANNELS_ENV: &str = "CHATPIPE_CHANNELS";

/// The providers chatpipe speaks to.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "camelCase")]
pub enum ChannelType {
    /// Telegram Bot API.
    Telegram,
    /// WhatsApp Business Cloud API (Meta Graph API).
    #[value(name = "whatsappCloud")]
    WhatsappCloud,
    /// Twilio Programmable Messaging (SMS and WhatsApp).
    Twilio,
}

/// Which binary reads a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CredentialReader {
    /// Ingest verifies inbound webhooks.
    Ingest,
    /// chatpipe-delivery calls the provider.
    Delivery,
}

impl ChannelType {
    /// Every type.
    pub const ALL: [ChannelType; 3] = [
        ChannelType::Telegram,
        ChannelType::WhatsappCloud,
        ChannelType::Twilio,
    ];

    /// As spelled in the CRD: `telegram`, `whatsappCloud`, `twilio`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelType::Telegram => "telegram",
            ChannelType::WhatsappCloud => "whatsappCloud",
            ChannelType::Twilio => "twilio",
        }
    }

    /// Parses the CRD spelling.
    pub fn parse(s: &str) -> Option<ChannelType> {
        ChannelType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The provider's address when `apiBaseUrl` is not set.
    pub fn default_api_base_url(self) -> &'static str {
        match self {
            ChannelType::Telegram => "https://api.telegram.org",
            ChannelType::WhatsappCloud => "https://graph.facebook.com",
            ChannelType::Twilio => "https://api.twilio.com",
        }
    }

    /// The keys of the channel's Secret (`credentialsSecretRef`), each with
    /// the binaries that read it.
    pub fn secret_keys(self) -> &'static [(&'static str, &'static [CredentialReader])] {
        use CredentialReader::*;
        match self {
            ChannelType::Telegram => &[("botToken", &[Delivery]), ("secretToken", &[Ingest])],
            ChannelType::WhatsappCloud => &[
                ("accessToken", &[Delivery]),
                ("appSecret", &[Ingest]),
                ("verifyToken", &[Ingest]),
                ("phoneNumberId", &[Ingest, Delivery]),
            ],
            ChannelType::Twilio => &[
                ("accountSid", &[Ingest, Delivery]),
                ("authToken", &[Ingest, Delivery]),
                ("from", &[Delivery]),
            ],
        }
    }

    /// The keys `reader` needs.
    pub fn keys_for(self, reader: CredentialReader) -> Vec<&'static str> {
        self.secret_keys()
            .iter()
            .filter(|(_, readers)| readers.contains(&reader))
            .map(|(k, _)| *k)
            .collect()
    }
}

impl std::fmt::Display for ChannelType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One declared channel, without its credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChannelDecl {
    /// Unique within the pipeline; a DNS label (it is part of URLs and
    /// variable names).
    pub name: String,
    /// The provider.
    #[serde(rename = "type")]
    pub kind: ChannelType,
    /// The provider's address; default [`ChannelType::default_api_base_url`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base_url: Option<String>,
    /// The exact public URL the provider calls for this channel's
    /// webhook, when ingest sits behind a proxy that rewrites it (Twilio
    /// signs the URL it called). Default: rebuilt from the request
    /// (`X-Forwarded-Proto`, `X-Forwarded-Host` or `Host`, and the path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

impl ChannelDecl {
    /// `api_base_url`, or the provider's default, without a trailing `/`.
    pub fn api_base_url(&self) -> String {
        self.api_base_url
            .as_deref()
            .unwrap_or(self.kind.default_api_base_url())
            .trim_end_matches('/')
            .to_owned()
    }
}

/// The declared channels (the value of [`CHANNELS_ENV`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Channels(pub Vec<ChannelDecl>);

impl Channels {
    /// The channel called `name`.
    pub fn get(&self, name: &str) -> Option<&ChannelDecl> {
        self.0.iter().find(|c| c.name == name)
    }

    /// Whether none is declared.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl crate::env::EnvValue for Channels {
    fn env_value(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "[]".to_owned())
    }
}

/// Why a channel name is not acceptable, if it is not: a DNS label
/// (1–63 of `a-z`, `0-9`, `-`, starting and ending with a letter or digit).
pub fn check_channel_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if name.is_empty()
        || name.len() > 63
        || !ok_chars
        || !ends(name.as_bytes().first())
        || !ends(name.as_bytes().last())
    {
        return Err(format!(
            "channel name {name:?} must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Parses [`CHANNELS_ENV`]: a JSON array of channels with valid, unique
/// names and `http(s)` addresses. Empty text is no channel.
pub fn parse_channels(s: &str) -> Result<Channels, String> {
    if s.trim().is_empty() {
        return Ok(Channels::default());
    }
    let list: Vec<ChannelDecl> = serde_json::from_str(s)
        .map_err(|e| format!("{CHANNELS_ENV} is not a channel list: {e}"))?;
    let mut seen = std::collections::BTreeSet::new();
    for c in &list {
        check_channel_name(&c.name)?;
        if !seen.insert(c.name.as_str()) {
            return Err(format!("channel {:?} is declared twice", c.name));
        }
        for (field, url) in [
            ("apiBaseUrl", &c.api_base_url),
            ("webhookUrl", &c.webhook_url),
        ] {
            if let Some(u) = url {
                if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 {
                    return Err(format!(
                        "channel {:?}: {field} {u:?} must be an http:// or https:// address",
                        c.name
                    ));
                }
            }
        }
    }
    Ok(Channels(list))
}

/// The variable that holds credential `key` (a Secret key, `botToken`) of
/// channel `channel`: `CHATPIPE_CHANNEL_<NAME>_<KEY>` with `-` as `_` and
/// the key's camelCase words split (`CHATPIPE_CHANNEL_SUPPORT_TG_BOT_TOKEN`).
pub fn credential_env(channel: &str, key: &str) -> String {
    let mut out = String::from("CHATPIPE_CHANNEL_");
    out.extend(channel.chars().map(|c| match c {
        '-' => '_',
        c => c.to_ascii_uppercase(),
    }));
    out.push('_');
    for (i, c) in key.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Each channel with its credentials (Secret key → value).
pub type ChannelCredentials = Vec<(ChannelDecl, std::collections::BTreeMap<String, String>)>;

/// Reads the credentials `reader` needs of each channel from the
/// environment (`lookup`: `std::env::var` in the binaries). Every missing
/// or empty one is named in the error, by variable and Secret key.
pub fn read_credentials(
    channels: &Channels,
    reader: CredentialReader,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<ChannelCredentials, String> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for c in &channels.0 {
        let mut creds = std::collections::BTreeMap::new();
        for key in c.kind.keys_for(reader) {
            let env = credential_env(&c.name, key);
            match lookup(&env) {
                Some(v) if !v.trim().is_empty() => {
                    creds.insert(key.to_owned(), v.trim().to_owned());
                }
                _ => missing.push(format!("{env} (key {key:?} of channel {:?})", c.name)),
            }
        }
        out.push((c.clone(), creds));
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "channel credentials missing: {}",
            missing.join(", ")
        ))
    }
}

/// The clap argument every binary that knows the channels flattens.
#[derive(Debug, Clone, clap::Args)]
pub struct ChannelArgs {
    /// The pipeline's messenger channels, as JSON:
    /// `[{"name":"tg","type":"telegram","apiBaseUrl":"…","webhookUrl":"…"}]`
    /// (`type`: telegram, whatsappCloud, twilio). Their credentials are
    /// read from `CHATPIPE_CHANNEL_<NAME>_<KEY>` variables.
    #[arg(long = "channels", env = CHANNELS_ENV, default_value = "", value_parser = parse_channels, hide_default_value = true)]
    pub channels: Channels,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_variables_are_named_from_channel_and_key() {
        assert_eq!(
            credential_env("support-tg", "botToken"),
            "CHATPIPE_CHANNEL_SUPPORT_TG_BOT_TOKEN"
        );
        assert_eq!(
            credential_env("wa", "phoneNumberId"),
            "CHATPIPE_CHANNEL_WA_PHONE_NUMBER_ID"
        );
        assert_eq!(credential_env("sms1", "from"), "CHATPIPE_CHANNEL_SMS1_FROM");
    }

    #[test]
    fn channel_lists_round_trip_and_are_checked() {
        let c = parse_channels(
            r#"[{"name":"tg","type":"telegram"},{"name":"wa-1","type":"whatsappCloud","apiBaseUrl":"http://127.0.0.1:9/"}]"#,
        )
        .unwrap();
        assert_eq!(c.0[1].kind, ChannelType::WhatsappCloud);
        assert_eq!(c.0[1].api_base_url(), "http://127.0.0.1:9");
        assert_eq!(c.0[0].api_base_url(), "https://api.telegram.org");
        use crate::env::EnvValue;
        assert_eq!(parse_channels(&c.env_value()).unwrap(), c);
        assert_eq!(parse_channels("").unwrap(), Channels::default());
        for bad in [
            r#"[{"name":"TG","type":"telegram"}]"#,
            r#"[{"name":"-a","type":"telegram"}]"#,
            r#"[{"name":"a","type":"signal"}]"#,
            r#"[{"name":"a","type":"telegram"},{"name":"a","type":"twilio"}]"#,
            r#"[{"name":"a","type":"twilio","apiBaseUrl":"ftp://x"}]"#,
            r#"[{"name":"a","type":"twilio","extra":1}]"#,
            "{}",
        ] {
            assert!(parse_channels(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_are_read_per_reader_and_missing_ones_named() {
        let c =
            parse_channels(r#"[{"name":"tg","type":"telegram"},{"name":"tw","type":"twilio"}]"#)
                .unwrap();
        let env = |k: &str| match k {
            "CHATPIPE_CHANNEL_TG_SECRET_TOKEN" => Some("s".to_owned()),
            "CHATPIPE_CHANNEL_TW_ACCOUNT_SID" => Some("AC1".to_owned()),
            "CHATPIPE_CHANNEL_TW_AUTH_TOKEN" => Some("t".to_owned()),
            _ => None,
        };
        let got = read_credentials(&c, CredentialReader::Ingest, env).unwrap();
        assert_eq!(got[0].1["secretToken"], "s");
        assert_eq!(got[1].1["authToken"], "t");
        let err = read_credentials(&c, CredentialReader::Delivery, env).unwrap_err();
        assert!(err.contains("CHATPIPE_CHANNEL_TG_BOT_TOKEN"), "{err}");
        assert!(err.contains("CHATPIPE_CHANNEL_TW_FROM"), "{err}");
    }
}
