//! The chatpipe operator: the `ChatPipeline` custom resource, the controller
//! that reconciles it on Kubernetes, and a local mode that runs the same
//! manifest as processes on one machine.
//!
//! # Layout
//! - [`crd`] — the resource types; `crds/chatpipeline.yaml` is generated from them.
//! - [`validate`] — the "validate once" step: raw spec → [`validate::ValidatedPipeline`].
//! - [`rbac`] — the exact permissions the controller uses (the chart's ClusterRole).
//! - [`build`] — pure builders of every Kubernetes object (one file per kind).
//! - [`status`] — pure status/condition computation and the Events of a transition.
//! - [`events`] — publishing Kubernetes Events with the operator's field manager.
//! - [`reconcile`] — one reconcile run: validate, apply, status, finalizer.
//! - [`controller`] — the controller process (watches, ops endpoints).
//! - [`topic`] — ensuring the Kafka topic, behind a trait tests can fake.
//! - [`metrics`], [`error`] — reconcile metrics and the error type.
//! - [`local`] — `chatpipe-operator local -f pipeline.yaml`.
pub mod build;
pub mod controller;
pub mod crd;
pub mod error;
pub mod events;
pub mod local;
pub mod metrics;
pub mod rbac;
pub mod reconcile;
pub mod status;
pub mod topic;
pub mod validate;
