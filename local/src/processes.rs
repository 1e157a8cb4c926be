//! The pure core of local mode: which processes the plan asks for on this
//! machine ([`desired`]), what must change to get from the running set to
//! that ([`diff`]), and which edits of a running manifest are refused
//! ([`check_update`]).
//!
//! No I/O here: the supervisor applies the [`Actions`], the tests call these
//! functions directly. Each process gets its component's planned settings
//! plus where it runs (its listener, the database URL, a processor's
//! ordinal), written by the same `to_env()` the operator's ConfigMaps use,
//! plus the secrets the plan gives it ([`Topology::secrets_of`]: its
//! database URL, Kafka credentials, ingest's webhook signing secrets, the
//! api's JWT secret) as values, and certificates as paths of files local
//! mode writes under its state directory ([`secret_file`]).
//!
//! # Ports
//! Every process listens on `host` (127.0.0.1 by default):
//! - ingest replica `i` on `ingest_port + stride·i` (8080, 8180, 8280, …),
//! - api replica `i` on `api_port + stride·i` (8081, 8181, …),
//! - processor ordinal `i` serves its ops endpoints on `processor_port + i`
//!   (8090, 8091, …).
//!
//! # Processors and partition handover
//! Processor `i` of `M` owns partitions `p` with `p mod M == i`, fenced by an
//! owner epoch in Postgres. The processor count is part of every
//! processor's environment, so a change of `M` changes every processor's
//! [`ProcessSpec`] and [`diff`] restarts the whole set: all old processors
//! are stopped (gracefully) before any new one starts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chatpipe_plan::{Component, Delivery, SecretInput, Settings, Topology};
use chatpipe_settings::common::ServiceSettings;
use sha2::{Digest, Sha256};

/// A pipeline as local mode runs it: the plan, and the values its Secrets
/// hold.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalPipeline {
    /// What runs, with which settings.
    pub topology: Topology,
    /// The shared Postgres URL (`spec.postgres.urlSecret`, resolved from
    /// the manifest's Secret): the one migrations run with.
    pub postgres_url: String,
    /// Every secret of the plan ([`Topology::secrets`]) with its value, in
    /// the plan's order.
    pub secrets: Vec<ResolvedSecret>,
    /// Where secret files (certificates) are written
    /// ([`Delivery::File`]); `<state dir>/secrets`.
    pub secrets_dir: PathBuf,
    /// Where the FAQ rules ([`Topology::reply_rules`]) are written for the
    /// processors, which re-read the file when it changes (a rules edit
    /// restarts nothing); `<state dir>/replies/rules.json`.
    pub reply_rules_file: PathBuf,
}

/// A secret of the plan with the value the manifest's Secret holds.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedSecret {
    /// Who reads it, under which variable, how.
    pub input: SecretInput,
    /// The value.
    pub value: String,
}

impl std::fmt::Debug for ResolvedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedSecret")
            .field("input", &self.input)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// The file a [`Delivery::File`] secret is written to: its name carries a
/// digest of the value, so a new value is a new path (and restarts its
/// readers, as a changed environment does).
pub fn secret_file(dir: &Path, file: &str, value: &str) -> PathBuf {
    let digest = Sha256::digest(value.as_bytes());
    let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{short}-{file}"))
}

impl LocalPipeline {
    /// The environment of `component`'s secrets: values, and the paths of
    /// the files [`Self::secret_files`] lists.
    pub fn secret_env(&self, component: Component) -> BTreeMap<String, String> {
        self.secrets
            .iter()
            .filter(|s| s.input.component == component)
            .map(|s| {
                let value = match s.input.delivery {
                    Delivery::Value => s.value.clone(),
                    Delivery::File(file) => secret_file(&self.secrets_dir, file, &s.value)
                        .display()
                        .to_string(),
                };
                (s.input.env.clone(), value)
            })
            .collect()
    }

    /// The URL migrations run with: the shared one, with the Postgres CA
    /// file (`spec.postgres.caSecretRef`) as its `sslrootcert`, as the
    /// services get it through `--postgres-ca-file`.
    pub fn migration_url(&self) -> String {
        let ca_env = chatpipe_settings::common::postgres_ca_file_env();
        match self.secret_env(Component::Migrate).get(&ca_env) {
            Some(ca) => chatpipe_settings::common::with_root_cert(&self.postgres_url, ca),
            None => self.postgres_url.clone(),
        }
    }

    /// The files the processes read secrets from, with their contents
    /// (written by the supervisor before it starts anything, mode 0600).
    pub fn secret_files(&self) -> BTreeMap<PathBuf, &str> {
        self.secrets
            .iter()
            .filter_map(|s| match s.input.delivery {
                Delivery::File(file) => Some((
                    secret_file(&self.secrets_dir, file, &s.value),
                    s.value.as_str(),
                )),
                Delivery::Value => None,
            })
            .collect()
    }
}

/// What a process local mode runs is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The Kafka-protocol broker (Tansu), started only when none listens.
    Broker,
    /// A replica of one of the plan's services.
    Service(Component),
}

