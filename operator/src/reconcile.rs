//! One reconcile run of a ChatPipeline — the thin I/O shell around the pure
//! parts ([`crate::validate`], [`crate::build`], [`crate::status`]):
//!
//! 0. the finalizer is added before anything else (and removed after the
//!    cleanup of a deleted pipeline);
//! 1. validate once; an invalid spec only sets `Degraded` (nothing running is touched);
//! 2. paused (`chatpipe.dev/paused: "true"`) → only the status is refreshed;
//! 3. read the referenced Secrets (per-component checksums for the pod templates);
//! 4. ensure the Kafka topic (never changes its partitions; a mismatch is `Degraded`);
//! 5. server-side apply every object (field manager `chatpipe-operator`, forced):
//!    each component's ConfigMap, the processors' FAQ rules ConfigMap
//!    (`<name>-replies`, when the spec has rules), Services, the
//!    NetworkPolicies before the workloads, the ingest, api and delivery
//!    Deployments, the processor StatefulSet, PDBs, the Ingress; the ones no
//!    longer wanted (NetworkPolicies, an Ingress or the rules dropped from
//!    the spec) deleted;
//! 6. the migration Job: created only when no other migration of the
//!    pipeline runs, finished older ones deleted ([`build::job::plan`]);
//! 7. status from the applied objects, written with server-side apply on
//!    the status subresource; Events for what changed.
//!
//! Every outcome reaches the status: a run that fails at any step writes
//! `observedGeneration` and `Degraded=True` with the error's reason and
//! message, publishes a Warning Event, and returns the error (retried with
//! backoff). Every write carries the field manager [`FIELD_MANAGER`].
//!
//! Deletion: the owned objects go with the ChatPipeline (owner references);
//! the topic and the database are kept.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatpipe_core::kafka::TopicState;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::build::configmap::ReferencedSecrets;
use crate::build::job::{schema_version, MigrationStep};
use crate::build::labels::{self, object_name, Component};
use crate::build::{self, BuildInput};
use crate::crd::{ChatPipeline, ChatPipelineStatus, MigrationStatus, SecretKeyRef, TopicStatus};
use crate::error::{Error, KubeContext, Result};
use crate::events::{
    EventPublishFailed, FailureStatusWriteFailed, FailureUnreportable, InternalEvent, InvalidSpec,
    MigrationJobCreated, MigrationSucceeded, MigrationWaiting, PipelineDeleting, ReconcileFailed,
    ReconcileFinished, ReconcileStarted, TopicCreated,
};
use crate::k8s_events::EventRecorder;
use crate::metrics::Metrics;
use crate::status::{self, MigrationState, Notice, Observed, Outcome, Severity};
use crate::topic::{TopicAdmin, TopicRequest};
use crate::validate::{self, ValidatedPipeline};

pub use crate::FIELD_MANAGER;
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
    pub recorder: EventRecorder,
    /// The operator's metrics (updated through [`crate::events`]).
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
        recorder: EventRecorder,
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

/// Reconciles one ChatPipeline (the controller's reconcile function). A
/// failure is reported on the object (status and a Warning Event) before
/// it is returned.
pub async fn reconcile(cp: Arc<ChatPipeline>, ctx: Arc<Context>) -> Result<Action> {
    let pipeline = key(&cp);
    ReconcileStarted {
        pipeline: &pipeline,
    }
    .emit(&ctx.metrics);
    let started = Instant::now();
    let result = run(&cp, &ctx).await;
    match &result {
        Ok(_) => ctx.reset_failures(&pipeline),
        Err(e) => report_failure(&ctx, &cp, e).await,
    }
    ReconcileFinished {
        pipeline: &pipeline,
        duration: started.elapsed(),
        failure: result.as_ref().err().map(Error::metric_label),
    }
    .emit(&ctx.metrics);
    result
}

