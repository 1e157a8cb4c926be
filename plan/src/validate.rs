//! The "validate once" step: turns a raw [`ChatPipelineSpec`] into a
//! [`ValidatedPipeline`] whose values are parsed and checked, or into the
//! list of every problem found. Pure: no I/O, no clock.
//!
//! The API server already enforces the CEL rules of the CRD; this repeats
//! them (objects may come from a file in local mode, or from an API server
//! that skipped the rules) and adds what CEL cannot express (Kafka topic
//! names, bootstrap server syntax, …). The plan ([`crate::topology::plan`])
//! is built from a [`ValidatedPipeline`] only, and every rule lives here
//! once — "processors ≤ partitions" among them — for both deployments.

use std::fmt;
use std::time::Duration;

use chatpipe_settings::channels::{check_channel_name, ChannelDecl, ChannelType};
use k8s_openapi::api::core::v1::ResourceRequirements;

pub use crate::crd::PULL_POLICIES;
use crate::crd::{
    ChatPipelineSpec, IngressSpec, KafkaSaslSpec, KafkaTlsSpec, NetworkPolicySpec, OidcSpec,
    SecretKeyRef, INGRESS_NEEDS_AUTH_MESSAGE, SASL_MECHANISMS,
};

/// One thing wrong with a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationProblem {
    /// Path of the offending field, e.g. `spec.processor.replicas`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ValidationProblem {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ValidationProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Joins problems into one human-readable line (for conditions and errors).
pub fn describe(problems: &[ValidationProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A spec whose every value has been checked and parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedPipeline {
    /// Container image with every binary.
    pub image: String,
    /// Image pull policy, when set.
    pub image_pull_policy: Option<String>,
    /// Kafka settings.
    pub kafka: ValidatedKafka,
    /// Secret key with the Postgres URL.
    pub postgres_url_secret: SecretKeyRef,
    /// Secret key with the Postgres CA bundle, when set.
    pub postgres_ca_secret: Option<SecretKeyRef>,
    /// Grouping gap G.
    pub grouping_gap: Duration,
    /// Late-arrival tolerance L.
    pub late_arrival_tolerance: Duration,
    /// Watermark allowance, when set (processor default otherwise).
    pub watermark_allowance: Option<Duration>,
    /// Longest span of one group, when set (processor default otherwise).
    pub max_group_span: Option<Duration>,
    /// Most messages in one group, when set (processor default otherwise).
    pub max_group_messages: Option<u32>,
    /// Largest tolerated clock skew, when set (processor default otherwise).
    pub max_clock_skew: Option<Duration>,
    /// Ingest settings.
    pub ingest: ValidatedIngest,
    /// Processor settings.
    pub processor: ValidatedComponent,
    /// Api settings.
    pub api: ValidatedComponent,
    /// Api authentication, when set.
    pub api_auth: Option<ValidatedApiAuth>,
    /// NetworkPolicies, when enabled.
    pub network_policy: Option<NetworkPolicySpec>,
    /// Messenger channels, in declaration order.
    pub channels: Vec<ValidatedChannel>,
    /// The delivery component.
    pub delivery: ValidatedDelivery,
    /// The reply policy.
    pub replies: ValidatedReplies,
}

/// One of `spec.channels`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedChannel {
    /// What the binaries are told of it.
    pub decl: ChannelDecl,
    /// The Secret with its credentials.
    pub credentials_secret: String,
}

/// `spec.delivery`, checked, with its defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedDelivery {
    /// Replicas (default 1 with channels, else 0), resources, own URL.
    pub component: ValidatedComponent,
    /// Messages per second per channel, when set.
    pub channel_rate: Option<u32>,
    /// Messages per second per chat, when set.
    pub chat_rate: Option<u32>,
    /// Attempts before giving up, when set.
    pub max_attempts: Option<u32>,
}

/// `spec.replies`, checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidatedReplies {
    /// The reply template, when set.
    pub template: Option<String>,
    /// The FAQ rules as the processors read them
    /// (`{"rules":[{"keyword"|"regex", "answer"}]}`), when any.
    pub faq_rules_json: Option<String>,
    /// The external bot, when set.
    pub bot: Option<ValidatedReplyBot>,
}

/// `spec.replies.bot`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedReplyBot {
    /// Where groups are POSTed.
    pub url: String,
    /// How long it may take, when set.
    pub timeout: Option<Duration>,
    /// Secret key with its bearer token, when set.
    pub token: Option<SecretKeyRef>,
}

/// `spec.api.auth`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedApiAuth {
    /// Secret key with the HS256 signing secret.
    pub jwt_secret: SecretKeyRef,
    /// Access token lifetime, when set.
    pub access_token_ttl: Option<Duration>,
    /// Refresh token lifetime, when set.
    pub refresh_token_ttl: Option<Duration>,
    /// OpenID Connect issuer, when set.
    pub oidc: Option<OidcSpec>,
}

/// `spec.ingest.rateLimit`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidatedRateLimit {
    /// Sustained requests per second per client (≥ 1).
    pub per_second: u32,
    /// Burst per client (≥ 1; `per_second` when unset).
    pub burst: u32,
}

/// Kafka settings of a [`ValidatedPipeline`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedKafka {
    /// Bootstrap servers, comma separated, trimmed.
    pub bootstrap_servers: String,
    /// Topic name.
    pub topic: String,
    /// Partition count (≥ 1).
    pub partitions: i32,
    /// Replication factor for topic creation (default 1).
    pub replication_factor: i32,
    /// Secret with extra Kafka settings, when set.
    pub credentials_secret: Option<String>,
    /// TLS to the brokers, when set.
    pub tls: Option<KafkaTlsSpec>,
    /// SASL authentication, when set (mechanism checked).
    pub sasl: Option<KafkaSaslSpec>,
}

