//! The container and pod template shared by every workload: image, command,
//! environment (the component's ConfigMap via `envFrom`, the Kafka
//! credentials for the components that talk to Kafka, the Postgres URL from
//! its Secret, ingest's webhook signing secrets from theirs, each channel's
//! credentials — the keys ingest verifies with to ingest, the keys delivery
//! sends with to delivery — from the channel's Secret, the listen
//! address), probes on `/healthz` and `/readyz`,
//! resources, locked-down security contexts, the processors' FAQ rules
//! directory ([`super::replies`]), and the component's checksum annotation.

use std::collections::BTreeMap;

use chatpipe_plan::{Delivery, Settings};
use chatpipe_settings::common::ServiceSettings;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, SeccompProfile, SecretEnvSource,
    SecretKeySelector, SecretProjection, SecurityContext, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels::{self, Component};
use super::{BuildInput, CHECKSUM_ANNOTATION};
use crate::crd::SecretKeyRef;
use crate::validate::ValidatedComponent;

/// UID/GID the containers run as (the conventional non-root user).
pub const RUN_AS_USER: i64 = 65532;
/// Name of the container port of every workload.
pub const PORT_NAME: &str = "http";

/// An environment variable with a literal value.
pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The literal environment variables that give a binary `settings`.
pub fn settings_env(settings: &Settings) -> Vec<EnvVar> {
    settings
        .to_env()
        .into_iter()
        .map(|(name, value)| env(&name, value))
        .collect()
}

/// Where a pod's secret files (certificates and keys the plan delivers as
/// files) are mounted, read-only.
pub const SECRETS_DIR: &str = "/etc/chatpipe/secrets";
/// Name of the projected volume that holds them.
const SECRETS_VOLUME: &str = "secrets";

/// The secret variables of `component` ([`chatpipe_plan::Topology::secrets_of`]):
/// a value as a `secretKeyRef`, a file as its path under [`SECRETS_DIR`].
/// No secret value ever appears in a pod spec.
pub fn secret_env(input: &BuildInput<'_>, component: Component) -> Vec<EnvVar> {
    input
        .topology
        .secrets_of(component)
        .map(|s| match s.delivery {
            Delivery::Value => secret_env_var(s.env.clone(), &s.secret),
            Delivery::File(file) => env(&s.env, format!("{SECRETS_DIR}/{file}")),
        })
        .collect()
}