/// What the controller does after a failed run: count and log it
/// ([`ReconcileFailed`]), requeue with exponential backoff.
pub fn error_policy(cp: Arc<ChatPipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    let pipeline = key(&cp);
    let n = ctx.record_failure(pipeline.clone());
    let delay = backoff(n);
    ReconcileFailed {
        pipeline: &pipeline,
        error,
        failures: n,
        retry_in: delay,
    }
    .emit(&ctx.metrics);
    Action::requeue(delay)
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// The finalizer protocol (as kube's `finalizer` helper, but with our field
/// manager on the patches): add it first, run the cleanup on deletion and
/// then remove it.
async fn run(cp: &ChatPipeline, ctx: &Context) -> Result<Action> {
    let index = cp.finalizers().iter().position(|f| f == FINALIZER);
    let deleting = cp.metadata.deletion_timestamp.is_some();
    match (index, deleting) {
        (Some(_), false) => apply(cp, ctx).await,
        (Some(i), true) => {
            let action = cleanup(cp, ctx).await?;
            // `test` makes the patch fail instead of removing another
            // controller's finalizer that moved into our index.
            let path = format!("/metadata/finalizers/{i}");
            let ops = json!([
                {"op": "test", "path": path, "value": FINALIZER},
                {"op": "remove", "path": path}
            ]);
            json_patch(ctx, cp, &ops)
                .await
                .map_err(|source| Error::Finalizer {
                    action: "removing",
                    source,
                })?;
            Ok(action)
        }
        (None, false) => {
            // The API server does not deduplicate finalizers: `test` fails
            // the patch if someone changed the list meanwhile.
            let ops = if cp.finalizers().is_empty() {
                json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
                ])
            } else {
                json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": cp.finalizers()},
                    {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}
                ])
            };
            json_patch(ctx, cp, &ops)
                .await
                .map_err(|source| Error::Finalizer {
                    action: "adding",
                    source,
                })?;
            // The patch triggers the next run, which applies.
            Ok(Action::await_change())
        }
        (None, true) => Ok(Action::await_change()),
    }
}

/// A JSON patch (RFC 6902) of the ChatPipeline with our field manager.
/// (kube's `Patch::Json` would need the `json-patch` crate for the same
/// request; this sends `ops` as the body of that request.)
async fn json_patch(
    ctx: &Context,
    cp: &ChatPipeline,
    ops: &serde_json::Value,
) -> std::result::Result<ChatPipeline, kube::Error> {
    let ns = cp.namespace().unwrap_or_default();
    let api: Api<ChatPipeline> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let request = kube::core::Request::new(api.resource_url())
        .patch(&cp.name_any(), &pp, &Patch::Merge(ops))
        .map_err(kube::Error::BuildRequest)?;
    let (mut parts, body) = request.into_parts();
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json-patch+json"),
    );
    ctx.client
        .request::<ChatPipeline>(http::Request::from_parts(parts, body))
        .await
}

/// The status after a run with `outcome`: [`status::next_status`] plus the
/// processor selector of the scale subresource.
fn status_for(
    cp: &ChatPipeline,
    outcome: &Outcome,
    observed: Option<&Observed>,
) -> ChatPipelineStatus {
    let mut next = status::next_status(
        cp.status.as_ref(),
        cp.metadata.generation,
        outcome,
        observed,
        now(),
    );
    next.selector = Some(labels::selector_string(
        &cp.name_any(),
        Component::Processor,
    ));
    next
}

/// Reports a failed run on the object: `observedGeneration` and
/// `Degraded=True` with the error's reason and message in the status, and
/// a Warning Event (repeats are counted in its series). Never fails: what
/// cannot be written is logged.
async fn report_failure(ctx: &Context, cp: &ChatPipeline, error: &Error) {
    let reason = error.reason();
    let message = error.to_string();
    if cp.namespace().is_none() {
        FailureUnreportable {
            pipeline: &cp.name_any(),
            error: &message,
        }
        .emit(&ctx.metrics);
        return;
    }
    let mut notices = Vec::new();
    let writable = cp.metadata.deletion_timestamp.is_none() && !matches!(error, Error::Status(_));
    if writable {
        let outcome = Outcome::Blocked {
            reason,
            message: message.clone(),
        };
        let mut next = status_for(cp, &outcome, None);
        if let Error::TopicMismatch { topic, actual, .. } = error {
            next.topic = Some(TopicStatus {
                name: topic.clone(),
                partitions: *actual,
            });
        }
        let prev = cp.status.as_ref();
        match write_status_if_changed(ctx, cp, &next).await {
            Ok(()) => notices = status::transitions(prev, &next),
            Err(e) => FailureStatusWriteFailed {
                pipeline: &key(cp),
                error: &e,
            }
            .emit(&ctx.metrics),
        }
    }
    if !notices
        .iter()
        .any(|n| n.severity == Severity::Warning && n.reason == reason)
    {
        notices.push(Notice {
            severity: Severity::Warning,
            reason: reason.to_owned(),
            note: message,
        });
    }
    publish(ctx, cp, &notices).await;
}

