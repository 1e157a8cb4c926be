//! Local mode: `chatpipe-local -f examples/local.yaml` runs a
//! `ChatPipeline` manifest as processes on this machine — the same plan
//! ([`chatpipe_plan::Topology`]) the operator deploys on Kubernetes.
//!
//! What it does, in order:
//! 1. reads the manifest (the ChatPipeline and the Secret holding the
//!    Postgres URL, [`manifest`]), validates and plans it with
//!    `chatpipe-plan`;
//! 2. uses the broker at the manifest's bootstrap address, or starts Tansu
//!    there when nothing listens and the address is loopback ([`broker`]);
//! 3. creates the database, applies migrations (the plan's migration
//!    component, run in-process), ensures the topic;
//! 4. starts N ingest, M processor and K api processes ([`processes`],
//!    [`supervisor`]), restarting any that crash, and prints the URLs once
//!    every `/readyz` answers;
//! 5. re-reads the manifest when it changes ([`watch`]) and applies the
//!    difference: a processor-replica change stops every processor
//!    gracefully and starts the new set (partition ownership is static,
//!    `p mod M`, fenced in Postgres); a partition change is refused;
//! 6. on Ctrl-C or SIGTERM stops every service (SIGTERM, then SIGKILL after
//!    `--grace-period`) and then the broker it started.
//!
//! Ports (see [`processes`]): ingest replica `i` on `--ingest-port + i·--port-stride`
//! (8080, 8180, …), api on `--api-port + i·stride` (8081, 8181, …),
//! processor `i` ops on `--processor-port + i` (8090, 8091, …). Services'
//! output goes to stdout prefixed `[name]`; local mode's own status lines
//! are prefixed `[local]`, its logs go to stderr. The broker's data lives in
//! `<state-dir>/broker/tansu.db`.
//!
//! # Layout
//! - [`manifest`] — reading the manifest files; validating, planning and
//!   resolving the Postgres Secret into a [`processes::LocalPipeline`].
//! - [`processes`] — pure: the processes a plan asks for (ports, env from
//!   the plan's settings), the difference to the running ones, refused edits.
//! - [`supervisor`] — runs, restarts and stops the processes.
//! - [`broker`] — finding or starting the Tansu broker.
//! - [`watch`] — noticing edits of the manifest.
//! - `src/main.rs` — the `chatpipe-local` binary; [`run`] is all it calls.
//!
//! Process spawning, signalling and the Tansu finder are shared with the
//! test kit through `chatpipe-procs` (`local/procs/`).

pub mod broker;
pub mod manifest;
pub mod processes;
pub mod supervisor;
pub mod watch;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use chatpipe_core::config::{parse_duration, LogArgs};
use chatpipe_core::kafka::TopicState;
use chatpipe_plan::Component;

use self::manifest::{load, pipeline_name, resolve, Manifest};
use self::processes::{
    check_update, desired, diff, Binaries, LocalPipeline, Ports, ProcessSpec, Role,
};
use self::supervisor::Supervisor;
use self::watch::FileWatch;

