//! Errors of a reconcile run. Each variant has a short, stable
//! [`Error::metric_label`] used as the `reason` of the failure metric, and a
//! CamelCase [`Error::reason`] used in the `Degraded` condition and the
//! Warning Event every failed run reports.

/// Why a reconcile run failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed; `action` says which
    /// (`reading Secret pg`, `listing migration Jobs`, …).
    #[error("{action}: {source}")]
    Kube {
        /// What the call was for.
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// A server-side apply of an owned object was refused.
    #[error("applying {object}: {source}")]
    Apply {
        /// `Kind/name` of the object.
        object: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Adding or removing the finalizer failed.
    #[error("{action} the finalizer: {source}")]
    Finalizer {
        /// `adding` or `removing`.
        action: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Writing the ChatPipeline's status failed.
    #[error("writing the status: {0}")]
    Status(#[source] kube::Error),
    /// The ChatPipeline lacks metadata every stored object has (namespace,
    /// name, uid); only possible with a hand-made object.
    #[error("ChatPipeline has no {0}")]
    MissingMetadata(&'static str),
    /// A Secret the spec references does not exist, or lacks the key.
    #[error("secret {0}")]
    SecretMissing(String),
    /// The Kafka topic could not be checked or created.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The topic exists with a different partition count (never changed by
    /// the operator); retried in case the topic is fixed by hand.
    #[error("topic {topic} has {actual} partitions but the spec asks for {expected}; the operator never changes a topic's partitions (recreate the topic or use another one)")]
    TopicMismatch {
        /// Topic name.
        topic: String,
        /// Partitions in the spec.
        expected: i32,
        /// Partitions on the broker.
        actual: i32,
    },
}

impl Error {
    /// Short label for metrics (`kube`, `secret_missing`, …).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Apply { .. } => "apply",
            Error::Finalizer { .. } => "finalizer",
            Error::Status(_) => "status",
            Error::MissingMetadata(_) => "missing_metadata",
            Error::SecretMissing(_) => "secret_missing",
            Error::Kafka(_) => "kafka",
            Error::TopicMismatch { .. } => "topic_mismatch",
        }
    }

    /// CamelCase reason for the `Degraded` condition and the Warning Event.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubernetesApiError",
            Error::Apply { .. } => "ApplyFailed",
            Error::Finalizer { .. } => "FinalizerFailed",
            Error::Status(_) => "StatusUpdateFailed",
            Error::MissingMetadata(_) => "MissingMetadata",
            Error::SecretMissing(_) => "SecretMissing",
            Error::Kafka(_) => "KafkaUnavailable",
            Error::TopicMismatch { .. } => "TopicMismatch",
        }
    }
}

/// Adds the `action` a Kubernetes call was for to its error.
pub trait KubeContext<T> {
    /// `Err(e)` → `Err(Error::Kube { action, source: e })`.
    fn context(self, action: impl FnOnce() -> String) -> Result<T>;
}

impl<T> KubeContext<T> for std::result::Result<T, kube::Error> {
    fn context(self, action: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Kube {
            action: action(),
            source,
        })
    }
}

/// Result of a reconcile step.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_what_failed() {
        let e: Result<()> = Err(kube::Error::LinesCodecMaxLineLengthExceeded)
            .context(|| "reading Secret pg".to_owned());
        let e = e.unwrap_err();
        assert!(e.to_string().starts_with("reading Secret pg: "), "{e}");
        assert_eq!(e.reason(), "KubernetesApiError");
        assert_eq!(e.metric_label(), "kube");
        let e = Error::TopicMismatch {
            topic: "t".into(),
            expected: 6,
            actual: 3,
        };
        assert!(e.to_string().contains("has 3 partitions"), "{e}");
        assert_eq!(e.reason(), "TopicMismatch");
    }
}