async fn apply(cp: &ChatPipeline, ctx: &Context) -> Result<Action> {
    let ns = cp.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let name = cp.name_any();
    let prev = cp.status.as_ref();

    // 1. Validate once.
    let validated = validate::validate(&cp.spec);
    let name_check = validate::validate_name(&name);
    let pipeline = match (validated, name_check) {
        (Ok(p), Ok(())) => p,
        (v, n) => {
            let mut problems = v.err().unwrap_or_default();
            problems.extend(n.err());
            let message = validate::describe(&problems);
            InvalidSpec {
                pipeline: &key(cp),
                message: &message,
            }
            .emit(&ctx.metrics);
            let next = status_for(cp, &Outcome::InvalidSpec(message), None);
            finish_status(ctx, cp, &next, Vec::new()).await?;
            // A spec change triggers the next run; retrying would not help.
            return Ok(Action::await_change());
        }
    };

    // 2. Paused: report, touch nothing.
    if cp.is_paused() {
        let mut observed = observe(ctx, &ns, &name).await?;
        observed.topic = prev.and_then(|s| s.topic.clone());
        let next = status_for(cp, &Outcome::Paused, Some(&observed));
        finish_status(ctx, cp, &next, Vec::new()).await?;
        return Ok(Action::requeue(REQUEUE_READY));
    }

    // 3. Secrets.
    let topology = chatpipe_plan::plan(&pipeline);
    let secrets = read_secrets(ctx, &ns, &pipeline, &topology).await?;

    // 4. Topic.
    let req = TopicRequest {
        kafka: crate::kafka_access::connection(
            &pipeline.kafka,
            &secrets,
            &crate::kafka_access::default_dir(),
        )?,
        topic: pipeline.kafka.topic.clone(),
        partitions: pipeline.kafka.partitions,
        replication_factor: pipeline.kafka.replication_factor,
    };
    let mut notices = Vec::new();
    match ctx.topics.ensure(&req).await {
        Ok(TopicState::Created) => {
            TopicCreated {
                pipeline: &key(cp),
                topic: &req.topic,
                partitions: req.partitions,
            }
            .emit(&ctx.metrics);
            notices.push(Notice {
                severity: Severity::Normal,
                reason: "TopicCreated".into(),
                note: format!(
                    "created topic {} with {} partitions",
                    req.topic, req.partitions
                ),
            });
        }
        Ok(TopicState::Exists) => {}
        Ok(TopicState::Mismatch { actual }) => {
            return Err(Error::TopicMismatch {
                topic: req.topic,
                expected: req.partitions,
                actual,
            });
        }
        Err(e) => {
            return Err(Error::Kafka(format!(
                "cannot ensure topic {}: {e:#}",
                req.topic
            )));
        }
    }

    // 5. Build and apply.
    let owner = cp
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    let input = BuildInput {
        name: &name,
        namespace: &ns,
        owner,
        pipeline: &pipeline,
        topology: &topology,
        checksums: build::configmap::checksums(&topology, &secrets),
    };
    let desired = build::desired(&input);
    let client = &ctx.client;
    for c in &desired.config_maps {
        apply_object(client, &ns, c).await?;
    }
    // Before the processors, which mount it.
    match &desired.replies {
        Some(r) => {
            apply_object(client, &ns, r).await?;
        }
        None => delete_if_owned::<ConfigMap>(ctx, cp, &ns, &build::replies::name(&name)).await?,
    }
    for s in &desired.services {
        apply_object(client, &ns, s).await?;
    }
    // Before the workloads, so new pods start behind their policies.
    for p in &desired.network_policies {
        apply_object(client, &ns, p).await?;
    }
    prune_network_policies(ctx, cp, &ns, &name, &desired.network_policies).await?;
    let ingest = apply_object(client, &ns, &desired.ingest).await?;
    let api = apply_object(client, &ns, &desired.api).await?;
    let delivery = apply_object(client, &ns, &desired.delivery).await?;
    let statefulset = apply_object(client, &ns, &desired.statefulset).await?;
    for p in &desired.pdbs {
        apply_object(client, &ns, p).await?;
    }
    match &desired.ingress {
        Some(i) => {
            apply_object(client, &ns, i).await?;
        }
        None => delete_if_owned::<Ingress>(ctx, cp, &ns, &build::ingress::name(&name)).await?,
    }

    // 6. Migration.
    let (migration, last_migration) = migrate(
        ctx,
        cp,
        &ns,
        &pipeline,
        &desired.migration_job,
        &mut notices,
    )
    .await?;

    // 7. Status and events.
    let mut rolling = Vec::new();
    for (name, d) in [("ingest", &ingest), ("api", &api), ("delivery", &delivery)] {
        if !status::deployment_rolled_out(d) {
            rolling.push(name);
        }
    }
    if !status::statefulset_rolled_out(&statefulset) {
        rolling.push("processor");
    }
    let observed = Observed {
        ingest: Some(status::from_deployment(&ingest)),
        api: Some(status::from_deployment(&api)),
        delivery: Some(status::from_deployment(&delivery)),
        processor: Some(status::from_statefulset(&statefulset)),
        migration: Some(migration),
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
    let mut next = status_for(cp, &Outcome::Applied, Some(&observed));
    next.last_migration = last_migration;
    let ready = status::condition(Some(&next), status::READY).is_some_and(|c| c.status == "True");
    finish_status(ctx, cp, &next, notices).await?;
    Ok(Action::requeue(if ready {
        REQUEUE_READY
    } else {
        REQUEUE_PROGRESSING
    }))
}

/// Runs the migration Job `job` one at a time ([`build::job::plan`]):
/// lists this pipeline's migration Jobs, deletes the finished older ones,
/// and creates `job` only when no other one runs. Returns the migration's
/// state and the last successful migration for the status.
async fn migrate(
    ctx: &Context,
    cp: &ChatPipeline,
    ns: &str,
    pipeline: &ValidatedPipeline,
    job: &Job,
    notices: &mut Vec<Notice>,
) -> Result<(MigrationState, Option<MigrationStatus>)> {
    let desired = job
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    let name = cp.name_any();
    let previous = cp.status.as_ref().and_then(|s| s.last_migration.clone());
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let selector = labels::selector_string(&name, Component::Migrate);
    let uid = cp.metadata.uid.as_deref();
    let existing: Vec<Job> = api
        .list(&ListParams::default().labels(&selector))
        .await
        .context(|| format!("listing the migration Jobs of {name}"))?
        .items
        .into_iter()
        .filter(|j| {
            j.owner_references()
                .iter()
                .any(|o| Some(o.uid.as_str()) == uid)
        })
        .collect();
    let plan = build::job::plan(
        &desired,
        previous.as_ref().map(|m| m.job.as_str()),
        &existing,
    );
    for old in &plan.delete {
        match api.delete(old, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(Error::Kube {
                    action: format!("deleting the finished migration Job {old}"),
                    source,
                })
            }
        }
    }
    let state = match plan.step {
        MigrationStep::Done => MigrationState::Succeeded,
        MigrationStep::Existing(j) => status::from_job(&j),
        MigrationStep::Wait { running } => {
            MigrationWaiting {
                pipeline: &key(cp),
                running: &running,
                waiting: &desired,
            }
            .emit(&ctx.metrics);
            MigrationState::Waiting(running)
        }
        MigrationStep::Create => {
            let created = apply_object(&ctx.client, ns, job).await?;
            MigrationJobCreated {
                pipeline: &key(cp),
                job: &desired,
            }
            .emit(&ctx.metrics);
            notices.push(Notice {
                severity: Severity::Normal,
                reason: "MigrationStarted".into(),
                note: format!(
                    "started migration Job {desired} (schema {}, image {})",
                    schema_version(),
                    pipeline.image
                ),
            });
            status::from_job(&created)
        }
    };
    let last = if state == MigrationState::Succeeded {
        let done = MigrationStatus {
            job: desired,
            schema_version: schema_version().to_owned(),
            image: pipeline.image.clone(),
        };
        if previous.as_ref().map(|m| &m.job) != Some(&done.job) {
            MigrationSucceeded {
                pipeline: &key(cp),
                job: &done.job,
                schema_version: &done.schema_version,
            }
            .emit(&ctx.metrics);
            notices.push(Notice {
                severity: Severity::Normal,
                reason: "MigrationSucceeded".into(),
                note: format!(
                    "migration Job {} brought the schema to {}",
                    done.job, done.schema_version
                ),
            });
        }
        Some(done)
    } else {
        previous
    };
    Ok((state, last))
}

