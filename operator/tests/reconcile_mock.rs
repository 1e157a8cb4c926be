//! Reconcile scenarios against kube-rs's mock API server pattern
//! (`tower_test::mock::pair`): an [`ApiServerVerifier`] plays the API
//! server, asserts the method, path, query (`fieldManager`, `force`) and
//! body of every request the reconciler sends, in order, answers as the API
//! server would, fails on a request that never comes or one that should not
//! happen, and checks each request against the operator's RBAC rules.
//!
//! The Kafka topic is ensured through a fake `TopicAdmin`: no broker runs
//! inside a mock-API test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatpipe_core::kafka::TopicState;
use chatpipe_operator::crd::ChatPipeline;
use chatpipe_operator::metrics::Metrics;
use chatpipe_operator::rbac;
use chatpipe_operator::reconcile::{error_policy, reconcile, Context, FIELD_MANAGER, FINALIZER};
use chatpipe_operator::topic::{TopicAdmin, TopicRequest};
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
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
    let recorder = Recorder::new(client.clone(), "chatpipe-operator".into());
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
                "ingress": { "host": "hooks.example.com", "tlsSecret": "hooks-tls" }
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

fn ready_status(processors: i32) -> Value {
    json!({
        "observedGeneration": 1,
        "conditions": [
            cond("Ready", "True", "AllReplicasReady"),
            cond("Progressing", "False", "Complete"),
            cond("Degraded", "False", "AsExpected"),
        ],
        "ingest": { "replicas": 2, "readyReplicas": 2 },
        "processor": { "replicas": processors, "readyReplicas": processors },
        "api": { "replicas": 1, "readyReplicas": 1 },
        "topic": { "name": "chatpipe.events", "partitions": 6 }
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
}

type Check = Box<dyn FnOnce(&Value) + Send>;

/// One expected request.
struct Step {
    method: Method,
    /// Exact path, or a prefix when it ends with `*`.
    path: String,
    /// Whether this is a forced server-side apply by our field manager.
    apply: bool,
    check: Check,
    reply: Reply,
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
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"))
            };
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
            (k.to_owned(), v.to_owned())
        })
        .collect()
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

