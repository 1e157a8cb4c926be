//! The consume loop: the I/O shell around the pure engine.
//!
//! 1. Claim the statically owned partitions (bumping their owner epochs),
//!    check each stored position against the log's bounds (a position
//!    outside the log is reset loudly, see [`crate::engine::logcheck`]),
//!    `assign()` them at their committed resume offsets (no consumer-group
//!    rebalancing) and rebuild open windows by replaying from there.
//! 2. Each iteration polls a batch (up to `poll_batch_size` records), pre-loads
//!    the persisted facts the batch needs (conversation log states, stored
//!    messages, stored rejections while replaying), feeds the engines, and
//!    — for partitions that reached their end (partition EOF, no backlog) —
//!    advances the watermark to wall clock minus allowance, never past the
//!    oldest record an ingest replica is still producing.
//! 3. The reply policy answers the batch's replies (the bot, asked
//!    concurrently, then the FAQ rules, then the template;
//!    [`crate::reply_policy`]). The batch's effects, resume positions and
//!    fencing check, and the deliveries of its replies to channel
//!    conversations, are written in one transaction. Fenced partitions
//!    are dropped (never reclaimed, and the replica reports not ready). A
//!    partition whose write failed is rebuilt from its committed state and
//!    paused for a backoff; until it
//!    succeeds again it is written in a transaction of its own, so it
//!    cannot hold up the others. When Postgres refuses its data, it goes
//!    record by record and a record refused `poison_attempts` times is set
//!    aside as a `storage_refused` rejection ([`crate::engine::retry`]).
//! 4. Shutdown is checked only between batches: the current batch is
//!    finished and committed first.
//!
//! Everything it logs and counts goes through [`crate::events`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chatpipe_core::kafka::KafkaConnection;
use chatpipe_core::Event;
use deadpool_postgres::Pool;
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::engine::domain::{EngineConfig, Record};
use crate::engine::effects::{Effect, Reason, Rejection, Undecodable};
use crate::engine::logcheck::{check_position, BeyondEndConfirmation, PositionCheck};
use crate::engine::retry::{classify_sqlstate, FailureKind, RetryPolicy};
use crate::engine::visibility::PendingInbound;
use crate::engine::watermark::clock_target;
use crate::engine::window::{EngineStats, PartitionEngine};
use crate::events::{
    BatchFenced, BatchRefused, BatchWriteFailed, BatchWritten, BrokerUnreachable, ConsumerError,
    DeliveriesQueued, EngineCounted, InflightReadFailed, InternalEvent, LibrdkafkaError,
    LogBoundsReadFailed, PartitionClaimed, PartitionFenced, PartitionRebuildFailed,
    PartitionRecovered, PartitionReset, PartitionResetFailed, PartitionResetPostponed,
    PartitionStalled, PositionOutsideLog, ReassignFailed, RecordClamped, RecordRejected,
    RecordSetAside, RecordUndecodable, RefusedRecordsPassed, ReplicaOwnsNoPartitions,
    ReplyIdsSalted, ReplyWritten, ShutdownComplete, TopicMissing, WatermarkHeld,
};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::ownership::{claim, owned_partitions, positions_if_owner, Claim, PositionUpdate};
use crate::reply_policy::ReplyPolicy;
use crate::store::{self, PartitionBatch, StoreError, Written};

/// Client context that does not report partition EOF (the normal "caught
/// up" signal) as an error, and reports the other errors as
/// [`LibrdkafkaError`] events.
pub struct QuietContext {
    metrics: Metrics,
}

impl rdkafka::client::ClientContext for QuietContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !eof {
            LibrdkafkaError {
                error: &error,
                reason,
            }
            .emit(&self.metrics);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// The processor's consumer type.
pub type EventConsumer = StreamConsumer<QuietContext>;

/// Everything the loop needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Kafka brokers and how to reach them (TLS, SASL).
    pub kafka: KafkaConnection,
    /// Topic of events.
    pub topic: String,
    /// Windows.
    pub engine: EngineConfig,
    /// Watermark allowance (ms).
    pub allowance_ms: i64,
    /// Replica count N.
    pub replicas: u32,
    /// This replica's ordinal.
    pub ordinal: u32,
    /// Records per poll batch.
    pub batch_size: usize,
    /// `fetch.wait.max.ms`.
    pub fetch_wait: Duration,
    /// Idle poll wait.
    pub idle_tick: Duration,
    /// Idle conversation states cached per partition.
    pub conversation_cache: usize,
    /// Owner name stored with claims.
    pub owner: String,
    /// Concurrent write transactions per batch (1 = one transaction).
    pub write_parallelism: usize,
    /// Longest a behind partition holds an INBOUND row for its reply.
    pub inbound_max_delay: Duration,
    /// Record timestamps ahead of the clock by more are clamped (ms).
    pub max_clock_skew_ms: i64,
    /// Retries, poison records and stuck partitions.
    pub retry: RetryPolicy,
    /// Check stored positions against the log's bounds.
    pub log_reset_check: bool,
    /// How long an ingest in-flight report counts without a heartbeat.
    pub inflight_lease: Duration,
}

impl Settings {
    /// Settings with the defaults of everything but the connection, topic
    /// and windows (tests and benchmarks start from here).
    pub fn new(kafka: KafkaConnection, topic: &str, engine: EngineConfig) -> Self {
        Self {
            kafka,
            topic: topic.to_owned(),
            engine,
            allowance_ms: 50,
            replicas: 1,
            ordinal: 0,
            batch_size: 5_000,
            fetch_wait: Duration::from_millis(10),
            idle_tick: Duration::from_millis(5),
            conversation_cache: 200_000,
            owner: format!("local/{}", std::process::id()),
            write_parallelism: 1,
            inbound_max_delay: Duration::from_secs(1),
            max_clock_skew_ms: 5_000,
            retry: RetryPolicy::default(),
            log_reset_check: true,
            inflight_lease: Duration::from_secs(3),
        }
    }
}

