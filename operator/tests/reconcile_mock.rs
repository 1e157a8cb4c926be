//! Reconcile scenarios against kube-rs's mock API server pattern
//! (`tower_test::mock::pair`): a verifier ([`serve`]) plays the API server,
//! asserts the method, path, query (`fieldManager`, `force`) and body of
//! every request the reconciler sends, in order, answers as the API server
//! would, fails on a request that never comes or one that should not
//! happen, checks each request against the operator's RBAC rules, and
//! checks that every write (create, update, patch) names the operator's
//! field manager.
//!
//! The Kafka topic is ensured through a fake `TopicAdmin`: no broker runs
//! inside a mock-API test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatpipe_core::kafka::TopicState;
use chatpipe_operator::crd::ChatPipeline;
use chatpipe_operator::k8s_events::EventRecorder;
use chatpipe_operator::metrics::Metrics;
use chatpipe_operator::rbac;
use chatpipe_operator::reconcile::{error_policy, reconcile, Context, FIELD_MANAGER, FINALIZER};
use chatpipe_operator::topic::{TopicAdmin, TopicRequest};
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

// ---------------------------------------------------------------- fixtures

/// Topic admin that answers a fixed state and records what was asked.
struct FakeTopics {
    answer: Mutex<Option<anyhow::Result<TopicState>>>,
    calls: Mutex<Vec<TopicRequest>>,
}

impl TopicAdmin for FakeTopics {
    fn ensure<'a>(&'a self, req: &'a TopicRequest) -> BoxFuture<'a, anyhow::Result<TopicState>> {
        self.calls.lock().unwrap().push(req.clone());
        let answer = self
            .answer
            .lock()
            .unwrap()
            .take()
            .unwrap_or(Ok(TopicState::Exists));
        Box::pin(async move { answer })
    }
}

struct Harness {
    ctx: Arc<Context>,
    handle: Handle<Request<Body>, Response<Body>>,
    topics: Arc<FakeTopics>,
}

fn harness(topic: anyhow::Result<TopicState>) -> Harness {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let topics = Arc::new(FakeTopics {
        answer: Mutex::new(Some(topic)),
        calls: Mutex::new(Vec::new()),
    });
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
    let recorder = EventRecorder::new(client.clone(), "chatpipe-operator", None);
    let ctx = Arc::new(Context::new(client, recorder, metrics, topics.clone()));
    Harness {
        ctx,
        handle,
        topics,
    }
}

fn pipeline_json() -> Value {
    json!({
        "apiVersion": "chatpipe.dev/v1alpha1",
        "kind": "ChatPipeline",
        "metadata": {
            "name": "demo",
            "namespace": "chat",
            "uid": "0f6c2f3e-uid",
            "generation": 1,
            "resourceVersion": "100",
            "finalizers": [FINALIZER]
        },
        "spec": {
            "image": "registry.example/chatpipe:1.0.0",
            "kafka": { "bootstrapServers": "kafka:9092", "partitions": 6 },
            "postgres": { "urlSecret": { "name": "pg", "key": "url" } },
            "ingest": {
                "replicas": 2,
                "ingress": { "host": "hooks.example.com", "tlsSecret": "hooks-tls" },
                "allowUnauthenticated": true
            },
            "processor": { "replicas": 3 },
            "api": { "replicas": 1 }
        }
    })
}

fn pipeline(f: impl FnOnce(&mut Value)) -> ChatPipeline {
    let mut v = pipeline_json();
    f(&mut v);
    serde_json::from_value(v).unwrap()
}

/// The label selector of the processor pods, as `status.selector` holds it.
const SELECTOR: &str =
    "app.kubernetes.io/component=processor,app.kubernetes.io/instance=demo,app.kubernetes.io/name=chatpipe";

/// `replicas` desired, `current` existing, `ready` ready: a ComponentStatus.
fn comp(replicas: i32, current: i32, ready: i32) -> Value {
    json!({ "replicas": replicas, "currentReplicas": current, "readyReplicas": ready })
}

fn ready_status(processors: i32) -> Value {
    json!({
        "observedGeneration": 1,
        "conditions": [
            cond("Ready", "True", "AllReplicasReady"),
            cond("Progressing", "False", "Complete"),
            cond("Degraded", "False", "AsExpected"),
        ],
        "ingest": comp(2, 2, 2),
        "processor": comp(processors, processors, processors),
        "api": comp(1, 1, 1),
        "delivery": comp(0, 0, 0),
        "topic": { "name": "chatpipe.events", "partitions": 6 },
        "selector": SELECTOR
    })
}

fn cond(t: &str, s: &str, reason: &str) -> Value {
    json!({
        "type": t, "status": s, "reason": reason, "message": "",
        "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"
    })
}

fn pg_secret(url: &str) -> Value {
    // ByteString serializes as base64, as the API server sends Secret data.
    let data = k8s_openapi::ByteString(url.as_bytes().to_vec());
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "pg", "namespace": "chat" },
        "data": { "url": data }
    })
}

// ------------------------------------------------------------ the verifier

/// How the fake API server answers a request.
enum Reply {
    /// Echo the request body (what an apply returns), with these top-level
    /// fields merged in (e.g. a `status`).
    Echo(Value),
    /// A fixed JSON body with 200.
    Json(Value),
    /// `base` with the request body's top-level fields written over it
    /// (what a status apply returns: the whole object).
    Over(Value),
    /// 404 Not Found.
    NotFound,
    /// An error `Status` with this code, reason and message.
    Error(u16, &'static str, &'static str),
}

type Check = Box<dyn FnOnce(&Value) + Send>;

/// One expected request.
struct Step {
    method: Method,
    /// Exact path, or a prefix when it ends with `*`.
    path: String,
    /// Whether this is a forced server-side apply by our field manager.
    apply: bool,
    /// Query parameters the request must carry.
    query: Vec<(String, String)>,
    check: Check,
    reply: Reply,
}

impl Step {
    /// Requires the query parameter `key=value`.
    fn with_query(mut self, key: &str, value: &str) -> Self {
        self.query.push((key.to_owned(), value.to_owned()));
        self
    }
}

fn step(
    method: Method,
    path: &str,
    apply: bool,
    check: impl FnOnce(&Value) + Send + 'static,
    reply: Reply,
) -> Step {
    Step {
        method,
        path: path.to_owned(),
        apply,
        query: Vec::new(),
        check: Box::new(check),
        reply,
    }
}

/// A server-side apply of `kind` at `path`, checked by `check`.
fn apply(
    path: &str,
    kind: &'static str,
    check: impl FnOnce(&Value) + Send + 'static,
    reply: Reply,
) -> Step {
    step(
        Method::PATCH,
        path,
        true,
        move |body| {
            assert_eq!(body["kind"], kind, "kind of {body}");
            // Every applied object is owned by the ChatPipeline.
            let owners = &body["metadata"]["ownerReferences"];
            assert_eq!(
                owners[0]["uid"], "0f6c2f3e-uid",
                "owner of {}",
                body["metadata"]["name"]
            );
            assert_eq!(owners[0]["kind"], "ChatPipeline");
            assert_eq!(owners[0]["controller"], true);
            assert_eq!(body["metadata"]["namespace"], "chat");
            assert_eq!(
                body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                "chatpipe-operator"
            );
            check(body);
        },
        reply,
    )
}

fn ignore(_: &Value) {}

/// A request as received.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    body: Value,
}

/// Maps a request to the RBAC (group, resource, verb) it needs.
fn rbac_of(method: &Method, path: &str, query: &str) -> (String, String, &'static str) {
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = if seg[0] == "api" {
        (String::new(), &seg[2..])
    } else {
        (seg[1].to_owned(), &seg[3..])
    };
    assert_eq!(rest[0], "namespaces", "namespaced request expected: {path}");
    let resource = match rest.len() {
        3 | 4 => rest[2].to_owned(),
        5 => format!("{}/{}", rest[2], rest[4]),
        _ => panic!("unexpected path {path}"),
    };
    let named = rest.len() >= 4;
    let verb = match *method {
        Method::GET if named => "get",
        Method::GET if query.contains("watch=true") => "watch",
        Method::GET => "list",
        Method::POST => "create",
        Method::PATCH => "patch",
        Method::PUT => "update",
        Method::DELETE => "delete",
        _ => panic!("unexpected method {method}"),
    };
    (group, resource, verb)
}

