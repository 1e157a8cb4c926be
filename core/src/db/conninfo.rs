//! libpq connection strings, as plain functions: the TLS parameters
//! tokio-postgres does not understand are taken out of a URL
//! (`postgres://…?sslmode=verify-full`) or key=value string
//! (`host=h sslmode=verify-full`), and passwords are hidden for logs.
//!
//! The splitting follows tokio-postgres's own parser (which follows libpq):
//! in a URL the credentials end at the first `@`, the query starts at the
//! first `?` after them and its parameters are `key=value` separated by
//! `&`; a key=value string is `keyword = value` pairs separated by
//! whitespace, a value quoted with `'` or not, `\` escaping one character.
//! Everything that is not a TLS parameter is handed on verbatim.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// libpq's `sslmode`: whether TLS is used and what is verified
/// (<https://www.postgresql.org/docs/current/libpq-ssl.html>).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first; TLS only if the plain connection is refused.
    Allow,
    /// TLS if the server offers it, plain otherwise (libpq's default).
    Prefer,
    /// TLS always; the certificate is not verified (unless `sslrootcert`
    /// is given: then as [`SslMode::VerifyCa`]).
    Require,
    /// TLS, the server certificate chained to a trusted CA; any host name.
    VerifyCa,
    /// TLS, the certificate chained to a trusted CA and naming the host.
    VerifyFull,
}

impl SslMode {
    /// Every mode, weakest first.
    pub const ALL: [SslMode; 6] = [
        SslMode::Disable,
        SslMode::Allow,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The libpq spelling (`verify-full`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The mode spelled `s` as libpq spells it, if any.
    pub fn parse(s: &str) -> Option<SslMode> {
        SslMode::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the trusted CA certificates come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// `sslrootcert=system`: the platform's trust store.
    System,
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
}

/// The TLS parameters of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslParams {
    /// The effective `sslmode` (libpq's defaults applied).
    pub mode: SslMode,
    /// `sslrootcert`, when given.
    pub root_cert: Option<RootCert>,
    /// `sslcert`: the client certificate chain (PEM), when given.
    pub client_cert: Option<PathBuf>,
    /// `sslkey`: the client certificate's private key (PEM), when given.
    pub client_key: Option<PathBuf>,
}

impl Default for SslParams {
    fn default() -> Self {
        SslParams {
            mode: SslMode::Prefer,
            root_cert: None,
            client_cert: None,
            client_key: None,
        }
    }
}

/// A connection string split in two: what tokio-postgres parses itself,
/// and the TLS parameters.
#[derive(Clone, PartialEq, Eq)]
pub struct SplitConninfo {
    /// The connection string without `sslmode`, `sslrootcert`, `sslcert`
    /// and `sslkey`, in the same form (URL or key=value) as the input.
    pub rest: String,
    /// The TLS parameters taken out.
    pub ssl: SslParams,
    /// The passwords the string holds (raw and decoded), to scrub them
    /// from messages of parsers that might echo them.
    secrets: Vec<String>,
}

impl SplitConninfo {
    /// `text` with every password of the connection string replaced by
    /// `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if !s.is_empty() {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

impl fmt::Debug for SplitConninfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitConninfo")
            .field("rest", &redact(&self.rest))
            .field("ssl", &self.ssl)
            .finish_non_exhaustive()
    }
}

/// Why a connection string's TLS parameters are not usable. No variant
/// holds any part of a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConninfoError {
    /// `sslmode` has a value libpq does not know.
    #[error("invalid sslmode {0:?} (expected disable, allow, prefer, require, verify-ca or verify-full)")]
    InvalidSslMode(String),
    /// A TLS parameter is present with an empty value.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// `sslrootcert=system` with a mode weaker than `verify-full` (libpq
    /// refuses this too).
    #[error("sslrootcert=system requires sslmode=verify-full (got sslmode={0})")]
    SystemRootsNeedVerifyFull(SslMode),
    /// Only one of `sslcert` and `sslkey` was given.
    #[error("sslcert and sslkey must be given together")]
    ClientCertIncomplete,
    /// The string is not a well-formed connection string.
    #[error("malformed connection string: {0}")]
    Malformed(&'static str),
    /// A percent-encoded parameter is not UTF-8.
    #[error("a URL parameter is not valid UTF-8 once percent-decoded")]
    NotUtf8,
}

/// The TLS parameter keywords taken out of connection strings.
const SSL_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Keywords whose values are secrets.
const SECRET_KEYS: [&str; 2] = ["password", "sslpassword"];

fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS.iter().any(|k| key.eq_ignore_ascii_case(k))
}

