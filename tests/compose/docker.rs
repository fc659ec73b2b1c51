//! docker-compose.yml run for real in the local Docker Engine: the image made from the binary
//! under test (.ci/docker-image.sh: the Dockerfile's runtime stage on the locally made base
//! image, no registry), one compose project with a unique name per run, every command under a
//! hang guard, and `down -v` plus the image tag removed on drop, whatever happened.
//!
//! Docker absent (no engine, no compose tool, no base image): the test prints a note and skips,
//! unless `MESHTRUST_REQUIRE_DOCKER=1` (CI), where that fails it; there a missing base image is
//! made (.ci/docker-base.sh, cached).

#![allow(dead_code)] // shared by tests/compose.rs and tests/compose_hosts.rs, each using part

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The base image the Dockerfile's runtime stage starts from.
const BASE_IMAGE: &str = "debian:bookworm-slim";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn required() -> bool {
    std::env::var("MESHTRUST_REQUIRE_DOCKER").as_deref() == Ok("1")
}

/// Runs `cmd` to completion within `guard`; kills it and panics past that.
pub fn run(cmd: &mut Command, guard: Duration) -> Output {
    try_run(cmd, guard).unwrap_or_else(|e| panic!("{e}"))
}

/// [`run`] without the panic (for `Drop`, which may run while a panic unwinds).
fn try_run(cmd: &mut Command, guard: Duration) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(format!("{what}: no pipes"));
    };
    let (out, err) = (drain(Box::new(stdout)), drain(Box::new(stderr)));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > guard => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} still running after {guard:?}: killed"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("{what}: {e}")),
        }
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

fn succeeds(cmd: &mut Command) -> bool {
    try_run(cmd, Duration::from_secs(60)).is_ok_and(|o| o.status.success())
}

/// Both output streams as one text.
pub use crate::common::output_text as text;

/// The compose tool of this machine: `docker compose` (v2) or `docker-compose` (v1).
#[derive(Debug, Clone)]
pub struct Engine {
    compose: Vec<&'static str>,
}

impl Engine {
    /// The engine, or `None` after a skip note; panics instead when Docker is required.
    pub fn or_skip(test: &str) -> Option<Self> {
        let missing = |why: String| -> Option<Self> {
            assert!(
                !required(),
                "{test}: {why}, and MESHTRUST_REQUIRE_DOCKER=1 is set"
            );
            eprintln!("SKIPPED {test}: {why} (CI runs it: MESHTRUST_REQUIRE_DOCKER=1)");
            None
        };
        if !succeeds(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"])) {
            return missing("no Docker Engine answers `docker info`".into());
        }
        let compose = if succeeds(Command::new("docker").args(["compose", "version"])) {
            vec!["docker", "compose"]
        } else if succeeds(Command::new("docker-compose").arg("version")) {
            vec!["docker-compose"]
        } else {
            return missing("no compose tool (`docker compose` or `docker-compose`)".into());
        };
        let base = succeeds(Command::new("docker").args(["image", "inspect", BASE_IMAGE]));
        if !base && !required() {
            return missing(format!(
                "no {BASE_IMAGE} image (make it without a registry: .ci/docker-base.sh)"
            ));
        }
        Some(Self { compose })
    }
}

/// One compose project of docker-compose.yml (or another compose file of the repository) on
/// its own image tag, both named uniquely for this run; `down -v` and the tag removed on drop.
#[derive(Debug)]
pub struct Project {
    engine: Engine,
    file: &'static str,
    name: String,
    image: String,
    /// Container ids by service, once known (`docker kill`/`start`/`restart` keep the id;
    /// nothing here recreates a container).
    containers: std::cell::RefCell<std::collections::BTreeMap<String, String>>,
}

impl Project {
    /// Nothing started yet, but dropping it cleans up whatever exists under its names.
    pub fn new(engine: &Engine) -> Self {
        Self::with_file(engine, "docker-compose.yml")
    }

    /// [`Self::new`] for the compose file `file` (a path in the repository).
    pub fn with_file(engine: &Engine, file: &'static str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("meshtrust-test-{}-{nanos}", std::process::id());
        Self {
            engine: engine.clone(),
            file,
            image: format!("meshtrust:{name}"),
            name,
            containers: Default::default(),
        }
    }

    /// The project's image tag.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// The engine's name of the project's network `network` (`<project>_<network>`).
    pub fn network(&self, network: &str) -> String {
        format!("{}_{network}", self.name)
    }

    /// Makes the PostgreSQL image of docker-compose.hosts.yml with .ci/docker-postgres.sh
    /// (cached by Docker's layer cache: it stays, unlike the project's own tag).
    pub fn build_postgres_image(&self) {
        let start = Instant::now();
        let out = run(
            Command::new(repo().join(".ci/docker-postgres.sh")).current_dir(repo()),
            Duration::from_secs(900),
        );
        assert!(
            out.status.success(),
            ".ci/docker-postgres.sh failed:\n{}",
            text(&out)
        );
        eprintln!(
            "{}: {} (in {:?})",
            self.name,
            text(&out).trim(),
            start.elapsed()
        );
    }

