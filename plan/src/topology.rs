//! The plan: a [`ValidatedPipeline`] becomes a [`Topology`] — the
//! components that run, each with its replica count and its binary's
//! settings, typed ([`Settings`]). Pure: no I/O.
//!
//! Everything here holds wherever the pipeline runs. What a deployment
//! decides itself is where a component runs: its listener, how it gets the
//! database URL (a Secret reference, or the URL), its logs, and a
//! processor's ordinal (the pod name, or an explicit setting). Both
//! deployments add those with [`Settings::with_service`] and
//! [`Settings::for_replica`] and write the result with
//! [`Settings::to_env`].

use chatpipe_settings::api::ApiSettings;
use chatpipe_settings::channels::{ChannelDecl, Channels};
use chatpipe_settings::common::{KafkaSaslMechanism, KafkaSettings, LogSettings, ServiceSettings};
use chatpipe_settings::delivery::DeliverySettings;
use chatpipe_settings::ingest::{IngestSettings, RateLimitClient};
use chatpipe_settings::migrate::MigrateSettings;
use chatpipe_settings::processor::ProcessorSettings;

pub use crate::component::Component;
use crate::crd::{NetworkPolicySpec, SecretKeyRef};
use crate::secrets::SecretInput;
use crate::validate::{ValidatedKafka, ValidatedPipeline};

/// A component's settings, typed by the binary that reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settings {
    /// `chatpipe-admin migrate`.
    Migrate(MigrateSettings),
    /// `chatpipe-ingest`.
    Ingest(IngestSettings),
    /// `chatpipe-processor`.
    Processor(ProcessorSettings),
    /// `chatpipe-api`.
    Api(ApiSettings),
    /// `chatpipe-delivery`.
    Delivery(DeliverySettings),
}

impl Settings {
    /// No settings for `component`: every binary default applies.
    pub fn none(component: Component) -> Self {
        match component {
            Component::Migrate => Settings::Migrate(MigrateSettings::default()),
            Component::Ingest => Settings::Ingest(IngestSettings::default()),
            Component::Processor => Settings::Processor(ProcessorSettings::default()),
            Component::Api => Settings::Api(ApiSettings::default()),
            Component::Delivery => Settings::Delivery(DeliverySettings::default()),
        }
    }

    /// The component these settings are for.
    pub fn component(&self) -> Component {
        match self {
            Settings::Migrate(_) => Component::Migrate,
            Settings::Ingest(_) => Component::Ingest,
            Settings::Processor(_) => Component::Processor,
            Settings::Api(_) => Component::Api,
            Settings::Delivery(_) => Component::Delivery,
        }
    }

    /// The environment that gives the binary these settings; unset
    /// settings are left out, so the binary's defaults apply.
    pub fn to_env(&self) -> Vec<(String, String)> {
        match self {
            Settings::Migrate(s) => s.to_env(),
            Settings::Ingest(s) => s.to_env(),
            Settings::Processor(s) => s.to_env(),
            Settings::Api(s) => s.to_env(),
            Settings::Delivery(s) => s.to_env(),
        }
    }

    /// These settings, run where `service` says: its listener, database
    /// URL and logs replace the current ones (the migration has no
    /// listener and takes the rest).
    pub fn with_service(mut self, service: ServiceSettings) -> Self {
        match &mut self {
            Settings::Migrate(s) => {
                s.postgres_url = service.postgres_url;
                s.log = service.log;
            }
            Settings::Ingest(s) => s.service = service,
            Settings::Processor(s) => s.service = service,
            Settings::Api(s) => s.service = service,
            Settings::Delivery(s) => s.service = service,
        }
        self
    }

    /// These settings with the logs replaced by `log`.
    pub fn with_log(mut self, log: LogSettings) -> Self {
        match &mut self {
            Settings::Migrate(s) => s.log = log,
            Settings::Ingest(s) => s.service.log = log,
            Settings::Processor(s) => s.service.log = log,
            Settings::Api(s) => s.service.log = log,
            Settings::Delivery(s) => s.service.log = log,
        }
        self
    }

