//! Services: a regular ClusterIP Service for ingest and for the api, and
//! the headless Service that governs the processor StatefulSet (stable pod
//! DNS names, metrics scraping per pod).

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels::{self, Component};
use super::pod::PORT_NAME;
use super::{BuildInput, API_PORT, INGEST_PORT, PROCESSOR_PORT};

fn service(input: &BuildInput<'_>, component: Component, port: i32, headless: bool) -> Service {
    Service {
        metadata: input.meta(labels::object_name(input.name, component), component),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            cluster_ip: headless.then(|| "None".to_owned()),
            publish_not_ready_addresses: headless.then_some(true),
            selector: Some(labels::selector(input.name, component)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_owned()),
                port,
                target_port: Some(IntOrString::String(PORT_NAME.to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// `<name>-ingest`: the webhook endpoint, port 8080.
pub fn ingest(input: &BuildInput<'_>) -> Service {
    service(input, Component::Ingest, INGEST_PORT, false)
}

/// `<name>-api`: the query API, port 8081.
pub fn api(input: &BuildInput<'_>) -> Service {
    service(input, Component::Api, API_PORT, false)
}

/// `<name>-processor`: headless, governs the StatefulSet; port 8082.
pub fn processor_headless(input: &BuildInput<'_>) -> Service {
    service(input, Component::Processor, PROCESSOR_PORT, true)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn regular_services_select_their_pods() {
        for (svc, c, port) in [
            (with_input(&spec(), ingest), Component::Ingest, INGEST_PORT),
            (with_input(&spec(), api), Component::Api, API_PORT),
        ] {
            let s = svc.spec.unwrap();
            assert_eq!(s.cluster_ip, None);
            assert_eq!(s.selector, Some(labels::selector("demo", c)));
            let p = &s.ports.unwrap()[0];
            assert_eq!(p.port, port);
            assert_eq!(p.target_port, Some(IntOrString::String("http".into())));
        }
    }

    #[test]
    fn processor_service_is_headless() {
        let svc = with_input(&spec(), processor_headless);
        assert_eq!(svc.metadata.name.as_deref(), Some("demo-processor"));
        let s = svc.spec.unwrap();
        assert_eq!(s.cluster_ip.as_deref(), Some("None"));
        assert_eq!(s.publish_not_ready_addresses, Some(true));
        assert_eq!(
            s.selector,
            Some(labels::selector("demo", Component::Processor))
        );
        assert_eq!(s.ports.unwrap()[0].port, PROCESSOR_PORT);
    }
}
