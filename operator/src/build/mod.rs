//! Pure builders: the plan ([`Topology`]: each component's replicas and
//! settings) and the Kubernetes parts of the [`ValidatedPipeline`] (image,
//! resources, ingress), plus the owner reference and the per-component
//! checksums of settings and referenced Secrets, in; Kubernetes objects
//! out. No I/O; unit tests call each builder directly.
//!
//! - [`labels`] — names and labels shared by every object.
//! - [`configmap`] — each component's settings (read through `envFrom`),
//!   and the per-component checksums that roll a component's pods when its
//!   own settings or the Secrets it reads change.
//! - [`pod`] — the container and pod template every workload shares
//!   (security contexts, probes, env, resources).
//! - [`deployment`] — ingest, api and delivery (the outbox sender; it has
//!   no Service: nothing calls it, its ops port serves probes and metrics).
//! - [`statefulset`] — the processors, and which partitions each one owns.
//! - [`service`] — regular Services for ingest and api, the headless one of the processors.
//! - [`ingress`] — the optional Ingress of the webhook endpoint.
//! - [`replies`] — the processors' FAQ reply rules: a ConfigMap mounted as
//!   a directory, re-read by the processors without a restart.
//! - [`pdb`] — a PodDisruptionBudget per workload.
//! - [`networkpolicy`] — the optional NetworkPolicies around every component.
//! - [`job`] — the schema migration Job.

pub mod configmap;
pub mod deployment;
pub mod ingress;
pub mod job;
pub mod labels;
pub mod networkpolicy;
pub mod pdb;
pub mod pod;
pub mod replies;
pub mod service;
pub mod statefulset;

use chatpipe_plan::Topology;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::validate::ValidatedPipeline;
use labels::Component;

/// Port of ingest's HTTP listener.
pub const INGEST_PORT: i32 = 8080;
/// Port of the api's HTTP listener.
pub const API_PORT: i32 = 8081;
/// Port of the processor's operational endpoints (health, metrics).
pub const PROCESSOR_PORT: i32 = 8082;
/// Port of the delivery component's operational endpoints (health,
/// metrics); it serves no other traffic.
pub const DELIVERY_PORT: i32 = 8083;
/// Pod template annotation holding the checksum of the component's settings
/// and of the Secrets it reads.
pub const CHECKSUM_ANNOTATION: &str = "chatpipe.dev/config-checksum";

/// Everything the builders need for one ChatPipeline.
#[derive(Debug, Clone)]
pub struct BuildInput<'a> {
    /// Name of the ChatPipeline (prefix of every object's name).
    pub name: &'a str,
    /// Namespace of the ChatPipeline and of every object.
    pub namespace: &'a str,
    /// Controller owner reference to the ChatPipeline.
    pub owner: OwnerReference,
    /// The validated spec (image, pull policy, resources, ingress).
    pub pipeline: &'a ValidatedPipeline,
    /// The plan of `pipeline`: each component's replicas and settings.
    pub topology: &'a Topology,
    /// Per-component checksums of settings and Secrets
    /// ([`configmap::checksums`]).
    pub checksums: configmap::Checksums,
}

