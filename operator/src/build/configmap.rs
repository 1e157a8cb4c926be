//! The ConfigMaps the chatpipe pods read through `envFrom` — one per
//! component (`<name>-ingest-config`, `<name>-processor-config`,
//! `<name>-api-config`, `<name>-delivery-config`), each holding only the
//! settings that component reads — and the per-component checksums that go
//! on the pod templates.
//!
//! A component's checksum covers its own settings and the Secrets it reads,
//! nothing else: a processor-only setting (the grouping gap) rolls the
//! processors only, and the Kafka credentials (which the api never reads)
//! do not roll the api. A channel's credentials enter the checksums of
//! the components that read them (ingest its verification keys, delivery
//! its sending keys, [`chatpipe_plan::Topology::secrets`]), so rotating a
//! bot token rolls delivery only. The FAQ reply rules are not a setting:
//! the processor's ConfigMap only names their file
//! ([`super::replies::RULES_FILE`]), and the processors re-read it, so a
//! rules change rolls nothing.
//!
//! The data is the plan's settings of the component, written by their
//! `to_env()` (every name comes from the binary's clap definition; unset
//! settings are not written, so the binary's default applies), with JSON
//! logs at `info`.

use std::collections::BTreeMap;

use chatpipe_plan::{Settings, Topology};
use chatpipe_settings::common::LogSettings;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use sha2::{Digest, Sha256};

use super::labels::{self, Component};
use super::BuildInput;
use crate::crd::SecretKeyRef;

/// The workloads that read a ConfigMap, in apply order.
pub const WORKLOADS: [Component; 4] = Component::SERVICES;

/// The environment `component` reads from its ConfigMap: its planned
/// settings with JSON logs. The processor count is not among them: it is
/// on the StatefulSet's pod template ([`super::statefulset`]), which a
/// scale changes anyway. When the plan has FAQ reply rules the processors
/// read them from [`super::replies::RULES_FILE`] (the path only: the rules
/// themselves are in their own ConfigMap).
pub fn settings(topology: &Topology, component: Component) -> BTreeMap<String, String> {
    let mut settings = topology
        .get(component)
        .settings
        .clone()
        .with_log(LogSettings::json_info());
    if let Settings::Processor(p) = &mut settings {
        p.replicas = None;
        p.reply_rules_file = topology
            .reply_rules
            .as_ref()
            .map(|_| super::replies::RULES_FILE.to_owned());
    }
    settings.to_env().into_iter().collect()
}

/// The ConfigMap `<name>-<component>-config`.
pub fn config_map(input: &BuildInput<'_>, component: Component) -> ConfigMap {
    ConfigMap {
        metadata: input.meta(labels::config_map_name(input.name, component), component),
        data: Some(settings(input.topology, component)),
        ..ConfigMap::default()
    }
}

/// The data of the Secrets the pods reference, as read by the controller.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReferencedSecrets {
    /// Every Secret key of the plan ([`Topology::secrets`]), each as its
    /// Secret reduced to that one key.
    pub keys: BTreeMap<SecretKeyRef, Secret>,
    /// The Kafka credentials Secret (every key is handed to the pods), when
    /// the spec names one.
    pub kafka: Option<Secret>,
}

/// The checksums on the pod templates, one per component: a service's
/// covers its settings and the Secret keys it reads (its Postgres URL,
/// Kafka credentials and certificates when it reads Kafka, ingest's webhook
/// signing secrets and channel verification keys, delivery's channel
/// sending keys, the processor's reply bot token, the api's JWT secret: a
/// rotation rolls only the readers); the migration's covers the Postgres
/// URL alone (which database the Job migrates). The FAQ reply rules are in
/// none of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checksums(BTreeMap<Component, String>);

impl Checksums {
    /// The same value for every component (test fixtures).
    pub fn all(value: &str) -> Self {
        Self(
            Component::ALL
                .iter()
                .map(|c| (*c, value.to_owned()))
                .collect(),
        )
    }

    /// These checksums with `component`'s replaced by `value`.
    pub fn with(mut self, component: Component, value: &str) -> Self {
        self.0.insert(component, value.to_owned());
        self
    }

    /// The checksum of `component`'s pod template (empty when unknown).
    pub fn of(&self, component: Component) -> &str {
        self.0.get(&component).map_or("", String::as_str)
    }
}