impl Role {
    /// Short name used in process names and log prefixes.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Broker => "broker",
            Role::Service(c) => c.as_str(),
        }
    }
}

/// Where the processes listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Address every process binds.
    pub host: IpAddr,
    /// Port of ingest replica 0.
    pub ingest: u16,
    /// Port of api replica 0.
    pub api: u16,
    /// Ops port of processor ordinal 0; ordinal `i` uses `processor + i`.
    pub processor: u16,
    /// Ops port of delivery replica 0.
    pub delivery: u16,
    /// Distance between two ingest (or two api) replicas' ports.
    pub stride: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            ingest: 8080,
            api: 8081,
            processor: 8090,
            delivery: 8083,
            stride: 100,
        }
    }
}

impl Ports {
    /// The port of replica 0 of `component` and the step between replicas.
    fn layout(&self, component: Component) -> (u16, u16) {
        match component {
            Component::Ingest => (self.ingest, self.stride),
            Component::Api => (self.api, self.stride),
            Component::Delivery => (self.delivery, self.stride),
            Component::Processor | Component::Migrate => (self.processor, 1),
        }
    }
}

/// Paths of the service binaries, by component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    paths: BTreeMap<Component, PathBuf>,
}

impl Binaries {
    /// Every service's binary ([`Component::binary`]) in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        let paths = Component::SERVICES
            .iter()
            .map(|c| (*c, dir.join(c.binary())))
            .collect();
        Self { paths }
    }

    /// These binaries with `component`'s at `path`.
    pub fn with(mut self, component: Component, path: PathBuf) -> Self {
        self.paths.insert(component, path);
        self
    }

    /// The binary of `component`, when it has one.
    pub fn get(&self, component: Component) -> Option<&Path> {
        self.paths.get(&component).map(PathBuf::as_path)
    }

    /// Every binary.
    pub fn all(&self) -> impl Iterator<Item = &Path> {
        self.paths.values().map(PathBuf::as_path)
    }
}

/// One process local mode runs: what to execute and with which settings.
/// Two specs are equal exactly when the process need not be restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Unique name, e.g. `processor-2`; also the log prefix.
    pub name: String,
    /// What it is.
    pub role: Role,
    /// Replica index within its component.
    pub ordinal: u32,
    /// Executable.
    pub program: PathBuf,
    /// Command-line arguments.
    pub args: Vec<String>,
    /// Environment set on top of the inherited one.
    pub env: BTreeMap<String, String>,
    /// Working directory; inherited when `None`.
    pub cwd: Option<PathBuf>,
    /// Address of its HTTP endpoints (`/readyz`), when it has them.
    pub listen: Option<SocketAddr>,
}

impl ProcessSpec {
    /// `http://<listen>/readyz`, for components that serve it.
    pub fn readyz_url(&self) -> Option<String> {
        self.listen.map(|a| format!("http://{a}/readyz"))
    }
}

/// Why local mode refuses a layout or an edit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A replica's port would exceed 65535.
    #[error("{component} replica {ordinal} would listen on port {port}, beyond 65535; lower the replicas or the base port")]
    PortOverflow {
        /// Component name.
        component: &'static str,
        /// Replica index.
        ordinal: u32,
        /// The port it would need.
        port: u32,
    },
    /// Two processes would listen on one port.
    #[error("{first} and {second} would both listen on port {port}; choose other base ports or another --port-stride")]
    PortClash {
        /// One process.
        first: String,
        /// The other.
        second: String,
        /// The shared port.
        port: u16,
    },
    /// A service has no binary.
    #[error("no binary for {component}")]
    NoBinary {
        /// Component name.
        component: &'static str,
    },
    /// The edit changes the partition count of a running pipeline.
    #[error("kafka.partitions is immutable: the running pipeline has {from}, the file now says {to}; the edit is ignored (restore {from}, or stop local mode and use a new topic)")]
    PartitionsImmutable {
        /// Running count.
        from: i32,
        /// Requested count.
        to: i32,
    },
    /// The edit moves the pipeline to another broker.
    #[error("kafka.bootstrapServers changed from {from:?} to {to:?} while running; the edit is ignored (restart local mode to use another broker)")]
    BrokerChanged {
        /// Running bootstrap servers.
        from: String,
        /// Requested bootstrap servers.
        to: String,
    },
}

fn port_for(component: Component, base: u16, step: u16, ordinal: u32) -> Result<u16, Refusal> {
    let port = u32::from(base) + u32::from(step) * ordinal;
    u16::try_from(port).map_err(|_| Refusal::PortOverflow {
        component: component.as_str(),
        ordinal,
        port,
    })
}

