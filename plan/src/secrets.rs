//! The Secrets a plan's components read, and how each reaches its binary.
//! Pure: the plan says which Secret key goes to which component under
//! which variable; each deployment hands it over its own way — the
//! operator as a `secretKeyRef` (or a mounted Secret file), local mode as
//! the value it read from the manifest (or a file it writes). A secret is
//! never part of a component's [`crate::Settings`], so it never lands in a
//! ConfigMap or a log line.

use chatpipe_settings::api::jwt_secret_env;
use chatpipe_settings::channels::{credential_env, CredentialReader};
use chatpipe_settings::common::{
    env_of, kafka_sasl_password_env, kafka_sasl_username_env, postgres_ca_file_env,
    postgres_url_env, KafkaArgs,
};
use chatpipe_settings::ingest::webhook_secrets_env;
use chatpipe_settings::processor::reply_bot_token_env;

use crate::component::Component;
use crate::crd::SecretKeyRef;
use crate::validate::ValidatedPipeline;

/// How a binary receives a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Delivery {
    /// The variable holds the value.
    Value,
    /// The variable holds the path of a file that holds the value
    /// (certificates and keys, which librdkafka reads from files); the
    /// name is the file's name inside the component's secret directory.
    File(&'static str),
}

/// One secret one component reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretInput {
    /// The component that reads it.
    pub component: Component,
    /// The variable the binary reads.
    pub env: String,
    /// Where the value is kept.
    pub secret: SecretKeyRef,
    /// The spec field that names the Secret (for messages).
    pub field: &'static str,
    /// Value or file.
    pub delivery: Delivery,
    /// What the value looks like (for messages: `postgres://…`).
    pub example: &'static str,
}

/// File name of the Postgres CA bundle in a component's secret directory.
pub const POSTGRES_CA_FILE: &str = "postgres-ca.pem";
/// File name of the Kafka CA bundle in a component's secret directory.
pub const KAFKA_CA_FILE: &str = "kafka-ca.pem";
/// File name of the Kafka client certificate.
pub const KAFKA_CERT_FILE: &str = "kafka-client.pem";
/// File name of the Kafka client key.
pub const KAFKA_KEY_FILE: &str = "kafka-client.key";