/// What a partition keeps across rebuilds while its writes fail.
#[derive(Debug, Clone, Default)]
struct Recovery {
    /// Failed writes in a row.
    failures: u32,
    /// The last failure, for logs and `/readyz`.
    last_error: String,
    /// No reads or writes before this (backoff); paused meanwhile.
    retry_at: Option<Instant>,
    /// Record by record (one transaction each) until the engine has read
    /// past this offset: set by a data failure of this partition alone.
    careful_until: Option<i64>,
    /// Refusals of single records, by offset (careful mode).
    refusals: HashMap<i64, u32>,
    /// Records set aside, by offset: the database's error.
    poison: BTreeMap<i64, String>,
}

/// A partition with records to read that received none for this long is
/// assigned again (see [`Processor::apply_reading`]).
const STALL_AFTER: Duration = Duration::from_secs(10);

/// One poll batch: decoded records and records that are not events, by
/// partition, in offset order.
#[derive(Default)]
struct Batch {
    records: BTreeMap<i32, Vec<Record>>,
    undecodable: BTreeMap<i32, Vec<Undecodable>>,
    n: usize,
}

/// One reading of a partition's log bounds, taken off the loop.
#[derive(Debug, Clone, Copy)]
struct LogReading {
    partition: i32,
    start: i64,
    end: i64,
    /// The engine's positions when the reading was requested.
    resume: i64,
    next: i64,
}

struct Owned {
    engine: PartitionEngine,
    /// INBOUND rows held while the partition is behind.
    held: PendingInbound,
    /// Newest record arrival fed (ms); `i64::MIN` before the first.
    newest_arrival_ms: i64,
    epoch: i64,
    /// Records below this offset may have stored decisions (replay).
    replay_until: i64,
    at_eof: bool,
    last_stats: EngineStats,
    recovery: Recovery,
    beyond_end: BeyondEndConfirmation,
    /// When a record of this partition was last taken (or it was assigned).
    last_record_at: Instant,
}

impl Owned {
    /// A partition as claimed (or re-read while still owned): a fresh
    /// engine that replays from the resume offset, nothing held.
    fn from_claim(engine: EngineConfig, c: &Claim) -> Self {
        Self {
            engine: PartitionEngine::from_positions(
                engine,
                c.resume_offset,
                c.processed_offset,
                c.watermark_ms,
            ),
            held: PendingInbound::new(),
            newest_arrival_ms: i64::MIN,
            epoch: c.epoch,
            replay_until: c.processed_offset,
            at_eof: false,
            last_stats: EngineStats::default(),
            recovery: Recovery::default(),
            beyond_end: BeyondEndConfirmation::default(),
            last_record_at: Instant::now(),
        }
    }

    fn careful(&self) -> bool {
        self.recovery.careful_until.is_some()
    }

    fn waiting(&self) -> bool {
        self.recovery.retry_at.is_some()
    }

    /// Whether INBOUND rows are written at once: the partition's end was
    /// reached, or its newest record arrived less than `max_delay_ms` ago
    /// (live traffic, even when the end-of-partition signal comes a fetch
    /// later). Otherwise it is working through a backlog.
    fn live(&self, now_ms: i64, max_delay_ms: i64) -> bool {
        self.at_eof || self.newest_arrival_ms >= now_ms - max_delay_ms
    }
}

