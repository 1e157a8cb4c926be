//! The "validate once" step: turns a raw [`ChatPipelineSpec`] into a
//! [`ValidatedPipeline`] whose values are parsed and checked, or into the
//! list of every problem found. Pure: no I/O, no clock.
//!
//! The API server already enforces the CEL rules of the CRD; this repeats
//! them (objects may come from a file in local mode, or from an API server
//! that skipped the rules) and adds what CEL cannot express (Kafka topic
//! names, bootstrap server syntax, …). Both the controller and the local mode
//! build from a [`ValidatedPipeline`] only.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;

use crate::crd::{ChatPipelineSpec, IngressSpec, SecretKeyRef};

/// Image pull policies Kubernetes accepts.
pub const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];

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
    /// Grouping gap G.
    pub grouping_gap: Duration,
    /// Late-arrival tolerance L.
    pub late_arrival_tolerance: Duration,
    /// Watermark allowance, when set (processor default otherwise).
    pub watermark_allowance: Option<Duration>,
    /// Ingest settings.
    pub ingest: ValidatedIngest,
    /// Processor settings.
    pub processor: ValidatedComponent,
    /// Api settings.
    pub api: ValidatedComponent,
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
}

/// Size of one component.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValidatedComponent {
    /// Replicas (≥ 0).
    pub replicas: i32,
    /// Container resources.
    pub resources: Option<ResourceRequirements>,
}

/// Parses a Go/Kubernetes duration (`5s`, `250ms`, `1m30s`, `1.5h`) — the
/// format CEL's `duration()` accepts — into a non-negative duration.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let d: kube::core::Duration = s
        .trim()
        .parse()
        .map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    if d.is_negative() {
        return Err(format!("duration {s:?} is negative"));
    }
    Ok(d.into())
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

    let (Some(grouping_gap), Some(late_arrival_tolerance)) = (grouping_gap, late_arrival_tolerance)
    else {
        return Err(problems);
    };
    let watermark_allowance = match watermark_allowance {
        None => None,
        Some(Some(d)) => Some(d),
        Some(None) => return Err(problems),
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
        },
        postgres_url_secret: spec.postgres.url_secret.clone(),
        grouping_gap,
        late_arrival_tolerance,
        watermark_allowance,
        ingest: ValidatedIngest {
            component: ValidatedComponent {
                replicas: spec.ingest.replicas,
                resources: spec.ingest.resources.clone(),
            },
            ingress: spec.ingest.ingress.clone(),
            max_body_bytes,
            max_content_bytes,
        },
        processor: ValidatedComponent {
            replicas: spec.processor.replicas,
            resources: spec.processor.resources.clone(),
        },
        api: ValidatedComponent {
            replicas: spec.api.replicas,
            resources: spec.api.resources.clone(),
        },
    })
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
        assert!(parse_go_duration("-5s").is_err());
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("five seconds").is_err());
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
