//! The chatpipe test kit: real components for integration and end-to-end
//! tests, and the black-box conformance suite under `tests/`.
//!
//! # Layout
//! - Broker: [`kafka_bootstrap`] gives this test process's broker (a Tansu
//!   started on first use, or the one named by `$CHATPIPE_TEST_KAFKA`);
//!   [`PrivateBroker`] is a broker of the test's own that it may stop and
//!   restart; [`create_topic`] makes a unique topic.
//! - Postgres: [`TestDb::create`] makes a fresh, migrated database
//!   (dropped when the value is dropped).
//! - Binaries: [`binary`] finds a workspace binary; [`Service::spawn`] starts
//!   one on a free port and waits until its `/readyz` answers 200.
//! - Events: [`new_conversation`], [`new_message`], [`close_conversation`].
//!
//! Every child process is started from one long-lived thread with
//! `PR_SET_PDEATHSIG` ([`spawn_tied`], local mode's process handling from
//! `chatpipe-procs`), so a test process that dies (a panic, a timeout, a
//! kill) takes its brokers and services with it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use chatpipe_settings::common::LISTEN_ENV;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::OnceCell;
use uuid::Uuid;

pub mod fakes;

/// How long a spawned service may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Process spawning
// ---------------------------------------------------------------------------

/// Spawns `cmd` from a thread that lives as long as the process, with
/// `PR_SET_PDEATHSIG = SIGKILL`, so the child dies with the test process
/// (local mode's spawner, [`chatpipe_procs::spawn_tied`]).
pub use chatpipe_procs::spawn_tied;

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The root of the workspace.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of a workspace binary (`chatpipe-ingest`, …) in the target directory
/// this test was built into. The test command builds all binaries first;
/// panics with that hint when one is missing.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test-binary>
    let mut candidates = Vec::new();
    if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
        candidates.push(profile_dir.join(name));
    }
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join(name));
    }
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "binary {name} not found (looked in {candidates:?}); build it first: cargo build --workspace --bins"
    );
}

/// Path of the Tansu broker: `$CHATPIPE_TANSU`, else `tansu` on PATH, else
/// `~/.cargo/bin/tansu` (local mode's finder, [`chatpipe_procs::find_tansu`]).
pub fn tansu_path() -> anyhow::Result<PathBuf> {
    let explicit = std::env::var_os(chatpipe_procs::tansu::TANSU_ENV).map(PathBuf::from);
    match chatpipe_procs::find_tansu(explicit.as_deref()) {
        Some(p) => Ok(p),
        None => bail!(
            "tansu not found: run scripts/setup.sh (it installs tansu 0.6.0) or set CHATPIPE_TANSU"
        ),
    }
}

// ---------------------------------------------------------------------------
// Broker
// ---------------------------------------------------------------------------

/// A Tansu broker owned by the test: it can be stopped and restarted on the
/// same port, keeping its topics (file storage in a temporary directory).
pub struct PrivateBroker {
    /// `127.0.0.1:<port>`.
    pub bootstrap: String,
    dir: tempfile_dir::TempDir,
    child: Option<Child>,
}

mod tempfile_dir {
    //! A minimal temporary directory (removed on drop).
    use std::path::{Path, PathBuf};

