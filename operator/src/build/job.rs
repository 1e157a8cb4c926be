//! The schema migration Job running `chatpipe-admin migrate`, and the pure
//! decision of what to do about migrations in a reconcile run ([`plan`]).
//!
//! # Identity
//! A Job's pod template is immutable, so the Job's name is
//! `<name>-migrate-<hash>` with the hash taken over the Job's whole spec,
//! pod template included: anything that changes the template gives a new
//! Job, and applying a Job of an existing name never changes its template.
//! The template holds only what a migration depends on — the image (and its
//! pull policy), the schema version ([`schema_version`], the latest
//! migration compiled into this build, which ships in the same image) and a
//! checksum of the Postgres URL (which database) — so unrelated changes
//! (windows, replicas, Kafka settings) never start a migration.
//!
//! # One at a time, and cleanup
//! [`plan`] creates the desired Job only while no other migration Job of the
//! pipeline is still running, and deletes this pipeline's finished Jobs
//! other than the desired one. Finished Jobs are also removed by the Job
//! controller [`TTL_SECONDS_AFTER_FINISHED`] after they finish; the
//! ChatPipeline's `status.lastMigration` remembers a success, so a Job
//! removed by its TTL is not run again (a failed one is: a retry).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use chatpipe_settings::common::LogSettings;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use sha2::{Digest, Sha256};

use super::labels::{self, Component};
use super::pod::{
    container_security_context, pod_template, secret_env, settings_env, volume_mounts,
};
use super::BuildInput;
use crate::status;

/// Pod template annotation naming the schema version the Job migrates to.
pub const SCHEMA_VERSION_ANNOTATION: &str = "chatpipe.dev/schema-version";
/// Pod template annotation holding the checksum of the Postgres URL.
pub const DATABASE_CHECKSUM_ANNOTATION: &str = "chatpipe.dev/database-checksum";
/// Seconds a finished migration Job (and its pod, with its logs) is kept.
pub const TTL_SECONDS_AFTER_FINISHED: i32 = 3600;
/// Retries of a failing migration pod before the Job fails.
pub const BACKOFF_LIMIT: i32 = 6;
/// Longest run of a migration Job.
pub const ACTIVE_DEADLINE_SECONDS: i64 = 600;

/// `V<version>__<name>` → version, for the file names of `migrations/`
/// (`V300__api_readonly_role.sql`) and the migration names refinery reports.
pub fn migration_version(name: &str) -> Option<u64> {
    name.strip_prefix('V')?.split_once("__")?.0.parse().ok()
}

/// The schema version this build migrates to: the name of the latest
/// migration compiled into `chatpipe-core` (e.g. `V300__api_readonly_role`),
/// the same migrations `chatpipe-admin migrate` of this image applies.
pub fn schema_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        chatpipe_core::db::known_migrations()
            .into_iter()
            .filter_map(|m| migration_version(&m).map(|v| (v, m)))
            .max()
            .map(|(_, m)| m)
            .unwrap_or_else(|| "none".to_owned())
    })
}

/// The pod template of the migration Job: image, pull policy, the Postgres
/// URL from its Secret, logging; annotated with the schema version and the
/// database checksum.
fn template(input: &BuildInput<'_>) -> PodTemplateSpec {
    let component = Component::Migrate;
    let settings = input
        .topology
        .get(component)
        .settings
        .clone()
        .with_log(LogSettings::json_info());
    let mut env = secret_env(input, component);
    env.extend(settings_env(&settings));
    let container = Container {
        name: component.as_str().to_owned(),
        image: Some(input.pipeline.image.clone()),
        image_pull_policy: input.pipeline.image_pull_policy.clone(),
        command: Some(vec![component.binary().to_owned(), "migrate".to_owned()]),
        env: Some(env),
        security_context: Some(container_security_context()),
        volume_mounts: Some(volume_mounts(input, component)),
        ..Container::default()
    };
    let annotations = BTreeMap::from([
        (
            SCHEMA_VERSION_ANNOTATION.to_owned(),
            schema_version().to_owned(),
        ),
        (
            DATABASE_CHECKSUM_ANNOTATION.to_owned(),
            input.checksums.of(Component::Migrate).to_owned(),
        ),
    ]);
    pod_template(input, component, container, Some("Never"), annotations)
}

fn job_spec(input: &BuildInput<'_>) -> JobSpec {
    JobSpec {
        backoff_limit: Some(BACKOFF_LIMIT),
        active_deadline_seconds: Some(ACTIVE_DEADLINE_SECONDS),
        ttl_seconds_after_finished: Some(TTL_SECONDS_AFTER_FINISHED),
        template: template(input),
        ..JobSpec::default()
    }
}