/// Every checksum of the plan `topology` given the referenced Secrets.
pub fn checksums(topology: &Topology, secrets: &ReferencedSecrets) -> Checksums {
    let of = |component: Component| {
        let mut read: Vec<&Secret> = topology
            .secrets_of(component)
            .filter_map(|s| secrets.keys.get(&s.secret))
            .collect();
        if component.reads_kafka() {
            read.extend(secrets.kafka.as_ref());
        }
        let settings = match component {
            Component::Migrate => BTreeMap::new(),
            _ => settings(topology, component),
        };
        (component, checksum(&settings, &read))
    };
    Checksums(Component::ALL.iter().map(|c| of(*c)).collect())
}

/// SHA-256 (hex) over `settings` and the data of `secrets`, in a canonical
/// order: equal inputs give equal checksums, any changed key or value gives
/// a different one.
pub fn checksum(settings: &BTreeMap<String, String>, secrets: &[&Secret]) -> String {
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

    fn secret(name: &str, key: &str, value: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                key.to_owned(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    fn key(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    fn secrets(url: &str, kafka_password: &str) -> ReferencedSecrets {
        ReferencedSecrets {
            keys: BTreeMap::from([
                (key("pg", "url"), secret("pg", "url", url)),
                (
                    key("webhooks", "secrets"),
                    secret("webhooks", "secrets", "whsec_AAAA"),
                ),
            ]),
            kafka: Some(secret("kafka-creds", "password", kafka_password)),
        }
    }

    fn sums(spec: &crate::crd::ChatPipelineSpec, s: &ReferencedSecrets) -> Checksums {
        super::checksums(
            &chatpipe_plan::plan(&crate::validate::validate(spec).unwrap()),
            s,
        )
    }

    #[test]
    fn each_component_gets_its_own_settings() {
        let ingest = with_input(&spec(), |i| config_map(i, Component::Ingest));
        assert_eq!(ingest.metadata.name.as_deref(), Some("demo-ingest-config"));
        let d = ingest.data.unwrap();
        assert_eq!(d["CHATPIPE_KAFKA_BROKERS"], "kafka:9092");
        assert_eq!(d["CHATPIPE_KAFKA_TOPIC"], "chatpipe.events");
        assert_eq!(d["CHATPIPE_LOG_FORMAT"], "json");
        assert_eq!(d["CHATPIPE_MAX_BODY_BYTES"], "65536");
        assert!(!d.contains_key("CHATPIPE_MAX_CONTENT_BYTES"));
        assert!(!d.contains_key("CHATPIPE_GROUPING_GAP"), "processor only");
        assert!(
            !d.contains_key("CHATPIPE_POSTGRES_URL"),
            "the URL stays in its Secret"
        );

        let d = with_input(&spec(), |i| config_map(i, Component::Processor))
            .data
            .unwrap();
        assert_eq!(d["CHATPIPE_KAFKA_TOPIC"], "chatpipe.events");
        assert!(!d.contains_key("CHATPIPE_MAX_BODY_BYTES"), "ingest only");
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

        let d = with_input(&spec(), |i| config_map(i, Component::Api))
            .data
            .unwrap();
        assert_eq!(
            d.keys().map(String::as_str).collect::<Vec<_>>(),
            ["CHATPIPE_LOG", "CHATPIPE_LOG_FORMAT"],
            "the api reads neither Kafka nor the windows"
        );
    }

    #[test]
    fn group_limits_go_to_the_processor_only() {
        let mut s = spec();
        s.processing.max_group_span = Some("1m30s".into());
        s.processing.max_group_messages = Some(250);
        s.processing.max_clock_skew = Some("1500ms".into());
        let d = with_input(&s, |i| config_map(i, Component::Processor))
            .data
            .unwrap();
        assert_eq!(
            parse_duration(&d["CHATPIPE_MAX_GROUP_SPAN"]).unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(d["CHATPIPE_MAX_GROUP_MESSAGES"], "250");
        assert_eq!(
            parse_duration(&d["CHATPIPE_MAX_CLOCK_SKEW"]).unwrap(),
            Duration::from_millis(1500)
        );
        for c in [Component::Ingest, Component::Api] {
            let d = with_input(&s, |i| config_map(i, c)).data.unwrap();
            for k in [
                "CHATPIPE_MAX_GROUP_SPAN",
                "CHATPIPE_MAX_GROUP_MESSAGES",
                "CHATPIPE_MAX_CLOCK_SKEW",
            ] {
                assert!(!d.contains_key(k), "{k} in {c:?}'s settings");
            }
        }
        // Zero skew is a setting of its own, not "unset".
        s.processing.max_clock_skew = Some("0s".into());
        let d = with_input(&s, |i| config_map(i, Component::Processor))
            .data
            .unwrap();
        assert_eq!(
            parse_duration(&d["CHATPIPE_MAX_CLOCK_SKEW"]).unwrap(),
            Duration::ZERO
        );
    }

    #[test]
    fn unset_group_limits_are_not_written() {
        let d = with_input(&spec(), |i| config_map(i, Component::Processor))
            .data
            .unwrap();
        for k in [
            "CHATPIPE_MAX_GROUP_SPAN",
            "CHATPIPE_MAX_GROUP_MESSAGES",
            "CHATPIPE_MAX_CLOCK_SKEW",
        ] {
            assert!(!d.contains_key(k), "{k}: the processor's default applies");
        }
    }

    #[test]
    fn odd_durations_survive_the_round_trip() {
        let mut s = spec();
        s.processing.grouping_gap = "1m30s".into();
        s.processing.late_arrival_tolerance = "1500ms".into();
        s.processing.max_group_span = Some("1.5h".into());
        let d = with_input(&s, |i| config_map(i, Component::Processor))
            .data
            .unwrap();
        assert_eq!(
            parse_duration(&d["CHATPIPE_GROUPING_GAP"]).unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_duration(&d["CHATPIPE_LATE_TOLERANCE"]).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            parse_duration(&d["CHATPIPE_MAX_GROUP_SPAN"]).unwrap(),
            Duration::from_secs(5400)
        );
    }

    #[test]
    fn checksum_changes_with_settings_and_secrets() {
        let d = with_input(&spec(), |i| settings(i.topology, Component::Ingest));
        let pg = secret("pg", "url", "postgres://a");
        let base = checksum(&d, &[&pg]);
        assert_eq!(base.len(), 64);
        assert_eq!(base, checksum(&d, &[&secret("pg", "url", "postgres://a")]));
        assert_ne!(base, checksum(&d, &[&secret("pg", "url", "postgres://b")]));
        assert_ne!(base, checksum(&d, &[&secret("pg2", "url", "postgres://a")]));
        let mut d2 = d.clone();
        d2.insert("CHATPIPE_KAFKA_TOPIC".into(), "other".into());
        assert_ne!(base, checksum(&d2, &[&pg]));
    }

    /// Defect: every config change rolled every pod. A processor-only
    /// setting now changes the processor's checksum alone.
    #[test]
    fn processor_settings_roll_only_the_processors() {
        let s0 = secrets("postgres://a", "p1");
        let base = sums(&spec(), &s0);
        for change in [
            (|s: &mut crate::crd::ChatPipelineSpec| s.processing.grouping_gap = "3s".into())
                as fn(&mut crate::crd::ChatPipelineSpec),
            |s| s.processing.late_arrival_tolerance = "9s".into(),
            |s| s.processing.watermark_allowance = Some("1s".into()),
            |s| s.processing.max_group_span = Some("30s".into()),
            |s| s.processing.max_group_messages = Some(7),
            |s| s.processing.max_clock_skew = Some("1s".into()),
        ] {
            let mut s = spec();
            change(&mut s);
            let next = sums(&s, &s0);
            assert_ne!(next.of(Component::Processor), base.of(Component::Processor));
            assert_eq!(
                next.of(Component::Ingest),
                base.of(Component::Ingest),
                "ingest must not roll"
            );
            assert_eq!(
                next.of(Component::Api),
                base.of(Component::Api),
                "api must not roll"
            );
            assert_eq!(next.of(Component::Migrate), base.of(Component::Migrate));
        }
        // An ingest-only setting rolls ingest only.
        let mut s = spec();
        s.ingest.max_content_bytes = Some(1024);
        let next = sums(&s, &s0);
        assert_ne!(next.of(Component::Ingest), base.of(Component::Ingest));
        assert_eq!(next.of(Component::Processor), base.of(Component::Processor));
        assert_eq!(next.of(Component::Api), base.of(Component::Api));
    }

    /// Rotating the webhook signing secrets rolls ingest only, and the
    /// secrets never reach a ConfigMap.
    #[test]
    fn webhook_secrets_roll_only_ingest() {
        let s0 = secrets("postgres://a", "p1");
        let base = sums(&spec(), &s0);
        let mut rotated = s0.clone();
        rotated.keys.insert(
            key("webhooks", "secrets"),
            secret("webhooks", "secrets", "whsec_BBBB whsec_AAAA"),
        );
        let next = sums(&spec(), &rotated);
        assert_ne!(next.of(Component::Ingest), base.of(Component::Ingest));
        for c in [Component::Processor, Component::Api, Component::Migrate] {
            assert_eq!(next.of(c), base.of(c), "{c} must not roll");
        }
        let mut unauthenticated = spec();
        unauthenticated.ingest.auth = None;
        unauthenticated.ingest.allow_unauthenticated = true;
        let without = sums(&unauthenticated, &s0);
        assert_ne!(without.of(Component::Ingest), base.of(Component::Ingest));
        let env = chatpipe_settings::ingest::webhook_secrets_env();
        for c in WORKLOADS {
            let d = with_input(&spec(), |i| config_map(i, c)).data.unwrap();
            assert!(!d.contains_key(&env), "{c}: secrets stay in their Secret");
            assert!(
                !d.values().any(|v| v.contains("whsec_")),
                "{c}: no secret value in a ConfigMap"
            );
        }
    }

    /// [`secrets`] plus the two channels' Secrets of [`with_channels`].
    fn channel_secrets(bot_token: &str, secret_token: &str, auth_token: &str) -> ReferencedSecrets {
        let mut s = secrets("postgres://a", "p1");
        for (name, k, v) in [
            ("tg-creds", "botToken", bot_token),
            ("tg-creds", "secretToken", secret_token),
            ("twilio-creds", "accountSid", "AC123"),
            ("twilio-creds", "authToken", auth_token),
            ("twilio-creds", "from", "+15550001111"),
        ] {
            s.keys.insert(key(name, k), secret(name, k, v));
        }
        s
    }

    #[test]
    fn delivery_gets_the_channels_and_its_limits() {
        let mut s = with_channels();
        s.delivery =
            Some(serde_yaml::from_str("{ channelRate: 20, chatRate: 2, maxAttempts: 4 }").unwrap());
        let cm = with_input(&s, |i| config_map(i, Component::Delivery));
        assert_eq!(cm.metadata.name.as_deref(), Some("demo-delivery-config"));
        assert_eq!(
            cm.metadata.labels,
            Some(labels::labels("demo", Component::Delivery))
        );
        let d = cm.data.unwrap();
        let channels: serde_json::Value = serde_json::from_str(&d["CHATPIPE_CHANNELS"]).unwrap();
        assert_eq!(channels[0]["name"], "tg");
        assert_eq!(channels[0]["type"], "telegram");
        assert_eq!(channels[1]["apiBaseUrl"], "http://twilio.test");
        assert_eq!(d["CHATPIPE_DELIVERY_CHANNEL_RATE"], "20");
        assert_eq!(d["CHATPIPE_DELIVERY_CHAT_RATE"], "2");
        assert_eq!(d["CHATPIPE_DELIVERY_MAX_ATTEMPTS"], "4");
        assert_eq!(d["CHATPIPE_LOG_FORMAT"], "json");
        assert!(!d.contains_key("CHATPIPE_KAFKA_BROKERS"), "no Kafka");
        // Ingest learns the channels too (it verifies their webhooks).
        let d = with_input(&s, |i| config_map(i, Component::Ingest))
            .data
            .unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&d["CHATPIPE_CHANNELS"]).unwrap(),
            channels
        );
        // No credential ever lands in a ConfigMap.
        for c in WORKLOADS {
            let d = with_input(&s, |i| config_map(i, c)).data.unwrap();
            assert!(
                !d.keys().any(|k| k.starts_with("CHATPIPE_CHANNEL_")),
                "{c}: credentials stay in their Secret"
            );
        }
        // Without channels there is nothing to deliver through.
        let d = with_input(&spec(), |i| config_map(i, Component::Delivery))
            .data
            .unwrap();
        assert!(!d.contains_key("CHATPIPE_CHANNELS"));
    }

    /// Rotating a key rolls exactly the components that read it: the bot
    /// token delivery, the webhook secret token ingest, the Twilio auth
    /// token (used by both) both; never the processors or the api.
    #[test]
    fn channel_credentials_roll_only_their_readers() {
        let sums = |s: &ReferencedSecrets| sums(&with_channels(), s);
        let base = sums(&channel_secrets("bot-1", "wh-1", "auth-1"));
        let bot = sums(&channel_secrets("bot-2", "wh-1", "auth-1"));
        let hook = sums(&channel_secrets("bot-1", "wh-2", "auth-1"));
        let auth = sums(&channel_secrets("bot-1", "wh-1", "auth-2"));
        let changed = |next: &Checksums| -> Vec<Component> {
            Component::ALL
                .into_iter()
                .filter(|c| next.of(*c) != base.of(*c))
                .collect()
        };
        assert_eq!(changed(&bot), [Component::Delivery]);
        assert_eq!(changed(&hook), [Component::Ingest]);
        assert_eq!(changed(&auth), [Component::Ingest, Component::Delivery]);
    }

    #[test]
    fn the_processors_read_the_rules_file_only_when_there_are_rules() {
        let d = with_input(&with_rules(), |i| config_map(i, Component::Processor))
            .data
            .unwrap();
        assert_eq!(
            d["CHATPIPE_REPLY_RULES_FILE"],
            "/etc/chatpipe/replies/rules.json"
        );
        assert!(
            !d.values().any(|v| v.contains("It costs 10.")),
            "the rules are in their own ConfigMap"
        );
        let d = with_input(&spec(), |i| config_map(i, Component::Processor))
            .data
            .unwrap();
        assert!(!d.contains_key("CHATPIPE_REPLY_RULES_FILE"));
        for c in [Component::Ingest, Component::Api, Component::Delivery] {
            let d = with_input(&with_rules(), |i| config_map(i, c))
                .data
                .unwrap();
            assert!(!d.contains_key("CHATPIPE_REPLY_RULES_FILE"), "{c}");
        }
    }

    /// Editing the FAQ rules rolls no pod (the processors re-read the
    /// file); the template and the bot are settings and roll the
    /// processors (only).
    #[test]
    fn rules_changes_roll_nothing_but_the_template_rolls_the_processors() {
        let s0 = secrets("postgres://a", "p1");
        let base = sums(&with_rules(), &s0);
        let mut edited = with_rules();
        let replies = edited.replies.as_mut().unwrap();
        replies.faq[0].answer = "It costs 12.".into();
        replies
            .faq
            .push(serde_yaml::from_str("{ keyword: refund, answer: No. }").unwrap());
        assert_ne!(
            with_input(&edited, |i| i.topology.reply_rules.clone()),
            with_input(&with_rules(), |i| i.topology.reply_rules.clone()),
            "the rules did change"
        );
        assert_eq!(sums(&edited, &s0), base, "a rules edit rolls nothing");

        for change in [
            (|r: &mut crate::crd::RepliesSpec| r.template = Some("Got {{ count }}".into()))
                as fn(&mut crate::crd::RepliesSpec),
            |r| {
                r.bot = Some(
                    serde_yaml::from_str("{ url: 'http://bot.chat:8000/answer', timeout: 3s }")
                        .unwrap(),
                )
            },
        ] {
            let mut s = with_rules();
            change(s.replies.as_mut().unwrap());
            let next = sums(&s, &s0);
            assert_ne!(next.of(Component::Processor), base.of(Component::Processor));
            for c in [
                Component::Ingest,
                Component::Api,
                Component::Delivery,
                Component::Migrate,
            ] {
                assert_eq!(next.of(c), base.of(c), "{c} must not roll");
            }
        }
    }

    /// Secrets a component does not read stay out of its checksum.
    #[test]
    fn secrets_enter_only_the_checksums_of_their_readers() {
        let base = sums(&spec(), &secrets("postgres://a", "p1"));
        let kafka = sums(&spec(), &secrets("postgres://a", "p2"));
        assert_ne!(kafka.of(Component::Ingest), base.of(Component::Ingest));
        assert_ne!(
            kafka.of(Component::Processor),
            base.of(Component::Processor)
        );
        assert_eq!(
            kafka.of(Component::Api),
            base.of(Component::Api),
            "the api never reads Kafka credentials"
        );
        assert_eq!(kafka.of(Component::Migrate), base.of(Component::Migrate));
        let pg = sums(&spec(), &secrets("postgres://b", "p1"));
        for (a, b) in [
            (pg.of(Component::Ingest), base.of(Component::Ingest)),
            (pg.of(Component::Processor), base.of(Component::Processor)),
            (pg.of(Component::Api), base.of(Component::Api)),
            (pg.of(Component::Migrate), base.of(Component::Migrate)),
        ] {
            assert_ne!(a, b, "everyone reads the database URL");
        }
    }
}
