//! The claim loop and the life of one claimed delivery.
//!
//! The loop claims as many due deliveries as it has free call slots
//! (`--concurrency`, at most `--claim-batch` a statement), runs each on a
//! task of its own, and sleeps until a notification, `--poll-interval` or
//! a free slot. A delivery's task:
//! 1. fails it at once when its channel is not configured here
//!    (`unknown_channel`) or its contact or message is missing;
//! 2. takes its chat's, then its channel's rate-limit token, waiting for
//!    them — or gives the claim back, due when the token will be, when
//!    the wait is longer than a third of the lease;
//! 3. records the call as started (committed), calls the provider, and
//!    records the outcome with [`crate::decide::decide`] (retried a few
//!    times if Postgres fails: until it is recorded, a crash means the
//!    next claim calls again).
//!
//! On shutdown the loop stops claiming, tasks waiting for a rate limit give
//! their claims back, calls in progress finish and are recorded, and every
//! claim of this worker whose call has not started is released.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpipe_channels::outbound::Sender;
use chatpipe_channels::retry::RetryPolicy;
use chatpipe_channels::Channel;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::decide::{decide, Settlement};
use crate::events::{
    CallStarted, Claimed as ClaimedEvent, Failed, InternalEvent, OutcomeStale, PossibleDuplicate,
    ProviderAnswered, RateLimitWaited, Released, RetryScheduled, Sent, StoreFailed, TaskFailed,
};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::store::{Claimed, Settled, Store};

/// How the worker claims and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Most deliveries claimed and not settled at once.
    pub concurrency: usize,
    /// Most deliveries one claim statement takes.
    pub claim_batch: usize,
    /// Longest sleep between two claims.
    pub poll_interval: Duration,
    /// How long a claim holds a delivery (the store's lease).
    pub lease: Duration,
    /// When to retry.
    pub policy: RetryPolicy,
}

/// Delays between tries to record an outcome when Postgres fails.
const SETTLE_RETRIES: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// A delivery worker: the claim loop and what its tasks share.
pub struct Worker {
    store: Store,
    channels: HashMap<String, Channel>,
    sender: Sender,
    limits: Limits,
    settings: Settings,
    metrics: Metrics,
    wake: Arc<Notify>,
}

enum Gate {
    Go,
    Release {
        reason: &'static str,
        not_before: Duration,
    },
}

impl Worker {
    /// A worker claiming from `store`, sending through `channels` with
    /// `sender`, woken early by `wake` (see [`crate::listener`]).
    pub fn new(
        store: Store,
        channels: Vec<Channel>,
        sender: Sender,
        limits: Limits,
        settings: Settings,
        metrics: Metrics,
        wake: Arc<Notify>,
    ) -> Worker {
        Worker {
            store,
            channels: channels
                .into_iter()
                .map(|c| (c.name().to_owned(), c))
                .collect(),
            sender,
            limits,
            settings,
            metrics,
            wake,
        }
    }