    /// A directory under the system temp dir, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        /// Creates a fresh directory named after `prefix`.
        pub fn new(prefix: &str) -> std::io::Result<TempDir> {
            let p =
                std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&p)?;
            Ok(TempDir(p))
        }
        /// The directory.
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl PrivateBroker {
    /// Starts a broker with file storage on a free port and waits until it
    /// answers metadata requests.
    pub async fn start() -> anyhow::Result<PrivateBroker> {
        let port = free_port();
        let mut b = PrivateBroker {
            bootstrap: format!("127.0.0.1:{port}"),
            dir: tempfile_dir::TempDir::new("chatpipe-tansu")?,
            child: None,
        };
        b.launch().await?;
        Ok(b)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))?;
        let mut cmd = Command::new(tansu_path()?);
        cmd.args(chatpipe_procs::broker_args(&self.bootstrap))
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(spawn_tied(cmd).context("starting tansu")?);
        wait_for_broker(&self.bootstrap, Duration::from_secs(30)).await
    }

    /// Stops the broker (SIGKILL: the worst case for clients).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port with the same storage.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch().await
    }

    /// Replaces the broker by a new, empty one on the same port: the old
    /// one is stopped (SIGKILL) and its storage removed, so clients that
    /// reconnect find a broker without topics or records (as after a
    /// broker replacement or a deleted and recreated topic).
    pub async fn replace_with_empty(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.dir = tempfile_dir::TempDir::new("chatpipe-tansu")?;
        self.launch().await
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until a broker at `bootstrap` answers a metadata request.
pub async fn wait_for_broker(bootstrap: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let ok = tokio::net::TcpStream::connect(bootstrap).await.is_ok()
            && chatpipe_core::kafka::topic_partitions(
                &chatpipe_core::kafka::KafkaConnection::plaintext(bootstrap),
                "__chatpipe_probe",
                Duration::from_secs(2),
            )
            .await
            .is_ok();
        if ok {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("broker at {bootstrap} did not answer within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The test process's broker: a Tansu started once for this process (the
/// test runner runs each test in its own process, so tests share neither
/// broker state nor broker load), or `$CHATPIPE_TEST_KAFKA` when set. It uses
/// file storage: Tansu 0.6.0's memory engine misreports end offsets and
/// cannot fetch from inside a multi-record batch.
pub async fn kafka_bootstrap() -> String {
    static SHARED: OnceCell<String> = OnceCell::const_new();
    SHARED
        .get_or_init(|| async {
            if let Ok(b) = std::env::var("CHATPIPE_TEST_KAFKA") {
                if !b.is_empty() {
                    return b;
                }
            }
            match PrivateBroker::start().await {
                Ok(b) => {
                    let bootstrap = b.bootstrap.clone();
                    // Lives as long as the process; PDEATHSIG ends it.
                    std::mem::forget(b);
                    bootstrap
                }
                Err(e) => panic!("no test broker: {e:#}"),
            }
        })
        .await
        .clone()
}

/// Creates a topic with a unique name and `partitions` partitions.
pub async fn create_topic(bootstrap: &str, partitions: i32) -> String {
    let name = format!("t-{}", Uuid::new_v4().simple());
    match chatpipe_core::kafka::ensure_topic(
        &chatpipe_core::kafka::KafkaConnection::plaintext(bootstrap),
        &name,
        partitions,
        1,
        Duration::from_secs(30),
    )
    .await
    {
        Ok(chatpipe_core::kafka::TopicState::Created) => name,
        Ok(other) => panic!("topic {name}: unexpected state {other:?}"),
        Err(e) => panic!("creating topic {name}: {e:#}"),
    }
}

// ---------------------------------------------------------------------------
// Postgres
// ---------------------------------------------------------------------------

/// The server the test databases live on: `$CHATPIPE_TEST_POSTGRES`
/// (a URL without a database name is fine) or the local default.
fn postgres_base() -> String {
    std::env::var("CHATPIPE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A fresh, migrated database for one test, dropped on drop (set
/// `CHATPIPE_TEST_KEEP_DB=1` to keep it for inspection).
pub struct TestDb {
    /// Connection URL of the database.
    pub url: String,
    /// Database name (`cp_test_…`).
    pub name: String,
}

impl TestDb {
    /// Creates and migrates a new database.
    pub async fn create() -> anyhow::Result<TestDb> {
        let name = format!("cp_test_{}", Uuid::new_v4().simple());
        let url = format!("{}/{}", postgres_base(), name);
        chatpipe_core::db::ensure_database(&url).await?;
        chatpipe_core::db::migrate(&url).await?;
        Ok(TestDb { url, name })
    }

    /// A connected client.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        chatpipe_core::db::connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var("CHATPIPE_TEST_KEEP_DB").is_ok() {
            eprintln!("keeping test database {}", self.name);
            return;
        }
        let admin = format!("{}/postgres", postgres_base());
        let name = self.name.clone();
        // Drop from a separate thread with its own runtime: Drop may run
        // inside an async test.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(c) = chatpipe_core::db::connect(&admin).await {
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

// ---------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------

/// A running workspace binary (killed on drop).
pub struct Service {
    name: String,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    port: u16,
}

impl Service {
    /// Starts binary `name` with `envs`. `CHATPIPE_LISTEN` is set to a free
    /// port unless `envs` sets it; `CHATPIPE_LOG` defaults to `warn`. Waits
    /// until `GET /readyz` answers 200 (or the process exits).
    pub async fn spawn(name: &str, envs: &[(&str, &str)]) -> anyhow::Result<Service> {
        let mut envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let port = match envs.iter().find(|(k, _)| k == LISTEN_ENV) {
            Some((_, v)) => v
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| anyhow!("{LISTEN_ENV} {v:?} has no port"))?,
            None => {
                let p = free_port();
                envs.push((LISTEN_ENV.into(), format!("127.0.0.1:{p}")));
                p
            }
        };
        let log = chatpipe_settings::common::log_env();
        if !envs.iter().any(|(k, _)| *k == log) {
            envs.push((log, "warn".into()));
        }
        let mut s = Service {
            name: name.to_owned(),
            envs,
            child: None,
            port,
        };
        s.start().await?;
        Ok(s)
    }

    /// Starts the process again with the same settings (after a kill).
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(binary(&self.name));
        cmd.envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        self.child = Some(spawn_tied(cmd).with_context(|| format!("starting {}", self.name))?);
        self.wait_ready(READY_TIMEOUT).await
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.base_url());
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("{} exited before it was ready: {status}", self.name);
                }
            }
            if let Ok(r) = client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{} was not ready at {url} within {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Graceful stop: SIGTERM, then SIGKILL after 20 s. Returns whether the
    /// process exited successfully on its own.
    pub fn kill(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = chatpipe_procs::signal(c.id(), chatpipe_procs::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match c.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return false;
                }
            }
        }
    }

    /// Immediate stop with SIGKILL (a crash).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---------------------------------------------------------------------------
// Events and polling
// ---------------------------------------------------------------------------

fn ts(t: DateTime<Utc>) -> String {
    chatpipe_core::event::format_timestamp(t)
}

/// A NEW_CONVERSATION body.
pub fn new_conversation(id: Uuid, at: DateTime<Utc>) -> Value {
    json!({"type": "NEW_CONVERSATION", "timestamp": ts(at), "data": {"id": id}})
}

/// A NEW_MESSAGE body.
pub fn new_message(id: Uuid, conversation_id: Uuid, content: &str, at: DateTime<Utc>) -> Value {
    json!({"type": "NEW_MESSAGE", "timestamp": ts(at),
           "data": {"id": id, "content": content, "conversation_id": conversation_id}})
}

/// A CLOSE_CONVERSATION body.
pub fn close_conversation(id: Uuid, at: DateTime<Utc>) -> Value {
    json!({"type": "CLOSE_CONVERSATION", "timestamp": ts(at), "data": {"id": id}})
}

/// The reply text the spec requires for a group of `ids`, in arrival order.
pub fn expected_reply(ids: &[Uuid]) -> String {
    let mut s = String::from("Mensagens recebidas:\n");
    for id in ids {
        s.push_str(&id.to_string());
        s.push('\n');
    }
    s
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after
/// `timeout` with `what` in the message.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
