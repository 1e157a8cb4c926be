//! What the three fakes share: their recorded state (sends, faults,
//! blocked recipients, counters) and the server thread they run on.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context};
use axum::Router;
use tokio::sync::{oneshot, watch};

use super::{Fault, Sent};

/// A fake's state; `P` is the provider's own part (Telegram's per-chat
/// message ids, …).
#[derive(Debug, Default)]
pub(crate) struct State<P> {
    sent: Vec<Sent>,
    faults: VecDeque<Fault>,
    blocked: BTreeSet<String>,
    calls: u64,
    rejected_auth: u64,
    provider: P,
}

/// A fake's state behind its lock, with a watch of how many sends it holds
/// (for [`Shared::wait_for_sent`]).
#[derive(Debug)]
pub(crate) struct Shared<P> {
    name: &'static str,
    state: Mutex<State<P>>,
    sent_count: watch::Sender<usize>,
}

impl<P: Default> Shared<P> {
    /// Empty state of the fake called `name` (in error messages).
    pub(crate) fn new(name: &'static str) -> Arc<Shared<P>> {
        Arc::new(Shared {
            name,
            state: Mutex::new(State::default()),
            sent_count: watch::Sender::new(0),
        })
    }
}

impl<P> Shared<P> {
    /// The state; a panic while it was held (a test's) does not make it
    /// unusable, since every update leaves it consistent.
    fn lock(&self) -> MutexGuard<'_, State<P>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a send call as received.
    pub(crate) fn count_call(&self) {
        self.lock().calls += 1;
    }

    /// Counts a call refused for bad credentials.
    pub(crate) fn count_rejected_auth(&self) {
        self.lock().rejected_auth += 1;
    }

    /// Takes the next pushed fault.
    pub(crate) fn next_fault(&self) -> Option<Fault> {
        self.lock().faults.pop_front()
    }

    /// Whether any of `keys` is blocked.
    pub(crate) fn is_blocked(&self, keys: &[&str]) -> bool {
        let state = self.lock();
        keys.iter().any(|k| state.blocked.contains(*k))
    }

    /// Accepts a send: `make` gives the [`Sent`] from the provider's state
    /// (allocating its id) under the same lock that records it, so ids and
    /// the order of [`Shared::sent`] agree.
    pub(crate) fn record<T>(&self, make: impl FnOnce(&mut P) -> (Sent, T)) -> (Sent, T) {
        let (sent, extra, count) = {
            let mut state = self.lock();
            let (sent, extra) = make(&mut state.provider);
            state.sent.push(sent.clone());
            (sent, extra, state.sent.len())
        };
        self.sent_count.send_replace(count);
        (sent, extra)
    }

    /// Every accepted send, in order.
    pub(crate) fn sent(&self) -> Vec<Sent> {
        self.lock().sent.clone()
    }

    /// Appends faults for the next calls.
    pub(crate) fn push_faults(&self, faults: Vec<Fault>) {
        self.lock().faults.extend(faults);
    }

    /// Faults pushed and not yet answered.
    pub(crate) fn pending_faults(&self) -> usize {
        self.lock().faults.len()
    }

    /// Refuses `to` for good.
    pub(crate) fn block(&self, to: &str) {
        self.lock().blocked.insert(to.to_owned());
    }

    /// Accepts `to` again.
    pub(crate) fn unblock(&self, to: &str) {
        self.lock().blocked.remove(to);
    }

    /// Calls refused for bad credentials.
    pub(crate) fn rejected_auth(&self) -> u64 {
        self.lock().rejected_auth
    }

    /// Send calls received.
    pub(crate) fn calls(&self) -> u64 {
        self.lock().calls
    }

    /// Waits until at least `n` sends were accepted and returns all of them;
    /// an error naming what was seen after `timeout`.
    pub(crate) async fn wait_for_sent(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Sent>> {
        let mut rx = self.sent_count.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n)).await;
        match waited {
            Ok(Ok(_)) => Ok(self.sent()),
            // The sender lives in `self`: it cannot be dropped while we wait.
            Ok(Err(e)) => Err(e).with_context(|| format!("fake {}: watching sends", self.name)),
            Err(_) => {
                let (sent, calls, rejected) = {
                    let state = self.lock();
                    (state.sent.len(), state.calls, state.rejected_auth)
                };
                bail!(
                    "fake {}: {sent} of {n} sends accepted after {timeout:?} \
                     ({calls} send calls received, {rejected} refused for bad credentials)",
                    self.name
                )
            }
        }
    }
}

/// A running fake server; stops when dropped.
#[derive(Debug)]
pub(crate) struct Server {
    addr: SocketAddr,
    /// Dropping it ends the server's thread.
    _stop: oneshot::Sender<()>,
}

impl Server {
    /// Serves `router` on `addr` (`127.0.0.1:0`: a free port) from a thread
    /// of its own named `fake-{name}`, with a current-thread tokio runtime.
    pub(crate) fn start_on(
        name: &'static str,
        router: Router,
        addr: &str,
    ) -> anyhow::Result<Server> {
        let std_listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("fake {name}: binding {addr}"))?;
        let addr = std_listener
            .local_addr()
            .with_context(|| format!("fake {name}: reading the bound address"))?;
        std_listener
            .set_nonblocking(true)
            .with_context(|| format!("fake {name}: making the listener non-blocking"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .with_context(|| format!("fake {name}: building its runtime"))?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)
                .with_context(|| format!("fake {name}: registering the listener"))?
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("fake-{name}"))
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        served = axum::serve(listener, router) => {
                            if let Err(e) = served {
                                tracing::error!(fake = name, error = %e, "fake provider server failed");
                            }
                        }
                        _ = stop_rx => {}
                    }
                });
                // In-flight calls (a held Timeout) are abandoned.
                runtime.shutdown_background();
            })
            .with_context(|| format!("fake {name}: spawning its thread"))?;
        tracing::debug!(fake = name, %addr, "fake provider listening");
        Ok(Server {
            addr,
            _stop: stop_tx,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Runs `work` on a task of its own so that a client giving up does not
/// stop it (the provider finishes what it started); a panic in it is a
/// `500`.
pub(crate) async fn detached<F>(work: F) -> axum::response::Response
where
    F: std::future::Future<Output = axum::response::Response> + Send + 'static,
{
    use axum::response::IntoResponse;
    match tokio::spawn(work).await {
        Ok(response) => response,
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("fake provider handler failed: {e}"),
        )
            .into_response(),
    }
}
