//! Reading the manifest local mode runs: one or more multi-document YAML
//! files holding exactly one `ChatPipeline` and the `Secret`s it references.
//!
//! [`load`] reads and parses the files; [`resolve`] (pure) validates the
//! pipeline with the one validation both deployments use
//! ([`chatpipe_plan::validate::validate`]), plans it
//! ([`chatpipe_plan::plan`]) and resolves `spec.postgres.urlSecret` (and
//! `spec.ingest.auth.secretRef`, when set) against `Secret` documents of
//! the same files (`stringData`, or base64 `data`), giving the [`LocalPipeline`] local mode runs. Namespaces are ignored:
//! everything runs on this machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chatpipe_plan::crd::{ChatPipeline, SecretKeyRef};
use chatpipe_plan::validate::{validate, ValidationProblem};
use chatpipe_plan::Delivery;
use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

use crate::processes::{LocalPipeline, ResolvedSecret};

/// A parsed manifest: the pipeline and the Secrets found beside it.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The `ChatPipeline` document.
    pub pipeline: ChatPipeline,
    /// Secret documents by `metadata.name`.
    pub secrets: BTreeMap<String, Secret>,
}

/// Why a manifest cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A document is not valid YAML or not the shape of its kind.
    #[error("{path}: document {index}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based index of the document in the file.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// No `ChatPipeline` document was found.
    #[error(
        "no ChatPipeline document (apiVersion chatpipe.dev/v1alpha1, kind ChatPipeline) in {files}"
    )]
    NoPipeline {
        /// The files searched.
        files: String,
    },
    /// More than one `ChatPipeline` document was found.
    #[error(
        "{count} ChatPipeline documents ({names}); local mode runs exactly one per invocation"
    )]
    SeveralPipelines {
        /// How many.
        count: usize,
        /// Their names.
        names: String,
    },
    /// The spec failed validation.
    #[error("ChatPipeline {name} is invalid:\n  - {}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  - "))]
    Invalid {
        /// The pipeline's name.
        name: String,
        /// Every problem found.
        problems: Vec<ValidationProblem>,
    },
    /// A referenced Secret is not in the files.
    #[error("{field} names Secret {name:?}, which is not in the manifest; add a document `kind: Secret` named {name:?} with stringData.{key}: {example}")]
    SecretMissing {
        /// The spec field that references it (`spec.postgres.urlSecret`,
        /// `spec.ingest.auth.secretRef`).
        field: &'static str,
        /// Secret name.
        name: String,
        /// Key wanted.
        key: String,
        /// What the value looks like.
        example: &'static str,
    },
    /// The Secret lacks the key, or its value is empty or not UTF-8.
    #[error("Secret {name:?} ({field}) has no usable key {key:?} (keys present: {present})")]
    SecretKeyMissing {
        /// The spec field that references it.
        field: &'static str,
        /// Secret name.
        name: String,
        /// Key wanted.
        key: String,
        /// Keys the Secret has.
        present: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// Parses the text of one file (any number of `---`-separated documents)
/// into its ChatPipeline and Secret documents; other kinds are ignored.
pub fn parse_documents(
    path: &Path,
    text: &str,
    pipelines: &mut Vec<ChatPipeline>,
    secrets: &mut BTreeMap<String, Secret>,
) -> Result<(), ManifestError> {
    let err = |index: usize, message: String| ManifestError::Parse {
        path: path.to_owned(),
        index,
        message,
    };
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| err(index, e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let meta: TypeMeta =
            serde_yaml::from_value(value.clone()).map_err(|e| err(index, e.to_string()))?;
        match (meta.api_version.as_str(), meta.kind.as_str()) {
            ("chatpipe.dev/v1alpha1", "ChatPipeline") => {
                let p: ChatPipeline = serde_yaml::from_value(value)
                    .map_err(|e| err(index, format!("ChatPipeline: {e}")))?;
                pipelines.push(p);
            }
            (_, "ChatPipeline") => {
                return Err(err(
                    index,
                    format!(
                        "ChatPipeline with apiVersion {:?}; expected chatpipe.dev/v1alpha1",
                        meta.api_version
                    ),
                ))
            }
            ("v1", "Secret") => {
                let s: Secret = serde_yaml::from_value(value)
                    .map_err(|e| err(index, format!("Secret: {e}")))?;
                let name = s.metadata.name.clone().unwrap_or_default();
                secrets.insert(name, s);
            }
            _ => {
                tracing::debug!(kind = %meta.kind, index, path = %path.display(), "ignoring document")
            }
        }
    }
    Ok(())
}

/// Reads and parses `files`; exactly one ChatPipeline must be among them.
pub fn load(files: &[PathBuf]) -> Result<Manifest, ManifestError> {
    let mut pipelines = Vec::new();
    let mut secrets = BTreeMap::new();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        parse_documents(path, &text, &mut pipelines, &mut secrets)?;
    }
    match pipelines.len() {
        0 => Err(ManifestError::NoPipeline {
            files: files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
        1 => Ok(Manifest {
            pipeline: pipelines.remove(0),
            secrets,
        }),
        n => Err(ManifestError::SeveralPipelines {
            count: n,
            names: pipelines
                .iter()
                .map(pipeline_name)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// `metadata.name` of a pipeline, or `(unnamed)`.
pub fn pipeline_name(p: &ChatPipeline) -> String {
    p.metadata
        .name
        .clone()
        .unwrap_or_else(|| "(unnamed)".to_owned())
}

/// The value of `key` in `secret`: `stringData` wins over `data`, as on
/// the API server.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Some(v.clone());
    }
    let bytes = secret.data.as_ref().and_then(|d| d.get(key))?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn secret_keys(secret: &Secret) -> String {
    let mut keys: Vec<&str> = Vec::new();
    if let Some(d) = &secret.string_data {
        keys.extend(d.keys().map(String::as_str));
    }
    if let Some(d) = &secret.data {
        keys.extend(d.keys().map(String::as_str));
    }
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        "none".to_owned()
    } else {
        keys.join(", ")
    }
}

/// Where secret files go until local mode names its state directory.
pub const DEFAULT_SECRETS_DIR: &str = ".chatpipe/secrets";

/// The trimmed, non-empty value of the key `r` names, among the manifest's
/// Secrets; `field` and `example` explain a missing one.
fn resolve_key(
    manifest: &Manifest,
    r: &SecretKeyRef,
    field: &'static str,
    example: &'static str,
) -> Result<String, ManifestError> {
    resolve_raw(manifest, r, field, example).map(|v| v.trim().to_owned())
}

/// The non-blank value of the key `r` names, as written.
fn resolve_raw(
    manifest: &Manifest,
    r: &SecretKeyRef,
    field: &'static str,
    example: &'static str,
) -> Result<String, ManifestError> {
    let secret = manifest
        .secrets
        .get(&r.name)
        .ok_or_else(|| ManifestError::SecretMissing {
            field,
            name: r.name.clone(),
            key: r.key.clone(),
            example,
        })?;
    secret_value(secret, &r.key)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ManifestError::SecretKeyMissing {
            field,
            name: r.name.clone(),
            key: r.key.clone(),
            present: secret_keys(secret),
        })
}

/// Validates and plans the pipeline and resolves every Secret key of the
/// plan (the Postgres URLs, Kafka credentials and certificates, ingest's
/// webhook signing secrets, the api's JWT secret) into a
/// [`LocalPipeline`]. Pure.
pub fn resolve(manifest: &Manifest) -> Result<LocalPipeline, ManifestError> {
    let name = pipeline_name(&manifest.pipeline);
    let v = validate(&manifest.pipeline.spec).map_err(|problems| ManifestError::Invalid {
        name: name.clone(),
        problems,
    })?;
    let topology = chatpipe_plan::plan(&v);
    let postgres_url = resolve_key(
        manifest,
        &topology.postgres_url_secret,
        "spec.postgres.urlSecret",
        "postgres://…",
    )?;
    let secrets = topology
        .secrets
        .iter()
        .map(|input| {
            let value = match input.delivery {
                // A certificate keeps its own line structure.
                Delivery::File(_) => {
                    resolve_raw(manifest, &input.secret, input.field, input.example)?
                }
                Delivery::Value => {
                    resolve_key(manifest, &input.secret, input.field, input.example)?
                }
            };
            Ok(ResolvedSecret {
                input: input.clone(),
                value,
            })
        })
        .collect::<Result<Vec<_>, ManifestError>>()?;
    Ok(LocalPipeline {
        topology,
        postgres_url,
        secrets,
        secrets_dir: PathBuf::from(DEFAULT_SECRETS_DIR),
        reply_rules_file: PathBuf::from(DEFAULT_SECRETS_DIR)
            .with_file_name("replies")
            .join("rules.json"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpipe_plan::{Component, Settings};
    use chatpipe_settings::ingest::IngestSettings;
    use chatpipe_settings::processor::ProcessorSettings;
    use std::time::Duration;

    fn processor(p: &LocalPipeline) -> &ProcessorSettings {
        match &p.topology.get(Component::Processor).settings {
            Settings::Processor(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn ingest(p: &LocalPipeline) -> &IngestSettings {
        match &p.topology.get(Component::Ingest).settings {
            Settings::Ingest(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn replicas(p: &LocalPipeline, c: Component) -> u32 {
        p.topology.get(c).replicas
    }

    const PIPELINE: &str = r#"
apiVersion: chatpipe.dev/v1alpha1
kind: ChatPipeline
metadata:
  name: local
  annotations:
    chatpipe.dev/paused: "false"
spec:
  image: chatpipe:dev
  kafka:
    bootstrapServers: 127.0.0.1:9092
    topic: chatpipe.events
    partitions: 8
  postgres:
    urlSecret: { name: chatpipe-postgres, key: url }
  processing:
    groupingGap: 1m30s
    lateArrivalTolerance: 6s
  ingest: { replicas: 1, maxBodyBytes: 65536 }
  processor: { replicas: 2 }
  api: { replicas: 1 }
"#;

    const SECRET_STRING: &str = r#"
apiVersion: v1
kind: Secret
metadata: { name: chatpipe-postgres }
stringData:
  url: postgres://postgres@127.0.0.1:5432/chatpipe
"#;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.yaml");
        std::fs::write(&path, text).unwrap();
        load(&[path])
    }

    #[test]
    fn pipeline_and_string_secret_resolve() {
        let m = parse(&format!("{PIPELINE}---{SECRET_STRING}")).unwrap();
        assert!(!m.pipeline.is_paused());
        let s = resolve(&m).unwrap();
        assert_eq!(
            s.postgres_url,
            "postgres://postgres@127.0.0.1:5432/chatpipe"
        );
        assert_eq!(s.topology.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(s.topology.kafka.partitions, 8);
        assert_eq!(s.topology.kafka.topic, "chatpipe.events");
        assert_eq!(replicas(&s, Component::Processor), 2);
        assert_eq!(replicas(&s, Component::Ingest), 1);
        assert_eq!(replicas(&s, Component::Api), 1);
        assert_eq!(ingest(&s).max_body_bytes, Some(65536));
        assert_eq!(ingest(&s).max_content_bytes, None);
        // Go durations become typed settings.
        assert_eq!(processor(&s).grouping_gap, Some(Duration::from_secs(90)));
        assert_eq!(processor(&s).late_tolerance, Some(Duration::from_secs(6)));
        assert_eq!(processor(&s).watermark_allowance, None);
    }

    #[test]
    fn group_limits_resolve_to_what_the_processor_reads() {
        let with = PIPELINE.replace(
            "lateArrivalTolerance: 6s",
            "lateArrivalTolerance: 6s\n    maxGroupSpan: 1m30s\n    maxGroupMessages: 250\n    maxClockSkew: 0s",
        );
        let s = resolve(&parse(&format!("{with}---{SECRET_STRING}")).unwrap()).unwrap();
        let p = processor(&s);
        assert_eq!(p.max_group_span, Some(Duration::from_secs(90)));
        assert_eq!(p.max_group_messages, Some(250));
        assert_eq!(p.max_clock_skew, Some(Duration::ZERO));
        let without = resolve(&parse_text(&format!("{PIPELINE}---{SECRET_STRING}"))).unwrap();
        let p = processor(&without);
        assert_eq!(p.max_group_span, None);
        assert_eq!(p.max_group_messages, None);
        assert_eq!(p.max_clock_skew, None);
    }

    /// Local mode takes the one duration grammar of the CRD: `1m 30s`
    /// (which the services' own parser would read) is refused in a manifest.
    #[test]
    fn manifest_durations_are_go_durations() {
        for bad in ["1m 30s", "90", "1d", " 5s"] {
            let text = PIPELINE.replace("groupingGap: 1m30s", &format!("groupingGap: {bad:?}"));
            let e = resolve(&parse_text(&format!("{text}---{SECRET_STRING}"))).unwrap_err();
            assert!(
                e.to_string().contains("spec.processing.groupingGap"),
                "{bad}: {e}"
            );
        }
    }

    fn parse_text(text: &str) -> Manifest {
        parse(text).unwrap()
    }

    #[test]
    fn base64_data_secret_and_other_kinds_and_empty_documents() {
        // "postgres://u:pw@db:5432/x" in base64.
        let secret = r#"
apiVersion: v1
kind: Secret
metadata: { name: chatpipe-postgres }
data:
  url: cG9zdGdyZXM6Ly91OnB3QGRiOjU0MzIveA==
"#;
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: x }\n";
        let m = parse(&format!("---\n{cm}---\n{secret}---\n{PIPELINE}---\n")).unwrap();
        assert_eq!(
            resolve(&m).unwrap().postgres_url,
            "postgres://u:pw@db:5432/x"
        );
    }

    #[test]
    fn string_data_wins_over_data() {
        let secret = r#"
apiVersion: v1
kind: Secret
metadata: { name: chatpipe-postgres }
data: { url: eA== }
stringData: { url: "postgres://s@h/db" }
"#;
        let m = parse(&format!("{PIPELINE}---{secret}")).unwrap();
        assert_eq!(resolve(&m).unwrap().postgres_url, "postgres://s@h/db");
    }

    #[test]
    fn secrets_may_come_from_another_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        std::fs::write(&a, PIPELINE).unwrap();
        std::fs::write(&b, SECRET_STRING).unwrap();
        let m = load(&[a, b]).unwrap();
        assert!(resolve(&m).is_ok());
    }

    #[test]
    fn missing_secret_or_key_is_explained() {
        let m = parse(PIPELINE).unwrap();
        let e = resolve(&m).unwrap_err().to_string();
        assert!(
            e.contains("chatpipe-postgres") && e.contains("stringData.url"),
            "{e}"
        );

        let other_key = SECRET_STRING.replace("url:", "dsn:");
        let m = parse(&format!("{PIPELINE}---{other_key}")).unwrap();
        let e = resolve(&m).unwrap_err().to_string();
        assert!(
            e.contains("no usable key \"url\"") && e.contains("dsn"),
            "{e}"
        );
    }

    const WEBHOOK_SECRET: &str = r#"
apiVersion: v1
kind: Secret
metadata: { name: chatpipe-webhooks }
stringData:
  secrets: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_b2xkc2VjcmV0 "
"#;

    fn with_auth() -> String {
        PIPELINE.replace(
            "ingest: { replicas: 1, maxBodyBytes: 65536 }",
            "ingest:\n    replicas: 1\n    auth: { secretRef: { name: chatpipe-webhooks, key: secrets } }",
        )
    }

    #[test]
    fn webhook_secrets_resolve_from_their_secret() {
        let m = parse(&format!(
            "{}---{SECRET_STRING}---{WEBHOOK_SECRET}",
            with_auth()
        ))
        .unwrap();
        let s = resolve(&m).unwrap();
        let env = chatpipe_settings::ingest::webhook_secrets_env();
        assert_eq!(
            s.secret_env(Component::Ingest)
                .get(&env)
                .map(String::as_str),
            Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_b2xkc2VjcmV0")
        );
        for c in [Component::Processor, Component::Api] {
            assert!(!s.secret_env(c).contains_key(&env), "{c}");
        }
        // Without auth nothing is resolved (ingest accepts unsigned webhooks).
        let s = resolve(&parse_text(&format!("{PIPELINE}---{SECRET_STRING}"))).unwrap();
        assert!(!s.secret_env(Component::Ingest).contains_key(&env));
    }

    #[test]
    fn missing_webhook_secret_or_key_is_explained() {
        let m = parse(&format!("{}---{SECRET_STRING}", with_auth())).unwrap();
        let e = resolve(&m).unwrap_err().to_string();
        assert!(
            e.contains("spec.ingest.auth.secretRef")
                && e.contains("chatpipe-webhooks")
                && e.contains("stringData.secrets: whsec_"),
            "{e}"
        );
        let other_key = WEBHOOK_SECRET.replace("secrets:", "keys:");
        let m = parse(&format!("{}---{SECRET_STRING}---{other_key}", with_auth())).unwrap();
        let e = resolve(&m).unwrap_err().to_string();
        assert!(
            e.contains("no usable key \"secrets\"")
                && e.contains("spec.ingest.auth.secretRef")
                && e.contains("keys"),
            "{e}"
        );
        let empty = WEBHOOK_SECRET.replace(
            "\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_b2xkc2VjcmV0 \"",
            "\" \"",
        );
        let m = parse(&format!("{}---{SECRET_STRING}---{empty}", with_auth())).unwrap();
        assert!(matches!(
            resolve(&m).unwrap_err(),
            ManifestError::SecretKeyMissing {
                field: "spec.ingest.auth.secretRef",
                ..
            }
        ));
    }

    /// The CRD's rule holds in local mode too: an Ingress without auth is
    /// refused unless unauthenticated webhooks are allowed.
    #[test]
    fn ingress_without_auth_is_refused() {
        let with_ingress = PIPELINE.replace(
            "ingest: { replicas: 1, maxBodyBytes: 65536 }",
            "ingest:\n    replicas: 1\n    ingress: { host: hooks.example.com }",
        );
        let e = resolve(&parse_text(&format!("{with_ingress}---{SECRET_STRING}"))).unwrap_err();
        assert!(e.to_string().contains("spec.ingest.auth"), "{e}");
        let allowed = with_ingress.replace(
            "ingress: { host: hooks.example.com }",
            "ingress: { host: hooks.example.com }\n    allowUnauthenticated: true",
        );
        assert!(resolve(&parse_text(&format!("{allowed}---{SECRET_STRING}"))).is_ok());
    }

    #[test]
    fn invalid_spec_lists_every_problem() {
        let bad = PIPELINE
            .replace("replicas: 2", "replicas: 9")
            .replace("groupingGap: 1m30s", "groupingGap: soon");
        let m = parse(&format!("{bad}---{SECRET_STRING}")).unwrap();
        let e = resolve(&m).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("spec.processor.replicas"), "{text}");
        assert!(text.contains("spec.processing.groupingGap"), "{text}");
        match e {
            ManifestError::Invalid { name, problems } => {
                assert_eq!(name, "local");
                assert_eq!(problems.len(), 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zero_or_two_pipelines_are_refused() {
        let e = parse(SECRET_STRING).unwrap_err();
        assert!(matches!(e, ManifestError::NoPipeline { .. }), "{e}");
        let two = format!(
            "{PIPELINE}---{}",
            PIPELINE.replace("name: local", "name: b")
        );
        let e = parse(&two).unwrap_err();
        assert!(
            matches!(e, ManifestError::SeveralPipelines { count: 2, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("local, b"), "{e}");
    }

    #[test]
    fn malformed_documents_name_file_and_index() {
        let e = parse(&format!("{SECRET_STRING}---\nkind: [\n")).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("m.yaml") && text.contains("document 2"),
            "{text}"
        );

        let wrong = PIPELINE.replace("partitions: 8", "partitions: eight");
        let e = parse(&wrong).unwrap_err().to_string();
        assert!(
            e.contains("document 1") && e.contains("ChatPipeline"),
            "{e}"
        );

        let old = PIPELINE.replace("chatpipe.dev/v1alpha1", "chatpipe.dev/v1");
        let e = parse(&old).unwrap_err().to_string();
        assert!(e.contains("expected chatpipe.dev/v1alpha1"), "{e}");
    }

    #[test]
    fn missing_file_is_reported() {
        let e = load(&[PathBuf::from("/nonexistent/x.yaml")]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.yaml"), "{e}");
    }

    /// Every shipped example that local mode can run resolves (its
    /// Secrets are in the file), so `scripts/run.sh examples/<file>` starts.
    #[test]
    fn every_shipped_example_resolves() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Kubernetes-only examples reference Secrets applied separately.
            if !text.contains("kind: ChatPipeline") || !text.contains("kind: Secret") {
                continue;
            }
            let manifest = load(std::slice::from_ref(&path))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            resolve(&manifest).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
        assert!(checked >= 3, "only {checked} examples checked");
    }
}