/// Arguments of `chatpipe-local`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "chatpipe-local",
    version,
    about = "Runs a ChatPipeline manifest as processes on this machine"
)]
pub struct LocalArgs {
    /// Manifest(s) to run: YAML holding one ChatPipeline and the Secret its
    /// `postgres.urlSecret` names. Repeat (or comma-separate) for several
    /// files.
    #[arg(
        short = 'f',
        long = "file",
        env = "CHATPIPE_PIPELINE_FILE",
        default_value = "examples/local.yaml",
        value_delimiter = ','
    )]
    pub file: Vec<PathBuf>,
    /// Directory for local state (the broker's data in `broker/`).
    #[arg(long, env = "CHATPIPE_LOCAL_STATE_DIR", default_value = ".local")]
    pub state_dir: PathBuf,
    /// The `tansu` executable [default: `tansu` on PATH, then ~/.cargo/bin/tansu].
    #[arg(long, env = chatpipe_procs::tansu::TANSU_ENV)]
    pub tansu: Option<PathBuf>,
    /// Directory holding chatpipe-ingest, chatpipe-processor and chatpipe-api
    /// [default: the directory of this executable].
    #[arg(long, env = "CHATPIPE_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Address every service binds.
    #[arg(long, env = "CHATPIPE_LOCAL_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port of ingest replica 0 (replica i: this + i × --port-stride).
    #[arg(long, env = "CHATPIPE_LOCAL_INGEST_PORT", default_value_t = 8080)]
    pub ingest_port: u16,
    /// Port of api replica 0 (replica i: this + i × --port-stride).
    #[arg(long, env = "CHATPIPE_LOCAL_API_PORT", default_value_t = 8081)]
    pub api_port: u16,
    /// Ops port (/healthz, /readyz, /metrics) of processor 0 (processor i: this + i).
    #[arg(long, env = "CHATPIPE_LOCAL_PROCESSOR_PORT", default_value_t = 8090)]
    pub processor_port: u16,
    /// Ops port (/healthz, /readyz, /metrics) of delivery replica 0
    /// (replica i: this + i × --port-stride).
    #[arg(long, env = "CHATPIPE_LOCAL_DELIVERY_PORT", default_value_t = 8083)]
    pub delivery_port: u16,
    /// Distance between the ports of two ingest (or two api) replicas.
    #[arg(long, env = "CHATPIPE_LOCAL_PORT_STRIDE", default_value_t = 100)]
    pub port_stride: u16,
    /// How often the manifest is re-read for changes.
    #[arg(long, env = "CHATPIPE_LOCAL_WATCH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub watch_interval: Duration,
    /// How long a stopped service may take to exit after SIGTERM before it
    /// is killed.
    #[arg(long, env = "CHATPIPE_LOCAL_GRACE_PERIOD", default_value = "10s", value_parser = parse_duration)]
    pub grace_period: Duration,
    /// How long to wait for services' /readyz before reporting them late.
    #[arg(long, env = "CHATPIPE_LOCAL_READY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// Local mode's own logs (on stderr; the services inherit the
    /// environment, so `CHATPIPE_LOG` reaches them too).
    #[command(flatten)]
    pub log: LogArgs,
}

/// Prints one of local mode's status lines (a closed stdout is ignored).
fn say(msg: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "[local] {msg}");
}

/// Runs the manifest until Ctrl-C or SIGTERM, then stops everything it
/// started. Fails early (before starting anything) on an invalid manifest.
pub async fn run(args: LocalArgs) -> anyhow::Result<()> {
    chatpipe_core::telemetry::init_tracing(&args.log);
    let manifest = load(&args.file)?;
    let mut spec = resolve(&manifest)?;
    spec.secrets_dir = args.state_dir.join("secrets");
    spec.reply_rules_file = args.state_dir.join("replies").join("rules.json");
    let bins = binaries(&args)?;
    let ports = Ports {
        host: args.host,
        ingest: args.ingest_port,
        api: args.api_port,
        processor: args.processor_port,
        delivery: args.delivery_port,
        stride: args.port_stride,
    };
    desired(&spec, &ports, &bins)?;
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating the state directory {}", args.state_dir.display()))?;

    let mut sup = Supervisor::new(args.grace_period);
    let outcome = tokio::select! {
        r = serve(&args, &mut sup, manifest, spec, ports, bins) => r,
        _ = chatpipe_core::shutdown::signal() => Ok(()),
    };
    say("stopping every process");
    sup.shutdown().await;
    say("stopped");
    outcome
}

/// Where the service binaries are.
fn binaries(args: &LocalArgs) -> anyhow::Result<Binaries> {
    let dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .parent()
            .map(Path::to_owned)
            .context("this executable has no parent directory")?,
    };
    let bins = Binaries::in_dir(&dir);
    let missing: Vec<String> = bins
        .all()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing service binaries: {} (build them with `cargo build --workspace`, or point --bin-dir at them)",
            missing.join(", ")
        );
    }
    Ok(bins)
}

