//! The `ChatPipeline` custom resource (`chatpipe.dev/v1alpha1`): its spec,
//! its status, and the server-side CEL rules (`x-kubernetes-validations`)
//! the API server enforces before the operator ever sees an object.
//!
//! The CRD yaml in `crds/chatpipeline.yaml` is generated from these types
//! (`chatpipe-operator crdgen`); a test fails when the two drift apart.
//! Everything that the API server cannot check is checked once by
//! [`crate::validate::validate`].

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the resource.
pub const GROUP: &str = "chatpipe.dev";
/// API version of the resource.
pub const VERSION: &str = "v1alpha1";
/// Annotation that pauses reconciliation when set to `"true"`: the operator
/// then only refreshes the status and touches nothing else.
pub const PAUSED_ANNOTATION: &str = "chatpipe.dev/paused";
/// Default Kafka topic.
pub const DEFAULT_TOPIC: &str = "chatpipe.events";
/// Default grouping gap and late-arrival tolerance: the processor's own
/// flag defaults (`5s`, `6s`), which read the same as Go durations.
pub use chatpipe_settings::processor::{DEFAULT_GROUPING_GAP, DEFAULT_LATE_TOLERANCE};
/// Image pull policies Kubernetes accepts (the `enum` of `spec.imagePullPolicy`).
pub const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
/// The one duration grammar of the resource: Go's `time.ParseDuration`
/// syntax, which is also what CEL's `duration()` on the API server reads.
/// An optional sign, then either `0` or a sequence of decimal numbers (with
/// an optional fraction) each followed by a unit (`ns`, `us`, `µs`, `ms`,
/// `s`, `m`, `h`); no spaces. [`crate::validate::parse_go_duration`]
/// implements the same grammar (including Go's overflow limit of about
/// 2562047h, which a pattern cannot express).
pub const GO_DURATION_PATTERN: &str =
    r"^[-+]?(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$";

/// Desired state of a chatpipe deployment: the image, where Kafka and
/// Postgres are, the processing windows, and each component's size.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "chatpipe.dev",
    version = "v1alpha1",
    kind = "ChatPipeline",
    namespaced,
    shortname = "cp",
    status = "ChatPipelineStatus",
    scale(
        spec_replicas_path = ".spec.processor.replicas",
        status_replicas_path = ".status.processor.currentReplicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every component is ready"
    ),
    printcolumn(
        name = "Partitions",
        type_ = "integer",
        json_path = ".spec.kafka.partitions",
        description = "Partitions of the event topic"
    ),
    printcolumn(
        name = "Processors",
        type_ = "integer",
        json_path = ".status.processor.readyReplicas",
        description = "Ready processor pods"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "A chatpipe deployment: ingest, processor and api over one Kafka topic and one Postgres database.",
    validation = Rule::new("size(self.metadata.name) <= 40")
        .message("metadata.name must be at most 40 characters (object names get suffixes)")
)]
#[x_kube(validation = Rule::new("self.processor.replicas <= self.kafka.partitions")
    .message("processor.replicas must not exceed kafka.partitions")
    .field_path(".processor.replicas"))]
#[serde(rename_all = "camelCase")]
pub struct ChatPipelineSpec {
    /// Container image holding every chatpipe binary.
    #[x_kube(validation = Rule::new("self != ''").message("image must not be empty"))]
    pub image: String,
    /// Image pull policy (`Always`, `IfNotPresent`, `Never`); the Kubernetes
    /// default applies when unset.
    ///
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "pull_policy_schema")]
    pub image_pull_policy: Option<String>,
    /// The Kafka topic that carries webhook events.
    pub kafka: KafkaSpec,
    /// The Postgres database.
    pub postgres: PostgresSpec,
    /// Windowing settings of the processor. Durations are Go durations:
    /// numbers with units `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`, written
    /// without spaces (`5s`, `250ms`, `1m30s`, `1.5h`).
    #[serde(default)]
    pub processing: ProcessingSpec,
    /// The webhook receiver.
    pub ingest: IngestSpec,
    /// The stateful processors.
    pub processor: ProcessorSpec,
    /// The query API.
    pub api: ApiSpec,
    /// NetworkPolicies around the pipeline's pods (off when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
    /// Messenger channels (Telegram, WhatsApp Cloud, Twilio): contacts
    /// write through them (`POST /channels/{name}/webhook` on ingest) and
    /// every OUTBOUND message of their conversations is delivered back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(c, self.exists_one(d, d.name == c.name))")
        .message("channel names must be unique"))]
    #[schemars(length(max = 32))]
    pub channels: Vec<ChannelSpec>,
    /// The delivery component (a Deployment) that sends the outbox of
    /// channel messages. Defaults to one replica when channels are
    /// declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    /// How the automatic reply is written (the original receipt text when
    /// unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replies: Option<RepliesSpec>,
}

