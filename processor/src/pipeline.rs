//! The consume loop: the I/O shell around the pure engine.
//!
//! 1. Claim the statically owned partitions (bumping their owner epochs),
//!    `assign()` them at their committed resume offsets (no consumer-group
//!    rebalancing) and rebuild open windows by replaying from there.
//! 2. Each iteration polls a batch (up to `poll_batch_size` records), pre-loads
//!    the persisted facts the batch needs (conversation log states, stored
//!    messages, stored rejections while replaying), feeds the engines, and
//!    — for partitions that reached their end (partition EOF, no backlog) —
//!    advances the watermark to wall clock minus allowance.
//! 3. The batch's effects, resume positions and fencing check are written
//!    in one transaction. Fenced partitions are dropped (never reclaimed);
//!    on any other failure the batch's partitions are rebuilt from the
//!    committed state.
//! 4. Shutdown is checked only between batches: the current batch is
//!    finished and committed first.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chatpipe_core::Event;
use deadpool_postgres::Pool;
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::effects::Effect;
use crate::metrics::Metrics;
use crate::ownership::{claim, owned_partitions, positions_if_owner, Claim, PositionUpdate};
use crate::store::{self, PartitionBatch, StoreError};
use crate::visibility::PendingInbound;
use crate::watermark::clock_target;
use crate::window::{EngineConfig, EngineStats, PartitionEngine, Record};

/// Client context that does not report partition EOF (the normal "caught
/// up" signal) as an error.
pub struct QuietContext;

impl rdkafka::client::ClientContext for QuietContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::error!(error = %error, reason, "librdkafka error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// The processor's consumer type.
pub type EventConsumer = StreamConsumer<QuietContext>;

/// Everything the loop needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Kafka bootstrap servers.
    pub brokers: String,
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
}

