//! The Python interpreter of the interop tests: the virtualenv `tests/python/setup.sh` creates
//! (the unmodified `spiffe` package from PyPI and grpcio). `.ci/run` creates it and sets
//! `MESHTRUST_REQUIRE_PYTHON=1`, so there a missing venv fails the test instead of skipping it.

use std::path::PathBuf;

/// The interpreter to run, or `None` (with a note on stderr) when the venv is absent and not
/// required. `MESHTRUST_TEST_PYTHON` overrides the venv.
pub fn interpreter() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MESHTRUST_TEST_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyvenv/bin/python");
    if venv.exists() {
        return Some(venv);
    }
    assert!(
        std::env::var("MESHTRUST_REQUIRE_PYTHON").as_deref() != Ok("1"),
        "{} is missing: run tests/python/setup.sh",
        venv.display()
    );
    eprintln!(
        "skipped: no Python interop venv at {} (run tests/python/setup.sh)",
        venv.display()
    );
    None
}

/// `tests/python/<name>`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}
