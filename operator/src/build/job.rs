//! The migration Job running `chatpipe-admin migrate`. Its name carries a
//! hash of the image and of the config checksum: a Job's pod template is
//! immutable, so a new image or a new database URL gets a new Job (which
//! migrates again; migrations are idempotent).

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::Container;
use sha2::{Digest, Sha256};

use super::labels::Component;
use super::pod::{container_security_context, env_from, pod_template, postgres_url_env, tmp_mount};
use super::BuildInput;

/// Name of the migration Job for this image and configuration.
pub fn name(input: &BuildInput<'_>) -> String {
    let mut h = Sha256::new();
    h.update(input.pipeline.image.as_bytes());
    h.update([0]);
    h.update(input.checksum.as_bytes());
    let d = h.finalize();
    let short: String = d.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("{}-{short}", Component::Migrate.object_name(input.name))
}

/// The Job `<name>-migrate-<hash>`.
pub fn migration(input: &BuildInput<'_>) -> Job {
    let component = Component::Migrate;
    let container = Container {
        name: component.as_str().to_owned(),
        image: Some(input.pipeline.image.clone()),
        image_pull_policy: input.pipeline.image_pull_policy.clone(),
        command: Some(vec!["chatpipe-admin".to_owned(), "migrate".to_owned()]),
        env: Some(vec![postgres_url_env(input)]),
        env_from: Some(env_from(input)),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![tmp_mount()]),
        ..Container::default()
    };
    Job {
        metadata: input.meta(name(input), component),
        spec: Some(JobSpec {
            backoff_limit: Some(6),
            active_deadline_seconds: Some(600),
            template: pod_template(input, component, container, Some("Never")),
            ..JobSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn migration_job_runs_admin_migrate() {
        let j = with_input(&spec(), migration);
        let n = j.metadata.name.as_deref().unwrap();
        assert!(
            n.starts_with("demo-migrate-") && n.len() == "demo-migrate-".len() + 8,
            "{n}"
        );
        let s = j.spec.unwrap();
        assert_eq!(s.backoff_limit, Some(6));
        let pod = s.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        assert_eq!(
            c.command,
            Some(vec!["chatpipe-admin".to_owned(), "migrate".to_owned()])
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

    #[test]
    fn job_name_follows_image_and_config() {
        let a = with_input(&spec(), name);
        assert_eq!(a, with_input(&spec(), name));
        let mut s = spec();
        s.image = "registry.example/chatpipe:1.2.4".into();
        assert_ne!(a, with_input(&s, name));
        let mut s = spec();
        s.processor.replicas = 1;
        assert_eq!(
            a,
            with_input(&s, name),
            "scaling does not re-run migrations"
        );
    }
}