    /// The settings of replica `ordinal`: a processor is told its ordinal
    /// (on Kubernetes it reads it from its pod name instead); the others
    /// are alike.
    pub fn for_replica(mut self, ordinal: u32) -> Self {
        if let Settings::Processor(s) = &mut self {
            s.ordinal = Some(ordinal);
        }
        self
    }
}

/// One component of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// How many copies run (the migration: one run).
    pub replicas: u32,
    /// What each copy is told.
    pub settings: Settings,
}

impl Planned {
    /// Which component.
    pub fn component(&self) -> Component {
        self.settings.component()
    }
}

/// What runs for one pipeline, wherever it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// The topic (created by the deployment) and how to reach the broker.
    pub kafka: ValidatedKafka,
    /// Where the database URL is kept.
    pub postgres_url_secret: SecretKeyRef,
    /// Every Secret key a component reads (its database URL, Kafka
    /// credentials and certificates, ingest's webhook signing secrets, the
    /// api's JWT secret), with the variable it reads it from. Each
    /// deployment hands them over its own way, never in settings.
    pub secrets: Vec<SecretInput>,
    /// NetworkPolicies to create, when enabled.
    pub network_policy: Option<NetworkPolicySpec>,
    /// The FAQ rules the processors read from a file and refresh when it
    /// changes (`{"rules":[…]}`), when any: each deployment writes the
    /// file its own way (a ConfigMap volume, a file in the state
    /// directory), and a change does not restart the processors.
    pub reply_rules: Option<String>,
    /// The messenger channels (their credentials are among `secrets`).
    pub channels: Vec<ChannelDecl>,
    components: Vec<Planned>,
}

impl Topology {
    /// Every component, in start order ([`Component::ALL`]).
    pub fn components(&self) -> &[Planned] {
        &self.components
    }

    /// The secrets `component` reads, in a stable order.
    pub fn secrets_of(&self, component: Component) -> impl Iterator<Item = &SecretInput> {
        self.secrets
            .iter()
            .filter(move |s| s.component == component)
    }

    /// The plan of `component`.
    pub fn get(&self, component: Component) -> &Planned {
        self.components
            .iter()
            .find(|p| p.component() == component)
            .unwrap_or_else(|| unreachable!("plan() plans every component; {component} missing"))
    }
}