/// The processes `pipeline` asks for, in start order (ingest, processors,
/// api), each with its port and environment. The migration is not among
/// them: local mode runs it itself before starting anything.
pub fn desired(
    pipeline: &LocalPipeline,
    ports: &Ports,
    bins: &Binaries,
) -> Result<Vec<ProcessSpec>, Refusal> {
    let mut out = Vec::new();
    for planned in pipeline.topology.components() {
        let component = planned.component();
        if component == Component::Migrate {
            continue;
        }
        let program = bins.get(component).ok_or(Refusal::NoBinary {
            component: component.as_str(),
        })?;
        let (base, step) = ports.layout(component);
        for ordinal in 0..planned.replicas {
            let listen = SocketAddr::new(ports.host, port_for(component, base, step, ordinal)?);
            let settings = planned
                .settings
                .clone()
                .with_service(ServiceSettings {
                    listen: Some(listen),
                    ..ServiceSettings::default()
                })
                .for_replica(ordinal);
            let settings = match settings {
                Settings::Processor(mut p) if pipeline.topology.reply_rules.is_some() => {
                    p.reply_rules_file = Some(pipeline.reply_rules_file.display().to_string());
                    Settings::Processor(p)
                }
                other => other,
            };
            let mut env: BTreeMap<String, String> = settings.to_env().into_iter().collect();
            // The database URL (the component's own or the shared one) is
            // among the secrets.
            env.extend(pipeline.secret_env(component));
            out.push(ProcessSpec {
                name: format!("{component}-{ordinal}"),
                role: Role::Service(component),
                ordinal,
                program: program.to_owned(),
                args: Vec::new(),
                env,
                cwd: None,
                listen: Some(listen),
            });
        }
    }
    let mut seen: BTreeMap<u16, &str> = BTreeMap::new();
    for p in &out {
        if let Some(addr) = p.listen {
            if let Some(first) = seen.insert(addr.port(), &p.name) {
                return Err(Refusal::PortClash {
                    first: first.to_owned(),
                    second: p.name.clone(),
                    port: addr.port(),
                });
            }
        }
    }
    Ok(out)
}

/// What the supervisor must do, in order: stop `stop` (all of them, and
/// wait until they exited), then start `start`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actions {
    /// Names of running processes to stop.
    pub stop: Vec<String>,
    /// Processes to start.
    pub start: Vec<ProcessSpec>,
}

impl Actions {
    /// Whether nothing needs to change.
    pub fn is_empty(&self) -> bool {
        self.stop.is_empty() && self.start.is_empty()
    }
}

/// Compares the desired processes with the running ones: a running process
/// that is no longer desired, or whose spec changed, is stopped; a desired
/// process that is not running (or was just stopped) is started. Running
/// processes whose spec is unchanged are left alone.
pub fn diff(desired: &[ProcessSpec], running: &[ProcessSpec]) -> Actions {
    let wanted: BTreeMap<&str, &ProcessSpec> =
        desired.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut stop = Vec::new();
    let mut keep = BTreeSet::new();
    for r in running {
        match wanted.get(r.name.as_str()) {
            Some(d) if *d == r => {
                keep.insert(r.name.as_str());
            }
            _ => stop.push(r.name.clone()),
        }
    }
    let start = desired
        .iter()
        .filter(|d| !keep.contains(d.name.as_str()))
        .cloned()
        .collect();
    Actions { stop, start }
}

/// Refuses edits of a running manifest that local mode cannot apply: the
/// partition count (immutable) and the broker address. Everything else
/// (replicas, windows, topic name, Postgres URL, limits) is applied by
/// restarting the affected processes.
pub fn check_update(running: &LocalPipeline, next: &LocalPipeline) -> Result<(), Refusal> {
    let (from, to) = (&running.topology.kafka, &next.topology.kafka);
    if from.partitions != to.partitions {
        return Err(Refusal::PartitionsImmutable {
            from: from.partitions,
            to: to.partitions,
        });
    }
    if from.bootstrap_servers != to.bootstrap_servers {
        return Err(Refusal::BrokerChanged {
            from: from.bootstrap_servers.clone(),
            to: to.bootstrap_servers.clone(),
        });
    }
    Ok(())
}

/// Delay before restarting a process that exited on its own for the
/// `failures`-th time in a row (1-based): 1 s, 2 s, 4 s, … capped at 30 s.
pub fn restart_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(5);
    Duration::from_secs((1u64 << exp).min(30))
}

