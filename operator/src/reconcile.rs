//! One reconcile run of a ChatPipeline — the thin I/O shell around the pure
//! parts ([`crate::validate`], [`crate::build`], [`crate::status`]):
//!
//! 1. validate once; an invalid spec only sets `Degraded` (nothing running is touched);
//! 2. paused (`chatpipe.dev/paused: "true"`) → only the status is refreshed;
//! 3. read the referenced Secrets (checksum for the pod templates);
//! 4. ensure the Kafka topic (never changes its partitions; a mismatch is `Degraded`);
//! 5. server-side apply every object (field manager `chatpipe-operator`, forced);
//! 6. status from the applied objects, written with server-side apply on
//!    the status subresource; Events for what changed.
//!
//! Deletion runs through kube's `finalizer`: the owned objects go with the
//! ChatPipeline (owner references); the topic and the database are kept.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatpipe_core::kafka::TopicState;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::build::labels::Component;
use crate::build::{self, BuildInput};
use crate::crd::{ChatPipeline, ChatPipelineStatus, TopicStatus};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::status::{self, Notice, Observed, Outcome, Severity};
use crate::topic::{TopicAdmin, TopicRequest};
use crate::validate::{self, ValidatedPipeline};

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "chatpipe-operator";
/// Finalizer put on every ChatPipeline.
pub const FINALIZER: &str = "chatpipe.dev/cleanup";
/// Requeue interval when everything is ready (drift check).
pub const REQUEUE_READY: Duration = Duration::from_secs(300);
/// Requeue interval while a rollout is in progress (owned objects' watches
/// usually trigger earlier).
pub const REQUEUE_PROGRESSING: Duration = Duration::from_secs(30);

