//! The etcd gRPC client code in `src/backend/etcd/proto/` is generated from
//! `proto/etcd/*.proto` and committed, so that building dlock needs no
//! protobuf compiler. This test generates it again with `protox` (a protobuf
//! compiler written in Rust) and `tonic-prost-build`, and fails when the
//! committed code is stale. `DLOCK_REGENERATE=1 cargo test --test etcd_proto`
//! rewrites it.

use std::path::Path;

#[test]
fn generated_etcd_code_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let protos = root.join("proto/etcd");
    let committed = root.join("src/backend/etcd/proto");
    let fds = protox::compile(["auth.proto", "kv.proto", "rpc.proto"], [&protos])
        .expect("compile etcd's protos");
    let out = tempfile::tempdir().unwrap();
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("generate the Rust code");
    let regenerate = std::env::var_os("DLOCK_REGENERATE").is_some();
    let mut fresh: Vec<String> = Vec::new();
    for e in std::fs::read_dir(out.path()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let new = std::fs::read(e.path()).unwrap();
        let path = committed.join(&name);
        if regenerate {
            std::fs::create_dir_all(&committed).unwrap();
            std::fs::write(&path, &new).unwrap();
        } else {
            assert!(
                std::fs::read(&path).unwrap_or_default() == new,
                "src/backend/etcd/proto/{name} is stale: run \
                 `DLOCK_REGENERATE=1 cargo test --test etcd_proto` and commit the result"
            );
        }
        fresh.push(name);
    }
    assert!(!fresh.is_empty());
    // No generated file left over from a package that is gone.
    for e in std::fs::read_dir(&committed).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            fresh.contains(&name),
            "src/backend/etcd/proto/{name} is generated from no proto file"
        );
    }
}