/// A process that ran at least this long before exiting is considered to
/// have been healthy: its failure count starts again from one.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use chatpipe_plan::crd::ChatPipelineSpec;
    use chatpipe_plan::validate::validate;
    use chatpipe_settings::ingest::webhook_secrets_env;

    const PG: &str = "postgres://postgres@127.0.0.1:5432/chatpipe";

    fn spec() -> ChatPipelineSpec {
        serde_yaml::from_str(
            r#"
image: chatpipe:dev
kafka: { bootstrapServers: "127.0.0.1:9092", topic: chatpipe.events, partitions: 8 }
postgres: { urlSecret: { name: chatpipe-postgres, key: url } }
ingest: { replicas: 1 }
processor: { replicas: 2 }
api: { replicas: 1 }
"#,
        )
        .unwrap()
    }

    /// The pipeline of `s` with every secret's value given by `value`.
    fn pipeline_with(
        s: &ChatPipelineSpec,
        value: impl Fn(&SecretInput) -> String,
    ) -> LocalPipeline {
        let topology = chatpipe_plan::plan(&validate(s).unwrap());
        let secrets = topology
            .secrets
            .iter()
            .map(|i| ResolvedSecret {
                input: i.clone(),
                value: value(i),
            })
            .collect();
        LocalPipeline {
            topology,
            postgres_url: PG.to_owned(),
            secrets,
            secrets_dir: PathBuf::from("/state/secrets"),
            reply_rules_file: PathBuf::from("/state/replies/rules.json"),
        }
    }

    #[test]
    fn channel_credentials_reach_their_readers_and_delivery_runs_with_channels() {
        let mut s = spec();
        s.channels = serde_yaml::from_str(
            r#"
- { name: tg, type: telegram, credentialsSecretRef: { name: tg-creds }, apiBaseUrl: "http://127.0.0.1:9" }
- { name: wa, type: whatsappCloud, credentialsSecretRef: { name: wa-creds } }
"#,
        )
        .unwrap();
        s.replies = Some(
            serde_yaml::from_str(r#"{ faq: [ { keyword: price, answer: "It is free." } ] }"#)
                .unwrap(),
        );
        let p = pipeline(&s);
        let procs = desired(&p, &Ports::default(), &bins()).unwrap();
        let delivery: Vec<&ProcessSpec> = procs
            .iter()
            .filter(|x| is(x, Component::Delivery))
            .collect();
        assert_eq!(
            delivery.len(),
            1,
            "one delivery replica by default with channels"
        );
        assert_eq!(
            delivery[0].listen.map(|a| a.port()),
            Some(8083),
            "delivery's ops port"
        );
        let keys = |c: Component| -> Vec<String> {
            let proc = procs.iter().find(|x| is(x, c)).unwrap();
            proc.env
                .keys()
                .filter(|k| k.starts_with("CHATPIPE_CHANNEL_"))
                .cloned()
                .collect()
        };
        assert_eq!(
            keys(Component::Ingest),
            [
                "CHATPIPE_CHANNEL_TG_SECRET_TOKEN",
                "CHATPIPE_CHANNEL_WA_APP_SECRET",
                "CHATPIPE_CHANNEL_WA_PHONE_NUMBER_ID",
                "CHATPIPE_CHANNEL_WA_VERIFY_TOKEN"
            ]
        );
        assert_eq!(
            keys(Component::Delivery),
            [
                "CHATPIPE_CHANNEL_TG_BOT_TOKEN",
                "CHATPIPE_CHANNEL_WA_ACCESS_TOKEN",
                "CHATPIPE_CHANNEL_WA_PHONE_NUMBER_ID"
            ]
        );
        assert!(keys(Component::Api).is_empty());
        assert!(keys(Component::Processor).is_empty());
        for proc in &procs {
            // Every reader of the channels is told which they are.
            let told = proc.env.contains_key("CHATPIPE_CHANNELS");
            assert_eq!(told, !is(proc, Component::Processor), "{}", proc.name);
            // Only processors read the rules file.
            let rules = proc.env.get("CHATPIPE_REPLY_RULES_FILE");
            if is(proc, Component::Processor) {
                assert_eq!(rules.map(String::as_str), Some("/state/replies/rules.json"));
            } else {
                assert_eq!(rules, None);
            }
        }
        // Without channels, no delivery runs and nothing names channels.
        let procs = desired(&pipeline(&spec()), &Ports::default(), &bins()).unwrap();
        assert!(procs.iter().all(|x| !is(x, Component::Delivery)));
        assert!(procs
            .iter()
            .all(|x| !x.env.contains_key("CHATPIPE_CHANNELS")
                && !x.env.contains_key("CHATPIPE_REPLY_RULES_FILE")));
    }

    #[test]
    fn a_rules_edit_restarts_nothing() {
        let mut s = spec();
        s.replies = Some(
            serde_yaml::from_str(r#"{ faq: [ { keyword: price, answer: "It is free." } ] }"#)
                .unwrap(),
        );
        let before = desired(&pipeline(&s), &Ports::default(), &bins()).unwrap();
        s.replies = Some(
            serde_yaml::from_str(r#"{ faq: [ { regex: "(?i)hours", answer: "9-5" } ] }"#).unwrap(),
        );
        let after = desired(&pipeline(&s), &Ports::default(), &bins()).unwrap();
        assert!(diff(&after, &before).is_empty());
    }

    fn pipeline(s: &ChatPipelineSpec) -> LocalPipeline {
        pipeline_with(s, value_of)
    }

    /// The value of a secret in these tests: [`PG`] for the database.
    fn value_of(i: &SecretInput) -> String {
        if i.env == chatpipe_settings::common::postgres_url_env() {
            PG.to_owned()
        } else {
            format!("value-of-{}", i.secret.name)
        }
    }

    fn with_webhook_secrets(s: &ChatPipelineSpec, secrets: &str) -> Vec<ProcessSpec> {
        let mut s = s.clone();
        s.ingest.auth = Some(chatpipe_plan::crd::IngestAuthSpec {
            secret_ref: chatpipe_plan::crd::SecretKeyRef {
                name: "wh".into(),
                key: "secrets".into(),
            },
        });
        let p = pipeline_with(&s, |i| match i.secret.name.as_str() {
            "wh" => secrets.to_owned(),
            _ => value_of(i),
        });
        desired(&p, &Ports::default(), &bins()).unwrap()
    }

    /// Ingest (alone) gets the webhook signing secrets; without `auth`
    /// nobody does.
    #[test]
    fn webhook_secrets_go_to_ingest_only() {
        let mut s = spec();
        s.ingest.replicas = 2;
        let name = webhook_secrets_env();
        assert_eq!(name, "CHATPIPE_WEBHOOK_SECRETS");
        let ps = with_webhook_secrets(&s, "whsec_a whsec_b");
        assert_eq!(ps.len(), 5);
        for p in &ps {
            if is(p, Component::Ingest) {
                assert_eq!(p.env[&name], "whsec_a whsec_b", "{}", p.name);
            } else {
                assert!(!p.env.contains_key(&name), "{}", p.name);
            }
        }
        assert!(plan(&s).iter().all(|p| !p.env.contains_key(&name)));
    }

    /// Each service gets its own database URL when the spec names one, and
    /// the Kafka CA as a file path (the file named by the value's digest)
    /// when Kafka is reached over TLS; the api reads neither Kafka secret.
    /// A Postgres CA reaches every process as a file, and the migration's
    /// URL names it as its `sslrootcert`.
    #[test]
    fn the_postgres_ca_reaches_every_process_and_the_migration() {
        let mut s = spec();
        s.postgres.ca_secret_ref = Some(chatpipe_plan::crd::SecretKeyRef {
            name: "pg-ca".into(),
            key: "ca.crt".into(),
        });
        let p = pipeline_with(&s, |i| match i.secret.name.as_str() {
            "pg-ca" => "-----BEGIN CERTIFICATE-----\nMIIB\n".into(),
            _ => value_of(i),
        });
        let files = p.secret_files();
        assert_eq!(files.len(), 1);
        let path = files.keys().next().unwrap().display().to_string();
        for proc in desired(&p, &Ports::default(), &bins()).unwrap() {
            assert_eq!(proc.env["CHATPIPE_POSTGRES_CA_FILE"], path, "{}", proc.name);
        }
        assert_eq!(p.migration_url(), format!("{PG}?sslrootcert={path}"));
        assert_eq!(
            pipeline(&spec()).migration_url(),
            PG,
            "no CA, the URL as is"
        );
    }

    #[test]
    fn component_urls_and_certificate_files_reach_their_readers() {
        let mut s = spec();
        s.api.postgres_url_secret = Some(chatpipe_plan::crd::SecretKeyRef {
            name: "pg-api".into(),
            key: "url".into(),
        });
        s.kafka.tls = Some(chatpipe_plan::crd::KafkaTlsSpec {
            ca_secret_ref: Some(chatpipe_plan::crd::SecretKeyRef {
                name: "kafka-ca".into(),
                key: "ca.crt".into(),
            }),
            ..Default::default()
        });
        let p = pipeline_with(&s, |i| match i.secret.name.as_str() {
            "pg-api" => "postgres://api@h/db".into(),
            "kafka-ca" => "-----BEGIN CERTIFICATE-----\nMIIB\n".into(),
            _ => value_of(i),
        });
        let ps = desired(&p, &Ports::default(), &bins()).unwrap();
        let files = p.secret_files();
        assert_eq!(files.len(), 1, "one CA file for every reader");
        let (path, content) = files.iter().next().unwrap();
        assert!(path.starts_with("/state/secrets"), "{path:?}");
        assert!(content.starts_with("-----BEGIN CERTIFICATE-----"));
        for proc in &ps {
            let url = &proc.env["CHATPIPE_POSTGRES_URL"];
            let ca = proc.env.get("CHATPIPE_KAFKA_TLS_CA_FILE");
            if is(proc, Component::Api) {
                assert_eq!(url, "postgres://api@h/db");
                assert_eq!(ca, None);
            } else {
                assert_eq!(url, PG, "{}", proc.name);
                assert_eq!(ca.map(PathBuf::from).as_ref(), Some(path), "{}", proc.name);
                assert_eq!(proc.env["CHATPIPE_KAFKA_TLS"], "true");
            }
        }
        // A new certificate is a new file, so its readers restart.
        let q = pipeline_with(&s, |i| match i.secret.name.as_str() {
            "kafka-ca" => "-----BEGIN CERTIFICATE-----\nMIIC\n".into(),
            "pg-api" => "postgres://api@h/db".into(),
            _ => value_of(i),
        });
        let acts = diff(&desired(&q, &Ports::default(), &bins()).unwrap(), &ps);
        assert!(acts.stop.iter().all(|n| !n.starts_with("api")), "{acts:?}");
        assert!(
            acts.stop.iter().any(|n| n.starts_with("ingest")),
            "{acts:?}"
        );
    }

    /// A rotation (a new value of the Secret) restarts ingest only; adding
    /// or removing `auth` likewise.
    #[test]
    fn a_webhook_secret_change_restarts_ingest_only() {
        let running = with_webhook_secrets(&spec(), "whsec_a");
        let acts = diff(&with_webhook_secrets(&spec(), "whsec_b whsec_a"), &running);
        assert_eq!(acts.stop, ["ingest-0"]);
        assert_eq!(names(&acts.start), ["ingest-0"]);
        let acts = diff(&plan(&spec()), &running);
        assert_eq!(acts.stop, ["ingest-0"]);
        assert_eq!(names(&acts.start), ["ingest-0"]);
        let same = diff(&with_webhook_secrets(&spec(), "whsec_a"), &running);
        assert!(same.is_empty(), "{same:?}");
    }

    fn bins() -> Binaries {
        Binaries::in_dir(Path::new("/bin"))
    }

    fn names(ps: &[ProcessSpec]) -> Vec<&str> {
        ps.iter().map(|p| p.name.as_str()).collect()
    }

    fn plan(s: &ChatPipelineSpec) -> Vec<ProcessSpec> {
        desired(&pipeline(s), &Ports::default(), &bins()).unwrap()
    }

    fn is(p: &ProcessSpec, c: Component) -> bool {
        p.role == Role::Service(c)
    }

    #[test]
    fn default_layout_uses_the_documented_ports() {
        let mut s = spec();
        s.ingest.replicas = 2;
        s.api.replicas = 2;
        s.processor.replicas = 3;
        let ps = plan(&s);
        let got: Vec<(&str, u16)> = ps
            .iter()
            .map(|p| (p.name.as_str(), p.listen.unwrap().port()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("ingest-0", 8080),
                ("ingest-1", 8180),
                ("processor-0", 8090),
                ("processor-1", 8091),
                ("processor-2", 8092),
                ("api-0", 8081),
                ("api-1", 8181),
            ]
        );
        assert!(ps
            .iter()
            .all(|p| p.listen.unwrap().ip() == IpAddr::from([127, 0, 0, 1])));
        assert_eq!(
            ps[0].readyz_url().as_deref(),
            Some("http://127.0.0.1:8080/readyz")
        );
    }

    /// Every service gets its listener and the database; those that talk
    /// to Kafka (ingest, processors) get the broker and the topic (the api
    /// reads neither).
    #[test]
    fn every_service_gets_the_connection_settings() {
        for p in plan(&spec()) {
            assert_eq!(
                p.env["CHATPIPE_LISTEN"],
                p.listen.unwrap().to_string(),
                "{}",
                p.name
            );
            assert_eq!(
                p.env["CHATPIPE_POSTGRES_URL"],
                "postgres://postgres@127.0.0.1:5432/chatpipe"
            );
            let Role::Service(c) = p.role else {
                panic!("{} is not a service", p.name);
            };
            if c.reads_kafka() {
                assert_eq!(p.env["CHATPIPE_KAFKA_BROKERS"], "127.0.0.1:9092");
                assert_eq!(p.env["CHATPIPE_KAFKA_TOPIC"], "chatpipe.events");
            } else {
                assert!(!p.env.contains_key("CHATPIPE_KAFKA_BROKERS"), "{}", p.name);
            }
            assert!(p.args.is_empty());
            assert!(p.cwd.is_none());
        }
    }

    #[test]
    fn processors_know_their_ordinal_replicas_and_windows() {
        let mut s = spec();
        s.processor.replicas = 3;
        s.processing.watermark_allowance = Some("20ms".into());
        let procs: Vec<ProcessSpec> = plan(&s)
            .into_iter()
            .filter(|p| is(p, Component::Processor))
            .collect();
        assert_eq!(names(&procs), ["processor-0", "processor-1", "processor-2"]);
        for (i, p) in procs.iter().enumerate() {
            assert_eq!(p.ordinal as usize, i);
            assert_eq!(p.env["CHATPIPE_PROCESSOR_ORDINAL"], i.to_string());
            assert_eq!(p.env["CHATPIPE_PROCESSOR_REPLICAS"], "3");
            assert_eq!(p.env["CHATPIPE_GROUPING_GAP"], "5s");
            assert_eq!(p.env["CHATPIPE_LATE_TOLERANCE"], "6s");
            assert_eq!(p.env["CHATPIPE_WATERMARK_ALLOWANCE"], "20ms");
            assert_eq!(p.program, PathBuf::from("/bin/chatpipe-processor"));
        }
    }

    #[test]
    fn only_processors_get_window_settings_and_only_ingest_gets_limits() {
        let mut s = spec();
        s.ingest.max_body_bytes = Some(65536);
        s.ingest.max_content_bytes = Some(4096);
        for p in plan(&s) {
            let is_proc = is(&p, Component::Processor);
            let is_ingest = is(&p, Component::Ingest);
            assert_eq!(p.env.contains_key("CHATPIPE_GROUPING_GAP"), is_proc);
            assert_eq!(p.env.contains_key("CHATPIPE_PROCESSOR_ORDINAL"), is_proc);
            assert!(!p.env.contains_key("CHATPIPE_WATERMARK_ALLOWANCE"));
            assert_eq!(p.env.contains_key("CHATPIPE_MAX_BODY_BYTES"), is_ingest);
            if is_ingest {
                assert_eq!(p.env["CHATPIPE_MAX_BODY_BYTES"], "65536");
                assert_eq!(p.env["CHATPIPE_MAX_CONTENT_BYTES"], "4096");
            }
        }
    }

    #[test]
    fn group_limits_go_to_the_processors_only() {
        let mut s = spec();
        s.processing.max_group_span = Some("1m30s".into());
        s.processing.max_group_messages = Some(250);
        s.processing.max_clock_skew = Some("0s".into());
        for p in plan(&s) {
            let is_proc = is(&p, Component::Processor);
            assert_eq!(p.env.contains_key("CHATPIPE_MAX_GROUP_SPAN"), is_proc);
            assert_eq!(p.env.contains_key("CHATPIPE_MAX_GROUP_MESSAGES"), is_proc);
            assert_eq!(p.env.contains_key("CHATPIPE_MAX_CLOCK_SKEW"), is_proc);
            if is_proc {
                assert_eq!(p.env["CHATPIPE_MAX_GROUP_SPAN"], "1m 30s");
                assert_eq!(p.env["CHATPIPE_MAX_GROUP_MESSAGES"], "250");
                assert_eq!(p.env["CHATPIPE_MAX_CLOCK_SKEW"], "0s");
            }
        }
        // Unset: not written, the processor's defaults apply.
        for p in plan(&spec()) {
            for k in [
                "CHATPIPE_MAX_GROUP_SPAN",
                "CHATPIPE_MAX_GROUP_MESSAGES",
                "CHATPIPE_MAX_CLOCK_SKEW",
            ] {
                assert!(!p.env.contains_key(k), "{k} in {}", p.name);
            }
        }
    }

    #[test]
    fn a_group_limit_change_restarts_processors_only() {
        let running = plan(&spec());
        let mut b = spec();
        b.processing.max_group_messages = Some(5);
        let acts = diff(&plan(&b), &running);
        assert_eq!(acts.stop, ["processor-0", "processor-1"]);
        assert_eq!(names(&acts.start), ["processor-0", "processor-1"]);
    }

    #[test]
    fn zero_replicas_run_nothing() {
        let mut s = spec();
        s.ingest.replicas = 0;
        s.processor.replicas = 0;
        s.api.replicas = 0;
        assert!(plan(&s).is_empty());
    }

    #[test]
    fn partition_assignment_covers_every_partition_once() {
        // What the processors will compute from the env we give them.
        for m in 1..=8u32 {
            let mut s = spec();
            s.processor.replicas = m as i32;
            let procs: Vec<ProcessSpec> = plan(&s)
                .into_iter()
                .filter(|p| is(p, Component::Processor))
                .collect();
            let mut owners = vec![0; s.kafka.partitions as usize];
            for p in &procs {
                let n: u32 = p.env["CHATPIPE_PROCESSOR_REPLICAS"].parse().unwrap();
                let i: u32 = p.env["CHATPIPE_PROCESSOR_ORDINAL"].parse().unwrap();
                for (part, owner) in owners.iter_mut().enumerate() {
                    if part as u32 % n == i {
                        *owner += 1;
                    }
                }
            }
            assert!(owners.iter().all(|&o| o == 1), "m={m}: {owners:?}");
        }
    }

    /// The rule lives in the validation (the one place for both
    /// deployments): such a manifest never reaches a layout.
    #[test]
    fn more_processors_than_partitions_is_refused() {
        let mut s = spec();
        s.processor.replicas = 9;
        let problems = validate(&s).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "spec.processor.replicas");
    }

    #[test]
    fn ports_beyond_65535_are_refused() {
        let mut s = spec();
        s.ingest.replicas = 2;
        let ports = Ports {
            ingest: 65500,
            ..Ports::default()
        };
        let err = desired(&pipeline(&s), &ports, &bins()).unwrap_err();
        assert_eq!(
            err,
            Refusal::PortOverflow {
                component: "ingest",
                ordinal: 1,
                port: 65600
            }
        );
    }

    #[test]
    fn clashing_ports_are_refused() {
        let mut s = spec();
        s.ingest.replicas = 2;
        // ingest-1 = 8080 + 1 = 8081 = api-0
        let ports = Ports {
            stride: 1,
            ..Ports::default()
        };
        let err = desired(&pipeline(&s), &ports, &bins()).unwrap_err();
        assert_eq!(
            err,
            Refusal::PortClash {
                first: "ingest-1".into(),
                second: "api-0".into(),
                port: 8081
            }
        );
        // processors from 8080 clash with ingest-0.
        let ports = Ports {
            processor: 8080,
            ..Ports::default()
        };
        assert!(matches!(
            desired(&pipeline(&spec()), &ports, &bins()),
            Err(Refusal::PortClash { port: 8080, .. })
        ));
    }

    #[test]
    fn first_start_starts_everything() {
        let want = plan(&spec());
        let a = diff(&want, &[]);
        assert!(a.stop.is_empty());
        assert_eq!(a.start, want);
    }

    #[test]
    fn unchanged_spec_changes_nothing() {
        let want = plan(&spec());
        let a = diff(&want, &want);
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn scaling_processors_restarts_all_processors_and_nothing_else() {
        for (from, to) in [(1, 3), (3, 2), (2, 1), (1, 8), (8, 1)] {
            let mut a = spec();
            a.processor.replicas = from;
            let mut b = spec();
            b.processor.replicas = to;
            let running = plan(&a);
            let want = plan(&b);
            let acts = diff(&want, &running);
            let stopped: Vec<String> = (0..from).map(|i| format!("processor-{i}")).collect();
            let started: Vec<String> = (0..to).map(|i| format!("processor-{i}")).collect();
            assert_eq!(acts.stop, stopped, "{from}->{to}");
            assert_eq!(
                acts.start
                    .iter()
                    .map(|p| p.name.clone())
                    .collect::<Vec<_>>(),
                started,
                "{from}->{to}"
            );
            assert!(acts
                .start
                .iter()
                .all(|p| p.env["CHATPIPE_PROCESSOR_REPLICAS"] == to.to_string()));
        }
    }

    #[test]
    fn scaling_to_zero_processors_only_stops() {
        let running = plan(&spec());
        let mut b = spec();
        b.processor.replicas = 0;
        let acts = diff(&plan(&b), &running);
        assert_eq!(acts.stop, ["processor-0", "processor-1"]);
        assert!(acts.start.is_empty());
    }

    #[test]
    fn scaling_ingest_touches_only_the_added_or_removed_replicas() {
        let running = plan(&spec());
        let mut up = spec();
        up.ingest.replicas = 3;
        let acts = diff(&plan(&up), &running);
        assert!(acts.stop.is_empty());
        assert_eq!(names(&acts.start), ["ingest-1", "ingest-2"]);

        let now = plan(&up);
        let acts = diff(&plan(&spec()), &now);
        assert_eq!(acts.stop, ["ingest-1", "ingest-2"]);
        assert!(acts.start.is_empty());
    }

    #[test]
    fn window_change_restarts_processors_only() {
        let running = plan(&spec());
        let mut b = spec();
        b.processing.grouping_gap = "2s".into();
        let acts = diff(&plan(&b), &running);
        assert_eq!(acts.stop, ["processor-0", "processor-1"]);
        assert_eq!(names(&acts.start), ["processor-0", "processor-1"]);
    }

    /// Every service reads the database; the topic only those that talk
    /// to Kafka (the api is left running, as the operator leaves its pods).
    #[test]
    fn postgres_or_topic_change_restarts_their_readers() {
        let running = plan(&spec());
        let mut b = pipeline(&spec());
        for x in &mut b.secrets {
            x.value = "postgres://postgres@127.0.0.1:5432/other".into();
        }
        let acts = diff(&desired(&b, &Ports::default(), &bins()).unwrap(), &running);
        assert_eq!(acts.stop.len(), running.len());
        assert_eq!(acts.start.len(), running.len());
        let mut c = spec();
        c.kafka.topic = "other".into();
        let acts = diff(&plan(&c), &running);
        assert_eq!(acts.stop, ["ingest-0", "processor-0", "processor-1"]);
        assert_eq!(
            names(&acts.start),
            ["ingest-0", "processor-0", "processor-1"]
        );
    }

    #[test]
    fn a_changed_binary_path_restarts_that_component() {
        let running = plan(&spec());
        let other = bins().with(Component::Api, "/opt/chatpipe-api".into());
        let acts = diff(
            &desired(&pipeline(&spec()), &Ports::default(), &other).unwrap(),
            &running,
        );
        assert_eq!(acts.stop, ["api-0"]);
        assert_eq!(names(&acts.start), ["api-0"]);
    }

    #[test]
    fn unknown_running_processes_are_stopped() {
        let mut running = plan(&spec());
        let mut stray = running[0].clone();
        stray.name = "ingest-7".into();
        running.push(stray);
        let acts = diff(&plan(&spec()), &running);
        assert_eq!(acts.stop, ["ingest-7"]);
        assert!(acts.start.is_empty());
    }

    #[test]
    fn partitions_and_broker_are_immutable_while_running() {
        let a = pipeline(&spec());
        let mut b = spec();
        b.processor.replicas = 3;
        b.kafka.topic = "x".into();
        assert_eq!(check_update(&a, &pipeline(&b)), Ok(()));
        let mut c = spec();
        c.kafka.partitions = 16;
        let err = check_update(&a, &pipeline(&c)).unwrap_err();
        assert_eq!(err, Refusal::PartitionsImmutable { from: 8, to: 16 });
        assert!(err.to_string().contains("immutable"), "{err}");
        let mut d = spec();
        d.kafka.bootstrap_servers = "127.0.0.1:9093".into();
        assert!(matches!(
            check_update(&a, &pipeline(&d)),
            Err(Refusal::BrokerChanged { .. })
        ));
    }

    #[test]
    fn restart_backoff_doubles_up_to_thirty_seconds() {
        let got: Vec<u64> = (1..=8).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(restart_delay(0).as_secs(), 1);
        assert_eq!(restart_delay(u32::MAX).as_secs(), 30);
    }
}
