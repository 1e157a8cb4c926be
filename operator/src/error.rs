//! Errors of a reconcile run. Each variant has a short, stable
//! [`Error::metric_label`] used as the `reason` of the failure metric.

use kube::runtime::finalizer;

/// Why a reconcile run failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
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
    #[error("topic {topic} has {actual} partitions, the spec asks for {expected}")]
    TopicMismatch {
        /// Topic name.
        topic: String,
        /// Partitions in the spec.
        expected: i32,
        /// Partitions on the broker.
        actual: i32,
    },
    /// Adding or removing the finalizer failed, or a reconcile inside it.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// Short label for metrics (`kube`, `secret_missing`, …).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::MissingMetadata(_) => "missing_metadata",
            Error::SecretMissing(_) => "secret_missing",
            Error::Kafka(_) => "kafka",
            Error::TopicMismatch { .. } => "topic_mismatch",
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => {
                    inner.metric_label()
                }
                _ => "finalizer",
            },
        }
    }
}

/// Result of a reconcile step.
pub type Result<T, E = Error> = std::result::Result<T, E>;