/// Plays the API server for one scenario.
fn serve(
    mut handle: Handle<Request<Body>, Response<Body>>,
    steps: Vec<Step>,
) -> JoinHandle<Vec<Seen>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        for (i, s) in steps.into_iter().enumerate() {
            let what = format!("step {i}: {} {}", s.method, s.path);
            let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
                .await
                .unwrap_or_else(|_| panic!("{what}: the request never came"))
                .unwrap_or_else(|| panic!("{what}: the client went away first"));
            let method = req.method().clone();
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or_default().to_owned();
            assert_eq!(method, s.method, "{what}: got {method} {path}");
            match s.path.strip_suffix('*') {
                Some(prefix) => assert!(path.starts_with(prefix), "{what}: got {path}"),
                None => assert_eq!(path, s.path, "{what}"),
            }
            let params: Vec<(String, String)> = url_pairs(&query);
            // Every write names the operator's field manager (defect: the
            // finalizer patch and the Events were recorded as `unknown`).
            if matches!(method, Method::POST | Method::PATCH | Method::PUT) {
                assert!(
                    params.contains(&("fieldManager".into(), FIELD_MANAGER.into())),
                    "{what}: a write without the field manager: {query}"
                );
            }
            for want in &s.query {
                assert!(params.contains(want), "{what}: {want:?} missing in {query}");
            }
            if s.apply {
                assert!(
                    params.contains(&("fieldManager".into(), FIELD_MANAGER.into())),
                    "{what}: field manager missing in {query}"
                );
                assert!(
                    params.contains(&("force".into(), "true".into())),
                    "{what}: force missing in {query}"
                );
                assert_eq!(
                    req.headers()["content-type"],
                    "application/apply-patch+yaml",
                    "{what}: not a server-side apply"
                );
            }
            let (group, resource, verb) = rbac_of(&method, &path, &query);
            assert!(
                rbac::is_allowed(&group, &resource, verb),
                "{what}: {verb} {group}/{resource} is not in rbac::REQUIRED_PERMISSIONS"
            );
            if s.apply && !resource.contains('/') {
                assert!(
                    rbac::is_allowed(&group, &resource, "create"),
                    "{what}: an apply that creates needs create on {group}/{resource}"
                );
            }
            let content_type = req
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"))
            };
            if method == Method::PATCH && body.is_array() {
                assert_eq!(
                    content_type.as_deref(),
                    Some("application/json-patch+json"),
                    "{what}: a list of operations is a JSON patch"
                );
            }
            (s.check)(&body);
            let response = match s.reply {
                Reply::Echo(extra) => {
                    let mut out = body.clone();
                    if let (Some(o), Some(e)) = (out.as_object_mut(), extra.as_object()) {
                        for (k, v) in e {
                            o.insert(k.clone(), v.clone());
                        }
                    }
                    Response::builder()
                        .body(Body::from(serde_json::to_vec(&out).unwrap()))
                        .unwrap()
                }
                Reply::Over(mut base) => {
                    if let (Some(o), Some(b)) = (base.as_object_mut(), body.as_object()) {
                        for (k, v) in b {
                            o.insert(k.clone(), v.clone());
                        }
                    }
                    Response::builder()
                        .body(Body::from(serde_json::to_vec(&base).unwrap()))
                        .unwrap()
                }
                Reply::Json(v) => Response::builder()
                    .body(Body::from(serde_json::to_vec(&v).unwrap()))
                    .unwrap(),
                Reply::Error(code, reason, message) => Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .body(Body::from(
                        serde_json::to_vec(&json!({
                            "kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": reason, "code": code, "message": message
                        }))
                        .unwrap(),
                    ))
                    .unwrap(),
                Reply::NotFound => Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Body::from(
                        serde_json::to_vec(&json!({
                            "kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "NotFound", "code": 404, "message": "not found"
                        }))
                        .unwrap(),
                    ))
                    .unwrap(),
            };
            send.send_response(response);
            seen.push(Seen { method, path, body });
        }
        // No request after the last expected one: the client must go away.
        match tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await {
            Ok(None) => {}
            Ok(Some((req, _))) => panic!("unexpected request {} {}", req.method(), req.uri()),
            Err(_) => panic!("the client was never dropped"),
        }
        seen
    })
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding of a query component (`%2F` → `/`, `+` → space).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// Runs one reconcile against `steps`, returning its result, the requests
/// seen and the fake topic admin.
async fn run(
    h: Harness,
    cp: ChatPipeline,
    steps: Vec<Step>,
) -> (Result<Action, String>, Vec<Seen>, Arc<FakeTopics>) {
    let server = serve(h.handle, steps);
    let result = reconcile(Arc::new(cp), h.ctx.clone()).await;
    // The context holds every client: drop it so the verifier sees the end.
    drop(h.ctx);
    let seen = server.await.expect("the API server verifier failed");
    (result.map_err(|e| e.to_string()), seen, h.topics)
}

// --------------------------------------------------------- request shapes

const CP: &str = "/apis/chatpipe.dev/v1alpha1/namespaces/chat/chatpipelines/demo";

fn pod_template(body: &Value) -> &Value {
    &body["spec"]["template"]
}

/// The config checksum on the pod template of the object written at `path`.
fn checksum_of(seen: &[Seen], path: &str) -> String {
    let d = seen.iter().find(|s| s.path.ends_with(path)).unwrap();
    pod_template(&d.body)["metadata"]["annotations"]["chatpipe.dev/config-checksum"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn env_of(body: &Value) -> Vec<(String, Value)> {
    pod_template(body)["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

fn env_value(body: &Value, name: &str) -> Option<String> {
    env_of(body)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, e)| e["value"].as_str().map(str::to_owned))
}

struct Workloads {
    /// Ready replicas reported for ingest, processor, api.
    ready: (i32, i32, i32),
    /// Whether the migration Job reports success.
    migrated: bool,
    /// Expected processor replicas.
    processors: i32,
    /// Whether the spec has an ingress.
    ingress: bool,
}

/// The requests of a full apply, in order: Secret read, ConfigMaps,
/// Services, Deployments, StatefulSet, PDBs, Ingress, then the migration:
/// the Job list (empty) and the new Job.
fn apply_steps(w: Workloads) -> Vec<Step> {
    let migrated = w.migrated;
    let mut steps = workload_steps(w);
    steps.push(list_jobs_step(Vec::new()));
    steps.push(create_job_step(migrated, ignore));
    steps
}

/// What a pipeline with channels or reply rules adds to a run.
#[derive(Default)]
struct Extra {
    /// Secrets read after the database URL's, in order (each once).
    secrets: Vec<Value>,
    /// Delivery replicas expected and ready.
    delivery: (i32, i32),
    /// The rules expected in `demo-replies`; `None`: the lookup of one
    /// left from before (404).
    rules: Option<Value>,
}

/// The requests of a full apply up to the Ingress (no migration steps).
fn workload_steps(w: Workloads) -> Vec<Step> {
    workload_steps_with(w, Extra::default())
}

const REPLIES: &str = "/api/v1/namespaces/chat/configmaps/demo-replies";

/// Whether the processors' pod template mounts the rules directory.
fn mounts_rules(body: &Value) -> bool {
    let spec = &pod_template(body)["spec"];
    let mounted = spec["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["mountPath"] == "/etc/chatpipe/replies" && m["readOnly"] == true);
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["configMap"]["name"] == "demo-replies");
    assert_eq!(mounted, volume, "a mount without its volume or back");
    mounted
}

/// [`workload_steps`] of a pipeline with channels and/or reply rules.
fn workload_steps_with(w: Workloads, extra: Extra) -> Vec<Step> {
    let processors = w.processors;
    let rules = extra.rules.is_some();
    let (delivery, delivery_ready) = extra.delivery;
    let mut steps = vec![step(
        Method::GET,
        "/api/v1/namespaces/chat/secrets/pg",
        false,
        ignore,
        Reply::Json(pg_secret("postgres://pg/chatpipe")),
    )];
    for secret in extra.secrets {
        let name = secret["metadata"]["name"].as_str().unwrap().to_owned();
        steps.push(step(
            Method::GET,
            &format!("/api/v1/namespaces/chat/secrets/{name}"),
            false,
            ignore,
            Reply::Json(secret),
        ));
    }
    steps.push(apply(
        "/api/v1/namespaces/chat/configmaps/demo-ingest-config",
        "ConfigMap",
        |b| {
            assert_eq!(b["data"]["CHATPIPE_KAFKA_BROKERS"], "kafka:9092");
            assert_eq!(b["data"]["CHATPIPE_KAFKA_TOPIC"], "chatpipe.events");
            assert_eq!(b["data"]["CHATPIPE_LOG_FORMAT"], "json");
            assert!(b["data"].get("CHATPIPE_GROUPING_GAP").is_none());
        },
        Reply::Echo(json!({})),
    ));
    steps.push(apply(
        "/api/v1/namespaces/chat/configmaps/demo-processor-config",
        "ConfigMap",
        move |b| {
            assert_eq!(b["data"]["CHATPIPE_KAFKA_TOPIC"], "chatpipe.events");
            assert!(b["data"]["CHATPIPE_GROUPING_GAP"].is_string());
            let file = b["data"].get("CHATPIPE_REPLY_RULES_FILE");
            if rules {
                assert_eq!(file.unwrap(), "/etc/chatpipe/replies/rules.json");
            } else {
                assert!(file.is_none(), "no rules, no rules file");
            }
        },
        Reply::Echo(json!({})),
    ));
    steps.push(apply(
        "/api/v1/namespaces/chat/configmaps/demo-api-config",
        "ConfigMap",
        |b| {
            assert!(b["data"].get("CHATPIPE_KAFKA_BROKERS").is_none());
            assert_eq!(b["data"]["CHATPIPE_LOG_FORMAT"], "json");
        },
        Reply::Echo(json!({})),
    ));
    steps.push(apply(
        "/api/v1/namespaces/chat/configmaps/demo-delivery-config",
        "ConfigMap",
        |b| {
            assert!(b["data"].get("CHATPIPE_KAFKA_BROKERS").is_none());
            assert_eq!(b["data"]["CHATPIPE_LOG_FORMAT"], "json");
            assert!(
                !b["data"].to_string().contains("CHATPIPE_CHANNEL_"),
                "credentials stay in their Secrets"
            );
        },
        Reply::Echo(json!({})),
    ));
    match extra.rules {
        Some(expected) => steps.push(apply(
            REPLIES,
            "ConfigMap",
            move |b| {
                let data = b["data"].as_object().unwrap();
                assert_eq!(data.len(), 1, "{b}");
                let rules: Value =
                    serde_json::from_str(data["rules.json"].as_str().unwrap()).unwrap();
                assert_eq!(rules, expected);
            },
            Reply::Echo(json!({})),
        )),
        None => steps.push(step(Method::GET, REPLIES, false, ignore, Reply::NotFound)),
    }
    steps.extend([
        apply(
            "/api/v1/namespaces/chat/services/demo-ingest",
            "Service",
            |b| {
                assert_eq!(b["spec"]["ports"][0]["port"], 8080);
                assert_eq!(
                    b["spec"]["selector"]["app.kubernetes.io/component"],
                    "ingest"
                );
            },
            Reply::Echo(json!({})),
        ),
        apply(
            "/api/v1/namespaces/chat/services/demo-api",
            "Service",
            |b| {
                assert_eq!(b["spec"]["ports"][0]["port"], 8081);
            },
            Reply::Echo(json!({})),
        ),
        apply(
            "/api/v1/namespaces/chat/services/demo-processor",
            "Service",
            |b| {
                assert_eq!(b["spec"]["clusterIP"], "None");
            },
            Reply::Echo(json!({})),
        ),
        list_policies_step(Vec::new()),
        apply(
            "/apis/apps/v1/namespaces/chat/deployments/demo-ingest",
            "Deployment",
            |b| {
                assert_eq!(b["spec"]["replicas"], 2);
                assert_eq!(
                    env_value(b, "CHATPIPE_LISTEN").as_deref(),
                    Some("0.0.0.0:8080")
                );
                let pg = env_of(b)
                    .into_iter()
                    .find(|(n, _)| n == "CHATPIPE_POSTGRES_URL")
                    .unwrap()
                    .1;
                assert_eq!(
                    pg["valueFrom"]["secretKeyRef"],
                    json!({"name": "pg", "key": "url", "optional": false})
                );
                assert!(
                    pod_template(b)["metadata"]["annotations"]["chatpipe.dev/config-checksum"]
                        .is_string()
                );
            },
            Reply::Echo(json!({"status": {"replicas": 2, "readyReplicas": w.ready.0}})),
        ),
        apply(
            "/apis/apps/v1/namespaces/chat/deployments/demo-api",
            "Deployment",
            |b| {
                assert_eq!(b["spec"]["replicas"], 1);
                assert_eq!(
                    env_value(b, "CHATPIPE_LISTEN").as_deref(),
                    Some("0.0.0.0:8081")
                );
            },
            Reply::Echo(json!({"status": {"replicas": 1, "readyReplicas": w.ready.2}})),
        ),
        apply(
            "/apis/apps/v1/namespaces/chat/deployments/demo-delivery",
            "Deployment",
            move |b| {
                assert_eq!(b["spec"]["replicas"], delivery);
                assert_eq!(
                    pod_template(b)["spec"]["containers"][0]["command"],
                    json!(["chatpipe-delivery"])
                );
                assert_eq!(
                    env_value(b, "CHATPIPE_LISTEN").as_deref(),
                    Some("0.0.0.0:8083")
                );
            },
            Reply::Echo(json!({"status": {"replicas": delivery, "readyReplicas": delivery_ready}})),
        ),
        apply(
            "/apis/apps/v1/namespaces/chat/statefulsets/demo-processor",
            "StatefulSet",
            move |b| {
                assert_eq!(mounts_rules(b), rules, "the rules directory");
                assert_eq!(b["spec"]["replicas"], processors);
                assert_eq!(b["spec"]["serviceName"], "demo-processor");
                assert_eq!(
                    env_value(b, "CHATPIPE_PROCESSOR_REPLICAS"),
                    Some(processors.to_string())
                );
                assert_eq!(
                    env_value(b, "CHATPIPE_LISTEN").as_deref(),
                    Some("0.0.0.0:8082")
                );
            },
            Reply::Echo(json!({"status": {"replicas": processors, "readyReplicas": w.ready.1}})),
        ),
    ]);
    for c in ["ingest", "processor", "api", "delivery"] {
        steps.push(apply(
            &format!("/apis/policy/v1/namespaces/chat/poddisruptionbudgets/demo-{c}"),
            "PodDisruptionBudget",
            |b| assert_eq!(b["spec"]["maxUnavailable"], 1),
            Reply::Echo(json!({})),
        ));
    }
    if w.ingress {
        steps.push(apply(
            "/apis/networking.k8s.io/v1/namespaces/chat/ingresses/demo-ingest",
            "Ingress",
            |b| {
                assert_eq!(b["spec"]["rules"][0]["host"], "hooks.example.com");
                assert_eq!(b["spec"]["tls"][0]["secretName"], "hooks-tls");
            },
            Reply::Echo(json!({})),
        ));
    } else {
        steps.push(step(
            Method::GET,
            "/apis/networking.k8s.io/v1/namespaces/chat/ingresses/demo-ingest",
            false,
            ignore,
            Reply::NotFound,
        ));
    }
    steps
}

const POLICIES: &str = "/apis/networking.k8s.io/v1/namespaces/chat/networkpolicies";

/// The list of this pipeline's NetworkPolicies (by label), answered with
/// `items`: every reconcile looks for the ones to delete.
fn list_policies_step(items: Vec<Value>) -> Step {
    step(
        Method::GET,
        POLICIES,
        false,
        ignore,
        Reply::Json(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList",
            "metadata": {"resourceVersion": "9"}, "items": items
        })),
    )
    .with_query(
        "labelSelector",
        "app.kubernetes.io/instance=demo,app.kubernetes.io/managed-by=chatpipe-operator",
    )
}