/// A messenger channel.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChannelSpec {
    /// Unique name; part of the webhook path `/channels/{name}/webhook`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The provider: `telegram`, `whatsappCloud` or `twilio`.
    #[serde(rename = "type")]
    #[schemars(schema_with = "channel_type_schema")]
    pub kind: String,
    /// The Secret holding the channel's credentials: telegram `botToken`,
    /// `secretToken`; whatsappCloud `accessToken`, `appSecret`,
    /// `verifyToken`, `phoneNumberId`; twilio `accountSid`, `authToken`,
    /// `from`.
    pub credentials_secret_ref: SecretRef,
    /// The provider's address (default `https://api.telegram.org`,
    /// `https://graph.facebook.com`, `https://api.twilio.com`): how tests
    /// and air-gapped installations point at another server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')")
        .message("apiBaseUrl must be an http:// or https:// address"))]
    pub api_base_url: Option<String>,
    /// The exact public URL the provider calls, when a proxy rewrites it
    /// (Twilio signs the URL it called); default: rebuilt from the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')")
        .message("webhookUrl must be an http:// or https:// address"))]
    pub webhook_url: Option<String>,
}

fn channel_type_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["telegram", "whatsappCloud", "twilio"]
    })
}

/// A Secret, by name (in the pipeline's namespace).
#[derive(
    JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// The Secret's name.
    pub name: String,
}

/// The delivery component.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// Number of pods (default 1 when channels are declared, else 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Secret key with the delivery component's own Postgres URL;
    /// `postgres.urlSecret` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_url_secret: Option<SecretKeyRef>,
    /// Messages per second through one channel (default 30, Telegram's
    /// limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub channel_rate: Option<i32>,
    /// Messages per second to one chat (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub chat_rate: Option<i32>,
    /// Provider calls before a failing delivery is given up (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_attempts: Option<i32>,
}

/// How the automatic reply to a group is written: an external bot first
/// (when set), then the first FAQ rule that matches, then the template.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RepliesSpec {
    /// A minijinja template with `ids`, `messages` and `count` (default:
    /// the original receipt, `Mensagens recebidas:` and one id per line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// FAQ rules, held in memory by the processors and refreshed when they
    /// change (without a restart).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faq: Vec<FaqRule>,
    /// An external bot that gets the group and returns the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot: Option<ReplyBotSpec>,
}

/// One FAQ rule: a keyword (a whole word, any case) or a regular
/// expression, and its answer.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.keyword) != has(self.regex)")
    .message("a rule has either keyword or regex"))]
pub struct FaqRule {
    /// A word that matches case-insensitively as a whole word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<String>,
    /// A regular expression (Rust `regex` syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// The reply.
    #[schemars(length(min = 1, max = 4096))]
    pub answer: String,
}

/// An external bot.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplyBotSpec {
    /// Where the group is POSTed.
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')")
        .message("url must be an http:// or https:// address"))]
    pub url: String,
    /// How long the bot may take (Go duration, default 2s); then the FAQ
    /// rules or the template answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GO_DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// Secret key with a bearer token sent to the bot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
}

