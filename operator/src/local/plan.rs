//! The pure core of local mode: which processes a validated `ChatPipeline`
//! asks for on this machine ([`desired`]), what must change to get from the
//! running set to that ([`diff`]), and which edits of a running manifest are
//! refused ([`check_update`]).
//!
//! No I/O here: the supervisor applies the [`Actions`], the tests call these
//! functions directly.
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
//! owner epoch in Postgres. `CHATPIPE_PROCESSOR_REPLICAS` is part of every
//! processor's environment, so a change of `M` changes every processor's
//! [`ProcessSpec`] and [`diff`] restarts the whole set: all old processors
//! are stopped (gracefully) before any new one starts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The three chatpipe services, plus the broker local mode may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    /// The Kafka-protocol broker (Tansu), started only when none listens.
    Broker,
    /// `chatpipe-ingest`.
    Ingest,
    /// `chatpipe-processor`.
    Processor,
    /// `chatpipe-api`.
    Api,
}

impl Component {
    /// Short name used in process names and log prefixes.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Broker => "broker",
            Component::Ingest => "ingest",
            Component::Processor => "processor",
            Component::Api => "api",
        }
    }
}

/// Everything local mode needs from a validated `ChatPipeline` (with its
/// Postgres Secret resolved), as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSpec {
    /// Kafka bootstrap servers.
    pub bootstrap_servers: String,
    /// Event topic.
    pub topic: String,
    /// Partitions of the topic (immutable).
    pub partitions: i32,
    /// Postgres connection URL (from the Secret).
    pub postgres_url: String,
    /// Grouping gap, as written in the manifest (`5s`).
    pub grouping_gap: String,
    /// Late-arrival tolerance, as written in the manifest (`6s`).
    pub late_arrival_tolerance: String,
    /// Watermark allowance, when the manifest sets one.
    pub watermark_allowance: Option<String>,
    /// Longest span of one group, when the manifest sets one.
    pub max_group_span: Option<String>,
    /// Most messages in one group, when the manifest sets it.
    pub max_group_messages: Option<u32>,
    /// Largest tolerated clock skew, when the manifest sets one.
    pub max_clock_skew: Option<String>,
    /// Largest accepted webhook body, when set.
    pub max_body_bytes: Option<i64>,
    /// Largest accepted message content, when set.
    pub max_content_bytes: Option<i64>,
    /// Ingest processes.
    pub ingest_replicas: u32,
    /// Processor processes.
    pub processor_replicas: u32,
    /// Api processes.
    pub api_replicas: u32,
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
            stride: 100,
        }
    }
}

/// Paths of the service binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// `chatpipe-ingest`.
    pub ingest: PathBuf,
    /// `chatpipe-processor`.
    pub processor: PathBuf,
    /// `chatpipe-api`.
    pub api: PathBuf,
}

/// One process local mode runs: what to execute and with which settings.
/// Two specs are equal exactly when the process need not be restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Unique name, e.g. `processor-2`; also the log prefix.
    pub name: String,
    /// Which service.
    pub component: Component,
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

/// Why a plan cannot be built or an edit is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
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
    /// More processors than partitions.
    #[error("processor.replicas ({replicas}) must not exceed kafka.partitions ({partitions})")]
    TooManyProcessors {
        /// Requested processors.
        replicas: u32,
        /// Partitions of the topic.
        partitions: i32,
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

/// The environment every chatpipe service gets.
fn common_env(spec: &LocalSpec, listen: SocketAddr) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("CHATPIPE_LISTEN".to_owned(), listen.to_string());
    env.insert(
        "CHATPIPE_POSTGRES_URL".to_owned(),
        spec.postgres_url.clone(),
    );
    env.insert(
        "CHATPIPE_KAFKA_BROKERS".to_owned(),
        spec.bootstrap_servers.clone(),
    );
    env.insert("CHATPIPE_KAFKA_TOPIC".to_owned(), spec.topic.clone());
    env
}

fn port_for(component: Component, base: u16, step: u16, ordinal: u32) -> Result<u16, PlanError> {
    let port = u32::from(base) + u32::from(step) * ordinal;
    u16::try_from(port).map_err(|_| PlanError::PortOverflow {
        component: component.as_str(),
        ordinal,
        port,
    })
}