/// Starts everything and reconciles edits; returns only on a fatal error.
async fn serve(
    args: &LocalArgs,
    sup: &mut Supervisor,
    manifest: Manifest,
    spec: LocalPipeline,
    ports: Ports,
    bins: Binaries,
) -> anyhow::Result<()> {
    let name = pipeline_name(&manifest.pipeline);
    let started_broker = ensure_broker(args, sup, &spec).await?;
    prepare(&spec).await?;
    let mut watch = FileWatch::new(args.file.clone());
    let mut current = spec;
    if manifest.pipeline.is_paused() {
        say(format!(
            "pipeline {name} is paused (annotation {}); starting nothing until it is unpaused",
            chatpipe_plan::crd::PAUSED_ANNOTATION
        ));
    } else {
        reconcile(args, sup, &name, &current, &ports, &bins, started_broker).await?;
    }
    loop {
        tokio::time::sleep(args.watch_interval).await;
        if !watch.changed() {
            continue;
        }
        let (manifest, mut next) = match load(&args.file).and_then(|m| resolve(&m).map(|s| (m, s)))
        {
            Ok(x) => x,
            Err(e) => {
                say(format!("the edited manifest is not applied: {e}"));
                continue;
            }
        };
        next.secrets_dir = current.secrets_dir.clone();
        next.reply_rules_file = current.reply_rules_file.clone();
        let name = pipeline_name(&manifest.pipeline);
        if manifest.pipeline.is_paused() {
            say(format!(
                "pipeline {name} is paused; the edit is not applied"
            ));
            continue;
        }
        if let Err(e) = check_update(&current, &next) {
            say(format!("the edited manifest is not applied: {e}"));
            continue;
        }
        if next.topology.kafka.topic != current.topology.kafka.topic
            || next.postgres_url != current.postgres_url
        {
            if let Err(e) = prepare(&next).await {
                say(format!("the edited manifest is not applied: {e:#}"));
                continue;
            }
        }
        match reconcile(args, sup, &name, &next, &ports, &bins, started_broker).await {
            Ok(()) => current = next,
            Err(e) => say(format!("the edited manifest is not applied: {e:#}")),
        }
    }
}

/// Uses the broker at the bootstrap address, or starts Tansu there.
/// Returns whether local mode started it.
async fn ensure_broker(
    args: &LocalArgs,
    sup: &mut Supervisor,
    spec: &LocalPipeline,
) -> anyhow::Result<bool> {
    let server = broker::first_server(&spec.topology.kafka.bootstrap_servers);
    if broker::is_listening(server).await {
        say(format!("using the broker already listening on {server}"));
        return Ok(false);
    }
    if !broker::is_loopback(server) {
        bail!("no broker answers on {server}; local mode starts one only on a loopback address");
    }
    let Some(tansu) = broker::find_tansu(args.tansu.as_deref()) else {
        bail!(
            "no broker listens on {server} and no tansu executable was found (--tansu, PATH, ~/.cargo/bin/tansu); \
             install it with `cargo install tansu --version 0.6.0 --locked --features dynostore,libsql`"
        );
    };
    let data = args.state_dir.join("broker");
    std::fs::create_dir_all(&data)
        .with_context(|| format!("creating the broker directory {}", data.display()))?;
    let data = data.canonicalize().unwrap_or(data);
    say(format!(
        "starting {} on {server} (data in {})",
        tansu.display(),
        data.join("tansu.db").display()
    ));
    sup.start(broker::broker_process(&tansu, server, &data));
    if !broker::wait_listening(server, Duration::from_secs(30)).await {
        bail!("tansu did not listen on {server} within 30 s (see the [broker] lines above)");
    }
    Ok(true)
}

/// Creates the database, applies migrations (the plan's migration
/// component, run here rather than as a process) and ensures the topic.
async fn prepare(spec: &LocalPipeline) -> anyhow::Result<()> {
    let kafka = &spec.topology.kafka;
    // Certificate files (the Postgres and Kafka CAs) first: both steps
    // below read them.
    write_secret_files(spec)?;
    let url = spec.migration_url();
    let db = chatpipe_core::db::redact(&url);
    chatpipe_core::db::ensure_database(&url)
        .await
        .with_context(|| format!("Postgres at {db} (is it running? is the Secret's URL right?)"))?;
    let applied = chatpipe_core::db::migrate(&url).await.with_context(|| {
        format!(
            "migrating {db} (a local database made by a build whose migrations have since \
                 changed is refused; drop it or point the Secret at a new one)"
        )
    })?;
    say(format!(
        "database {db}: {} migration(s) applied",
        applied.len()
    ));

    // The broker may still be starting: retry for a while.
    // The topic is made with the services' own Kafka settings (TLS, SASL).
    let connection = kafka_connection(spec)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let state = loop {
        match chatpipe_core::kafka::ensure_topic(
            &connection,
            &kafka.topic,
            kafka.partitions,
            1,
            Duration::from_secs(10),
        )
        .await
        {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %format!("{e:#}"), "broker not ready yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "ensuring topic {} on {}",
                        kafka.topic, kafka.bootstrap_servers
                    )
                })
            }
        }
    };
    match state {
        TopicState::Created => say(format!(
            "topic {} created with {} partitions",
            kafka.topic, kafka.partitions
        )),
        TopicState::Exists => say(format!(
            "topic {} exists with {} partitions",
            kafka.topic, kafka.partitions
        )),
        TopicState::Mismatch { actual } => bail!(
            "topic {} has {actual} partitions on the broker but the manifest says {}; \
             partitions are immutable: restore {actual}, or use a new topic name",
            kafka.topic,
            kafka.partitions
        ),
    }
    Ok(())
}