/// Ingest settings of a [`ValidatedPipeline`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedIngest {
    /// Replicas and resources.
    pub component: ValidatedComponent,
    /// Ingress, when requested.
    pub ingress: Option<IngressSpec>,
    /// Body size limit, when set.
    pub max_body_bytes: Option<u64>,
    /// Content size limit, when set.
    pub max_content_bytes: Option<u64>,
    /// Secret key with the webhook signing secrets (`spec.ingest.auth`),
    /// when set; ingest then refuses unsigned webhooks.
    pub auth: Option<SecretKeyRef>,
    /// Per-client rate limit, when set.
    pub rate_limit: Option<ValidatedRateLimit>,
}

/// Size of one component.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValidatedComponent {
    /// Replicas (≥ 0).
    pub replicas: i32,
    /// Container resources.
    pub resources: Option<ResourceRequirements>,
    /// The component's own Postgres URL Secret key, when set (the shared
    /// `postgres.urlSecret` otherwise).
    pub postgres_url_secret: Option<SecretKeyRef>,
}

/// Largest magnitude of a Go duration in nanoseconds (`1 << 63`; a
/// positive one must stay below it, as a Go `time.Duration` is an `int64`).
const GO_DURATION_LIMIT: u64 = 1 << 63;

/// Parses `s` with exactly the grammar of Go's `time.ParseDuration` (what
/// CEL's `duration()` runs on the API server, and what the CRD's `pattern`
/// spells out as [`crate::crd::GO_DURATION_PATTERN`]): an optional sign,
/// then `0` or one or more decimal numbers (`5`, `1.5`, `.5`, `5.`), each
/// followed by a unit `ns`, `us`, `µs` (U+00B5 or U+03BC), `ms`, `s`, `m`
/// or `h`. No spaces anywhere, no exponent, no other unit; values beyond
/// Go's int64 nanoseconds (about 2562047h) are refused as Go refuses them.
///
/// Returns whether the value is negative and its magnitude in nanoseconds.
/// This is a port of Go's `time.ParseDuration` (go/src/time/format.go).
pub fn parse_go_duration_nanos(orig: &str) -> Result<(bool, u64), String> {
    let err = |why: &str| {
        format!(
            "invalid duration {orig:?}: {why}; write a Go duration such as 1m30s, 250ms or 1.5h \
             (units ns, us, µs, ms, s, m, h; no spaces)"
        )
    };
    let mut s = orig.as_bytes();
    let mut negative = false;
    if let Some(&c) = s.first() {
        if c == b'-' || c == b'+' {
            negative = c == b'-';
            s = &s[1..];
        }
    }
    if s == b"0" {
        return Ok((negative, 0));
    }
    if s.is_empty() {
        return Err(err("empty"));
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return Err(err("expected a number"));
        }
        // The integer part: [0-9]*
        let before = s.len();
        let mut whole: u64 = 0;
        while let Some(&c) = s.first().filter(|c| c.is_ascii_digit()) {
            if whole > GO_DURATION_LIMIT / 10 {
                return Err(err("out of range"));
            }
            whole = whole * 10 + u64::from(c - b'0');
            if whole > GO_DURATION_LIMIT {
                return Err(err("out of range"));
            }
            s = &s[1..];
        }
        let pre = before != s.len();
        // The fraction: (\.[0-9]*)?
        let mut post = false;
        let mut fraction: u64 = 0;
        let mut scale: f64 = 1.0;
        if s.first() == Some(&b'.') {
            s = &s[1..];
            let before = s.len();
            let mut overflow = false;
            while let Some(&c) = s.first().filter(|c| c.is_ascii_digit()) {
                s = &s[1..];
                if overflow {
                    continue;
                }
                if fraction > (GO_DURATION_LIMIT - 1) / 10 {
                    overflow = true;
                    continue;
                }
                let next = fraction * 10 + u64::from(c - b'0');
                if next > GO_DURATION_LIMIT {
                    overflow = true;
                    continue;
                }
                fraction = next;
                scale *= 10.0;
            }
            post = before != s.len();
        }
        if !pre && !post {
            return Err(err("expected a number"));
        }
        // The unit: everything up to the next number.
        let end = s
            .iter()
            .position(|&c| c == b'.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if end == 0 {
            return Err(err("missing unit"));
        }
        let (unit, rest) = s.split_at(end);
        s = rest;
        let unit: u64 = match unit {
            b"ns" => 1,
            b"us" => 1_000,
            u if u == "µs".as_bytes() || u == "μs".as_bytes() => 1_000,
            b"ms" => 1_000_000,
            b"s" => 1_000_000_000,
            b"m" => 60 * 1_000_000_000,
            b"h" => 3_600 * 1_000_000_000,
            other => {
                return Err(err(&format!(
                    "unknown unit {:?}",
                    String::from_utf8_lossy(other)
                )))
            }
        };
        if whole > GO_DURATION_LIMIT / unit {
            return Err(err("out of range"));
        }
        let mut value = whole * unit;
        if fraction > 0 {
            // As Go: float64 is exact enough for fractions of the largest unit.
            value += (fraction as f64 * (unit as f64 / scale)) as u64;
            if value > GO_DURATION_LIMIT {
                return Err(err("out of range"));
            }
        }
        total = total
            .checked_add(value)
            .filter(|t| *t <= GO_DURATION_LIMIT)
            .ok_or_else(|| err("out of range"))?;
    }
    if !negative && total > GO_DURATION_LIMIT - 1 {
        return Err(err("out of range"));
    }
    Ok((negative, total))
}

/// Parses a Go duration ([`parse_go_duration_nanos`]: `5s`, `250ms`,
/// `1m30s`, `1.5h`) into a non-negative duration. Nothing is trimmed: the
/// API server does not trim either.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    match parse_go_duration_nanos(s)? {
        (true, n) if n > 0 => Err(format!("duration {s:?} is negative")),
        (_, n) => Ok(Duration::from_nanos(n)),
    }
}

