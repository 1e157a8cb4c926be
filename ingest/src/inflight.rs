//! The in-flight floor: this replica's oldest record still waiting for the
//! broker's acknowledgement, published to Postgres so processors hold their
//! wall-clock watermark below it.
//!
//! A record is stamped with its arrival time `t` right before it is handed
//! to the producer. If the broker then stalls, the record can land in the
//! log long after `t`, after a processor's wall-clock watermark has passed
//! `t`. So every record is registered in an [`InflightRegistry`] from its
//! stamp until the broker answers (or the produce timeout gives up on it),
//! and a background [`Publisher`] writes
//! `ingest_inflight (replica, oldest_inflight_ms, heartbeat_at)`:
//! - every `--inflight-publish-interval` (100 ms) it computes the smallest
//!   stamp among records in flight for longer than [`MIN_AGE`] (20 ms; the
//!   processor's own allowance covers younger ones), or NULL;
//! - it upserts the row only when that value changed, and refreshes
//!   `heartbeat_at` at least every [`HEARTBEAT`] (1 s) while it is not NULL
//!   (processors ignore rows whose heartbeat is older than their lease, so a
//!   crashed replica cannot hold them back forever);
//! - on a clean shutdown it deletes the row.
//!
//! Failures are logged and counted, never fatal: the row then goes stale and
//! the processors' lease ends its effect.
//!
//! The registry and the publish decision ([`PublishState`]) are pure and
//! take the current time as an argument; entries are removed by an
//! [`InflightGuard`], so nothing leaks when a produce future is dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::events::{
    InflightFloorRemoveFailed, InflightFloorRemoved, InflightFloorWriteFailed,
    InflightFloorWritesRecovered, InflightFloorWritten, InflightPublisherFailed,
    InflightPublisherStarted, InternalEvent,
};
use crate::metrics::Metrics;

/// Records in flight for less than this are not published.
pub const MIN_AGE: Duration = Duration::from_millis(20);
/// While the floor is not NULL, `heartbeat_at` is refreshed at least this
/// often.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Entries {
    next: u64,
    /// `(stamp ms, sequence)` → when it was registered.
    by_stamp: BTreeMap<(i64, u64), Instant>,
}

/// The records handed to the producer and not yet answered, by stamp.
#[derive(Debug, Default)]
pub struct InflightRegistry {
    entries: Mutex<Entries>,
}

impl InflightRegistry {
    /// An empty registry.
    pub fn new() -> Arc<InflightRegistry> {
        Arc::new(InflightRegistry::default())
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Registers a record stamped `stamp_ms` at `now`; it stays registered
    /// until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, stamp_ms: i64, now: Instant) -> InflightGuard {
        let mut e = self.lock();
        let key = (stamp_ms, e.next);
        e.next = e.next.wrapping_add(1);
        e.by_stamp.insert(key, now);
        InflightGuard {
            registry: Arc::clone(self),
            key,
        }
    }

    /// The smallest stamp among records registered at least `min_age`
    /// before `now`, or `None`.
    pub fn oldest(&self, now: Instant, min_age: Duration) -> Option<i64> {
        // Stamps and registration times grow together, so the first match
        // is almost always the first entry.
        self.lock()
            .by_stamp
            .iter()
            .find(|(_, at)| now.saturating_duration_since(**at) >= min_age)
            .map(|((stamp, _), _)| *stamp)
    }

    /// Number of records in flight.
    pub fn len(&self) -> usize {
        self.lock().by_stamp.len()
    }

    /// Whether no record is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps one record registered; removes it on drop (acknowledged, failed,
/// timed out, or the future holding it was dropped).
#[derive(Debug)]
pub struct InflightGuard {
    registry: Arc<InflightRegistry>,
    key: (i64, u64),
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.registry.lock().by_stamp.remove(&self.key);
    }
}

/// What the publisher last wrote, and the decision whether to write now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishState {
    /// The value in the row, when known (`None`: unknown, e.g. at start or
    /// after a failed write).
    written: Option<Option<i64>>,
    /// When it was written.
    written_at: Option<Instant>,
}

impl PublishState {
    /// Whether to upsert `oldest` at `now`: when the row's value is unknown
    /// or different, or when it is not NULL and its heartbeat is due.
    /// `refresh_every` is how old the heartbeat may get before the tick
    /// that refreshes it.
    pub fn should_write(&self, oldest: Option<i64>, now: Instant, refresh_every: Duration) -> bool {
        match (self.written, self.written_at) {
            (Some(prev), Some(at)) if prev == oldest => {
                oldest.is_some() && now.saturating_duration_since(at) >= refresh_every
            }
            _ => true,
        }
    }

