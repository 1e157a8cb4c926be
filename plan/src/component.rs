//! The parts of a pipeline ([`Component`]): what both deployments run, in
//! start order.

use std::fmt;

/// A part of a pipeline. One enum for both deployments: each builds its
/// objects or processes per component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    /// The schema migration, run before the services use the database.
    Migrate,
    /// The webhook receiver, `chatpipe-ingest`.
    Ingest,
    /// The stateful processors, `chatpipe-processor`.
    Processor,
    /// The query API, `chatpipe-api`.
    Api,
    /// The outbox sender, `chatpipe-delivery`: delivers OUTBOUND messages
    /// of channel conversations through their channels.
    Delivery,
}

impl Component {
    /// Every component, in start order.
    pub const ALL: [Component; 5] = [
        Component::Migrate,
        Component::Ingest,
        Component::Processor,
        Component::Api,
        Component::Delivery,
    ];

    /// The long-running services (everything but the migration), in
    /// start order.
    pub const SERVICES: [Component; 4] = [
        Component::Ingest,
        Component::Processor,
        Component::Api,
        Component::Delivery,
    ];

    /// The component as used in names, labels and log prefixes.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Migrate => "migrate",
            Component::Ingest => "ingest",
            Component::Processor => "processor",
            Component::Api => "api",
            Component::Delivery => "delivery",
        }
    }

    /// The executable that runs it (the migration: its `migrate` command).
    pub fn binary(self) -> &'static str {
        match self {
            Component::Migrate => "chatpipe-admin",
            Component::Ingest => "chatpipe-ingest",
            Component::Processor => "chatpipe-processor",
            Component::Api => "chatpipe-api",
            Component::Delivery => "chatpipe-delivery",
        }
    }

    /// Whether it talks to Kafka (and so reads the brokers, the topic and
    /// any Kafka credentials).
    pub fn reads_kafka(self) -> bool {
        matches!(self, Component::Ingest | Component::Processor)
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