/// Whether `name` is a legal Kafka topic name.
pub fn is_valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn check_host_port(server: &str) -> Result<(), String> {
    let Some((host, port)) = server.rsplit_once(':') else {
        return Err(format!("{server:?} is not host:port"));
    };
    if host.is_empty() {
        return Err(format!("{server:?} has an empty host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{server:?} has an invalid port")),
    }
}

/// Longest ChatPipeline name: object names get suffixes such as
/// `-processor-<n>` and the StatefulSet's revision hash, and must stay
/// within the 63 characters of a DNS label.
pub const MAX_NAME_LEN: usize = 40;

/// Checks the ChatPipeline's `metadata.name` (a DNS-1035 label of at most
/// [`MAX_NAME_LEN`] characters).
pub fn validate_name(name: &str) -> Result<(), ValidationProblem> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ValidationProblem::new(
            "metadata.name",
            format!("{name:?} must be a lowercase DNS label of at most {MAX_NAME_LEN} characters"),
        ))
    }
}

/// Validates `spec`, returning the parsed pipeline or every problem found.
pub fn validate(spec: &ChatPipelineSpec) -> Result<ValidatedPipeline, Vec<ValidationProblem>> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, msg: String| problems.push(ValidationProblem::new(field, msg));

    if spec.image.trim().is_empty() {
        problem("spec.image", "must not be empty".into());
    }
    if let Some(p) = &spec.image_pull_policy {
        if !PULL_POLICIES.contains(&p.as_str()) {
            problem(
                "spec.imagePullPolicy",
                format!("{p:?} is not one of {}", PULL_POLICIES.join(", ")),
            );
        }
    }

    // Kafka.
    let servers: Vec<&str> = spec
        .kafka
        .bootstrap_servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        problem("spec.kafka.bootstrapServers", "must not be empty".into());
    }
    for s in &servers {
        if let Err(e) = check_host_port(s) {
            problem("spec.kafka.bootstrapServers", e);
        }
    }
    if !is_valid_topic(&spec.kafka.topic) {
        problem(
            "spec.kafka.topic",
            format!(
                "{:?} is not a Kafka topic name (1-249 of [a-zA-Z0-9._-])",
                spec.kafka.topic
            ),
        );
    }
    if spec.kafka.partitions < 1 {
        problem(
            "spec.kafka.partitions",
            format!("must be at least 1, got {}", spec.kafka.partitions),
        );
    }
    let replication_factor = spec.kafka.replication_factor.unwrap_or(1);
    if replication_factor < 1 {
        problem(
            "spec.kafka.replicationFactor",
            format!("must be at least 1, got {replication_factor}"),
        );
    }
    if let Some(s) = &spec.kafka.credentials_secret {
        if s.trim().is_empty() {
            problem(
                "spec.kafka.credentialsSecret",
                "must not be empty when set".into(),
            );
        }
    }

    // Postgres.
    if spec.postgres.url_secret.name.trim().is_empty() {
        problem("spec.postgres.urlSecret.name", "must not be empty".into());
    }
    if spec.postgres.url_secret.key.trim().is_empty() {
        problem("spec.postgres.urlSecret.key", "must not be empty".into());
    }

    // Durations.
    let mut positive = |field: &str, value: &str, allow_zero: bool| -> Option<Duration> {
        match parse_go_duration(value) {
            Ok(d) if d.is_zero() && !allow_zero => {
                problem(field, format!("must be positive, got {value:?}"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                problem(field, e);
                None
            }
        }
    };
    let grouping_gap = positive(
        "spec.processing.groupingGap",
        &spec.processing.grouping_gap,
        false,
    );
    let late_arrival_tolerance = positive(
        "spec.processing.lateArrivalTolerance",
        &spec.processing.late_arrival_tolerance,
        false,
    );
    let watermark_allowance = spec
        .processing
        .watermark_allowance
        .as_deref()
        .map(|v| positive("spec.processing.watermarkAllowance", v, true));
    let max_group_span = spec
        .processing
        .max_group_span
        .as_deref()
        .map(|v| positive("spec.processing.maxGroupSpan", v, false));
    let max_clock_skew = spec
        .processing
        .max_clock_skew
        .as_deref()
        .map(|v| positive("spec.processing.maxClockSkew", v, true));

    // Sizes.
    let mut problem = |field: &str, msg: String| problems.push(ValidationProblem::new(field, msg));
    for (field, replicas) in [
        ("spec.ingest.replicas", spec.ingest.replicas),
        ("spec.processor.replicas", spec.processor.replicas),
        ("spec.api.replicas", spec.api.replicas),
    ] {
        if replicas < 0 {
            problem(field, format!("must not be negative, got {replicas}"));
        }
    }
    if spec.processor.replicas > spec.kafka.partitions {
        problem(
            "spec.processor.replicas",
            format!(
                "{} processors exceed the {} partitions of the topic (a processor would own nothing)",
                spec.processor.replicas, spec.kafka.partitions
            ),
        );
    }
    let mut limit = |field: &str, v: Option<i64>| -> Option<u64> {
        let v = v?;
        if v < 1 {
            problem(field, format!("must be at least 1, got {v}"));
            return None;
        }
        u64::try_from(v).ok()
    };
    let max_group_messages = limit(
        "spec.processing.maxGroupMessages",
        spec.processing.max_group_messages.map(i64::from),
    )
    .and_then(|n| u32::try_from(n).ok());
    let max_body_bytes = limit("spec.ingest.maxBodyBytes", spec.ingest.max_body_bytes);
    let max_content_bytes = limit("spec.ingest.maxContentBytes", spec.ingest.max_content_bytes);
    if let (Some(body), Some(content)) = (max_body_bytes, max_content_bytes) {
        if content > body {
            problems.push(ValidationProblem::new(
                "spec.ingest.maxContentBytes",
                format!("{content} exceeds maxBodyBytes {body}"),
            ));
        }
    }
    if let Some(ing) = &spec.ingest.ingress {
        if ing.host.trim().is_empty() {
            problems.push(ValidationProblem::new(
                "spec.ingest.ingress.host",
                "must not be empty",
            ));
        }
    }
    // Webhook authentication (the CRD's rule on `spec.ingest`).
    let auth = spec.ingest.auth.as_ref().map(|a| &a.secret_ref);
    if spec.ingest.ingress.is_some() && auth.is_none() && !spec.ingest.allow_unauthenticated {
        problems.push(ValidationProblem::new(
            "spec.ingest.auth",
            INGRESS_NEEDS_AUTH_MESSAGE,
        ));
    }
    if let Some(r) = auth {
        if r.name.trim().is_empty() {
            problems.push(ValidationProblem::new(
                "spec.ingest.auth.secretRef.name",
                "must not be empty",
            ));
        }
        if r.key.trim().is_empty() {
            problems.push(ValidationProblem::new(
                "spec.ingest.auth.secretRef.key",
                "must not be empty",
            ));
        }
    }

    // Secret references of the security settings.
    let mut secret_ref = |field: &str, r: &SecretKeyRef| {
        if r.name.trim().is_empty() {
            problems.push(ValidationProblem::new(
                &format!("{field}.name"),
                "must not be empty",
            ));
        }
        if r.key.trim().is_empty() {
            problems.push(ValidationProblem::new(
                &format!("{field}.key"),
                "must not be empty",
            ));
        }
    };
    for (field, r) in [
        ("spec.postgres.caSecretRef", &spec.postgres.ca_secret_ref),
        (
            "spec.ingest.postgresUrlSecret",
            &spec.ingest.postgres_url_secret,
        ),
        (
            "spec.processor.postgresUrlSecret",
            &spec.processor.postgres_url_secret,
        ),
        ("spec.api.postgresUrlSecret", &spec.api.postgres_url_secret),
    ] {
        if let Some(r) = r {
            secret_ref(field, r);
        }
    }
    if let Some(tls) = &spec.kafka.tls {
        for (field, r) in [
            ("spec.kafka.tls.caSecretRef", &tls.ca_secret_ref),
            (
                "spec.kafka.tls.clientCertSecretRef",
                &tls.client_cert_secret_ref,
            ),
            (
                "spec.kafka.tls.clientKeySecretRef",
                &tls.client_key_secret_ref,
            ),
        ] {
            if let Some(r) = r {
                secret_ref(field, r);
            }
        }
    }
    if let Some(sasl) = &spec.kafka.sasl {
        secret_ref(
            "spec.kafka.sasl.usernameSecretRef",
            &sasl.username_secret_ref,
        );
        secret_ref(
            "spec.kafka.sasl.passwordSecretRef",
            &sasl.password_secret_ref,
        );
    }
    if let Some(a) = &spec.api.auth {
        secret_ref("spec.api.auth.jwtSecretRef", &a.jwt_secret_ref);
    }
    if let Some(tls) = &spec.kafka.tls {
        if tls.client_cert_secret_ref.is_some() != tls.client_key_secret_ref.is_some() {
            problems.push(ValidationProblem::new(
                "spec.kafka.tls.clientKeySecretRef",
                "clientCertSecretRef and clientKeySecretRef go together (mutual TLS needs both)",
            ));
        }
    }
    if let Some(sasl) = &spec.kafka.sasl {
        if !SASL_MECHANISMS.contains(&sasl.mechanism.as_str()) {
            problems.push(ValidationProblem::new(
                "spec.kafka.sasl.mechanism",
                format!(
                    "{:?} is not one of {}",
                    sasl.mechanism,
                    SASL_MECHANISMS.join(", ")
                ),
            ));
        }
    }
    let rate_limit = spec.ingest.rate_limit.as_ref().and_then(|r| {
        let per_second = u32::try_from(r.requests_per_second)
            .ok()
            .filter(|n| *n >= 1);
        let burst = match r.burst {
            None => per_second,
            Some(b) => u32::try_from(b).ok().filter(|n| *n >= 1),
        };
        if per_second.is_none() {
            problems.push(ValidationProblem::new(
                "spec.ingest.rateLimit.requestsPerSecond",
                format!("must be at least 1, got {}", r.requests_per_second),
            ));
        }
        if per_second.is_some() && burst.is_none() {
            problems.push(ValidationProblem::new(
                "spec.ingest.rateLimit.burst",
                format!("must be at least 1, got {:?}", r.burst),
            ));
        }
        Some(ValidatedRateLimit {
            per_second: per_second?,
            burst: burst?,
        })
    });
    let api_auth = spec.api.auth.as_ref().map(|a| {
        let mut ttl = |field: &str, v: &Option<String>| -> Option<Duration> {
            let v = v.as_deref()?;
            match parse_go_duration(v) {
                Ok(d) if d.is_zero() => {
                    problems.push(ValidationProblem::new(
                        field,
                        format!("must be positive, got {v:?}"),
                    ));
                    None
                }
                Ok(d) => Some(d),
                Err(e) => {
                    problems.push(ValidationProblem::new(field, e));
                    None
                }
            }
        };
        let access_token_ttl = ttl("spec.api.auth.accessTokenTtl", &a.access_token_ttl);
        let refresh_token_ttl = ttl("spec.api.auth.refreshTokenTtl", &a.refresh_token_ttl);
        if let Some(o) = &a.oidc {
            for (field, url) in [
                ("spec.api.auth.oidc.issuer", Some(&o.issuer)),
                ("spec.api.auth.oidc.jwksUrl", o.jwks_url.as_ref()),
            ] {
                if let Some(url) = url {
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        problems.push(ValidationProblem::new(
                            field,
                            format!("{url:?} is not an http(s) URL"),
                        ));
                    }
                }
            }
        }
        ValidatedApiAuth {
            jwt_secret: a.jwt_secret_ref.clone(),
            access_token_ttl,
            refresh_token_ttl,
            oidc: a.oidc.clone(),
        }
    });

    let channels = validate_channels(spec, &mut problems);
    let delivery = validate_delivery(spec, !channels.is_empty(), &mut problems);
    let replies = validate_replies(spec, &mut problems);

    let (Some(grouping_gap), Some(late_arrival_tolerance)) = (grouping_gap, late_arrival_tolerance)
    else {
        return Err(problems);
    };
    // An optional duration that was set but invalid has its problem recorded.
    let (Some(watermark_allowance), Some(max_group_span), Some(max_clock_skew)) = (
        watermark_allowance.map_or(Some(None), |d| d.map(Some)),
        max_group_span.map_or(Some(None), |d| d.map(Some)),
        max_clock_skew.map_or(Some(None), |d| d.map(Some)),
    ) else {
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(ValidatedPipeline {
        image: spec.image.trim().to_owned(),
        image_pull_policy: spec.image_pull_policy.clone(),
        kafka: ValidatedKafka {
            bootstrap_servers: servers.join(","),
            topic: spec.kafka.topic.clone(),
            partitions: spec.kafka.partitions,
            replication_factor,
            credentials_secret: spec.kafka.credentials_secret.clone(),
            tls: spec.kafka.tls.clone(),
            sasl: spec.kafka.sasl.clone(),
        },
        postgres_url_secret: spec.postgres.url_secret.clone(),
        postgres_ca_secret: spec.postgres.ca_secret_ref.clone(),
        grouping_gap,
        late_arrival_tolerance,
        watermark_allowance,
        max_group_span,
        max_group_messages,
        max_clock_skew,
        ingest: ValidatedIngest {
            component: ValidatedComponent {
                replicas: spec.ingest.replicas,
                resources: spec.ingest.resources.clone(),
                postgres_url_secret: spec.ingest.postgres_url_secret.clone(),
            },
            ingress: spec.ingest.ingress.clone(),
            max_body_bytes,
            max_content_bytes,
            auth: auth.cloned(),
            rate_limit,
        },
        processor: ValidatedComponent {
            replicas: spec.processor.replicas,
            resources: spec.processor.resources.clone(),
            postgres_url_secret: spec.processor.postgres_url_secret.clone(),
        },
        api: ValidatedComponent {
            replicas: spec.api.replicas,
            resources: spec.api.resources.clone(),
            postgres_url_secret: spec.api.postgres_url_secret.clone(),
        },
        api_auth,
        network_policy: spec.network_policy.clone().filter(|n| n.enabled),
        channels,
        delivery,
        replies,
    })
}

/// `spec.channels`: names (DNS labels, unique), types, Secret names and
/// addresses.
fn validate_channels(
    spec: &ChatPipelineSpec,
    problems: &mut Vec<ValidationProblem>,
) -> Vec<ValidatedChannel> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in spec.channels.iter().enumerate() {
        let field = |f: &str| format!("spec.channels[{i}].{f}");
        let mut ok = true;
        if let Err(e) = check_channel_name(&c.name) {
            problems.push(ValidationProblem::new(&field("name"), e));
            ok = false;
        } else if !seen.insert(c.name.as_str()) {
            problems.push(ValidationProblem::new(
                &field("name"),
                format!("channel {:?} is declared twice", c.name),
            ));
            ok = false;
        }
        let kind = ChannelType::parse(&c.kind);
        if kind.is_none() {
            problems.push(ValidationProblem::new(
                &field("type"),
                format!(
                    "{:?} is not one of {}",
                    c.kind,
                    ChannelType::ALL.map(ChannelType::as_str).join(", ")
                ),
            ));
        }
        if c.credentials_secret_ref.name.trim().is_empty() {
            problems.push(ValidationProblem::new(
                &field("credentialsSecretRef.name"),
                "must not be empty",
            ));
            ok = false;
        }
        for (f, url) in [
            ("apiBaseUrl", &c.api_base_url),
            ("webhookUrl", &c.webhook_url),
        ] {
            if let Some(u) = url {
                if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 {
                    problems.push(ValidationProblem::new(
                        &field(f),
                        format!("{u:?} is not an http:// or https:// address"),
                    ));
                    ok = false;
                }
            }
        }
        if let (Some(kind), true) = (kind, ok) {
            out.push(ValidatedChannel {
                decl: ChannelDecl {
                    name: c.name.clone(),
                    kind,
                    api_base_url: c.api_base_url.clone(),
                    webhook_url: c.webhook_url.clone(),
                },
                credentials_secret: c.credentials_secret_ref.name.clone(),
            });
        }
    }
    out
}

