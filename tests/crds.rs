//! `crds/` holds exactly what `latchkey crds` prints: regenerate with `make crds` after changing src/api.
#[test]
fn crds_dir_is_up_to_date() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_latchkey")).arg("crds").output().expect("run latchkey crds");
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/latchkey.dev_crds.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/latchkey.dev_crds.yaml");
    assert!(generated == committed, "crds/ is out of date with src/api: run `make crds` (latchkey crds > {path})");
}
