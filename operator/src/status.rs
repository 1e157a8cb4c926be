//! The status of a ChatPipeline, computed by pure functions: what happened
//! in this reconcile run ([`Outcome`]) plus what the owned objects report
//! ([`Observed`]) give the next [`ChatPipelineStatus`], and the difference
//! between two statuses gives the Kubernetes Events worth sending.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{ChatPipelineStatus, ComponentStatus, TopicStatus, PAUSED_ANNOTATION};

/// Condition: every component has its replicas ready and migrations ran.
pub const READY: &str = "Ready";
/// Condition: a rollout is under way.
pub const PROGRESSING: &str = "Progressing";
/// Condition: something needs a human (invalid spec, topic mismatch, …).
pub const DEGRADED: &str = "Degraded";

/// What a reconcile run did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every object was applied.
    Applied,
    /// The pause annotation is set; nothing was applied.
    Paused,
    /// The spec is invalid; nothing was touched.
    InvalidSpec(String),
    /// The run failed: something outside the spec blocks the rollout
    /// (missing Secret, unreachable broker, topic with other partitions) or
    /// a call to the API server failed (an apply refused, …). What was
    /// applied before the failure stays applied.
    Blocked {
        /// CamelCase reason (`SecretMissing`, `KafkaUnavailable`,
        /// `TopicMismatch`, `ApplyFailed`, …; [`crate::error::Error::reason`]).
        reason: &'static str,
        /// Human-readable detail.
        message: String,
    },
}

/// Whether the migration Job finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationState {
    /// Still running (or not started).
    Pending,
    /// Not started: the named migration Job of an earlier spec is still
    /// running (migrations run one at a time).
    Waiting(String),
    /// Completed successfully.
    Succeeded,
    /// Gave up; the message says why.
    Failed(String),
}

/// What the owned objects report.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    /// ingest Deployment.
    pub ingest: Option<ComponentStatus>,
    /// processor StatefulSet.
    pub processor: Option<ComponentStatus>,
    /// api Deployment.
    pub api: Option<ComponentStatus>,
    /// delivery Deployment.
    pub delivery: Option<ComponentStatus>,
    /// The migration Job, when it was looked at.
    pub migration: Option<MigrationState>,
    /// The topic as found on the broker.
    pub topic: Option<TopicStatus>,
    /// Workloads whose latest spec is not rolled out yet (`ingest`, …).
    pub rolling: Vec<&'static str>,
}

/// Whether a Deployment runs its latest spec everywhere: its controller saw
/// the current generation and every replica is updated. Missing fields are
/// not taken as evidence of a rollout.
pub fn deployment_rolled_out(d: &Deployment) -> bool {
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(st) = &d.status else {
        return generation == 0;
    };
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    st.observed_generation.unwrap_or(generation) >= generation
        && st.updated_replicas.unwrap_or(replicas) >= replicas
}

/// Whether a StatefulSet runs its latest spec everywhere (current
/// generation observed, every pod on the update revision).
pub fn statefulset_rolled_out(s: &StatefulSet) -> bool {
    let generation = s.metadata.generation.unwrap_or(0);
    let Some(st) = &s.status else {
        return generation == 0;
    };
    let replicas = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let same_revision = match (&st.current_revision, &st.update_revision) {
        (Some(c), Some(u)) => c == u,
        _ => true,
    };
    st.observed_generation.unwrap_or(generation) >= generation
        && st.updated_replicas.unwrap_or(replicas) >= replicas
        && same_revision
}

/// Desired, current and ready replicas of a Deployment.
pub fn from_deployment(d: &Deployment) -> ComponentStatus {
    ComponentStatus {
        replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        current_replicas: d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        ready_replicas: d
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
    }
}

/// Desired, current (pods the StatefulSet has) and ready replicas of a
/// StatefulSet.
pub fn from_statefulset(s: &StatefulSet) -> ComponentStatus {
    ComponentStatus {
        replicas: s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        current_replicas: s.status.as_ref().map(|s| s.replicas).unwrap_or(0),
        ready_replicas: s
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
    }
}

