//! How chatpipe's Kafka clients reach the brokers: the bootstrap servers
//! plus TLS and SASL ([`KafkaConnection`]), checked once from a binary's
//! command line ([`KafkaConnection::from_args`]) and written as the same
//! librdkafka properties into every client's configuration — producer,
//! consumer and admin ([`KafkaSecurity::apply`]).
//!
//! | TLS | SASL | `security.protocol` |
//! |-----|------|---------------------|
//! | no  | no   | `plaintext`         |
//! | yes | no   | `ssl`               |
//! | no  | yes  | `sasl_plaintext`    |
//! | yes | yes  | `sasl_ssl`          |
//!
//! With TLS the broker's certificate is verified against `ssl.ca.location`
//! (else the system's CA store) and its host name is checked
//! (`ssl.endpoint.identification.algorithm=https`). SASL sets
//! `sasl.mechanisms`, `sasl.username` and `sasl.password`.
//!
//! The password is a [`Redacted`]: `Debug` of every type here prints
//! `<redacted>`, and rdkafka's own `Debug` of a `ClientConfig` leaves
//! `sasl.password` out.

use std::path::PathBuf;

use anyhow::Context;
use chatpipe_settings::common::{env_of, KafkaArgs, Redacted};
use rdkafka::config::ClientConfig;

/// A SASL mechanism (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`): the
/// settings crate's type, whose names are librdkafka's `sasl.mechanisms`
/// values.
pub use chatpipe_settings::common::KafkaSaslMechanism as SaslMechanism;

/// Where the brokers are and how to reach them: what every Kafka client
/// of chatpipe is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConnection {
    /// Bootstrap servers, comma separated (`host:port,...`).
    pub brokers: String,
    /// TLS and SASL.
    pub security: KafkaSecurity,
}

/// TLS and SASL of a connection; the default is neither (plaintext).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaSecurity {
    /// Encrypt and verify the brokers with TLS.
    pub tls: Option<KafkaTls>,
    /// Authenticate with SASL.
    pub sasl: Option<KafkaSasl>,
}

/// TLS to the brokers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaTls {
    /// PEM bundle of the CAs that verify the brokers (`ssl.ca.location`);
    /// `None` uses the system's CA store.
    pub ca_file: Option<PathBuf>,
    /// This client's certificate, for brokers that require one (mutual TLS).
    pub client_cert: Option<ClientCert>,
}

/// A client certificate and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// `ssl.certificate.location`.
    pub cert_file: PathBuf,
    /// `ssl.key.location`.
    pub key_file: PathBuf,
}

/// SASL authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSasl {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// The user name.
    pub username: String,
    /// The password (`Debug` prints `<redacted>`).
    pub password: Redacted,
}

/// A combination of Kafka security flags that cannot work. The messages
/// name the flags and their variables, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KafkaSecurityError {
    /// A mechanism without user name or password.
    #[error("SASL mechanism {mechanism} needs a user name and a password; missing {missing}")]
    SaslIncomplete {
        /// The mechanism asked for.
        mechanism: SaslMechanism,
        /// What is missing (flags and variables).
        missing: String,
    },
    /// A user name or password without a mechanism.
    #[error(
        "{given} set without {}: choose PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
        describe("kafka_sasl_mechanism")
    )]
    SaslWithoutMechanism {
        /// What is set (flags and variables).
        given: String,
    },
    /// A client certificate without its key, or a key without the
    /// certificate.
    #[error("{given} set without {missing}: mutual TLS needs both")]
    ClientCertIncomplete {
        /// What is set.
        given: String,
        /// What is missing.
        missing: String,
    },
}

/// `--flag-name (ENV_NAME)` of the [`KafkaArgs`] argument `id`.
fn describe(id: &str) -> String {
    format!("--{} ({})", id.replace('_', "-"), env_of::<KafkaArgs>(id))
}

/// The SASL user name and/or password flags (those `username` and
/// `password` select), described and joined with "and".
fn credentials(username: bool, password: bool) -> String {
    [
        (username, "kafka_sasl_username"),
        (password, "kafka_sasl_password"),
    ]
    .into_iter()
    .filter(|(selected, _)| *selected)
    .map(|(_, id)| describe(id))
    .collect::<Vec<_>>()
    .join(" and ")
}

/// `Some` non-empty text (a variable set to the empty string counts as
/// unset: a deployment may write an optional secret that way).
fn given(v: Option<&str>) -> Option<&str> {
    v.filter(|s| !s.trim().is_empty())
}