/// How the services reach Kafka: the brokers, and TLS and SASL as the plan
/// gives them to ingest (with the certificate files local mode wrote).
fn kafka_connection(spec: &LocalPipeline) -> anyhow::Result<chatpipe_core::kafka::KafkaConnection> {
    use chatpipe_settings::common::{
        env_of, kafka_sasl_password_env, kafka_sasl_username_env, KafkaArgs, Redacted,
    };
    let kafka = &spec.topology.kafka;
    let env = spec.secret_env(chatpipe_plan::Component::Ingest);
    let file = |id: &str| env.get(&env_of::<KafkaArgs>(id)).cloned();
    let args = KafkaArgs {
        kafka_brokers: kafka.bootstrap_servers.clone(),
        kafka_topic: kafka.topic.clone(),
        kafka_tls: kafka.tls.is_some(),
        kafka_tls_ca_file: file("kafka_tls_ca_file"),
        kafka_tls_cert_file: file("kafka_tls_cert_file"),
        kafka_tls_key_file: file("kafka_tls_key_file"),
        kafka_sasl_mechanism: kafka.sasl.as_ref().and_then(|s| s.mechanism.parse().ok()),
        kafka_sasl_username: env.get(&kafka_sasl_username_env()).cloned(),
        kafka_sasl_password: env.get(&kafka_sasl_password_env()).cloned().map(Redacted),
    };
    chatpipe_core::kafka::KafkaConnection::from_args(&args)
        .context("the manifest's Kafka TLS and SASL settings")
}

