//! How the operator itself reaches a pipeline's brokers (to ensure its
//! topic): the spec's TLS and SASL with the values of the Secrets the
//! controller read. librdkafka reads certificates from files, so a CA or
//! client certificate is written to a file of the operator's own (mode
//! 0600, named by a digest of its content, so pipelines sharing a CA share
//! the file and a new value is a new file).

use std::path::{Path, PathBuf};

use chatpipe_core::kafka::{ClientCert, KafkaConnection, KafkaSasl, KafkaSecurity, KafkaTls};
use chatpipe_settings::common::Redacted;
use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha256};

use crate::build::configmap::ReferencedSecrets;
use crate::crd::SecretKeyRef;
use crate::error::{Error, Result};
use crate::validate::ValidatedKafka;

/// The value of the key `r` among the Secrets read, as UTF-8.
fn value(secrets: &ReferencedSecrets, r: &SecretKeyRef, field: &str) -> Result<String> {
    let secret: Option<&Secret> = secrets.keys.get(r);
    let bytes = secret
        .and_then(|s| {
            s.data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|v| v.0.clone())
        })
        .ok_or_else(|| {
            Error::SecretMissing(format!("{} ({field}) has no key {}", r.name, r.key))
        })?;
    String::from_utf8(bytes).map_err(|_| {
        Error::SecretMissing(format!(
            "{} ({field}) key {} is not UTF-8 text",
            r.name, r.key
        ))
    })
}

/// The file under `dir` holding `content` (written when missing).
fn file_of(dir: &Path, suffix: &str, content: &str) -> Result<PathBuf> {
    let digest = Sha256::digest(content.as_bytes());
    let name: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("{name}{suffix}"));
    if path.exists() {
        return Ok(path);
    }
    let io = |e: std::io::Error| Error::Kafka(format!("writing {}: {e}", path.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&path).map_err(io)?;
    std::io::Write::write_all(&mut f, content.as_bytes()).map_err(io)?;
    Ok(path)
}

/// Where the operator keeps certificate files.
pub fn default_dir() -> PathBuf {
    std::env::temp_dir().join("chatpipe-operator-kafka")
}

/// The connection to `kafka`'s brokers with its TLS and SASL, certificate
/// files written under `dir`.
pub fn connection(
    kafka: &ValidatedKafka,
    secrets: &ReferencedSecrets,
    dir: &Path,
) -> Result<KafkaConnection> {
    let tls = match &kafka.tls {
        None => None,
        Some(t) => {
            let ca_file = match &t.ca_secret_ref {
                Some(r) => Some(file_of(
                    dir,
                    "-ca.pem",
                    &value(secrets, r, "kafka.tls.caSecretRef")?,
                )?),
                None => None,
            };
            let client_cert = match (&t.client_cert_secret_ref, &t.client_key_secret_ref) {
                (Some(c), Some(k)) => Some(ClientCert {
                    cert_file: file_of(
                        dir,
                        "-cert.pem",
                        &value(secrets, c, "kafka.tls.clientCertSecretRef")?,
                    )?,
                    key_file: file_of(
                        dir,
                        "-key.pem",
                        &value(secrets, k, "kafka.tls.clientKeySecretRef")?,
                    )?,
                }),
                _ => None,
            };
            Some(KafkaTls {
                ca_file,
                client_cert,
            })
        }
    };
    let sasl = match &kafka.sasl {
        None => None,
        Some(s) => Some(KafkaSasl {
            mechanism: s
                .mechanism
                .parse()
                .map_err(|_| Error::Kafka(format!("unknown SASL mechanism {:?}", s.mechanism)))?,
            username: value(
                secrets,
                &s.username_secret_ref,
                "kafka.sasl.usernameSecretRef",
            )?
            .trim()
            .to_owned(),
            password: Redacted(
                value(
                    secrets,
                    &s.password_secret_ref,
                    "kafka.sasl.passwordSecretRef",
                )?
                .trim()
                .to_owned(),
            ),
        }),
    };
    Ok(KafkaConnection {
        brokers: kafka.bootstrap_servers.clone(),
        security: KafkaSecurity { tls, sasl },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{KafkaSaslSpec, KafkaTlsSpec};
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn key(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    fn secret(r: &SecretKeyRef, v: &str) -> Secret {
        Secret {
            data: Some(BTreeMap::from([(
                r.key.clone(),
                ByteString(v.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        }
    }

    #[test]
    fn tls_and_sasl_come_from_the_secrets_read() {
        let dir = tempfile::tempdir().unwrap();
        let ca = key("kafka", "ca.crt");
        let user = key("kafka", "username");
        let pass = key("kafka", "password");
        let secrets = ReferencedSecrets {
            keys: BTreeMap::from([
                (ca.clone(), secret(&ca, "-----BEGIN CERTIFICATE-----\nX\n")),
                (user.clone(), secret(&user, "chatpipe\n")),
                (pass.clone(), secret(&pass, "s3cret")),
            ]),
            kafka: None,
        };
        let mut kafka = ValidatedKafka {
            bootstrap_servers: "k:9093".into(),
            topic: "t".into(),
            partitions: 1,
            replication_factor: 1,
            credentials_secret: None,
            tls: None,
            sasl: None,
        };
        let plain = connection(&kafka, &secrets, dir.path()).unwrap();
        assert_eq!(plain, KafkaConnection::plaintext("k:9093"));
        kafka.tls = Some(KafkaTlsSpec {
            ca_secret_ref: Some(ca),
            ..KafkaTlsSpec::default()
        });
        kafka.sasl = Some(KafkaSaslSpec {
            mechanism: "SCRAM-SHA-256".into(),
            username_secret_ref: user,
            password_secret_ref: pass,
        });
        let c = connection(&kafka, &secrets, dir.path()).unwrap();
        let ca_file = c.security.tls.unwrap().ca_file.unwrap();
        assert!(ca_file.starts_with(dir.path()));
        assert_eq!(
            std::fs::read_to_string(&ca_file).unwrap(),
            "-----BEGIN CERTIFICATE-----\nX\n"
        );
        let sasl = c.security.sasl.unwrap();
        assert_eq!(sasl.username, "chatpipe");
        assert_eq!(sasl.password.expose(), "s3cret");
        // A key missing from what was read is an error naming the field.
        let missing = ReferencedSecrets::default();
        let e = connection(&kafka, &missing, dir.path()).unwrap_err();
        assert!(e.to_string().contains("kafka.tls.caSecretRef"), "{e}");
    }
}