const JOBS: &str = "/apis/batch/v1/namespaces/chat/jobs";

/// The list of this pipeline's migration Jobs (by label), answered with `jobs`.
fn list_jobs_step(jobs: Vec<Value>) -> Step {
    step(
        Method::GET,
        JOBS,
        false,
        ignore,
        Reply::Json(json!({
            "apiVersion": "batch/v1", "kind": "JobList",
            "metadata": {"resourceVersion": "7"}, "items": jobs
        })),
    )
    .with_query(
        "labelSelector",
        "app.kubernetes.io/component=migrate,app.kubernetes.io/instance=demo,app.kubernetes.io/name=chatpipe",
    )
}

/// A migration Job of this pipeline as the API server lists it: `state` is
/// `Some("Complete")`/`Some("Failed")` for a finished one, `None` for a
/// running one.
fn listed_job(name: &str, state: Option<&str>) -> Value {
    let status = match state {
        None => json!({"active": 1}),
        Some(t) => json!({
            "succeeded": if t == "Complete" { 1 } else { 0 },
            "conditions": [{"type": t, "status": "True"}]
        }),
    };
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": name, "namespace": "chat",
            "ownerReferences": [{
                "apiVersion": "chatpipe.dev/v1alpha1", "kind": "ChatPipeline", "name": "demo",
                "uid": "0f6c2f3e-uid", "controller": true
            }]
        },
        "spec": {"template": {}},
        "status": status
    })
}

/// The apply that creates the migration Job, answered with a running or a
/// succeeded Job.
fn create_job_step(migrated: bool, check: impl FnOnce(&Value) + Send + 'static) -> Step {
    let job_status = if migrated {
        json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    } else {
        json!({"active": 1})
    };
    apply(
        &format!("{JOBS}/demo-migrate-*"),
        "Job",
        move |b| {
            assert_eq!(
                pod_template(b)["spec"]["containers"][0]["command"],
                json!(["chatpipe-admin", "migrate"])
            );
            assert_eq!(b["spec"]["ttlSecondsAfterFinished"], 3600);
            check(b);
        },
        Reply::Echo(json!({"status": job_status})),
    )
}

/// The deletion of a finished migration Job (with its pods).
fn delete_job_step(name: &str) -> Step {
    step(
        Method::DELETE,
        &format!("{JOBS}/{name}"),
        false,
        |b| assert_eq!(b["propagationPolicy"], "Background", "{b}"),
        Reply::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
    )
}

fn status_step(check: impl FnOnce(&Value) + Send + 'static) -> Step {
    step(
        Method::PATCH,
        &format!("{CP}/status"),
        true,
        move |b| {
            assert_eq!(b["apiVersion"], "chatpipe.dev/v1alpha1");
            assert_eq!(b["kind"], "ChatPipeline");
            assert!(b.get("spec").is_none(), "the status apply carries no spec");
            check(&b["status"]);
        },
        Reply::Over(pipeline_json()),
    )
}

fn event_step(kind: &'static str, reason: &'static str) -> Step {
    step(
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/chat/events",
        false,
        move |b| {
            assert_eq!(b["reason"], reason, "event {b}");
            assert_eq!(b["type"], kind);
            assert_eq!(b["regarding"]["kind"], "ChatPipeline");
            assert_eq!(b["regarding"]["name"], "demo");
            assert_eq!(b["reportingController"], "chatpipe-operator");
        },
        Reply::Echo(json!({})),
    )
}

fn condition<'a>(status: &'a Value, t: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == t)
        .unwrap_or_else(|| panic!("no {t} condition in {status}"))
}

// -------------------------------------------------------------- scenarios

#[tokio::test]
async fn new_object_gets_the_finalizer_first() {
    let h = harness(Ok(TopicState::Exists));
    let cp = pipeline(|v| {
        v["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("finalizers")
            .map(drop)
            .unwrap()
    });
    // The verifier checks the field manager of every write: defect, this
    // patch was recorded under manager `unknown`.
    let steps = vec![step(
        Method::PATCH,
        CP,
        false,
        |b| {
            assert_eq!(
                b,
                &json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
                ])
            );
        },
        Reply::Json(pipeline_json()),
    )
    .with_query("fieldManager", FIELD_MANAGER)];
    let (result, _, topics) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert!(
        topics.calls.lock().unwrap().is_empty(),
        "nothing happens before the finalizer is in place"
    );
}

#[tokio::test]
async fn the_finalizer_is_appended_to_other_finalizers() {
    let h = harness(Ok(TopicState::Exists));
    let cp = pipeline(|v| v["metadata"]["finalizers"] = json!(["other.example/x"]));
    let steps = vec![step(
        Method::PATCH,
        CP,
        false,
        |b| {
            assert_eq!(
                b,
                &json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": ["other.example/x"]},
                    {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}
                ])
            );
        },
        Reply::Json(pipeline_json()),
    )];
    let (result, _, _) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::await_change());
}

#[tokio::test]
async fn first_create_ensures_topic_and_applies_every_object() {
    let h = harness(Ok(TopicState::Created));
    let cp = pipeline(|_| {});
    let mut steps = apply_steps(Workloads {
        ready: (0, 0, 0),
        migrated: false,
        processors: 3,
        ingress: true,
    });
    steps.push(status_step(|s| {
        assert_eq!(s["observedGeneration"], 1);
        let ready = condition(s, "Ready");
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "MigrationPending");
        assert_eq!(ready["observedGeneration"], 1);
        assert_eq!(condition(s, "Progressing")["status"], "True");
        assert_eq!(condition(s, "Degraded")["status"], "False");
        assert_eq!(s["processor"], comp(3, 3, 0));
        assert_eq!(s["ingest"], comp(2, 2, 0));
        assert_eq!(
            s["topic"],
            json!({"name": "chatpipe.events", "partitions": 6})
        );
        assert_eq!(s["selector"], SELECTOR);
        assert!(s.get("lastMigration").is_none(), "not migrated yet");
    }));
    steps.push(event_step("Normal", "TopicCreated"));
    steps.push(event_step("Normal", "MigrationStarted"));
    let metrics = h.ctx.metrics.clone();
    let (result, seen, topics) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(30)));
    assert_eq!(metrics.topics_created.get(), 1);
    assert_eq!(metrics.migration_jobs_created.get(), 1);
    assert_eq!(metrics.reconciliations.get(), 1);
    assert_eq!(metrics.duration.get_sample_count(), 1);
    assert_eq!(
        topics.calls.lock().unwrap().as_slice(),
        [TopicRequest {
            kafka: chatpipe_core::kafka::KafkaConnection::plaintext("kafka:9092"),
            topic: "chatpipe.events".into(),
            partitions: 6,
            replication_factor: 1,
        }]
    );
    // Every workload's pod template carries a checksum, its own.
    let sums: Vec<&Value> = seen
        .iter()
        .filter(|s| s.path.contains("/deployments/") || s.path.contains("/statefulsets/"))
        .map(|s| &pod_template(&s.body)["metadata"]["annotations"]["chatpipe.dev/config-checksum"])
        .collect();
    assert_eq!(sums.len(), 4);
    assert!(sums.iter().all(|s| s.is_string()));
}

