//! The examples are manifests local mode runs: each example set (the
//! local one, the cluster one with its Secrets, the dev one) loads,
//! validates, plans and resolves its Postgres Secret, and `local.yaml`
//! holds the documented values.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chatpipe_local::manifest::{load, resolve};
use chatpipe_plan::{Component, Settings};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn examples_are_valid_pipelines_with_their_secrets() {
    let ex = root().join("examples");
    for files in [
        vec![ex.join("local.yaml")],
        vec![ex.join("chatpipeline.yaml"), ex.join("secrets.yaml")],
        vec![ex.join("dev/chatpipeline.yaml")],
        vec![ex.join("secure-local.yaml")],
    ] {
        let m = load(&files).unwrap_or_else(|e| panic!("{files:?}: {e}"));
        let s = resolve(&m).unwrap_or_else(|e| panic!("{files:?}: {e}"));
        let processors = s.topology.get(Component::Processor).replicas;
        assert!(processors as i32 <= s.topology.kafka.partitions);
        // Every secret the plan hands over resolves from the files.
        assert_eq!(s.secrets.len(), s.topology.secrets.len(), "{files:?}");
    }
    // The secure example turns on what it says it does.
    let secure = resolve(&load(&[ex.join("secure-local.yaml")]).unwrap()).unwrap();
    let api = secure.secret_env(Component::Api);
    assert!(
        api.contains_key("CHATPIPE_API_JWT_SECRET"),
        "{:?}",
        api.keys()
    );
    let ingest = secure.secret_env(Component::Ingest);
    assert!(ingest.contains_key("CHATPIPE_WEBHOOK_SECRETS"));
    let Settings::Ingest(i) = &secure.topology.get(Component::Ingest).settings else {
        panic!("ingest settings expected");
    };
    assert_eq!((i.rate_limit, i.rate_limit_burst), (Some(200), Some(400)));
    let local = resolve(&load(&[ex.join("local.yaml")]).unwrap()).unwrap();
    assert_eq!(local.topology.kafka.bootstrap_servers, "127.0.0.1:9092");
    assert_eq!(
        local.postgres_url,
        "postgres://postgres@127.0.0.1:5432/chatpipe"
    );
    assert_eq!(local.topology.kafka.partitions, 8);
    let replicas = |c| local.topology.get(c).replicas;
    assert_eq!(
        (
            replicas(Component::Ingest),
            replicas(Component::Processor),
            replicas(Component::Api)
        ),
        (1, 2, 1)
    );
    let Settings::Processor(p) = &local.topology.get(Component::Processor).settings else {
        panic!("processor settings expected");
    };
    assert_eq!(
        (p.grouping_gap, p.late_tolerance),
        (Some(Duration::from_secs(5)), Some(Duration::from_secs(6)))
    );
}