/// The projected volume of `component`'s secret files and its mount, when
/// the plan delivers it any file.
pub fn secrets_volume(
    input: &BuildInput<'_>,
    component: Component,
) -> Option<(Volume, VolumeMount)> {
    let sources: Vec<VolumeProjection> = input
        .topology
        .secrets_of(component)
        .filter_map(|s| match s.delivery {
            Delivery::File(file) => Some(VolumeProjection {
                secret: Some(SecretProjection {
                    name: s.secret.name.clone(),
                    items: Some(vec![KeyToPath {
                        key: s.secret.key.clone(),
                        path: file.to_owned(),
                        mode: None,
                    }]),
                    optional: Some(false),
                }),
                ..VolumeProjection::default()
            }),
            Delivery::Value => None,
        })
        .collect();
    if sources.is_empty() {
        return None;
    }
    Some((
        Volume {
            name: SECRETS_VOLUME.to_owned(),
            projected: Some(ProjectedVolumeSource {
                // Readable by the pod's group (fsGroup) only.
                default_mode: Some(0o440),
                sources: Some(sources),
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: SECRETS_VOLUME.to_owned(),
            mount_path: SECRETS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ))
}

/// The volumes of `component`'s pods besides `/tmp`, with their mounts:
/// its secret files, then the FAQ rules directory (processors with rules).
fn extra_volumes(input: &BuildInput<'_>, component: Component) -> Vec<(Volume, VolumeMount)> {
    secrets_volume(input, component)
        .into_iter()
        .chain(super::replies::volume(input, component))
        .collect()
}

/// The volume mounts of `component`'s container: `/tmp`, then its secret
/// files when it has any, then the FAQ rules directory when it reads one.
pub fn volume_mounts(input: &BuildInput<'_>, component: Component) -> Vec<VolumeMount> {
    let mut v = vec![tmp_mount()];
    v.extend(extra_volumes(input, component).into_iter().map(|(_, m)| m));
    v
}

/// The variable `name`, read from the Secret key `s` (which must exist).
fn secret_env_var(name: String, s: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name,
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: s.name.clone(),
                key: s.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// `envFrom`: the component's ConfigMap, then the Kafka credentials Secret
/// when set and the component talks to Kafka.
pub fn env_from(input: &BuildInput<'_>, component: Component) -> Vec<EnvFromSource> {
    let mut v = vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource {
            name: labels::config_map_name(input.name, component),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    }];
    let credentials = input
        .pipeline
        .kafka
        .credentials_secret
        .as_ref()
        .filter(|_| component.reads_kafka());
    if let Some(secret) = credentials {
        v.push(EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.clone(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        });
    }
    v
}

/// Container security context: non-root, read-only root file system, no
/// privilege escalation, every capability dropped.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// Pod security context: non-root with the runtime's default seccomp profile.
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

fn http_probe(path: &str, period: i32, initial_delay: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// Readiness probe: `GET /readyz` (dependencies answer).
pub fn readiness_probe() -> Probe {
    http_probe("/readyz", 5, 2)
}

/// Liveness probe: `GET /healthz` (the process is alive).
pub fn liveness_probe() -> Probe {
    http_probe("/healthz", 10, 10)
}

/// The main container of a workload: runs the component's binary
/// listening on `port`, with the listener, the Postgres URL from its
/// Secret, then `pod_settings` (settings kept on the pod template rather
/// than in the ConfigMap) as its env.
pub fn service_container(
    input: &BuildInput<'_>,
    component: Component,
    port: i32,
    size: &ValidatedComponent,
    pod_settings: Settings,
) -> Container {
    let listen = Settings::none(component).with_service(ServiceSettings {
        listen: Some(std::net::SocketAddr::from((
            [0, 0, 0, 0],
            listen_port(port),
        ))),
        ..ServiceSettings::default()
    });
    let mut env = settings_env(&listen);
    env.extend(secret_env(input, component));
    env.extend(settings_env(&pod_settings));
    Container {
        name: component.as_str().to_owned(),
        image: Some(input.pipeline.image.clone()),
        image_pull_policy: input.pipeline.image_pull_policy.clone(),
        command: Some(vec![component.binary().to_owned()]),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_owned()),
            container_port: port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        env: Some(env),
        env_from: Some(env_from(input, component)),
        readiness_probe: Some(readiness_probe()),
        liveness_probe: Some(liveness_probe()),
        resources: size.resources.clone(),
        security_context: Some(container_security_context()),
        volume_mounts: Some(volume_mounts(input, component)),
        ..Container::default()
    }
}

/// A container port as a listener port (the builders' ports are constants
/// within range).
fn listen_port(port: i32) -> u16 {
    u16::try_from(port).unwrap_or_default()
}

/// `/tmp` as an emptyDir, since the root file system is read-only.
pub fn tmp_mount() -> VolumeMount {
    VolumeMount {
        name: "tmp".to_owned(),
        mount_path: "/tmp".to_owned(),
        ..VolumeMount::default()
    }
}

fn tmp_volume() -> Volume {
    Volume {
        name: "tmp".to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// The annotations of a workload's pod template: the component's checksum
/// (a change rolls the pods).
pub fn checksum_annotations(
    input: &BuildInput<'_>,
    component: Component,
) -> BTreeMap<String, String> {
    BTreeMap::from([(
        CHECKSUM_ANNOTATION.to_owned(),
        input.checksums.of(component).to_owned(),
    )])
}

/// A pod template around `container`: selector labels plus the common
/// labels, `annotations`, security context, no service account token (the
/// pods never talk to the API server).
pub fn pod_template(
    input: &BuildInput<'_>,
    component: Component,
    container: Container,
    restart_policy: Option<&str>,
    annotations: BTreeMap<String, String>,
) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels::labels(input.name, component)),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(pod_security_context()),
            termination_grace_period_seconds: Some(30),
            restart_policy: restart_policy.map(str::to_owned),
            volumes: Some(
                std::iter::once(tmp_volume())
                    .chain(extra_volumes(input, component).into_iter().map(|(v, _)| v))
                    .collect(),
            ),
            ..PodSpec::default()
        }),
    }
}

