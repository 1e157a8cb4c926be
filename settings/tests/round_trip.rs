//! What a deployment writes with `to_env()` is what the binary parses back,
//! for every setting of every binary: each settings struct is filled with
//! values that differ from the binary's defaults, written as an
//! environment, parsed by the binary's own clap definition with no
//! arguments, and read back into the struct.
//!
//! clap reads the variables from this process's environment, so the whole
//! check is one test function (tests of one binary run on parallel threads
//! and would race on the environment).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use chatpipe_settings::api::{ApiArgs, ApiSettings};
use chatpipe_settings::channels::{parse_channels, Channels};
use chatpipe_settings::common::{
    KafkaSaslMechanism, KafkaSettings, LogFormat, LogSettings, ServiceSettings,
};
use chatpipe_settings::delivery::{DeliveryArgs, DeliverySettings};
use chatpipe_settings::ingest::{IngestArgs, IngestSettings};
use chatpipe_settings::migrate::{MigrateArgs, MigrateSettings};
use chatpipe_settings::processor::{Cli, ProcessorSettings};
use clap::Parser;

fn service(port: u16) -> ServiceSettings {
    ServiceSettings {
        listen: Some(SocketAddr::from(([0, 0, 0, 0], port))),
        postgres_url: Some(format!("postgres://u:p@db:5433/rt{port}")),
        log: LogSettings {
            log: Some("debug,rdkafka=warn".to_owned()),
            log_format: Some(LogFormat::Json),
        },
    }
}

fn channels() -> Channels {
    parse_channels(
        r#"[{"name":"tg","type":"telegram","apiBaseUrl":"http://127.0.0.1:9999"},
            {"name":"wa-main","type":"whatsappCloud","webhookUrl":"https://hooks.example.com/channels/wa-main/webhook"},
            {"name":"sms","type":"twilio"}]"#,
    )
    .unwrap()
}

fn kafka() -> KafkaSettings {
    KafkaSettings {
        tls: Some(true),
        tls_ca_file: Some("/etc/kafka-tls/ca.crt".to_owned()),
        tls_cert_file: Some("/etc/kafka-tls/tls.crt".to_owned()),
        tls_key_file: Some("/etc/kafka-tls/tls.key".to_owned()),
        sasl_mechanism: Some(KafkaSaslMechanism::ScramSha256),
        sasl_username: Some("rt-user".to_owned()),
        ..KafkaSettings::new("k-0:9093,k-1:9093", "rt.events")
    }
}

/// Runs `parse` with exactly `env` set among the `CHATPIPE_*` variables.
fn with_env<T>(env: &[(String, String)], parse: impl FnOnce() -> T) -> T {
    let ours: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("CHATPIPE_"))
        .collect();
    for k in ours {
        std::env::remove_var(k);
    }
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    let out = parse();
    for (k, _) in env {
        std::env::remove_var(k);
    }
    out
}

/// Checks one binary: `value` survives `to_env` and the binary's parser,
/// and every variable it writes differs from the default (else a
/// forgotten setting could pass unnoticed).
fn check<S: PartialEq + std::fmt::Debug>(
    what: &str,
    value: &S,
    to_env: impl Fn(&S) -> Vec<(String, String)>,
    parse: impl Fn() -> S,
) {
    let env = to_env(value);
    let names: BTreeMap<&String, &String> = env.iter().map(|(k, v)| (k, v)).collect();
    assert_eq!(
        names.len(),
        env.len(),
        "{what}: a variable written twice: {env:?}"
    );
    let back = with_env(&env, &parse);
    assert_eq!(&back, value, "{what}: {env:?}");
    let defaults: BTreeMap<String, String> = to_env(&with_env(&[], &parse)).into_iter().collect();
    for (k, v) in &env {
        assert_ne!(
            defaults.get(k),
            Some(v),
            "{what}: {k}={v} is the default; pick another value"
        );
    }
}