/// State shared by every reconcile run.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Reconcile metrics.
    pub metrics: Metrics,
    /// Creates/checks Kafka topics.
    pub topics: Arc<dyn TopicAdmin>,
    /// Consecutive failures per object (`namespace/name`), for backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context over `client`.
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Metrics,
        topics: Arc<dyn TopicAdmin>,
    ) -> Self {
        Self {
            client,
            recorder,
            metrics,
            topics,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn record_failure(&self, key: String) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn reset_failures(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

fn key(cp: &ChatPipeline) -> String {
    format!("{}/{}", cp.namespace().unwrap_or_default(), cp.name_any())
}

/// Requeue delay after `failures` consecutive failures: 5 s doubling up to 5 min.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs(5u64 << exp).min(Duration::from_secs(300))
}

/// Reconciles one ChatPipeline (the controller's reconcile function).
pub async fn reconcile(cp: Arc<ChatPipeline>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start();
    let ns = cp.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<ChatPipeline> = Api::namespaced(ctx.client.clone(), &ns);
    let k = key(&cp);
    let result = finalizer(&api, FINALIZER, cp, |event| async {
        match event {
            FinalizerEvent::Apply(cp) => apply(&cp, &ctx).await,
            FinalizerEvent::Cleanup(cp) => cleanup(&cp, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.reset_failures(&k);
    }
    result
}

/// What the controller does after a failed run: count it, log it, requeue
/// with exponential backoff.
pub fn error_policy(cp: Arc<ChatPipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failure(error);
    let n = ctx.record_failure(key(&cp));
    let delay = backoff(n);
    tracing::warn!(
        pipeline = %key(&cp),
        error = %error,
        failures = n,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

async fn apply(cp: &ChatPipeline, ctx: &Context) -> Result<Action> {
    let ns = cp.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let name = cp.name_any();
    let prev = cp.status.as_ref();
    let generation = cp.metadata.generation;

    // 1. Validate once.
    let validated = validate::validate(&cp.spec);
    let name_check = validate::validate_name(&name);
    let pipeline = match (validated, name_check) {
        (Ok(p), Ok(())) => p,
        (v, n) => {
            let mut problems = v.err().unwrap_or_default();
            problems.extend(n.err());
            let message = validate::describe(&problems);
            tracing::warn!(pipeline = %key(cp), %message, "invalid spec");
            ctx.metrics.invalid_specs.inc();
            let next = status::next_status(
                prev,
                generation,
                &Outcome::InvalidSpec(message),
                None,
                now(),
            );
            finish_status(ctx, cp, &next, Vec::new()).await?;
            // A spec change triggers the next run; retrying would not help.
            return Ok(Action::await_change());
        }
    };

    // 2. Paused: report, touch nothing.
    if cp.is_paused() {
        let mut observed = observe(ctx, &ns, &name).await?;
        observed.topic = prev.and_then(|s| s.topic.clone());
        let next = status::next_status(prev, generation, &Outcome::Paused, Some(&observed), now());
        finish_status(ctx, cp, &next, Vec::new()).await?;
        return Ok(Action::requeue(REQUEUE_READY));
    }

    // 3. Secrets.
    let secrets = match read_secrets(ctx, &ns, &pipeline).await {
        Ok(s) => s,
        Err(Error::SecretMissing(message)) => {
            block(ctx, cp, "SecretMissing", message.clone(), None).await?;
            return Err(Error::SecretMissing(message));
        }
        Err(e) => return Err(e),
    };

    // 4. Topic.
    let req = TopicRequest {
        brokers: pipeline.kafka.bootstrap_servers.clone(),
        topic: pipeline.kafka.topic.clone(),
        partitions: pipeline.kafka.partitions,
        replication_factor: pipeline.kafka.replication_factor,
    };
    let mut notices = Vec::new();
    match ctx.topics.ensure(&req).await {
        Ok(TopicState::Created) => notices.push(Notice {
            severity: Severity::Normal,
            reason: "TopicCreated".into(),
            note: format!(
                "created topic {} with {} partitions",
                req.topic, req.partitions
            ),
        }),
        Ok(TopicState::Exists) => {}
        Ok(TopicState::Mismatch { actual }) => {
            let message = format!(
                "topic {} has {actual} partitions but the spec asks for {}; the operator never changes a topic's partitions (recreate the topic or use another one)",
                req.topic, req.partitions
            );
            let topic = TopicStatus {
                name: req.topic.clone(),
                partitions: actual,
            };
            block(ctx, cp, "TopicMismatch", message, Some(topic)).await?;
            return Err(Error::TopicMismatch {
                topic: req.topic,
                expected: req.partitions,
                actual,
            });
        }
        Err(e) => {
            let message = format!("cannot ensure topic {}: {e:#}", req.topic);
            block(ctx, cp, "KafkaUnavailable", message.clone(), None).await?;
            return Err(Error::Kafka(message));
        }
    }

    // 5. Build and apply.
    let owner = cp
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    let checksum = build::configmap::checksum(&build::configmap::settings(&pipeline), &secrets);
    let input = BuildInput {
        name: &name,
        namespace: &ns,
        owner,
        pipeline: &pipeline,
        checksum,
    };
    let desired = build::desired(&input);
    let client = &ctx.client;
    apply_object(client, &ns, &desired.config_map).await?;
    for s in &desired.services {
        apply_object(client, &ns, s).await?;
    }
    let mut deployments = Vec::new();
    for d in &desired.deployments {
        deployments.push(apply_object(client, &ns, d).await?);
    }
    let statefulset = apply_object(client, &ns, &desired.statefulset).await?;
    for p in &desired.pdbs {
        apply_object(client, &ns, p).await?;
    }
    match &desired.ingress {
        Some(i) => {
            apply_object(client, &ns, i).await?;
        }
        None => delete_stale_ingress(ctx, cp, &ns, &name).await?,
    }
    let job = apply_object(client, &ns, &desired.migration_job).await?;

    // 6. Status and events.
    let mut rolling = Vec::new();
    for (name, d) in ["ingest", "api"].into_iter().zip(&deployments) {
        if !status::deployment_rolled_out(d) {
            rolling.push(name);
        }
    }
    if !status::statefulset_rolled_out(&statefulset) {
        rolling.push("processor");
    }
    let observed = Observed {
        ingest: deployments.first().map(status::from_deployment),
        api: deployments.get(1).map(status::from_deployment),
        processor: Some(status::from_statefulset(&statefulset)),
        migration: Some(status::from_job(&job)),
        topic: Some(TopicStatus {
            name: req.topic.clone(),
            partitions: req.partitions,
        }),
        rolling,
    };
    if let Some(before) = prev.and_then(|s| s.processor.as_ref()) {
        if before.replicas != pipeline.processor.replicas {
            notices.push(Notice {
                severity: Severity::Normal,
                reason: "Scaled".into(),
                note: format!(
                    "processors {} → {} (partition p goes to processor p mod {})",
                    before.replicas, pipeline.processor.replicas, pipeline.processor.replicas
                ),
            });
        }
    }
    let next = status::next_status(prev, generation, &Outcome::Applied, Some(&observed), now());
    let ready = status::condition(Some(&next), status::READY).is_some_and(|c| c.status == "True");
    finish_status(ctx, cp, &next, notices).await?;
    Ok(Action::requeue(if ready {
        REQUEUE_READY
    } else {
        REQUEUE_PROGRESSING
    }))
}

/// Deletion: the owned objects are garbage-collected through their owner
/// references; the topic and the database hold data and are kept.
async fn cleanup(cp: &ChatPipeline, ctx: &Context) -> Result<Action> {
    publish(
        ctx,
        cp,
        &[Notice {
            severity: Severity::Normal,
            reason: "Deleting".into(),
            note: format!(
                "deleting {}: owned objects are garbage-collected; the Kafka topic and the database are kept",
                cp.name_any()
            ),
        }],
    )
    .await;
    Ok(Action::await_change())
}

/// Writes a `Degraded` status for a rollout blocked by `reason`.
async fn block(
    ctx: &Context,
    cp: &ChatPipeline,
    reason: &'static str,
    message: String,
    topic: Option<TopicStatus>,
) -> Result<()> {
    let prev = cp.status.as_ref();
    let outcome = Outcome::Blocked { reason, message };
    let mut next = status::next_status(prev, cp.metadata.generation, &outcome, None, now());
    if topic.is_some() {
        next.topic = topic;
    }
    finish_status(ctx, cp, &next, Vec::new()).await
}

/// Writes `next` (when it differs from the current status) and publishes
/// the events of its transitions plus `extra`.
async fn finish_status(
    ctx: &Context,
    cp: &ChatPipeline,
    next: &ChatPipelineStatus,
    extra: Vec<Notice>,
) -> Result<()> {
    let prev = cp.status.as_ref();
    if prev != Some(next) {
        write_status(ctx, cp, next).await?;
    }
    let mut notices = extra;
    notices.extend(status::transitions(prev, next));
    publish(ctx, cp, &notices).await;
    Ok(())
}

/// The status patch body: a server-side apply of `status` only.
pub fn status_patch(status: &ChatPipelineStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "chatpipe.dev/v1alpha1",
        "kind": "ChatPipeline",
        "status": status,
    })
}

async fn write_status(ctx: &Context, cp: &ChatPipeline, next: &ChatPipelineStatus) -> Result<()> {
    let ns = cp.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<ChatPipeline> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(
        &cp.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(status_patch(next)),
    )
    .await?;
    Ok(())
}

/// Publishes events; a failure to publish is logged, never fatal.
async fn publish(ctx: &Context, cp: &ChatPipeline, notices: &[Notice]) {
    let reference = cp.object_ref(&());
    for n in notices {
        let ev = Event {
            type_: match n.severity {
                Severity::Normal => EventType::Normal,
                Severity::Warning => EventType::Warning,
            },
            reason: n.reason.clone(),
            note: Some(n.note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
            tracing::warn!(pipeline = %key(cp), reason = %n.reason, error = %e, "cannot publish event");
        }
    }
}

/// Server-side applies `obj` (forced, field manager [`FIELD_MANAGER`]) and
/// returns the object as stored, status included.
pub async fn apply_object<K>(client: &Client, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?)
}

/// Deletes the webhook Ingress when the spec no longer asks for one — only
/// when this ChatPipeline owns it.
async fn delete_stale_ingress(
    ctx: &Context,
    cp: &ChatPipeline,
    ns: &str,
    name: &str,
) -> Result<()> {
    let api: Api<Ingress> = Api::namespaced(ctx.client.clone(), ns);
    let ing_name = build::ingress::name(name);
    let Some(existing) = api.get_opt(&ing_name).await? else {
        return Ok(());
    };
    let uid = cp.metadata.uid.as_deref();
    let ours = existing
        .owner_references()
        .iter()
        .any(|o| Some(o.uid.as_str()) == uid);
    if ours {
        match api.delete(&ing_name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads the Secrets the pods reference: the Postgres URL key (only that
/// key goes into the checksum) and the Kafka credentials Secret.
async fn read_secrets(ctx: &Context, ns: &str, p: &ValidatedPipeline) -> Result<Vec<Secret>> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let pg = &p.postgres_url_secret;
    let secret = api.get_opt(&pg.name).await?.ok_or_else(|| {
        Error::SecretMissing(format!("{} (postgres.urlSecret) not found", pg.name))
    })?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&pg.key).cloned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&pg.key))
                .map(|v| k8s_openapi::ByteString(v.as_bytes().to_vec()))
        })
        .ok_or_else(|| Error::SecretMissing(format!("{} has no key {}", pg.name, pg.key)))?;
    let mut out = vec![Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(pg.name.clone()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(pg.key.clone(), value)])),
        ..Secret::default()
    }];
    if let Some(c) = &p.kafka.credentials_secret {
        let s = api.get_opt(c).await?.ok_or_else(|| {
            Error::SecretMissing(format!("{c} (kafka.credentialsSecret) not found"))
        })?;
        out.push(Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(c.clone()),
                ..Default::default()
            },
            data: s.data,
            string_data: s.string_data,
            ..Secret::default()
        });
    }
    Ok(out)
}

