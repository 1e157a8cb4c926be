//! The controller process: watches ChatPipelines (and the Deployments,
//! StatefulSets and Jobs they own), runs [`crate::reconcile::reconcile`],
//! and serves `/healthz`, `/readyz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chatpipe_core::config::{parse_duration, LogArgs};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{watcher, Controller};
use kube::Client;
use prometheus::Registry;

use crate::build::labels::MANAGED_BY;
use crate::crd::ChatPipeline;
use crate::metrics::Metrics;
use crate::reconcile::{error_policy, reconcile, Context};
use crate::topic::KafkaTopicAdmin;

/// Arguments of `chatpipe-operator controller`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Address of the ops endpoints (/healthz, /readyz, /metrics).
    #[arg(long, env = "CHATPIPE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Timeout of each Kafka admin operation (topic check/creation).
    #[arg(long, env = "CHATPIPE_KAFKA_ADMIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub kafka_admin_timeout: Duration,
    /// Name of this controller instance in Events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME", default_value = "chatpipe-operator")]
    pub instance: String,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    chatpipe_core::telemetry::init_tracing(&args.log);
    let registry = Registry::new();
    let metrics = Metrics::register(&registry).context("registering metrics")?;
    let ready = Arc::new(AtomicBool::new(false));

    let ready_check = ready.clone();
    let readiness: chatpipe_core::ops::ReadinessCheck = Arc::new(move || {
        let ready = ready_check.load(Ordering::Relaxed);
        Box::pin(async move {
            if ready {
                Ok(())
            } else {
                Err("controller not started".to_owned())
            }
        })
    });
    let app = chatpipe_core::ops::router(registry, readiness);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, "ops endpoints listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "ops server stopped");
        }
    });

    let client = Client::try_default()
        .await
        .context("creating a Kubernetes client")?;
    let pipelines: Api<ChatPipeline> = Api::all(client.clone());
    pipelines
        .list(&ListParams::default().limit(1))
        .await
        .context("listing ChatPipelines failed; is the CRD installed? (chatpipe-operator crdgen | kubectl apply -f -)")?;

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "chatpipe-operator".into(),
            instance: Some(args.instance.clone()),
        },
    );
    let ctx = Arc::new(Context::new(
        client.clone(),
        recorder,
        metrics,
        Arc::new(KafkaTopicAdmin {
            timeout: args.kafka_admin_timeout,
        }),
    ));
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    ready.store(true, Ordering::Relaxed);
    tracing::info!("controller started");
    Controller::new(pipelines, watcher::Config::default().any_semantic())
        .owns(Api::<Deployment>::all(client.clone()), owned.clone())
        .owns(Api::<StatefulSet>::all(client.clone()), owned.clone())
        .owns(Api::<Job>::all(client.clone()), owned)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, action)) => tracing::debug!(pipeline = %obj, ?action, "reconciled"),
                Err(e) => tracing::warn!(error = %e, "reconcile error"),
            }
        })
        .await;
    tracing::info!("controller stopped");
    Ok(())
}