    /// Makes the project's image from `binary` with .ci/docker-image.sh (which makes the base
    /// image first if it is missing).
    pub fn build_image(&self, binary: &Path) {
        let start = Instant::now();
        let out = run(
            Command::new(repo().join(".ci/docker-image.sh"))
                .arg(binary)
                .arg(&self.image)
                .current_dir(repo()),
            Duration::from_secs(900),
        );
        assert!(
            out.status.success(),
            ".ci/docker-image.sh failed:\n{}",
            text(&out)
        );
        eprintln!("{}: image built (in {:?})", self.name, start.elapsed());
    }

    /// `compose -p NAME -f FILE ARGS` with `MESHTRUST_IMAGE` set.
    pub fn compose(&self, args: &[&str], guard: Duration) -> Output {
        run(&mut self.compose_command(args), guard)
    }

    fn compose_command(&self, args: &[&str]) -> Command {
        let (program, first) = self.engine.compose.split_first().unwrap();
        let mut cmd = Command::new(program);
        cmd.args(first)
            .args(["-p", &self.name, "-f"])
            .arg(repo().join(self.file))
            .args(args)
            .env("MESHTRUST_IMAGE", &self.image)
            .current_dir(repo());
        cmd
    }

    /// `up -d` without building (the image is made beforehand).
    pub fn up(&self) {
        let start = Instant::now();
        let out = self.compose(&["up", "-d", "--no-build"], Duration::from_secs(300));
        assert!(
            out.status.success(),
            "compose up failed:\n{}\n{}",
            text(&out),
            self.all_logs()
        );
        eprintln!("{}: up (in {:?})", self.name, start.elapsed());
    }

    /// The container id of `service`.
    pub fn container(&self, service: &str) -> String {
        if let Some(id) = self.containers.borrow().get(service) {
            return id.clone();
        }
        let out = self.compose(&["ps", "-q", service], Duration::from_secs(60));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!id.is_empty(), "{service}: no container\n{}", text(&out));
        self.containers
            .borrow_mut()
            .insert(service.to_owned(), id.clone());
        id
    }

    /// What `service` printed so far (stdout and stderr).
    pub fn logs(&self, service: &str) -> String {
        text(&run(
            Command::new("docker").args(["logs", &self.container(service)]),
            Duration::from_secs(60),
        ))
    }

    /// Every service's log, for failure reports.
    pub fn all_logs(&self) -> String {
        text(&self.compose(&["logs", "--no-color"], Duration::from_secs(60)))
    }

    /// `docker inspect -f FORMAT` of `service`'s container.
    pub fn inspect(&self, service: &str, format: &str) -> String {
        let out = run(
            Command::new("docker").args(["inspect", "-f", format, &self.container(service)]),
            Duration::from_secs(60),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `docker exec` in `service`'s container, as its own user.
    pub fn exec(&self, service: &str, args: &[&str]) -> Output {
        run(
            Command::new("docker")
                .arg("exec")
                .arg(self.container(service))
                .args(args),
            Duration::from_secs(60),
        )
    }

    /// `docker exec` in `service`'s container, its stdout read as JSON; `Err` with the output
    /// when the command fails or prints something else.
    pub fn exec_json(&self, service: &str, args: &[&str]) -> Result<serde_json::Value, String> {
        let out = self.exec(service, args);
        if !out.status.success() {
            return Err(text(&out));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", text(&out)))
    }

    /// `docker ARGS` (ARGS naming containers or networks of this project); panics on failure.
    pub fn docker(&self, args: &[&str]) -> Output {
        let out = run(Command::new("docker").args(args), Duration::from_secs(120));
        assert!(out.status.success(), "docker {args:?}: {}", text(&out));
        out
    }

    /// Waits until compose's health check calls `service` healthy.
    #[track_caller]
    pub fn wait_healthy(&self, service: &str, guard: Duration) {
        self.wait_for(&format!("{service} healthy"), guard, || {
            let health = self.inspect(service, "{{.State.Health.Status}}");
            if health == "healthy" {
                Ok(())
            } else {
                Err(health)
            }
        });
    }

    /// Polls `probe` every half second until it returns `Ok`, for at most `guard`; past that
    /// panics naming `what`, with the last probe's note and every service's log.
    #[track_caller]
    pub fn wait_for<T>(
        &self,
        what: &str,
        guard: Duration,
        mut probe: impl FnMut() -> Result<T, String>,
    ) -> T {
        let start = Instant::now();
        loop {
            match probe() {
                Ok(v) => {
                    eprintln!("{}: {what} (after {:?})", self.name, start.elapsed());
                    return v;
                }
                Err(note) if start.elapsed() > guard => panic!(
                    "waited {guard:?} for {what}; last: {note}\n--- compose logs ---\n{}",
                    self.all_logs()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let start = Instant::now();
        let down = try_run(
            &mut self.compose_command(&["down", "-v", "--remove-orphans", "-t", "5"]),
            Duration::from_secs(180),
        );
        match down {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("{}: compose down -v failed: {}", self.name, text(&out)),
            Err(e) => eprintln!("{}: compose down -v: {e}", self.name),
        }
        let _ = try_run(
            Command::new("docker").args(["image", "rm", &self.image]),
            Duration::from_secs(60),
        );
        eprintln!("{}: down -v (in {:?})", self.name, start.elapsed());
    }
}