/// The processes `spec` asks for, in start order (ingest, processors, api),
/// each with its port and environment.
pub fn desired(
    spec: &LocalSpec,
    ports: &Ports,
    bins: &Binaries,
) -> Result<Vec<ProcessSpec>, PlanError> {
    if i64::from(spec.processor_replicas) > i64::from(spec.partitions) {
        return Err(PlanError::TooManyProcessors {
            replicas: spec.processor_replicas,
            partitions: spec.partitions,
        });
    }
    let mut out = Vec::new();
    for i in 0..spec.ingest_replicas {
        let listen = SocketAddr::new(
            ports.host,
            port_for(Component::Ingest, ports.ingest, ports.stride, i)?,
        );
        let mut env = common_env(spec, listen);
        if let Some(b) = spec.max_body_bytes {
            env.insert("CHATPIPE_MAX_BODY_BYTES".to_owned(), b.to_string());
        }
        if let Some(b) = spec.max_content_bytes {
            env.insert("CHATPIPE_MAX_CONTENT_BYTES".to_owned(), b.to_string());
        }
        out.push(service(Component::Ingest, i, &bins.ingest, env, listen));
    }
    for i in 0..spec.processor_replicas {
        let listen = SocketAddr::new(
            ports.host,
            port_for(Component::Processor, ports.processor, 1, i)?,
        );
        let mut env = common_env(spec, listen);
        env.insert(
            "CHATPIPE_GROUPING_GAP".to_owned(),
            spec.grouping_gap.clone(),
        );
        env.insert(
            "CHATPIPE_LATE_TOLERANCE".to_owned(),
            spec.late_arrival_tolerance.clone(),
        );
        if let Some(w) = &spec.watermark_allowance {
            env.insert("CHATPIPE_WATERMARK_ALLOWANCE".to_owned(), w.clone());
        }
        if let Some(s) = &spec.max_group_span {
            env.insert("CHATPIPE_MAX_GROUP_SPAN".to_owned(), s.clone());
        }
        if let Some(n) = spec.max_group_messages {
            env.insert("CHATPIPE_MAX_GROUP_MESSAGES".to_owned(), n.to_string());
        }
        if let Some(s) = &spec.max_clock_skew {
            env.insert("CHATPIPE_MAX_CLOCK_SKEW".to_owned(), s.clone());
        }
        env.insert(
            "CHATPIPE_PROCESSOR_REPLICAS".to_owned(),
            spec.processor_replicas.to_string(),
        );
        env.insert("CHATPIPE_PROCESSOR_ORDINAL".to_owned(), i.to_string());
        out.push(service(
            Component::Processor,
            i,
            &bins.processor,
            env,
            listen,
        ));
    }
    for i in 0..spec.api_replicas {
        let listen = SocketAddr::new(
            ports.host,
            port_for(Component::Api, ports.api, ports.stride, i)?,
        );
        let env = common_env(spec, listen);
        out.push(service(Component::Api, i, &bins.api, env, listen));
    }
    let mut seen: BTreeMap<u16, &str> = BTreeMap::new();
    for p in &out {
        if let Some(addr) = p.listen {
            if let Some(first) = seen.insert(addr.port(), &p.name) {
                return Err(PlanError::PortClash {
                    first: first.to_owned(),
                    second: p.name.clone(),
                    port: addr.port(),
                });
            }
        }
    }
    Ok(out)
}

