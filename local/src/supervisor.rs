//! Runs and watches the processes of local mode.
//!
//! Each [`ProcessSpec`] gets a task that spawns it, forwards its stdout and
//! stderr line by line to our stdout prefixed with `[name]`, and restarts it
//! with [`restart_delay`] backoff when it exits on its own. Stopping sends
//! SIGTERM to the child's process group, waits a grace period, then sends
//! SIGKILL.
//!
//! Orphans: every child runs in its own process group (so a terminal's
//! Ctrl-C reaches only us, and we stop children in order), is killed when
//! its handle is dropped, and asks the kernel for SIGTERM when the thread
//! that spawned it dies (`PR_SET_PDEATHSIG`,
//! [`chatpipe_procs::die_with_parent`]), so even a SIGKILL of local mode
//! does not leave services running.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chatpipe_procs::Signal;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::processes::{restart_delay, Actions, ProcessSpec, Role, HEALTHY_RUN};

/// Counters of one supervised process.
#[derive(Debug, Default)]
pub struct ProcessStats {
    /// How many times it was restarted after exiting on its own.
    pub restarts: AtomicU32,
    /// Pid of the current child (0 while none runs).
    pub pid: AtomicU32,
}

struct Managed {
    spec: ProcessSpec,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    stats: Arc<ProcessStats>,
}

/// The set of processes local mode runs.
pub struct Supervisor {
    procs: BTreeMap<String, Managed>,
    grace: Duration,
}

impl Supervisor {
    /// A supervisor that gives each stopped process `grace` to exit after
    /// SIGTERM before it is killed.
    pub fn new(grace: Duration) -> Self {
        Self {
            procs: BTreeMap::new(),
            grace,
        }
    }

    /// Specs of the supervised processes of `role`.
    pub fn running(&self, role: Role) -> Vec<ProcessSpec> {
        self.procs
            .values()
            .filter(|m| m.spec.role == role)
            .map(|m| m.spec.clone())
            .collect()
    }

    /// Specs of the supervised chatpipe services (everything but the broker).
    pub fn running_services(&self) -> Vec<ProcessSpec> {
        self.procs
            .values()
            .filter(|m| m.spec.role != Role::Broker)
            .map(|m| m.spec.clone())
            .collect()
    }

    /// Counters of the process called `name`.
    pub fn stats(&self, name: &str) -> Option<Arc<ProcessStats>> {
        self.procs.get(name).map(|m| Arc::clone(&m.stats))
    }

    /// Starts supervising `spec` (replacing nothing: the name must be free).
    pub fn start(&mut self, spec: ProcessSpec) {
        if self.procs.contains_key(&spec.name) {
            tracing::warn!(name = %spec.name, "already running; not started twice");
            return;
        }
        let (tx, rx) = oneshot::channel();
        let stats = Arc::new(ProcessStats::default());
        let task = tokio::spawn(supervise(spec.clone(), rx, self.grace, Arc::clone(&stats)));
        self.procs.insert(
            spec.name.clone(),
            Managed {
                spec,
                stop: Some(tx),
                task: Some(task),
                stats,
            },
        );
    }

    /// Stops the named processes concurrently and waits until all exited.
    pub async fn stop(&mut self, names: &[String]) {
        for name in names {
            if let Some(m) = self.procs.get_mut(name) {
                if let Some(tx) = m.stop.take() {
                    let _ = tx.send(());
                }
            }
        }
        for name in names {
            if let Some(m) = self.procs.get_mut(name) {
                if let Some(task) = m.task.as_mut() {
                    if let Err(e) = task.await {
                        tracing::warn!(%name, error = %e, "supervisor task failed");
                    }
                    m.task = None;
                }
            }
            self.procs.remove(name);
        }
    }

    /// Applies a plan: stops first (waiting for every stopped process to
    /// exit), then starts.
    pub async fn apply(&mut self, actions: Actions) {
        self.stop(&actions.stop).await;
        for spec in actions.start {
            self.start(spec);
        }
    }

    /// Stops everything: the services first, the broker last.
    pub async fn shutdown(&mut self) {
        let services: Vec<String> = self
            .procs
            .values()
            .filter(|m| m.spec.role != Role::Broker)
            .map(|m| m.spec.name.clone())
            .collect();
        self.stop(&services).await;
        let rest: Vec<String> = self.procs.keys().cloned().collect();
        self.stop(&rest).await;
    }
}

fn spawn(spec: &ProcessSpec) -> std::io::Result<Child> {
    let mut cmd = std::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    // Colour codes only make sense when our output is a terminal.
    if !std::io::stdout().is_terminal() {
        cmd.env("NO_COLOR", "1");
    }
    chatpipe_procs::die_with_parent(&mut cmd, Signal::SIGTERM);
    Command::from(cmd).kill_on_drop(true).spawn()
}

fn forward<R: AsyncRead + Unpin + Send + 'static>(reader: Option<R>, name: String) {
    let Some(reader) = reader else { return };
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "[{name}] {line}");
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%name, error = %e, "reading child output");
                    break;
                }
            }
        }
    });
}

fn signal_group(pid: u32, sig: Signal) {
    if let Err(e) = chatpipe_procs::signal_group(pid, sig) {
        tracing::warn!(pid, signal = ?sig, error = %e, "signalling process group");
    }
}