/// Defect: the scale subresource had no selector for an HPA, and counted
/// only ready pods. The status carries the processor selector and the
/// pods that exist.
#[tokio::test]
async fn status_reports_the_scale_selector_and_current_replicas() {
    let h = harness(Ok(TopicState::Exists));
    let cp = pipeline(|_| {});
    let mut steps = workload_steps(Workloads {
        ready: (2, 1, 1),
        migrated: true,
        processors: 3,
        ingress: true,
    });
    // Two of three processor pods exist, one is ready.
    let sts = steps
        .iter()
        .position(|s| s.path.ends_with("/statefulsets/demo-processor"))
        .unwrap();
    steps[sts].reply = Reply::Echo(json!({"status": {"replicas": 2, "readyReplicas": 1}}));
    steps.push(list_jobs_step(Vec::new()));
    steps.push(create_job_step(true, ignore));
    steps.push(status_step(|s| {
        assert_eq!(s["selector"], SELECTOR);
        assert_eq!(s["processor"], comp(3, 2, 1));
    }));
    steps.push(event_step("Normal", "MigrationStarted"));
    steps.push(event_step("Normal", "MigrationSucceeded"));
    let (result, _, _) = run(h, cp, steps).await;
    result.unwrap();
}

#[tokio::test]
async fn status_turns_ready_when_pods_are_ready() {
    let h = harness(Ok(TopicState::Exists));
    let cp = pipeline(|v| {
        v["status"] = json!({
            "observedGeneration": 1,
            "conditions": [
                cond("Ready", "False", "ReplicasNotReady"),
                cond("Progressing", "True", "RollingOut"),
                cond("Degraded", "False", "AsExpected"),
            ],
            "processor": {"replicas": 3, "readyReplicas": 1},
            "topic": {"name": "chatpipe.events", "partitions": 6}
        });
    });
    let mut steps = apply_steps(Workloads {
        ready: (2, 3, 1),
        migrated: true,
        processors: 3,
        ingress: true,
    });
    let job = Arc::new(Mutex::new(String::new()));
    let created = job.clone();
    let last = steps.len() - 1;
    steps[last] = create_job_step(true, move |b| {
        *created.lock().unwrap() = b["metadata"]["name"].as_str().unwrap().to_owned();
    });
    let recorded = job.clone();
    steps.push(status_step(move |s| {
        let ready = condition(s, "Ready");
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["reason"], "AllReplicasReady");
        assert_ne!(
            ready["lastTransitionTime"], "2026-01-01T00:00:00Z",
            "Ready changed"
        );
        let progressing = condition(s, "Progressing");
        assert_eq!(progressing["status"], "False");
        assert_eq!(progressing["reason"], "Complete");
        assert_eq!(
            condition(s, "Degraded")["lastTransitionTime"],
            "2026-01-01T00:00:00Z",
            "unchanged condition keeps its transition time"
        );
        assert_eq!(s["processor"], comp(3, 3, 3));
        assert_eq!(s["api"], comp(1, 1, 1));
        // The success is remembered: a Job removed by its TTL is not re-run.
        let m = &s["lastMigration"];
        assert_eq!(m["job"], *recorded.lock().unwrap());
        assert_eq!(m["image"], "registry.example/chatpipe:1.0.0");
        assert!(m["schemaVersion"].as_str().unwrap().starts_with('V'));
    }));
    steps.push(event_step("Normal", "MigrationStarted"));
    steps.push(event_step("Normal", "MigrationSucceeded"));
    steps.push(event_step("Normal", "Ready"));
    let (result, _, _) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
}

/// The name of the migration Job a reconcile of `cp` applies (one full run
/// against a fresh API server with no Jobs).
async fn desired_job_name(cp: ChatPipeline) -> String {
    let h = harness(Ok(TopicState::Exists));
    let mut steps = apply_steps(Workloads {
        ready: (0, 0, 0),
        migrated: false,
        processors: 3,
        ingress: cp.spec.ingest.ingress.is_some(),
    });
    steps.push(status_step(ignore));
    steps.push(event_step("Normal", "MigrationStarted"));
    let (result, seen, _) = run(h, cp, steps).await;
    result.unwrap();
    let job = seen
        .iter()
        .find(|s| s.path.starts_with(&format!("{JOBS}/")))
        .unwrap();
    job.body["metadata"]["name"].as_str().unwrap().to_owned()
}

fn last_migration(job: &str) -> Value {
    json!({
        "job": job,
        "schemaVersion": chatpipe_operator::build::job::schema_version(),
        "image": "registry.example/chatpipe:1.0.0"
    })
}

#[tokio::test]
async fn unchanged_ready_pipeline_writes_no_status() {
    let without_ingress = |v: &mut Value| {
        v["spec"]["ingest"]
            .as_object_mut()
            .unwrap()
            .remove("ingress");
    };
    let job = desired_job_name(pipeline(without_ingress)).await;
    let h = harness(Ok(TopicState::Exists));
    // The status the run computes equals the stored one: no status patch, no event.
    let cp = pipeline(|v| {
        without_ingress(v);
        v["status"] = ready_status(3);
        v["status"]["lastMigration"] = last_migration(&job);
        for c in v["status"]["conditions"].as_array_mut().unwrap() {
            c["message"] = match c["type"].as_str().unwrap() {
                "Ready" => json!("ingest 2/2, processor 3/3, api 1/1"),
                "Progressing" => json!("every component is rolled out"),
                _ => json!(""),
            };
        }
    });
    let mut steps = workload_steps(Workloads {
        ready: (2, 3, 1),
        migrated: true,
        processors: 3,
        ingress: false,
    });
    // The migration ran before (its Job already removed by its TTL): no new Job.
    steps.push(list_jobs_step(Vec::new()));
    let (result, _, _) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn scaling_processors_rolls_the_statefulset() {
    let job = desired_job_name(pipeline(|_| {})).await;
    let h = harness(Ok(TopicState::Exists));
    let cp = pipeline(|v| {
        v["metadata"]["generation"] = json!(2);
        v["spec"]["processor"]["replicas"] = json!(2);
        v["status"] = ready_status(3);
        v["status"]["lastMigration"] = last_migration(&job);
    });
    let mut steps = workload_steps(Workloads {
        ready: (2, 2, 1),
        migrated: true,
        processors: 2,
        ingress: true,
    });
    // Scaling is no reason to migrate.
    steps.push(list_jobs_step(vec![listed_job(&job, Some("Complete"))]));
    steps.push(status_step(|s| {
        assert_eq!(s["observedGeneration"], 2);
        assert_eq!(s["processor"], comp(2, 2, 2));
        for c in s["conditions"].as_array().unwrap() {
            assert_eq!(c["observedGeneration"], 2, "{c}");
        }
    }));
    steps.push(event_step("Normal", "Scaled"));
    let (result, _, _) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn new_generation_not_yet_rolled_out_is_progressing() {
    let job = desired_job_name(pipeline(|_| {})).await;
    let h = harness(Ok(TopicState::Exists));
    let cp = pipeline(|v| {
        v["metadata"]["generation"] = json!(2);
        v["spec"]["processing"] = json!({"groupingGap": "3s"});
        v["status"] = ready_status(3);
        v["status"]["lastMigration"] = last_migration(&job);
    });
    let mut steps = workload_steps(Workloads {
        ready: (2, 3, 1),
        migrated: true,
        processors: 3,
        ingress: true,
    });
    // The StatefulSet controller has not seen the new template yet: its
    // pods are all ready, but on the old revision.
    let sts = steps
        .iter()
        .position(|s| s.path.ends_with("/statefulsets/demo-processor"))
        .unwrap();
    steps[sts].reply = Reply::Echo(json!({
        "metadata": {"name": "demo-processor", "namespace": "chat", "generation": 5},
        "status": {"replicas": 3, "readyReplicas": 3, "observedGeneration": 4,
                   "currentRevision": "r1", "updateRevision": "r1"}
    }));
    // A new grouping gap is no reason to migrate.
    steps.push(list_jobs_step(Vec::new()));
    steps.push(status_step(|s| {
        let ready = condition(s, "Ready");
        assert_eq!(ready["status"], "False");
        assert!(
            ready["message"]
                .as_str()
                .unwrap()
                .contains("rolling out processor"),
            "{ready}"
        );
        assert_eq!(condition(s, "Progressing")["status"], "True");
        assert_eq!(condition(s, "Progressing")["reason"], "RollingOut");
    }));
    let (result, _, _) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(30)));
}

/// The pod-template checksums (ingest, processor, api) and the processor
/// ConfigMap after one reconcile of `cp` with the database URL `pg_url`.
async fn checksums(cp: ChatPipeline, pg_url: &'static str) -> ([String; 3], Value) {
    let h = harness(Ok(TopicState::Exists));
    let mut steps = apply_steps(Workloads {
        ready: (0, 0, 0),
        migrated: false,
        processors: 3,
        ingress: true,
    });
    steps[0] = step(
        Method::GET,
        "/api/v1/namespaces/chat/secrets/pg",
        false,
        ignore,
        Reply::Json(pg_secret(pg_url)),
    );
    steps.push(status_step(ignore));
    steps.push(event_step("Normal", "MigrationStarted"));
    let (result, seen, _) = run(h, cp, steps).await;
    result.unwrap();
    let sum = |path: &str| checksum_of(&seen, path);
    let cm = seen
        .iter()
        .find(|s| s.path.ends_with("/configmaps/demo-processor-config"))
        .unwrap();
    (
        [
            sum("/deployments/demo-ingest"),
            sum("/statefulsets/demo-processor"),
            sum("/deployments/demo-api"),
        ],
        cm.body["data"].clone(),
    )
}

/// A reconcile of a pipeline with `spec.ingest.auth` whose webhook Secret
/// holds `secrets`: the ingest Deployment seen, and the checksums
/// (ingest, processor, api).
async fn with_webhook_secret(secrets: &'static str) -> (Value, [String; 3]) {
    let h = harness(Ok(TopicState::Exists));
    let cp = pipeline(|v| {
        let ingest = v["spec"]["ingest"].as_object_mut().unwrap();
        ingest.remove("allowUnauthenticated");
        ingest.insert(
            "auth".into(),
            json!({ "secretRef": { "name": "webhooks", "key": "secrets" } }),
        );
    });
    let mut steps = apply_steps(Workloads {
        ready: (0, 0, 0),
        migrated: false,
        processors: 3,
        ingress: true,
    });
    steps.insert(
        1,
        step(
            Method::GET,
            "/api/v1/namespaces/chat/secrets/webhooks",
            false,
            ignore,
            Reply::Json(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": { "name": "webhooks", "namespace": "chat" },
                "data": {
                    "secrets": k8s_openapi::ByteString(secrets.as_bytes().to_vec()),
                    "other": k8s_openapi::ByteString(b"ignored".to_vec())
                }
            })),
        ),
    );
    steps.push(status_step(ignore));
    steps.push(event_step("Normal", "MigrationStarted"));
    let (result, seen, _) = run(h, cp, steps).await;
    result.unwrap();
    for cm in seen.iter().filter(|s| s.path.contains("/configmaps/")) {
        assert!(
            !cm.body.to_string().contains("whsec_"),
            "a secret in {}",
            cm.path
        );
    }
    let sum = |path: &str| checksum_of(&seen, path);
    let ingest = seen
        .iter()
        .find(|s| s.path.ends_with("/deployments/demo-ingest"))
        .unwrap()
        .body
        .clone();
    (
        ingest,
        [
            sum("/deployments/demo-ingest"),
            sum("/statefulsets/demo-processor"),
            sum("/deployments/demo-api"),
        ],
    )
}

