//! The committed CRD is exactly what `routeid crd` generates.

#[test]
fn committed_crd_is_current() {
    let generated = routeid::api::crd_yaml().expect("render CRD");
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/balancerpool.yaml"))
        .expect("crds/balancerpool.yaml is committed");
    assert!(
        generated == committed,
        "crds/balancerpool.yaml is stale: run `cargo run -- crd > crds/balancerpool.yaml` and commit it"
    );
}

#[test]
fn crd_binary_prints_the_same() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_routeid")).arg("crd").output().expect("run routeid crd");
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), routeid::api::crd_yaml().unwrap());
}