/// `<name>-migrate-<first 8 hex digits of SHA-256 over the Job spec>`.
fn name_of(instance: &str, spec: &JobSpec) -> String {
    let mut h = Sha256::new();
    match serde_json::to_vec(spec) {
        Ok(bytes) => h.update(bytes),
        // Serializing plain data cannot fail; Debug is as deterministic.
        Err(_) => h.update(format!("{spec:?}").as_bytes()),
    }
    let d = h.finalize();
    let short: String = d.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{short}",
        labels::object_name(instance, Component::Migrate)
    )
}

/// Name of the migration Job for this image, schema version and database.
pub fn name(input: &BuildInput<'_>) -> String {
    name_of(input.name, &job_spec(input))
}

/// The Job `<name>-migrate-<hash>`.
pub fn migration(input: &BuildInput<'_>) -> Job {
    let spec = job_spec(input);
    Job {
        metadata: input.meta(name_of(input.name, &spec), Component::Migrate),
        spec: Some(spec),
        status: None,
    }
}

/// What a reconcile run does about the migration.
#[derive(Debug, Clone, PartialEq)]
pub enum MigrationStep {
    /// `status.lastMigration` names the desired Job: it succeeded before.
    Done,
    /// The desired Job exists; its state tells how the migration is doing.
    Existing(Box<Job>),
    /// Another migration Job of this pipeline is still running; the desired
    /// one is created only after it finished.
    Wait {
        /// The running Job.
        running: String,
    },
    /// Create the desired Job.
    Create,
}

/// [`MigrationStep`] plus the finished Jobs to delete.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationPlan {
    /// What to do about the desired Job.
    pub step: MigrationStep,
    /// Finished migration Jobs of this pipeline other than the desired one.
    pub delete: Vec<String>,
}

