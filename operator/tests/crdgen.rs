//! `chatpipe-operator crdgen` prints exactly `crds/chatpipeline.yaml` (the
//! command the drift test tells you to run).

use std::process::Command;

#[test]
fn crdgen_prints_the_committed_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_chatpipe-operator"))
        .arg("crdgen")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let on_disk = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/chatpipeline.yaml"
    ))
    .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), on_disk);
}
