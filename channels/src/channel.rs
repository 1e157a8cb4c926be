//! A declared channel with the credentials one binary read for it.

use std::collections::BTreeMap;

use chatpipe_settings::channels::{
    read_credentials, ChannelDecl, ChannelType, Channels, CredentialReader,
};

/// A channel and its credentials (Secret key → value, e.g. `botToken`).
#[derive(Clone)]
pub struct Channel {
    /// What the pipeline declares.
    pub decl: ChannelDecl,
    /// The credentials this binary reads (see
    /// [`ChannelType::secret_keys`]).
    pub credentials: BTreeMap<String, String>,
}

impl std::fmt::Debug for Channel {
    /// Names the credentials, never their values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("decl", &self.decl)
            .field("credentials", &self.credentials.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A credential the channel does not have.
#[derive(Debug, thiserror::Error)]
#[error("channel {channel:?} has no {key:?} credential")]
pub struct MissingCredential {
    /// The channel.
    pub channel: String,
    /// The Secret key.
    pub key: String,
}

impl Channel {
    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.decl.name
    }

    /// The provider.
    pub fn kind(&self) -> ChannelType {
        self.decl.kind
    }

    /// Credential `key` (a Secret key such as `botToken`).
    pub fn credential(&self, key: &str) -> Result<&str, MissingCredential> {
        self.credentials
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| MissingCredential {
                channel: self.decl.name.clone(),
                key: key.to_owned(),
            })
    }

    /// Every declared channel with the credentials `reader` needs, from the
    /// process environment; the error names every missing variable.
    pub fn from_env(channels: &Channels, reader: CredentialReader) -> Result<Vec<Channel>, String> {
        Self::from_lookup(channels, reader, |k| std::env::var(k).ok())
    }

    /// As [`Channel::from_env`], reading variables with `lookup`.
    pub fn from_lookup(
        channels: &Channels,
        reader: CredentialReader,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<Channel>, String> {
        Ok(read_credentials(channels, reader, lookup)?
            .into_iter()
            .map(|(decl, credentials)| Channel { decl, credentials })
            .collect())
    }
}
