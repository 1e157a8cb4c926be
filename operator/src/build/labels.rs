//! Labels and names of the objects built for one ChatPipeline.
//!
//! Selector labels (`name`, `instance`, `component`) never change for the
//! life of an object, because Deployment and StatefulSet selectors are
//! immutable; everything else goes into the full label set.

use std::collections::BTreeMap;

/// `app.kubernetes.io/name` of every object.
pub const APP_NAME: &str = "chatpipe";
/// `app.kubernetes.io/managed-by` of every object.
pub const MANAGED_BY: &str = "chatpipe-operator";

/// The plan's components: ingest and api are Deployments, the processors a
/// StatefulSet, the migration a Job.
pub use chatpipe_plan::Component;

/// Name of `component`'s object(s) for the pipeline `instance`
/// (`<instance>-<component>`).
pub fn object_name(instance: &str, component: Component) -> String {
    format!("{instance}-{}", component.as_str())
}

/// Name of the ConfigMap holding `component`'s settings
/// (`<instance>-<component>-config`).
pub fn config_map_name(instance: &str, component: Component) -> String {
    format!("{instance}-{}-config", component.as_str())
}

/// Labels that select the pods of `component` of `instance`.
pub fn selector(instance: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), instance.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.as_str().to_owned(),
        ),
    ])
}

/// [`selector`] in the string form of a label selector
/// (`key=value,key=value`, keys sorted), as a scale subresource reports it.
pub fn selector_string(instance: &str, component: Component) -> String {
    selector(instance, component)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Every label of an object of `component` of `instance`: the selector
/// labels plus `managed-by` and `part-of`.
pub fn labels(instance: &str, component: Component) -> BTreeMap<String, String> {
    let mut l = selector(instance, component);
    l.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        MANAGED_BY.to_owned(),
    );
    l.insert("app.kubernetes.io/part-of".to_owned(), APP_NAME.to_owned());
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_is_a_subset_of_labels() {
        for c in [
            Component::Ingest,
            Component::Processor,
            Component::Api,
            Component::Migrate,
        ] {
            let s = selector("demo", c);
            let l = labels("demo", c);
            assert_eq!(s.len(), 3);
            for (k, v) in &s {
                assert_eq!(l.get(k), Some(v));
            }
            assert_eq!(l["app.kubernetes.io/managed-by"], "chatpipe-operator");
            assert_eq!(s["app.kubernetes.io/component"], c.as_str());
        }
    }

    #[test]
    fn components_select_disjoint_pods() {
        assert_ne!(
            selector("demo", Component::Ingest),
            selector("demo", Component::Api)
        );
        assert_ne!(
            selector("a", Component::Ingest),
            selector("b", Component::Ingest)
        );
    }

    #[test]
    fn names() {
        assert_eq!(object_name("demo", Component::Processor), "demo-processor");
        assert_eq!(object_name("demo", Component::Migrate), "demo-migrate");
        assert_eq!(
            config_map_name("demo", Component::Processor),
            "demo-processor-config"
        );
    }

    #[test]
    fn selector_string_lists_the_selector_labels() {
        assert_eq!(
            selector_string("demo", Component::Processor),
            "app.kubernetes.io/component=processor,app.kubernetes.io/instance=demo,app.kubernetes.io/name=chatpipe"
        );
    }
}