/// Whether a Job finished: its `Complete` or `Failed` condition is true.
pub fn job_finished(j: &Job) -> bool {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

/// Migration state from the Job's status.
pub fn from_job(j: &Job) -> MigrationState {
    let Some(st) = &j.status else {
        return MigrationState::Pending;
    };
    if st.succeeded.unwrap_or(0) > 0 {
        return MigrationState::Succeeded;
    }
    for c in st.conditions.iter().flatten() {
        if c.type_ == "Failed" && c.status == "True" {
            return MigrationState::Failed(
                c.message
                    .clone()
                    .or_else(|| c.reason.clone())
                    .unwrap_or_else(|| "migration job failed".to_owned()),
            );
        }
    }
    MigrationState::Pending
}

/// Looks up condition `type_` in `status`.
pub fn condition<'a>(status: Option<&'a ChatPipelineStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

fn cond(
    prev: Option<&ChatPipelineStatus>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let last_transition_time = match condition(prev, type_) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

fn kept_or(prev: Option<&ChatPipelineStatus>, type_: &str, fallback: Condition) -> Condition {
    condition(prev, type_).cloned().unwrap_or(fallback)
}

fn readiness(observed: &Observed) -> (bool, &'static str, String) {
    let mut parts = Vec::new();
    let mut all = true;
    for (name, c) in [
        ("ingest", &observed.ingest),
        ("processor", &observed.processor),
        ("api", &observed.api),
        ("delivery", &observed.delivery),
    ] {
        let c = c.clone().unwrap_or_default();
        // Delivery runs only with channels: a scaled-to-zero (or not yet
        // seen) delivery is neither ready nor missing.
        if name == "delivery" && c.replicas == 0 {
            continue;
        }
        all &= c.ready_replicas >= c.replicas;
        parts.push(format!("{name} {}/{}", c.ready_replicas, c.replicas));
    }
    let mut summary = parts.join(", ");
    if !observed.rolling.is_empty() {
        all = false;
        summary = format!("{summary}; rolling out {}", observed.rolling.join(", "));
    }
    match &observed.migration {
        Some(MigrationState::Pending) => (
            false,
            "MigrationPending",
            format!("migrations running; {summary}"),
        ),
        Some(MigrationState::Waiting(job)) => (
            false,
            "MigrationPending",
            format!("waiting for migration job {job} to finish before migrating again; {summary}"),
        ),
        Some(MigrationState::Failed(m)) => {
            (false, "MigrationFailed", format!("migration failed: {m}"))
        }
        _ if all => (true, "AllReplicasReady", summary),
        _ => (false, "ReplicasNotReady", summary),
    }
}

/// The status after a run with `outcome`, given what the owned objects
/// report (`observed`, when they were looked at) and the previous status.
/// Conditions keep their `lastTransitionTime` while their status is unchanged.
pub fn next_status(
    prev: Option<&ChatPipelineStatus>,
    generation: Option<i64>,
    outcome: &Outcome,
    observed: Option<&Observed>,
    now: Time,
) -> ChatPipelineStatus {
    let g = generation;
    let mut next = prev.cloned().unwrap_or_default();
    next.observed_generation = generation;
    if let Some(o) = observed {
        next.ingest = o.ingest.clone();
        next.processor = o.processor.clone();
        next.api = o.api.clone();
        next.delivery = o.delivery.clone();
        if o.topic.is_some() {
            next.topic = o.topic.clone();
        }
    }
    let ready_from_observed = |reason_if_unknown: &str| -> Condition {
        match observed {
            Some(o) => {
                let (ok, reason, msg) = readiness(o);
                cond(prev, READY, ok, reason, msg, g, &now)
            }
            None => kept_or(
                prev,
                READY,
                cond(
                    prev,
                    READY,
                    false,
                    reason_if_unknown,
                    "not rolled out".into(),
                    g,
                    &now,
                ),
            ),
        }
    };
    let (ready, progressing, degraded) = match outcome {
        Outcome::Applied => {
            let ready = ready_from_observed("Unknown");
            let done = ready.status == "True";
            let progressing = if done {
                cond(
                    prev,
                    PROGRESSING,
                    false,
                    "Complete",
                    "every component is rolled out".into(),
                    g,
                    &now,
                )
            } else {
                cond(
                    prev,
                    PROGRESSING,
                    true,
                    "RollingOut",
                    ready.message.clone(),
                    g,
                    &now,
                )
            };
            let degraded = match observed.and_then(|o| o.migration.as_ref()) {
                Some(MigrationState::Failed(m)) => {
                    cond(prev, DEGRADED, true, "MigrationFailed", m.clone(), g, &now)
                }
                _ => cond(prev, DEGRADED, false, "AsExpected", String::new(), g, &now),
            };
            (ready, progressing, degraded)
        }
        Outcome::Paused => (
            ready_from_observed("Paused"),
            cond(
                prev,
                PROGRESSING,
                false,
                "Paused",
                format!("reconciliation paused by annotation {PAUSED_ANNOTATION}=true"),
                g,
                &now,
            ),
            kept_or(
                prev,
                DEGRADED,
                cond(prev, DEGRADED, false, "AsExpected", String::new(), g, &now),
            ),
        ),
        Outcome::InvalidSpec(msg) => (
            ready_from_observed("InvalidSpec"),
            cond(
                prev,
                PROGRESSING,
                false,
                "InvalidSpec",
                "the spec is invalid; running objects are left as they are".into(),
                g,
                &now,
            ),
            cond(prev, DEGRADED, true, "InvalidSpec", msg.clone(), g, &now),
        ),
        Outcome::Blocked { reason, message } => (
            ready_from_observed(reason),
            cond(prev, PROGRESSING, false, reason, message.clone(), g, &now),
            cond(prev, DEGRADED, true, reason, message.clone(), g, &now),
        ),
    };
    next.conditions = vec![ready, progressing, degraded];
    next
}

/// Severity of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Normal.
    Normal,
    /// Warning.
    Warning,
}

/// An event worth publishing about a status change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Severity.
    pub severity: Severity,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable note.
    pub note: String,
}

