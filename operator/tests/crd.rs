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
        "crds/chatpipeline.yaml is out of date with operator/src/crd.rs.\nRegenerate it from the workspace root with:\n    {REGENERATE}"
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
    assert_eq!(
        v["subresources"]["scale"],
        json!({
            "specReplicasPath": ".spec.processor.replicas",
            "statusReplicasPath": ".status.processor.readyReplicas"
        })
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
            "groupingGap": "1m30s", "lateArrivalTolerance": "250ms", "watermarkAllowance": "0s"
        });
        v["spec"]["processor"]["replicas"] = json!(6);
    });
    assert_eq!(broken(&v, None), Vec::<String>::new());
    let v = with(|v| v["spec"]["processor"]["replicas"] = json!(0));
    assert_eq!(broken(&v, None), Vec::<String>::new());
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
    // Every rule of the CRD is exercised by a failing sample above.
    let mut all = BTreeSet::new();
    collect_messages(&schema(), &mut all);
    assert_eq!(
        hit, all,
        "each x-kubernetes-validations rule needs an invalid sample"
    );
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
