//! The controller process: watches ChatPipelines (and the Deployments,
//! StatefulSets and Jobs they own), runs [`crate::reconcile::reconcile`],
//! and serves `/healthz`, `/readyz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chatpipe_core::config::{parse_duration, LogArgs};
use chatpipe_settings::common::{KAFKA_ADMIN_TIMEOUT_ENV, LISTEN_ENV};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::Client;
use prometheus::Registry;

use crate::build::labels::MANAGED_BY;
use crate::crd::ChatPipeline;
use crate::events::{
    ControllerError, ControllerStarted, ControllerStopped, InternalEvent, OpsListening,
    OpsServerStopped, Reconciled, StreamError,
};
use crate::k8s_events::EventRecorder;
use crate::metrics::Metrics;
use crate::reconcile::{error_policy, reconcile, Context, FIELD_MANAGER};
use crate::topic::KafkaTopicAdmin;

/// User agent of every request to the API server:
/// `chatpipe-operator/<version>`. (Without one, the API server records
/// writes that name no field manager as manager `unknown`.)
pub fn user_agent() -> String {
    format!("{FIELD_MANAGER}/{}", env!("CARGO_PKG_VERSION"))
}

/// `config` with [`user_agent`] on every request.
pub fn with_user_agent(mut config: kube::Config) -> anyhow::Result<kube::Config> {
    let value = http::HeaderValue::from_str(&user_agent()).context("building the user agent")?;
    config
        .headers
        .retain(|(name, _)| name != http::header::USER_AGENT);
    config.headers.push((http::header::USER_AGENT, value));
    Ok(config)
}

/// The Kubernetes client of the controller: the inferred configuration
/// (in-cluster or kubeconfig) with the operator's user agent.
pub async fn client() -> anyhow::Result<Client> {
    let config = kube::Config::infer()
        .await
        .context("loading the Kubernetes client configuration")?;
    Client::try_from(with_user_agent(config)?).context("creating a Kubernetes client")
}

/// Outcome of one reconcile as the controller's stream reports it.
pub type RunResult = Result<(ObjectRef<ChatPipeline>, Action), StreamError>;

/// The level at which the controller logs `result`: debug for a success,
/// [`ControllerError::level`] for an error (a warning only for what is not
/// reported elsewhere and needs a look).
pub fn log_level(result: &RunResult) -> tracing::Level {
    match result {
        Ok(_) => tracing::Level::DEBUG,
        Err(error) => ControllerError { error }.level(),
    }
}

fn report_result(result: &RunResult, metrics: &Metrics) {
    match result {
        Ok((obj, action)) => Reconciled {
            pipeline: obj,
            action,
        }
        .emit(metrics),
        Err(error) => ControllerError { error }.emit(metrics),
    }
}

/// Arguments of `chatpipe-operator controller`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Address of the ops endpoints (/healthz, /readyz, /metrics).
    #[arg(long, env = LISTEN_ENV, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Timeout of each Kafka admin operation (topic check/creation).
    #[arg(long, env = KAFKA_ADMIN_TIMEOUT_ENV, default_value = "10s", value_parser = parse_duration)]
    pub kafka_admin_timeout: Duration,
    /// Name of this controller instance in Events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME", default_value = "chatpipe-operator")]
    pub instance: String,
    /// Namespaces whose ChatPipelines to reconcile, comma separated (one
    /// watch per namespace; the chart's `watchNamespaces`, with namespaced
    /// Roles). Empty: every namespace (needs the ClusterRole).
    #[arg(long, env = WATCH_NAMESPACES_ENV, value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Environment variable of [`ControllerArgs::watch_namespaces`].
pub const WATCH_NAMESPACES_ENV: &str = "CHATPIPE_WATCH_NAMESPACES";

/// The namespaces to watch from `--watch-namespaces`: trimmed, empty
/// entries dropped, duplicates removed (first kept). Empty: every
/// namespace. Fails on a name that is not a namespace name (a DNS label).
pub fn watch_namespaces(list: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for ns in list.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let valid = ns.len() <= 63
            && ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !ns.starts_with('-')
            && !ns.ends_with('-');
        if !valid {
            anyhow::bail!(
                "--watch-namespaces: {ns:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"
            );
        }
        if !out.iter().any(|o| o == ns) {
            out.push(ns.to_owned());
        }
    }
    Ok(out)
}