/// `spec.ingest.auth`: the controller reads the webhook Secret, ingest's
/// pods get it by reference, and a rotation rolls ingest only.
#[tokio::test]
async fn webhook_auth_secret_is_referenced_and_rolls_ingest_only() {
    let (deployment, [ingest, processor, api]) = with_webhook_secret("whsec_AAAA").await;
    let wh = env_of(&deployment)
        .into_iter()
        .find(|(n, _)| *n == chatpipe_settings::ingest::webhook_secrets_env())
        .expect("ingest gets the webhook secrets")
        .1;
    assert!(wh.get("value").is_none(), "never in plain text: {wh}");
    assert_eq!(
        wh["valueFrom"]["secretKeyRef"],
        json!({"name": "webhooks", "key": "secrets", "optional": false})
    );
    let (_, [ingest2, processor2, api2]) = with_webhook_secret("whsec_BBBB whsec_AAAA").await;
    assert_ne!(ingest, ingest2, "a rotation rolls ingest");
    assert_eq!(processor, processor2, "the processors do not read it");
    assert_eq!(api, api2, "the api does not read it");
}

/// Defect: a processor-only setting rolled ingest and api too. Each
/// component's pod template has its own checksum.
#[tokio::test]
async fn a_processor_setting_rolls_only_the_processors() {
    let ([ingest, processor, api], base_cm) =
        checksums(pipeline(|_| {}), "postgres://pg/chatpipe").await;
    let (same, _) = checksums(pipeline(|_| {}), "postgres://pg/chatpipe").await;
    assert_eq!(same, [ingest.clone(), processor.clone(), api.clone()]);
    assert_ne!(ingest, processor, "each component has its own checksum");
    let ([ingest2, processor2, api2], gap_cm) = checksums(
        pipeline(|v| {
            v["spec"]["processing"] = json!({"groupingGap": "3s", "maxGroupMessages": 50})
        }),
        "postgres://pg/chatpipe",
    )
    .await;
    assert_eq!(base_cm["CHATPIPE_GROUPING_GAP"], "5s");
    assert_eq!(gap_cm["CHATPIPE_GROUPING_GAP"], "3s");
    assert_eq!(gap_cm["CHATPIPE_MAX_GROUP_MESSAGES"], "50");
    assert_ne!(
        processor, processor2,
        "a new grouping gap rolls the processors"
    );
    assert_eq!(ingest, ingest2, "ingest does not read the grouping gap");
    assert_eq!(api, api2, "the api does not read the grouping gap");
    let (secret, _) = checksums(pipeline(|_| {}), "postgres://pg2/chatpipe").await;
    assert_ne!(
        secret[0], ingest,
        "a new database URL rolls every component"
    );
    assert_ne!(secret[1], processor);
    assert_ne!(secret[2], api);
}

/// Task 2: the new processing settings reach the processor's ConfigMap as
/// the processor parses them; unset ones are not written.
#[tokio::test]
async fn group_limits_reach_the_processor_config() {
    let (_, cm) = checksums(
        pipeline(|v| {
            v["spec"]["processing"] = json!({
                "maxGroupSpan": "1m30s", "maxGroupMessages": 250, "maxClockSkew": "0s"
            })
        }),
        "postgres://pg/chatpipe",
    )
    .await;
    let parse = |k: &str| chatpipe_core::config::parse_duration(cm[k].as_str().unwrap()).unwrap();
    assert_eq!(parse("CHATPIPE_MAX_GROUP_SPAN"), Duration::from_secs(90));
    assert_eq!(cm["CHATPIPE_MAX_GROUP_MESSAGES"], "250");
    assert_eq!(parse("CHATPIPE_MAX_CLOCK_SKEW"), Duration::ZERO);
    let (_, cm) = checksums(pipeline(|_| {}), "postgres://pg/chatpipe").await;
    for k in [
        "CHATPIPE_MAX_GROUP_SPAN",
        "CHATPIPE_MAX_GROUP_MESSAGES",
        "CHATPIPE_MAX_CLOCK_SKEW",
    ] {
        assert!(
            cm.get(k).is_none(),
            "{k} unset: the processor's default applies"
        );
    }
}

/// Defect: changing `imagePullPolicy` made every run fail with 422 "field
/// is immutable" (a changed template applied under the old Job name). The
/// new policy gives a new Job; the old, finished one is deleted.
#[tokio::test]
async fn a_pull_policy_change_gets_a_new_migration_job() {
    let old = desired_job_name(pipeline(|_| {})).await;
    let h = harness(Ok(TopicState::Exists));
    let cp = pipeline(|v| {
        v["metadata"]["generation"] = json!(2);
        v["spec"]["imagePullPolicy"] = json!("Always");
        v["status"] = ready_status(3);
        v["status"]["lastMigration"] = last_migration(&old);
    });
    let mut steps = workload_steps(Workloads {
        ready: (2, 3, 1),
        migrated: true,
        processors: 3,
        ingress: true,
    });
    steps.push(list_jobs_step(vec![listed_job(&old, Some("Complete"))]));
    steps.push(delete_job_step(&old));
    let old_name = old.clone();
    steps.push(create_job_step(false, move |b| {
        assert_ne!(
            b["metadata"]["name"],
            old_name.as_str(),
            "a new template, a new name"
        );
        assert_eq!(
            pod_template(b)["spec"]["containers"][0]["imagePullPolicy"],
            "Always"
        );
    }));
    steps.push(status_step(|s| {
        assert_eq!(s["observedGeneration"], 2);
        assert_eq!(condition(s, "Ready")["reason"], "MigrationPending");
        assert_eq!(condition(s, "Degraded")["status"], "False");
    }));
    steps.push(event_step("Normal", "MigrationStarted"));
    let (result, _, _) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(30)));
}

/// Defect: several migration Jobs ran at once against one database. A new
/// image waits while the previous migration runs; no Job is created.
#[tokio::test]
async fn a_new_migration_waits_for_the_running_one() {
    let h = harness(Ok(TopicState::Exists));
    let cp = pipeline(|v| {
        v["metadata"]["generation"] = json!(2);
        v["spec"]["image"] = json!("registry.example/chatpipe:1.1.0");
        v["status"] = ready_status(3);
    });
    let mut steps = workload_steps(Workloads {
        ready: (2, 3, 1),
        migrated: false,
        processors: 3,
        ingress: true,
    });
    steps.push(list_jobs_step(vec![
        listed_job("demo-migrate-0000aaaa", None),
        listed_job("demo-migrate-0000bbbb", Some("Failed")),
    ]));
    // The finished one goes; the running one stays, and nothing is created.
    steps.push(delete_job_step("demo-migrate-0000bbbb"));
    steps.push(status_step(|s| {
        let ready = condition(s, "Ready");
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "MigrationPending");
        assert!(
            ready["message"]
                .as_str()
                .unwrap()
                .contains("waiting for migration job demo-migrate-0000aaaa"),
            "{ready}"
        );
        assert_eq!(condition(s, "Degraded")["status"], "False");
    }));
    let metrics = h.ctx.metrics.clone();
    let (result, seen, _) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(30)));
    assert_eq!(metrics.migration_waits.get(), 1);
    assert_eq!(metrics.migration_jobs_created.get(), 0);
    assert!(
        !seen
            .iter()
            .any(|s| s.method == Method::PATCH && s.path.starts_with(&format!("{JOBS}/"))),
        "no second migration Job while one runs"
    );
}

/// Defect: a failed apply left the status alone (old observedGeneration,
/// `Degraded` False or the previous generation's reason) and sent no
/// Event. Every failure now reaches the status and an Event, also when it
/// repeats (then the Event's series counts it; the status is unchanged).
#[tokio::test]
async fn a_failed_apply_degrades_the_status_and_sends_an_event() {
    let h = harness(Ok(TopicState::Exists));
    let ctx = h.ctx.clone();
    let cp = pipeline(|v| {
        v["metadata"]["generation"] = json!(2);
        v["spec"]["processor"]["replicas"] = json!(2);
        v["status"] = ready_status(3);
        // The previous generation's failure, still in the status.
        v["status"]["conditions"][2] = cond("Degraded", "True", "SecretMissing");
    });
    const REFUSED: &str = "StatefulSet.apps \"demo-processor\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas' are forbidden";
    let failing_run = || {
        let mut steps = workload_steps(Workloads {
            ready: (2, 3, 1),
            migrated: true,
            processors: 2,
            ingress: true,
        });
        let sts = steps
            .iter()
            .position(|s| s.path.ends_with("/statefulsets/demo-processor"))
            .unwrap();
        steps.truncate(sts + 1);
        steps[sts].reply = Reply::Error(422, "Invalid", REFUSED);
        steps
    };
    let written = Arc::new(Mutex::new(Value::Null));
    let keep = written.clone();
    let mut steps = failing_run();
    steps.push(status_step(move |s| {
        assert_eq!(s["observedGeneration"], 2);
        let d = condition(s, "Degraded");
        assert_eq!(d["status"], "True");
        assert_eq!(d["reason"], "ApplyFailed");
        assert_eq!(d["observedGeneration"], 2);
        let m = d["message"].as_str().unwrap();
        assert!(
            m.contains("StatefulSet/demo-processor") && m.contains("Forbidden"),
            "{m}"
        );
        assert_eq!(condition(s, "Progressing")["reason"], "ApplyFailed");
        assert_eq!(s["selector"], SELECTOR);
        *keep.lock().unwrap() = s.clone();
    }));
    steps.push(event_step("Warning", "ApplyFailed"));
    // The second, identical failure: no status write, the Event's series.
    steps.extend(failing_run());
    steps.push(step(
        Method::PATCH,
        "/apis/events.k8s.io/v1/namespaces/chat/events/demo.*",
        false,
        |b| {
            assert_eq!(b["reason"], "ApplyFailed");
            assert_eq!(b["series"]["count"], 2);
        },
        Reply::Echo(json!({})),
    ));
    let server = serve(h.handle, steps);
    let cp = Arc::new(cp);
    let err = reconcile(cp.clone(), ctx.clone()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("applying StatefulSet/demo-processor"),
        "{err}"
    );
    assert_eq!(err.metric_label(), "apply");
    let mut again = (*cp).clone();
    again.status = Some(serde_json::from_value(written.lock().unwrap().clone()).unwrap());
    let err = reconcile(Arc::new(again), ctx.clone()).await.unwrap_err();
    assert_eq!(err.reason(), "ApplyFailed");
    drop(ctx);
    drop(h.ctx);
    server.await.unwrap();
}