/// SIGTERM to the group, `grace` to exit, then SIGKILL. Returns the status.
async fn terminate(child: &mut Child, name: &str, grace: Duration) -> Option<ExitStatus> {
    let Some(pid) = child.id() else {
        return child.wait().await.ok();
    };
    signal_group(pid, Signal::SIGTERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            tracing::warn!(%name, ?grace, "did not exit after SIGTERM; killing it");
            signal_group(pid, Signal::SIGKILL);
            child.wait().await.ok()
        }
    };
    // Anything the child left in its group goes with it.
    signal_group(pid, Signal::SIGKILL);
    status
}

async fn supervise(
    spec: ProcessSpec,
    mut stop: oneshot::Receiver<()>,
    grace: Duration,
    stats: Arc<ProcessStats>,
) {
    let name = spec.name.clone();
    let mut failures: u32 = 0;
    loop {
        let started = Instant::now();
        let delay = match spawn(&spec) {
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                stats.pid.store(pid, Ordering::Relaxed);
                tracing::info!(%name, pid, program = %spec.program.display(), "started");
                forward(child.stdout.take(), name.clone());
                forward(child.stderr.take(), name.clone());
                tokio::select! {
                    status = child.wait() => {
                        stats.pid.store(0, Ordering::Relaxed);
                        // Reap anything it left behind in its group.
                        signal_group(pid, Signal::SIGKILL);
                        if started.elapsed() >= HEALTHY_RUN {
                            failures = 0;
                        }
                        failures = failures.saturating_add(1);
                        let delay = restart_delay(failures);
                        let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                        tracing::warn!(%name, %status, restart_in = ?delay, "exited on its own; restarting");
                        delay
                    }
                    _ = &mut stop => {
                        let status = terminate(&mut child, &name, grace).await;
                        stats.pid.store(0, Ordering::Relaxed);
                        tracing::info!(%name, status = ?status, "stopped");
                        return;
                    }
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = restart_delay(failures);
                tracing::error!(%name, program = %spec.program.display(), error = %e, retry_in = ?delay, "cannot start");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {
                stats.restarts.fetch_add(1, Ordering::Relaxed);
            }
            _ = &mut stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use chatpipe_plan::Component;
    use nix::unistd::Pid;

    fn sh(name: &str, script: &str) -> ProcessSpec {
        ProcessSpec {
            name: name.into(),
            role: Role::Service(Component::Ingest),
            ordinal: 0,
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::new(),
            cwd: None,
            listen: None,
        }
    }

    fn alive(pid: u32) -> bool {
        nix::sys::signal::kill(Pid::from_raw(pid as i32), None).is_ok()
    }

    async fn wait_pid(stats: &ProcessStats) -> u32 {
        for _ in 0..100 {
            let pid = stats.pid.load(Ordering::Relaxed);
            if pid != 0 {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("process never started");
    }

    #[tokio::test]
    async fn stop_terminates_the_whole_group() {
        let mut sup = Supervisor::new(Duration::from_secs(5));
        // A child that itself spawns a grandchild.
        sup.start(sh("a", "sleep 600 & wait"));
        let stats = sup.stats("a").unwrap();
        let pid = wait_pid(&stats).await;
        assert!(alive(pid));
        sup.shutdown().await;
        assert!(!alive(pid));
        assert!(sup.running_services().is_empty());
    }

    #[tokio::test]
    async fn a_process_that_ignores_sigterm_is_killed_after_the_grace() {
        let mut sup = Supervisor::new(Duration::from_millis(300));
        sup.start(sh(
            "stubborn",
            "trap '' TERM; while true; do sleep 0.1; done",
        ));
        let stats = sup.stats("stubborn").unwrap();
        let pid = wait_pid(&stats).await;
        let t = std::time::Instant::now();
        sup.stop(&["stubborn".to_owned()]).await;
        assert!(!alive(pid));
        assert!(t.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn crashed_processes_are_restarted() {
        let mut sup = Supervisor::new(Duration::from_secs(1));
        sup.start(sh("crashy", "exit 3"));
        let stats = sup.stats("crashy").unwrap();
        // First restart after 1 s.
        for _ in 0..100 {
            if stats.restarts.load(Ordering::Relaxed) >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(stats.restarts.load(Ordering::Relaxed) >= 1);
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn apply_stops_before_it_starts() {
        let mut sup = Supervisor::new(Duration::from_secs(5));
        sup.start(sh("p-0", "sleep 600"));
        let old = wait_pid(&sup.stats("p-0").unwrap()).await;
        let mut next = sh("p-0", "sleep 601");
        next.env.insert("X".into(), "1".into());
        sup.apply(Actions {
            stop: vec!["p-0".into()],
            start: vec![next.clone()],
        })
        .await;
        assert!(!alive(old));
        let new = wait_pid(&sup.stats("p-0").unwrap()).await;
        assert_ne!(old, new);
        assert_eq!(sup.running(Role::Service(Component::Ingest)), vec![next]);
        sup.shutdown().await;
        assert!(!alive(new));
    }

    #[tokio::test]
    async fn a_missing_program_is_retried_not_fatal() {
        let mut sup = Supervisor::new(Duration::from_secs(1));
        let mut spec = sh("ghost", "");
        spec.program = PathBuf::from("/nonexistent/chatpipe-ghost");
        sup.start(spec);
        tokio::time::sleep(Duration::from_millis(100)).await;
        sup.shutdown().await;
    }
}
