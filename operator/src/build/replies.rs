//! The FAQ reply rules of the processors ([`chatpipe_plan::Topology::reply_rules`]):
//! a ConfigMap `<name>-replies` with the key [`RULES_KEY`], mounted
//! read-only into the processor pods at [`REPLIES_DIR`] as a whole
//! directory (never `subPath`: the kubelet then swaps the file in place
//! when the ConfigMap changes), and the processor setting
//! `reply_rules_file` pointing at [`RULES_FILE`].
//!
//! The processors re-read the file when its content changes, so the rules
//! stay out of the processor's checksum ([`super::configmap::checksums`]):
//! editing `spec.replies.faq` updates the ConfigMap and rolls no pod. Only
//! the rules appearing or disappearing changes the pod template (the
//! mount and the setting come and go with them). Without rules there is no
//! ConfigMap (the reconciler deletes one left from before) and no mount.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, Volume, VolumeMount};

use super::labels::Component;
use super::BuildInput;

/// The ConfigMap key (and file name) of the rules.
pub const RULES_KEY: &str = "rules.json";
/// Where the processors find the rules ConfigMap, read-only.
pub const REPLIES_DIR: &str = "/etc/chatpipe/replies";
/// The rules file the processors read (`reply_rules_file`).
pub const RULES_FILE: &str = "/etc/chatpipe/replies/rules.json";
/// Name of the pod volume of the rules.
const VOLUME: &str = "replies";

/// Name of the rules ConfigMap (`<instance>-replies`).
pub fn name(instance: &str) -> String {
    format!("{instance}-replies")
}

/// The rules ConfigMap, when the plan has rules.
pub fn config_map(input: &BuildInput<'_>) -> Option<ConfigMap> {
    let rules = input.topology.reply_rules.as_ref()?;
    Some(ConfigMap {
        metadata: input.meta(name(input.name), Component::Processor),
        data: Some(BTreeMap::from([(RULES_KEY.to_owned(), rules.clone())])),
        ..ConfigMap::default()
    })
}

/// The volume of the rules ConfigMap and its read-only directory mount, for
/// `component`'s pods: the processors', when the plan has rules.
pub fn volume(input: &BuildInput<'_>, component: Component) -> Option<(Volume, VolumeMount)> {
    input.topology.reply_rules.as_ref()?;
    if component != Component::Processor {
        return None;
    }
    Some((
        Volume {
            name: VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: name(input.name),
                items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                    key: RULES_KEY.to_owned(),
                    path: RULES_KEY.to_owned(),
                    mode: None,
                }]),
                default_mode: Some(0o444),
                optional: Some(false),
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: VOLUME.to_owned(),
            mount_path: REPLIES_DIR.to_owned(),
            read_only: Some(true),
            sub_path: None,
            ..VolumeMount::default()
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::super::labels;
    use super::super::testing::*;
    use super::*;

    #[test]
    fn rules_become_a_config_map_with_rules_json() {
        let cm = with_input(&with_rules(), config_map).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("demo-replies"));
        assert_eq!(cm.metadata.owner_references, Some(vec![owner()]));
        assert_eq!(
            cm.metadata.labels,
            Some(labels::labels("demo", Component::Processor))
        );
        let data = cm.data.unwrap();
        assert_eq!(data.len(), 1);
        let rules: serde_json::Value = serde_json::from_str(&data[RULES_KEY]).unwrap();
        assert_eq!(
            rules,
            serde_json::json!({"rules": [
                {"keyword": "price", "answer": "It costs 10."},
                {"regex": "(?i)open(ing)? hours", "answer": "9 to 5."}
            ]})
        );
    }

    #[test]
    fn no_rules_no_config_map_and_no_volume() {
        assert!(with_input(&spec(), config_map).is_none());
        for c in Component::ALL {
            assert!(with_input(&spec(), |i| volume(i, c)).is_none(), "{c}");
        }
        // A template alone is a setting, not a rules file.
        let mut s = spec();
        s.replies = Some(serde_yaml::from_str("template: 'ok {{ count }}'").unwrap());
        assert!(with_input(&s, config_map).is_none());
        assert!(with_input(&s, |i| volume(i, Component::Processor)).is_none());
    }

    #[test]
    fn only_the_processors_mount_the_rules_as_a_directory() {
        let s = with_rules();
        let (v, m) = with_input(&s, |i| volume(i, Component::Processor)).unwrap();
        let source = v.config_map.unwrap();
        assert_eq!(source.name, "demo-replies");
        assert_eq!(source.optional, Some(false));
        assert_eq!(v.name, m.name);
        assert_eq!(m.mount_path, REPLIES_DIR);
        assert_eq!(m.read_only, Some(true));
        assert!(
            m.sub_path.is_none(),
            "a subPath mount is never updated by the kubelet"
        );
        assert_eq!(RULES_FILE, format!("{REPLIES_DIR}/{RULES_KEY}"));
        for c in [
            Component::Ingest,
            Component::Api,
            Component::Delivery,
            Component::Migrate,
        ] {
            assert!(with_input(&s, |i| volume(i, c)).is_none(), "{c}");
        }
    }
}