/// `spec.delivery` with its defaults: one replica when channels are
/// declared, none otherwise.
fn validate_delivery(
    spec: &ChatPipelineSpec,
    has_channels: bool,
    problems: &mut Vec<ValidationProblem>,
) -> ValidatedDelivery {
    let d = spec.delivery.clone().unwrap_or_default();
    let replicas = d.replicas.unwrap_or(i32::from(has_channels));
    if replicas < 0 {
        problems.push(ValidationProblem::new(
            "spec.delivery.replicas",
            format!("must not be negative, got {replicas}"),
        ));
    }
    if let Some(r) = &d.postgres_url_secret {
        for (f, v) in [("name", &r.name), ("key", &r.key)] {
            if v.trim().is_empty() {
                problems.push(ValidationProblem::new(
                    &format!("spec.delivery.postgresUrlSecret.{f}"),
                    "must not be empty",
                ));
            }
        }
    }
    let mut positive = |field: &str, v: Option<i32>| -> Option<u32> {
        let v = v?;
        match u32::try_from(v) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                problems.push(ValidationProblem::new(
                    field,
                    format!("must be at least 1, got {v}"),
                ));
                None
            }
        }
    };
    ValidatedDelivery {
        channel_rate: positive("spec.delivery.channelRate", d.channel_rate),
        chat_rate: positive("spec.delivery.chatRate", d.chat_rate),
        max_attempts: positive("spec.delivery.maxAttempts", d.max_attempts),
        component: ValidatedComponent {
            replicas: replicas.max(0),
            resources: d.resources,
            postgres_url_secret: d.postgres_url_secret,
        },
    }
}

