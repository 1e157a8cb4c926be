//! The plan of a chatpipe pipeline, shared by both deployments: the
//! `ChatPipeline` spec is validated once and becomes one [`Topology`] —
//! each component with its replicas and its binary's typed settings. The
//! operator turns it into Kubernetes objects, local mode into processes;
//! neither decides anything the plan already says.
//!
//! ```text
//! ChatPipelineSpec ──validate──▶ ValidatedPipeline ──plan──▶ Topology
//!   (crd)                          (validate)                 (topology)
//! ```
//!
//! # Layout
//! - [`crd`] — the resource types; `crds/chatpipeline.yaml` is generated
//!   from them (`chatpipe-operator crdgen`).
//! - [`validate`] — the "validate once" step: raw spec →
//!   [`validate::ValidatedPipeline`], every rule in one place (durations,
//!   names, limits, processors ≤ partitions, …).
//! - [`topology`] — [`Component`], [`Settings`] and [`plan`]: validated
//!   pipeline → [`Topology`].
//! - [`component`] — [`Component`]: migrate, ingest, processor, api.
//! - [`secrets`] — which Secret key each component reads, under which
//!   variable, as a value or a file ([`secrets::SecretInput`]).

pub mod component;
pub mod crd;
pub mod secrets;
pub mod topology;
pub mod validate;

pub use secrets::{Delivery, SecretInput};
pub use topology::{plan, Component, Planned, Settings, Topology};