/// Reads the workloads' replica counts (paused mode, where nothing is applied).
async fn observe(ctx: &Context, ns: &str, name: &str) -> Result<Observed> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    let ingest = deployments
        .get_opt(&Component::Ingest.object_name(name))
        .await?;
    let processor = statefulsets
        .get_opt(&Component::Processor.object_name(name))
        .await?;
    let api = deployments
        .get_opt(&Component::Api.object_name(name))
        .await?;
    let mut rolling = Vec::new();
    if ingest
        .as_ref()
        .is_some_and(|d| !status::deployment_rolled_out(d))
    {
        rolling.push("ingest");
    }
    if processor
        .as_ref()
        .is_some_and(|s| !status::statefulset_rolled_out(s))
    {
        rolling.push("processor");
    }
    if api
        .as_ref()
        .is_some_and(|d| !status::deployment_rolled_out(d))
    {
        rolling.push("api");
    }
    Ok(Observed {
        ingest: ingest.as_ref().map(status::from_deployment),
        processor: processor.as_ref().map(status::from_statefulset),
        api: api.as_ref().map(status::from_deployment),
        migration: None,
        topic: None,
        rolling,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(20));
        assert_eq!(backoff(7), Duration::from_secs(300));
        assert_eq!(backoff(100), Duration::from_secs(300));
    }
}