/// Deletion: the owned objects are garbage-collected through their owner
/// references; the topic and the database hold data and are kept.
async fn cleanup(cp: &ChatPipeline, ctx: &Context) -> Result<Action> {
    PipelineDeleting { pipeline: &key(cp) }.emit(&ctx.metrics);
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

/// Writes `next` (when it differs from the current status) and publishes
/// the events of its transitions plus `extra`.
async fn finish_status(
    ctx: &Context,
    cp: &ChatPipeline,
    next: &ChatPipelineStatus,
    extra: Vec<Notice>,
) -> Result<()> {
    write_status_if_changed(ctx, cp, next).await?;
    let mut notices = extra;
    notices.extend(status::transitions(cp.status.as_ref(), next));
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

async fn write_status_if_changed(
    ctx: &Context,
    cp: &ChatPipeline,
    next: &ChatPipelineStatus,
) -> Result<()> {
    if cp.status.as_ref() == Some(next) {
        return Ok(());
    }
    let ns = cp.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<ChatPipeline> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(
        &cp.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(status_patch(next)),
    )
    .await
    .map_err(Error::Status)?;
    Ok(())
}

/// Publishes events; a failure to publish is logged, never fatal.
async fn publish(ctx: &Context, cp: &ChatPipeline, notices: &[Notice]) {
    let reference = cp.object_ref(&());
    for n in notices {
        if let Err(e) = ctx.recorder.publish(n, &reference).await {
            EventPublishFailed {
                pipeline: &key(cp),
                reason: &n.reason,
                error: &e,
            }
            .emit(&ctx.metrics);
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
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Apply {
        object: format!("{}/{name}", K::kind(&())),
        source,
    })
}

/// Deletes the object `object_name` of kind `K` when the spec no longer
/// asks for it (the webhook Ingress, the FAQ rules ConfigMap) — only when
/// this ChatPipeline owns it, and only that very object (a UID
/// precondition: one recreated meanwhile by someone else is kept).
async fn delete_if_owned<K>(
    ctx: &Context,
    cp: &ChatPipeline,
    ns: &str,
    object_name: &str,
) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let kind = K::kind(&());
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let Some(existing) = api
        .get_opt(object_name)
        .await
        .context(|| format!("reading {kind} {object_name}"))?
    else {
        return Ok(());
    };
    let uid = cp.metadata.uid.as_deref();
    let ours = existing
        .owner_references()
        .iter()
        .any(|o| Some(o.uid.as_str()) == uid);
    if !ours || existing.meta().deletion_timestamp.is_some() {
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: existing
            .meta()
            .uid
            .clone()
            .map(|uid| kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
        ..DeleteParams::default()
    };
    match api.delete(object_name, &params).await {
        Ok(_) => Ok(()),
        // Gone, or replaced by another object of the same name.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(source) => Err(Error::Kube {
            action: format!("deleting {kind} {object_name}, no longer in the spec"),
            source,
        }),
    }
}

/// Deletes the NetworkPolicies this ChatPipeline made that are no longer
/// in `keep` (all of them when the spec disables or drops
/// `networkPolicy`): one list by the pipeline's labels, filtered by owner.
async fn prune_network_policies(
    ctx: &Context,
    cp: &ChatPipeline,
    ns: &str,
    name: &str,
    keep: &[NetworkPolicy],
) -> Result<()> {
    let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), ns);
    let selector = format!(
        "app.kubernetes.io/instance={name},app.kubernetes.io/managed-by={}",
        labels::MANAGED_BY
    );
    let existing = api
        .list(&ListParams::default().labels(&selector))
        .await
        .context(|| format!("listing the NetworkPolicies of {name}"))?;
    let uid = cp.metadata.uid.as_deref();
    let stale = existing.items.iter().filter(|p| {
        let ours = p
            .owner_references()
            .iter()
            .any(|o| Some(o.uid.as_str()) == uid);
        let wanted = keep.iter().any(|k| k.metadata.name == p.metadata.name);
        ours && !wanted && p.metadata.deletion_timestamp.is_none()
    });
    for p in stale {
        let policy = p.name_any();
        match api.delete(&policy, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(Error::Kube {
                    action: format!("deleting NetworkPolicy {policy}, no longer in the spec"),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// The Secrets of one run, each read once by name however many of its keys
/// the plan references (a channel's Secret serves ingest and delivery).
struct SecretCache<'a> {
    api: &'a Api<Secret>,
    read: BTreeMap<String, Secret>,
}

impl SecretCache<'_> {
    /// The Secret `name` (`field` names the spec field that references it,
    /// for the error); [`Error::SecretMissing`] when it does not exist.
    async fn get(&mut self, name: &str, field: &str) -> Result<&Secret> {
        if !self.read.contains_key(name) {
            let secret = self
                .api
                .get_opt(name)
                .await
                .context(|| format!("reading Secret {name} ({field})"))?
                .ok_or_else(|| Error::SecretMissing(format!("{name} ({field}) not found")))?;
            self.read.insert(name.to_owned(), secret);
        }
        self.read
            .get(name)
            .ok_or_else(|| Error::SecretMissing(format!("{name} ({field}) not found")))
    }
}

/// One key of a Secret, as a Secret holding only that key (what goes into
/// the checksums); [`Error::SecretMissing`] when the key is absent.
fn secret_key(secret: &Secret, r: &SecretKeyRef, field: &str) -> Result<Secret> {
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key).cloned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|v| k8s_openapi::ByteString(v.as_bytes().to_vec()))
        })
        .ok_or_else(|| {
            Error::SecretMissing(format!("{} ({field}) has no key {}", r.name, r.key))
        })?;
    Ok(Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(r.name.clone()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(r.key.clone(), value)])),
        ..Secret::default()
    })
}