/// `Api::namespaced` in `ns`, or `Api::all` when `ns` is `None`.
fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
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
    OpsListening {
        listen: args.listen,
    }
    .emit(&metrics);
    let ops_metrics = metrics.clone();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            OpsServerStopped { error: &e }.emit(&ops_metrics);
        }
    });

    let namespaces = watch_namespaces(&args.watch_namespaces)?;
    // `None`: one watch over every namespace.
    let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    let client = client().await?;
    for ns in &scopes {
        let pipelines: Api<ChatPipeline> = scoped(&client, *ns);
        let scope = ns.map_or("every namespace".to_owned(), |n| format!("namespace {n}"));
        pipelines
            .list(&ListParams::default().limit(1))
            .await
            .with_context(|| format!("listing ChatPipelines in {scope} failed; is the CRD installed (chatpipe-operator crdgen | kubectl apply -f -) and may the operator list them there?"))?;
    }

    let recorder = EventRecorder::new(client.clone(), FIELD_MANAGER, Some(&args.instance));
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
    let metrics = ctx.metrics.clone();
    ready.store(true, Ordering::Relaxed);
    ControllerStarted.emit(&metrics);
    // One controller per watched scope: a ChatPipeline lives in exactly one
    // namespace, so no two controllers ever reconcile the same object.
    let controllers = scopes.iter().map(|ns| {
        let metrics = metrics.clone();
        Controller::new(
            scoped::<ChatPipeline>(&client, *ns),
            watcher::Config::default().any_semantic(),
        )
        .owns(scoped::<Deployment>(&client, *ns), owned.clone())
        .owns(scoped::<StatefulSet>(&client, *ns), owned.clone())
        .owns(scoped::<Job>(&client, *ns), owned.clone())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(move |res| {
            report_result(&res, &metrics);
            async {}
        })
    });
    futures::future::join_all(controllers).await;
    ControllerStopped.emit(&metrics);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::controller;

    fn not_found() -> Box<ObjectRef<kube::api::DynamicObject>> {
        Box::new(
            ObjectRef::<ChatPipeline>::new("demo")
                .within("chat")
                .erase(),
        )
    }

    /// Defect: a deleted pipeline logged four WARN "not found in local
    /// store" lines (one per owned workload and Job being collected).
    #[test]
    fn a_deleted_pipeline_is_not_a_warning() {
        let r: RunResult = Err(controller::Error::ObjectNotFound(not_found()));
        assert!(r
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("not found in local store"));
        assert_eq!(log_level(&r), tracing::Level::DEBUG);
    }

    #[test]
    fn reconcile_errors_are_logged_once_and_queue_errors_warn() {
        let r: RunResult = Err(controller::Error::ReconcilerFailed(
            crate::error::Error::MissingMetadata("uid"),
            not_found(),
        ));
        assert_eq!(log_level(&r), tracing::Level::DEBUG, "error_policy warns");
        let r: RunResult = Err(controller::Error::QueueError(
            watcher::Error::NoResourceVersion,
        ));
        assert_eq!(log_level(&r), tracing::Level::WARN);
        let r: RunResult = Ok((
            ObjectRef::new("demo").within("chat"),
            Action::await_change(),
        ));
        assert_eq!(log_level(&r), tracing::Level::DEBUG);
    }

    #[test]
    fn watch_namespaces_are_cleaned_and_checked() {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(watch_namespaces(&[]).unwrap().is_empty());
        assert!(watch_namespaces(&v(&[""])).unwrap().is_empty());
        assert_eq!(
            watch_namespaces(&v(&[" chat", "team-b", "", "chat"])).unwrap(),
            ["chat", "team-b"]
        );
        for bad in ["Chat", "a_b", "-a", "a-", "a/b", &"a".repeat(64)] {
            let e = watch_namespaces(&v(&[bad])).unwrap_err().to_string();
            assert!(e.contains("--watch-namespaces"), "{bad}: {e}");
        }
    }

    /// Defect: requests carried no user agent.
    #[test]
    fn the_client_config_names_the_operator() {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let config = with_user_agent(with_user_agent(config).unwrap()).unwrap();
        let agents: Vec<_> = config
            .headers
            .iter()
            .filter(|(k, _)| k == http::header::USER_AGENT)
            .map(|(_, v)| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            agents,
            [format!("chatpipe-operator/{}", env!("CARGO_PKG_VERSION"))]
        );
    }

    /// The user agent reaches the API server: a request of a client built
    /// from the config, to a fake API server on the loopback address.
    #[tokio::test]
    async fn requests_carry_the_user_agent() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let record = seen.clone();
        let app = axum::Router::new().fallback(move |headers: http::HeaderMap| {
            let record = record.clone();
            async move {
                let ua = headers
                    .get(http::header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                record.lock().unwrap().push(ua);
                axum::Json(serde_json::json!({
                    "apiVersion": "chatpipe.dev/v1alpha1",
                    "kind": "ChatPipelineList",
                    "metadata": {"resourceVersion": "1"},
                    "items": []
                }))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = Client::try_from(with_user_agent(config).unwrap()).unwrap();
        let api: Api<ChatPipeline> = Api::all(client);
        api.list(&ListParams::default()).await.unwrap();
        server.abort();
        assert_eq!(*seen.lock().unwrap(), [user_agent()]);
    }
}
