//! NetworkPolicies around the pipeline's pods, when
//! `spec.networkPolicy.enabled` ([`chatpipe_plan::Topology::network_policy`]).
//!
//! One policy per component, named `<name>-<component>`, selecting that
//! component's pods ([`labels::selector`]), with `policyTypes: [Ingress]`
//! only: egress stays open because the pods reach Kafka, Postgres and
//! (later) model providers wherever they run.
//!
//! - ingest: from the ingress controller's namespaces
//!   (`ingressNamespaceSelector`, default `kubernetes.io/metadata.name:
//!   ingress-nginx`) and from the metrics scrapers, to the ingest port.
//!   Nothing in the pipeline calls ingest, so its own namespace gets no rule.
//! - api: from the pipeline's own namespace (or `apiNamespaceSelector`) and
//!   from the metrics scrapers, to the api port.
//! - processor: from the metrics scrapers only, to its ops port.
//! - delivery: from the metrics scrapers only, to its ops port (it calls
//!   the providers; nothing calls it).
//! - migrate: the migration Job's pods serve nothing: no ingress at all.
//!
//! Metrics are served on each component's service port, so the metrics
//! rule (`metricsNamespaceSelector`, default every namespace) opens that
//! port: NetworkPolicies work on ports, not paths.

use std::collections::BTreeMap;

use chatpipe_plan::crd::NetworkPolicySpec;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec as K8sNetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels::{self, Component};
use super::{BuildInput, API_PORT, DELIVERY_PORT, INGEST_PORT, PROCESSOR_PORT};

/// Label every namespace carries with its own name (Kubernetes ≥ 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Namespace of the ingress controller when `ingressNamespaceSelector` is unset.
pub const DEFAULT_INGRESS_NAMESPACE: &str = "ingress-nginx";
/// The components that get a policy, in the order they are applied.
pub const COMPONENTS: [Component; 5] = [
    Component::Ingest,
    Component::Processor,
    Component::Api,
    Component::Delivery,
    Component::Migrate,
];

/// Name of `component`'s policy (`<instance>-<component>`; also used to
/// find the policies to delete when the spec drops them).
pub fn name(instance: &str, component: Component) -> String {
    labels::object_name(instance, component)
}

/// Namespaces named `name` (through [`NAMESPACE_NAME_LABEL`]).
fn namespace_named(name: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            NAMESPACE_NAME_LABEL.to_owned(),
            name.to_owned(),
        )])),
        match_expressions: None,
    }
}

/// A rule admitting every pod of the namespaces `namespaces` to TCP `port`.
fn from_namespaces(namespaces: LabelSelector, port: i32) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(namespaces),
            ..NetworkPolicyPeer::default()
        }]),
        ports: Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".to_owned()),
            end_port: None,
        }]),
    }
}

/// The ingress rules of `component`'s policy (empty: deny all ingress).
pub fn rules(
    spec: &NetworkPolicySpec,
    namespace: &str,
    component: Component,
) -> Vec<NetworkPolicyIngressRule> {
    // An empty selector matches every namespace.
    let metrics = spec.metrics_namespace_selector.clone().unwrap_or_default();
    match component {
        Component::Ingest => vec![
            from_namespaces(
                spec.ingress_namespace_selector
                    .clone()
                    .unwrap_or_else(|| namespace_named(DEFAULT_INGRESS_NAMESPACE)),
                INGEST_PORT,
            ),
            from_namespaces(metrics, INGEST_PORT),
        ],
        Component::Api => vec![
            from_namespaces(
                spec.api_namespace_selector
                    .clone()
                    .unwrap_or_else(|| namespace_named(namespace)),
                API_PORT,
            ),
            from_namespaces(metrics, API_PORT),
        ],
        Component::Processor => vec![from_namespaces(metrics, PROCESSOR_PORT)],
        Component::Delivery => vec![from_namespaces(metrics, DELIVERY_PORT)],
        Component::Migrate => Vec::new(),
    }
}

/// The policy of `component` under `spec`.
pub fn policy(
    input: &BuildInput<'_>,
    spec: &NetworkPolicySpec,
    component: Component,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: input.meta(name(input.name, component), component),
        spec: Some(K8sNetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels::selector(input.name, component)),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(rules(spec, input.namespace, component)),
            egress: None,
        }),
    }
}