/// A failure before anything is applied (the finalizer patch refused)
/// reaches the status and an Event too.
#[tokio::test]
async fn a_refused_finalizer_patch_is_reported() {
    let h = harness(Ok(TopicState::Exists));
    let cp = pipeline(|v| {
        v["metadata"].as_object_mut().unwrap().remove("finalizers");
    });
    let steps = vec![
        step(
            Method::PATCH,
            CP,
            false,
            ignore,
            Reply::Error(
                403,
                "Forbidden",
                "chatpipelines.chatpipe.dev \"demo\" is forbidden",
            ),
        ),
        status_step(|s| {
            assert_eq!(s["observedGeneration"], 1);
            let d = condition(s, "Degraded");
            assert_eq!(d["status"], "True");
            assert_eq!(d["reason"], "FinalizerFailed");
            assert!(d["message"]
                .as_str()
                .unwrap()
                .contains("adding the finalizer"));
        }),
        event_step("Warning", "FinalizerFailed"),
    ];
    let (result, _, _) = run(h, cp, steps).await;
    assert!(result.unwrap_err().contains("forbidden"));
}

#[tokio::test]
async fn invalid_spec_degrades_without_touching_running_objects() {
    let h = harness(Ok(TopicState::Exists));
    let cp = pipeline(|v| {
        v["metadata"]["generation"] = json!(2);
        v["spec"]["processor"]["replicas"] = json!(7); // > 6 partitions
        v["status"] = ready_status(3);
    });
    let steps = vec![
        status_step(|s| {
            assert_eq!(s["observedGeneration"], 2);
            let d = condition(s, "Degraded");
            assert_eq!(d["status"], "True");
            assert_eq!(d["reason"], "InvalidSpec");
            assert_eq!(d["observedGeneration"], 2);
            assert!(
                d["message"]
                    .as_str()
                    .unwrap()
                    .contains("spec.processor.replicas"),
                "{d}"
            );
            assert_eq!(condition(s, "Progressing")["reason"], "InvalidSpec");
            // The running pods are left alone and still reported.
            assert_eq!(condition(s, "Ready")["status"], "True");
            assert_eq!(s["processor"], comp(3, 3, 3));
        }),
        event_step("Warning", "InvalidSpec"),
    ];
    let metrics = h.ctx.metrics.clone();
    let (result, seen, topics) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(metrics.invalid_specs.get(), 1);
    assert!(
        topics.calls.lock().unwrap().is_empty(),
        "the topic is not touched"
    );
    assert!(
        seen.iter()
            .all(|s| s.path.starts_with(CP) || s.path.contains("/events")),
        "only the status and an event are written: {seen:?}"
    );
}

/// Durations the API server refuses (`1m 30s`) are refused by the operator
/// too (an object that skipped the CRD's rules, e.g. an older CRD).
#[tokio::test]
async fn a_duration_with_a_space_is_an_invalid_spec() {
    let h = harness(Ok(TopicState::Exists));
    let cp = pipeline(|v| v["spec"]["processing"] = json!({"groupingGap": "1m 30s"}));
    let steps = vec![
        status_step(|s| {
            let d = condition(s, "Degraded");
            assert_eq!(d["reason"], "InvalidSpec");
            assert!(
                d["message"]
                    .as_str()
                    .unwrap()
                    .contains("spec.processing.groupingGap"),
                "{d}"
            );
        }),
        event_step("Warning", "InvalidSpec"),
    ];
    let (result, _, _) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::await_change());
}

#[tokio::test]
async fn paused_pipeline_only_gets_its_status_refreshed() {
    let h = harness(Ok(TopicState::Exists));
    let cp = pipeline(|v| {
        v["metadata"]["annotations"] = json!({"chatpipe.dev/paused": "true"});
        v["spec"]["processor"]["replicas"] = json!(1);
        v["status"] = ready_status(3);
    });
    let deployment = |replicas: i32, ready: i32| {
        Reply::Json(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
            "status": {"replicas": replicas, "readyReplicas": ready}
        }))
    };
    let steps = vec![
        step(
            Method::GET,
            "/apis/apps/v1/namespaces/chat/deployments/demo-ingest",
            false,
            ignore,
            deployment(2, 2),
        ),
        step(
            Method::GET,
            "/apis/apps/v1/namespaces/chat/statefulsets/demo-processor",
            false,
            ignore,
            Reply::Json(json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "demo-processor"},
                "spec": {"replicas": 3, "selector": {}, "template": {}, "serviceName": "demo-processor"},
                "status": {"replicas": 3, "readyReplicas": 3}
            })),
        ),
        step(
            Method::GET,
            "/apis/apps/v1/namespaces/chat/deployments/demo-api",
            false,
            ignore,
            deployment(1, 1),
        ),
        step(
            Method::GET,
            "/apis/apps/v1/namespaces/chat/deployments/demo-delivery",
            false,
            ignore,
            deployment(0, 0),
        ),
        status_step(|s| {
            let p = condition(s, "Progressing");
            assert_eq!(p["status"], "False");
            assert_eq!(p["reason"], "Paused");
            assert_eq!(condition(s, "Ready")["status"], "True");
            // Nothing was scaled: the StatefulSet still has 3.
            assert_eq!(s["processor"], comp(3, 3, 3));
            assert_eq!(s["topic"]["partitions"], 6);
        }),
        event_step("Normal", "Paused"),
    ];
    let (result, _, topics) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
    assert!(topics.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn deletion_runs_cleanup_then_removes_the_finalizer() {
    let h = harness(Ok(TopicState::Exists));
    let cp = pipeline(|v| {
        v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        v["status"] = ready_status(3);
    });
    let steps = vec![
        event_step("Normal", "Deleting"),
        step(
            Method::PATCH,
            CP,
            false,
            |b| {
                assert_eq!(
                    b,
                    &json!([
                        {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                        {"op": "remove", "path": "/metadata/finalizers/0"}
                    ])
                );
            },
            Reply::Json(pipeline_json()),
        )
        .with_query("fieldManager", FIELD_MANAGER),
    ];
    let metrics = h.ctx.metrics.clone();
    let (result, seen, topics) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(metrics.deletions.get(), 1);
    assert!(topics.calls.lock().unwrap().is_empty(), "the topic is kept");
    assert!(
        !seen.iter().any(|s| s.method == Method::DELETE),
        "owned objects go by garbage collection, not by the operator"
    );
}

#[tokio::test]
async fn missing_secret_degrades_and_backs_off() {
    let h = harness(Ok(TopicState::Exists));
    let ctx = h.ctx.clone();
    let cp = pipeline(|_| {});
    let steps = vec![
        step(
            Method::GET,
            "/api/v1/namespaces/chat/secrets/pg",
            false,
            ignore,
            Reply::NotFound,
        ),
        status_step(|s| {
            let d = condition(s, "Degraded");
            assert_eq!(d["status"], "True");
            assert_eq!(d["reason"], "SecretMissing");
        }),
        event_step("Warning", "SecretMissing"),
    ];
    let server = serve(h.handle, steps);
    let cp = Arc::new(cp);
    let err = reconcile(cp.clone(), ctx.clone()).await.unwrap_err();
    assert_eq!(err.metric_label(), "secret_missing");
    assert_eq!(
        error_policy(cp.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(cp.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    assert_eq!(
        ctx.metrics
            .failures
            .with_label_values(&["secret_missing"])
            .get(),
        2
    );
    assert_eq!(ctx.metrics.reconciliations.get(), 1);
    assert_eq!(
        ctx.metrics.duration.get_sample_count(),
        1,
        "the run was timed"
    );
    drop(ctx);
    drop(h.ctx);
    server.await.unwrap();
}

#[tokio::test]
async fn topic_with_other_partitions_degrades_and_applies_nothing() {
    let h = harness(Ok(TopicState::Mismatch { actual: 3 }));
    let cp = pipeline(|_| {});
    let steps = vec![
        step(
            Method::GET,
            "/api/v1/namespaces/chat/secrets/pg",
            false,
            ignore,
            Reply::Json(pg_secret("postgres://pg/chatpipe")),
        ),
        status_step(|s| {
            let d = condition(s, "Degraded");
            assert_eq!(d["status"], "True");
            assert_eq!(d["reason"], "TopicMismatch");
            assert!(d["message"].as_str().unwrap().contains("has 3 partitions"));
            assert_eq!(
                s["topic"],
                json!({"name": "chatpipe.events", "partitions": 3})
            );
        }),
        event_step("Warning", "TopicMismatch"),
    ];
    let (result, _, _) = run(h, cp, steps).await;
    assert!(result.unwrap_err().contains("3 partitions"));
}

#[tokio::test]
async fn broker_unreachable_degrades() {
    let h = harness(Err(anyhow::anyhow!("connection refused")));
    let cp = pipeline(|_| {});
    let steps = vec![
        step(
            Method::GET,
            "/api/v1/namespaces/chat/secrets/pg",
            false,
            ignore,
            Reply::Json(pg_secret("postgres://pg/chatpipe")),
        ),
        status_step(|s| assert_eq!(condition(s, "Degraded")["reason"], "KafkaUnavailable")),
        event_step("Warning", "KafkaUnavailable"),
    ];
    let (result, _, _) = run(h, cp, steps).await;
    assert!(result.unwrap_err().contains("connection refused"));
}

#[tokio::test]
async fn ingress_dropped_from_the_spec_is_deleted() {
    let h = harness(Ok(TopicState::Exists));
    let cp = pipeline(|v| {
        v["spec"]["ingest"]
            .as_object_mut()
            .unwrap()
            .remove("ingress");
        v["status"] = ready_status(3);
    });
    let mut steps = workload_steps(Workloads {
        ready: (2, 3, 1),
        migrated: true,
        processors: 3,
        ingress: false,
    });
    // Replace the 404 lookup by an Ingress this ChatPipeline owns.
    let lookup = steps.len() - 1;
    steps[lookup] = step(
        Method::GET,
        "/apis/networking.k8s.io/v1/namespaces/chat/ingresses/demo-ingest",
        false,
        ignore,
        Reply::Json(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "demo-ingest", "namespace": "chat", "ownerReferences": [{
                "apiVersion": "chatpipe.dev/v1alpha1", "kind": "ChatPipeline", "name": "demo",
                "uid": "0f6c2f3e-uid", "controller": true
            }]}
        })),
    );
    steps.push(step(
        Method::DELETE,
        "/apis/networking.k8s.io/v1/namespaces/chat/ingresses/demo-ingest",
        false,
        ignore,
        Reply::Json(json!({
            "kind": "Status", "apiVersion": "v1", "status": "Success"
        })),
    ));
    steps.push(list_jobs_step(Vec::new()));
    steps.push(create_job_step(true, ignore));
    steps.push(status_step(ignore));
    steps.push(event_step("Normal", "MigrationStarted"));
    steps.push(event_step("Normal", "MigrationSucceeded"));
    let (result, _, _) = run(h, cp, steps).await;
    result.unwrap();
}

// ------------------------------------------------------ network policies

/// The NetworkPolicy `demo-<component>` as the API server lists it, owned
/// by `uid`.
fn listed_policy(component: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {
            "name": format!("demo-{component}"), "namespace": "chat",
            "labels": {
                "app.kubernetes.io/instance": "demo",
                "app.kubernetes.io/managed-by": "chatpipe-operator"
            },
            "ownerReferences": [{
                "apiVersion": "chatpipe.dev/v1alpha1", "kind": "ChatPipeline",
                "name": "demo", "uid": uid, "controller": true
            }]
        },
        "spec": { "podSelector": {} }
    })
}