/// Events for the condition transitions from `prev` to `next`: Degraded
/// turning True (or changing reason), recovering, becoming Ready, pausing
/// and resuming. An unchanged status gives no events.
pub fn transitions(prev: Option<&ChatPipelineStatus>, next: &ChatPipelineStatus) -> Vec<Notice> {
    let mut out = Vec::new();
    let get = |s: Option<&ChatPipelineStatus>, t: &str| {
        condition(s, t).map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let (pd, nd) = (get(prev, DEGRADED), get(Some(next), DEGRADED));
    if let Some((status, reason, message)) = &nd {
        let was = pd.as_ref().map(|(s, r, _)| (s.as_str(), r.as_str()));
        if status == "True" && was != Some(("True", reason.as_str())) {
            out.push(Notice {
                severity: Severity::Warning,
                reason: reason.clone(),
                note: message.clone(),
            });
        }
        if status == "False" && was.is_some_and(|(s, _)| s == "True") {
            out.push(Notice {
                severity: Severity::Normal,
                reason: "Recovered".into(),
                note: "no longer degraded".into(),
            });
        }
    }
    let (pp, np) = (get(prev, PROGRESSING), get(Some(next), PROGRESSING));
    let paused =
        |x: &Option<(String, String, String)>| x.as_ref().is_some_and(|(_, r, _)| r == "Paused");
    if paused(&np) && !paused(&pp) {
        out.push(Notice {
            severity: Severity::Normal,
            reason: "Paused".into(),
            note: format!("reconciliation paused by annotation {PAUSED_ANNOTATION}"),
        });
    }
    if paused(&pp) && !paused(&np) {
        out.push(Notice {
            severity: Severity::Normal,
            reason: "Resumed".into(),
            note: "reconciliation resumed".into(),
        });
    }
    let (pr, nr) = (get(prev, READY), get(Some(next), READY));
    if nr.as_ref().is_some_and(|(s, _, _)| s == "True")
        && pr.as_ref().is_none_or(|(s, _, _)| s != "True")
    {
        out.push(Notice {
            severity: Severity::Normal,
            reason: "Ready".into(),
            note: nr.map(|(_, _, m)| m).unwrap_or_default(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn comp(replicas: i32, ready: i32) -> Option<ComponentStatus> {
        Some(ComponentStatus {
            replicas,
            current_replicas: replicas,
            ready_replicas: ready,
        })
    }

    fn observed(ready: bool) -> Observed {
        Observed {
            ingest: comp(2, 2),
            processor: comp(3, if ready { 3 } else { 1 }),
            api: comp(1, 1),
            delivery: comp(0, 0),
            migration: Some(MigrationState::Succeeded),
            topic: Some(TopicStatus {
                name: "chatpipe.events".into(),
                partitions: 6,
            }),
            rolling: Vec::new(),
        }
    }

    fn status_of(s: &ChatPipelineStatus, t: &str) -> (String, String) {
        let c = condition(Some(s), t).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn rolling_out_then_ready() {
        let s1 = next_status(
            None,
            Some(1),
            &Outcome::Applied,
            Some(&observed(false)),
            t(10),
        );
        assert_eq!(s1.observed_generation, Some(1));
        assert_eq!(
            status_of(&s1, READY),
            ("False".into(), "ReplicasNotReady".into())
        );
        assert_eq!(
            status_of(&s1, PROGRESSING),
            ("True".into(), "RollingOut".into())
        );
        assert_eq!(
            status_of(&s1, DEGRADED),
            ("False".into(), "AsExpected".into())
        );
        assert_eq!(s1.processor, comp(3, 1));
        assert!(s1
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(1)));
        assert!(condition(Some(&s1), READY)
            .unwrap()
            .message
            .contains("processor 1/3"));

        let s2 = next_status(
            Some(&s1),
            Some(1),
            &Outcome::Applied,
            Some(&observed(true)),
            t(20),
        );
        assert_eq!(
            status_of(&s2, READY),
            ("True".into(), "AllReplicasReady".into())
        );
        assert_eq!(
            status_of(&s2, PROGRESSING),
            ("False".into(), "Complete".into())
        );
        assert_eq!(
            condition(Some(&s2), READY).unwrap().last_transition_time,
            t(20)
        );
        assert_eq!(
            condition(Some(&s2), DEGRADED).unwrap().last_transition_time,
            t(10),
            "unchanged condition keeps its transition time"
        );
        let notices = transitions(Some(&s1), &s2);
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].reason, "Ready");
        assert!(transitions(Some(&s2), &s2).is_empty());
    }

    #[test]
    fn invalid_spec_keeps_observed_state_and_degrades() {
        let s1 = next_status(
            None,
            Some(1),
            &Outcome::Applied,
            Some(&observed(true)),
            t(10),
        );
        let s2 = next_status(
            Some(&s1),
            Some(2),
            &Outcome::InvalidSpec("spec.processor.replicas: too many".into()),
            None,
            t(20),
        );
        assert_eq!(s2.observed_generation, Some(2));
        assert_eq!(
            status_of(&s2, DEGRADED),
            ("True".into(), "InvalidSpec".into())
        );
        assert_eq!(
            condition(Some(&s2), DEGRADED).unwrap().observed_generation,
            Some(2)
        );
        assert_eq!(
            status_of(&s2, READY),
            ("True".into(), "AllReplicasReady".into()),
            "pods keep running"
        );
        assert_eq!(s2.processor, s1.processor);
        assert_eq!(s2.topic, s1.topic);
        let n = transitions(Some(&s1), &s2);
        assert_eq!(n[0].severity, Severity::Warning);
        assert_eq!(n[0].reason, "InvalidSpec");
        // Fixing the spec recovers.
        let s3 = next_status(
            Some(&s2),
            Some(3),
            &Outcome::Applied,
            Some(&observed(true)),
            t(30),
        );
        assert_eq!(transitions(Some(&s2), &s3)[0].reason, "Recovered");
    }

    #[test]
    fn paused_reports_and_resumes() {
        let s1 = next_status(
            None,
            Some(1),
            &Outcome::Applied,
            Some(&observed(true)),
            t(10),
        );
        let s2 = next_status(
            Some(&s1),
            Some(1),
            &Outcome::Paused,
            Some(&observed(true)),
            t(20),
        );
        assert_eq!(
            status_of(&s2, PROGRESSING),
            ("False".into(), "Paused".into())
        );
        assert_eq!(transitions(Some(&s1), &s2)[0].reason, "Paused");
        let s3 = next_status(
            Some(&s2),
            Some(1),
            &Outcome::Applied,
            Some(&observed(true)),
            t(30),
        );
        assert_eq!(transitions(Some(&s2), &s3)[0].reason, "Resumed");
    }

    #[test]
    fn blocked_and_migration_states() {
        let s = next_status(
            None,
            Some(1),
            &Outcome::Blocked {
                reason: "TopicMismatch",
                message: "topic has 3 partitions".into(),
            },
            None,
            t(1),
        );
        assert_eq!(
            status_of(&s, DEGRADED),
            ("True".into(), "TopicMismatch".into())
        );
        assert_eq!(
            status_of(&s, READY),
            ("False".into(), "TopicMismatch".into())
        );
        let mut o = observed(true);
        o.migration = Some(MigrationState::Pending);
        let s = next_status(None, Some(1), &Outcome::Applied, Some(&o), t(1));
        assert_eq!(
            status_of(&s, READY),
            ("False".into(), "MigrationPending".into())
        );
        o.migration = Some(MigrationState::Failed("boom".into()));
        let s = next_status(None, Some(1), &Outcome::Applied, Some(&o), t(1));
        assert_eq!(
            status_of(&s, DEGRADED),
            ("True".into(), "MigrationFailed".into())
        );
    }

    /// Delivery counts for `Ready` when it runs (channels declared), and
    /// is left out of it (and of the message) when scaled to zero.
    #[test]
    fn delivery_counts_for_readiness_only_when_it_runs() {
        let s = next_status(
            None,
            Some(1),
            &Outcome::Applied,
            Some(&observed(true)),
            t(1),
        );
        assert_eq!(s.delivery, comp(0, 0));
        assert_eq!(
            status_of(&s, READY),
            ("True".into(), "AllReplicasReady".into())
        );
        assert!(!condition(Some(&s), READY)
            .unwrap()
            .message
            .contains("delivery"));
        let mut o = observed(true);
        o.delivery = comp(2, 1);
        let s = next_status(None, Some(1), &Outcome::Applied, Some(&o), t(1));
        assert_eq!(s.delivery, comp(2, 1));
        assert_eq!(
            status_of(&s, READY),
            ("False".into(), "ReplicasNotReady".into())
        );
        assert!(condition(Some(&s), READY)
            .unwrap()
            .message
            .contains("delivery 1/2"));
        o.delivery = comp(2, 2);
        let s = next_status(None, Some(1), &Outcome::Applied, Some(&o), t(1));
        assert_eq!(
            status_of(&s, READY),
            ("True".into(), "AllReplicasReady".into())
        );
        assert!(condition(Some(&s), READY)
            .unwrap()
            .message
            .contains("delivery 2/2"));
        o.rolling = vec!["delivery"];
        let s = next_status(None, Some(1), &Outcome::Applied, Some(&o), t(1));
        assert_eq!(
            status_of(&s, READY),
            ("False".into(), "ReplicasNotReady".into())
        );
    }

    #[test]
    fn a_rollout_in_progress_is_not_ready() {
        let mut o = observed(true);
        o.rolling = vec!["processor"];
        let s = next_status(None, Some(2), &Outcome::Applied, Some(&o), t(1));
        assert_eq!(
            status_of(&s, READY),
            ("False".into(), "ReplicasNotReady".into())
        );
        assert_eq!(
            status_of(&s, PROGRESSING),
            ("True".into(), "RollingOut".into())
        );
        assert!(condition(Some(&s), READY)
            .unwrap()
            .message
            .contains("rolling out processor"));
    }

    #[test]
    fn rollout_detection() {
        use k8s_openapi::api::apps::v1::{
            DeploymentSpec, DeploymentStatus, StatefulSetSpec, StatefulSetStatus,
        };
        let mut d = Deployment::default();
        d.metadata.generation = Some(2);
        d.spec = Some(DeploymentSpec {
            replicas: Some(2),
            ..Default::default()
        });
        d.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            updated_replicas: Some(2),
            ready_replicas: Some(2),
            ..Default::default()
        });
        assert!(!deployment_rolled_out(&d), "new generation not seen yet");
        d.status.as_mut().unwrap().observed_generation = Some(2);
        d.status.as_mut().unwrap().updated_replicas = Some(1);
        assert!(!deployment_rolled_out(&d), "one old pod left");
        d.status.as_mut().unwrap().updated_replicas = Some(2);
        assert!(deployment_rolled_out(&d));

        let mut s = StatefulSet::default();
        s.metadata.generation = Some(3);
        s.spec = Some(StatefulSetSpec {
            replicas: Some(3),
            ..Default::default()
        });
        s.status = Some(StatefulSetStatus {
            observed_generation: Some(3),
            updated_replicas: Some(3),
            current_revision: Some("r1".into()),
            update_revision: Some("r2".into()),
            ..Default::default()
        });
        assert!(!statefulset_rolled_out(&s), "revisions differ");
        s.status.as_mut().unwrap().current_revision = Some("r2".into());
        assert!(statefulset_rolled_out(&s));
        // A freshly created object with no status counts as rolling.
        s.status = None;
        assert!(!statefulset_rolled_out(&s));
        s.metadata.generation = None;
        assert!(
            statefulset_rolled_out(&s),
            "no generation at all: nothing to wait for"
        );
    }

    #[test]
    fn job_states() {
        use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
        let mut j = Job::default();
        assert_eq!(from_job(&j), MigrationState::Pending);
        j.status = Some(JobStatus {
            succeeded: Some(1),
            ..Default::default()
        });
        assert_eq!(from_job(&j), MigrationState::Succeeded);
        j.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Failed".into(),
                status: "True".into(),
                message: Some("BackoffLimitExceeded".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(
            from_job(&j),
            MigrationState::Failed("BackoffLimitExceeded".into())
        );
    }
}