/// The part after `postgres://` or `postgresql://`, when `s` is a URL.
fn strip_url_prefix(s: &str) -> Option<(&str, &str)> {
    ["postgres://", "postgresql://"]
        .into_iter()
        .find_map(|p| s.strip_prefix(p).map(|rest| (p, rest)))
}

/// Splits `conninfo` (URL or key=value form) into what tokio-postgres
/// understands and the TLS parameters, applying libpq's defaults:
/// `sslmode=prefer`, or `verify-full` with `sslrootcert=system`.
pub fn split_ssl_params(conninfo: &str) -> Result<SplitConninfo, ConninfoError> {
    let mut found: Vec<(String, String)> = Vec::new();
    let mut secrets = Vec::new();
    let rest = match strip_url_prefix(conninfo) {
        Some((prefix, url)) => split_url(prefix, url, &mut found, &mut secrets)?,
        None => split_key_values(conninfo, &mut found, &mut secrets)?,
    };
    let ssl = ssl_params(&found)?;
    secrets.retain(|s| !s.is_empty());
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    Ok(SplitConninfo { rest, ssl, secrets })
}

/// The effective TLS parameters from the `(key, value)` pairs found, the
/// last occurrence of a key winning (as in libpq).
fn ssl_params(found: &[(String, String)]) -> Result<SslParams, ConninfoError> {
    let last = |key: &str| {
        found
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let non_empty = |key: &'static str| -> Result<Option<&str>, ConninfoError> {
        match last(key) {
            Some("") => Err(ConninfoError::Empty(key)),
            other => Ok(other),
        }
    };
    let root_cert = non_empty("sslrootcert")?.map(|v| match v {
        "system" => RootCert::System,
        path => RootCert::File(PathBuf::from(path)),
    });
    let mode = match non_empty("sslmode")? {
        Some(v) => SslMode::parse(v).ok_or_else(|| ConninfoError::InvalidSslMode(v.to_owned()))?,
        None if root_cert == Some(RootCert::System) => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
        return Err(ConninfoError::SystemRootsNeedVerifyFull(mode));
    }
    let client_cert = non_empty("sslcert")?.map(PathBuf::from);
    let client_key = non_empty("sslkey")?.map(PathBuf::from);
    if client_cert.is_some() != client_key.is_some() {
        return Err(ConninfoError::ClientCertIncomplete);
    }
    Ok(SslParams {
        mode,
        root_cert,
        client_cert,
        client_key,
    })
}

fn percent_decode(s: &str) -> Result<Cow<'_, str>, ConninfoError> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map_err(|_| ConninfoError::NotUtf8)
}

