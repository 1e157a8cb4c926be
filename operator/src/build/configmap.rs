//! The ConfigMap every chatpipe pod reads through `envFrom`, and the
//! checksum over it and the referenced Secrets that goes on pod templates so
//! a change of either rolls the pods.

use std::collections::BTreeMap;

use chatpipe_core::config::format_duration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use sha2::{Digest, Sha256};

use super::labels::Component;
use super::BuildInput;
use crate::validate::ValidatedPipeline;

/// The environment shared by every component, as ConfigMap data. Durations
/// are written in the form `chatpipe_core::config::parse_duration` reads.
pub fn settings(p: &ValidatedPipeline) -> BTreeMap<String, String> {
    let mut d = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        d.insert(k.to_owned(), v);
    };
    set("CHATPIPE_KAFKA_BROKERS", p.kafka.bootstrap_servers.clone());
    set("CHATPIPE_KAFKA_TOPIC", p.kafka.topic.clone());
    set("CHATPIPE_GROUPING_GAP", format_duration(p.grouping_gap));
    set(
        "CHATPIPE_LATE_TOLERANCE",
        format_duration(p.late_arrival_tolerance),
    );
    if let Some(a) = p.watermark_allowance {
        set("CHATPIPE_WATERMARK_ALLOWANCE", format_duration(a));
    }
    if let Some(b) = p.ingest.max_body_bytes {
        set("CHATPIPE_MAX_BODY_BYTES", b.to_string());
    }
    if let Some(b) = p.ingest.max_content_bytes {
        set("CHATPIPE_MAX_CONTENT_BYTES", b.to_string());
    }
    set("CHATPIPE_LOG_FORMAT", "json".to_owned());
    set("CHATPIPE_LOG", "info".to_owned());
    d
}

/// The ConfigMap `<name>-config`.
pub fn config_map(input: &BuildInput<'_>) -> ConfigMap {
    ConfigMap {
        metadata: input.meta(Component::Config.object_name(input.name), Component::Config),
        data: Some(settings(input.pipeline)),
        ..ConfigMap::default()
    }
}

/// SHA-256 (hex) over the settings and the data of the referenced Secrets,
/// in a canonical order: equal inputs give equal checksums, any changed key
/// or value gives a different one.
pub fn checksum(settings: &BTreeMap<String, String>, secrets: &[Secret]) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    for (k, v) in settings {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    for s in secrets {
        field(s.metadata.name.as_deref().unwrap_or_default().as_bytes());
        for (k, v) in s.data.iter().flatten() {
            field(k.as_bytes());
            field(&v.0);
        }
        for (k, v) in s.string_data.iter().flatten() {
            field(k.as_bytes());
            field(v.as_bytes());
        }
    }
    let digest = h.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use chatpipe_core::config::parse_duration;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::ByteString;
    use std::time::Duration;

    fn secret(name: &str, value: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "url".to_owned(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    #[test]
    fn settings_use_the_common_env_names() {
        let cm = with_input(&spec(), config_map);
        assert_eq!(cm.metadata.name.as_deref(), Some("demo-config"));
        let d = cm.data.unwrap();
        assert_eq!(d["CHATPIPE_KAFKA_BROKERS"], "kafka:9092");
        assert_eq!(d["CHATPIPE_KAFKA_TOPIC"], "chatpipe.events");
        assert_eq!(d["CHATPIPE_LOG_FORMAT"], "json");
        assert_eq!(d["CHATPIPE_MAX_BODY_BYTES"], "65536");
        assert!(!d.contains_key("CHATPIPE_MAX_CONTENT_BYTES"));
        assert!(
            !d.contains_key("CHATPIPE_POSTGRES_URL"),
            "the URL stays in its Secret"
        );
        // The services parse the durations back to the spec's values.
        assert_eq!(
            parse_duration(&d["CHATPIPE_GROUPING_GAP"]).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(
            parse_duration(&d["CHATPIPE_LATE_TOLERANCE"]).unwrap(),
            Duration::from_secs(6)
        );
        assert_eq!(
            parse_duration(&d["CHATPIPE_WATERMARK_ALLOWANCE"]).unwrap(),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn odd_durations_survive_the_round_trip() {
        let mut s = spec();
        s.processing.grouping_gap = "1m30s".into();
        s.processing.late_arrival_tolerance = "1500ms".into();
        let d = with_input(&s, config_map).data.unwrap();
        assert_eq!(
            parse_duration(&d["CHATPIPE_GROUPING_GAP"]).unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_duration(&d["CHATPIPE_LATE_TOLERANCE"]).unwrap(),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn checksum_changes_with_settings_and_secrets() {
        let d = with_input(&spec(), |i| settings(i.pipeline));
        let base = checksum(&d, &[secret("pg", "postgres://a")]);
        assert_eq!(base.len(), 64);
        assert_eq!(base, checksum(&d, &[secret("pg", "postgres://a")]));
        assert_ne!(base, checksum(&d, &[secret("pg", "postgres://b")]));
        assert_ne!(base, checksum(&d, &[secret("pg2", "postgres://a")]));
        let mut d2 = d.clone();
        d2.insert("CHATPIPE_KAFKA_TOPIC".into(), "other".into());
        assert_ne!(base, checksum(&d2, &[secret("pg", "postgres://a")]));
    }
}
