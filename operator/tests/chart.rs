//! Render-free checks of the packaging: the Helm chart (every template and
//! values file parses as YAML once template actions are stripped, blocks are
//! balanced, values.yaml satisfies values.schema.json, the RBAC rules shared
//! by the ClusterRole and the per-namespace Roles (`watchNamespaces`) grant
//! exactly `rbac::REQUIRED_PERMISSIONS`, the chart's CRD is the generated
//! one), the examples' extra manifests, skaffold.yaml and the Dockerfile. No helm, docker or cluster is needed (or available).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chatpipe_operator::rbac::REQUIRED_PERMISSIONS;
use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn chart() -> PathBuf {
    root().join("charts/chatpipe")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replaces template actions so the file parses as plain YAML: a line that
/// holds only an action (`{{- if … }}`, `{{- include … | nindent 4 }}`) is
/// dropped, an action inside a line becomes the word `TEMPLATE`.
fn strip_template(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("{{") && t.ends_with("}}") && t.matches("{{").count() == 1 {
            continue;
        }
        let mut rest = line;
        let mut l = String::new();
        while let Some(start) = rest.find("{{") {
            l.push_str(&rest[..start]);
            let end = rest[start..]
                .find("}}")
                .unwrap_or_else(|| panic!("unclosed action in {line:?}"));
            l.push_str("TEMPLATE");
            rest = &rest[start + end + 2..];
        }
        l.push_str(rest);
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// Every `{{ if/with/range/define }}` has its `{{ end }}`.
fn assert_balanced(name: &str, text: &str) {
    let mut depth: i32 = 0;
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let end = rest[start..].find("}}").expect("closed action");
        let action = rest[start + 2..start + end]
            .trim_start_matches('-')
            .trim_start();
        let word = action.split_whitespace().next().unwrap_or("");
        match word {
            "if" | "with" | "range" | "define" | "block" => depth += 1,
            "end" => depth -= 1,
            _ => {}
        }
        assert!(depth >= 0, "{name}: `end` without a block");
        rest = &rest[start + end + 2..];
    }
    assert_eq!(depth, 0, "{name}: unclosed block");
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn templates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(chart().join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn template_doc(name: &str) -> Value {
    let docs = documents(&strip_template(&read(
        &chart().join("templates").join(name),
    )));
    assert_eq!(docs.len(), 1, "{name}");
    docs.into_iter().next().unwrap()
}

#[test]
fn every_template_parses_and_names_its_object() {
    let mut kinds = BTreeSet::new();
    for path in templates() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = read(&path);
        assert_balanced(&name, &text);
        if !name.ends_with(".yaml") {
            continue;
        }
        let docs = documents(&strip_template(&text));
        assert!(!docs.is_empty(), "{name} renders nothing");
        for d in docs {
            assert!(d["apiVersion"].as_str().is_some(), "{name}: no apiVersion");
            let kind = d["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no kind"));
            assert!(d["metadata"]["name"].as_str().is_some(), "{name}: no name");
            assert!(d["metadata"].get("labels").is_some(), "{name}: no labels");
            kinds.insert(kind.to_owned());
        }
    }
    let want: BTreeSet<String> = [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(kinds, want);
}

#[test]
fn chart_and_values_files_parse() {
    let c: Value = serde_yaml::from_str(&read(&chart().join("Chart.yaml"))).unwrap();
    assert_eq!(c["apiVersion"], "v2");
    assert_eq!(c["name"], "chatpipe");
    assert!(c["version"].as_str().is_some());
    assert_eq!(c["appVersion"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    let v: Value = serde_yaml::from_str(&read(&chart().join("values.yaml"))).unwrap();
    assert!(v.is_mapping());
}

fn schema_validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(&read(&chart().join("values.schema.json"))).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn values() -> serde_json::Value {
    let v: Value = serde_yaml::from_str(&read(&chart().join("values.yaml"))).unwrap();
    serde_json::to_value(v).unwrap()
}

#[test]
fn values_satisfy_the_schema_and_the_schema_rejects_bad_values() {
    let validator = schema_validator();
    let good = values();
    let errors: Vec<String> = validator
        .iter_errors(&good)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "values.yaml: {errors:?}");

    let bad = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = values();
        f(&mut v);
        v
    };
    for (what, v) in [
        (
            "pull policy",
            bad(&|v| v["image"]["pullPolicy"] = "Sometimes".into()),
        ),
        (
            "root",
            bad(&|v| v["podSecurityContext"]["runAsNonRoot"] = false.into()),
        ),
        (
            "privilege escalation",
            bad(&|v| v["securityContext"]["allowPrivilegeEscalation"] = true.into()),
        ),
        ("port", bad(&|v| v["operator"]["port"] = 70000.into())),
        (
            "log format",
            bad(&|v| v["operator"]["logFormat"] = "xml".into()),
        ),
        ("typo", bad(&|v| v["replicaCount"] = 2.into())),
        (
            "namespace name",
            bad(&|v| v["watchNamespaces"] = serde_json::json!(["Team_A"])),
        ),
        (
            "repeated namespace",
            bad(&|v| v["watchNamespaces"] = serde_json::json!(["a", "a"])),
        ),
        (
            "namespace list",
            bad(&|v| v["watchNamespaces"] = "a,b".into()),
        ),
        (
            "interval",
            bad(&|v| v["metrics"]["serviceMonitor"]["interval"] = "soon".into()),
        ),
    ] {
        assert!(!validator.is_valid(&v), "schema accepted a bad {what}");
    }
}

#[test]
fn default_values_are_locked_down() {
    let v = values();
    assert_eq!(v["podSecurityContext"]["runAsNonRoot"], true);
    assert_eq!(v["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(v["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(v["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(v["rbac"]["create"], true);
    assert_eq!(v["watchNamespaces"], serde_json::json!([]));
    assert_eq!(v["metrics"]["serviceMonitor"]["enabled"], false);
}

/// The rules of `define "chatpipe.rules"` in _helpers.tpl, shared by the
/// ClusterRole and the per-namespace Roles.
fn chart_rules() -> Value {
    let text = read(&chart().join("templates/_helpers.tpl"));
    let start = text
        .find(r#"{{- define "chatpipe.rules" -}}"#)
        .expect("chatpipe.rules defined");
    let body = &text[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let body = &body[..body.find("{{- end }}").expect("end of chatpipe.rules")];
    assert!(!body.contains("{{"), "chatpipe.rules is plain YAML");
    serde_yaml::from_str(body).unwrap()
}

/// Both forms of the operator's RBAC include the shared rules, and only
/// one form renders: the ClusterRole without `watchNamespaces`, a Role and
/// RoleBinding per listed namespace with it.
#[test]
fn role_form_follows_watch_namespaces() {
    for (file, kind) in [
        ("clusterrole.yaml", "ClusterRole"),
        ("clusterrolebinding.yaml", "ClusterRoleBinding"),
        ("role.yaml", "Role"),
        ("rolebinding.yaml", "RoleBinding"),
    ] {
        let text = read(&chart().join("templates").join(file));
        let doc = template_doc(file);
        assert_eq!(doc["kind"], kind, "{file}");
        let first = text.lines().next().unwrap();
        assert!(first.contains(".Values.rbac.create"), "{file}: {first}");
        if kind.starts_with("Cluster") {
            assert!(
                first.contains("(not .Values.watchNamespaces)"),
                "{file} renders only without watchNamespaces: {first}"
            );
        } else {
            assert!(
                text.contains("{{- range .Values.watchNamespaces }}"),
                "{file}: one per namespace"
            );
            // Inside `range`, `.` is the namespace.
            assert!(text.contains("namespace: {{ . | quote }}"), "{file}");
            assert!(
                !text.contains("include \"chatpipe.labels\" ."),
                "{file}: use $"
            );
        }
        if kind.ends_with("Role") {
            assert!(
                text.contains("rules:\n  {{- include \"chatpipe.rules\""),
                "{file} uses the shared rules"
            );
        } else {
            assert_eq!(doc["roleRef"]["kind"], kind.trim_end_matches("Binding"));
            assert_eq!(doc["subjects"][0]["kind"], "ServiceAccount");
        }
    }
    // The operator is told which namespaces to watch.
    let text = read(&chart().join("templates/deployment.yaml"));
    let with = text
        .find("{{- with .Values.watchNamespaces }}")
        .expect("watchNamespaces passed to the operator");
    let env = &text[with..];
    assert!(env.contains("- name: CHATPIPE_WATCH_NAMESPACES"));
    assert!(env.contains(r#"value: {{ join "," . | quote }}"#));
    assert_eq!(
        chatpipe_operator::controller::WATCH_NAMESPACES_ENV,
        "CHATPIPE_WATCH_NAMESPACES"
    );
}

#[test]
fn cluster_role_grants_exactly_the_controllers_permissions() {
    let rules = chart_rules();
    let mut granted = BTreeSet::new();
    for rule in rules.as_sequence().unwrap() {
        let groups = rule["apiGroups"].as_sequence().unwrap();
        let resources = rule["resources"].as_sequence().unwrap();
        let verbs: Vec<String> = rule["verbs"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert!(!verbs.iter().any(|v| v == "*"), "wildcard verb");
        assert!(rule.get("resourceNames").is_none());
        for g in groups {
            for r in resources {
                let g = g.as_str().unwrap().to_owned();
                let r = r.as_str().unwrap().to_owned();
                assert_ne!(r, "*", "wildcard resource");
                let mut vs = verbs.clone();
                vs.sort();
                assert!(granted.insert((g.clone(), r.clone(), vs)), "{g}/{r} twice");
            }
        }
    }
    let required: BTreeSet<(String, String, Vec<String>)> = REQUIRED_PERMISSIONS
        .iter()
        .map(|p| {
            let mut vs: Vec<String> = p.verbs.iter().map(|s| s.to_string()).collect();
            vs.sort();
            (p.api_group.to_owned(), p.resource.to_owned(), vs)
        })
        .collect();
    if granted != required {
        let mut expected = String::from("rules:\n");
        for p in REQUIRED_PERMISSIONS {
            let verbs: Vec<String> = p.verbs.iter().map(|v| format!("{v:?}")).collect();
            expected.push_str(&format!(
                "  - apiGroups: [{:?}]\n    resources: [{:?}]\n    verbs: [{}]\n",
                p.api_group,
                p.resource,
                verbs.join(", ")
            ));
        }
        panic!(
            "chatpipe.rules in charts/chatpipe/templates/_helpers.tpl grants {granted:?}\n\
             but the controller needs exactly {required:?}; the rules should read:\n{expected}"
        );
    }

    // Secrets: read by name only, never listed or watched (RBAC cannot
    // narrow `get` to the names the pipelines reference).
    assert!(granted.contains(&("".into(), "secrets".into(), vec!["get".into()])));
}

#[test]
fn operator_deployment_runs_the_controller_as_non_root() {
    let d = template_doc("deployment.yaml");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let pod = &d["spec"]["template"]["spec"];
    assert!(pod["serviceAccountName"].as_str().is_some());
    let c = &pod["containers"][0];
    assert_eq!(c["command"][0], "chatpipe-operator");
    assert_eq!(c["args"][0], "controller");
    assert_eq!(c["ports"][0]["name"], "http");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    // The env names ControllerArgs reads.
    let env: Vec<&str> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for name in [
        "CHATPIPE_LISTEN",
        "CHATPIPE_LOG",
        "CHATPIPE_LOG_FORMAT",
        "POD_NAME",
    ] {
        assert!(env.contains(&name), "{name} missing from {env:?}");
    }
    use clap::Args;
    let cmd = chatpipe_operator::controller::ControllerArgs::augment_args(clap::Command::new("c"));
    let known: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    for name in &env {
        assert!(
            known.iter().any(|r| r == name),
            "the chart sets {name}, which the controller does not read ({known:?})"
        );
    }
    let text = read(&chart().join("templates/deployment.yaml"));
    assert!(text.contains("toYaml .Values.podSecurityContext"));
    assert!(text.contains("toYaml .Values.securityContext"));
}

/// The chart ships the CRD of `crds/` unchanged (whose drift from the Rust
/// types the controller's own test checks).
#[test]
fn chart_crd_is_a_copy_of_the_crd() {
    let in_crds = read(&root().join("crds/chatpipeline.yaml"));
    let in_chart = read(&chart().join("crds/chatpipeline.yaml"));
    assert!(
        in_chart == in_crds,
        "charts/chatpipe/crds/chatpipeline.yaml differs from crds/chatpipeline.yaml: \
         cp crds/chatpipeline.yaml charts/chatpipe/crds/"
    );
}

/// The examples' other documents parse (that each example is a valid
/// pipeline with its Secrets is checked by local mode's reader, in
/// `local/tests/examples.rs`).
#[test]
fn dev_example_manifests_parse() {
    let ex = root().join("examples");
    for f in ["dev/namespace.yaml", "dev/backing-services.yaml"] {
        assert!(!documents(&read(&ex.join(f))).is_empty(), "{f}");
    }
}

#[test]
fn skaffold_builds_the_image_deploys_the_chart_and_forwards_ports() {
    let docs = documents(&read(&root().join("skaffold.yaml")));
    assert_eq!(docs.len(), 2);
    let op = &docs[0];
    assert_eq!(op["build"]["artifacts"][0]["image"], "chatpipe");
    assert_eq!(
        op["build"]["artifacts"][0]["docker"]["dockerfile"],
        "Dockerfile"
    );
    let release = &op["deploy"]["helm"]["releases"][0];
    assert!(root()
        .join(release["chartPath"].as_str().unwrap())
        .join("Chart.yaml")
        .is_file());
    let pipe = &docs[1];
    assert_eq!(pipe["requires"][0]["configs"][0], "operator");
    for m in pipe["manifests"]["rawYaml"].as_sequence().unwrap() {
        assert!(root().join(m.as_str().unwrap()).is_file(), "{m:?}");
    }
    let patched = &pipe["profiles"][0]["patches"][0]["value"];
    assert!(root().join(patched.as_str().unwrap()).is_file());
    let ports: Vec<(String, u64)> = pipe["portForward"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["resourceName"].as_str().unwrap().to_owned(),
                p["localPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("dev-ingest".to_owned(), 8080),
            ("dev-api".to_owned(), 8081)
        ]
    );
}

#[test]
fn dockerfile_ships_every_binary_as_non_root() {
    let d = read(&root().join("Dockerfile"));
    for bin in [
        "chatpipe-ingest",
        "chatpipe-processor",
        "chatpipe-api",
        "chatpipe-delivery",
        "chatpipe-operator",
        "chatpipe-admin",
        "chatpipe-loadgen",
    ] {
        assert!(d.contains(&format!("--bin {bin}")), "{bin} not built");
    }
    assert!(d.matches("\nFROM ").count() >= 2, "not multi-stage");
    assert!(d.contains("--locked"));
    let user = d
        .lines()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && !user.ends_with(" 0"), "{user}");
    let ignore = read(&root().join(".dockerignore"));
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
    // What the build reads must stay in the context.
    for needed in [
        "migrations",
        "core",
        "api",
        "ingest",
        "processor",
        "operator",
        "tools",
        "tests",
        "crds",
        "Cargo.lock",
    ] {
        assert!(
            !ignore
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == needed),
            ".dockerignore drops {needed}"
        );
    }
}

#[test]
fn strip_template_handles_inline_and_line_actions() {
    let t = "a: {{ .x }}\n{{- if .y }}\nb: \"{{ .r }}:{{ .t }}\"\n{{- end }}\n";
    let v: Value = serde_yaml::from_str(&strip_template(t)).unwrap();
    assert_eq!(v["a"], "TEMPLATE");
    assert_eq!(v["b"], "TEMPLATE:TEMPLATE");
}