#[test]
fn every_setting_round_trips_through_the_binarys_parser() {
    let ingest = IngestSettings {
        service: service(9101),
        kafka: kafka(),
        max_body_bytes: Some(70_000),
        max_content_bytes: Some(4_096),
        produce_timeout: Some(Duration::from_millis(1_500)),
        rate_limit: Some(50),
        rate_limit_burst: Some(100),
        rate_limit_client: Some(chatpipe_settings::ingest::RateLimitClient::ForwardedFor),
        channels: Some(channels()),
    };
    check("chatpipe-ingest", &ingest, IngestSettings::to_env, || {
        IngestSettings::from_args(&IngestArgs::try_parse_from(["chatpipe-ingest"]).unwrap())
    });

    let processor = ProcessorSettings {
        service: service(9102),
        kafka: kafka(),
        grouping_gap: Some(Duration::from_secs(90)),
        late_tolerance: Some(Duration::from_millis(1_500)),
        watermark_allowance: Some(Duration::from_millis(20)),
        max_group_span: Some(Duration::from_secs(5_400)),
        max_group_messages: Some(250),
        max_clock_skew: Some(Duration::ZERO),
        replicas: Some(3),
        ordinal: Some(2),
        reply_template: Some("Got {{ count }}: {{ ids | join(\", \") }}".to_owned()),
        reply_rules_file: Some("/etc/chatpipe/reply-rules.json".to_owned()),
        reply_rules_refresh: Some(Duration::from_secs(10)),
        reply_bot_url: Some("http://bot.example:8080/reply".to_owned()),
        reply_bot_timeout: Some(Duration::from_millis(750)),
    };
    check(
        "chatpipe-processor",
        &processor,
        ProcessorSettings::to_env,
        || ProcessorSettings::from_args(&Cli::try_parse_from(["chatpipe-processor"]).unwrap()),
    );

    let api = ApiSettings {
        service: service(9103),
        access_token_ttl: Some(Duration::from_secs(300)),
        refresh_token_ttl: Some(Duration::from_secs(86_400)),
        oidc_issuer: Some("https://idp.example.com/realms/rt".to_owned()),
        oidc_jwks_url: Some("https://idp.example.com/jwks".to_owned()),
        oidc_audience: Some("rt-api".to_owned()),
        channels: Some(channels()),
    };
    check("chatpipe-api", &api, ApiSettings::to_env, || {
        ApiSettings::from_args(&ApiArgs::try_parse_from(["chatpipe-api"]).unwrap())
    });

    let delivery = DeliverySettings {
        service: service(9104),
        channels: Some(channels()),
        concurrency: Some(7),
        lease: Some(Duration::from_secs(45)),
        max_attempts: Some(4),
        backoff_base: Some(Duration::from_millis(250)),
        backoff_max: Some(Duration::from_secs(90)),
        channel_rate: Some(80),
        chat_rate: Some(2),
    };
    check(
        "chatpipe-delivery",
        &delivery,
        DeliverySettings::to_env,
        || {
            DeliverySettings::from_args(
                &DeliveryArgs::try_parse_from(["chatpipe-delivery"]).unwrap(),
            )
        },
    );

    let migrate = MigrateSettings {
        postgres_url: Some("postgres://m@db/x".to_owned()),
        log: LogSettings {
            log: Some("warn".to_owned()),
            log_format: Some(LogFormat::Json),
        },
    };
    check(
        "chatpipe-admin migrate",
        &migrate,
        MigrateSettings::to_env,
        || MigrateSettings::from_args(&MigrateArgs::try_parse_from(["migrate"]).unwrap()),
    );

    // Unset settings are not written: the binary's default applies.
    assert!(IngestSettings::default().to_env().is_empty());
    assert!(ProcessorSettings::default().to_env().is_empty());
    assert!(ApiSettings::default().to_env().is_empty());
    assert!(MigrateSettings::default().to_env().is_empty());
    assert!(DeliverySettings::default().to_env().is_empty());
}
