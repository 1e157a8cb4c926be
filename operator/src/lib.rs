//! The chatpipe operator: the controller that carries out each
//! `ChatPipeline`'s plan on Kubernetes. It talks only to Kubernetes (and
//! to Kafka for the topic); the resource, its validation and the plan are
//! `chatpipe-plan`'s, and running the same plan as processes is local
//! mode's (`chatpipe-local`).
//!
//! ```text
//! ChatPipeline ──validate──▶ ValidatedPipeline ──plan──▶ Topology ──build──▶ objects ──apply──▶ API server
//! ```
//!
//! # Layout
//! - [`crd`], [`validate`] — re-exported from `chatpipe-plan`: the resource
//!   types (`crds/chatpipeline.yaml` is generated from them) and the
//!   "validate once" step.
//! - [`rbac`] — the exact permissions the controller uses (the chart's ClusterRole).
//! - [`build`] — pure builders of every Kubernetes object (one file per
//!   kind) from the plan; each component's ConfigMap is its planned
//!   settings' `to_env()`.
//! - [`status`] — pure status/condition computation and the Events of a transition.
//! - [`k8s_events`] — publishing Kubernetes Events with the operator's field manager.
//! - [`reconcile`] — one reconcile run: validate, apply, status, finalizer.
//! - [`controller`] — the controller process (watches, ops endpoints).
//! - [`topic`] — ensuring the Kafka topic, behind a trait tests can fake.
//! - [`kafka_access`] — the operator's own connection to a pipeline's
//!   brokers (TLS, SASL from the Secrets it read).
//! - [`events`] — what the operator says about itself: one type per
//!   observable fact, which logs and updates its metric in one call.
//! - [`metrics`], [`error`] — the operator's metrics and the error type.
//! - `src/main.rs` — the binary: the controller (default) and `crdgen`.
pub mod build;
pub mod controller;
pub mod error;
pub mod events;
pub mod k8s_events;
pub mod kafka_access;
pub mod metrics;
pub mod rbac;
pub mod reconcile;
pub mod status;
pub mod topic;

pub use chatpipe_plan::{crd, validate};

/// Field manager of every write (server-side applies, patches, creates).
pub const FIELD_MANAGER: &str = "chatpipe-operator";