/// The URL case of [`split_ssl_params`]; `url` is the text after `prefix`.
fn split_url(
    prefix: &str,
    url: &str,
    found: &mut Vec<(String, String)>,
    secrets: &mut Vec<String>,
) -> Result<String, ConninfoError> {
    // Credentials end at the first '@' (as tokio-postgres and libpq read
    // them); the query starts at the first '?' after them.
    let creds_end = match url.find('@') {
        Some(at) => {
            if let Some((_, password)) = url[..at].split_once(':') {
                secrets.push(password.to_owned());
                if let Ok(decoded) = percent_decode(password) {
                    secrets.push(decoded.into_owned());
                }
            }
            at + 1
        }
        None => 0,
    };
    let Some(q) = url[creds_end..].find('?').map(|i| creds_end + i) else {
        return Ok(format!("{prefix}{url}"));
    };
    let mut kept: Vec<&str> = Vec::new();
    let mut query = &url[q + 1..];
    while !query.is_empty() {
        let (segment, next) = match query.find('&') {
            Some(amp) => (&query[..amp], &query[amp + 1..]),
            None => (query, ""),
        };
        // tokio-postgres takes the key up to the first '=' even across
        // '&'; a segment without '=' is an error there, so keep it for
        // that parser to report.
        let Some((raw_key, raw_value)) = segment.split_once('=') else {
            kept.push(segment);
            query = next;
            continue;
        };
        let key = percent_decode(raw_key)?;
        if is_secret_key(&key) {
            secrets.push(raw_value.to_owned());
            if let Ok(decoded) = percent_decode(raw_value) {
                secrets.push(decoded.into_owned());
            }
        }
        if SSL_KEYS.contains(&key.as_ref()) {
            found.push((key.into_owned(), percent_decode(raw_value)?.into_owned()));
        } else {
            kept.push(segment);
        }
        query = next;
    }
    let base = &url[..q];
    Ok(if kept.is_empty() {
        format!("{prefix}{base}")
    } else {
        format!("{prefix}{base}?{}", kept.join("&"))
    })
}

/// One `keyword = value` of a key=value string.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyValue<'a> {
    keyword: &'a str,
    /// The unescaped value.
    value: String,
    /// Byte range of the whole parameter (keyword to end of value).
    span: Range<usize>,
    /// Byte range of the value as written (quotes included).
    value_span: Range<usize>,
}