/// `spec.replies`: rules (keyword or regex, a regex that compiles, an
/// answer of 1–4096 characters), the bot's address, timeout and token.
fn validate_replies(
    spec: &ChatPipelineSpec,
    problems: &mut Vec<ValidationProblem>,
) -> ValidatedReplies {
    let Some(r) = &spec.replies else {
        return ValidatedReplies::default();
    };
    let mut rules = Vec::new();
    for (i, rule) in r.faq.iter().enumerate() {
        let field = |f: &str| format!("spec.replies.faq[{i}].{f}");
        match (&rule.keyword, &rule.regex) {
            (Some(k), None) if !k.trim().is_empty() => {
                rules.push(serde_json::json!({"keyword": k.trim(), "answer": rule.answer}));
            }
            (None, Some(re)) => match regex::Regex::new(re) {
                Ok(_) => rules.push(serde_json::json!({"regex": re, "answer": rule.answer})),
                Err(e) => problems.push(ValidationProblem::new(
                    &field("regex"),
                    format!("not a valid regular expression: {e}"),
                )),
            },
            _ => problems.push(ValidationProblem::new(
                &field("keyword"),
                "a rule has either a non-empty keyword or a regex",
            )),
        }
        let chars = rule.answer.chars().count();
        if chars == 0 || chars > 4096 || rule.answer.contains('\0') {
            problems.push(ValidationProblem::new(
                &field("answer"),
                "must be 1-4096 characters without NUL",
            ));
        }
    }
    if let Some(t) = &r.template {
        if t.trim().is_empty() {
            problems.push(ValidationProblem::new(
                "spec.replies.template",
                "must not be empty when set",
            ));
        }
    }
    let bot = r.bot.as_ref().map(|b| {
        if !(b.url.starts_with("http://") || b.url.starts_with("https://")) {
            problems.push(ValidationProblem::new(
                "spec.replies.bot.url",
                format!("{:?} is not an http:// or https:// address", b.url),
            ));
        }
        let timeout = b
            .timeout
            .as_deref()
            .and_then(|t| match parse_go_duration(t) {
                Ok(d) if !d.is_zero() => Some(d),
                Ok(_) => {
                    problems.push(ValidationProblem::new(
                        "spec.replies.bot.timeout",
                        "must be positive",
                    ));
                    None
                }
                Err(e) => {
                    problems.push(ValidationProblem::new("spec.replies.bot.timeout", e));
                    None
                }
            });
        if let Some(t) = &b.token_secret_ref {
            for (f, v) in [("name", &t.name), ("key", &t.key)] {
                if v.trim().is_empty() {
                    problems.push(ValidationProblem::new(
                        &format!("spec.replies.bot.tokenSecretRef.{f}"),
                        "must not be empty",
                    ));
                }
            }
        }
        ValidatedReplyBot {
            url: b.url.clone(),
            timeout,
            token: b.token_secret_ref.clone(),
        }
    });
    ValidatedReplies {
        template: r.template.clone(),
        faq_rules_json: (!rules.is_empty())
            .then(|| serde_json::json!({ "rules": rules }).to_string()),
        bot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::*;

    pub(crate) fn spec() -> ChatPipelineSpec {
        serde_yaml::from_str(
            r#"
image: ghcr.io/example/chatpipe:0.1.0
kafka:
  bootstrapServers: kafka-0.kafka:9092, kafka-1.kafka:9092
  partitions: 6
postgres:
  urlSecret: { name: chatpipe-postgres, key: url }
ingest: { replicas: 2 }
processor: { replicas: 3 }
api: { replicas: 2 }
"#,
        )
        .unwrap()
    }

    fn fields(spec: &ChatPipelineSpec) -> Vec<String> {
        validate(spec)
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect()
    }

    #[test]
    fn valid_spec_is_parsed_with_defaults() {
        let v = validate(&spec()).unwrap();
        assert_eq!(v.kafka.topic, "chatpipe.events");
        assert_eq!(
            v.kafka.bootstrap_servers,
            "kafka-0.kafka:9092,kafka-1.kafka:9092"
        );
        assert_eq!(v.kafka.replication_factor, 1);
        assert_eq!(v.grouping_gap, Duration::from_secs(5));
        assert_eq!(v.late_arrival_tolerance, Duration::from_secs(6));
        assert_eq!(v.watermark_allowance, None);
        assert_eq!(v.processor.replicas, 3);
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(
            parse_go_duration("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_go_duration("1.5h").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration(".5s").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_go_duration("-0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_go_duration("+5s").unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_go_duration("250µs").unwrap(),
            Duration::from_micros(250)
        );
        assert_eq!(
            parse_go_duration("250μs").unwrap(),
            Duration::from_micros(250)
        );
        assert_eq!(
            parse_go_duration("0.000000001s").unwrap(),
            Duration::from_nanos(1)
        );
        assert!(parse_go_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("five seconds").is_err());
    }

    /// Defect: the operator trimmed and accepted what Go (and so CEL on the
    /// API server) refuses. The operator/CRD agreement over a table of
    /// examples is in `operator/tests/crd.rs`; these are the corners.
    #[test]
    fn what_go_refuses_is_refused() {
        for bad in [
            "", " 5s", "5s ", "1m 30s", "5 s", "00", "5S", "5sec", "1d", "1e3s", "--5s", "+-5s",
            ".s", "-", "+", "5.5.5s", "1h-30m", "1,5s", "1_000ms", "5m30", "inf",
        ] {
            let e = parse_go_duration_nanos(bad).unwrap_err();
            assert!(e.contains("Go duration"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn go_overflow_limits_apply() {
        assert_eq!(
            parse_go_duration_nanos("2562047h").unwrap(),
            (false, 2_562_047 * 3_600_000_000_000)
        );
        // The largest Go duration and one nanosecond more.
        assert_eq!(
            parse_go_duration_nanos("9223372036854775807ns").unwrap(),
            (false, i64::MAX as u64)
        );
        assert!(parse_go_duration_nanos("9223372036854775808ns").is_err());
        assert_eq!(
            parse_go_duration_nanos("-9223372036854775808ns").unwrap(),
            (true, 1 << 63)
        );
        for bad in [
            "2562048h",
            "9999999999h",
            "2562047h2562047h",
            "99999999999999999999s",
        ] {
            assert!(
                parse_go_duration_nanos(bad)
                    .unwrap_err()
                    .contains("out of range"),
                "{bad}"
            );
        }
    }

    #[test]
    fn new_processing_settings_are_validated() {
        let mut s = spec();
        s.processing.max_group_span = Some("90s".into());
        s.processing.max_group_messages = Some(250);
        s.processing.max_clock_skew = Some("0s".into());
        let v = validate(&s).unwrap();
        assert_eq!(v.max_group_span, Some(Duration::from_secs(90)));
        assert_eq!(v.max_group_messages, Some(250));
        assert_eq!(v.max_clock_skew, Some(Duration::ZERO));
        let v = validate(&spec()).unwrap();
        assert_eq!(
            (v.max_group_span, v.max_group_messages, v.max_clock_skew),
            (None, None, None),
            "unset stays unset: the processor's defaults apply"
        );
        s.processing.max_group_span = Some("0s".into());
        s.processing.max_group_messages = Some(0);
        s.processing.max_clock_skew = Some("-1s".into());
        let f = fields(&s);
        for want in [
            "spec.processing.maxGroupSpan",
            "spec.processing.maxGroupMessages",
            "spec.processing.maxClockSkew",
        ] {
            assert!(f.iter().any(|x| x == want), "{want} missing from {f:?}");
        }
        s.processing.max_group_span = Some("1m 30s".into());
        s.processing.max_group_messages = Some(-3);
        s.processing.max_clock_skew = Some("5 s".into());
        assert_eq!(fields(&s).len(), 3);
    }

    #[test]
    fn processors_beyond_partitions_are_rejected() {
        let mut s = spec();
        s.processor.replicas = 7;
        assert_eq!(fields(&s), ["spec.processor.replicas"]);
        s.processor.replicas = 6;
        assert!(validate(&s).is_ok());
        s.processor.replicas = 0;
        assert!(
            validate(&s).is_ok(),
            "scaling processors to zero is allowed"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let mut s = spec();
        s.image = " ".into();
        s.image_pull_policy = Some("Sometimes".into());
        s.kafka.bootstrap_servers = "nohost".into();
        s.kafka.topic = "bad topic".into();
        s.kafka.partitions = 0;
        s.postgres.url_secret.key = String::new();
        s.processing.grouping_gap = "0s".into();
        s.processing.late_arrival_tolerance = "soon".into();
        s.processing.watermark_allowance = Some("-1ms".into());
        s.ingest.replicas = -1;
        s.ingest.max_body_bytes = Some(10);
        s.ingest.max_content_bytes = Some(20);
        let f = fields(&s);
        for want in [
            "spec.image",
            "spec.imagePullPolicy",
            "spec.kafka.bootstrapServers",
            "spec.kafka.topic",
            "spec.kafka.partitions",
            "spec.postgres.urlSecret.key",
            "spec.processing.groupingGap",
            "spec.processing.lateArrivalTolerance",
            "spec.processing.watermarkAllowance",
            "spec.ingest.replicas",
            "spec.processor.replicas",
            "spec.ingest.maxContentBytes",
        ] {
            assert!(f.iter().any(|x| x == want), "{want} missing from {f:?}");
        }
    }

    fn ingress() -> IngressSpec {
        IngressSpec {
            host: "webhooks.example.com".into(),
            class_name: None,
            tls_secret: None,
        }
    }

    fn auth(name: &str, key: &str) -> IngestAuthSpec {
        IngestAuthSpec {
            secret_ref: SecretKeyRef {
                name: name.into(),
                key: key.into(),
            },
        }
    }

    /// The CRD's rule, repeated: an Ingress needs `auth` unless
    /// `allowUnauthenticated` is set.
    #[test]
    fn an_ingress_needs_auth_or_allow_unauthenticated() {
        let mut s = spec();
        assert_eq!(
            validate(&s).unwrap().ingest.auth,
            None,
            "no ingress, no auth"
        );
        s.ingest.ingress = Some(ingress());
        let problems = validate(&s).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "spec.ingest.auth");
        assert!(
            problems[0].message.contains("allowUnauthenticated"),
            "{}",
            problems[0].message
        );
        s.ingest.allow_unauthenticated = true;
        assert_eq!(validate(&s).unwrap().ingest.auth, None);
        s.ingest.allow_unauthenticated = false;
        s.ingest.auth = Some(auth("webhooks", "secrets"));
        assert_eq!(
            validate(&s).unwrap().ingest.auth,
            Some(SecretKeyRef {
                name: "webhooks".into(),
                key: "secrets".into()
            })
        );
    }

    #[test]
    fn auth_without_ingress_is_carried_and_checked() {
        let mut s = spec();
        s.ingest.auth = Some(auth("webhooks", "secrets"));
        assert_eq!(validate(&s).unwrap().ingest.auth.unwrap().name, "webhooks");
        s.ingest.auth = Some(auth(" ", ""));
        assert_eq!(
            fields(&s),
            [
                "spec.ingest.auth.secretRef.name",
                "spec.ingest.auth.secretRef.key"
            ]
        );
    }

    /// The security settings: each secret reference must name a Secret and
    /// a key, the SASL mechanism is one librdkafka speaks, a client
    /// certificate comes with its key, limits and lifetimes are positive.
    #[test]
    fn security_settings_are_checked() {
        let key = |name: &str, key: &str| SecretKeyRef {
            name: name.into(),
            key: key.into(),
        };
        let mut s = spec();
        s.kafka.tls = Some(KafkaTlsSpec {
            ca_secret_ref: Some(key("kafka", "ca.crt")),
            client_cert_secret_ref: Some(key("kafka", "tls.crt")),
            client_key_secret_ref: None,
        });
        s.kafka.sasl = Some(KafkaSaslSpec {
            mechanism: "SCRAM-SHA-1".into(),
            username_secret_ref: key("", "user"),
            password_secret_ref: key("kafka", "password"),
        });
        s.ingest.rate_limit = Some(RateLimitSpec {
            requests_per_second: 0,
            burst: None,
        });
        s.api.auth = Some(ApiAuthSpec {
            jwt_secret_ref: key("api", " "),
            access_token_ttl: Some("0s".into()),
            refresh_token_ttl: Some("7 days".into()),
            oidc: Some(OidcSpec {
                issuer: "login.example.com".into(),
                jwks_url: None,
                audience: None,
            }),
        });
        s.api.postgres_url_secret = Some(key("pg-api", ""));
        let mut got = fields(&s);
        got.sort();
        assert_eq!(
            got,
            [
                "spec.api.auth.accessTokenTtl",
                "spec.api.auth.jwtSecretRef.key",
                "spec.api.auth.oidc.issuer",
                "spec.api.auth.refreshTokenTtl",
                "spec.api.postgresUrlSecret.key",
                "spec.ingest.rateLimit.requestsPerSecond",
                "spec.kafka.sasl.mechanism",
                "spec.kafka.sasl.usernameSecretRef.name",
                "spec.kafka.tls.clientKeySecretRef",
            ]
        );
        // Fixed, every one is carried.
        s.kafka.tls.as_mut().unwrap().client_key_secret_ref = Some(key("kafka", "tls.key"));
        s.kafka.sasl = Some(KafkaSaslSpec {
            mechanism: "SCRAM-SHA-512".into(),
            username_secret_ref: key("kafka", "user"),
            password_secret_ref: key("kafka", "password"),
        });
        s.ingest.rate_limit = Some(RateLimitSpec {
            requests_per_second: 20,
            burst: None,
        });
        s.api.auth = Some(ApiAuthSpec {
            jwt_secret_ref: key("api", "jwt"),
            access_token_ttl: Some("5m".into()),
            refresh_token_ttl: None,
            oidc: Some(OidcSpec {
                issuer: "https://login.example.com".into(),
                jwks_url: None,
                audience: Some("chatpipe".into()),
            }),
        });
        s.api.postgres_url_secret = Some(key("pg-api", "url"));
        let v = validate(&s).unwrap();
        assert_eq!(
            v.ingest.rate_limit,
            Some(ValidatedRateLimit {
                per_second: 20,
                burst: 20
            }),
            "the burst defaults to one second's worth"
        );
        let auth = v.api_auth.unwrap();
        assert_eq!(auth.access_token_ttl, Some(Duration::from_secs(300)));
        assert_eq!(auth.jwt_secret, key("api", "jwt"));
        assert_eq!(v.api.postgres_url_secret, Some(key("pg-api", "url")));
        assert_eq!(v.kafka.sasl.unwrap().mechanism, "SCRAM-SHA-512");
        assert_eq!(v.network_policy, None, "off unless enabled");
    }

    #[test]
    fn auth_fields_read_from_yaml() {
        let s: ChatPipelineSpec = serde_yaml::from_str(
            r#"
image: i
kafka: { bootstrapServers: "k:9092", partitions: 1 }
postgres: { urlSecret: { name: pg, key: url } }
ingest:
  replicas: 1
  ingress: { host: h.example.com }
  auth: { secretRef: { name: wh, key: secrets } }
processor: { replicas: 1 }
api: { replicas: 1 }
"#,
        )
        .unwrap();
        assert_eq!(s.ingest.auth, Some(auth("wh", "secrets")));
        assert!(!s.ingest.allow_unauthenticated, "default false");
        assert!(validate(&s).is_ok());
    }

    #[test]
    fn zero_watermark_allowance_is_allowed() {
        let mut s = spec();
        s.processing.watermark_allowance = Some("0s".into());
        assert_eq!(
            validate(&s).unwrap().watermark_allowance,
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn names() {
        assert!(validate_name("demo").is_ok());
        assert!(validate_name("chat-prod-1").is_ok());
        assert!(validate_name("Demo").is_err());
        assert!(validate_name("1demo").is_err());
        assert!(validate_name("demo-").is_err());
        assert!(validate_name(&"a".repeat(41)).is_err());
    }

    #[test]
    fn topic_names() {
        assert!(is_valid_topic("chatpipe.events"));
        assert!(is_valid_topic("a-b_c.1"));
        assert!(!is_valid_topic(""));
        assert!(!is_valid_topic(".."));
        assert!(!is_valid_topic("a/b"));
        assert!(!is_valid_topic(&"x".repeat(250)));
    }
}