/// The pod selector of `component`'s pods.
fn pods_of(component: &str) -> Value {
    json!({ "matchLabels": {
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/name": "chatpipe"
    }})
}

/// A rule from the namespaces `from` to TCP `port`.
fn rule(from: Value, port: i32) -> Value {
    json!({
        "from": [{ "namespaceSelector": from }],
        "ports": [{ "port": port, "protocol": "TCP" }]
    })
}

/// Checks one applied policy: selects `component`'s pods, ingress only,
/// with exactly `ingress` as rules.
fn policy_check(component: &'static str, ingress: Value) -> impl FnOnce(&Value) + Send {
    move |b| {
        assert_eq!(b["apiVersion"], "networking.k8s.io/v1");
        assert_eq!(b["metadata"]["name"], format!("demo-{component}"));
        assert_eq!(b["spec"]["podSelector"], pods_of(component));
        assert_eq!(b["spec"]["policyTypes"], json!(["Ingress"]));
        assert!(b["spec"].get("egress").is_none(), "egress stays open");
        assert_eq!(b["spec"]["ingress"], ingress, "rules of demo-{component}");
    }
}

/// A ready pipeline with `networkPolicy` set to `np` (`None`: absent).
fn with_network_policy(np: Option<Value>) -> ChatPipeline {
    pipeline(|v| {
        if let Some(np) = np {
            v["spec"]["networkPolicy"] = np;
        }
        v["status"] = ready_status(3);
    })
}

/// The steps of a reconcile of a ready pipeline, with the NetworkPolicy
/// list replaced by `policies` (spliced in where the list is), then the
/// migration, the status and its events.
fn steps_with_policies(policies: Vec<Step>) -> Vec<Step> {
    let mut steps = workload_steps(Workloads {
        ready: (2, 3, 1),
        migrated: true,
        processors: 3,
        ingress: true,
    });
    let at = steps
        .iter()
        .position(|s| s.path == POLICIES)
        .expect("the policy list step");
    steps.splice(at..=at, policies);
    steps.push(list_jobs_step(Vec::new()));
    steps.push(create_job_step(true, ignore));
    steps.push(status_step(ignore));
    steps.push(event_step("Normal", "MigrationStarted"));
    steps.push(event_step("Normal", "MigrationSucceeded"));
    steps
}

#[tokio::test]
async fn enabled_network_policies_are_applied_before_the_workloads() {
    let cp = with_network_policy(Some(json!({ "enabled": true })));
    let every = json!({});
    let mut policies = vec![
        apply(
            &format!("{POLICIES}/demo-ingest"),
            "NetworkPolicy",
            policy_check(
                "ingest",
                json!([
                    rule(
                        json!({"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}),
                        8080
                    ),
                    rule(every.clone(), 8080)
                ]),
            ),
            Reply::Echo(json!({})),
        ),
        apply(
            &format!("{POLICIES}/demo-processor"),
            "NetworkPolicy",
            policy_check("processor", json!([rule(every.clone(), 8082)])),
            Reply::Echo(json!({})),
        ),
        apply(
            &format!("{POLICIES}/demo-api"),
            "NetworkPolicy",
            policy_check(
                "api",
                json!([
                    rule(
                        json!({"matchLabels": {"kubernetes.io/metadata.name": "chat"}}),
                        8081
                    ),
                    rule(every.clone(), 8081)
                ]),
            ),
            Reply::Echo(json!({})),
        ),
        apply(
            &format!("{POLICIES}/demo-delivery"),
            "NetworkPolicy",
            policy_check("delivery", json!([rule(every, 8083)])),
            Reply::Echo(json!({})),
        ),
        apply(
            &format!("{POLICIES}/demo-migrate"),
            "NetworkPolicy",
            policy_check("migrate", json!([])),
            Reply::Echo(json!({})),
        ),
    ];
    // Already there and all wanted: nothing is deleted.
    policies.push(list_policies_step(
        ["ingest", "processor", "api", "delivery", "migrate"]
            .iter()
            .map(|c| listed_policy(c, "0f6c2f3e-uid"))
            .collect(),
    ));
    let h = harness(Ok(TopicState::Exists));
    let (result, seen, _) = run(h, cp, steps_with_policies(policies)).await;
    result.unwrap();
    // Policies before the pods they protect.
    let first_policy = seen
        .iter()
        .position(|s| s.path.starts_with(POLICIES))
        .unwrap();
    let first_workload = seen
        .iter()
        .position(|s| s.path.contains("/deployments/") || s.path.contains("/statefulsets/"))
        .unwrap();
    assert!(first_policy < first_workload);
}

#[tokio::test]
async fn custom_selectors_reach_the_policies() {
    let monitoring = json!({"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}});
    let edge = json!({"matchLabels": {"team": "edge"}});
    let support =
        json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["support"]}]});
    let cp = with_network_policy(Some(json!({
        "enabled": true,
        "ingressNamespaceSelector": edge,
        "apiNamespaceSelector": support,
        "metricsNamespaceSelector": monitoring,
    })));
    let policies = vec![
        apply(
            &format!("{POLICIES}/demo-ingest"),
            "NetworkPolicy",
            policy_check(
                "ingest",
                json!([rule(edge, 8080), rule(monitoring.clone(), 8080)]),
            ),
            Reply::Echo(json!({})),
        ),
        apply(
            &format!("{POLICIES}/demo-processor"),
            "NetworkPolicy",
            policy_check("processor", json!([rule(monitoring.clone(), 8082)])),
            Reply::Echo(json!({})),
        ),
        apply(
            &format!("{POLICIES}/demo-api"),
            "NetworkPolicy",
            policy_check(
                "api",
                json!([rule(support, 8081), rule(monitoring.clone(), 8081)]),
            ),
            Reply::Echo(json!({})),
        ),
        apply(
            &format!("{POLICIES}/demo-delivery"),
            "NetworkPolicy",
            policy_check("delivery", json!([rule(monitoring, 8083)])),
            Reply::Echo(json!({})),
        ),
        apply(
            &format!("{POLICIES}/demo-migrate"),
            "NetworkPolicy",
            policy_check("migrate", json!([])),
            Reply::Echo(json!({})),
        ),
        list_policies_step(Vec::new()),
    ];
    let h = harness(Ok(TopicState::Exists));
    let (result, _, _) = run(h, cp, steps_with_policies(policies)).await;
    result.unwrap();
}

/// Disabling (or dropping) `networkPolicy` deletes the policies this
/// pipeline made, and only those.
async fn disabling_deletes(np: Option<Value>) {
    let cp = with_network_policy(np);
    let mut policies = vec![list_policies_step(vec![
        listed_policy("ingest", "0f6c2f3e-uid"),
        listed_policy("processor", "0f6c2f3e-uid"),
        listed_policy("api", "0f6c2f3e-uid"),
        listed_policy("delivery", "0f6c2f3e-uid"),
        listed_policy("migrate", "0f6c2f3e-uid"),
        // Same labels, another owner: not ours to delete.
        listed_policy("extra", "someone-else"),
    ])];
    for c in ["ingest", "processor", "api", "delivery", "migrate"] {
        policies.push(step(
            Method::DELETE,
            &format!("{POLICIES}/demo-{c}"),
            false,
            ignore,
            // One already gone: a 404 is not an error.
            if c == "api" {
                Reply::NotFound
            } else {
                Reply::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
            },
        ));
    }
    let h = harness(Ok(TopicState::Exists));
    let (result, seen, _) = run(h, cp, steps_with_policies(policies)).await;
    result.unwrap();
    assert!(!seen
        .iter()
        .any(|s| s.method == Method::PATCH && s.path.starts_with(POLICIES)));
}

#[tokio::test]
async fn disabling_network_policies_deletes_them() {
    disabling_deletes(Some(json!({ "enabled": false }))).await;
}

#[tokio::test]
async fn dropping_network_policies_from_the_spec_deletes_them() {
    disabling_deletes(None).await;
}

// ------------------------------------------------- channels and replies

/// A Secret `name` holding `data` (string values), as the API server sends it.
fn secret(name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                serde_json::to_value(k8s_openapi::ByteString(v.as_bytes().to_vec())).unwrap(),
            )
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": name, "namespace": "chat" },
        "data": data
    })
}

/// The Telegram channel `tg` (credentials in `tg-creds`), and, when
/// `rules`, one FAQ rule; a ready status from before.
fn with_channel(rules: bool) -> ChatPipeline {
    pipeline(|v| {
        v["spec"]["channels"] = json!([
            { "name": "tg", "type": "telegram", "credentialsSecretRef": { "name": "tg-creds" } }
        ]);
        if rules {
            v["spec"]["replies"] =
                json!({ "faq": [{ "keyword": "price", "answer": "It costs 10." }] });
        }
        v["status"] = ready_status(3);
    })
}

