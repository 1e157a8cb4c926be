//! The `ChatPipeline` custom resource (`chatpipe.dev/v1alpha1`): its spec,
//! its status, and the server-side CEL rules (`x-kubernetes-validations`)
//! the API server enforces before the operator ever sees an object.
//!
//! The CRD yaml in `crds/chatpipeline.yaml` is generated from these types
//! (`chatpipe-operator crdgen`); a test fails when the two drift apart.
//! Everything that the API server cannot check is checked once by
//! [`crate::validate::validate`].

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
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
/// Default grouping gap (Go duration).
pub const DEFAULT_GROUPING_GAP: &str = "5s";
/// Default late-arrival tolerance (Go duration).
pub const DEFAULT_LATE_TOLERANCE: &str = "6s";

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
        status_replicas_path = ".status.processor.readyReplicas"
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// The Kafka topic that carries webhook events.
    pub kafka: KafkaSpec,
    /// The Postgres database.
    pub postgres: PostgresSpec,
    /// Windowing settings of the processor.
    #[serde(default)]
    pub processing: ProcessingSpec,
    /// The webhook receiver.
    pub ingest: IngestSpec,
    /// The stateful processors.
    pub processor: ProcessorSpec,
    /// The query API.
    pub api: ApiSpec,
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
    /// (e.g. SASL credentials); optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

fn default_topic() -> String {
    DEFAULT_TOPIC.to_owned()
}

/// Where the Postgres connection URL comes from.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// Secret key holding the connection URL (`postgres://…`).
    pub url_secret: SecretKeyRef,
}

/// A key of a Secret in the resource's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key inside the Secret.
    pub key: String,
}

/// Windowing settings; durations are Go/Kubernetes duration strings
/// (`5s`, `250ms`, `1m30s`).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProcessingSpec {
    /// Largest arrival gap between two messages of one group.
    #[serde(default = "default_grouping_gap")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("groupingGap must be a positive duration"))]
    pub grouping_gap: String,
    /// How much later than its message a NEW_CONVERSATION may arrive.
    #[serde(default = "default_late_tolerance")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("lateArrivalTolerance must be a positive duration"))]
    pub late_arrival_tolerance: String,
    /// Allowance behind the wall clock for the watermark of a caught-up
    /// partition (processor default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')").message("watermarkAllowance must not be negative"))]
    pub watermark_allowance: Option<String>,
}

impl Default for ProcessingSpec {
    fn default() -> Self {
        Self {
            grouping_gap: default_grouping_gap(),
            late_arrival_tolerance: default_late_tolerance(),
            watermark_allowance: None,
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
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
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
    /// The Kafka topic as found on the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<TopicStatus>,
}

/// Replica counts of one component.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Desired replicas.
    pub replicas: i32,
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