    /// Records a successful write of `value` at `now`.
    pub fn wrote(&mut self, value: Option<i64>, now: Instant) {
        self.written = Some(value);
        self.written_at = Some(now);
    }

    /// Records a failed write: the row's value is unknown.
    pub fn failed(&mut self) {
        self.written = None;
        self.written_at = None;
    }
}

/// How old the heartbeat may get before a tick every `interval` refreshes
/// it, so the gap between two writes stays within [`HEARTBEAT`].
pub fn refresh_every(interval: Duration) -> Duration {
    HEARTBEAT.saturating_sub(interval)
}

const UPSERT_SQL: &str = "INSERT INTO ingest_inflight (replica, oldest_inflight_ms, heartbeat_at) \
     VALUES ($1, $2, clock_timestamp()) \
     ON CONFLICT (replica) DO UPDATE \
     SET oldest_inflight_ms = EXCLUDED.oldest_inflight_ms, heartbeat_at = EXCLUDED.heartbeat_at";
const DELETE_SQL: &str = "DELETE FROM ingest_inflight WHERE replica = $1";

/// The background task that publishes this replica's in-flight floor.
pub struct Publisher {
    registry: Arc<InflightRegistry>,
    pool: Pool,
    replica: String,
    interval: Duration,
    timeout: Duration,
    metrics: Metrics,
}

/// A running [`Publisher`]; dropping it stops the task too (it then still
/// tries to delete its row).
pub struct PublisherHandle {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    metrics: Metrics,
}

impl PublisherHandle {
    /// Stops the publisher and waits until it has deleted its row (or
    /// failed to).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.task).await {
            InflightPublisherFailed { error: &e }.emit(&self.metrics);
        }
    }
}

impl Publisher {
    /// A publisher of `registry`'s floor as row `replica`, every `interval`,
    /// each statement bounded by `timeout`, on `pool` (one connection).
    pub fn new(
        registry: Arc<InflightRegistry>,
        pool: Pool,
        replica: String,
        interval: Duration,
        timeout: Duration,
        metrics: Metrics,
    ) -> Publisher {
        Publisher {
            registry,
            pool,
            replica,
            interval,
            timeout,
            metrics,
        }
    }

    /// Starts the task.
    pub fn spawn(self) -> PublisherHandle {
        let (stop_tx, stop_rx) = oneshot::channel();
        PublisherHandle {
            stop: Some(stop_tx),
            metrics: self.metrics.clone(),
            task: tokio::spawn(self.run(stop_rx)),
        }
    }