/// The processor's running state.
pub struct Processor {
    settings: Settings,
    consumer: Arc<EventConsumer>,
    pool: Pool,
    metrics: Metrics,
    parts: BTreeMap<i32, Owned>,
    health: Health,
    /// Oldest arrival stamp still in flight at some ingest replica
    /// (`i64::MAX`: none), refreshed by a background task.
    inflight_floor: Arc<AtomicI64>,
    /// Whether the last wall-clock advance was held back by it.
    held_by_floor: bool,
    /// Log bound readings from the lag task, applied by the loop.
    readings: Arc<Mutex<Vec<LogReading>>>,
    /// Read the log bounds at the next lag refresh, whatever the time.
    check_logs_now: bool,
    /// Assign the consumer again before the next poll. Every change of
    /// positions or pauses sets this, and the loop assigns once: librdkafka
    /// 2.12 aborts (`rd_kafka_assignment_partition_stopped: Assertion
    /// rktp->rktp_started`) when assignments follow each other before the
    /// previous one has started its partitions.
    reassign: bool,
    /// What replies say (bot, FAQ rules, template).
    policy: ReplyPolicy,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Processor {
    /// Creates the consumer (not yet assigned).
    pub fn new(settings: Settings, pool: Pool, metrics: Metrics) -> anyhow::Result<Self> {
        settings.kafka.security.check_files()?;
        let consumer: EventConsumer = chatpipe_core::kafka::consumer_config(
            &settings.kafka,
            "chatpipe-processor",
            settings.fetch_wait,
        )
        .set("queued.max.messages.kbytes", "65536")
        // A position outside the log is an error to handle (loudly), never
        // a silent jump to another offset.
        .set("auto.offset.reset", "error")
        .create_with_context(QuietContext {
            metrics: metrics.clone(),
        })
        .context("creating the Kafka consumer")?;
        Ok(Self {
            settings,
            consumer: Arc::new(consumer),
            pool,
            parts: BTreeMap::new(),
            health: Health::default(),
            inflight_floor: Arc::new(AtomicI64::new(i64::MAX)),
            held_by_floor: false,
            readings: Arc::new(Mutex::new(Vec::new())),
            check_logs_now: false,
            reassign: false,
            policy: ReplyPolicy::original(metrics.clone()),
            metrics,
        })
    }

    /// Replaces the reply policy (default: [`ReplyPolicy::original`], the
    /// original text for every reply).
    pub fn set_reply_policy(&mut self, policy: ReplyPolicy) {
        self.policy = policy;
    }

    /// What `/readyz` reports (shared with the ops server).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The consumer, for readiness checks (metadata requests).
    pub fn consumer(&self) -> Arc<EventConsumer> {
        self.consumer.clone()
    }

    /// Waits for the topic, claims the owned partitions, checks their
    /// stored positions against the log and assigns them at their resume
    /// offsets.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let s = &self.settings;
        let partitions = loop {
            match chatpipe_core::kafka::topic_partitions(&s.kafka, &s.topic, Duration::from_secs(5))
                .await
            {
                Ok(Some(n)) => break n,
                Ok(None) => TopicMissing { topic: &s.topic }.emit(&self.metrics),
                Err(e) => BrokerUnreachable { error: &e }.emit(&self.metrics),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let mine = owned_partitions(partitions, s.replicas, s.ordinal);
        if mine.is_empty() {
            ReplicaOwnsNoPartitions {
                ordinal: s.ordinal,
                replicas: s.replicas,
                partitions,
            }
            .emit(&self.metrics);
        }
        let client = self.pool.get().await.context("connecting to Postgres")?;
        for p in mine {
            let c = claim(&**client, &s.topic, p, &s.owner)
                .await
                .context("claiming a partition")?;
            PartitionClaimed {
                partition: p,
                epoch: c.epoch,
                resume: c.resume_offset,
                processed: c.processed_offset,
            }
            .emit(&self.metrics);
            self.parts.insert(p, Owned::from_claim(s.engine, &c));
        }
        drop(client);
        self.metrics.owned_partitions.set(self.parts.len() as i64);
        if self.settings.log_reset_check {
            // Nothing is read yet: one reading decides.
            let readings = self.read_bounds_now().await;
            for r in readings {
                self.apply_reading(r, 1).await;
            }
        }
        self.assign()?;
        self.reassign = false;
        self.health.set_claimed(true);
        Ok(())
    }

    /// (Re-)assigns every owned partition at its engine's next offset, and
    /// pauses those waiting out a backoff.
    fn assign(&mut self) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        let mut paused = TopicPartitionList::new();
        let mut running = TopicPartitionList::new();
        for (p, o) in &self.parts {
            tpl.add_partition_offset(
                &self.settings.topic,
                *p,
                Offset::Offset(o.engine.next_offset()),
            )
            .context("building the assignment")?;
            if o.waiting() {
                paused.add_partition(&self.settings.topic, *p);
            } else {
                running.add_partition(&self.settings.topic, *p);
            }
        }
        self.consumer.assign(&tpl).context("assigning partitions")?;
        // librdkafka keeps a partition's pause flag across assignments:
        // set both ways explicitly.
        if paused.count() > 0 {
            self.consumer
                .pause(&paused)
                .context("pausing partitions in backoff")?;
        }
        if running.count() > 0 {
            self.consumer
                .resume(&running)
                .context("resuming partitions")?;
        }
        for o in self.parts.values_mut() {
            o.at_eof = false;
            o.last_record_at = Instant::now();
        }
        Ok(())
    }

    /// Partitions currently owned.
    pub fn owned(&self) -> Vec<i32> {
        self.parts.keys().copied().collect()
    }

    /// Runs until `shutdown` resolves; the batch in progress is committed.
    pub async fn run(
        mut self,
        ready: Arc<AtomicBool>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        ready.store(true, Ordering::SeqCst);
        let floor_task = self.spawn_inflight_floor();
        let mut last_lag = Instant::now() - Duration::from_secs(10);
        let consumer = self.consumer.clone();
        loop {
            if std::mem::take(&mut self.reassign) {
                if let Err(e) = self.assign() {
                    ReassignFailed { error: &e }.emit(&self.metrics);
                }
            }
            // Collect one poll batch.
            let mut batch = Batch::default();
            let first = tokio::select! {
                _ = &mut shutdown => break,
                r = tokio::time::timeout(self.settings.idle_tick, consumer.recv()) => r.ok(),
            };
            if let Some(r) = first {
                self.take(r, &mut batch);
                while batch.n < self.settings.batch_size {
                    match consumer.recv().now_or_never() {
                        Some(r) => self.take(r, &mut batch),
                        None => break,
                    }
                }
            }
            self.resume_waiting();
            self.process(batch).await;
            self.apply_readings().await;
            if self.check_logs_now || last_lag.elapsed() >= Duration::from_secs(2) {
                last_lag = Instant::now();
                self.check_logs_now = false;
                self.update_lag();
            }
        }
        floor_task.abort();
        ShutdownComplete.emit(&self.metrics);
        ready.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Keeps [`Self::inflight_floor`] fresh: every 100 ms, the oldest
    /// record any live ingest replica is still producing. On a failed read
    /// the last value stays (a processor without Postgres writes nothing).
    fn spawn_inflight_floor(&self) -> tokio::task::JoinHandle<()> {
        let pool = self.pool.clone();
        let floor = self.inflight_floor.clone();
        let lease = self.settings.inflight_lease;
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let r = match pool.get().await {
                    Ok(c) => store::inflight_floor(&**c, lease)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match r {
                    Ok(v) => {
                        floor.store(v.unwrap_or(i64::MAX), Ordering::Relaxed);
                        failing = false;
                    }
                    Err(e) => {
                        InflightReadFailed {
                            error: &e,
                            already_failing: failing,
                        }
                        .emit(&metrics);
                        failing = true;
                    }
                }
            }
        })
    }