/// Every policy of the pipeline ([`COMPONENTS`]), or none when the spec
/// does not enable them.
pub fn policies(input: &BuildInput<'_>) -> Vec<NetworkPolicy> {
    match &input.topology.network_policy {
        Some(spec) if spec.enabled => COMPONENTS.iter().map(|c| policy(input, spec, *c)).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::crd::ChatPipelineSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn enabled(yaml: &str) -> ChatPipelineSpec {
        let mut s = spec();
        s.network_policy = Some(serde_yaml::from_str(yaml).unwrap());
        s
    }

    fn by_component(s: &ChatPipelineSpec) -> BTreeMap<String, NetworkPolicy> {
        with_input(s, policies)
            .into_iter()
            .map(|p| (p.metadata.name.clone().unwrap(), p))
            .collect()
    }

    /// (namespace selector, port) of each rule.
    fn peers(p: &NetworkPolicy) -> Vec<(LabelSelector, i32)> {
        p.spec
            .as_ref()
            .unwrap()
            .ingress
            .as_ref()
            .unwrap()
            .iter()
            .map(|r| {
                let from = r.from.as_ref().unwrap();
                assert_eq!(from.len(), 1);
                assert!(from[0].pod_selector.is_none(), "whole namespaces");
                assert!(from[0].ip_block.is_none());
                let ports = r.ports.as_ref().unwrap();
                assert_eq!(ports.len(), 1);
                assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
                let IntOrString::Int(port) = ports[0].port.clone().unwrap() else {
                    panic!("numeric port expected");
                };
                (from[0].namespace_selector.clone().unwrap(), port)
            })
            .collect()
    }

    fn named(ns: &str) -> LabelSelector {
        namespace_named(ns)
    }

    #[test]
    fn none_unless_enabled() {
        assert!(with_input(&spec(), policies).is_empty());
        let off = enabled("{ enabled: false }");
        assert!(with_input(&off, policies).is_empty());
    }

    #[test]
    fn one_policy_per_component_selecting_its_pods_ingress_only() {
        let all = by_component(&enabled("{ enabled: true }"));
        assert_eq!(
            all.keys().collect::<Vec<_>>(),
            [
                "demo-api",
                "demo-delivery",
                "demo-ingest",
                "demo-migrate",
                "demo-processor"
            ]
        );
        for c in COMPONENTS {
            let p = &all[&format!("demo-{}", c.as_str())];
            assert_eq!(p.metadata.namespace.as_deref(), Some("chat"));
            assert_eq!(p.metadata.owner_references, Some(vec![owner()]));
            assert_eq!(p.metadata.labels, Some(labels::labels("demo", c)));
            let s = p.spec.as_ref().unwrap();
            assert_eq!(
                s.pod_selector.as_ref().unwrap().match_labels,
                Some(labels::selector("demo", c))
            );
            assert_eq!(s.policy_types, Some(vec!["Ingress".to_owned()]));
            assert!(s.egress.is_none(), "egress stays open");
        }
    }

    #[test]
    fn defaults_ingress_controller_own_namespace_and_every_scraper() {
        let all = by_component(&enabled("{ enabled: true }"));
        let every = LabelSelector::default();
        assert_eq!(
            peers(&all["demo-ingest"]),
            [(named("ingress-nginx"), 8080), (every.clone(), 8080)]
        );
        assert_eq!(
            peers(&all["demo-api"]),
            [(named("chat"), 8081), (every.clone(), 8081)]
        );
        assert_eq!(peers(&all["demo-processor"]), [(every.clone(), 8082)]);
        assert_eq!(peers(&all["demo-delivery"]), [(every, 8083)]);
        // The migration's pods get nothing in: an empty list denies all.
        let migrate = all["demo-migrate"].spec.clone().unwrap();
        assert_eq!(migrate.ingress, Some(Vec::new()));
    }

    #[test]
    fn custom_selectors_replace_the_defaults() {
        let s = enabled(
            r#"
enabled: true
ingressNamespaceSelector: { matchLabels: { team: edge } }
apiNamespaceSelector:
  matchExpressions: [{ key: tier, operator: In, values: [frontend, support] }]
metricsNamespaceSelector: { matchLabels: { kubernetes.io/metadata.name: monitoring } }
"#,
        );
        let all = by_component(&s);
        let edge = LabelSelector {
            match_labels: Some(BTreeMap::from([("team".into(), "edge".into())])),
            match_expressions: None,
        };
        let tiers = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["frontend".into(), "support".into()]),
            }]),
        };
        let monitoring = named("monitoring");
        assert_eq!(
            peers(&all["demo-ingest"]),
            [(edge, 8080), (monitoring.clone(), 8080)]
        );
        assert_eq!(
            peers(&all["demo-api"]),
            [(tiers, 8081), (monitoring.clone(), 8081)]
        );
        assert_eq!(peers(&all["demo-processor"]), [(monitoring.clone(), 8082)]);
        assert_eq!(peers(&all["demo-delivery"]), [(monitoring, 8083)]);
    }

    #[test]
    fn policy_names_fit_for_the_longest_pipeline_name() {
        let long = "a".repeat(crate::validate::MAX_NAME_LEN);
        let s = enabled("{ enabled: true }");
        let all = with_name(&long, &s, checksums(), policies);
        assert_eq!(all.len(), 5);
        for p in all {
            assert!(p.metadata.name.unwrap().len() <= 253);
        }
    }
}