fn service(
    component: Component,
    ordinal: u32,
    program: &std::path::Path,
    env: BTreeMap<String, String>,
    listen: SocketAddr,
) -> ProcessSpec {
    ProcessSpec {
        name: format!("{}-{ordinal}", component.as_str()),
        component,
        ordinal,
        program: program.to_owned(),
        args: Vec::new(),
        env,
        cwd: None,
        listen: Some(listen),
    }
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
pub fn check_update(running: &LocalSpec, next: &LocalSpec) -> Result<(), PlanError> {
    if running.partitions != next.partitions {
        return Err(PlanError::PartitionsImmutable {
            from: running.partitions,
            to: next.partitions,
        });
    }
    if running.bootstrap_servers != next.bootstrap_servers {
        return Err(PlanError::BrokerChanged {
            from: running.bootstrap_servers.clone(),
            to: next.bootstrap_servers.clone(),
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

    fn spec() -> LocalSpec {
        LocalSpec {
            bootstrap_servers: "127.0.0.1:9092".into(),
            topic: "chatpipe.events".into(),
            partitions: 8,
            postgres_url: "postgres://postgres@127.0.0.1:5432/chatpipe".into(),
            grouping_gap: "5s".into(),
            late_arrival_tolerance: "6s".into(),
            watermark_allowance: None,
            max_group_span: None,
            max_group_messages: None,
            max_clock_skew: None,
            max_body_bytes: None,
            max_content_bytes: None,
            ingest_replicas: 1,
            processor_replicas: 2,
            api_replicas: 1,
        }
    }

    fn bins() -> Binaries {
        Binaries {
            ingest: "/bin/chatpipe-ingest".into(),
            processor: "/bin/chatpipe-processor".into(),
            api: "/bin/chatpipe-api".into(),
        }
    }

    fn names(ps: &[ProcessSpec]) -> Vec<&str> {
        ps.iter().map(|p| p.name.as_str()).collect()
    }

    fn plan(s: &LocalSpec) -> Vec<ProcessSpec> {
        desired(s, &Ports::default(), &bins()).unwrap()
    }

    #[test]
    fn default_layout_uses_the_documented_ports() {
        let mut s = spec();
        s.ingest_replicas = 2;
        s.api_replicas = 2;
        s.processor_replicas = 3;
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
            assert_eq!(p.env["CHATPIPE_KAFKA_BROKERS"], "127.0.0.1:9092");
            assert_eq!(p.env["CHATPIPE_KAFKA_TOPIC"], "chatpipe.events");
            assert!(p.args.is_empty());
            assert!(p.cwd.is_none());
        }
    }

    #[test]
    fn processors_know_their_ordinal_replicas_and_windows() {
        let mut s = spec();
        s.processor_replicas = 3;
        s.watermark_allowance = Some("20ms".into());
        let procs: Vec<ProcessSpec> = plan(&s)
            .into_iter()
            .filter(|p| p.component == Component::Processor)
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
        s.max_body_bytes = Some(65536);
        s.max_content_bytes = Some(4096);
        for p in plan(&s) {
            let is_proc = p.component == Component::Processor;
            let is_ingest = p.component == Component::Ingest;
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
        s.max_group_span = Some("1m 30s".into());
        s.max_group_messages = Some(250);
        s.max_clock_skew = Some("0s".into());
        for p in plan(&s) {
            let is_proc = p.component == Component::Processor;
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
        b.max_group_messages = Some(5);
        let acts = diff(&plan(&b), &running);
        assert_eq!(acts.stop, ["processor-0", "processor-1"]);
        assert_eq!(names(&acts.start), ["processor-0", "processor-1"]);
    }

    #[test]
    fn zero_replicas_run_nothing() {
        let mut s = spec();
        s.ingest_replicas = 0;
        s.processor_replicas = 0;
        s.api_replicas = 0;
        assert!(plan(&s).is_empty());
    }

    #[test]
    fn partition_assignment_covers_every_partition_once() {
        // What the processors will compute from the env we give them.
        for m in 1..=8u32 {
            let mut s = spec();
            s.processor_replicas = m;
            let procs: Vec<ProcessSpec> = plan(&s)
                .into_iter()
                .filter(|p| p.component == Component::Processor)
                .collect();
            let mut owners = vec![0; s.partitions as usize];
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

    #[test]
    fn more_processors_than_partitions_is_refused() {
        let mut s = spec();
        s.processor_replicas = 9;
        assert_eq!(
            desired(&s, &Ports::default(), &bins()),
            Err(PlanError::TooManyProcessors {
                replicas: 9,
                partitions: 8
            })
        );
    }

    #[test]
    fn ports_beyond_65535_are_refused() {
        let mut s = spec();
        s.ingest_replicas = 2;
        let ports = Ports {
            ingest: 65500,
            ..Ports::default()
        };
        let err = desired(&s, &ports, &bins()).unwrap_err();
        assert_eq!(
            err,
            PlanError::PortOverflow {
                component: "ingest",
                ordinal: 1,
                port: 65600
            }
        );
    }

    #[test]
    fn clashing_ports_are_refused() {
        let mut s = spec();
        s.ingest_replicas = 2;
        // ingest-1 = 8080 + 1 = 8081 = api-0
        let ports = Ports {
            stride: 1,
            ..Ports::default()
        };
        let err = desired(&s, &ports, &bins()).unwrap_err();
        assert_eq!(
            err,
            PlanError::PortClash {
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
            desired(&spec(), &ports, &bins()),
            Err(PlanError::PortClash { port: 8080, .. })
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
            a.processor_replicas = from;
            let mut b = spec();
            b.processor_replicas = to;
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
        b.processor_replicas = 0;
        let acts = diff(&plan(&b), &running);
        assert_eq!(acts.stop, ["processor-0", "processor-1"]);
        assert!(acts.start.is_empty());
    }

    #[test]
    fn scaling_ingest_touches_only_the_added_or_removed_replicas() {
        let running = plan(&spec());
        let mut up = spec();
        up.ingest_replicas = 3;
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
        b.grouping_gap = "2s".into();
        let acts = diff(&plan(&b), &running);
        assert_eq!(acts.stop, ["processor-0", "processor-1"]);
        assert_eq!(names(&acts.start), ["processor-0", "processor-1"]);
    }

    #[test]
    fn postgres_or_topic_change_restarts_everything() {
        let running = plan(&spec());
        let mut b = spec();
        b.postgres_url = "postgres://postgres@127.0.0.1:5432/other".into();
        let acts = diff(&plan(&b), &running);
        assert_eq!(acts.stop.len(), running.len());
        assert_eq!(acts.start.len(), running.len());
        let mut c = spec();
        c.topic = "other".into();
        let acts = diff(&plan(&c), &running);
        assert_eq!(acts.stop.len(), running.len());
    }

    #[test]
    fn a_changed_binary_path_restarts_that_component() {
        let running = plan(&spec());
        let mut other = bins();
        other.api = "/opt/chatpipe-api".into();
        let acts = diff(
            &desired(&spec(), &Ports::default(), &other).unwrap(),
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
        let a = spec();
        let mut b = spec();
        b.processor_replicas = 3;
        b.topic = "x".into();
        assert_eq!(check_update(&a, &b), Ok(()));
        let mut c = spec();
        c.partitions = 16;
        let err = check_update(&a, &c).unwrap_err();
        assert_eq!(err, PlanError::PartitionsImmutable { from: 8, to: 16 });
        assert!(err.to_string().contains("immutable"), "{err}");
        let mut d = spec();
        d.bootstrap_servers = "127.0.0.1:9093".into();
        assert!(matches!(
            check_update(&a, &d),
            Err(PlanError::BrokerChanged { .. })
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
