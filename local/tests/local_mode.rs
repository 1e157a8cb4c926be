//! End-to-end tests of `chatpipe-local` with the real binaries, the
//! real broker and real Postgres: a pipeline is started from a manifest,
//! its processors are scaled 1 → 3 → 1 by editing the file while webhooks
//! arrive, and every message must end up in exactly one reply.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chatpipe_tests::{
    binary, close_conversation, free_port, kafka_bootstrap, new_conversation, new_message,
    spawn_tied, tansu_path, TestDb,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc;

/// `[local]` status lines of local mode, and its exit.
struct Local {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Local {
    /// Starts `chatpipe-local` with `args`; its stdout is echoed
    /// and its `[local]` lines are kept for [`Local::expect`].
    fn start(args: &[&str]) -> Local {
        let mut cmd = Command::new(binary("chatpipe-local"));
        cmd.args(args)
            .env("CHATPIPE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = spawn_tied(cmd).expect("starting chatpipe-local");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                println!("{line}");
                if line.starts_with("[local]") {
                    let _ = tx.send(line);
                }
            }
        });
        Local { child, lines }
    }

    /// Waits for a `[local]` line containing `needle`; panics after `timeout`.
    async fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!("local mode exited while waiting for {needle:?}"),
                Err(_) => panic!("no [local] line with {needle:?} within {timeout:?}"),
            }
        }
    }

    /// SIGTERM, then waits for the exit; returns whether it exited with 0.
    fn terminate(mut self, timeout: Duration) -> bool {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!("local mode did not exit within {timeout:?} of SIGTERM");
                }
            }
        }
    }
}

struct Manifest {
    bootstrap: String,
    topic: String,
    partitions: i32,
    postgres_url: String,
    processors: u32,
}

impl Manifest {
    fn render(&self) -> String {
        format!(
            r#"apiVersion: chatpipe.dev/v1alpha1
kind: ChatPipeline
metadata:
  name: local-test
spec:
  image: chatpipe:dev
  kafka:
    bootstrapServers: {bootstrap}
    topic: {topic}
    partitions: {partitions}
  postgres:
    urlSecret: {{ name: test-postgres, key: url }}
  processing:
    groupingGap: 1s
    lateArrivalTolerance: 2s
  ingest: {{ replicas: 1 }}
  processor: {{ replicas: {processors} }}
  api: {{ replicas: 1 }}
---
apiVersion: v1
kind: Secret
metadata:
  name: test-postgres
stringData:
  url: {url}
"#,
            bootstrap = self.bootstrap,
            topic = self.topic,
            partitions = self.partitions,
            processors = self.processors,
            url = self.postgres_url,
        )
    }

    fn write(&self, path: &Path) {
        // Write then rename, as editors do, so the watcher never sees half a file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.render()).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
}

fn unique_uuid(counter: &AtomicU64, run: u64) -> String {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:08x}-{:04x}-4000-8000-{:012x}",
        run as u32,
        (run >> 32) as u16,
        n
    )
}

/// A `Uuid` from its text (through chatpipe-core, so this crate needs no
/// uuid dependency).
macro_rules! uuid {
    ($s:expr) => {
        chatpipe_core::event::parse_uuid(&$s).expect("well-formed uuid")
    };
}

