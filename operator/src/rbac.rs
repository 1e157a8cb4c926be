//! The Kubernetes permissions the controller needs — exactly the API calls it
//! makes, no more. The chart's ClusterRole is checked against
//! [`REQUIRED_PERMISSIONS`], and the mock-API tests check that every request
//! the reconciler sends is covered by it.

/// One RBAC rule: verbs on a resource of an API group (`""` = core).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    /// API group (`""` for the core group).
    pub api_group: &'static str,
    /// Resource (plural, with `/subresource` where relevant).
    pub resource: &'static str,
    /// Verbs, sorted alphabetically.
    pub verbs: &'static [&'static str],
}

/// Verbs of an object the controller only server-side applies: `patch`,
/// plus `create` because an apply that creates an object is also
/// authorized as `create`.
const APPLY: &[&str] = &["create", "patch"];
/// Verbs of a workload the controller applies, watches (`owns`) and reads
/// when paused.
const APPLY_WATCH_GET: &[&str] = &["create", "get", "list", "patch", "watch"];

/// Every permission the controller uses, cluster-wide.
pub const REQUIRED_PERMISSIONS: &[Permission] = &[
    // The resource itself: watched; the finalizer is added/removed with a JSON patch.
    Permission {
        api_group: "chatpipe.dev",
        resource: "chatpipelines",
        verbs: &["list", "patch", "watch"],
    },
    // Status written with server-side apply.
    Permission {
        api_group: "chatpipe.dev",
        resource: "chatpipelines/status",
        verbs: &["patch"],
    },
    // Applied; the FAQ rules ConfigMap (`<name>-replies`) dropped from
    // the spec is looked up by name and deleted if owned.
    Permission {
        api_group: "",
        resource: "configmaps",
        verbs: &["create", "delete", "get", "patch"],
    },
    Permission {
        api_group: "",
        resource: "services",
        verbs: APPLY,
    },
    // Read (never listed or written) to checksum the Secrets the pods
    // reference (database URLs, Kafka credentials, webhook and channel
    // credentials, …) into the pod templates.
    Permission {
        api_group: "",
        resource: "secrets",
        verbs: &["get"],
    },
    Permission {
        api_group: "apps",
        resource: "deployments",
        verbs: APPLY_WATCH_GET,
    },
    Permission {
        api_group: "apps",
        resource: "statefulsets",
        verbs: APPLY_WATCH_GET,
    },
    // The migration Job is watched so its completion updates the status;
    // listed to run migrations one at a time; finished older ones deleted.
    Permission {
        api_group: "batch",
        resource: "jobs",
        verbs: &["create", "delete", "list", "patch", "watch"],
    },
    // An Ingress dropped from the spec is looked up and deleted if owned.
    Permission {
        api_group: "networking.k8s.io",
        resource: "ingresses",
        verbs: &["create", "delete", "get", "patch"],
    },
    // NetworkPolicies (`spec.networkPolicy`): applied; the pipeline's own
    // are listed by label to delete the ones no longer in the spec.
    Permission {
        api_group: "networking.k8s.io",
        resource: "networkpolicies",
        verbs: &["create", "delete", "list", "patch"],
    },
    Permission {
        api_group: "policy",
        resource: "poddisruptionbudgets",
        verbs: APPLY,
    },
    // Kubernetes Events through kube's Recorder (create, then patch a series).
    Permission {
        api_group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
    },
];

/// Whether `verb` on `resource` of `api_group` is granted by
/// [`REQUIRED_PERMISSIONS`].
pub fn is_allowed(api_group: &str, resource: &str, verb: &str) -> bool {
    REQUIRED_PERMISSIONS
        .iter()
        .any(|p| p.api_group == api_group && p.resource == resource && p.verbs.contains(&verb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_sorted_and_resources_unique() {
        let mut seen = std::collections::HashSet::new();
        for p in REQUIRED_PERMISSIONS {
            assert!(seen.insert((p.api_group, p.resource)), "{p:?} twice");
            let mut sorted = p.verbs.to_vec();
            sorted.sort_unstable();
            assert_eq!(sorted, p.verbs, "{p:?}");
        }
    }

    #[test]
    fn least_privilege() {
        assert!(is_allowed("", "secrets", "get"));
        assert!(!is_allowed("", "secrets", "list"));
        assert!(!is_allowed("apps", "deployments", "delete"));
        assert!(!is_allowed("", "configmaps", "list"));
        assert!(!is_allowed("", "pods", "get"));
    }
}
