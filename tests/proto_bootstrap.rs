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

/// One checked-in binding: its proto, where it goes, and the messages whose `Debug` is written
/// by hand (they carry a private key or a bearer token, so no `{:?}` may leak them into a log).
struct Binding {
    proto: &'static str,
    /// The generator's output name: `_.rs` is renamed to it for a package-less proto, a
    /// package's file is `<package>.rs`.
    generated: &'static str,
    checked_in: &'static str,
    package_less_stem: Option<&'static str>,
    skip_debug: &'static [&'static str],
}

const WORKLOAD: Binding = Binding {
    proto: "workload.proto",
    generated: "workload.rs",
    checked_in: "src/workload_api/gen/workload.rs",
    // No `package` line (that would change the wire paths to `/<package>.SpiffeWorkloadAPI/...`),
    // and prost-build names the output of a package-less file `_.rs` unless told otherwise.
    package_less_stem: Some(GEN_FILE_STEM),
    skip_debug: &[".X509SVID", ".JWTSVID", ".ValidateJWTSVIDRequest"],
};

const AGENT: Binding = Binding {
    proto: "agent.proto",
    generated: "meshtrust.agent.v1.rs",
    checked_in: "src/agent_api/gen/agent.rs",
    package_less_stem: None,
    skip_debug: &[
        ".meshtrust.agent.v1.JoinToken",
        ".meshtrust.agent.v1.MintedJwtSvid",
    ],
};

/// Generates the bindings for `binding.proto` into `out_dir` and returns the file's text.
fn generate(binding: &Binding, out_dir: &Path) -> String {
    let proto_dir = root().join("proto");
    // protox bundles google/protobuf/*.proto, so the `struct.proto` import resolves without protoc.
    let fds = protox::compile([proto_dir.join(binding.proto)], [&proto_dir])
        .unwrap_or_else(|e| panic!("protox failed to compile proto/{}: {e:?}", binding.proto));

    let mut config = tonic_prost_build::Config::new();
    if let Some(stem) = binding.package_less_stem {
        config.default_package_filename(stem);
    }
    config.skip_debug(binding.skip_debug.iter().copied());
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .out_dir(out_dir)
        .compile_fds_with_config(fds, config)
        .unwrap_or_else(|e| panic!("tonic-prost-build failed: {e}"));

    let path = out_dir.join(binding.generated);
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

/// Regenerates `binding` and compares it with the checked-in file (or rewrites that file).
fn check(binding: &Binding) {
    let tmp = tempfile::tempdir().expect("create temp dir");
    let fresh = generate(binding, tmp.path());
    let target = root().join(binding.checked_in);

    if std::env::var(REGEN_ENV).is_ok_and(|v| v == "1") {
        std::fs::write(&target, &fresh)
            .unwrap_or_else(|e| panic!("write {}: {e}", target.display()));
        eprintln!("rewrote {}", target.display());
        return;
    }

    let committed = std::fs::read_to_string(&target).unwrap_or_default();
    if let Some((line, want, have)) = first_difference(&fresh, &committed) {
        panic!(
            "{} is out of date with proto/{} (first difference at line {line}:\n  \
             generated: {want}\n  checked in: {have})\nregenerate it with:\n  {REGEN_COMMAND}",
            target.display(),
            binding.proto
        );
    }
}

#[test]
fn generated_workload_api_code_is_up_to_date() {
    check(&WORKLOAD);
}

#[test]
fn generated_agent_api_code_is_up_to_date() {
    check(&AGENT);
}
