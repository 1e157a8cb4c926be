//! The optional Ingress that exposes ingest's `/webhook/` endpoint on a
//! host name, with TLS when a Secret is named.

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};

use super::labels::{object_name, Component};
use super::pod::PORT_NAME;
use super::BuildInput;

/// Path prefix routed to ingest.
pub const WEBHOOK_PATH: &str = "/webhook";

/// Name of the Ingress (also used to delete it when the spec drops it).
pub fn name(instance: &str) -> String {
    object_name(instance, Component::Ingest)
}

/// The Ingress `<name>-ingest`, or `None` when the spec has no ingress.
pub fn ingress(input: &BuildInput<'_>) -> Option<Ingress> {
    let spec = input.pipeline.ingest.ingress.as_ref()?;
    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: object_name(input.name, Component::Ingest),
            port: Some(ServiceBackendPort {
                name: Some(PORT_NAME.to_owned()),
                number: None,
            }),
        }),
        resource: None,
    };
    Some(Ingress {
        metadata: input.meta(name(input.name), Component::Ingest),
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(WEBHOOK_PATH.to_owned()),
                        path_type: "Prefix".to_owned(),
                        backend,
                    }],
                }),
            }]),
            tls: spec.tls_secret.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            default_backend: None,
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn ingress_routes_webhooks_to_ingest_with_tls() {
        let ing = with_input(&spec(), ingress).unwrap();
        assert_eq!(ing.metadata.name.as_deref(), Some("demo-ingest"));
        let s = ing.spec.unwrap();
        assert_eq!(s.ingress_class_name.as_deref(), Some("nginx"));
        let rule = &s.rules.unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("hooks.example.com"));
        let path = &rule.http.as_ref().unwrap().paths[0];
        assert_eq!(path.path.as_deref(), Some("/webhook"));
        assert_eq!(path.path_type, "Prefix");
        let svc = path.backend.service.as_ref().unwrap();
        assert_eq!(svc.name, "demo-ingest");
        assert_eq!(svc.port.as_ref().unwrap().name.as_deref(), Some("http"));
        let tls = &s.tls.unwrap()[0];
        assert_eq!(tls.secret_name.as_deref(), Some("hooks-tls"));
        assert_eq!(tls.hosts, Some(vec!["hooks.example.com".to_owned()]));
    }

    #[test]
    fn plain_http_without_tls_secret() {
        let mut s = spec();
        s.ingest.ingress.as_mut().unwrap().tls_secret = None;
        s.ingest.ingress.as_mut().unwrap().class_name = None;
        let ing = with_input(&s, ingress).unwrap().spec.unwrap();
        assert!(ing.tls.is_none());
        assert!(ing.ingress_class_name.is_none());
    }
}