impl KafkaConnection {
    /// `brokers` without TLS or SASL.
    pub fn plaintext(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            security: KafkaSecurity::default(),
        }
    }

    /// The connection a binary's Kafka flags describe. TLS is on with
    /// `--kafka-tls` or when a CA file or client certificate is given;
    /// SASL needs a mechanism, a user name and a password together.
    pub fn from_args(args: &KafkaArgs) -> Result<Self, KafkaSecurityError> {
        let ca = given(args.kafka_tls_ca_file.as_deref());
        let cert = given(args.kafka_tls_cert_file.as_deref());
        let key = given(args.kafka_tls_key_file.as_deref());
        let client_cert = match (cert, key) {
            (Some(cert), Some(key)) => Some(ClientCert {
                cert_file: cert.into(),
                key_file: key.into(),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(KafkaSecurityError::ClientCertIncomplete {
                    given: describe("kafka_tls_cert_file"),
                    missing: describe("kafka_tls_key_file"),
                })
            }
            (None, Some(_)) => {
                return Err(KafkaSecurityError::ClientCertIncomplete {
                    given: describe("kafka_tls_key_file"),
                    missing: describe("kafka_tls_cert_file"),
                })
            }
        };
        let tls = (args.kafka_tls || ca.is_some() || client_cert.is_some()).then(|| KafkaTls {
            ca_file: ca.map(PathBuf::from),
            client_cert,
        });

        let username = given(args.kafka_sasl_username.as_deref());
        let password = given(args.kafka_sasl_password.as_ref().map(Redacted::expose));
        let sasl = match (args.kafka_sasl_mechanism, username, password) {
            (Some(mechanism), Some(username), Some(password)) => Some(KafkaSasl {
                mechanism,
                username: username.to_owned(),
                password: Redacted(password.to_owned()),
            }),
            (Some(mechanism), username, password) => {
                return Err(KafkaSecurityError::SaslIncomplete {
                    mechanism,
                    missing: credentials(username.is_none(), password.is_none()),
                });
            }
            (None, None, None) => None,
            (None, username, password) => {
                return Err(KafkaSecurityError::SaslWithoutMechanism {
                    given: credentials(username.is_some(), password.is_some()),
                });
            }
        };
        Ok(Self {
            brokers: args.kafka_brokers.clone(),
            security: KafkaSecurity { tls, sasl },
        })
    }

    /// A client configuration with `bootstrap.servers` and the security
    /// properties set (the start of every client chatpipe builds).
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        self.security.apply(&mut c);
        c
    }
}

