//! The processor StatefulSet. Each pod derives its ordinal from its name
//! (`<name>-processor-<i>`, the trailing number of `HOSTNAME`) and learns the
//! number of processors from its pod template's env (the plan's processor
//! count, `CHATPIPE_PROCESSOR_REPLICAS`); partition `p` belongs to ordinal
//! `p mod N` ([`partitions_of`]).

use chatpipe_plan::Settings;
use chatpipe_settings::processor::ProcessorSettings;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::labels::{self, Component};
use super::pod::{checksum_annotations, pod_template, service_container};
use super::{BuildInput, PROCESSOR_PORT};

/// Partitions owned by processor `ordinal` of `replicas` on a topic of
/// `partitions` partitions ([`chatpipe_core::assignment::partitions_of`],
/// the function the processors claim by). Empty for a negative ordinal or
/// replica count.
pub fn partitions_of(ordinal: i32, replicas: i32, partitions: i32) -> Vec<i32> {
    match (u32::try_from(ordinal), u32::try_from(replicas)) {
        (Ok(o), Ok(n)) => chatpipe_core::assignment::partitions_of(o, n, partitions),
        _ => Vec::new(),
    }
}

/// Ordinal of a StatefulSet pod from its name (`demo-processor-3` → 3).
pub fn ordinal_from_pod_name(pod: &str) -> Option<i32> {
    pod.rsplit_once('-')?.1.parse().ok()
}

/// The StatefulSet `<name>-processor` running `chatpipe-processor`, with the
/// headless Service of the same name as its governing service.
pub fn processor(input: &BuildInput<'_>) -> StatefulSet {
    let component = Component::Processor;
    let size = &input.pipeline.processor;
    let replicas = Settings::Processor(ProcessorSettings {
        replicas: Some(input.topology.get(component).replicas),
        ..ProcessorSettings::default()
    });
    let container = service_container(input, component, PROCESSOR_PORT, size, replicas);
    let name = labels::object_name(input.name, component);
    StatefulSet {
        metadata: input.meta(name.clone(), component),
        spec: Some(StatefulSetSpec {
            replicas: Some(size.replicas),
            service_name: Some(name),
            selector: LabelSelector {
                match_labels: Some(labels::selector(input.name, component)),
                match_expressions: None,
            },
            // Start and stop processors together: ownership is fenced by an
            // owner epoch in Postgres, not by pod ordering.
            pod_management_policy: Some("Parallel".to_owned()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: None,
            }),
            template: pod_template(
                input,
                component,
                container,
                None,
                checksum_annotations(input, component),
            ),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::pod::checks::*;
    use super::super::testing::*;
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    /// The variable the processors read their count N from.
    const REPLICAS_ENV: &str = "CHATPIPE_PROCESSOR_REPLICAS";

    #[test]
    fn processor_statefulset() {
        let s = with_input(&spec(), processor);
        assert_eq!(s.metadata.name.as_deref(), Some("demo-processor"));
        let spec = s.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("demo-processor"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(
            spec.selector.match_labels,
            Some(labels::selector("demo", Component::Processor))
        );
        assert_common_pod(&spec.template, Component::Processor, PROCESSOR_PORT);
        let c = &spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.command, Some(vec!["chatpipe-processor".to_owned()]));
        assert_eq!(env_value(c, REPLICAS_ENV), Some("3"));
        assert!(
            env_value(c, "CHATPIPE_PROCESSOR_ORDINAL").is_none(),
            "the ordinal comes from the pod name"
        );
        assert_eq!(
            c.resources.as_ref().unwrap().requests.as_ref().unwrap()["memory"],
            Quantity("256Mi".into())
        );
    }

    /// With FAQ rules the processors mount their ConfigMap as a read-only
    /// directory (no subPath, so the kubelet updates the file in place);
    /// without, there is no such volume.
    #[test]
    fn the_rules_are_mounted_into_the_processors() {
        let sts = with_input(&with_rules(), processor);
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.config_map.is_some())
            .expect("the rules volume");
        assert_eq!(volume.config_map.as_ref().unwrap().name, "demo-replies");
        let mount = pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume.name)
            .expect("its mount");
        assert_eq!(mount.mount_path, "/etc/chatpipe/replies");
        assert_eq!(mount.read_only, Some(true));
        assert!(mount.sub_path.is_none());
        // `/tmp` stays.
        assert!(pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/tmp"));

        let pod = with_input(&spec(), processor)
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert!(pod.volumes.iter().flatten().all(|v| v.config_map.is_none()));
        assert!(pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| m.mount_path != "/etc/chatpipe/replies"));
    }

    #[test]
    fn scaling_changes_replicas_and_env() {
        let mut s = spec();
        s.processor.replicas = 6;
        let sts = with_input(&s, processor);
        let spec = sts.spec.unwrap();
        assert_eq!(spec.replicas, Some(6));
        let c = &spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(env_value(c, REPLICAS_ENV), Some("6"));
    }

    #[test]
    fn partition_assignment_per_processor() {
        // The fixture: 6 partitions, 3 processors.
        assert_eq!(partitions_of(0, 3, 6), [0, 3]);
        assert_eq!(partitions_of(1, 3, 6), [1, 4]);
        assert_eq!(partitions_of(2, 3, 6), [2, 5]);
        assert_eq!(partitions_of(3, 3, 6), Vec::<i32>::new());
        assert_eq!(partitions_of(0, 0, 6), Vec::<i32>::new());
        // Uneven split: 8 partitions over 3 processors.
        assert_eq!(partitions_of(0, 3, 8), [0, 3, 6]);
        assert_eq!(partitions_of(1, 3, 8), [1, 4, 7]);
        assert_eq!(partitions_of(2, 3, 8), [2, 5]);
    }

    #[test]
    fn every_partition_has_exactly_one_owner() {
        for partitions in 1..=12 {
            for replicas in 1..=partitions {
                let mut owners = vec![0; partitions as usize];
                for ordinal in 0..replicas {
                    let mine = partitions_of(ordinal, replicas, partitions);
                    assert!(
                        !mine.is_empty(),
                        "processor {ordinal}/{replicas} owns nothing"
                    );
                    for p in mine {
                        owners[p as usize] += 1;
                    }
                }
                assert!(
                    owners.iter().all(|&n| n == 1),
                    "{partitions}/{replicas}: {owners:?}"
                );
            }
        }
    }

    #[test]
    fn pod_names_give_ordinals() {
        assert_eq!(ordinal_from_pod_name("demo-processor-0"), Some(0));
        assert_eq!(ordinal_from_pod_name("my-demo-processor-11"), Some(11));
        assert_eq!(ordinal_from_pod_name("processor"), None);
        // Each pod of the StatefulSet gets the partitions of its ordinal.
        let sts = with_input(&spec(), processor);
        let n = sts.spec.as_ref().unwrap().replicas.unwrap();
        let all: Vec<i32> = (0..n)
            .map(|i| format!("{}-{i}", sts.metadata.name.as_deref().unwrap()))
            .flat_map(|pod| partitions_of(ordinal_from_pod_name(&pod).unwrap(), n, 6))
            .collect();
        let mut sorted = all.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2, 3, 4, 5]);
    }
}