fn rules_json() -> Value {
    json!({ "rules": [{ "keyword": "price", "answer": "It costs 10." }] })
}

/// The Secret reference of the env var `name` of the workload `body`.
fn secret_ref_of(body: &Value, name: &str) -> Option<Value> {
    env_of(body)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, e)| {
            assert!(e.get("value").is_none(), "{name} in plain text: {e}");
            e["valueFrom"]["secretKeyRef"].clone()
        })
}

/// One reconcile of [`with_channel`] whose `tg-creds` holds `bot_token`,
/// whose delivery pod is `delivery_ready`: the requests seen and the
/// status written.
async fn channel_run(rules: bool, bot_token: &str, delivery_ready: i32) -> (Vec<Seen>, Value) {
    let job = desired_job_name(pipeline(|_| {})).await;
    let h = harness(Ok(TopicState::Exists));
    let mut cp = with_channel(rules);
    // Migrated before: no new Job, no migration events.
    cp.status.as_mut().unwrap().last_migration =
        Some(serde_json::from_value(last_migration(&job)).unwrap());
    let mut steps = workload_steps_with(
        Workloads {
            ready: (2, 3, 1),
            migrated: true,
            processors: 3,
            ingress: true,
        },
        Extra {
            // Read once, though ingest and delivery each read a key of it.
            secrets: vec![secret(
                "tg-creds",
                &[("botToken", bot_token), ("secretToken", "hook-secret")],
            )],
            delivery: (1, delivery_ready),
            rules: rules.then(rules_json),
        },
    );
    steps.push(list_jobs_step(Vec::new()));
    let status = Arc::new(Mutex::new(Value::Null));
    let keep = status.clone();
    steps.push(status_step(move |s| *keep.lock().unwrap() = s.clone()));
    let (result, seen, _) = run(h, cp, steps).await;
    result.unwrap();
    let status = status.lock().unwrap().clone();
    (seen, status)
}

/// A pipeline with a channel runs delivery: its Deployment reads the
/// sending key (ingest the verifying key) by reference, its replicas are in
/// the status and count for `Ready`.
#[tokio::test]
async fn a_channel_runs_delivery_with_its_credentials() {
    let (seen, status) = channel_run(false, "bot-1", 1).await;
    let body = |path: &str| {
        &seen
            .iter()
            .find(|s| s.path.ends_with(path))
            .unwrap_or_else(|| panic!("{path} not applied"))
            .body
    };
    let delivery = body("/deployments/demo-delivery");
    assert_eq!(
        secret_ref_of(delivery, "CHATPIPE_CHANNEL_TG_BOT_TOKEN"),
        Some(json!({"name": "tg-creds", "key": "botToken", "optional": false}))
    );
    assert_eq!(
        secret_ref_of(delivery, "CHATPIPE_POSTGRES_URL"),
        Some(json!({"name": "pg", "key": "url", "optional": false}))
    );
    assert_eq!(
        secret_ref_of(delivery, "CHATPIPE_CHANNEL_TG_SECRET_TOKEN"),
        None
    );
    let ingest = body("/deployments/demo-ingest");
    assert_eq!(
        secret_ref_of(ingest, "CHATPIPE_CHANNEL_TG_SECRET_TOKEN"),
        Some(json!({"name": "tg-creds", "key": "secretToken", "optional": false}))
    );
    assert_eq!(secret_ref_of(ingest, "CHATPIPE_CHANNEL_TG_BOT_TOKEN"), None);
    for path in [
        "/configmaps/demo-ingest-config",
        "/configmaps/demo-delivery-config",
    ] {
        let channels: Value =
            serde_json::from_str(body(path)["data"]["CHATPIPE_CHANNELS"].as_str().unwrap())
                .unwrap();
        assert_eq!(
            channels,
            json!([{"name": "tg", "type": "telegram"}]),
            "{path}"
        );
    }
    assert_eq!(status["delivery"], comp(1, 1, 1));
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "True");
    assert!(
        ready["message"].as_str().unwrap().contains("delivery 1/1"),
        "{ready}"
    );

    // A delivery pod that is not ready keeps the pipeline not ready.
    let (_, status) = channel_run(false, "bot-1", 0).await;
    assert_eq!(status["delivery"], comp(1, 1, 0));
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert!(
        ready["message"].as_str().unwrap().contains("delivery 0/1"),
        "{ready}"
    );
}

/// Rotating the bot token (read by delivery only) rolls delivery only.
#[tokio::test]
async fn rotating_a_channel_key_rolls_only_its_reader() {
    let paths = [
        "/deployments/demo-ingest",
        "/statefulsets/demo-processor",
        "/deployments/demo-api",
        "/deployments/demo-delivery",
    ];
    let sums = |seen: &[Seen]| paths.map(|p| checksum_of(seen, p));
    let (a, _) = channel_run(false, "bot-1", 1).await;
    let (b, _) = channel_run(false, "bot-2", 1).await;
    let (a, b) = (sums(&a), sums(&b));
    assert_ne!(a[3], b[3], "delivery reads the bot token");
    assert_eq!(a[..3], b[..3], "ingest, processors and api do not");
}

/// FAQ rules: the `demo-replies` ConfigMap holds them and the processors
/// mount it; a rules edit changes the ConfigMap but no checksum.
#[tokio::test]
async fn rules_reach_the_processors_through_a_config_map() {
    let (seen, _) = channel_run(true, "bot-1", 1).await;
    let replies = seen.iter().position(|s| s.path == REPLIES).unwrap();
    let sts = seen
        .iter()
        .position(|s| s.path.ends_with("/statefulsets/demo-processor"))
        .unwrap();
    assert!(
        replies < sts,
        "the ConfigMap exists before the pods mount it"
    );
    let with_rules = checksum_of(&seen, "/statefulsets/demo-processor");

    // Another answer: a new ConfigMap, the same pod template.
    let job = desired_job_name(pipeline(|_| {})).await;
    let h = harness(Ok(TopicState::Exists));
    let mut cp = with_channel(true);
    cp.spec.replies.as_mut().unwrap().faq[0].answer = "It costs 12.".into();
    cp.status.as_mut().unwrap().last_migration =
        Some(serde_json::from_value(last_migration(&job)).unwrap());
    let mut steps = workload_steps_with(
        Workloads {
            ready: (2, 3, 1),
            migrated: true,
            processors: 3,
            ingress: true,
        },
        Extra {
            secrets: vec![secret(
                "tg-creds",
                &[("botToken", "bot-1"), ("secretToken", "hook-secret")],
            )],
            delivery: (1, 1),
            rules: Some(json!({ "rules": [{ "keyword": "price", "answer": "It costs 12." }] })),
        },
    );
    steps.push(list_jobs_step(Vec::new()));
    steps.push(status_step(ignore));
    let (result, seen, _) = run(h, cp, steps).await;
    result.unwrap();
    assert_eq!(
        checksum_of(&seen, "/statefulsets/demo-processor"),
        with_rules,
        "a rules edit rolls no processor"
    );
}

/// The ConfigMap of a `demo-replies` lookup, owned by `owner_uid`.
fn listed_replies(owner_uid: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": "demo-replies", "namespace": "chat", "uid": "cm-uid-1",
            "ownerReferences": [{
                "apiVersion": "chatpipe.dev/v1alpha1", "kind": "ChatPipeline",
                "name": "demo", "uid": owner_uid, "controller": true
            }]
        },
        "data": { "rules.json": "{\"rules\":[]}" }
    })
}

/// Removing the rules deletes the ConfigMap this pipeline made (that very
/// one: a UID precondition); one someone else owns is left alone.
#[tokio::test]
async fn removing_the_rules_deletes_their_config_map() {
    for (owner, deleted) in [("0f6c2f3e-uid", true), ("someone-else", false)] {
        let h = harness(Ok(TopicState::Exists));
        let cp = with_channel(false);
        let mut steps = workload_steps_with(
            Workloads {
                ready: (2, 3, 1),
                migrated: true,
                processors: 3,
                ingress: true,
            },
            Extra {
                secrets: vec![secret(
                    "tg-creds",
                    &[("botToken", "bot-1"), ("secretToken", "hook-secret")],
                )],
                delivery: (1, 1),
                rules: None,
            },
        );
        let lookup = steps.iter().position(|s| s.path == REPLIES).unwrap();
        steps[lookup].reply = Reply::Json(listed_replies(owner));
        if deleted {
            steps.insert(
                lookup + 1,
                step(
                    Method::DELETE,
                    REPLIES,
                    false,
                    |b| assert_eq!(b["preconditions"]["uid"], "cm-uid-1", "{b}"),
                    Reply::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
                ),
            );
        }
        steps.push(list_jobs_step(Vec::new()));
        steps.push(create_job_step(true, ignore));
        steps.push(status_step(ignore));
        steps.push(event_step("Normal", "MigrationStarted"));
        steps.push(event_step("Normal", "MigrationSucceeded"));
        let (result, seen, _) = run(h, cp, steps).await;
        result.unwrap();
        assert_eq!(
            seen.iter().any(|s| s.method == Method::DELETE),
            deleted,
            "owner {owner}"
        );
    }
}

/// A channel Secret that does not exist, or lacks a key a component
/// reads, blocks the rollout as `SecretMissing` before anything is applied.
#[tokio::test]
async fn a_missing_channel_secret_or_key_is_secret_missing() {
    for (reply, expected) in [
        (
            Reply::NotFound,
            "tg-creds (spec.channels[].credentialsSecretRef) not found",
        ),
        (
            // Ingest's key is there, delivery's is not.
            Reply::Json(secret("tg-creds", &[("secretToken", "hook-secret")])),
            "has no key botToken",
        ),
    ] {
        let h = harness(Ok(TopicState::Exists));
        let steps = vec![
            step(
                Method::GET,
                "/api/v1/namespaces/chat/secrets/pg",
                false,
                ignore,
                Reply::Json(pg_secret("postgres://pg/chatpipe")),
            ),
            step(
                Method::GET,
                "/api/v1/namespaces/chat/secrets/tg-creds",
                false,
                ignore,
                reply,
            ),
            status_step(move |s| {
                let d = condition(s, "Degraded");
                assert_eq!(d["status"], "True");
                assert_eq!(d["reason"], "SecretMissing");
                assert!(d["message"].as_str().unwrap().contains(expected), "{d}");
            }),
            event_step("Warning", "SecretMissing"),
        ];
        let (result, _, topics) = run(h, with_channel(false), steps).await;
        assert!(result.unwrap_err().contains(expected));
        assert!(topics.calls.lock().unwrap().is_empty(), "nothing went on");
    }
}