    async fn run(self, mut stop: oneshot::Receiver<()>) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let refresh = refresh_every(self.interval);
        let mut state = PublishState::default();
        let mut failing = 0u64;
        InflightPublisherStarted {
            replica: &self.replica,
            interval: self.interval,
        }
        .emit(&self.metrics);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = ticks.tick() => {}
            }
            let now = Instant::now();
            self.metrics
                .inflight_records
                .set(self.registry.len() as i64);
            let oldest = self.registry.oldest(now, MIN_AGE);
            if !state.should_write(oldest, now, refresh) {
                continue;
            }
            match self.execute(UPSERT_SQL, &[&self.replica, &oldest]).await {
                Ok(()) => {
                    if failing > 0 {
                        InflightFloorWritesRecovered {
                            replica: &self.replica,
                            failures: failing,
                        }
                        .emit(&self.metrics);
                        failing = 0;
                    }
                    InflightFloorWritten {
                        replica: &self.replica,
                        oldest_inflight_ms: oldest,
                        changed: state.written != Some(oldest),
                    }
                    .emit(&self.metrics);
                    state.wrote(oldest, now);
                }
                Err(e) => {
                    failing += 1;
                    // Logged for the first failure of a streak, then one in
                    // 100.
                    InflightFloorWriteFailed {
                        replica: &self.replica,
                        error: &e,
                        failures: failing,
                    }
                    .emit(&self.metrics);
                    state.failed();
                }
            }
        }
        match self.execute(DELETE_SQL, &[&self.replica]).await {
            Ok(()) => InflightFloorRemoved {
                replica: &self.replica,
            }
            .emit(&self.metrics),
            Err(e) => InflightFloorRemoveFailed {
                replica: &self.replica,
                error: &e,
            }
            .emit(&self.metrics),
        }
    }

    /// Runs `sql` with `params`, bounded by the timeout.
    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(), String> {
        let work = async {
            let client = self
                .pool
                .get()
                .await
                .map_err(|e| format!("getting a connection: {e}"))?;
            let stmt = client
                .prepare_cached(sql)
                .await
                .map_err(|e| format!("prepare: {e}"))?;
            client
                .execute(&stmt, params)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn oldest_skips_young_records_and_forgets_dropped_ones() {
        let r = InflightRegistry::new();
        let t0 = Instant::now();
        let a = r.register(1_000, t0);
        let b = r.register(1_005, t0 + ms(5));
        let c = r.register(990, t0 + ms(30)); // a clock step back: older stamp, young
        assert_eq!(r.len(), 3);
        assert_eq!(r.oldest(t0 + ms(19), MIN_AGE), None);
        assert_eq!(r.oldest(t0 + ms(20), MIN_AGE), Some(1_000));
        assert_eq!(r.oldest(t0 + ms(50), MIN_AGE), Some(990));
        drop(c);
        drop(a);
        assert_eq!(r.oldest(t0 + ms(50), MIN_AGE), Some(1_005));
        drop(b);
        assert!(r.is_empty());
        assert_eq!(r.oldest(t0 + ms(500), MIN_AGE), None);
    }

    #[test]
    fn equal_stamps_are_separate_entries() {
        let r = InflightRegistry::new();
        let t0 = Instant::now();
        let a = r.register(7, t0);
        let b = r.register(7, t0);
        drop(a);
        assert_eq!(r.oldest(t0 + ms(20), MIN_AGE), Some(7));
        drop(b);
        assert_eq!(r.oldest(t0 + ms(20), MIN_AGE), None);
    }

    #[tokio::test]
    async fn a_dropped_future_removes_its_record() {
        let r = InflightRegistry::new();
        let (tx, rx) = oneshot::channel::<()>();
        let registry = Arc::clone(&r);
        let task = tokio::spawn(async move {
            let _guard = registry.register(42, Instant::now());
            let _ = tx.send(());
            std::future::pending::<()>().await;
        });
        rx.await.unwrap();
        assert_eq!(r.len(), 1);
        task.abort();
        let _ = task.await;
        assert!(r.is_empty(), "the cancelled future's guard removed it");
    }

    #[test]
    fn writes_on_change_and_refreshes_a_set_floor() {
        let t0 = Instant::now();
        let every = refresh_every(ms(100));
        assert_eq!(every, ms(900));
        let mut s = PublishState::default();
        assert!(s.should_write(None, t0, every), "unknown row: write NULL");
        s.wrote(None, t0);
        assert!(
            !s.should_write(None, t0 + ms(5000), every),
            "NULL needs no heartbeat"
        );
        assert!(s.should_write(Some(5), t0 + ms(100), every));
        s.wrote(Some(5), t0 + ms(100));
        assert!(!s.should_write(Some(5), t0 + ms(999), every));
        assert!(
            s.should_write(Some(5), t0 + ms(1000), every),
            "heartbeat due"
        );
        assert!(s.should_write(Some(6), t0 + ms(200), every), "changed");
        assert!(s.should_write(None, t0 + ms(200), every), "cleared");
        s.failed();
        assert!(
            s.should_write(Some(5), t0 + ms(200), every),
            "unknown after a failure"
        );
        assert_eq!(refresh_every(ms(2000)), Duration::ZERO);
    }

    proptest! {
        /// Against a model: any sequence of registrations, drops and time
        /// steps gives the minimum stamp of the old-enough live records.
        #[test]
        fn oldest_matches_a_model(ops in proptest::collection::vec((0u8..3, 0i64..50, 0u64..40), 1..60)) {
            let r = InflightRegistry::new();
            let t0 = Instant::now();
            let mut now = t0;
            let mut live: Vec<(i64, Instant, InflightGuard)> = Vec::new();
            for (op, stamp, step) in ops {
                match op {
                    0 => { let g = r.register(stamp, now); live.push((stamp, now, g)); }
                    1 if !live.is_empty() => { let i = (stamp as usize) % live.len(); live.swap_remove(i); }
                    _ => now += ms(step),
                }
                let model = live.iter().filter(|(_, at, _)| now.duration_since(*at) >= MIN_AGE).map(|(s, _, _)| *s).min();
                prop_assert_eq!(r.oldest(now, MIN_AGE), model);
                prop_assert_eq!(r.len(), live.len());
            }
            live.clear();
            prop_assert!(r.is_empty());
        }

        /// While the floor stays set, consecutive writes of a tick-driven
        /// publisher are never more than the heartbeat apart.
        #[test]
        fn heartbeat_gaps_stay_within_a_second(interval_ms in 1u64..1000, ticks in 1usize..200) {
            let interval = ms(interval_ms);
            let every = refresh_every(interval);
            let t0 = Instant::now();
            let mut s = PublishState::default();
            let mut last = None;
            for k in 0..ticks {
                let now = t0 + interval * k as u32;
                if s.should_write(Some(1), now, every) {
                    if let Some(prev) = last {
                        prop_assert!(now.duration_since(prev) <= HEARTBEAT);
                    }
                    s.wrote(Some(1), now);
                    last = Some(now);
                }
            }
        }
    }
}