/// Kafka connection and topic layout.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Bootstrap servers, comma separated (`host:port,host:port`).
    #[x_kube(validation = Rule::new("self != ''").message("bootstrapServers must not be empty"))]
    pub bootstrap_servers: String,
    /// Topic name.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Number of partitions of the topic; immutable (partitions cannot be
    /// removed, and adding them would move conversations between partitions).
    #[schemars(range(min = 1))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("kafka.partitions is immutable"))]
    pub partitions: i32,
    /// Replication factor used when the operator creates the topic (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub replication_factor: Option<i32>,
    /// Secret whose keys are handed to the pods as environment variables
    /// (extra `CHATPIPE_KAFKA_*` settings); optional. Prefer `tls` and
    /// `sasl`, which hand over only the keys they name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Connect to the brokers over TLS (every client: producer, consumer
    /// and admin). Present means on; `{}` verifies the brokers against the
    /// image's system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTlsSpec>,
    /// Authenticate to the brokers with SASL (over TLS when `tls` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSaslSpec>,
}

/// TLS to the Kafka brokers.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTlsSpec {
    /// Secret key holding the PEM CA bundle that signed the brokers'
    /// certificates; the system roots when unset. Mounted as a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding a PEM client certificate (mutual TLS); needs
    /// `clientKeySecretRef`. Mounted as a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding the PEM private key of `clientCertSecretRef`.
    /// Mounted as a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_secret_ref: Option<SecretKeyRef>,
}

/// SASL mechanisms chatpipe's Kafka clients speak (the schema `enum` of
/// `spec.kafka.sasl.mechanism`).
pub const SASL_MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// SASL authentication to the Kafka brokers.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSaslSpec {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[schemars(schema_with = "sasl_mechanism_schema")]
    pub mechanism: String,
    /// Secret key holding the user name.
    pub username_secret_ref: SecretKeyRef,
    /// Secret key holding the password.
    pub password_secret_ref: SecretKeyRef,
}

fn sasl_mechanism_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": SASL_MECHANISMS,
    })
}

/// Schema of `spec.imagePullPolicy`: a string from [`PULL_POLICIES`].
///
/// A string with a schema `enum` rather than a Rust enum: an object stored
/// before the enum existed must still deserialize (one bad object would
/// otherwise break the whole watch), and the operator reports such a value
/// as an invalid spec. Not `nullable`: the API server then drops an explicit
/// `null` (the field is unset) instead of checking it against the enum.
fn pull_policy_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": PULL_POLICIES,
    })
}

fn default_topic() -> String {
    DEFAULT_TOPIC.to_owned()
}

/// Where the Postgres connection URL comes from.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// Secret key holding the connection URL (`postgres://…`; TLS per
    /// libpq's `sslmode`, e.g. `?sslmode=verify-full`).
    pub url_secret: SecretKeyRef,
    /// Secret key holding the PEM CA bundle that verifies the server: mounted
    /// into every component as a file and used as the URLs' `sslrootcert`
    /// (unless a URL names its own). The system roots when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// A key of a Secret in the resource's namespace.
#[derive(
    JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key inside the Secret.
    pub key: String,
}

/// Windowing settings of the processor.
///
/// Every duration is a Go duration string, the syntax of Go's
/// `time.ParseDuration` and of CEL's `duration()`: decimal numbers, each with
/// an optional fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`),
/// written together without spaces, e.g. `5s`, `250ms`, `1m30s`, `1.5h`.
/// `1m 30s` (with a space), `90` (no unit) and `1d` (unknown unit) are
/// refused, by the API server and by the operator alike.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProcessingSpec {
    /// Largest arrival gap between two messages of one group. A positive
    /// Go duration (`5s`, `1m30s`, `250ms`; no spaces); default `5s`.
    #[serde(default = "default_grouping_gap")]
    #[schemars(regex(pattern = GO_DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("groupingGap must be a positive duration"))]
    pub grouping_gap: String,
    /// How much later than its message a NEW_CONVERSATION may arrive. A
    /// positive Go duration (`6s`, `1m30s`; no spaces); default `6s`.
    #[serde(default = "default_late_tolerance")]
    #[schemars(regex(pattern = GO_DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("lateArrivalTolerance must be a positive duration"))]
    pub late_arrival_tolerance: String,
    /// Allowance behind the wall clock for the watermark of a caught-up
    /// partition. A Go duration ≥ 0 (`50ms`, `0s`; no spaces); the
    /// processor's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GO_DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')").message("watermarkAllowance must not be negative"))]
    pub watermark_allowance: Option<String>,
    /// Longest time span one group may cover, from its first to its last
    /// message. A positive Go duration (`60s`, `2m30s`; no spaces); the
    /// processor's default (60s) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GO_DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("maxGroupSpan must be a positive duration"))]
    pub max_group_span: Option<String>,
    /// Largest number of messages in one group (at least 1); the
    /// processor's default (100) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_group_messages: Option<i32>,
    /// How far a message's timestamp may be ahead of the processor's clock
    /// before it is treated as skewed. A Go duration ≥ 0 (`5s`, `0s`; no
    /// spaces); the processor's default (5s) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GO_DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')").message("maxClockSkew must not be negative"))]
    pub max_clock_skew: Option<String>,
}

