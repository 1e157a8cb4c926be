//! The Deployments of the stateless components: ingest (webhook receiver)
//! and api (query API).

use std::time::Duration;

use chatpipe_plan::Settings;
use chatpipe_settings::ingest::IngestSettings;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels::{self, Component};
use super::pod::{checksum_annotations, pod_template, service_container};
use super::{BuildInput, API_PORT, INGEST_PORT};
use crate::validate::ValidatedComponent;

/// Ingest's produce timeout on the cluster (its flag default, set
/// explicitly on the pod template).
const INGEST_PRODUCE_TIMEOUT: Duration = Duration::from_secs(5);

fn deployment(
    input: &BuildInput<'_>,
    component: Component,
    port: i32,
    size: &ValidatedComponent,
    pod_settings: Settings,
) -> Deployment {
    let container = service_container(input, component, port, size, pod_settings);
    Deployment {
        metadata: input.meta(labels::object_name(input.name, component), component),
        spec: Some(DeploymentSpec {
            replicas: Some(size.replicas),
            selector: LabelSelector {
                match_labels: Some(labels::selector(input.name, component)),
                match_expressions: None,
            },
            // Never go below the desired count while rolling: a webhook
            // provider should always find a receiver.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: pod_template(
                input,
                component,
                container,
                None,
                checksum_annotations(input, component),
            ),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The ingest Deployment `<name>-ingest` running `chatpipe-ingest` on 8080.
pub fn ingest(input: &BuildInput<'_>) -> Deployment {
    deployment(
        input,
        Component::Ingest,
        INGEST_PORT,
        &input.pipeline.ingest.component,
        Settings::Ingest(IngestSettings {
            produce_timeout: Some(INGEST_PRODUCE_TIMEOUT),
            ..IngestSettings::default()
        }),
    )
}

/// The api Deployment `<name>-api` running `chatpipe-api` on 8081.
pub fn api(input: &BuildInput<'_>) -> Deployment {
    deployment(
        input,
        Component::Api,
        API_PORT,
        &input.pipeline.api,
        Settings::none(Component::Api),
    )
}

#[cfg(test)]
mod tests {
    use super::super::pod::checks::*;
    use super::super::testing::*;
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn ingest_deployment() {
        let d = with_input(&spec(), ingest);
        assert_eq!(d.metadata.name.as_deref(), Some("demo-ingest"));
        let s = d.spec.unwrap();
        assert_eq!(s.replicas, Some(2));
        assert_eq!(
            s.selector.match_labels,
            Some(labels::selector("demo", Component::Ingest))
        );
        assert_common_pod(&s.template, Component::Ingest, INGEST_PORT);
        let c = &s.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.command, Some(vec!["chatpipe-ingest".to_owned()]));
        assert_eq!(env_value(c, "CHATPIPE_PRODUCE_TIMEOUT"), Some("5s"));
        let r = c.resources.as_ref().unwrap();
        assert_eq!(r.requests.as_ref().unwrap()["cpu"], Quantity("100m".into()));
        assert_eq!(
            r.limits.as_ref().unwrap()["memory"],
            Quantity("128Mi".into())
        );
        let ru = s.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
    }

    /// Without `spec.ingest.auth` ingest gets no webhook secrets (it then
    /// accepts unsigned webhooks and warns at start).
    #[test]
    fn ingest_without_auth_gets_no_webhook_secrets() {
        let mut s = spec();
        s.ingest.auth = None;
        s.ingest.ingress = None;
        let d = with_input(&s, ingest);
        let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
        let name = chatpipe_settings::ingest::webhook_secrets_env();
        assert!(c.env.as_ref().unwrap().iter().all(|e| e.name != name));
    }

    #[test]
    fn api_deployment() {
        let d = with_input(&spec(), api);
        assert_eq!(d.metadata.name.as_deref(), Some("demo-api"));
        let s = d.spec.unwrap();
        assert_eq!(s.replicas, Some(1));
        assert_eq!(
            s.selector.match_labels,
            Some(labels::selector("demo", Component::Api))
        );
        assert_common_pod(&s.template, Component::Api, API_PORT);
        let c = &s.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.command, Some(vec!["chatpipe-api".to_owned()]));
        assert_eq!(c.resources, None, "no resources in the spec, none set");
    }

    #[test]
    fn checksum_change_changes_only_the_template_annotation() {
        let spec = spec();
        let a = with_input(&spec, ingest);
        let b = with_checksums(
            &spec,
            crate::build::configmap::Checksums::all("changed"),
            ingest,
        );
        assert_ne!(a, b);
        let mut b2 = b.clone();
        b2.spec
            .as_mut()
            .unwrap()
            .template
            .metadata
            .as_mut()
            .unwrap()
            .annotations = a
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .clone();
        assert_eq!(a, b2);
    }
}