    /// Claims and delivers until `cancel`, then shuts down gracefully (see
    /// the module's documentation).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut last_forget = Instant::now();
        loop {
            while let Some(done) = tasks.try_join_next() {
                log_task_end(done, &self.metrics);
            }
            if last_forget.elapsed() > Duration::from_secs(60) {
                self.limits.forget_idle();
                last_forget = Instant::now();
            }
            let first = tokio::select! {
                _ = cancel.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let mut permits = vec![first];
            while permits.len() < self.settings.claim_batch.max(1) {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let wanted = permits.len();
            let mut full = false;
            match self.store.claim(wanted).await {
                Ok(claimed) => {
                    full = claimed.len() == wanted;
                    if !claimed.is_empty() {
                        ClaimedEvent {
                            count: claimed.len(),
                        }
                        .emit(&self.metrics);
                    }
                    for (c, permit) in claimed.into_iter().zip(permits.drain(..)) {
                        self.metrics.inflight.inc();
                        tasks.spawn(self.clone().deliver(c, permit, cancel.clone()));
                    }
                }
                Err(e) => StoreFailed {
                    op: "claim",
                    error: &e,
                }
                .emit(&self.metrics),
            }
            drop(permits);
            if full {
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        while let Some(done) = tasks.join_next().await {
            log_task_end(done, &self.metrics);
        }
        match self.store.release_unstarted().await {
            Ok(0) => {}
            Ok(n) => Released {
                count: n,
                reason: "shutdown",
            }
            .emit(&self.metrics),
            Err(e) => StoreFailed {
                op: "release",
                error: &e,
            }
            .emit(&self.metrics),
        }
    }

    /// The life of one claimed delivery.
    async fn deliver(
        self: Arc<Self>,
        c: Claimed,
        _permit: OwnedSemaphorePermit,
        cancel: CancellationToken,
    ) {
        let _inflight = InflightGuard(&self.metrics);
        if c.lost_call_at.is_some() {
            PossibleDuplicate {
                delivery_id: c.id,
                channel: &c.channel,
                why: "lost_outcome",
            }
            .emit(&self.metrics);
        }
        let Some(channel) = self.channels.get(&c.channel) else {
            let reason = format!(
                "channel {:?} is not configured in this chatpipe-delivery",
                c.channel
            );
            return self.fail_unattempted(&c, "unknown_channel", &reason).await;
        };
        let Some(to) = c.to.as_deref() else {
            let reason = format!("contact {} does not exist", c.contact_id);
            return self.fail_unattempted(&c, "unknown_contact", &reason).await;
        };
        let Some(text) = c.text.as_deref() else {
            let reason = format!("message {} does not exist", c.message_id);
            return self.fail_unattempted(&c, "unknown_message", &reason).await;
        };
        if let Gate::Release { reason, not_before } = self.gate(&c, &cancel).await {
            match self.store.release(&[c.id], not_before).await {
                Ok(n) => Released { count: n, reason }.emit(&self.metrics),
                Err(e) => StoreFailed {
                    op: "release",
                    error: &e,
                }
                .emit(&self.metrics),
            }
            return;
        }
        let attempt = match self.store.start_attempt(c.id).await {
            Ok(Some(n)) => n,
            Ok(None) => {
                return OutcomeStale {
                    delivery_id: c.id,
                    outcome: "start",
                }
                .emit(&self.metrics)
            }
            // Nothing was sent: the lease expires and the delivery is
            // claimed again.
            Err(e) => {
                return StoreFailed {
                    op: "start",
                    error: &e,
                }
                .emit(&self.metrics)
            }
        };
        let queue_delay = (chrono::Utc::now() - c.queued_at)
            .to_std()
            .unwrap_or_default();
        CallStarted {
            delivery_id: c.id,
            channel: &c.channel,
            attempt,
            queue_delay,
        }
        .emit(&self.metrics);
        let started = Instant::now();
        let outcome = self.sender.send(channel, to, text).await;
        let answered = Instant::now();
        ProviderAnswered {
            delivery_id: c.id,
            channel: &c.channel,
            outcome: outcome.kind(),
            seconds: (answered - started).as_secs_f64(),
        }
        .emit(&self.metrics);
        let attempts = u32::try_from(attempt).unwrap_or(0);
        let settlement = decide(&outcome, attempts, &self.settings.policy, rand::random());
        self.record(&c, attempt, &settlement, Some(answered)).await;
    }

    /// Takes the chat's and then the channel's token, waiting for each up
    /// to a third of the lease.
    async fn gate(&self, c: &Claimed, cancel: &CancellationToken) -> Gate {
        let longest = self.settings.lease / 3;
        for scope in ["chat", "channel"] {
            loop {
                let check = match scope {
                    "chat" => self.limits.check_chat(&c.channel, c.contact_id),
                    _ => self.limits.check_channel(&c.channel),
                };
                let Err(wait) = check else { break };
                if wait > longest {
                    return Gate::Release {
                        reason: "rate_limit",
                        not_before: wait,
                    };
                }
                RateLimitWaited {
                    delivery_id: c.id,
                    scope,
                    wait,
                }
                .emit(&self.metrics);
                tokio::select! {
                    _ = cancel.cancelled() => return Gate::Release { reason: "shutdown", not_before: Duration::ZERO },
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        Gate::Go
    }

    async fn fail_unattempted(&self, c: &Claimed, code: &str, reason: &str) {
        let settlement = Settlement::Failed {
            code: code.to_owned(),
            reason: reason.to_owned(),
        };
        self.record(c, c.attempts, &settlement, None).await;
    }

    /// Records `settlement`, retrying while Postgres fails, and reports it.
    async fn record(
        &self,
        c: &Claimed,
        attempts: i32,
        settlement: &Settlement,
        answered: Option<Instant>,
    ) {
        let mut delays = SETTLE_RETRIES.iter();
        let settled = loop {
            match self.store.settle(c.id, &c.channel, settlement).await {
                Ok(s) => break s,
                Err(e) => {
                    StoreFailed {
                        op: "settle",
                        error: &e,
                    }
                    .emit(&self.metrics);
                    match delays.next() {
                        Some(d) => tokio::time::sleep(*d).await,
                        // Unrecorded: the lease expires and the next claim
                        // calls again (a possible duplicate, counted then).
                        None => return,
                    }
                }
            }
        };
        let settle = answered.map(|a| a.elapsed());
        let receipt_status = match settled {
            Settled::Stale => {
                let outcome = match settlement {
                    Settlement::Sent { .. } => "sent",
                    Settlement::Retry { .. } => "retry",
                    Settlement::Failed { .. } => "failed",
                };
                return OutcomeStale {
                    delivery_id: c.id,
                    outcome,
                }
                .emit(&self.metrics);
            }
            Settled::Recorded { receipt_status } => receipt_status,
        };
        match settlement {
            Settlement::Sent {
                provider_message_id,
            } => Sent {
                delivery_id: c.id,
                channel: &c.channel,
                provider_message_id,
                receipt_status: receipt_status.as_deref(),
                settle: settle.unwrap_or_default(),
            }
            .emit(&self.metrics),
            Settlement::Retry {
                delay,
                code,
                reason,
                possible_duplicate,
            } => {
                RetryScheduled {
                    delivery_id: c.id,
                    channel: &c.channel,
                    code,
                    reason,
                    attempts,
                    retry_in: *delay,
                    settle: settle.unwrap_or_default(),
                }
                .emit(&self.metrics);
                if *possible_duplicate {
                    PossibleDuplicate {
                        delivery_id: c.id,
                        channel: &c.channel,
                        why: code,
                    }
                    .emit(&self.metrics);
                }
            }
            Settlement::Failed { code, reason } => Failed {
                delivery_id: c.id,
                channel: &c.channel,
                code,
                reason,
                settle,
            }
            .emit(&self.metrics),
        }
    }
}

/// Decrements `inflight` when a delivery's task ends, however it ends.
struct InflightGuard<'a>(&'a Metrics);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.inflight.dec();
    }
}

fn log_task_end(done: Result<(), tokio::task::JoinError>, metrics: &Metrics) {
    if let Err(error) = done {
        TaskFailed { error: &error }.emit(metrics);
    }
}