/// The requests of a full apply, in order: Secret read, ConfigMap,
/// Services, Deployments, StatefulSet, PDBs, Ingress, Job.
fn apply_steps(w: Workloads) -> Vec<Step> {
    let processors = w.processors;
    let mut steps = vec![
        step(
            Method::GET,
            "/api/v1/namespaces/chat/secrets/pg",
            false,
            ignore,
            Reply::Json(pg_secret("postgres://pg/chatpipe")),
        ),
        apply(
            "/api/v1/namespaces/chat/configmaps/demo-config",
            "ConfigMap",
            |b| {
                assert_eq!(b["data"]["CHATPIPE_KAFKA_BROKERS"], "kafka:9092");
                assert_eq!(b["data"]["CHATPIPE_KAFKA_TOPIC"], "chatpipe.events");
                assert_eq!(b["data"]["CHATPIPE_LOG_FORMAT"], "json");
            },
            Reply::Echo(json!({})),
        ),
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
            "/apis/apps/v1/namespaces/chat/statefulsets/demo-processor",
            "StatefulSet",
            move |b| {
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
    ];
    for c in ["ingest", "processor", "api"] {
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
    let job_status = if w.migrated {
        json!({"succeeded": 1})
    } else {
        json!({"active": 1})
    };
    steps.push(apply(
        "/apis/batch/v1/namespaces/chat/jobs/demo-migrate-*",
        "Job",
        |b| {
            assert_eq!(
                pod_template(b)["spec"]["containers"][0]["command"],
                json!(["chatpipe-admin", "migrate"])
            );
        },
        Reply::Echo(json!({"status": job_status})),
    ));
    steps
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
    )];
    let (result, _, topics) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert!(
        topics.calls.lock().unwrap().is_empty(),
        "nothing happens before the finalizer is in place"
    );
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
        assert_eq!(s["processor"], json!({"replicas": 3, "readyReplicas": 0}));
        assert_eq!(s["ingest"], json!({"replicas": 2, "readyReplicas": 0}));
        assert_eq!(
            s["topic"],
            json!({"name": "chatpipe.events", "partitions": 6})
        );
    }));
    steps.push(event_step("Normal", "TopicCreated"));
    let (result, seen, topics) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(30)));
    assert_eq!(
        topics.calls.lock().unwrap().as_slice(),
        [TopicRequest {
            brokers: "kafka:9092".into(),
            topic: "chatpipe.events".into(),
            partitions: 6,
            replication_factor: 1,
        }]
    );
    // Every pod template carries the same checksum.
    let sums: Vec<&Value> = seen
        .iter()
        .filter(|s| s.path.contains("/deployments/") || s.path.contains("/statefulsets/"))
        .map(|s| &pod_template(&s.body)["metadata"]["annotations"]["chatpipe.dev/config-checksum"])
        .collect();
    assert_eq!(sums.len(), 3);
    assert!(sums.iter().all(|s| *s == sums[0]));
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
    steps.push(status_step(|s| {
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
        assert_eq!(s["processor"], json!({"replicas": 3, "readyReplicas": 3}));
        assert_eq!(s["api"], json!({"replicas": 1, "readyReplicas": 1}));
    }));
    steps.push(event_step("Normal", "Ready"));
    let (result, _, _) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn unchanged_ready_pipeline_writes_no_status() {
    let h = harness(Ok(TopicState::Exists));
    // The status the run computes equals the stored one: no status patch, no event.
    let cp = pipeline(|v| {
        v["spec"]["ingest"]
            .as_object_mut()
            .unwrap()
            .remove("ingress");
        v["status"] = ready_status(3);
        for c in v["status"]["conditions"].as_array_mut().unwrap() {
            c["message"] = match c["type"].as_str().unwrap() {
                "Ready" => json!("ingest 2/2, processor 3/3, api 1/1"),
                "Progressing" => json!("every component is rolled out"),
                _ => json!(""),
            };
        }
    });
    let steps = apply_steps(Workloads {
        ready: (2, 3, 1),
        migrated: true,
        processors: 3,
        ingress: false,
    });
    let (result, _, _) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn scaling_processors_rolls_the_statefulset() {
    let h = harness(Ok(TopicState::Exists));
    let cp = pipeline(|v| {
        v["metadata"]["generation"] = json!(2);
        v["spec"]["processor"]["replicas"] = json!(2);
        v["status"] = ready_status(3);
    });
    let mut steps = apply_steps(Workloads {
        ready: (2, 2, 1),
        migrated: true,
        processors: 2,
        ingress: true,
    });
    steps.push(status_step(|s| {
        assert_eq!(s["observedGeneration"], 2);
        assert_eq!(s["processor"], json!({"replicas": 2, "readyReplicas": 2}));
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
    let h = harness(Ok(TopicState::Exists));
    let cp = pipeline(|v| {
        v["metadata"]["generation"] = json!(2);
        v["spec"]["processing"] = json!({"groupingGap": "3s"});
        v["status"] = ready_status(3);
    });
    let mut steps = apply_steps(Workloads {
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

/// The pod-template checksum of the ingest Deployment after one reconcile of `cp`.
async fn ingest_checksum(cp: ChatPipeline, pg_url: &'static str) -> (String, Value) {
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
    let (result, seen, _) = run(h, cp, steps).await;
    result.unwrap();
    let d = seen
        .iter()
        .find(|s| s.path.ends_with("/deployments/demo-ingest"))
        .unwrap();
    let cm = seen
        .iter()
        .find(|s| s.path.ends_with("/configmaps/demo-config"))
        .unwrap();
    (
        pod_template(&d.body)["metadata"]["annotations"]["chatpipe.dev/config-checksum"]
            .as_str()
            .unwrap()
            .to_owned(),
        cm.body["data"].clone(),
    )
}

#[tokio::test]
async fn spec_or_secret_change_rolls_the_pods() {
    let (base, base_cm) = ingest_checksum(pipeline(|_| {}), "postgres://pg/chatpipe").await;
    let (same, _) = ingest_checksum(pipeline(|_| {}), "postgres://pg/chatpipe").await;
    assert_eq!(base, same, "same inputs, same checksum");
    let (gap, gap_cm) = ingest_checksum(
        pipeline(|v| v["spec"]["processing"] = json!({"groupingGap": "3s"})),
        "postgres://pg/chatpipe",
    )
    .await;
    assert_ne!(base, gap, "a new grouping gap rolls the pods");
    assert_eq!(base_cm["CHATPIPE_GROUPING_GAP"], "5s");
    assert_eq!(gap_cm["CHATPIPE_GROUPING_GAP"], "3s");
    let (secret, _) = ingest_checksum(pipeline(|_| {}), "postgres://pg2/chatpipe").await;
    assert_ne!(base, secret, "a new database URL rolls the pods");
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
            assert_eq!(s["processor"], json!({"replicas": 3, "readyReplicas": 3}));
        }),
        event_step("Warning", "InvalidSpec"),
    ];
    let (result, seen, topics) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::await_change());
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
            "status": {"readyReplicas": ready}
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
        status_step(|s| {
            let p = condition(s, "Progressing");
            assert_eq!(p["status"], "False");
            assert_eq!(p["reason"], "Paused");
            assert_eq!(condition(s, "Ready")["status"], "True");
            // Nothing was scaled: the StatefulSet still has 3.
            assert_eq!(s["processor"], json!({"replicas": 3, "readyReplicas": 3}));
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
        ),
    ];
    let (result, seen, topics) = run(h, cp, steps).await;
    assert_eq!(result.unwrap(), Action::await_change());
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
    let mut steps = apply_steps(Workloads {
        ready: (2, 3, 1),
        migrated: true,
        processors: 3,
        ingress: false,
    });
    // Replace the 404 lookup by an Ingress this ChatPipeline owns.
    let lookup = steps.len() - 2;
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
    steps.insert(
        lookup + 1,
        step(
            Method::DELETE,
            "/apis/networking.k8s.io/v1/namespaces/chat/ingresses/demo-ingest",
            false,
            ignore,
            Reply::Json(json!({
                "kind": "Status", "apiVersion": "v1", "status": "Success"
            })),
        ),
    );
    steps.push(status_step(ignore));
    let (result, _, _) = run(h, cp, steps).await;
    result.unwrap();
}