fn replicas(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// The plan of `p`: every component with its replicas and settings.
pub fn plan(p: &ValidatedPipeline) -> Topology {
    let kafka = kafka_settings(&p.kafka);
    let usize_of = |n: u64| usize::try_from(n).ok();
    let ingest = IngestSettings {
        kafka: kafka.clone(),
        max_body_bytes: p.ingest.max_body_bytes.and_then(usize_of),
        max_content_bytes: p.ingest.max_content_bytes.and_then(usize_of),
        rate_limit: p.ingest.rate_limit.map(|r| r.per_second),
        rate_limit_burst: p.ingest.rate_limit.map(|r| r.burst),
        // Behind the pipeline's Ingress every request comes from the
        // ingress controller: the client is who it says forwarded.
        rate_limit_client: p.ingest.rate_limit.map(|_| {
            if p.ingest.ingress.is_some() {
                RateLimitClient::ForwardedFor
            } else {
                RateLimitClient::Peer
            }
        }),
        ..IngestSettings::default()
    };
    let channels = (!p.channels.is_empty())
        .then(|| Channels(p.channels.iter().map(|c| c.decl.clone()).collect()));
    let ingest = IngestSettings {
        channels: channels.clone(),
        ..ingest
    };
    let delivery = DeliverySettings {
        channels: channels.clone(),
        channel_rate: p.delivery.channel_rate,
        chat_rate: p.delivery.chat_rate,
        max_attempts: p.delivery.max_attempts,
        ..DeliverySettings::default()
    };
    let processors = replicas(p.processor.replicas);
    let processor = ProcessorSettings {
        kafka,
        grouping_gap: Some(p.grouping_gap),
        late_tolerance: Some(p.late_arrival_tolerance),
        watermark_allowance: p.watermark_allowance,
        max_group_span: p.max_group_span,
        max_group_messages: p.max_group_messages.and_then(|n| usize::try_from(n).ok()),
        max_clock_skew: p.max_clock_skew,
        replicas: Some(processors),
        // The rules file's path is the deployment's (see `reply_rules`).
        reply_template: p.replies.template.clone(),
        reply_bot_url: p.replies.bot.as_ref().map(|b| b.url.clone()),
        reply_bot_timeout: p.replies.bot.as_ref().and_then(|b| b.timeout),
        ..ProcessorSettings::default()
    };
    Topology {
        kafka: p.kafka.clone(),
        postgres_url_secret: p.postgres_url_secret.clone(),
        secrets: crate::secrets::inputs(p),
        network_policy: p.network_policy.clone(),
        reply_rules: p.replies.faq_rules_json.clone(),
        channels: p.channels.iter().map(|c| c.decl.clone()).collect(),
        components: vec![
            Planned {
                replicas: 1,
                settings: Settings::none(Component::Migrate),
            },
            Planned {
                replicas: replicas(p.ingest.component.replicas),
                settings: Settings::Ingest(ingest),
            },
            Planned {
                replicas: processors,
                settings: Settings::Processor(processor),
            },
            Planned {
                replicas: replicas(p.api.replicas),
                settings: Settings::Api(ApiSettings {
                    channels,
                    ..api_settings(p)
                }),
            },
            Planned {
                replicas: replicas(p.delivery.component.replicas),
                settings: Settings::Delivery(delivery),
            },
        ],
    }
}

/// The Kafka settings of every component that reads Kafka: the brokers,
/// the topic, and TLS and the SASL mechanism when the spec asks (the
/// certificates and credentials are secrets, see [`SecretInput`]).
fn kafka_settings(k: &ValidatedKafka) -> KafkaSettings {
    KafkaSettings {
        tls: k.tls.as_ref().map(|_| true),
        sasl_mechanism: k
            .sasl
            .as_ref()
            .and_then(|s| s.mechanism.parse::<KafkaSaslMechanism>().ok()),
        ..KafkaSettings::new(&k.bootstrap_servers, &k.topic)
    }
}

/// The api's settings: token lifetimes and the OpenID Connect issuer when
/// `spec.api.auth` sets them (the signing secret is a [`SecretInput`]).
fn api_settings(p: &ValidatedPipeline) -> ApiSettings {
    let Some(auth) = &p.api_auth else {
        return ApiSettings::default();
    };
    ApiSettings {
        access_token_ttl: auth.access_token_ttl,
        refresh_token_ttl: auth.refresh_token_ttl,
        oidc_issuer: auth.oidc.as_ref().map(|o| o.issuer.clone()),
        oidc_jwks_url: auth.oidc.as_ref().and_then(|o| o.jwks_url.clone()),
        oidc_audience: auth.oidc.as_ref().and_then(|o| o.audience.clone()),
        ..ApiSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::crd::ChatPipelineSpec;
    use crate::validate::validate;

    fn spec(processing: &str, ingest: &str) -> ChatPipelineSpec {
        serde_yaml::from_str(&format!(
            r#"
image: chatpipe:dev
kafka: {{ bootstrapServers: "k:9092", partitions: 4 }}
postgres: {{ urlSecret: {{ name: pg, key: url }} }}
processing: {{ {processing} }}
ingest: {{ replicas: 2{ingest} }}
processor: {{ replicas: 3 }}
api: {{ replicas: 1 }}
"#
        ))
        .unwrap()
    }

    fn topology(processing: &str, ingest: &str) -> Topology {
        plan(&validate(&spec(processing, ingest)).unwrap())
    }

    fn env(t: &Topology, c: Component) -> Vec<(String, String)> {
        t.get(c).settings.to_env()
    }

    #[test]
    fn every_component_is_planned_in_start_order() {
        let t = topology("", "");
        let got: Vec<(Component, u32)> = t
            .components()
            .iter()
            .map(|p| (p.component(), p.replicas))
            .collect();
        assert_eq!(
            got,
            [
                (Component::Migrate, 1),
                (Component::Ingest, 2),
                (Component::Processor, 3),
                (Component::Api, 1),
                (Component::Delivery, 0)
            ]
        );
        assert_eq!(t.kafka.partitions, 4);
        assert_eq!(t.postgres_url_secret.name, "pg");
        assert!(t
            .secrets_of(Component::Ingest)
            .all(|s| s.field == "spec.postgres.urlSecret"));
    }

    #[test]
    fn the_auth_secret_is_carried_and_stays_out_of_the_settings() {
        let t = topology("", ", auth: { secretRef: { name: wh, key: secrets } }");
        let secrets_env = chatpipe_settings::ingest::webhook_secrets_env();
        let wh: Vec<_> = t.secrets.iter().filter(|s| s.env == secrets_env).collect();
        assert_eq!(wh.len(), 1, "{wh:?}");
        assert_eq!(wh[0].component, Component::Ingest);
        assert_eq!(
            wh[0].secret,
            SecretKeyRef {
                name: "wh".into(),
                key: "secrets".into()
            }
        );
        for c in Component::ALL {
            assert!(
                env(&t, c).iter().all(|(k, _)| *k != secrets_env),
                "{c}: the secrets never go into settings (ConfigMaps)"
            );
        }
    }

    #[test]
    fn the_spec_reaches_the_settings_of_its_readers_only() {
        let t = topology(
            "groupingGap: 1m30s, maxGroupMessages: 7, maxClockSkew: 0s",
            ", maxBodyBytes: 65536",
        );
        let Settings::Processor(p) = &t.get(Component::Processor).settings else {
            panic!("processor settings expected");
        };
        assert_eq!(p.grouping_gap, Some(Duration::from_secs(90)));
        assert_eq!(
            p.late_tolerance,
            Some(Duration::from_secs(6)),
            "the default L"
        );
        assert_eq!(p.max_group_messages, Some(7));
        assert_eq!(p.max_clock_skew, Some(Duration::ZERO));
        assert_eq!((p.max_group_span, p.watermark_allowance), (None, None));
        assert_eq!(p.replicas, Some(3));
        assert_eq!(p.ordinal, None, "per replica, set by the deployment");
        let Settings::Ingest(i) = &t.get(Component::Ingest).settings else {
            panic!("ingest settings expected");
        };
        assert_eq!(i.max_body_bytes, Some(65536));
        assert_eq!(i.max_content_bytes, None);
        assert_eq!(i.kafka, KafkaSettings::new("k:9092", "chatpipe.events"));
        assert!(
            env(&t, Component::Api).is_empty(),
            "nothing but where it runs"
        );
        assert!(env(&t, Component::Migrate).is_empty());
    }

    #[test]
    fn deployments_add_where_it_runs() {
        let t = topology("", "");
        let service = ServiceSettings {
            listen: Some("127.0.0.1:8090".parse().unwrap()),
            postgres_url: Some("postgres://x".into()),
            log: LogSettings::json_info(),
        };
        let s = t
            .get(Component::Processor)
            .settings
            .clone()
            .with_service(service.clone())
            .for_replica(2);
        let Settings::Processor(p) = &s else {
            panic!("processor settings expected");
        };
        assert_eq!(p.service, service);
        assert_eq!(p.ordinal, Some(2));
        assert_eq!(
            p.grouping_gap,
            Some(Duration::from_secs(5)),
            "the plan's stay"
        );
        let m = t
            .get(Component::Migrate)
            .settings
            .clone()
            .with_service(service)
            .for_replica(0);
        assert_eq!(
            m,
            Settings::Migrate(MigrateSettings {
                postgres_url: Some("postgres://x".into()),
                log: LogSettings::json_info(),
            })
        );
        let a = t
            .get(Component::Api)
            .settings
            .clone()
            .with_log(LogSettings::json_info());
        assert_eq!(a.to_env().len(), 2);
    }

    #[test]
    fn channels_plan_a_delivery_replica_and_reach_ingest_delivery_and_api() {
        let spec: ChatPipelineSpec = serde_yaml::from_str(
            r#"
image: chatpipe:dev
kafka: { bootstrapServers: "k:9092", partitions: 4 }
postgres: { urlSecret: { name: pg, key: url } }
ingest: { replicas: 1 }
processor: { replicas: 1 }
api: { replicas: 1 }
channels:
  - { name: support-tg, type: telegram, credentialsSecretRef: { name: tg } }
  - { name: sms, type: twilio, credentialsSecretRef: { name: tw }, apiBaseUrl: "http://127.0.0.1:9000" }
delivery: { chatRate: 2 }
replies:
  template: "Got {{ count }}"
  faq: [ { keyword: price, answer: "Free." }, { regex: "(?i)hours?", answer: "9-5" } ]
  bot: { url: "http://bot:8000/answer", timeout: 1500ms }
"#,
        )
        .unwrap();
        let t = plan(&validate(&spec).unwrap());
        assert_eq!(t.get(Component::Delivery).replicas, 1);
        let channels = r#"[{"name":"support-tg","type":"telegram"},{"name":"sms","type":"twilio","apiBaseUrl":"http://127.0.0.1:9000"}]"#;
        for c in [Component::Ingest, Component::Api, Component::Delivery] {
            assert!(
                env(&t, c).contains(&("CHATPIPE_CHANNELS".to_owned(), channels.to_owned())),
                "{c}: {:?}",
                env(&t, c)
            );
        }
        assert!(env(&t, Component::Processor)
            .iter()
            .all(|(k, _)| k != "CHATPIPE_CHANNELS"));
        let d = env(&t, Component::Delivery);
        assert!(d.contains(&("CHATPIPE_DELIVERY_CHAT_RATE".to_owned(), "2".to_owned())));
        let p = env(&t, Component::Processor);
        assert!(p.contains(&(
            "CHATPIPE_REPLY_TEMPLATE".to_owned(),
            "Got {{ count }}".to_owned()
        )));
        assert!(p.contains(&(
            "CHATPIPE_REPLY_BOT_URL".to_owned(),
            "http://bot:8000/answer".to_owned()
        )));
        assert!(p.contains(&(
            "CHATPIPE_REPLY_BOT_TIMEOUT".to_owned(),
            "1s 500ms".to_owned()
        )));
        let rules: serde_json::Value =
            serde_json::from_str(t.reply_rules.as_deref().unwrap()).unwrap();
        assert_eq!(
            rules,
            serde_json::json!({"rules": [
                {"keyword": "price", "answer": "Free."},
                {"regex": "(?i)hours?", "answer": "9-5"}
            ]})
        );
        // The rules file's path is the deployment's.
        assert!(p.iter().all(|(k, _)| k != "CHATPIPE_REPLY_RULES_FILE"));
    }

    #[test]
    fn bad_channels_and_replies_are_refused_with_their_fields() {
        let spec: ChatPipelineSpec = serde_yaml::from_str(
            r#"
image: chatpipe:dev
kafka: { bootstrapServers: "k:9092", partitions: 4 }
postgres: { urlSecret: { name: pg, key: url } }
ingest: { replicas: 1 }
processor: { replicas: 1 }
api: { replicas: 1 }
channels:
  - { name: Bad_Name, type: telegram, credentialsSecretRef: { name: tg } }
  - { name: a, type: signal, credentialsSecretRef: { name: "" } }
  - { name: b, type: twilio, credentialsSecretRef: { name: tw }, apiBaseUrl: "ftp://x" }
  - { name: b, type: twilio, credentialsSecretRef: { name: tw } }
delivery: { replicas: -1, channelRate: 0 }
replies:
  faq: [ { regex: "(", answer: "x" }, { answer: "y" }, { keyword: k, answer: "" } ]
  bot: { url: "bot:8000", timeout: 0s }
"#,
        )
        .unwrap();
        let fields: Vec<String> = validate(&spec)
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect();
        for f in [
            "spec.channels[0].name",
            "spec.channels[1].type",
            "spec.channels[1].credentialsSecretRef.name",
            "spec.channels[2].apiBaseUrl",
            "spec.channels[3].name",
            "spec.delivery.replicas",
            "spec.delivery.channelRate",
            "spec.replies.faq[0].regex",
            "spec.replies.faq[1].keyword",
            "spec.replies.faq[2].answer",
            "spec.replies.bot.url",
            "spec.replies.bot.timeout",
        ] {
            assert!(fields.iter().any(|x| x == f), "{f} not in {fields:?}");
        }
    }
}