impl Owned {
    /// A partition as claimed (or re-read while still owned): a fresh
    /// engine that replays from the resume offset, nothing held.
    fn from_claim(engine: EngineConfig, c: &Claim) -> Self {
        Self {
            engine: PartitionEngine::new(engine, c.resume_offset),
            held: PendingInbound::new(),
            newest_arrival_ms: i64::MIN,
            epoch: c.epoch,
            replay_until: c.processed_offset,
            at_eof: false,
            last_stats: EngineStats::default(),
        }
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
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Processor {
    /// Creates the consumer (not yet assigned).
    pub fn new(settings: Settings, pool: Pool, metrics: Metrics) -> anyhow::Result<Self> {
        let consumer: EventConsumer = chatpipe_core::kafka::consumer_config(
            &settings.brokers,
            "chatpipe-processor",
            settings.fetch_wait,
        )
        .set("queued.max.messages.kbytes", "65536")
        .create_with_context(QuietContext)
        .context("creating the Kafka consumer")?;
        Ok(Self {
            settings,
            consumer: Arc::new(consumer),
            pool,
            metrics,
            parts: BTreeMap::new(),
        })
    }

    /// The consumer, for readiness checks (metadata requests).
    pub fn consumer(&self) -> Arc<EventConsumer> {
        self.consumer.clone()
    }

    /// Waits for the topic, claims the owned partitions and assigns them at
    /// their resume offsets.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let s = &self.settings;
        let partitions = loop {
            match chatpipe_core::kafka::topic_partitions(
                &s.brokers,
                &s.topic,
                Duration::from_secs(5),
            )
            .await
            {
                Ok(Some(n)) => break n,
                Ok(None) => tracing::warn!(topic = %s.topic, "topic does not exist yet; waiting"),
                Err(e) => tracing::warn!(error = %e, "broker not reachable; waiting"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let mine = owned_partitions(partitions, s.replicas, s.ordinal);
        let client = self.pool.get().await.context("connecting to Postgres")?;
        for p in mine {
            let c = claim(&**client, &s.topic, p, &s.owner)
                .await
                .context("claiming a partition")?;
            tracing::info!(
                partition = p,
                epoch = c.epoch,
                resume = c.resume_offset,
                processed = c.processed_offset,
                "claimed partition"
            );
            self.parts.insert(p, Owned::from_claim(s.engine, &c));
        }
        self.metrics.owned_partitions.set(self.parts.len() as i64);
        self.assign()
    }

    /// (Re-)assigns every owned partition at its engine's next offset.
    fn assign(&mut self) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &self.parts {
            tpl.add_partition_offset(
                &self.settings.topic,
                *p,
                Offset::Offset(o.engine.next_offset()),
            )
            .context("building the assignment")?;
        }
        self.consumer.assign(&tpl).context("assigning partitions")?;
        for o in self.parts.values_mut() {
            o.at_eof = false;
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
        let mut last_lag = Instant::now() - Duration::from_secs(10);
        let consumer = self.consumer.clone();
        loop {
            // Collect one poll batch.
            let mut batch: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
            let mut n = 0usize;
            let first = tokio::select! {
                _ = &mut shutdown => break,
                r = tokio::time::timeout(self.settings.idle_tick, consumer.recv()) => r.ok(),
            };
            if let Some(r) = first {
                self.take(r, &mut batch, &mut n);
                while n < self.settings.batch_size {
                    match consumer.recv().now_or_never() {
                        Some(r) => self.take(r, &mut batch, &mut n),
                        None => break,
                    }
                }
            }
            self.process(batch).await;
            if last_lag.elapsed() >= Duration::from_secs(2) {
                last_lag = Instant::now();
                self.update_lag();
            }
        }
        tracing::info!("shutting down: last batch committed");
        ready.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn take(
        &mut self,
        r: Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>,
        batch: &mut BTreeMap<i32, Vec<Record>>,
        n: &mut usize,
    ) {
        match r {
            Ok(m) => {
                let p = m.partition();
                let Some(owned) = self.parts.get_mut(&p) else {
                    return;
                };
                owned.at_eof = false;
                *n += 1;
                let offset = m.offset();
                let decoded = m.payload().map(|b| Event::decode(b, usize::MAX));
                match decoded {
                    Some(Ok(event)) => batch.entry(p).or_default().push(Record {
                        offset,
                        arrival_ms: m.timestamp().to_millis().unwrap_or_else(now_ms),
                        event,
                    }),
                    _ => {
                        tracing::warn!(
                            partition = p,
                            offset,
                            "skipping a record that is not an event"
                        );
                        owned.engine.skip_record(offset);
                    }
                }
            }
            Err(KafkaError::PartitionEOF(p)) => {
                if let Some(o) = self.parts.get_mut(&p) {
                    o.at_eof = true;
                }
            }
            Err(e) => tracing::warn!(error = %e, "consumer error"),
        }
    }

    /// Feeds a batch (possibly empty: a wall-clock tick) and commits it.
    async fn process(&mut self, batch: BTreeMap<i32, Vec<Record>>) {
        let now = now_ms();
        let target = clock_target(now, self.settings.allowance_ms);
        let max_delay = self.settings.inbound_max_delay.as_millis() as i64;
        let due: Vec<i32> = self
            .parts
            .iter()
            .filter(|(p, o)| {
                batch.contains_key(p)
                    || (o.at_eof && o.engine.next_deadline().is_some_and(|d| target > d))
                    || o.held.release_due(now, max_delay, o.live(now, max_delay))
            })
            .map(|(p, _)| *p)
            .collect();
        if due.is_empty() {
            return;
        }
        let client = match self.pool.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "Postgres unavailable; rebuilding partitions");
                self.metrics.write_errors.inc();
                self.recover(&due, &[]).await;
                return;
            }
        };
        if let Err(e) = self.preload(&client, &batch).await {
            tracing::warn!(error = %e, "pre-loading state failed; rebuilding partitions");
            self.metrics.write_errors.inc();
            self.recover(&due, &[]).await;
            return;
        }
        // Feed the engines.
        let mut records = 0u64;
        let mut batches = Vec::with_capacity(due.len());
        let mut batch = batch;
        for p in &due {
            let Some(o) = self.parts.get_mut(p) else {
                continue;
            };
            let mut effects = Vec::new();
            for r in batch.remove(p).unwrap_or_default() {
                records += 1;
                o.newest_arrival_ms = o.newest_arrival_ms.max(r.arrival_ms);
                o.engine.on_record(r, &mut effects);
            }
            if o.at_eof {
                o.engine.advance_watermark(target, &mut effects);
            }
            let live = o.live(now, max_delay);
            let effects = o.held.route(effects, now, max_delay, live);
            batches.push(PartitionBatch {
                position: PositionUpdate {
                    partition: *p,
                    epoch: o.epoch,
                    resume_offset: o.engine.resume_offset(),
                    processed_offset: o.engine.next_offset(),
                },
                effects,
            });
        }
        let started = Instant::now();
        let result = self.write(client, &batches).await;
        match result {
            Ok(()) => {
                let written = now_ms();
                self.metrics
                    .batch_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.batches.inc();
                self.metrics.records.inc_by(records);
                for b in &batches {
                    self.observe_effects(written, &b.effects);
                }
                self.update_gauges();
            }
            Err(StoreError::Fenced(fenced)) => {
                self.metrics.fenced.inc();
                tracing::warn!(?fenced, "a newer owner claimed partitions; dropping them");
                self.recover(&due, &fenced).await;
            }
            Err(e) => {
                self.metrics.write_errors.inc();
                tracing::warn!(error = %e, "batch write failed; rebuilding partitions");
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.recover(&due, &[]).await;
            }
        }
    }

    /// Writes the batch: one transaction, or with `write_parallelism` > 1 one
    /// transaction per group of partitions on separate connections (each
    /// with its own fencing check; partitions are independent). On any
    /// failure the caller rebuilds every partition of the batch from its
    /// committed state, which is correct whether or not a group committed.
    async fn write(
        &self,
        mut client: deadpool_postgres::Object,
        batches: &[PartitionBatch],
    ) -> Result<(), StoreError> {
        let topic = &self.settings.topic;
        let par = self
            .settings
            .write_parallelism
            .clamp(1, batches.len().max(1));
        if par == 1 {
            return store::write_batch(&mut client, topic, batches).await;
        }
        let mut groups: Vec<Vec<PartitionBatch>> = vec![Vec::new(); par];
        for (i, b) in batches.iter().enumerate() {
            groups[i % par].push(b.clone());
        }
        let mut first = Some(client);
        let mut clients = Vec::with_capacity(par);
        for _ in 0..par {
            match first.take() {
                Some(c) => clients.push(c),
                None => clients.push(
                    self.pool
                        .get()
                        .await
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?,
                ),
            }
        }
        let results = futures::future::join_all(
            clients
                .into_iter()
                .zip(groups.iter())
                .map(|(mut c, g)| async move { store::write_batch(&mut c, topic, g).await }),
        )
        .await;
        let mut fenced = Vec::new();
        let mut failure = None;
        for r in results {
            match r {
                Ok(()) => {}
                Err(StoreError::Fenced(p)) => fenced.extend(p),
                Err(e) => failure = Some(e),
            }
        }
        match (fenced.is_empty(), failure) {
            (false, _) => Err(StoreError::Fenced(fenced)),
            (true, Some(e)) => Err(e),
            (true, None) => Ok(()),
        }
    }

    /// Pre-loads what the batch's records need from Postgres.
    async fn preload(
        &mut self,
        client: &deadpool_postgres::Object,
        batch: &BTreeMap<i32, Vec<Record>>,
    ) -> Result<(), tokio_postgres::Error> {
        let mut convs: Vec<Uuid> = Vec::new();
        let mut conv_part: HashMap<Uuid, i32> = HashMap::new();
        let mut msg_part: HashMap<Uuid, i32> = HashMap::new();
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
                msg_part.insert(id, *p);
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
            if let Some(o) = msg_part.get(&id).and_then(|p| self.parts.get_mut(p)) {
                o.engine.load_stored_message(id, m);
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

    /// After a failed batch: drops `fenced` partitions and rebuilds the
    /// others of `due` from their committed positions (still checking the
    /// epoch), then re-assigns the consumer.
    async fn recover(&mut self, due: &[i32], fenced: &[i32]) {
        for p in fenced {
            self.parts.remove(p);
            self.metrics.lag.with_label_values(&[&p.to_string()]).set(0);
            self.metrics
                .open_groups
                .with_label_values(&[&p.to_string()])
                .set(0);
            self.metrics
                .buffered_orphans
                .with_label_values(&[&p.to_string()])
                .set(0);
            self.metrics
                .held_inbound
                .with_label_values(&[&p.to_string()])
                .set(0);
        }
        loop {
            match self.rebuild(due).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "rebuilding partitions failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        self.metrics.owned_partitions.set(self.parts.len() as i64);
        if let Err(e) = self.assign() {
            tracing::error!(error = %e, "re-assigning partitions failed");
        }
    }

    async fn rebuild(&mut self, due: &[i32]) -> anyhow::Result<()> {
        let client = self.pool.get().await?;
        for p in due {
            let Some(o) = self.parts.get(p) else { continue };
            match positions_if_owner(&**client, &self.settings.topic, *p, o.epoch).await? {
                Some(c) => {
                    self.parts
                        .insert(*p, Owned::from_claim(self.settings.engine, &c));
                }
                None => {
                    tracing::warn!(
                        partition = p,
                        "partition was claimed by a newer owner; dropping it"
                    );
                    self.parts.remove(p);
                }
            }
        }
        Ok(())
    }

    fn observe_effects(&self, written_ms: i64, effects: &[Effect]) {
        for e in effects {
            match e {
                Effect::Outbound(o) => {
                    self.metrics.replies.inc();
                    if !o.flushed_by_close {
                        self.metrics
                            .reply_delta
                            .observe((written_ms - o.timestamp_ms) as f64 / 1000.0);
                    }
                }
                Effect::Rejected(r) => {
                    self.metrics
                        .rejections
                        .with_label_values(&[r.reason.as_str()])
                        .inc();
                }
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
            self.metrics
                .late_records
                .inc_by(s.late_records.saturating_sub(o.last_stats.late_records));
            self.metrics.late_new_groups.inc_by(
                s.late_new_groups
                    .saturating_sub(o.last_stats.late_new_groups),
            );
            self.metrics
                .duplicates
                .inc_by(s.duplicates.saturating_sub(o.last_stats.duplicates));
            o.last_stats = s;
        }
    }

    /// Refreshes the lag gauges from the partitions' high watermarks. The
    /// metadata requests run on a blocking thread, off the consume loop.
    fn update_lag(&self) {
        let consumer = self.consumer.clone();
        let topic = self.settings.topic.clone();
        let lag = self.metrics.lag.clone();
        let positions: Vec<(i32, i64)> = self
            .parts
            .iter()
            .map(|(p, o)| (*p, o.engine.next_offset()))
            .collect();
        tokio::task::spawn_blocking(move || {
            for (p, next) in positions {
                if let Ok((_, high)) =
                    consumer.fetch_watermarks(&topic, p, Duration::from_millis(500))
                {
                    lag.with_label_values(&[&p.to_string()])
                        .set((high - next).max(0));
                }
            }
        });
    }
}
