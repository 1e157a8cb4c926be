//! The Deployments of the stateless components: ingest (webhook receiver),
//! api (query API) and delivery (sends the outbox of channel messages;
//! its replicas share the work through leases in Postgres, so it rolls
//! like the others).

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
use super::{BuildInput, API_PORT, DELIVERY_PORT, INGEST_PORT};
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

/// The delivery Deployment `<name>-delivery` running `chatpipe-delivery`
/// with its ops endpoints on 8083; its replicas are the plan's (one by
/// default when channels are declared, else none).
pub fn delivery(input: &BuildInput<'_>) -> Deployment {
    deployment(
        input,
        Component::Delivery,
        DELIVERY_PORT,
        &input.pipeline.delivery.component,
        Settings::none(Component::Delivery),
    )
}

#[cfg(test)]
mod tests {
    use super::super::pod::checks::*;
    use super::super::testing::*;
    use super::*;
    use k8s_openapi::api::core::v1::Container;
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

    /// `(secret, key)` of the env var `name` of `c`, when it is a Secret
    /// reference.
    fn secret_of<'a>(c: &'a Container, name: &str) -> Option<(&'a str, &'a str)> {
        let e = c.env.as_ref()?.iter().find(|e| e.name == name)?;
        assert!(e.value.is_none(), "{name} never holds the value");
        let s = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
        assert_eq!(s.optional, Some(false), "{name}: a missing key must fail");
        Some((s.name.as_str(), s.key.as_str()))
    }

    fn container(d: Deployment) -> Container {
        d.spec.unwrap().template.spec.unwrap().containers.remove(0)
    }

    #[test]
    fn delivery_deployment() {
        let d = with_input(&with_channels(), delivery);
        assert_eq!(d.metadata.name.as_deref(), Some("demo-delivery"));
        let s = d.spec.unwrap();
        assert_eq!(s.replicas, Some(1), "one replica by default with channels");
        assert_eq!(
            s.selector.match_labels,
            Some(labels::selector("demo", Component::Delivery))
        );
        assert_common_pod(&s.template, Component::Delivery, DELIVERY_PORT);
        let c = &s.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.command, Some(vec!["chatpipe-delivery".to_owned()]));
        assert_eq!(env_value(c, "CHATPIPE_LISTEN"), Some("0.0.0.0:8083"));
        assert!(
            !c.env
                .iter()
                .flatten()
                .any(|e| e.name.starts_with("CHATPIPE_KAFKA")),
            "delivery never talks to Kafka"
        );
        let ru = s.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));

        // Replicas and resources come from spec.delivery.
        let mut sized = with_channels();
        sized.delivery = Some(
            serde_yaml::from_str(
                "{ replicas: 3, resources: { requests: { cpu: 50m } }, \
                 postgresUrlSecret: { name: pg-delivery, key: dsn } }",
            )
            .unwrap(),
        );
        let d = with_input(&sized, delivery);
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(3));
        let c = container(d);
        assert_eq!(
            c.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"],
            Quantity("50m".into())
        );
        assert_eq!(
            secret_of(&c, "CHATPIPE_POSTGRES_URL"),
            Some(("pg-delivery", "dsn")),
            "delivery's own database URL"
        );
        // Without channels the Deployment is scaled to zero.
        assert_eq!(
            with_input(&spec(), delivery).spec.unwrap().replicas,
            Some(0)
        );
    }

    /// Each channel's credentials reach the pods that use them as Secret
    /// references: the keys ingest verifies webhooks with to ingest, the
    /// keys delivery sends with to delivery, none to the others.
    #[test]
    fn channel_credentials_reach_their_readers_only() {
        let s = with_channels();
        let ingest = container(with_input(&s, ingest));
        let delivery = container(with_input(&s, delivery));
        let api = container(with_input(&s, api));
        let processor = with_input(&s, crate::build::statefulset::processor)
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .containers
            .remove(0);
        let tg_bot = "CHATPIPE_CHANNEL_TG_BOT_TOKEN";
        let tg_secret = "CHATPIPE_CHANNEL_TG_SECRET_TOKEN";
        let sid = "CHATPIPE_CHANNEL_SMS_ACCOUNT_SID";
        let auth = "CHATPIPE_CHANNEL_SMS_AUTH_TOKEN";
        let from = "CHATPIPE_CHANNEL_SMS_FROM";
        assert_eq!(secret_of(&delivery, tg_bot), Some(("tg-creds", "botToken")));
        assert_eq!(secret_of(&delivery, tg_secret), None, "ingest only");
        assert_eq!(
            secret_of(&ingest, tg_secret),
            Some(("tg-creds", "secretToken"))
        );
        assert_eq!(secret_of(&ingest, tg_bot), None, "delivery only");
        for c in [&ingest, &delivery] {
            assert_eq!(secret_of(c, sid), Some(("twilio-creds", "accountSid")));
            assert_eq!(secret_of(c, auth), Some(("twilio-creds", "authToken")));
        }
        assert_eq!(secret_of(&delivery, from), Some(("twilio-creds", "from")));
        assert_eq!(secret_of(&ingest, from), None, "delivery only");
        for c in [&api, &processor] {
            assert!(
                !c.env
                    .iter()
                    .flatten()
                    .any(|e| e.name.starts_with("CHATPIPE_CHANNEL_")),
                "{:?} reads no channel credentials",
                c.name
            );
        }
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