impl Default for ProcessingSpec {
    fn default() -> Self {
        Self {
            grouping_gap: default_grouping_gap(),
            late_arrival_tolerance: default_late_tolerance(),
            watermark_allowance: None,
            max_group_span: None,
            max_group_messages: None,
            max_clock_skew: None,
        }
    }
}

fn default_grouping_gap() -> String {
    DEFAULT_GROUPING_GAP.to_owned()
}

fn default_late_tolerance() -> String {
    DEFAULT_LATE_TOLERANCE.to_owned()
}

/// The webhook receiver (a Deployment).
///
/// An Ingress exposes the webhook endpoint beyond the cluster: a pipeline
/// with `ingress` must set `auth` (signed webhooks) unless
/// `allowUnauthenticated` is true.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new(INGRESS_NEEDS_AUTH_RULE)
    .message(INGRESS_NEEDS_AUTH_MESSAGE)
    .field_path(".auth"))]
#[serde(rename_all = "camelCase")]
pub struct IngestSpec {
    /// Number of pods.
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Optional Ingress in front of the webhook endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// Largest accepted request body in bytes (ingest default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_body_bytes: Option<i64>,
    /// Largest accepted message content in bytes (ingest default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_content_bytes: Option<i64>,
    /// Webhook authentication (Standard Webhooks signatures). When set,
    /// every webhook must be signed with one of the Secret's secrets or is
    /// answered `401`; required with `ingress` unless
    /// `allowUnauthenticated` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<IngestAuthSpec>,
    /// Accept unsigned webhooks even though an `ingress` exposes the
    /// endpoint (default false). Without `auth`, ingest accepts unsigned
    /// webhooks and warns at start.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_unauthenticated: bool,
    /// Per-client rate limit of webhooks (off when unset): a client over
    /// it is answered `429` with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Secret key with ingest's own Postgres URL (a role that may do only
    /// what ingest does); `postgres.urlSecret` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_url_secret: Option<SecretKeyRef>,
}

/// A per-client rate limit (token bucket).
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Sustained requests per second one client may make.
    #[schemars(range(min = 1))]
    pub requests_per_second: i32,
    /// Requests one client may make at once above the sustained rate
    /// (default: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<i32>,
}

/// CEL rule of [`IngestSpec`]: an Ingress needs `auth` unless
/// `allowUnauthenticated` is true ([`crate::validate::validate`] repeats it).
pub const INGRESS_NEEDS_AUTH_RULE: &str = "!has(self.ingress) || has(self.auth) || (has(self.allowUnauthenticated) && self.allowUnauthenticated)";
/// Message of [`INGRESS_NEEDS_AUTH_RULE`].
pub const INGRESS_NEEDS_AUTH_MESSAGE: &str = "ingest.ingress exposes the webhook endpoint: set ingest.auth.secretRef (Standard Webhooks secrets) or ingest.allowUnauthenticated: true";

fn is_false(b: &bool) -> bool {
    !*b
}

/// How ingest authenticates webhooks.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngestAuthSpec {
    /// Secret key holding the Standard Webhooks signing secrets
    /// (`whsec_<base64>`; several, space separated, while one is rotated).
    /// Handed to ingest as an environment variable from the Secret, never
    /// through a ConfigMap; a change of the value rolls ingest only.
    pub secret_ref: SecretKeyRef,
}

/// An Ingress for the webhook endpoint.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Host name the Ingress answers for.
    pub host: String,
    /// IngressClass name; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// TLS Secret for `host`; plain HTTP when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
}

