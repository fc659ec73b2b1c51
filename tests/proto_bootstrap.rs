//! Bootstrap check for the checked-in Workload API bindings (`src/workload_api/gen/workload.rs`).
//!
//! The generated code is committed so that building meshtrust needs no `protoc` and no build
//! script. This test regenerates it from `proto/workload.proto` with the same pure-Rust toolchain
//! (protox parses the proto, tonic-prost-build writes the prost messages plus the tonic client and
//! server) and fails if the result differs from the committed file, so the proto and the code can
//! never drift apart unnoticed.
//!
//! To rewrite the committed file after editing the proto (or after bumping tonic/prost):
//!
//! ```sh
//! MESHTRUST_REGEN_PROTO=1 cargo test --test proto_bootstrap
//! ```

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

/// The command that rewrites the checked-in file; printed when the check fails.
const REGEN_COMMAND: &str = "MESHTRUST_REGEN_PROTO=1 cargo test --test proto_bootstrap";

/// Set to `1` to overwrite the checked-in file instead of comparing against it.
const REGEN_ENV: &str = "MESHTRUST_REGEN_PROTO";

/// Name of the generated file. The proto has no `package` line (that would change the wire paths
/// to `/<package>.SpiffeWorkloadAPI/...`), and prost-build names the output of a package-less
/// file `_.rs` unless told otherwise.
const GEN_FILE_STEM: &str = "workload";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn checked_in_path() -> PathBuf {
    root()
        .join("src/workload_api/gen")
        .join(format!("{GEN_FILE_STEM}.rs"))
}

/// Generates the bindings for `proto/workload.proto` into `out_dir` and returns the file's text.
fn generate(out_dir: &Path) -> String {
    let proto_dir = root().join("proto");
    // protox bundles google/protobuf/*.proto, so the `struct.proto` import resolves without protoc.
    let fds = protox::compile([proto_dir.join("workload.proto")], [&proto_dir])
        .unwrap_or_else(|e| panic!("protox failed to compile proto/workload.proto: {e:?}"));

    let mut config = tonic_prost_build::Config::new();
    config.default_package_filename(GEN_FILE_STEM);
    // Messages that carry a private key or a bearer token get a redacting Debug written by
    // hand in src/workload_api/proto.rs, so no `{:?}` can leak them into a log.
    config.skip_debug([".X509SVID", ".JWTSVID", ".ValidateJWTSVIDRequest"]);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .out_dir(out_dir)
        .compile_fds_with_config(fds, config)
        .unwrap_or_else(|e| panic!("tonic-prost-build failed: {e}"));

    let path = out_dir.join(format!("{GEN_FILE_STEM}.rs"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("generated file {} missing: {e}", path.display()))
}

/// Index and both versions of the first line where two texts differ, to make a failure readable.
fn first_difference<'a>(a: &'a str, b: &'a str) -> Option<(usize, &'a str, &'a str)> {
    let (mut la, mut lb) = (a.lines(), b.lines());
    for n in 1.. {
        match (la.next(), lb.next()) {
            (None, None) => return None,
            (x, y) if x == y => continue,
            (x, y) => {
                return Some((
                    n,
                    x.unwrap_or("<end of file>"),
                    y.unwrap_or("<end of file>"),
                ));
            }
        }
    }
    None
}

#[test]
fn generated_workload_api_code_is_up_to_date() {
    let tmp = tempfile::tempdir().expect("create temp dir");
    let fresh = generate(tmp.path());
    let target = checked_in_path();

    if std::env::var(REGEN_ENV).is_ok_and(|v| v == "1") {
        std::fs::write(&target, &fresh)
            .unwrap_or_else(|e| panic!("write {}: {e}", target.display()));
        eprintln!("rewrote {}", target.display());
        return;
    }

    let committed = std::fs::read_to_string(&target).unwrap_or_default();
    if let Some((line, want, have)) = first_difference(&fresh, &committed) {
        panic!(
            "{} is out of date with proto/workload.proto (first difference at line {line}:\n  \
             generated: {want}\n  checked in: {have})\nregenerate it with:\n  {REGEN_COMMAND}",
            target.display()
        );
    }
}