impl BuildInput<'_> {
    /// Metadata of an object named `name` of `component`: namespace,
    /// labels and the owner reference.
    pub fn meta(&self, name: String, component: Component) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_owned()),
            labels: Some(labels::labels(self.name, component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// Every object of one ChatPipeline, by what it is (the reconciler applies
/// them in field order and never relies on the order of a list).
#[derive(Debug, Clone)]
pub struct DesiredObjects {
    /// Each component's settings (ingest, processor, api, delivery).
    pub config_maps: Vec<ConfigMap>,
    /// The processors' FAQ reply rules, when the spec has any (else the
    /// reconciler deletes the one it made before).
    pub replies: Option<ConfigMap>,
    /// ingest, api and the processors' headless Service.
    pub services: Vec<Service>,
    /// The ingest Deployment.
    pub ingest: Deployment,
    /// The api Deployment.
    pub api: Deployment,
    /// The delivery Deployment (0 replicas when no channel is declared and
    /// `spec.delivery.replicas` is unset).
    pub delivery: Deployment,
    /// The processors.
    pub statefulset: StatefulSet,
    /// One per workload.
    pub pdbs: Vec<PodDisruptionBudget>,
    /// The webhook Ingress, when requested.
    pub ingress: Option<Ingress>,
    /// One NetworkPolicy per component when `spec.networkPolicy.enabled`,
    /// else empty (the reconciler then deletes the ones it made).
    pub network_policies: Vec<NetworkPolicy>,
    /// Schema migration.
    pub migration_job: Job,
}

/// Builds every object of the pipeline.
pub fn desired(input: &BuildInput<'_>) -> DesiredObjects {
    DesiredObjects {
        config_maps: configmap::WORKLOADS
            .iter()
            .map(|c| configmap::config_map(input, *c))
            .collect(),
        replies: replies::config_map(input),
        services: vec![
            service::ingest(input),
            service::api(input),
            service::processor_headless(input),
        ],
        ingest: deployment::ingest(input),
        api: deployment::api(input),
        delivery: deployment::delivery(input),
        statefulset: statefulset::processor(input),
        pdbs: vec![
            pdb::pdb(input, Component::Ingest),
            pdb::pdb(input, Component::Processor),
            pdb::pdb(input, Component::Api),
            pdb::pdb(input, Component::Delivery),
        ],
        ingress: ingress::ingress(input),
        network_policies: networkpolicy::policies(input),
        migration_job: job::migration(input),
    }
}

/// Shared fixtures of the builder tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::crd::ChatPipelineSpec;
    use crate::validate::validate;

    /// A realistic spec with resources and an ingress.
    pub fn spec() -> ChatPipelineSpec {
        serde_yaml::from_str(
            r#"
image: registry.example/chatpipe:1.2.3
imagePullPolicy: IfNotPresent
kafka:
  bootstrapServers: kafka:9092
  partitions: 6
  credentialsSecret: kafka-creds
postgres:
  urlSecret: { name: pg, key: url }
processing: { groupingGap: 5s, lateArrivalTolerance: 6s, watermarkAllowance: 50ms }
ingest:
  replicas: 2
  maxBodyBytes: 65536
  resources: { requests: { cpu: 100m, memory: 64Mi }, limits: { memory: 128Mi } }
  ingress: { host: hooks.example.com, className: nginx, tlsSecret: hooks-tls }
  auth: { secretRef: { name: webhooks, key: secrets } }
processor:
  replicas: 3
  resources: { requests: { cpu: 500m, memory: 256Mi } }
api: { replicas: 1 }
"#,
        )
        .unwrap()
    }

    /// The fixture with two FAQ rules (a keyword and a regex).
    pub fn with_rules() -> ChatPipelineSpec {
        let mut s = spec();
        s.replies = Some(
            serde_yaml::from_str(
                r#"
faq:
  - { keyword: price, answer: "It costs 10." }
  - { regex: "(?i)open(ing)? hours", answer: "9 to 5." }
"#,
            )
            .unwrap(),
        );
        s
    }

    /// The fixture with a Telegram and a Twilio channel.
    pub fn with_channels() -> ChatPipelineSpec {
        let mut s = spec();
        s.channels = serde_yaml::from_str(
            r#"
- { name: tg, type: telegram, credentialsSecretRef: { name: tg-creds } }
- name: sms
  type: twilio
  credentialsSecretRef: { name: twilio-creds }
  apiBaseUrl: http://twilio.test
"#,
        )
        .unwrap();
        s
    }

    /// The owner reference used by every fixture.
    pub fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "chatpipe.dev/v1alpha1".into(),
            kind: "ChatPipeline".into(),
            name: "demo".into(),
            uid: "11111111-2222-3333-4444-555555555555".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// The fixture's checksums: `sum-<component>`, `sum-migrate` for the database.
    pub fn checksums() -> configmap::Checksums {
        Component::ALL
            .iter()
            .fold(configmap::Checksums::default(), |sums, c| {
                sums.with(*c, &format!("sum-{}", c.as_str()))
            })
    }

    /// Runs `f` with a build input over `spec`.
    pub fn with_input<T>(spec: &ChatPipelineSpec, f: impl FnOnce(&BuildInput<'_>) -> T) -> T {
        with_checksums(spec, checksums(), f)
    }

    /// Runs `f` with a build input over `spec` with `checksums`.
    pub fn with_checksums<T>(
        spec: &ChatPipelineSpec,
        checksums: configmap::Checksums,
        f: impl FnOnce(&BuildInput<'_>) -> T,
    ) -> T {
        with_name("demo", spec, checksums, f)
    }

    /// Runs `f` with a build input for the pipeline `name` over `spec`.
    pub fn with_name<T>(
        name: &str,
        spec: &ChatPipelineSpec,
        checksums: configmap::Checksums,
        f: impl FnOnce(&BuildInput<'_>) -> T,
    ) -> T {
        let pipeline = validate(spec).unwrap();
        let topology = chatpipe_plan::plan(&pipeline);
        let input = BuildInput {
            name,
            namespace: "chat",
            owner: owner(),
            pipeline: &pipeline,
            topology: &topology,
            checksums,
        };
        f(&input)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn every_object_is_owned_namespaced_and_labelled() {
        let objs = with_input(&spec(), desired);
        let mut metas = vec![objs.statefulset.metadata.clone()];
        metas.extend(objs.config_maps.iter().map(|s| s.metadata.clone()));
        metas.extend(objs.services.iter().map(|s| s.metadata.clone()));
        metas.push(objs.ingest.metadata.clone());
        metas.push(objs.api.metadata.clone());
        metas.push(objs.delivery.metadata.clone());
        metas.extend(objs.pdbs.iter().map(|s| s.metadata.clone()));
        metas.push(objs.ingress.clone().unwrap().metadata);
        metas.push(objs.migration_job.metadata.clone());
        assert_eq!(metas.len(), 17);
        for m in metas {
            assert_eq!(m.namespace.as_deref(), Some("chat"));
            assert_eq!(m.owner_references, Some(vec![owner()]), "{:?}", m.name);
            let l = m.labels.unwrap();
            assert_eq!(l["app.kubernetes.io/instance"], "demo");
            assert_eq!(l["app.kubernetes.io/managed-by"], "chatpipe-operator");
            assert!(m.name.unwrap().starts_with("demo-"));
        }
    }

    #[test]
    fn longest_allowed_name_gives_valid_object_names() {
        let long = "a".repeat(crate::validate::MAX_NAME_LEN);
        let objs = with_name(&long, &spec(), checksums(), desired);
        let sts = objs.statefulset.metadata.name.unwrap();
        // Pod names `<sts>-<ordinal>` and the controller-revision-hash label
        // `<sts>-<10 chars>` must fit in a 63-character DNS label.
        assert!(sts.len() + 11 <= 63, "{sts}");
        assert!(objs.migration_job.metadata.name.unwrap().len() <= 63);
        for s in objs.services {
            assert!(s.metadata.name.unwrap().len() <= 63);
        }
    }

    #[test]
    fn network_policies_only_when_enabled() {
        assert!(with_input(&spec(), desired).network_policies.is_empty());
        let mut s = spec();
        s.network_policy = Some(crate::crd::NetworkPolicySpec {
            enabled: true,
            ..Default::default()
        });
        let objs = with_input(&s, desired);
        assert_eq!(objs.network_policies.len(), 5);
        for p in objs.network_policies {
            assert_eq!(p.metadata.owner_references, Some(vec![owner()]));
            assert!(p.metadata.name.unwrap().starts_with("demo-"));
        }
    }

    #[test]
    fn delivery_is_built_with_its_config_and_pdb() {
        let objs = with_input(&with_channels(), desired);
        assert_eq!(
            objs.delivery.metadata.name.as_deref(),
            Some("demo-delivery")
        );
        assert_eq!(objs.delivery.spec.as_ref().unwrap().replicas, Some(1));
        let names = |v: Vec<Option<String>>| v.into_iter().flatten().collect::<Vec<_>>();
        assert_eq!(
            names(
                objs.config_maps
                    .iter()
                    .map(|c| c.metadata.name.clone())
                    .collect()
            ),
            [
                "demo-ingest-config",
                "demo-processor-config",
                "demo-api-config",
                "demo-delivery-config"
            ]
        );
        assert!(
            names(objs.pdbs.iter().map(|p| p.metadata.name.clone()).collect())
                .contains(&"demo-delivery".to_owned())
        );
        // Without channels the Deployment stays, scaled to zero.
        let objs = with_input(&spec(), desired);
        assert_eq!(objs.delivery.spec.as_ref().unwrap().replicas, Some(0));
    }

    #[test]
    fn the_replies_config_map_comes_with_the_rules() {
        assert!(with_input(&spec(), desired).replies.is_none());
        let objs = with_input(&with_rules(), desired);
        let cm = objs.replies.unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("demo-replies"));
        assert_eq!(cm.metadata.owner_references, Some(vec![owner()]));
    }

    #[test]
    fn no_ingress_without_spec() {
        let mut s = spec();
        s.ingest.ingress = None;
        assert!(with_input(&s, desired).ingress.is_none());
    }
}