/// Reads the Secrets the pods reference: every Secret key of the plan
/// (the database URLs, Kafka and api secrets, ingest's webhook secrets,
/// each channel's credentials, the reply bot's token; only those keys go
/// into the checksums) and the Kafka credentials Secret. Only Secrets the
/// pipeline names are read, each once, with `get`; a missing Secret or key
/// is [`Error::SecretMissing`].
async fn read_secrets(
    ctx: &Context,
    ns: &str,
    p: &ValidatedPipeline,
    topology: &chatpipe_plan::Topology,
) -> Result<ReferencedSecrets> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut cache = SecretCache {
        api: &api,
        read: BTreeMap::new(),
    };
    let mut out = ReferencedSecrets::default();
    for s in &topology.secrets {
        if out.keys.contains_key(&s.secret) {
            continue;
        }
        let secret = cache.get(&s.secret.name, s.field).await?;
        let value = secret_key(secret, &s.secret, s.field)?;
        out.keys.insert(s.secret.clone(), value);
    }
    if let Some(c) = &p.kafka.credentials_secret {
        let s = cache.get(c, "kafka.credentialsSecret").await?;
        out.kafka = Some(Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(c.clone()),
                ..Default::default()
            },
            data: s.data.clone(),
            string_data: s.string_data.clone(),
            ..Secret::default()
        });
    }
    Ok(out)
}

