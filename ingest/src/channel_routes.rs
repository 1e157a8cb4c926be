//! The messenger channels one ingest receives, by name (with the
//! credentials that verify their webhooks).

use std::collections::HashMap;

use chatpipe_channels::Channel;

/// The channels ingest receives, by name.
#[derive(Debug, Clone, Default)]
pub struct ChannelRoutes {
    channels: HashMap<String, Channel>,
}

impl ChannelRoutes {
    /// Routes for `channels`.
    pub fn new(channels: Vec<Channel>) -> Self {
        Self {
            channels: channels
                .into_iter()
                .map(|c| (c.name().to_owned(), c))
                .collect(),
        }
    }

    /// The channel called `name`.
    pub fn get(&self, name: &str) -> Option<&Channel> {
        self.channels.get(name)
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Whether none.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}