/// Decides what to do given the desired Job's name, the Job recorded as the
/// last success, and this pipeline's migration Jobs as listed.
pub fn plan(desired: &str, last_succeeded: Option<&str>, existing: &[Job]) -> MigrationPlan {
    let name = |j: &Job| j.metadata.name.clone().unwrap_or_default();
    let delete = existing
        .iter()
        .filter(|j| name(j) != desired)
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .filter(|j| status::job_finished(j))
        .map(name)
        .collect();
    let step = if last_succeeded == Some(desired) {
        MigrationStep::Done
    } else if let Some(j) = existing.iter().find(|j| name(j) == desired) {
        MigrationStep::Existing(Box::new(j.clone()))
    } else if let Some(running) = existing
        .iter()
        .filter(|j| !status::job_finished(j))
        .map(name)
        .min()
    {
        MigrationStep::Wait { running }
    } else {
        MigrationStep::Create
    };
    MigrationPlan { step, delete }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

    #[test]
    fn migration_job_runs_admin_migrate() {
        let j = with_input(&spec(), migration);
        let n = j.metadata.name.as_deref().unwrap();
        assert!(
            n.starts_with("demo-migrate-") && n.len() == "demo-migrate-".len() + 8,
            "{n}"
        );
        assert_eq!(n, with_input(&spec(), name));
        let s = j.spec.unwrap();
        assert_eq!(s.backoff_limit, Some(6));
        assert_eq!(
            s.ttl_seconds_after_finished,
            Some(TTL_SECONDS_AFTER_FINISHED)
        );
        let meta = s.template.metadata.unwrap();
        let ann = meta.annotations.unwrap();
        assert_eq!(ann[SCHEMA_VERSION_ANNOTATION], schema_version());
        assert_eq!(ann[DATABASE_CHECKSUM_ANNOTATION], "sum-migrate");
        assert!(
            !ann.contains_key(crate::build::CHECKSUM_ANNOTATION),
            "the settings checksum would start a migration on every config change"
        );
        let pod = s.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        assert_eq!(
            c.command,
            Some(vec!["chatpipe-admin".to_owned(), "migrate".to_owned()])
        );
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert!(
            c.env_from.is_none(),
            "no ConfigMap: its changes are unrelated"
        );
        let env = c.env.as_ref().unwrap();
        assert_eq!(env[0].name, "CHATPIPE_POSTGRES_URL");
        assert!(env[0].value_from.as_ref().unwrap().secret_key_ref.is_some());
        assert_eq!(
            c.security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
    }

    /// Defect: the name hashed the image and the config checksum while the
    /// template also carried the pull policy, so a pull-policy change
    /// re-applied a changed template under the old name (422 "field is
    /// immutable"). Now any two Jobs with different templates have
    /// different names, and equal names mean equal Jobs.
    #[test]
    fn the_name_covers_everything_in_the_job() {
        let base = with_input(&spec(), migration);
        let mut variants = Vec::new();
        let mut s = spec();
        s.image_pull_policy = Some("Always".into());
        variants.push(("pull policy", with_input(&s, migration)));
        let mut s = spec();
        s.image_pull_policy = None;
        variants.push(("no pull policy", with_input(&s, migration)));
        let mut s = spec();
        s.image = "registry.example/chatpipe:1.2.4".into();
        variants.push(("image", with_input(&s, migration)));
        let mut s = spec();
        s.postgres.url_secret.key = "other".into();
        variants.push(("secret key", with_input(&s, migration)));
        let sums = checksums().with(Component::Migrate, "another-database");
        variants.push(("database", with_checksums(&spec(), sums, migration)));
        for (what, j) in variants {
            assert_ne!(j.spec, base.spec, "{what} changes the Job");
            assert_ne!(j.metadata.name, base.metadata.name, "{what}: new name");
        }
    }

    /// Defect: every config change created a new migration Job.
    #[test]
    fn unrelated_changes_keep_the_job() {
        let base = with_input(&spec(), migration);
        let mut s = spec();
        s.processor.replicas = 1;
        s.processing.grouping_gap = "3s".into();
        s.processing.max_group_messages = Some(5);
        s.ingest.max_body_bytes = Some(1024);
        s.kafka.topic = "other".into();
        s.kafka.credentials_secret = None;
        assert_eq!(with_input(&s, migration), base);
        // Nor do the checksums of the workloads.
        let sums = checksums()
            .with(Component::Ingest, "x")
            .with(Component::Processor, "y")
            .with(Component::Api, "z");
        let j = with_checksums(&spec(), sums, migration);
        assert_eq!(j, base);
    }

    #[test]
    fn schema_version_is_the_latest_file_in_migrations() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
        let latest = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|f| {
                let stem = f.strip_suffix(".sql")?.to_owned();
                Some((migration_version(&stem)?, stem))
            })
            .max()
            .unwrap();
        assert_eq!(schema_version(), latest.1);
        assert_eq!(migration_version("V201__messages_fillfactor"), Some(201));
        assert_eq!(migration_version("README"), None);
    }

    fn job(name: &str, state: Option<&str>) -> Job {
        let mut j = Job::default();
        j.metadata.name = Some(name.into());
        j.status = Some(JobStatus {
            active: state.is_none().then_some(1),
            conditions: state.map(|t| {
                vec![JobCondition {
                    type_: t.into(),
                    status: "True".into(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        j
    }

    #[test]
    fn plan_creates_when_nothing_runs() {
        let p = plan("demo-migrate-new", None, &[]);
        assert_eq!(p.step, MigrationStep::Create);
        assert!(p.delete.is_empty());
        // Finished older Jobs are cleaned up, and do not block.
        let p = plan(
            "demo-migrate-new",
            Some("demo-migrate-old"),
            &[
                job("demo-migrate-old", Some("Complete")),
                job("demo-migrate-older", Some("Failed")),
            ],
        );
        assert_eq!(p.step, MigrationStep::Create);
        assert_eq!(p.delete, ["demo-migrate-old", "demo-migrate-older"]);
    }

    /// Defect: several migration Jobs ran at once against one database.
    #[test]
    fn plan_waits_while_another_migration_runs() {
        let p = plan(
            "demo-migrate-new",
            None,
            &[
                job("demo-migrate-old", None),
                job("demo-migrate-older", Some("Complete")),
            ],
        );
        assert_eq!(
            p.step,
            MigrationStep::Wait {
                running: "demo-migrate-old".into()
            }
        );
        assert_eq!(p.delete, ["demo-migrate-older"], "the running one stays");
        // A Job without any status yet counts as running.
        let mut fresh = job("demo-migrate-old", None);
        fresh.status = None;
        assert!(matches!(
            plan("demo-migrate-new", None, &[fresh]).step,
            MigrationStep::Wait { .. }
        ));
    }

    #[test]
    fn plan_follows_the_desired_job_and_remembers_success() {
        let desired = job("demo-migrate-new", None);
        let p = plan("demo-migrate-new", None, std::slice::from_ref(&desired));
        assert_eq!(p.step, MigrationStep::Existing(Box::new(desired)));
        // After its TTL removed it, the recorded success keeps it from running again.
        let p = plan("demo-migrate-new", Some("demo-migrate-new"), &[]);
        assert_eq!(p.step, MigrationStep::Done);
        // Jobs being deleted are left alone.
        let mut gone = job("demo-migrate-old", Some("Complete"));
        gone.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert!(plan("demo-migrate-new", None, &[gone]).delete.is_empty());
    }
}