/// Reads the workloads' replica counts (paused mode, where nothing is applied).
async fn observe(ctx: &Context, ns: &str, name: &str) -> Result<Observed> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    let ingest_name = object_name(name, Component::Ingest);
    let ingest = deployments
        .get_opt(&ingest_name)
        .await
        .context(|| format!("reading Deployment {ingest_name}"))?;
    let processor_name = object_name(name, Component::Processor);
    let processor = statefulsets
        .get_opt(&processor_name)
        .await
        .context(|| format!("reading StatefulSet {processor_name}"))?;
    let api_name = object_name(name, Component::Api);
    let api = deployments
        .get_opt(&api_name)
        .await
        .context(|| format!("reading Deployment {api_name}"))?;
    let delivery_name = object_name(name, Component::Delivery);
    let delivery = deployments
        .get_opt(&delivery_name)
        .await
        .context(|| format!("reading Deployment {delivery_name}"))?;
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
    if delivery
        .as_ref()
        .is_some_and(|d| !status::deployment_rolled_out(d))
    {
        rolling.push("delivery");
    }
    Ok(Observed {
        ingest: ingest.as_ref().map(status::from_deployment),
        processor: processor.as_ref().map(status::from_statefulset),
        api: api.as_ref().map(status::from_deployment),
        delivery: delivery.as_ref().map(status::from_deployment),
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
