//! The CRD: `crds/chatpipeline.yaml` must equal what the Rust types
//! generate (drift test), and its CEL rules (`x-kubernetes-validations`)
//! are evaluated on valid and invalid samples with kube's `cel` feature
//! (`kube::core::cel::Validator`), including the transition rule that makes
//! `kafka.partitions` immutable.

use std::collections::BTreeSet;

use chatpipe_operator::crd::{crd_yaml, ChatPipeline};
use kube::core::cel::Validator;
use kube::CustomResourceExt;
use serde_json::{json, Value};

const REGENERATE: &str = "cargo run -p chatpipe-operator -- crdgen > crds/chatpipeline.yaml";

#[test]
fn crd_file_matches_the_rust_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/chatpipeline.yaml");
    let on_disk = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}; regenerate with: {REGENERATE}"));
    let generated = crd_yaml().unwrap();
    assert!(
        on_disk == generated,
        "crds/chatpipeline.yaml is out of date with plan/src/crd.rs.\nRegenerate it from the workspace root with:\n    {REGENERATE}"
    );
}

#[test]
fn crd_names_subresources_and_columns() {
    let crd = serde_json::to_value(ChatPipeline::crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "chatpipelines.chatpipe.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["cp"]));
    let v = &crd["spec"]["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    // An HPA needs the selector, and the status count is the pods that
    // exist (not only the ready ones), as for a Deployment's scale.
    assert_eq!(
        v["subresources"]["scale"],
        json!({
            "specReplicasPath": ".spec.processor.replicas",
            "statusReplicasPath": ".status.processor.currentReplicas",
            "labelSelectorPath": ".status.selector"
        })
    );
    let status = &v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
    assert_eq!(status["selector"]["type"], "string");
    assert_eq!(
        status["processor"]["properties"]["currentReplicas"]["type"],
        "integer"
    );
    assert_eq!(v["subresources"]["status"], json!({}));
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Ready", "Partitions", "Processors", "Age"]);
}

fn schema() -> Value {
    let crd = serde_json::to_value(ChatPipeline::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn sample() -> Value {
    json!({
        "apiVersion": "chatpipe.dev/v1alpha1",
        "kind": "ChatPipeline",
        "metadata": { "name": "demo", "namespace": "chat" },
        "spec": {
            "image": "registry.example/chatpipe:1.0.0",
            "kafka": { "bootstrapServers": "kafka:9092", "partitions": 6 },
            "postgres": { "urlSecret": { "name": "pg", "key": "url" } },
            "processing": { "groupingGap": "5s", "lateArrivalTolerance": "6s" },
            "ingest": { "replicas": 2 },
            "processor": { "replicas": 3 },
            "api": { "replicas": 1 }
        }
    })
}

/// Whether `object` passes the structural part of the schema (types,
/// `enum`, `pattern`, `minimum`), which the API server checks besides the
/// CEL rules; kube's CEL `Validator` checks only the rules.
fn structurally_valid(object: &Value) -> bool {
    jsonschema::validator_for(&schema())
        .unwrap()
        .is_valid(object)
}

fn with(f: impl FnOnce(&mut Value)) -> Value {
    let mut v = sample();
    f(&mut v);
    v
}

/// Messages of the rules `object` breaks (empty when valid).
fn broken(object: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(&schema(), object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
    }
}

fn assert_breaks(object: &Value, old: Option<&Value>, needle: &str) -> String {
    let msgs = broken(object, old);
    let hit = msgs
        .iter()
        .find(|m| m.contains(needle))
        .unwrap_or_else(|| panic!("expected a failure containing {needle:?}, got {msgs:?}"));
    hit.clone()
}

#[test]
fn valid_samples_pass() {
    assert_eq!(broken(&sample(), None), Vec::<String>::new());
    // Defaults apply (processing omitted entirely).
    let v = with(|v| {
        v["spec"].as_object_mut().unwrap().remove("processing");
    });
    assert_eq!(broken(&v, None), Vec::<String>::new());
    // Go durations of every shape; processors == partitions; zero processors.
    let v = with(|v| {
        v["spec"]["processing"] = json!({
            "groupingGap": "1m30s", "lateArrivalTolerance": "250ms", "watermarkAllowance": "0s",
            "maxGroupSpan": "1.5h", "maxGroupMessages": 1, "maxClockSkew": "0s"
        });
        v["spec"]["processor"]["replicas"] = json!(6);
    });
    assert_eq!(broken(&v, None), Vec::<String>::new());
    assert!(structurally_valid(&v));
    let v = with(|v| v["spec"]["processor"]["replicas"] = json!(0));
    assert_eq!(broken(&v, None), Vec::<String>::new());
    // Channels, delivery and replies.
    let v = with(|v| {
        v["spec"]["channels"] = json!([
            {"name": "tg", "type": "telegram", "credentialsSecretRef": {"name": "tg"}},
            {"name": "wa", "type": "whatsappCloud", "credentialsSecretRef": {"name": "wa"},
             "apiBaseUrl": "http://graph.test", "webhookUrl": "https://hooks.example.com/channels/wa/webhook"},
            {"name": "sms", "type": "twilio", "credentialsSecretRef": {"name": "tw"}}
        ]);
        v["spec"]["delivery"] =
            json!({"replicas": 2, "channelRate": 20, "chatRate": 1, "maxAttempts": 5});
        v["spec"]["replies"] = json!({
            "template": "Got {{ count }}",
            "faq": [{"keyword": "price", "answer": "10"}, {"regex": "(?i)hours", "answer": "9-5"}],
            "bot": {"url": "http://bot.chat:8000/answer", "timeout": "3s",
                    "tokenSecretRef": {"name": "bot", "key": "token"}}
        });
    });
    assert_eq!(broken(&v, None), Vec::<String>::new());
    assert!(structurally_valid(&v));
    let bad_type = with(|v| {
        v["spec"]["channels"] =
            json!([{"name": "tg", "type": "signal", "credentialsSecretRef": {"name": "tg"}}])
    });
    assert!(!structurally_valid(&bad_type), "the type is an enum");
    // An update that keeps the partitions but scales is fine.
    let scaled = with(|v| v["spec"]["processor"]["replicas"] = json!(2));
    assert_eq!(broken(&scaled, Some(&sample())), Vec::<String>::new());
}

#[test]
fn invalid_samples_fail_with_their_rule() {
    let mut hit = BTreeSet::new();
    let mut check = |object: Value, old: Option<Value>, needle: &str| {
        hit.insert(assert_breaks(&object, old.as_ref(), needle));
    };
    check(
        with(|v| v["spec"]["processor"]["replicas"] = json!(7)),
        None,
        "processor.replicas must not exceed kafka.partitions",
    );
    check(
        with(|v| v["spec"]["kafka"]["partitions"] = json!(8)),
        Some(sample()),
        "kafka.partitions is immutable",
    );
    check(
        with(|v| v["spec"]["processing"]["groupingGap"] = json!("0s")),
        None,
        "groupingGap must be a positive duration",
    );
    check(
        with(|v| v["spec"]["processing"]["groupingGap"] = json!("-5s")),
        None,
        "groupingGap must be a positive duration",
    );
    check(
        with(|v| v["spec"]["processing"]["lateArrivalTolerance"] = json!("0ms")),
        None,
        "lateArrivalTolerance must be a positive duration",
    );
    check(
        with(|v| v["spec"]["processing"]["watermarkAllowance"] = json!("-1ms")),
        None,
        "watermarkAllowance must not be negative",
    );
    check(
        with(|v| v["spec"]["processing"]["maxGroupSpan"] = json!("0s")),
        None,
        "maxGroupSpan must be a positive duration",
    );
    check(
        with(|v| v["spec"]["processing"]["maxClockSkew"] = json!("-1s")),
        None,
        "maxClockSkew must not be negative",
    );
    check(
        with(|v| v["spec"]["image"] = json!("")),
        None,
        "image must not be empty",
    );
    check(
        with(|v| v["spec"]["kafka"]["bootstrapServers"] = json!("")),
        None,
        "bootstrapServers must not be empty",
    );
    check(
        with(|v| v["metadata"]["name"] = json!("a".repeat(41))),
        None,
        "metadata.name must be at most 40 characters",
    );
    check(
        with(|v| v["spec"]["ingest"]["ingress"] = json!({ "host": "hooks.example.com" })),
        None,
        "ingest.ingress exposes the webhook endpoint",
    );
    let tg = |name: &str| json!({"name": name, "type": "telegram", "credentialsSecretRef": {"name": "tg"}});
    check(
        with(|v| v["spec"]["channels"] = json!([tg("tg"), tg("sms"), tg("tg")])),
        None,
        "channel names must be unique",
    );
    check(
        with(|v| {
            let mut c = tg("tg");
            c["apiBaseUrl"] = json!("api.telegram.org");
            v["spec"]["channels"] = json!([c]);
        }),
        None,
        "apiBaseUrl must be an http:// or https:// address",
    );
    check(
        with(|v| {
            let mut c = tg("tg");
            c["webhookUrl"] = json!("ftp://hooks.example.com/channels/tg/webhook");
            v["spec"]["channels"] = json!([c]);
        }),
        None,
        "webhookUrl must be an http:// or https:// address",
    );
    check(
        with(|v| {
            v["spec"]["replies"] =
                json!({"faq": [{"keyword": "price", "regex": "pri.e", "answer": "10"}]})
        }),
        None,
        "a rule has either keyword or regex",
    );
    check(
        with(|v| v["spec"]["replies"] = json!({"faq": [{"answer": "10"}]})),
        None,
        "a rule has either keyword or regex",
    );
    check(
        with(|v| v["spec"]["replies"] = json!({"bot": {"url": "bot.chat:8000"}})),
        None,
        "url must be an http:// or https:// address",
    );
    // Every rule of the CRD is exercised by a failing sample above.
    let mut all = BTreeSet::new();
    collect_messages(&schema(), &mut all);
    assert_eq!(
        hit, all,
        "each x-kubernetes-validations rule needs an invalid sample"
    );
}

/// Defect: `imagePullPolicy: Sometimes` passed the API server. The schema
/// now has the enum (the API server's structural validation), and the
/// operator refuses the same values.
#[test]
fn image_pull_policy_is_an_enum() {
    let crd = serde_json::to_value(ChatPipeline::crd()).unwrap();
    let field = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["imagePullPolicy"];
    assert_eq!(field["enum"], json!(["Always", "IfNotPresent", "Never"]));
    assert_eq!(field["type"], "string");
    assert!(
        field.get("nullable").is_none(),
        "an explicit null is dropped, not checked"
    );
    for (policy, ok) in [
        ("Always", true),
        ("IfNotPresent", true),
        ("Never", true),
        ("Sometimes", false),
        ("always", false),
        ("", false),
    ] {
        let object = with(|v| v["spec"]["imagePullPolicy"] = json!(policy));
        assert_eq!(structurally_valid(&object), ok, "CRD, {policy:?}");
        let cp: ChatPipeline = serde_json::from_value(object).unwrap();
        assert_eq!(
            chatpipe_operator::validate::validate(&cp.spec).is_ok(),
            ok,
            "operator, {policy:?}"
        );
    }
    let unset = with(|_| {});
    assert!(structurally_valid(&unset));
}

/// One duration grammar for the API server and the operator (defect: CEL
/// took only Go durations, the operator also `1m 30s`). Each row is what
/// Go's `time.ParseDuration` — which CEL's `duration()` runs on the API
/// server — makes of the text: its nanoseconds, or `None` when it refuses.
/// For every duration field of the CRD, the operator accepts a value
/// exactly when the API server does (the `pattern` and the CEL rule both
/// pass), and reads the same value.
///
/// The API server's side is checked here with the CRD's `pattern` (via
/// `jsonschema`) and its CEL rules (via kube's CEL `Validator`). That CEL
/// implementation is not Go's in three corners, marked `exact: false`: it
/// lacks the `µs` unit, refuses a bare `+0`, and saturates instead of
/// failing on overflow; there the pattern is checked alone (the API
/// server's CEL is Go's, where `duration()` accepts `µs` and `+0` and fails
/// on overflow, as the operator does).
#[test]
fn operator_and_crd_agree_on_durations() {
    const S: i128 = 1_000_000_000;
    #[rustfmt::skip]
    let table: &[(&str, Option<i128>, bool)] = &[
        // Accepted by Go.
        ("0", Some(0), true),
        ("+0", Some(0), false),
        ("-0", Some(0), true),
        ("0s", Some(0), true),
        ("-0s", Some(0), true),
        ("5s", Some(5 * S), true),
        ("+5s", Some(5 * S), true),
        ("-5s", Some(-5 * S), true),
        ("250ms", Some(250_000_000), true),
        ("1.5ms", Some(1_500_000), true),
        ("1m30s", Some(90 * S), true),
        ("1h30m", Some(5400 * S), true),
        ("1.5h", Some(5400 * S), true),
        (".5s", Some(S / 2), true),
        ("5.s", Some(5 * S), true),
        ("1.0s", Some(S), true),
        ("1h1h", Some(7200 * S), true),
        ("10us", Some(10_000), true),
        ("1ns", Some(1), true),
        ("0.000000001s", Some(1), true),
        ("2562047h", Some(2_562_047 * 3600 * S), true),
        ("250µs", Some(250_000), false),
        ("250μs", Some(250_000), false),
        // Refused by Go.
        ("", None, true),
        (" 5s", None, true),
        ("5s ", None, true),
        ("1m 30s", None, true),
        ("5 s", None, true),
        ("5", None, true),
        ("90", None, true),
        ("00", None, true),
        ("5S", None, true),
        ("5sec", None, true),
        ("1d", None, true),
        ("1e3s", None, true),
        ("--5s", None, true),
        ("+-5s", None, true),
        (".s", None, true),
        ("-", None, true),
        ("5.5.5s", None, true),
        ("1h-30m", None, true),
        ("1,5s", None, true),
        ("1_000ms", None, true),
        ("5m30", None, true),
        ("five seconds", None, true),
        ("9999999999h", None, false),
    ];
    // (field, whether zero is refused)
    let fields = [
        ("groupingGap", true),
        ("lateArrivalTolerance", true),
        ("maxGroupSpan", true),
        ("watermarkAllowance", false),
        ("maxClockSkew", false),
    ];
    let validator = jsonschema::validator_for(&schema()).unwrap();
    for (field, positive) in fields {
        for &(text, go, exact) in table {
            let expected = go.is_some_and(|n| if positive { n > 0 } else { n >= 0 });
            let object = with(|v| v["spec"]["processing"][field] = json!(text));

            // The operator.
            let cp: ChatPipeline = serde_json::from_value(object.clone()).unwrap();
            let problems = chatpipe_operator::validate::validate(&cp.spec)
                .err()
                .unwrap_or_default();
            let path = format!("spec.processing.{field}");
            let operator = !problems.iter().any(|p| p.field == path);
            assert_eq!(
                operator, expected,
                "operator, {field}: {text:?} ({problems:?})"
            );
            let parsed = chatpipe_operator::validate::parse_go_duration_nanos(text)
                .ok()
                .map(|(neg, n)| if neg { -(n as i128) } else { n as i128 });
            assert_eq!(parsed, go, "operator's parse of {text:?}");

            // The API server: pattern and CEL rule.
            // The pattern is the grammar: it takes every text Go reads, and
            // the overflowing row too (Go's range is beyond a pattern).
            let grammatical = go.is_some() || text == "9999999999h";
            let pattern = validator.is_valid(&object);
            assert_eq!(pattern, grammatical, "pattern, {field}: {text:?}");
            if exact {
                let cel = broken(&object, None).is_empty();
                assert_eq!(pattern && cel, expected, "CRD, {field}: {text:?}");
            }
        }
    }
}

/// `maxGroupMessages` is an integer ≥ 1 for the API server and the operator.
#[test]
fn max_group_messages_is_at_least_one() {
    for (n, ok) in [
        (json!(1), true),
        (json!(100), true),
        (json!(0), false),
        (json!(-1), false),
    ] {
        let object = with(|v| v["spec"]["processing"]["maxGroupMessages"] = n.clone());
        assert_eq!(structurally_valid(&object), ok, "CRD, {n}");
        let cp: ChatPipeline = serde_json::from_value(object).unwrap();
        assert_eq!(
            chatpipe_operator::validate::validate(&cp.spec).is_ok(),
            ok,
            "operator, {n}"
        );
    }
    let text = with(|v| v["spec"]["processing"]["maxGroupMessages"] = json!("100"));
    assert!(!structurally_valid(&text), "a number, not a string");
}

/// An Ingress exposes the webhook endpoint: the API server and the
/// operator both require `ingest.auth` with it, unless
/// `ingest.allowUnauthenticated` is true.
#[test]
fn an_ingress_needs_webhook_auth() {
    let ingress = json!({ "host": "hooks.example.com" });
    let auth = json!({ "secretRef": { "name": "webhooks", "key": "secrets" } });
    let cases = [
        // (ingress, auth, allowUnauthenticated, accepted)
        (None, None, None, true),
        (None, Some(&auth), None, true),
        (Some(&ingress), None, None, false),
        (Some(&ingress), None, Some(false), false),
        (Some(&ingress), Some(&auth), None, true),
        (Some(&ingress), None, Some(true), true),
        (Some(&ingress), Some(&auth), Some(true), true),
    ];
    for (i, (ing, au, allow, ok)) in cases.into_iter().enumerate() {
        let object = with(|v| {
            let spec = &mut v["spec"]["ingest"];
            if let Some(x) = ing {
                spec["ingress"] = x.clone();
            }
            if let Some(x) = au {
                spec["auth"] = x.clone();
            }
            if let Some(x) = allow {
                spec["allowUnauthenticated"] = json!(x);
            }
        });
        assert!(structurally_valid(&object), "case {i}: {object}");
        let msgs = broken(&object, None);
        assert_eq!(msgs.is_empty(), ok, "CRD, case {i}: {msgs:?}");
        if !ok {
            assert!(
                msgs.iter()
                    .any(|m| m.contains("ingest.auth.secretRef")
                        && m.contains("allowUnauthenticated")),
                "{msgs:?}"
            );
        }
        let cp: ChatPipeline = serde_json::from_value(object).unwrap();
        let problems = chatpipe_operator::validate::validate(&cp.spec)
            .err()
            .unwrap_or_default();
        assert_eq!(problems.is_empty(), ok, "operator, case {i}: {problems:?}");
        if !ok {
            assert_eq!(problems[0].field, "spec.ingest.auth");
        }
    }
    // The schema of the new fields.
    let ingest = &schema()["properties"]["spec"]["properties"]["ingest"];
    assert_eq!(
        ingest["properties"]["allowUnauthenticated"]["type"],
        "boolean"
    );
    let secret_ref = &ingest["properties"]["auth"]["properties"]["secretRef"];
    assert_eq!(secret_ref["required"], json!(["key", "name"]));
    assert_eq!(ingest["x-kubernetes-validations"][0]["fieldPath"], ".auth");
}

#[test]
fn malformed_duration_is_rejected() {
    let msgs = broken(
        &with(|v| v["spec"]["processing"]["groupingGap"] = json!("five seconds")),
        None,
    );
    assert!(!msgs.is_empty(), "a duration CEL cannot parse is rejected");
}

fn collect_messages(schema: &Value, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(m) => {
            if let Some(rules) = m.get("x-kubernetes-validations").and_then(Value::as_array) {
                for r in rules {
                    out.insert(r["message"].as_str().unwrap().to_owned());
                }
            }
            for v in m.values() {
                collect_messages(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_messages(v, out)),
        _ => {}
    }
}

/// The shipped examples pass the CRD's CEL rules and the operator's own
/// validation (the examples are what users copy first).
#[test]
fn examples_are_valid() {
    for file in ["chatpipeline.yaml", "local.yaml"] {
        let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("skipping {path}: not present");
            continue;
        };
        let mut found = 0;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let object: Value = serde::Deserialize::deserialize(doc).unwrap();
            if object["kind"] != "ChatPipeline" {
                continue;
            }
            found += 1;
            assert_eq!(broken(&object, None), Vec::<String>::new(), "{file}");
            let cp: ChatPipeline = serde_json::from_value(object).unwrap();
            if let Err(problems) = chatpipe_operator::validate::validate(&cp.spec) {
                panic!(
                    "{file}: {}",
                    chatpipe_operator::validate::describe(&problems)
                );
            }
            chatpipe_operator::validate::validate_name(&cp.metadata.name.unwrap()).unwrap();
        }
        assert_eq!(found, 1, "{file} holds one ChatPipeline");
    }
}