    /// Where a caught-up partition's watermark may move now: the wall
    /// clock minus the allowance, but never past the oldest record an
    /// ingest replica is still waiting to have acknowledged (it can still
    /// land, with that arrival stamp).
    fn wall_clock_target(&mut self, now: i64) -> i64 {
        let t = clock_target(now, self.settings.allowance_ms);
        let floor = self.inflight_floor.load(Ordering::Relaxed);
        let held = floor < t;
        if held && !self.held_by_floor {
            WatermarkHeld { held_ms: t - floor }.emit(&self.metrics);
        }
        self.held_by_floor = held;
        t.min(floor)
    }

    fn take(
        &mut self,
        r: Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>,
        batch: &mut Batch,
    ) {
        match r {
            Ok(m) => {
                let p = m.partition();
                let Some(owned) = self.parts.get_mut(&p) else {
                    return;
                };
                if owned.waiting() {
                    // Fetched before the pause; read again after it.
                    return;
                }
                owned.at_eof = false;
                owned.last_record_at = Instant::now();
                batch.n += 1;
                let offset = m.offset();
                let now = now_ms();
                let mut arrival_ms = m.timestamp().to_millis().unwrap_or(now);
                let limit = now.saturating_add(self.settings.max_clock_skew_ms);
                if arrival_ms > limit {
                    RecordClamped {
                        partition: p,
                        offset,
                        ahead_ms: arrival_ms.saturating_sub(now),
                    }
                    .emit(&self.metrics);
                    arrival_ms = limit;
                }
                let decoded = match m.payload() {
                    Some(b) => Event::decode(b, usize::MAX).map_err(|e| e.to_string()),
                    None => Err("the record has no payload".to_owned()),
                };
                match decoded {
                    Ok(event) => batch.records.entry(p).or_default().push(Record {
                        offset,
                        arrival_ms,
                        event,
                    }),
                    Err(error) => {
                        RecordUndecodable {
                            partition: p,
                            offset,
                            error: &error,
                        }
                        .emit(&self.metrics);
                        batch.records.entry(p).or_default();
                        batch
                            .undecodable
                            .entry(p)
                            .or_default()
                            .push(Undecodable::new(offset, arrival_ms, m.payload(), error));
                    }
                }
            }
            Err(KafkaError::PartitionEOF(p)) => {
                if let Some(o) = self.parts.get_mut(&p) {
                    o.at_eof = true;
                }
            }
            Err(e) => {
                let code = e.rdkafka_error_code();
                if matches!(
                    code,
                    Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange)
                ) {
                    PositionOutsideLog { error: &e }.emit(&self.metrics);
                    self.check_logs_now = true;
                } else {
                    ConsumerError { error: &e }.emit(&self.metrics);
                }
            }
        }
    }

    /// Ends the backoff of partitions whose wait is over: they are read
    /// again from their rebuilt state.
    fn resume_waiting(&mut self) {
        let now = Instant::now();
        let mut resumed = false;
        for o in self.parts.values_mut() {
            if o.recovery.retry_at.is_some_and(|t| t <= now) {
                o.recovery.retry_at = None;
                resumed = true;
            }
        }
        if resumed {
            self.reassign = true;
        }
    }

    /// Feeds a batch (possibly empty: a wall-clock tick) and commits it.
    async fn process(&mut self, batch: Batch) {
        let Batch {
            records: mut batch,
            mut undecodable,
            ..
        } = batch;
        let now = now_ms();
        let target = self.wall_clock_target(now);
        let max_delay = self.settings.inbound_max_delay.as_millis() as i64;
        let due: Vec<i32> = self
            .parts
            .iter()
            .filter(|(p, o)| {
                !o.waiting()
                    && (batch.contains_key(p)
                        || (o.at_eof && o.engine.next_deadline().is_some_and(|d| target > d))
                        || o.held.release_due(now, max_delay, o.live(now, max_delay)))
            })
            .map(|(p, _)| *p)
            .collect();
        if due.is_empty() {
            return;
        }
        let client = match self.pool.get().await {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("Postgres unavailable: {e}");
                self.fail(&due, &msg, FailureKind::Transient, None).await;
                return;
            }
        };
        if let Err(e) = self.preload(&client, &batch).await {
            let kind = classify_sqlstate(e.code().map(|c| c.code()));
            let msg = format!("pre-loading state: {e}");
            // A read cannot be narrowed to a record: retry it later.
            let kind = if kind == FailureKind::Data {
                FailureKind::Transient
            } else {
                kind
            };
            self.fail(&due, &msg, kind, None).await;
            return;
        }
        let (careful, normal): (Vec<i32>, Vec<i32>) = due
            .iter()
            .partition(|p| self.parts.get(p).is_some_and(Owned::careful));

        // Partitions in good standing: one transaction (or `write_parallelism`);
        // a partition whose last write failed, one of its own.
        let mut records = 0u64;
        let mut batches = Vec::with_capacity(normal.len());
        for p in &normal {
            let recs = batch.remove(p).unwrap_or_default();
            let bad = undecodable.remove(p).unwrap_or_default();
            records += (recs.len() + bad.len()) as u64;
            if let Some(b) = self.feed(*p, recs, bad, now, target, false) {
                batches.push(b);
            }
        }
        // The pre-load's connection serves the first write.
        let mut client = Some(client);
        if !batches.is_empty() {
            if let Some(c) = client.take() {
                self.write_and_settle(c, batches, records, None).await;
            }
        }
        // Partitions narrowing a refused write down: one record per
        // transaction.
        for p in careful {
            let recs = batch.remove(&p).unwrap_or_default();
            let mut bad = undecodable.remove(&p).unwrap_or_default();
            let singles: Vec<Vec<Record>> = if recs.is_empty() {
                vec![Vec::new()]
            } else {
                recs.into_iter().map(|r| vec![r]).collect()
            };
            let last = singles.len().saturating_sub(1);
            for (i, one) in singles.into_iter().enumerate() {
                let offset = one.first().map(|r| r.offset);
                // Undecodable records up to this one go with it (the last
                // takes those after it too).
                let upto = if i == last {
                    i64::MAX
                } else {
                    offset.unwrap_or(i64::MAX)
                };
                let split = bad.partition_point(|u| u.offset < upto);
                let these: Vec<Undecodable> = bad.drain(..split).collect();
                let Some(b) = self.feed(p, one, these, now, target, true) else {
                    break;
                };
                let c = match client.take() {
                    Some(c) => c,
                    None => match self.pool.get().await {
                        Ok(c) => c,
                        Err(e) => {
                            let msg = format!("Postgres unavailable: {e}");
                            self.fail(&[p], &msg, FailureKind::Transient, None).await;
                            break;
                        }
                    },
                };
                let n = offset.map_or(0, |_| 1);
                if !self
                    .write_and_settle(c, vec![b], n, offset.map(|o| (p, o)))
                    .await
                {
                    break;
                }
            }
        }
    }

    /// Feeds `records` of partition `p` to its engine and returns the
    /// partition's batch. Records set aside earlier become `storage_refused`
    /// rejections; `force_live` writes INBOUND rows at once (record by
    /// record, a row must be written with the record that made it).
    fn feed(
        &mut self,
        p: i32,
        records: Vec<Record>,
        undecodable: Vec<Undecodable>,
        now: i64,
        target: i64,
        force_live: bool,
    ) -> Option<PartitionBatch> {
        let max_delay = self.settings.inbound_max_delay.as_millis() as i64;
        let o = self.parts.get_mut(&p)?;
        let mut effects = Vec::new();
        let mut bad = undecodable.into_iter().peekable();
        for r in records {
            // Undecodable records are recorded in log order, each stepped
            // over only after the records before it.
            while let Some(u) = bad.next_if(|u| u.offset < r.offset) {
                if u.offset >= o.engine.next_offset() {
                    o.engine.skip_record(u.offset, &mut effects);
                    effects.push(Effect::Undecodable(u));
                }
            }
            o.newest_arrival_ms = o.newest_arrival_ms.max(r.arrival_ms);
            if let Some(error) = o.recovery.poison.get(&r.offset) {
                if r.offset >= o.engine.next_offset() {
                    o.engine.skip_record(r.offset, &mut effects);
                    effects.push(Effect::Rejected(Rejection {
                        offset: r.offset,
                        arrival_ms: r.arrival_ms,
                        event: r.event,
                        reason: Reason::StorageRefused,
                        error: Some(error.clone()),
                    }));
                }
                continue;
            }
            o.engine.on_record(r, &mut effects);
        }
        for u in bad {
            if u.offset >= o.engine.next_offset() {
                o.engine.skip_record(u.offset, &mut effects);
                effects.push(Effect::Undecodable(u));
            }
        }
        if o.at_eof {
            o.engine.advance_watermark(target, &mut effects);
        }
        let live = force_live || o.live(now, max_delay);
        let effects = o.held.route(effects, now, max_delay, live);
        Some(PartitionBatch {
            position: PositionUpdate {
                partition: p,
                epoch: o.epoch,
                resume_offset: o.engine.resume_offset(),
                processed_offset: o.engine.next_offset(),
                watermark_ms: o.engine.watermark(),
            },
            effects,
        })
    }

    /// Writes `batches` and settles the outcome of every partition in
    /// them. `single` names the one record written, when record by record.
    /// Returns whether everything was written.
    async fn write_and_settle(
        &mut self,
        client: deadpool_postgres::Object,
        mut batches: Vec<PartitionBatch>,
        records: u64,
        single: Option<(i32, i64)>,
    ) -> bool {
        // What each reply says (the bot may take up to its timeout), before
        // the ids are checked: a stored reply is compared by content.
        self.policy
            .answer_effects(batches.iter_mut().flat_map(|b| b.effects.iter_mut()))
            .await;
        let started = Instant::now();
        // Accepted messages still held by any partition own their ids.
        let held: HashSet<Uuid> = self
            .parts
            .values()
            .flat_map(|o| o.held.ids().copied())
            .collect();
        match store::resolve_reply_ids(&**client, &mut batches, &held).await {
            Ok(0) => {}
            Ok(moved) => ReplyIdsSalted { count: moved }.emit(&self.metrics),
            Err(e) => {
                let parts: Vec<i32> = batches.iter().map(|b| b.position.partition).collect();
                let msg = format!("checking reply ids: {e}");
                self.fail(&parts, &msg, FailureKind::Transient, None).await;
                return false;
            }
        }
        // Groups of partitions that share a transaction.
        let par = self.settings.write_parallelism.max(1);
        let mut groups: Vec<Vec<PartitionBatch>> = vec![Vec::new(); par];
        let mut alone: Vec<Vec<PartitionBatch>> = Vec::new();
        for (i, b) in batches.into_iter().enumerate() {
            let suspect = self
                .parts
                .get(&b.position.partition)
                .is_some_and(|o| o.recovery.failures > 0);
            if suspect {
                alone.push(vec![b]);
            } else {
                groups[i % par].push(b);
            }
        }
        groups.retain(|g| !g.is_empty());
        groups.extend(alone);
        let mut clients = Vec::with_capacity(groups.len());
        let mut first = Some(client);
        for _ in 0..groups.len() {
            match first.take() {
                Some(c) => clients.push(Ok(c)),
                None => clients.push(self.pool.get().await.map_err(|e| e.to_string())),
            }
        }
        let topic = self.settings.topic.clone();
        let results =
            futures::future::join_all(clients.into_iter().zip(groups.iter()).map(|(c, g)| {
                let topic = &topic;
                async move {
                    match c {
                        Ok(mut c) => store::write_batch(&mut c, topic, g).await,
                        Err(e) => Err(StoreError::Unavailable(e)),
                    }
                }
            }))
            .await;
        self.settle(groups, results, started, records, single).await
    }

    async fn settle(
        &mut self,
        groups: Vec<Vec<PartitionBatch>>,
        results: Vec<Result<Written, StoreError>>,
        started: Instant,
        records: u64,
        single: Option<(i32, i64)>,
    ) -> bool {
        let written = now_ms();
        let mut all_ok = true;
        let mut any_ok = false;
        for (g, r) in groups.iter().zip(results) {
            let parts: Vec<i32> = g.iter().map(|b| b.position.partition).collect();
            match r {
                Ok(w) => {
                    any_ok = true;
                    DeliveriesQueued {
                        count: w.deliveries_queued,
                    }
                    .emit(&self.metrics);
                    for b in g {
                        self.observe_effects(b.position.partition, written, &b.effects);
                        self.succeeded(b.position.partition);
                    }
                }
                Err(StoreError::Fenced(fenced)) => {
                    all_ok = false;
                    BatchFenced { fenced: &fenced }.emit(&self.metrics);
                    self.health.fenced(&fenced);
                    for p in &fenced {
                        self.drop_partition(*p);
                    }
                    let others: Vec<i32> =
                        parts.into_iter().filter(|p| !fenced.contains(p)).collect();
                    self.recover(&others).await;
                }
                Err(e) => {
                    all_ok = false;
                    let (kind, msg) = match &e {
                        StoreError::Db(db) => {
                            (classify_sqlstate(db.code().map(|c| c.code())), describe(db))
                        }
                        other => (FailureKind::Transient, other.to_string()),
                    };
                    let single = single.filter(|(p, _)| parts == [*p]);
                    // A data failure is narrowed down only when the
                    // partition was written alone.
                    let kind = if parts.len() > 1 {
                        FailureKind::Transient
                    } else {
                        kind
                    };
                    self.fail(&parts, &msg, kind, single.map(|s| s.1)).await;
                }
            }
        }
        if any_ok {
            BatchWritten {
                records,
                seconds: started.elapsed().as_secs_f64(),
            }
            .emit(&self.metrics);
            self.update_gauges();
        }
        all_ok
    }

    /// A write of `p` committed: whatever it was recovering from is over
    /// once it has read past the records that failed.
    fn succeeded(&mut self, p: i32) {
        let Some(o) = self.parts.get_mut(&p) else {
            return;
        };
        let r = &mut o.recovery;
        if r.failures > 0 {
            PartitionRecovered {
                partition: p,
                failures: r.failures,
            }
            .emit(&self.metrics);
            r.failures = 0;
            self.health.set_stuck(p, None);
        }
        if r.careful_until.is_some_and(|u| o.engine.next_offset() > u) {
            RefusedRecordsPassed {
                partition: p,
                set_aside: r.poison.len(),
            }
            .emit(&self.metrics);
            r.careful_until = None;
            r.refusals.clear();
            r.poison.clear();
        }
    }

    /// A write of `partitions` failed: count it, narrow a refused record
    /// down (or set it aside), rebuild them from their committed state and
    /// pause them for a backoff.
    async fn fail(
        &mut self,
        partitions: &[i32],
        error: &str,
        kind: FailureKind,
        single: Option<i64>,
    ) {
        let policy = self.settings.retry;
        let now = Instant::now();
        // (partition, failures in a row) of the owned ones.
        let mut failed = Vec::with_capacity(partitions.len());
        for p in partitions {
            let Some(o) = self.parts.get_mut(p) else {
                continue;
            };
            let r = &mut o.recovery;
            r.failures = r.failures.saturating_add(1);
            r.last_error = error.to_owned();
            r.retry_at = Some(now + policy.backoff(r.failures, kind));
            failed.push((*p, r.failures));
        }
        BatchWriteFailed {
            kind,
            error,
            partitions: &failed,
        }
        .emit(&self.metrics);
        for &(p, failures) in &failed {
            let Some(o) = self.parts.get_mut(&p) else {
                continue;
            };
            let read_up_to = o.engine.next_offset() - 1;
            let r = &mut o.recovery;
            if kind == FailureKind::Data {
                match (r.careful_until, single) {
                    (None, _) => {
                        r.careful_until = Some(read_up_to);
                        BatchRefused {
                            partition: p,
                            up_to: read_up_to,
                            error,
                        }
                        .emit(&self.metrics);
                    }
                    (Some(_), Some(offset)) => {
                        let n = r.refusals.entry(offset).or_default();
                        *n += 1;
                        if policy.is_poison(*n) {
                            r.poison.insert(offset, error.to_owned());
                            RecordSetAside {
                                partition: p,
                                offset,
                                refusals: *n,
                                error,
                            }
                            .emit(&self.metrics);
                        }
                    }
                    (Some(_), None) => {}
                }
            }
            if policy.is_stuck(failures) {
                self.health.set_stuck(p, Some((failures, error.to_owned())));
            }
        }
        self.recover(partitions).await;
    }

    /// Pre-loads what the batch's records need from Postgres.
    async fn preload(
        &mut self,
        client: &deadpool_postgres::Object,
        batch: &BTreeMap<i32, Vec<Record>>,
    ) -> Result<(), tokio_postgres::Error> {
        let mut convs: Vec<Uuid> = Vec::new();
        let mut conv_part: HashMap<Uuid, i32> = HashMap::new();
        // A message id can be in records of several partitions (a reuse
        // across conversations): every one of them needs the stored row.
        let mut msg_part: HashMap<Uuid, Vec<i32>> = HashMap::new();
        for (p, recs) in batch {
            let Some(o) = self.parts.get_mut(p) else {
                continue;
            };
            o.engine.begin_batch(self.settings.conversation_cache);
            for id in o.engine.conversations_to_load(recs) {
                conv_part.insert(id, *p);
                convs.push(id);
            }
            for id in store::message_ids(recs.iter().map(|r| &r.event)) {
                msg_part.entry(id).or_default().push(*p);
            }
        }
        let topic = &self.settings.topic;
        let loaded = store::load_conversations(&***client, topic, &convs).await?;
        for id in convs {
            if let Some(o) = conv_part.get(&id).and_then(|p| self.parts.get_mut(p)) {
                o.engine
                    .load_conversation(id, loaded.get(&id).copied().unwrap_or_default());
            }
        }
        let ids: Vec<Uuid> = msg_part.keys().copied().collect();
        for (id, m) in store::load_messages(&***client, &ids).await? {
            for p in msg_part.get(&id).into_iter().flatten() {
                if let Some(o) = self.parts.get_mut(p) {
                    o.engine.load_stored_message(id, m.clone());
                }
            }
        }
        for (p, recs) in batch {
            let Some(o) = self.parts.get_mut(p) else {
                continue;
            };
            let (Some(lo), Some(hi)) = (recs.first(), recs.last()) else {
                continue;
            };
            if lo.offset < o.replay_until {
                let hi = hi.offset.min(o.replay_until - 1);
                for off in store::load_decided_offsets(&***client, topic, *p, lo.offset, hi).await?
                {
                    o.engine.load_decided_offset(off);
                }
            }
        }
        Ok(())
    }

    fn drop_partition(&mut self, p: i32) {
        self.parts.remove(&p);
        let label = p.to_string();
        for g in [
            &self.metrics.lag,
            &self.metrics.open_groups,
            &self.metrics.buffered_orphans,
            &self.metrics.held_inbound,
            &self.metrics.consecutive_failures,
        ] {
            g.with_label_values(&[&label]).set(0);
        }
        self.metrics.owned_partitions.set(self.parts.len() as i64);
    }

    /// Rebuilds `partitions` from their committed positions (still checking
    /// the epoch; a fenced one is dropped), keeping what they are
    /// recovering from, then re-assigns the consumer.
    async fn recover(&mut self, partitions: &[i32]) {
        loop {
            match self.rebuild(partitions).await {
                Ok(()) => break,
                Err(e) => {
                    PartitionRebuildFailed { error: &e }.emit(&self.metrics);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        self.metrics.owned_partitions.set(self.parts.len() as i64);
        self.reassign = true;
    }

    async fn rebuild(&mut self, partitions: &[i32]) -> anyhow::Result<()> {
        let client = self.pool.get().await?;
        for p in partitions {
            let Some(o) = self.parts.get(p) else { continue };
            match positions_if_owner(&**client, &self.settings.topic, *p, o.epoch).await? {
                Some(c) => {
                    let mut fresh = Owned::from_claim(self.settings.engine, &c);
                    fresh.recovery = o.recovery.clone();
                    self.parts.insert(*p, fresh);
                }
                None => {
                    PartitionFenced { partition: *p }.emit(&self.metrics);
                    self.health.fenced(&[*p]);
                    self.drop_partition(*p);
                }
            }
        }
        Ok(())
    }

    /// Reads the log bounds of every owned partition now (at start). At
    /// claim, every record below the processed offset was read before, so
    /// that offset is the reading's `next`.
    async fn read_bounds_now(&self) -> Vec<LogReading> {
        let consumer = self.consumer.clone();
        let topic = self.settings.topic.clone();
        let metrics = self.metrics.clone();
        let positions: Vec<(i32, i64, i64)> = self
            .parts
            .iter()
            .map(|(p, o)| (*p, o.engine.resume_offset(), o.replay_until))
            .collect();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for (p, resume, next) in positions {
                match consumer.fetch_watermarks(&topic, p, Duration::from_secs(5)) {
                    Ok((start, end)) => out.push(LogReading {
                        partition: p,
                        start,
                        end,
                        resume,
                        next,
                    }),
                    Err(e) => LogBoundsReadFailed {
                        partition: p,
                        error: &e,
                    }
                    .emit(&metrics),
                }
            }
            out
        })
        .await
        .unwrap_or_default()
    }

    /// Applies the readings the lag task took.
    async fn apply_readings(&mut self) {
        let readings: Vec<LogReading> = match self.readings.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for r in readings {
            self.apply_reading(r, 2).await;
        }
    }

    /// Acts on one reading: a position outside the log is reset (after
    /// `confirmations` readings without progress when beyond the end).
    async fn apply_reading(&mut self, r: LogReading, confirmations: u32) {
        let Some(o) = self.parts.get_mut(&r.partition) else {
            return;
        };
        if confirmations > 1 && o.engine.next_offset() != r.next {
            // It read on since the reading was requested: not beyond the
            // end, whatever the reading said.
            o.beyond_end = BeyondEndConfirmation::default();
            return;
        }
        let check = check_position(r.resume, r.next, r.start, r.end);
        let confirmed = match check {
            PositionCheck::Inside => {
                o.beyond_end = BeyondEndConfirmation::default();
                // Records to read, none delivered for a long while, not in
                // backoff: the consumer lost the partition's fetch (never
                // expected; a liveness guard). Assign again.
                let idle = o.last_record_at.elapsed();
                if confirmations > 1 && r.end > r.next && !o.waiting() && idle > STALL_AFTER {
                    PartitionStalled {
                        partition: r.partition,
                        next: r.next,
                        log_end: r.end,
                        idle_s: idle.as_secs(),
                    }
                    .emit(&self.metrics);
                    self.reassign = true;
                }
                return;
            }
            PositionCheck::BeyondEnd => o.beyond_end.observe(check, r.next, confirmations),
            PositionCheck::BeforeStart => true,
        };
        if !confirmed {
            return;
        }
        let stored = Claim {
            epoch: o.epoch,
            resume_offset: r.resume,
            processed_offset: r.next.max(o.replay_until),
            watermark_ms: o.engine.watermark(),
        };
        let epoch = o.epoch;
        let mut client = match self.pool.get().await {
            Ok(c) => c,
            Err(e) => {
                PartitionResetPostponed { error: &e }.emit(&self.metrics);
                return;
            }
        };
        let result = store::reset_partition(
            &mut client,
            &self.settings.topic,
            r.partition,
            epoch,
            check,
            stored,
            (r.start, r.end),
            &self.settings.owner,
            &self.settings.engine,
            &self.policy,
        )
        .await;
        drop(client);
        match result {
            Ok(reset) => {
                DeliveriesQueued {
                    count: reset.deliveries_queued,
                }
                .emit(&self.metrics);
                let event = PartitionReset {
                    partition: r.partition,
                    kind: check,
                    stored_resume: r.resume,
                    stored_next: r.next,
                    log_start: r.start,
                    log_end: r.end,
                    reading_from: reset.claim.resume_offset,
                    skipped: reset.skipped,
                    stranded_answered: reset.stranded_answered,
                };
                event.emit(&self.metrics);
                self.health.warn(event.warning());
                self.parts.insert(
                    r.partition,
                    Owned::from_claim(self.settings.engine, &reset.claim),
                );
                self.reassign = true;
            }
            Err(StoreError::Fenced(f)) => {
                self.health.fenced(&f);
                for p in f {
                    PartitionFenced { partition: p }.emit(&self.metrics);
                    self.drop_partition(p);
                }
            }
            Err(e) => {
                PartitionResetFailed {
                    partition: r.partition,
                    error: &e,
                }
                .emit(&self.metrics);
            }
        }
    }

    /// Reports what a committed batch of partition `p` wrote.
    fn observe_effects(&self, p: i32, written_ms: i64, effects: &[Effect]) {
        for e in effects {
            match e {
                Effect::Outbound(o) => ReplyWritten {
                    partition: p,
                    delta_seconds: (!o.flushed_by_close)
                        .then(|| (written_ms - o.timestamp_ms) as f64 / 1000.0),
                    answered_by: o.answered_by,
                }
                .emit(&self.metrics),
                Effect::Rejected(r) => RecordRejected {
                    partition: p,
                    offset: r.offset,
                    reason: r.reason,
                }
                .emit(&self.metrics),
                Effect::Undecodable(u) => RecordRejected {
                    partition: p,
                    offset: u.offset,
                    reason: Reason::Undecodable,
                }
                .emit(&self.metrics),
                _ => {}
            }
        }
    }

    fn update_gauges(&mut self) {
        for (p, o) in self.parts.iter_mut() {
            let label = p.to_string();
            self.metrics
                .open_groups
                .with_label_values(&[&label])
                .set(o.engine.open_groups() as i64);
            self.metrics
                .buffered_orphans
                .with_label_values(&[&label])
                .set(o.engine.buffered_orphans() as i64);
            self.metrics
                .held_inbound
                .with_label_values(&[&label])
                .set(o.held.len() as i64);
            let s = o.engine.stats();
            EngineCounted {
                partition: *p,
                before: o.last_stats,
                now: s,
            }
            .emit(&self.metrics);
            o.last_stats = s;
        }
    }

    /// Refreshes the lag gauges from the partitions' log bounds, and hands
    /// the bounds to the loop for the position check. The metadata
    /// requests run on a blocking thread, off the consume loop.
    fn update_lag(&self) {
        let consumer = self.consumer.clone();
        let topic = self.settings.topic.clone();
        let lag = self.metrics.lag.clone();
        let readings = self.readings.clone();
        let check = self.settings.log_reset_check;
        let positions: Vec<(i32, i64, i64)> = self
            .parts
            .iter()
            .filter(|(_, o)| !o.waiting())
            .map(|(p, o)| (*p, o.engine.resume_offset(), o.engine.next_offset()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for (p, resume, next) in positions {
                if let Ok((start, end)) =
                    consumer.fetch_watermarks(&topic, p, Duration::from_millis(500))
                {
                    lag.with_label_values(&[&p.to_string()])
                        .set((end - next).max(0));
                    out.push(LogReading {
                        partition: p,
                        start,
                        end,
                        resume,
                        next,
                    });
                }
            }
            if check {
                match readings.lock() {
                    Ok(mut g) => g.extend(out),
                    Err(p) => p.into_inner().extend(out),
                }
            }
        });
    }
}

/// A Postgres error with its SQLSTATE and detail, for logs and rejections.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
