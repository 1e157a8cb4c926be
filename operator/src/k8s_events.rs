//! Kubernetes Events (`events.k8s.io/v1`) about ChatPipelines.
//!
//! Like kube's `Recorder`, with one difference: every write carries the
//! operator's field manager ([`crate::FIELD_MANAGER`]), which
//! kube's `Recorder` leaves unset (the API server then records the write
//! under a name guessed from the user agent). A repeat of the same event
//! (same type, reason, note and object) within [`SERIES_WINDOW`] is counted
//! in the first one's `series` instead of creating another Event.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use crate::status::{Notice, Severity};
use crate::FIELD_MANAGER;

/// How long an Event is remembered for counting repeats in its series.
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);
/// Longest note the API server accepts (1 kB).
const MAX_NOTE_CHARS: usize = 1000;
/// The action of every event.
const ACTION: &str = "Reconcile";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    type_: &'static str,
    reason: String,
    note: String,
    regarding: (String, String, String, String),
}

/// Publishes Events with the operator's field manager.
pub struct EventRecorder {
    client: Client,
    controller: String,
    instance: String,
    recent: Mutex<HashMap<Key, Event>>,
}

impl EventRecorder {
    /// A recorder reporting as `controller` (`reportingController`) from
    /// `instance` (`reportingInstance`, the pod name; `controller` when unset).
    pub fn new(client: Client, controller: &str, instance: Option<&str>) -> Self {
        Self {
            client,
            controller: controller.to_owned(),
            instance: instance.unwrap_or(controller).to_owned(),
            recent: Mutex::new(HashMap::new()),
        }
    }

    fn key(notice: &Notice, regarding: &ObjectReference) -> Key {
        Key {
            type_: type_of(notice.severity),
            reason: notice.reason.clone(),
            note: note_of(notice),
            regarding: (
                regarding.kind.clone().unwrap_or_default(),
                regarding.namespace.clone().unwrap_or_default(),
                regarding.name.clone().unwrap_or_default(),
                regarding.uid.clone().unwrap_or_default(),
            ),
        }
    }

    /// The Event for a first occurrence of `notice`.
    fn event(&self, notice: &Notice, regarding: &ObjectReference, now: Timestamp) -> Event {
        Event {
            action: Some(ACTION.to_owned()),
            reason: Some(notice.reason.clone()),
            note: Some(note_of(notice)),
            type_: Some(type_of(notice.severity).to_owned()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            ..Event::default()
        }
    }

    /// Publishes `notice` about the object `regarding`: creates an Event, or
    /// counts a repeat in the series of the one created before.
    pub async fn publish(
        &self,
        notice: &Notice,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = Self::key(notice, regarding);
        let previous = {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            recent.retain(|_, e| last_seen(e).is_some_and(|t| t + SERIES_WINDOW > now));
            recent.get(&key).cloned()
        };
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let event = match previous {
            Some(mut e) => {
                let count = e.series.as_ref().map_or(2, |s| s.count.saturating_add(1));
                e.series = Some(EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                });
                let pp = PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                };
                api.patch(&e.name_any(), &pp, &Patch::Merge(&e)).await?;
                e
            }
            None => {
                let e = self.event(notice, regarding, now);
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PostParams::default()
                };
                api.create(&pp, &e).await?;
                e
            }
        };
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, event);
        Ok(())
    }
}

fn type_of(severity: Severity) -> &'static str {
    match severity {
        Severity::Normal => "Normal",
        Severity::Warning => "Warning",
    }
}

fn note_of(notice: &Notice) -> String {
    notice.note.chars().take(MAX_NOTE_CHARS).collect()
}

fn last_seen(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
}