/// Test helpers shared by the workload builder tests.
#[cfg(test)]
pub(crate) mod checks {
    use super::*;
    use chatpipe_settings::ingest::webhook_secrets_env;

    /// The literal value of env var `name` in `c`.
    pub fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
        c.env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .as_deref()
    }

    /// Asserts the parts every chatpipe pod template shares.
    pub fn assert_common_pod(t: &PodTemplateSpec, component: Component, port: i32) {
        let meta = t.metadata.as_ref().unwrap();
        let l = meta.labels.as_ref().unwrap();
        for (k, v) in labels::selector("demo", component) {
            assert_eq!(l.get(&k), Some(&v), "pod label {k}");
        }
        assert_eq!(
            meta.annotations.as_ref().unwrap()[CHECKSUM_ANNOTATION],
            format!("sum-{}", component.as_str())
        );
        let spec = t.spec.as_ref().unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        let psc = spec.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(spec.containers.len(), 1);
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.example/chatpipe:1.2.3"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_owned()])
        );
        // Env: listen address, the URL from its Secret, config via envFrom.
        assert_eq!(
            env_value(c, "CHATPIPE_LISTEN"),
            Some(format!("0.0.0.0:{port}").as_str())
        );
        let pg = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "CHATPIPE_POSTGRES_URL")
            .unwrap();
        assert!(pg.value.is_none(), "the URL never appears in plain text");
        let sel = pg
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((sel.name.as_str(), sel.key.as_str()), ("pg", "url"));
        // Ingest (alone) reads the webhook signing secrets from their Secret.
        let wh = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == webhook_secrets_env());
        if component == Component::Ingest {
            let wh = wh.expect("ingest gets the webhook secrets");
            assert!(wh.value.is_none(), "the secrets never appear in plain text");
            let sel = wh
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap();
            assert_eq!(
                (sel.name.as_str(), sel.key.as_str(), sel.optional),
                ("webhooks", "secrets", Some(false))
            );
        } else {
            assert!(wh.is_none(), "{component:?} does not read webhook secrets");
        }
        let from = c.env_from.as_ref().unwrap();
        assert_eq!(
            from[0].config_map_ref.as_ref().unwrap().name,
            format!("demo-{}-config", component.as_str())
        );
        if !component.reads_kafka() {
            assert_eq!(from.len(), 1, "{component} does not read Kafka credentials");
        } else {
            assert_eq!(from[1].secret_ref.as_ref().unwrap().name, "kafka-creds");
        }
        // Port and probes.
        let ports = c.ports.as_ref().unwrap();
        assert_eq!(ports[0].container_port, port);
        assert_eq!(ports[0].name.as_deref(), Some(PORT_NAME));
        let ready = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        assert_eq!(ready.port, IntOrString::String(PORT_NAME.into()));
        let live = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(live.path.as_deref(), Some("/healthz"));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::crd::{ApiAuthSpec, KafkaSaslSpec, KafkaTlsSpec};

    fn key(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    fn secret_ref(e: &EnvVar) -> Option<(&str, &str)> {
        let s = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
        Some((s.name.as_str(), s.key.as_str()))
    }

    /// Each component gets exactly its secrets: its own database URL,
    /// Kafka credentials as Secret references and the CA as a mounted
    /// file (Kafka readers only), the JWT secret (api only); no value ever
    /// appears in the pod spec.
    #[test]
    fn secrets_reach_their_readers_as_references_and_files() {
        let mut s = spec();
        s.kafka.tls = Some(KafkaTlsSpec {
            ca_secret_ref: Some(key("kafka", "ca.crt")),
            ..KafkaTlsSpec::default()
        });
        s.kafka.sasl = Some(KafkaSaslSpec {
            mechanism: "SCRAM-SHA-512".into(),
            username_secret_ref: key("kafka", "username"),
            password_secret_ref: key("kafka", "password"),
        });
        s.api.auth = Some(ApiAuthSpec {
            jwt_secret_ref: key("api", "jwt"),
            access_token_ttl: None,
            refresh_token_ttl: None,
            oidc: None,
        });
        s.api.postgres_url_secret = Some(key("pg-api", "url"));
        for component in [Component::Ingest, Component::Processor, Component::Api] {
            let (env, volume) = with_input(&s, |i| {
                (secret_env(i, component), secrets_volume(i, component))
            });
            let by_name = |n: &str| env.iter().find(|e| e.name == n);
            let pg = secret_ref(by_name("CHATPIPE_POSTGRES_URL").unwrap()).unwrap();
            let jwt = by_name("CHATPIPE_API_JWT_SECRET");
            let password = by_name("CHATPIPE_KAFKA_SASL_PASSWORD");
            let ca = by_name("CHATPIPE_KAFKA_TLS_CA_FILE");
            if component == Component::Api {
                assert_eq!(pg, ("pg-api", "url"));
                assert_eq!(secret_ref(jwt.unwrap()), Some(("api", "jwt")));
                assert!(password.is_none() && ca.is_none() && volume.is_none());
            } else {
                assert_eq!(pg, ("pg", "url"), "{component:?}");
                assert!(jwt.is_none());
                assert_eq!(secret_ref(password.unwrap()), Some(("kafka", "password")));
                let ca = ca.unwrap();
                assert_eq!(
                    ca.value.as_deref(),
                    Some("/etc/chatpipe/secrets/kafka-ca.pem")
                );
                let (v, m) = volume.unwrap();
                assert_eq!(m.mount_path, SECRETS_DIR);
                assert_eq!(m.read_only, Some(true));
                let sources = v.projected.unwrap().sources.unwrap();
                let item = &sources[0].secret.as_ref().unwrap().items.as_ref().unwrap()[0];
                assert_eq!(
                    (item.key.as_str(), item.path.as_str()),
                    ("ca.crt", "kafka-ca.pem")
                );
            }
            for e in &env {
                if e.name != "CHATPIPE_KAFKA_TLS_CA_FILE" {
                    assert!(e.value.is_none(), "{} is a Secret reference", e.name);
                }
            }
        }
    }

    /// A Postgres CA reaches every component, the migration included, as a
    /// file in the secrets volume.
    #[test]
    fn the_postgres_ca_is_mounted_into_every_component() {
        let mut s = spec();
        s.postgres.ca_secret_ref = Some(key("pg-ca", "ca.crt"));
        for component in Component::ALL {
            let (env, volume, mounts) = with_input(&s, |i| {
                (
                    secret_env(i, component),
                    secrets_volume(i, component),
                    volume_mounts(i, component),
                )
            });
            let ca = env
                .iter()
                .find(|e| e.name == "CHATPIPE_POSTGRES_CA_FILE")
                .unwrap_or_else(|| panic!("{component:?} gets the CA"));
            assert_eq!(
                ca.value.as_deref(),
                Some("/etc/chatpipe/secrets/postgres-ca.pem")
            );
            let (v, m) = volume.unwrap();
            assert!(mounts.contains(&m), "{component:?} mounts it");
            let sources = v.projected.unwrap().sources.unwrap();
            let item = &sources[0].secret.as_ref().unwrap().items.as_ref().unwrap()[0];
            assert_eq!(
                (
                    sources[0].secret.as_ref().unwrap().name.as_str(),
                    item.key.as_str(),
                    item.path.as_str()
                ),
                ("pg-ca", "ca.crt", "postgres-ca.pem")
            );
        }
    }
}