impl KafkaSecurity {
    /// Checks that the configured TLS files are readable, with an error
    /// naming the file (librdkafka's own error does not).
    pub fn check_files(&self) -> anyhow::Result<()> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let cert = tls.client_cert.as_ref();
        for (what, path) in [
            ("CA file", tls.ca_file.as_ref()),
            ("client certificate", cert.map(|c| &c.cert_file)),
            ("client key", cert.map(|c| &c.key_file)),
        ] {
            if let Some(path) = path {
                std::fs::File::open(path)
                    .with_context(|| format!("Kafka TLS {what} {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// librdkafka's `security.protocol` for this combination.
    pub fn protocol(&self) -> &'static str {
        match (self.tls.is_some(), self.sasl.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        }
    }

    /// Writes the security properties into `config`: `security.protocol`
    /// always; with TLS `ssl.endpoint.identification.algorithm=https` and
    /// the CA and client certificate locations that are set; with SASL
    /// `sasl.mechanisms`, `sasl.username` and `sasl.password`.
    pub fn apply(&self, config: &mut ClientConfig) {
        config.set("security.protocol", self.protocol());
        if let Some(tls) = &self.tls {
            config.set("ssl.endpoint.identification.algorithm", "https");
            if let Some(ca) = &tls.ca_file {
                config.set("ssl.ca.location", ca.to_string_lossy());
            }
            if let Some(cert) = &tls.client_cert {
                config
                    .set("ssl.certificate.location", cert.cert_file.to_string_lossy())
                    .set("ssl.key.location", cert.key_file.to_string_lossy());
            }
        }
        if let Some(sasl) = &self.sasl {
            config
                .set("sasl.mechanisms", sasl.mechanism.name())
                .set("sasl.username", &sasl.username)
                .set("sasl.password", sasl.password.expose());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const PASSWORD: &str = "pa55-W0rd-never-shown";

    fn args() -> KafkaArgs {
        KafkaArgs {
            kafka_brokers: "k-0:9093,k-1:9093".to_owned(),
            kafka_topic: "t".to_owned(),
            kafka_tls: false,
            kafka_tls_ca_file: None,
            kafka_tls_cert_file: None,
            kafka_tls_key_file: None,
            kafka_sasl_mechanism: None,
            kafka_sasl_username: None,
            kafka_sasl_password: None,
        }
    }

    fn sasl(mechanism: SaslMechanism) -> KafkaArgs {
        KafkaArgs {
            kafka_sasl_mechanism: Some(mechanism),
            kafka_sasl_username: Some("chatpipe".to_owned()),
            kafka_sasl_password: Some(Redacted(PASSWORD.to_owned())),
            ..args()
        }
    }

    /// Every property of the configuration, the password included (rdkafka's
    /// `config_map` hides it; `get` does not).
    fn properties(conn: &KafkaConnection) -> BTreeMap<String, String> {
        let c = conn.client_config();
        c.config_map()
            .keys()
            .map(|k| (k.to_string(), c.get(k).unwrap_or_default().to_owned()))
            .collect()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn plaintext_sets_only_the_protocol() {
        let conn = KafkaConnection::from_args(&args()).unwrap();
        assert_eq!(conn, KafkaConnection::plaintext("k-0:9093,k-1:9093"));
        assert_eq!(
            properties(&conn),
            map(&[
                ("bootstrap.servers", "k-0:9093,k-1:9093"),
                ("security.protocol", "plaintext"),
            ])
        );
    }

    #[test]
    fn tls_alone_uses_the_system_store_and_checks_the_host_name() {
        let conn = KafkaConnection::from_args(&KafkaArgs {
            kafka_tls: true,
            ..args()
        })
        .unwrap();
        assert_eq!(
            properties(&conn),
            map(&[
                ("bootstrap.servers", "k-0:9093,k-1:9093"),
                ("security.protocol", "ssl"),
                ("ssl.endpoint.identification.algorithm", "https"),
            ])
        );
    }

    #[test]
    fn a_ca_file_or_a_client_certificate_implies_tls() {
        let conn = KafkaConnection::from_args(&KafkaArgs {
            kafka_tls_ca_file: Some("/ca.pem".to_owned()),
            ..args()
        })
        .unwrap();
        assert_eq!(
            properties(&conn),
            map(&[
                ("bootstrap.servers", "k-0:9093,k-1:9093"),
                ("security.protocol", "ssl"),
                ("ssl.endpoint.identification.algorithm", "https"),
                ("ssl.ca.location", "/ca.pem"),
            ])
        );
        let conn = KafkaConnection::from_args(&KafkaArgs {
            kafka_tls_cert_file: Some("/c.pem".to_owned()),
            kafka_tls_key_file: Some("/c.key".to_owned()),
            ..args()
        })
        .unwrap();
        assert_eq!(
            properties(&conn),
            map(&[
                ("bootstrap.servers", "k-0:9093,k-1:9093"),
                ("security.protocol", "ssl"),
                ("ssl.endpoint.identification.algorithm", "https"),
                ("ssl.certificate.location", "/c.pem"),
                ("ssl.key.location", "/c.key"),
            ])
        );
    }

    #[test]
    fn sasl_without_tls_is_sasl_plaintext_for_every_mechanism() {
        for (m, name) in [
            (SaslMechanism::Plain, "PLAIN"),
            (SaslMechanism::ScramSha256, "SCRAM-SHA-256"),
            (SaslMechanism::ScramSha512, "SCRAM-SHA-512"),
        ] {
            let conn = KafkaConnection::from_args(&sasl(m)).unwrap();
            assert_eq!(
                properties(&conn),
                map(&[
                    ("bootstrap.servers", "k-0:9093,k-1:9093"),
                    ("security.protocol", "sasl_plaintext"),
                    ("sasl.mechanisms", name),
                    ("sasl.username", "chatpipe"),
                    ("sasl.password", PASSWORD),
                ]),
                "{name}"
            );
        }
    }

    #[test]
    fn sasl_with_mutual_tls_sets_everything() {
        let conn = KafkaConnection::from_args(&KafkaArgs {
            kafka_tls: true,
            kafka_tls_ca_file: Some("/etc/kafka/ca.pem".to_owned()),
            kafka_tls_cert_file: Some("/etc/kafka/c.pem".to_owned()),
            kafka_tls_key_file: Some("/etc/kafka/c.key".to_owned()),
            ..sasl(SaslMechanism::ScramSha512)
        })
        .unwrap();
        assert_eq!(
            properties(&conn),
            map(&[
                ("bootstrap.servers", "k-0:9093,k-1:9093"),
                ("security.protocol", "sasl_ssl"),
                ("ssl.endpoint.identification.algorithm", "https"),
                ("ssl.ca.location", "/etc/kafka/ca.pem"),
                ("ssl.certificate.location", "/etc/kafka/c.pem"),
                ("ssl.key.location", "/etc/kafka/c.key"),
                ("sasl.mechanisms", "SCRAM-SHA-512"),
                ("sasl.username", "chatpipe"),
                ("sasl.password", PASSWORD),
            ])
        );
    }

    #[test]
    fn the_protocol_follows_the_combination() {
        let tls = Some(KafkaTls::default());
        let sasl = Some(KafkaSasl {
            mechanism: SaslMechanism::Plain,
            username: "u".to_owned(),
            password: Redacted("p".to_owned()),
        });
        for (tls, sasl, protocol) in [
            (None, None, "plaintext"),
            (tls.clone(), None, "ssl"),
            (None, sasl.clone(), "sasl_plaintext"),
            (tls, sasl, "sasl_ssl"),
        ] {
            assert_eq!(KafkaSecurity { tls, sasl }.protocol(), protocol);
        }
    }

    #[test]
    fn the_password_is_never_printed() {
        let conn = KafkaConnection::from_args(&KafkaArgs {
            kafka_tls: true,
            ..sasl(SaslMechanism::ScramSha256)
        })
        .unwrap();
        for shown in [
            format!("{conn:?}"),
            format!("{conn:#?}"),
            format!("{:?}", conn.security),
            format!("{:?}", conn.client_config()),
            format!("{:?}", conn.client_config().config_map()),
        ] {
            assert!(!shown.contains(PASSWORD), "{shown}");
        }
        assert!(format!("{conn:?}").contains("<redacted>"));
    }

    #[test]
    fn incomplete_sasl_is_refused_with_the_missing_flags() {
        let e = KafkaConnection::from_args(&KafkaArgs {
            kafka_sasl_username: None,
            ..sasl(SaslMechanism::ScramSha256)
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "SASL mechanism SCRAM-SHA-256 needs a user name and a password; \
             missing --kafka-sasl-username (CHATPIPE_KAFKA_SASL_USERNAME)"
        );
        let e = KafkaConnection::from_args(&KafkaArgs {
            kafka_sasl_username: None,
            kafka_sasl_password: None,
            ..sasl(SaslMechanism::Plain)
        })
        .unwrap_err();
        assert!(
            matches!(e, KafkaSecurityError::SaslIncomplete { .. }),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "SASL mechanism PLAIN needs a user name and a password; \
             missing --kafka-sasl-username (CHATPIPE_KAFKA_SASL_USERNAME) and \
             --kafka-sasl-password (CHATPIPE_KAFKA_SASL_PASSWORD)"
        );
        // An empty password (an empty secret) counts as missing.
        let e = KafkaConnection::from_args(&KafkaArgs {
            kafka_sasl_password: Some(Redacted(String::new())),
            ..sasl(SaslMechanism::ScramSha512)
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .ends_with("missing --kafka-sasl-password (CHATPIPE_KAFKA_SASL_PASSWORD)"),
            "{e}"
        );
    }

    #[test]
    fn credentials_without_a_mechanism_are_refused() {
        let e = KafkaConnection::from_args(&KafkaArgs {
            kafka_sasl_mechanism: None,
            ..sasl(SaslMechanism::Plain)
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--kafka-sasl-username (CHATPIPE_KAFKA_SASL_USERNAME) and \
             --kafka-sasl-password (CHATPIPE_KAFKA_SASL_PASSWORD) set without \
             --kafka-sasl-mechanism (CHATPIPE_KAFKA_SASL_MECHANISM): \
             choose PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
        );
        let e = KafkaConnection::from_args(&KafkaArgs {
            kafka_sasl_password: Some(Redacted(PASSWORD.to_owned())),
            ..args()
        })
        .unwrap_err();
        assert!(!e.to_string().contains(PASSWORD), "{e}");
        assert!(
            matches!(e, KafkaSecurityError::SaslWithoutMechanism { .. }),
            "{e}"
        );
    }

    #[test]
    fn half_a_client_certificate_is_refused() {
        let e = KafkaConnection::from_args(&KafkaArgs {
            kafka_tls_cert_file: Some("/c.pem".to_owned()),
            ..args()
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--kafka-tls-cert-file (CHATPIPE_KAFKA_TLS_CERT_FILE) set without \
             --kafka-tls-key-file (CHATPIPE_KAFKA_TLS_KEY_FILE): mutual TLS needs both"
        );
        let e = KafkaConnection::from_args(&KafkaArgs {
            kafka_tls_key_file: Some("/c.key".to_owned()),
            ..args()
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("--kafka-tls-key-file"), "{e}");
    }

    #[test]
    fn empty_values_count_as_unset() {
        let conn = KafkaConnection::from_args(&KafkaArgs {
            kafka_tls_ca_file: Some(String::new()),
            kafka_tls_cert_file: Some(" ".to_owned()),
            kafka_tls_key_file: Some(String::new()),
            kafka_sasl_username: Some(String::new()),
            kafka_sasl_password: Some(Redacted(String::new())),
            ..args()
        })
        .unwrap();
        assert_eq!(conn.security, KafkaSecurity::default());
    }
}