/// The stateful processors (a StatefulSet; partition p belongs to pod
/// ordinal `p mod replicas`).
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProcessorSpec {
    /// Number of pods; at most `kafka.partitions`.
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Secret key with the processors' own Postgres URL;
    /// `postgres.urlSecret` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_url_secret: Option<SecretKeyRef>,
}

/// The query API (a Deployment).
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiSpec {
    /// Number of pods.
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Secret key with the api's own Postgres URL; `postgres.urlSecret`
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_url_secret: Option<SecretKeyRef>,
    /// Authentication of the api (off when unset: every endpoint is open,
    /// the original challenge's contract). When set, every data endpoint
    /// needs a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ApiAuthSpec>,
}

/// How the api authenticates requests: tokens it issues to agents (HS256
/// JWTs signed with `jwtSecretRef`) and, optionally, tokens of an OpenID
/// Connect identity provider.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiAuthSpec {
    /// Secret key holding the HS256 signing secret (at least 32 bytes).
    pub jwt_secret_ref: SecretKeyRef,
    /// Lifetime of an access token, a Go duration (api default 15m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GO_DURATION_PATTERN))]
    pub access_token_ttl: Option<String>,
    /// Lifetime of a refresh token, a Go duration (api default 168h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GO_DURATION_PATTERN))]
    pub refresh_token_ttl: Option<String>,
    /// Also accept RS256/ES256 tokens of this OpenID Connect issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcSpec>,
}

/// An OpenID Connect issuer whose tokens the api accepts.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OidcSpec {
    /// Issuer URL (the tokens' `iss`).
    pub issuer: String,
    /// JWKS URL; discovered from the issuer's
    /// `/.well-known/openid-configuration` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Audience the tokens must carry (`aud`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

/// NetworkPolicies the operator creates around the pipeline's pods.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create the policies (default false).
    #[serde(default)]
    pub enabled: bool,
    /// Namespaces the ingress controller runs in, which may reach ingest
    /// (default: namespaces labelled
    /// `kubernetes.io/metadata.name: ingress-nginx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_namespace_selector: Option<LabelSelector>,
    /// Namespaces that may reach the api (default: only the pipeline's own
    /// namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_namespace_selector: Option<LabelSelector>,
    /// Namespaces that may scrape every pod's metrics port (default: every
    /// namespace; metrics are on the same port as the service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_namespace_selector: Option<LabelSelector>,
}

/// Observed state, written by the operator.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChatPipelineStatus {
    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions `Ready`, `Progressing` and `Degraded`.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Ingest replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<ComponentStatus>,
    /// Processor replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor: Option<ComponentStatus>,
    /// Api replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ComponentStatus>,
    /// Delivery replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<ComponentStatus>,
    /// The Kafka topic as found on the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<TopicStatus>,
    /// Label selector of the processor pods, in the string form
    /// (`key=value,…`); the scale subresource's `labelSelectorPath`, so a
    /// HorizontalPodAutoscaler can target the ChatPipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The last schema migration that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_migration: Option<MigrationStatus>,
}

/// A schema migration that ran to completion.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    /// Name of the migration Job (it names the image, the schema version and
    /// the database it migrated).
    pub job: String,
    /// The latest migration the Job applied (e.g. `V300__api_readonly_role`).
    pub schema_version: String,
    /// The image the Job ran.
    pub image: String,
}

/// Replica counts of one component.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Desired replicas.
    pub replicas: i32,
    /// Pods the workload has now, ready or not (its `status.replicas`); the
    /// processor's is the scale subresource's `statusReplicasPath`.
    #[serde(default)]
    pub current_replicas: i32,
    /// Replicas whose pods are ready.
    pub ready_replicas: i32,
}

/// The topic as the broker reports it.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    /// Topic name.
    pub name: String,
    /// Partitions the topic has on the broker.
    pub partitions: i32,
}

impl ChatPipeline {
    /// Whether the pause annotation is set to `"true"`.
    pub fn is_paused(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PAUSED_ANNOTATION))
            .is_some_and(|v| v == "true")
    }
}

/// The CRD as YAML, exactly what `crds/chatpipeline.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&ChatPipeline::crd())
}