/// Pid of the running `program` whose environment has `CHATPIPE_LISTEN=<listen>`.
fn find_child(program: &str, listen: &str) -> Option<i32> {
    let want = format!("CHATPIPE_LISTEN={listen}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let exe = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        if !String::from_utf8_lossy(exe).ends_with(program) {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|kv| kv == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// A free port `p` such that `p + 1 … p + n - 1` are free too (processor
/// ordinals listen on consecutive ports).
fn free_ports(n: u16) -> u16 {
    for _ in 0..100 {
        let p = free_port();
        if p != 0
            && p.checked_add(n).is_some()
            && (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok())
        {
            return p;
        }
    }
    panic!("no run of {n} free ports");
}

async fn listening(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

async fn ready(client: &reqwest::Client, port: u16) -> bool {
    matches!(
        client.get(format!("http://127.0.0.1:{port}/readyz")).send().await,
        Ok(r) if r.status().is_success()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processors_scale_1_3_1_under_load_with_exactly_one_reply_per_group() {
    let db = TestDb::create().await.unwrap();
    let bootstrap = kafka_bootstrap().await;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.yaml");
    let mut manifest = Manifest {
        bootstrap: bootstrap.clone(),
        topic: format!("t-local-{run:x}"),
        partitions: 6,
        postgres_url: db.url.clone(),
        processors: 1,
    };
    manifest.write(&file);
    let (ingest_port, api_port, proc_port) = (free_port(), free_port(), free_ports(3));
    let state = dir.path().join("state");
    let mut local = Local::start(&[
        "-f",
        file.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--ingest-port",
        &ingest_port.to_string(),
        "--api-port",
        &api_port.to_string(),
        "--processor-port",
        &proc_port.to_string(),
        "--watch-interval",
        "200ms",
        "--grace-period",
        "20s",
    ]);
    local
        .expect(
            "ready: pipeline local-test: 1 ingest, 1 processor(s)",
            Duration::from_secs(120),
        )
        .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(ready(&client, ingest_port).await);
    assert!(ready(&client, api_port).await);
    assert!(ready(&client, proc_port).await);

    // Load: 24 conversations; every 150 ms a burst of 1-3 messages to the
    // next one, for ~24 s, while the processors are scaled.
    let webhook = format!("http://127.0.0.1:{ingest_port}/webhook/");
    let counter = Arc::new(AtomicU64::new(1));
    let mut conversations = Vec::new();
    for _ in 0..24 {
        let id = unique_uuid(&counter, run);
        let r = client
            .post(&webhook)
            .json(&new_conversation(uuid!(id), chrono::Utc::now()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            201,
            "{}",
            r.text().await.unwrap_or_default()
        );
        conversations.push(id);
    }
    let load = {
        let client = client.clone();
        let webhook = webhook.clone();
        let conversations = conversations.clone();
        let counter = Arc::clone(&counter);
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut refused = 0u32;
            for i in 0..160usize {
                let conv = &conversations[i % conversations.len()];
                for _ in 0..(1 + i % 3) {
                    let id = unique_uuid(&counter, run);
                    let body = new_message(uuid!(id), uuid!(conv), "olá", chrono::Utc::now());
                    match client.post(&webhook).json(&body).send().await {
                        Ok(r) if r.status().as_u16() == 202 => accepted.push(id),
                        Ok(r) => {
                            refused += 1;
                            eprintln!("message refused: {}", r.status());
                        }
                        Err(e) => {
                            refused += 1;
                            eprintln!("message not sent: {e}");
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            (accepted, refused)
        })
    };

    tokio::time::sleep(Duration::from_secs(4)).await;
    manifest.processors = 3;
    manifest.write(&file);
    local
        .expect(
            "ready: pipeline local-test: 1 ingest, 3 processor(s)",
            Duration::from_secs(120),
        )
        .await;
    for i in 0..3 {
        assert!(
            ready(&client, proc_port + i).await,
            "processor-{i} not ready"
        );
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    manifest.processors = 1;
    manifest.write(&file);
    local
        .expect(
            "ready: pipeline local-test: 1 ingest, 1 processor(s)",
            Duration::from_secs(120),
        )
        .await;
    assert!(
        !listening(proc_port + 1).await,
        "processor-1 still listening"
    );
    assert!(
        !listening(proc_port + 2).await,
        "processor-2 still listening"
    );

    // A crash (SIGKILL) of the processor mid-load: local mode restarts it
    // and it resumes from what it committed.
    let listen = format!("127.0.0.1:{proc_port}");
    let pid = find_child("chatpipe-processor", &listen).expect("processor-0 process");
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    chatpipe_tests::eventually(Duration::from_secs(60), "processor-0 restarted", || async {
        let now = find_child("chatpipe-processor", &listen)?;
        (now != pid && ready(&client, proc_port).await).then_some(())
    })
    .await
    .unwrap();
    assert!(
        !load.is_finished(),
        "the load ended before the crash; lengthen it"
    );

    let (accepted, refused) = load.await.unwrap();
    assert_eq!(refused, 0, "ingest refused messages during the scaling");
    assert!(
        accepted.len() > 250,
        "only {} messages sent",
        accepted.len()
    );

    // Closing a conversation flushes its open group at once.
    let r = client
        .post(&webhook)
        .json(&close_conversation(
            uuid!(conversations[0]),
            chrono::Utc::now(),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Every message gets its reply within G + margin after the load.
    let pg = db.client().await.unwrap();
    let expected = accepted.len() as i64;
    chatpipe_tests::eventually(Duration::from_secs(90), "every INBOUND replied", || async {
        let row = pg
            .query_one(
                "SELECT count(*), count(reply_id) FROM messages WHERE direction = 'INBOUND'",
                &[],
            )
            .await
            .ok()?;
        let (all, replied): (i64, i64) = (row.get(0), row.get(1));
        (all == expected && replied == expected).then_some(())
    })
    .await
    .unwrap();

    // Exactly the accepted messages, each in exactly one reply whose content
    // lists exactly the messages that point at it.
    let inbound = pg
        .query(
            "SELECT id::text, reply_id::text FROM messages WHERE direction = 'INBOUND'",
            &[],
        )
        .await
        .unwrap();
    let mut by_reply: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    let mut inbound_ids = std::collections::BTreeSet::new();
    for row in &inbound {
        let id: String = row.get(0);
        let reply: String = row.get(1);
        inbound_ids.insert(id.clone());
        by_reply.entry(reply).or_default().insert(id);
    }
    let sent: std::collections::BTreeSet<String> = accepted.iter().cloned().collect();
    assert_eq!(
        inbound_ids, sent,
        "stored INBOUND ids differ from the accepted ones"
    );
    let outbound = pg
        .query(
            "SELECT id::text, content FROM messages WHERE direction = 'OUTBOUND'",
            &[],
        )
        .await
        .unwrap();
    let mut listed = std::collections::BTreeSet::new();
    for row in &outbound {
        let id: String = row.get(0);
        let content: String = row.get(1);
        let body = content
            .strip_prefix("Mensagens recebidas:\n")
            .unwrap_or_else(|| panic!("reply {id} has content {content:?}"));
        let ids: Vec<String> = body.lines().map(str::to_owned).collect();
        let set: std::collections::BTreeSet<String> = ids.iter().cloned().collect();
        assert_eq!(set.len(), ids.len(), "reply {id} lists an id twice");
        for i in &ids {
            assert!(listed.insert(i.clone()), "{i} is in two replies");
        }
        assert_eq!(
            by_reply.get(&id),
            Some(&set),
            "reply {id} lists other ids than the messages pointing at it"
        );
    }
    assert_eq!(
        outbound.len(),
        by_reply.len(),
        "a reply_id points at no reply"
    );
    assert_eq!(listed, sent);
    println!(
        "local mode scaling: {} messages, {} replies, 0 lost, 0 duplicated",
        sent.len(),
        outbound.len()
    );

    // Partitions are immutable: the edit is refused and nothing changes.
    manifest.partitions = 12;
    manifest.write(&file);
    local.expect("immutable", Duration::from_secs(30)).await;
    assert!(ready(&client, ingest_port).await);

    assert!(
        local.terminate(Duration::from_secs(60)),
        "local mode exited with an error"
    );
    for port in [ingest_port, api_port, proc_port] {
        assert!(
            !listening(port).await,
            "port {port} still listening after shutdown"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_its_own_broker_when_none_listens_and_stops_it() {
    let db = TestDb::create().await.unwrap();
    let tansu: PathBuf = tansu_path().unwrap();
    let broker_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.yaml");
    let manifest = Manifest {
        bootstrap: format!("127.0.0.1:{broker_port}"),
        topic: "chatpipe.events".into(),
        partitions: 2,
        postgres_url: db.url.clone(),
        processors: 1,
    };
    manifest.write(&file);
    let (ingest_port, api_port, proc_port) = (free_port(), free_port(), free_port());
    let state = dir.path().join("state");
    let local = {
        let mut l = Local::start(&[
            "-f",
            file.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--tansu",
            tansu.to_str().unwrap(),
            "--ingest-port",
            &ingest_port.to_string(),
            "--api-port",
            &api_port.to_string(),
            "--processor-port",
            &proc_port.to_string(),
        ]);
        l.expect("starting", Duration::from_secs(30)).await;
        l.expect("ready: pipeline local-test", Duration::from_secs(120))
            .await;
        l
    };
    assert!(listening(broker_port).await);
    assert!(state.join("broker/tansu.db").exists(), "no file storage");
    assert!(local.terminate(Duration::from_secs(60)));
    for port in [broker_port, ingest_port, api_port, proc_port] {
        assert!(
            !listening(port).await,
            "port {port} still listening after shutdown"
        );
    }
}

#[test]
fn an_invalid_manifest_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.yaml");
    let manifest = Manifest {
        bootstrap: "127.0.0.1:1".into(),
        topic: "bad topic".into(),
        partitions: 2,
        postgres_url: "postgres://postgres@127.0.0.1:5432/unused".into(),
        processors: 3,
    };
    std::fs::write(&file, manifest.render()).unwrap();
    let out = Command::new(binary("chatpipe-local"))
        .args(["-f", file.to_str().unwrap(), "--state-dir"])
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.kafka.topic"), "{err}");
    assert!(err.contains("spec.processor.replicas"), "{err}");
    assert!(
        !dir.path().join("state").exists(),
        "state created for an invalid manifest"
    );
}
