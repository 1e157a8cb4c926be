//! Child processes for local mode (`chatpipe-local`) and the test kit
//! (`chatpipe-tests`): both start the services and a Tansu broker as
//! children that must never outlive them, and stop them by signal.
//!
//! A small crate of its own (std and nix only) so the test kit, which every
//! integration test links, does not pull in local mode's dependencies.
//!
//! # Layout
//! - [`process`] — children that die with their parent
//!   ([`process::die_with_parent`], [`process::spawn_tied`]) and signals to
//!   a process or its whole process group.
//! - [`tansu`] — finding the `tansu` executable and its broker command line.

pub mod process;
pub mod tansu;

pub use nix::sys::signal::Signal;
pub use process::{die_with_parent, signal, signal_group, spawn_tied};
pub use tansu::{broker_args, find_tansu};
