//! PodDisruptionBudgets: at most one pod of each workload is evicted at a
//! time by voluntary disruptions (node drains).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels::{self, Component};
use super::BuildInput;

/// The PDB `<name>-<component>` with `maxUnavailable: 1`.
pub fn pdb(input: &BuildInput<'_>, component: Component) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: input.meta(labels::object_name(input.name, component), component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels::selector(input.name, component)),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn pdb_selects_its_workload() {
        for c in [Component::Ingest, Component::Processor, Component::Api] {
            let p = with_input(&spec(), |i| pdb(i, c));
            assert_eq!(p.metadata.name, Some(format!("demo-{}", c.as_str())));
            let s = p.spec.unwrap();
            assert_eq!(s.max_unavailable, Some(IntOrString::Int(1)));
            assert_eq!(s.min_available, None);
            assert_eq!(
                s.selector.unwrap().match_labels,
                Some(labels::selector("demo", c))
            );
        }
    }
}