/// Writes the secret files the processes read (certificates), readable by
/// this user only. A file's name carries its value's digest, so existing
/// files are left as they are.
fn write_secret_files(spec: &LocalPipeline) -> anyhow::Result<()> {
    let files = spec.secret_files();
    if files.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(&spec.secrets_dir).with_context(|| {
        format!(
            "creating the secrets directory {}",
            spec.secrets_dir.display()
        )
    })?;
    for (path, value) in files {
        if path.exists() {
            continue;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options
            .open(&path)
            .with_context(|| format!("writing the secret file {}", path.display()))?;
        std::io::Write::write_all(&mut f, value.as_bytes())
            .with_context(|| format!("writing the secret file {}", path.display()))?;
    }
    Ok(())
}

/// Writes the FAQ rules the processors read (atomically: a new file
/// renamed over the old one, so a processor never reads half of it), or
/// removes the file when the manifest has none. Unchanged rules are not
/// rewritten.
fn write_reply_rules(spec: &LocalPipeline) -> anyhow::Result<()> {
    let path = &spec.reply_rules_file;
    let Some(rules) = &spec.topology.reply_rules else {
        if path.exists() {
            std::fs::remove_file(path)
                .with_context(|| format!("removing the reply rules {}", path.display()))?;
        }
        return Ok(());
    };
    if std::fs::read_to_string(path).ok().as_deref() == Some(rules.as_str()) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, rules).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Brings the running services to `spec` and reports readiness.
async fn reconcile(
    args: &LocalArgs,
    sup: &mut Supervisor,
    name: &str,
    spec: &LocalPipeline,
    ports: &Ports,
    bins: &Binaries,
    started_broker: bool,
) -> anyhow::Result<()> {
    let want = desired(spec, ports, bins)?;
    write_secret_files(spec)?;
    write_reply_rules(spec)?;
    let actions = diff(&want, &sup.running_services());
    if actions.is_empty() {
        say("manifest re-read: nothing to change");
        return Ok(());
    }
    if !actions.stop.is_empty() {
        say(format!("stopping {}", actions.stop.join(", ")));
    }
    let starting: Vec<String> = actions.start.iter().map(|p| p.name.clone()).collect();
    sup.apply(actions).await;
    say(format!("starting {}", starting.join(", ")));

    let late = wait_ready(&want, args.ready_timeout).await;
    let count = |c: Component| want.iter().filter(|p| p.role == Role::Service(c)).count();
    let status = format!(
        "pipeline {name}: {} ingest, {} processor(s), {} api, {} delivery; topic {} ({} partitions)",
        count(Component::Ingest),
        count(Component::Processor),
        count(Component::Api),
        count(Component::Delivery),
        spec.topology.kafka.topic,
        spec.topology.kafka.partitions
    );
    if late.is_empty() {
        say(format!("ready: {status}"));
    } else {
        say(format!(
            "running, but not ready after {:?}: {} — {status}",
            args.ready_timeout,
            late.join(", ")
        ));
    }
    print_urls(&want, spec, started_broker, &args.state_dir, &args.file);
    Ok(())
}

fn print_urls(
    want: &[ProcessSpec],
    spec: &LocalPipeline,
    started_broker: bool,
    state_dir: &Path,
    files: &[PathBuf],
) {
    let addrs = |c: Component| -> Vec<String> {
        want.iter()
            .filter(|p| p.role == Role::Service(c))
            .filter_map(|p| p.listen)
            .map(|a| a.to_string())
            .collect()
    };
    for a in addrs(Component::Ingest) {
        say(format!("  webhooks:   POST http://{a}/webhook/"));
        for c in &spec.topology.channels {
            say(format!(
                "  channel:    POST http://{a}/channels/{}/webhook ({})",
                c.name, c.kind
            ));
        }
    }
    for a in addrs(Component::Api) {
        say(format!("  api/viewer: http://{a}/"));
    }
    let procs = addrs(Component::Processor);
    if !procs.is_empty() {
        say(format!(
            "  processors: http://{{{}}}/metrics",
            procs.join(",")
        ));
    }
    let broker = if started_broker {
        format!(
            "started here, data in {}",
            state_dir.join("broker").display()
        )
    } else {
        "external".to_owned()
    };
    say(format!(
        "  broker:     {} ({broker})",
        spec.topology.kafka.bootstrap_servers
    ));
    let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    say(format!(
        "edit {} to reconcile live; Ctrl-C stops everything",
        files.join(", ")
    ));
}

/// Polls every process's `/readyz` until it answers 200 or `timeout`
/// passes; returns the names of those that never did.
async fn wait_ready(procs: &[ProcessSpec], timeout: Duration) -> Vec<String> {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no HTTP client; skipping readiness checks");
            return Vec::new();
        }
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let checks = procs.iter().map(|p| {
        let client = client.clone();
        async move {
            let url = p.readyz_url()?;
            loop {
                if let Ok(r) = client.get(&url).send().await {
                    if r.status().is_success() {
                        return None;
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    return Some(p.name.clone());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn defaults_are_the_documented_ones() {
        LocalArgs::command().debug_assert();
        let a = LocalArgs::try_parse_from(["local"]).unwrap();
        assert_eq!(a.file, [PathBuf::from("examples/local.yaml")]);
        assert_eq!(a.state_dir, PathBuf::from(".local"));
        assert_eq!(a.host, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(
            (a.ingest_port, a.api_port, a.processor_port),
            (8080, 8081, 8090)
        );
        assert_eq!(a.port_stride, 100);
        assert_eq!(a.watch_interval, Duration::from_secs(1));
        assert_eq!(a.grace_period, Duration::from_secs(10));
        assert!(a.tansu.is_none() && a.bin_dir.is_none());
    }

    #[test]
    fn several_files_and_ports_can_be_given() {
        let a = LocalArgs::try_parse_from([
            "local",
            "-f",
            "a.yaml",
            "--file",
            "b.yaml,c.yaml",
            "--ingest-port",
            "9000",
            "--watch-interval",
            "200ms",
        ])
        .unwrap();
        assert_eq!(a.file.len(), 3);
        assert_eq!(a.ingest_port, 9000);
        assert_eq!(a.watch_interval, Duration::from_millis(200));
    }
}