/// Reads the key=value string `s` the way tokio-postgres does. When
/// `lenient`, never fails: a broken tail is returned as far as it could be
/// read (for [`redact`], which must cope with anything).
fn key_values(s: &str, lenient: bool) -> Result<Vec<KeyValue<'_>>, ConninfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while let Some(c) = s[i..].chars().next() {
            if !c.is_whitespace() {
                break;
            }
            i += c.len_utf8();
        }
        i
    };
    loop {
        i = skip_ws(i);
        if i >= s.len() {
            return Ok(out);
        }
        let start = i;
        while let Some(c) = s[i..].chars().next() {
            if c.is_whitespace() || c == '=' {
                break;
            }
            i += c.len_utf8();
        }
        let keyword = &s[start..i];
        i = skip_ws(i);
        if bytes.get(i) != Some(&b'=') {
            if lenient {
                // Not a parameter; go on after this word.
                if i == start {
                    i += s[i..].chars().next().map_or(1, char::len_utf8);
                }
                continue;
            }
            return Err(ConninfoError::Malformed("expected `=` after a keyword"));
        }
        if keyword.is_empty() && !lenient {
            return Err(ConninfoError::Malformed("`=` without a keyword"));
        }
        i = skip_ws(i + 1);
        let value_start = i;
        let mut value = String::new();
        if bytes.get(i) == Some(&b'\'') {
            i += 1;
            let mut closed = false;
            while let Some(c) = s[i..].chars().next() {
                i += c.len_utf8();
                match c {
                    '\'' => {
                        closed = true;
                        break;
                    }
                    '\\' => {
                        if let Some(c2) = s[i..].chars().next() {
                            value.push(c2);
                            i += c2.len_utf8();
                        }
                    }
                    c => value.push(c),
                }
            }
            if !closed && !lenient {
                return Err(ConninfoError::Malformed("unterminated quoted value"));
            }
        } else {
            while let Some(c) = s[i..].chars().next() {
                if c.is_whitespace() {
                    break;
                }
                i += c.len_utf8();
                if c == '\\' {
                    if let Some(c2) = s[i..].chars().next() {
                        value.push(c2);
                        i += c2.len_utf8();
                    }
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() && !lenient {
                return Err(ConninfoError::Malformed("a keyword without a value"));
            }
        }
        out.push(KeyValue {
            keyword,
            value,
            span: start..i,
            value_span: value_start..i,
        });
    }
}

/// The key=value case of [`split_ssl_params`].
fn split_key_values(
    s: &str,
    found: &mut Vec<(String, String)>,
    secrets: &mut Vec<String>,
) -> Result<String, ConninfoError> {
    let params = match key_values(s, false) {
        Ok(p) => p,
        Err(e) => {
            // Still learn the passwords, so whatever reports the error
            // can scrub them.
            for kv in key_values(s, true).unwrap_or_default() {
                if is_secret_key(kv.keyword) {
                    secrets.push(kv.value);
                    secrets.push(s[kv.value_span].to_owned());
                }
            }
            return Err(e);
        }
    };
    let mut kept = Vec::new();
    for kv in params {
        if is_secret_key(kv.keyword) {
            secrets.push(kv.value.clone());
            secrets.push(s[kv.value_span.clone()].to_owned());
        }
        if SSL_KEYS.contains(&kv.keyword) {
            found.push((kv.keyword.to_owned(), kv.value));
        } else {
            kept.push(&s[kv.span]);
        }
    }
    Ok(kept.join(" "))
}

/// `conninfo` (URL or key=value form) with every password replaced by
/// `***`, for logs and errors: the password of a URL's user info (also
/// percent-encoded, or with a raw `@` in it), `password=`/`sslpassword=`
/// URL query parameters, and `password`/`sslpassword` keywords of a
/// key=value string (quoted or not). Anything else is kept as written.
pub fn redact(conninfo: &str) -> String {
    match conninfo.find("://") {
        Some(scheme)
            if conninfo[..scheme]
                .chars()
                .all(|c| c.is_ascii_alphanumeric()) =>
        {
            let (head, url) = conninfo.split_at(scheme + 3);
            format!("{head}{}", redact_url(url))
        }
        _ => redact_key_values(conninfo),
    }
}

/// [`redact`] of the text after `scheme://`.
fn redact_url(url: &str) -> String {
    // Where the user info ends: at the last '@' followed by a host list
    // (up to '/', '?' or the end), which skips any '@', '/' or '?' a raw
    // password may hold; else at the last '@'. The password runs from the
    // first ':' before it. This hides too much rather than too little.
    let hosts_follow = |at: usize| {
        let after = &url[at + 1..];
        let hosts = &after[..after.find(['/', '?']).unwrap_or(after.len())];
        !hosts.is_empty()
            && hosts
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:,[]%".contains(c))
    };
    let at = url
        .rmatch_indices('@')
        .map(|(i, _)| i)
        .find(|&i| hosts_follow(i))
        .or_else(|| url.rfind('@'));
    let (mut out, tail) = match at {
        Some(at) => match url[..at].find(':') {
            Some(colon) => (format!("{}:***@", &url[..colon]), &url[at + 1..]),
            None => (url[..=at].to_owned(), &url[at + 1..]),
        },
        None => (String::new(), url),
    };
    // Query parameters: every `password=` / `sslpassword=` after a '?' or
    // '&' loses its value up to the next '&'.
    let Some(q) = tail.find('?') else {
        out.push_str(tail);
        return out;
    };
    out.push_str(&tail[..=q]);
    let segments: Vec<String> = tail[q + 1..]
        .split('&')
        .map(|segment| match segment.split_once('=') {
            Some((key, _))
                if is_secret_key(
                    &percent_encoding::percent_decode_str(key).decode_utf8_lossy(),
                ) =>
            {
                format!("{key}=***")
            }
            _ => segment.to_owned(),
        })
        .collect();
    out.push_str(&segments.join("&"));
    out
}

/// [`redact`] of a key=value string.
fn redact_key_values(s: &str) -> String {
    let params = key_values(s, true).unwrap_or_default();
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    for kv in params.iter().filter(|kv| is_secret_key(kv.keyword)) {
        out.push_str(&s[copied..kv.value_span.start]);
        out.push_str("***");
        copied = kv.value_span.end;
    }
    out.push_str(&s[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(s: &str) -> SplitConninfo {
        split_ssl_params(s).unwrap()
    }

    #[test]
    fn ssl_modes_round_trip() {
        for m in SslMode::ALL {
            assert_eq!(SslMode::parse(m.as_str()), Some(m));
        }
        assert_eq!(SslMode::parse("verify_full"), None);
    }

    #[test]
    fn default_is_prefer_and_nothing_is_removed() {
        let s = split("postgres://u:pw@h:5432/db?application_name=x");
        assert_eq!(s.rest, "postgres://u:pw@h:5432/db?application_name=x");
        assert_eq!(s.ssl, SslParams::default());
        let s = split("host=h user=u dbname=db");
        assert_eq!(s.rest, "host=h user=u dbname=db");
        assert_eq!(s.ssl.mode, SslMode::Prefer);
    }

    #[test]
    fn takes_tls_parameters_out_of_urls() {
        let s = split(
            "postgresql://u@db.example.com/app?sslmode=verify-full&application_name=a\
             &sslrootcert=%2Fetc%2Fca.pem&sslcert=/c.pem&sslkey=/k.pem",
        );
        assert_eq!(
            s.rest,
            "postgresql://u@db.example.com/app?application_name=a"
        );
        assert_eq!(
            s.ssl,
            SslParams {
                mode: SslMode::VerifyFull,
                root_cert: Some(RootCert::File("/etc/ca.pem".into())),
                client_cert: Some("/c.pem".into()),
                client_key: Some("/k.pem".into()),
            }
        );
        let s = split("postgres://h/db?sslmode=require");
        assert_eq!(s.rest, "postgres://h/db");
        assert_eq!(s.ssl.mode, SslMode::Require);
    }

    #[test]
    fn takes_tls_parameters_out_of_key_values() {
        let s =
            split("host=h  sslmode = verify-ca password='a b\\'c' sslrootcert='/my ca.pem' user=u");
        assert_eq!(s.rest, "host=h password='a b\\'c' user=u");
        assert_eq!(s.ssl.mode, SslMode::VerifyCa);
        assert_eq!(s.ssl.root_cert, Some(RootCert::File("/my ca.pem".into())));
        assert_eq!(s.scrub("it was a b'c"), "it was ***");
    }

    #[test]
    fn the_last_occurrence_wins() {
        let s = split("postgres://h/db?sslmode=disable&sslmode=verify-full");
        assert_eq!(s.ssl.mode, SslMode::VerifyFull);
    }

    #[test]
    fn system_roots_default_to_and_require_verify_full() {
        let s = split("host=h sslrootcert=system");
        assert_eq!(s.ssl.mode, SslMode::VerifyFull);
        assert_eq!(s.ssl.root_cert, Some(RootCert::System));
        assert_eq!(
            split_ssl_params("host=h sslrootcert=system sslmode=require"),
            Err(ConninfoError::SystemRootsNeedVerifyFull(SslMode::Require))
        );
    }

    #[test]
    fn rejects_bad_tls_parameters() {
        assert_eq!(
            split_ssl_params("postgres://h/db?sslmode=verify"),
            Err(ConninfoError::InvalidSslMode("verify".into()))
        );
        assert_eq!(
            split_ssl_params("host=h sslcert=/c.pem"),
            Err(ConninfoError::ClientCertIncomplete)
        );
        assert_eq!(
            split_ssl_params("host=h sslrootcert=''"),
            Err(ConninfoError::Empty("sslrootcert"))
        );
        assert!(matches!(
            split_ssl_params("host=h password='open"),
            Err(ConninfoError::Malformed(_))
        ));
    }

    #[test]
    fn learns_url_passwords_for_scrubbing() {
        let s = split("postgres://u:p%40ss@h/db?password=q%26r");
        assert_eq!(s.scrub("x p@ss y p%40ss z q&r"), "x *** y *** z ***");
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("host=h user=u"), "host=h user=u");
        assert_eq!(
            redact("postgres://h/db?application_name=a"),
            "postgres://h/db?application_name=a"
        );
        assert_eq!(
            redact("postgres://u@h/db?user=me@example.com&sslmode=require"),
            "postgres://u@h/db?user=me@example.com&sslmode=require"
        );
    }

    #[test]
    fn redacts_every_form() {
        assert_eq!(
            redact("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db",
            "raw @ in the password"
        );
        assert_eq!(
            redact("postgresql://u:p%40ss@h/db"),
            "postgresql://u:***@h/db"
        );
        assert_eq!(
            redact("postgres://u:p/s?s@h/db?sslmode=require"),
            "postgres://u:***@h/db?sslmode=require"
        );
        assert_eq!(
            redact("postgres://u@h/db?sslmode=require&password=s3cret&user=x"),
            "postgres://u@h/db?sslmode=require&password=***&user=x"
        );
        assert_eq!(
            redact("postgres://h/db?Password=a&sslpassword=b"),
            "postgres://h/db?Password=***&sslpassword=***"
        );
        assert_eq!(
            redact("host=h password=secret user=u"),
            "host=h password=*** user=u"
        );
        assert_eq!(
            redact("host=h password = 'a b\\' c' user=u"),
            "host=h password = *** user=u"
        );
        assert_eq!(redact("host=h password='open"), "host=h password=***");
        assert_eq!(redact("password=x\\ y"), "password=***");
        assert_eq!(
            redact("postgres://u:@?a b@h/db"),
            "postgres://u:***@h/db",
            "raw '?' and '@' in the password"
        );
        assert_eq!(
            redact("postgres://me@server:pw@h/db"),
            "postgres://me@server:***@h/db",
            "raw '@' in the user name"
        );
    }

    /// Percent-encodes everything but unreserved characters.
    fn encode(s: &str) -> String {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    /// A key=value quoted value.
    fn quote(s: &str) -> String {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }

    const SKELETON: &str = "postgres://chatpipe:***@db.example.com:5432/chatpipe \
                            host=db.example.com user=chatpipe dbname=chatpipe sslmode=verify-full";

    proptest! {
        #[test]
        fn a_password_never_survives_redact(
            password in "[ -~]{6,24}",
            unicode in "\\PC{6,12}",
        ) {
            for pw in [password.as_str(), unicode.as_str()] {
                prop_assume!(!SKELETON.contains(pw) && !pw.contains("***"));
                let encoded = encode(pw);
                let forms = [
                    format!("postgres://chatpipe:{encoded}@db.example.com:5432/chatpipe"),
                    format!("postgresql://chatpipe:{encoded}@db.example.com/chatpipe?sslmode=verify-full"),
                    format!("postgres://db.example.com/chatpipe?user=chatpipe&password={encoded}&sslmode=require"),
                    format!("host=db.example.com password={} user=chatpipe", quote(pw)),
                    format!("host=db.example.com user=chatpipe password = {}", quote(pw)),
                ];
                for form in &forms {
                    let red = redact(form);
                    prop_assert!(!red.contains(pw), "{red}");
                    prop_assert!(!red.contains(&encoded), "{red}");
                    prop_assert!(red.contains("***"), "{red}");
                    // The split form learns the password too.
                    if let Ok(s) = split_ssl_params(form) {
                        let scrubbed = s.scrub(&format!("error near {pw} / {encoded}"));
                        prop_assert!(!scrubbed.contains(pw), "{scrubbed}");
                    }
                }
                // Unescaped key=value (no whitespace, quote or backslash)
                // and raw URL user info (no '/', '?', '#').
                if !pw.chars().any(|c| c.is_whitespace() || c == '\'' || c == '\\') {
                    let red = redact(&format!("host=h password={pw} user=u"));
                    prop_assert!(!red.contains(pw), "{red}");
                }
                let red = redact(&format!("postgres://chatpipe:{pw}@db.example.com/chatpipe"));
                prop_assert!(!red.contains(pw), "{red}");
            }
        }

        #[test]
        fn split_keeps_every_other_parameter(
            app in "[a-z]{1,8}",
            mode in prop::sample::select(SslMode::ALL.to_vec()),
        ) {
            let url = format!("postgres://u@h/db?application_name={app}&sslmode={mode}");
            let s = split_ssl_params(&url).unwrap();
            prop_assert_eq!(s.rest, format!("postgres://u@h/db?application_name={app}"));
            prop_assert_eq!(s.ssl.mode, mode);
            let kv = format!("host=h application_name={app} sslmode={mode} dbname=db");
            let s = split_ssl_params(&kv).unwrap();
            prop_assert_eq!(s.rest, format!("host=h application_name={app} dbname=db"));
            prop_assert_eq!(s.ssl.mode, mode);
        }
    }
}