/// Every secret of the pipeline `p`, per component, in component order.
pub fn inputs(p: &ValidatedPipeline) -> Vec<SecretInput> {
    let mut out = Vec::new();
    let mut add = |component: Component,
                   env: String,
                   secret: &SecretKeyRef,
                   field: &'static str,
                   delivery: Delivery,
                   example: &'static str| {
        out.push(SecretInput {
            component,
            env,
            secret: secret.clone(),
            field,
            delivery,
            example,
        })
    };
    for component in Component::ALL {
        // The database: each service may have its own URL (its own role);
        // the migration always uses the shared one, the schema owner's.
        let (own, field) = match component {
            Component::Migrate => (None, "spec.postgres.urlSecret"),
            Component::Ingest => (
                p.ingest.component.postgres_url_secret.as_ref(),
                "spec.ingest.postgresUrlSecret",
            ),
            Component::Processor => (
                p.processor.postgres_url_secret.as_ref(),
                "spec.processor.postgresUrlSecret",
            ),
            Component::Api => (
                p.api.postgres_url_secret.as_ref(),
                "spec.api.postgresUrlSecret",
            ),
            Component::Delivery => (
                p.delivery.component.postgres_url_secret.as_ref(),
                "spec.delivery.postgresUrlSecret",
            ),
        };
        match own {
            Some(r) => add(
                component,
                postgres_url_env(),
                r,
                field,
                Delivery::Value,
                "postgres://…",
            ),
            None => add(
                component,
                postgres_url_env(),
                &p.postgres_url_secret,
                "spec.postgres.urlSecret",
                Delivery::Value,
                "postgres://…",
            ),
        }
        // Every component talks to Postgres, so every one gets its CA.
        if let Some(r) = &p.postgres_ca_secret {
            add(
                component,
                postgres_ca_file_env(),
                r,
                "spec.postgres.caSecretRef",
                Delivery::File(POSTGRES_CA_FILE),
                "-----BEGIN CERTIFICATE-----…",
            );
        }
        if component.reads_kafka() {
            if let Some(tls) = &p.kafka.tls {
                for (r, id, field, file, example) in [
                    (
                        &tls.ca_secret_ref,
                        "kafka_tls_ca_file",
                        "spec.kafka.tls.caSecretRef",
                        KAFKA_CA_FILE,
                        "-----BEGIN CERTIFICATE-----…",
                    ),
                    (
                        &tls.client_cert_secret_ref,
                        "kafka_tls_cert_file",
                        "spec.kafka.tls.clientCertSecretRef",
                        KAFKA_CERT_FILE,
                        "-----BEGIN CERTIFICATE-----…",
                    ),
                    (
                        &tls.client_key_secret_ref,
                        "kafka_tls_key_file",
                        "spec.kafka.tls.clientKeySecretRef",
                        KAFKA_KEY_FILE,
                        "-----BEGIN PRIVATE KEY-----…",
                    ),
                ] {
                    if let Some(r) = r {
                        add(
                            component,
                            env_of::<KafkaArgs>(id),
                            r,
                            field,
                            Delivery::File(file),
                            example,
                        );
                    }
                }
            }
            if let Some(sasl) = &p.kafka.sasl {
                add(
                    component,
                    kafka_sasl_username_env(),
                    &sasl.username_secret_ref,
                    "spec.kafka.sasl.usernameSecretRef",
                    Delivery::Value,
                    "a user name",
                );
                add(
                    component,
                    kafka_sasl_password_env(),
                    &sasl.password_secret_ref,
                    "spec.kafka.sasl.passwordSecretRef",
                    Delivery::Value,
                    "a password",
                );
            }
        }
        if component == Component::Ingest {
            if let Some(r) = &p.ingest.auth {
                add(
                    component,
                    webhook_secrets_env(),
                    r,
                    "spec.ingest.auth.secretRef",
                    Delivery::Value,
                    "whsec_…",
                );
            }
        }
        // Channel credentials: ingest verifies webhooks, delivery calls
        // the providers; each reads only its keys.
        let reader = match component {
            Component::Ingest => Some(CredentialReader::Ingest),
            Component::Delivery => Some(CredentialReader::Delivery),
            _ => None,
        };
        if let Some(reader) = reader {
            for c in &p.channels {
                for key in c.decl.kind.keys_for(reader) {
                    add(
                        component,
                        credential_env(&c.decl.name, key),
                        &SecretKeyRef {
                            name: c.credentials_secret.clone(),
                            key: key.to_owned(),
                        },
                        "spec.channels[].credentialsSecretRef",
                        Delivery::Value,
                        "the provider's credential",
                    );
                }
            }
        }
        if component == Component::Processor {
            if let Some(r) = p.replies.bot.as_ref().and_then(|b| b.token.as_ref()) {
                add(
                    component,
                    reply_bot_token_env(),
                    r,
                    "spec.replies.bot.tokenSecretRef",
                    Delivery::Value,
                    "a bearer token",
                );
            }
        }
        if component == Component::Api {
            if let Some(a) = &p.api_auth {
                add(
                    component,
                    jwt_secret_env(),
                    &a.jwt_secret,
                    "spec.api.auth.jwtSecretRef",
                    Delivery::Value,
                    "at least 32 random bytes",
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ChatPipelineSpec;
    use crate::validate::validate;

    fn pipeline(extra: &str) -> ValidatedPipeline {
        let spec: ChatPipelineSpec = serde_yaml::from_str(&format!(
            r#"
image: chatpipe:dev
kafka: {{ bootstrapServers: "k:9092", partitions: 4 }}
postgres: {{ urlSecret: {{ name: pg, key: url }} }}
ingest: {{ replicas: 1 }}
processor: {{ replicas: 1 }}
api: {{ replicas: 1 }}
{extra}
"#
        ))
        .unwrap();
        validate(&spec).unwrap()
    }

    fn of(inputs: &[SecretInput], c: Component) -> Vec<(String, String, String)> {
        inputs
            .iter()
            .filter(|i| i.component == c)
            .map(|i| (i.env.clone(), i.secret.name.clone(), i.secret.key.clone()))
            .collect()
    }

    fn t(env: &str, name: &str, key: &str) -> (String, String, String) {
        (env.into(), name.into(), key.into())
    }

    #[test]
    fn by_default_every_component_reads_the_shared_url_only() {
        let i = inputs(&pipeline(""));
        for c in Component::ALL {
            assert_eq!(of(&i, c), [t("CHATPIPE_POSTGRES_URL", "pg", "url")], "{c}");
        }
    }

    #[test]
    fn each_secret_goes_to_its_readers_only() {
        let spec: ChatPipelineSpec = serde_yaml::from_str(
            r#"
image: chatpipe:dev
kafka:
  bootstrapServers: "k:9093"
  partitions: 4
  tls: { caSecretRef: { name: kafka-tls, key: ca.crt } }
  sasl:
    mechanism: SCRAM-SHA-512
    usernameSecretRef: { name: kafka-user, key: username }
    passwordSecretRef: { name: kafka-user, key: password }
postgres: { urlSecret: { name: pg, key: url }, caSecretRef: { name: pg-ca, key: ca.crt } }
ingest:
  replicas: 1
  auth: { secretRef: { name: wh, key: secrets } }
  postgresUrlSecret: { name: pg-ingest, key: url }
processor: { replicas: 1, postgresUrlSecret: { name: pg-processor, key: url } }
api:
  replicas: 1
  postgresUrlSecret: { name: pg-api, key: url }
  auth: { jwtSecretRef: { name: api-jwt, key: secret } }
"#,
        )
        .unwrap();
        let i = inputs(&validate(&spec).unwrap());
        let pg_ca = t("CHATPIPE_POSTGRES_CA_FILE", "pg-ca", "ca.crt");
        assert_eq!(
            of(&i, Component::Migrate),
            [t("CHATPIPE_POSTGRES_URL", "pg", "url"), pg_ca.clone()],
            "the migration runs as the owner"
        );
        let kafka = [
            t("CHATPIPE_KAFKA_TLS_CA_FILE", "kafka-tls", "ca.crt"),
            t("CHATPIPE_KAFKA_SASL_USERNAME", "kafka-user", "username"),
            t("CHATPIPE_KAFKA_SASL_PASSWORD", "kafka-user", "password"),
        ];
        let mut ingest = vec![
            t("CHATPIPE_POSTGRES_URL", "pg-ingest", "url"),
            pg_ca.clone(),
        ];
        ingest.extend(kafka.clone());
        ingest.push(t("CHATPIPE_WEBHOOK_SECRETS", "wh", "secrets"));
        assert_eq!(of(&i, Component::Ingest), ingest);
        let mut processor = vec![
            t("CHATPIPE_POSTGRES_URL", "pg-processor", "url"),
            pg_ca.clone(),
        ];
        processor.extend(kafka);
        assert_eq!(of(&i, Component::Processor), processor);
        assert_eq!(
            of(&i, Component::Api),
            [
                t("CHATPIPE_POSTGRES_URL", "pg-api", "url"),
                pg_ca,
                t("CHATPIPE_API_JWT_SECRET", "api-jwt", "secret")
            ]
        );
        let ca = i
            .iter()
            .find(|x| x.env == "CHATPIPE_KAFKA_TLS_CA_FILE")
            .unwrap();
        assert_eq!(ca.delivery, Delivery::File(KAFKA_CA_FILE));
        let pg_ca = i
            .iter()
            .find(|x| x.env == "CHATPIPE_POSTGRES_CA_FILE")
            .unwrap();
        assert_eq!(pg_ca.delivery, Delivery::File(POSTGRES_CA_FILE));
    }

    #[test]
    fn channel_credentials_go_to_ingest_or_delivery_by_key() {
        let p = pipeline(
            r#"
channels:
  - { name: tg, type: telegram, credentialsSecretRef: { name: tg-creds } }
  - { name: wa, type: whatsappCloud, credentialsSecretRef: { name: wa-creds } }
  - { name: tw, type: twilio, credentialsSecretRef: { name: tw-creds } }
replies: { bot: { url: "http://bot", tokenSecretRef: { name: bot, key: token } } }
"#,
        );
        let i = inputs(&p);
        let chan = |c: Component| -> Vec<(String, String, String)> {
            of(&i, c)
                .into_iter()
                .filter(|(e, _, _)| e.starts_with("CHATPIPE_CHANNEL_"))
                .collect()
        };
        assert_eq!(
            chan(Component::Ingest),
            [
                t(
                    "CHATPIPE_CHANNEL_TG_SECRET_TOKEN",
                    "tg-creds",
                    "secretToken"
                ),
                t("CHATPIPE_CHANNEL_WA_APP_SECRET", "wa-creds", "appSecret"),
                t(
                    "CHATPIPE_CHANNEL_WA_VERIFY_TOKEN",
                    "wa-creds",
                    "verifyToken"
                ),
                t(
                    "CHATPIPE_CHANNEL_WA_PHONE_NUMBER_ID",
                    "wa-creds",
                    "phoneNumberId"
                ),
                t("CHATPIPE_CHANNEL_TW_ACCOUNT_SID", "tw-creds", "accountSid"),
                t("CHATPIPE_CHANNEL_TW_AUTH_TOKEN", "tw-creds", "authToken"),
            ]
        );
        assert_eq!(
            chan(Component::Delivery),
            [
                t("CHATPIPE_CHANNEL_TG_BOT_TOKEN", "tg-creds", "botToken"),
                t(
                    "CHATPIPE_CHANNEL_WA_ACCESS_TOKEN",
                    "wa-creds",
                    "accessToken"
                ),
                t(
                    "CHATPIPE_CHANNEL_WA_PHONE_NUMBER_ID",
                    "wa-creds",
                    "phoneNumberId"
                ),
                t("CHATPIPE_CHANNEL_TW_ACCOUNT_SID", "tw-creds", "accountSid"),
                t("CHATPIPE_CHANNEL_TW_AUTH_TOKEN", "tw-creds", "authToken"),
                t("CHATPIPE_CHANNEL_TW_FROM", "tw-creds", "from"),
            ]
        );
        for c in [Component::Migrate, Component::Processor, Component::Api] {
            assert!(chan(c).is_empty(), "{c}");
        }
        assert!(of(&i, Component::Processor).contains(&t(
            "CHATPIPE_REPLY_BOT_TOKEN",
            "bot",
            "token"
        )));
    }
}
