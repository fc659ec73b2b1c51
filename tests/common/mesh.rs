//! Two-mesh fixtures: configs on 127.0.0.1:0 listeners bound up front (so two daemons can point
//! at each other), bootstrap bundles exchanged the way operators do, daemons run in-process.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshtrust::app::{Daemon, DaemonOptions};
use meshtrust::clock::{Clock, SystemClock};
use meshtrust::config::Config;
use tokio::net::TcpListener;

/// One mesh's folder, config and pre-bound bundle endpoint listener.
pub struct Mesh {
    pub name: String,
    pub dir: PathBuf,
    pub listener: Option<TcpListener>,
    pub port: u16,
}

impl Mesh {
    pub async fn new(root: &Path, name: &str) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("peers")).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        Self {
            name: name.to_owned(),
            dir,
            listener: Some(listener),
            port,
        }
    }

    /// A mesh under `root` that federates with nobody, its config written (1 s refresh hint):
    /// the peer that a daemon under test fetches from. Not started.
    pub async fn alone(root: &Path, name: &str) -> Self {
        let mesh = Self::new(root, name).await;
        mesh.write_config("", "1s", None, "");
        mesh
    }

    /// mesh-a and mesh-b under `root`, configs written (1 s refresh hints, `a_extra` and
    /// `b_extra` appended): mesh-a federates with mesh-b, and mesh-b with mesh-a when
    /// `both_ways`; the bootstrap bundles handed over. Not started.
    pub async fn pair(root: &Path, a_extra: &str, b_extra: &str, both_ways: bool) -> (Self, Self) {
        let a = Self::new(root, "mesh-a").await;
        let b = Self::new(root, "mesh-b").await;
        a.write_config("", "1s", Some(&b), a_extra);
        b.write_config("", "1s", both_ways.then_some(&a), b_extra);
        if both_ways {
            a.give_bootstrap_to(&b);
        }
        b.give_bootstrap_to(&a);
        (a, b)
    }

    pub fn td(&self) -> String {
        format!("{}.test", self.name)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("meshtrust.toml")
    }

    /// Writes the config: `ca` holds `[ca]` lines, `peer` the peer mesh (https_spiffe,
    /// bootstrapped from `peers/`), `extra` more TOML appended.
    pub fn write_config(&self, ca: &str, refresh_hint: &str, peer: Option<&Mesh>, extra: &str) {
        let mut config = super::config::DaemonConfig::new(&self.td())
            .ca(ca)
            .bundle_endpoint(self.port, refresh_hint);
        if let Some(p) = peer {
            config = config.peer(&p.td(), &p.url(), None, true);
        }
        config.section(extra).write(&self.dir);
    }

    /// This mesh's bundle endpoint URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.port)
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path()).unwrap()
    }

    /// The bundle an operator hands to the peer (`meshtrust bundle show`), written into the
    /// peer's `peers/` folder.
    pub fn give_bootstrap_to(&self, peer: &Mesh) {
        self.write_bootstrap_into(&peer.dir);
    }

    /// [`Mesh::give_bootstrap_to`] a peer daemon in `dir` (not a [`Mesh`]: the real binary,
    /// say), as `dir/peers/<td>.json` (`peers/` must exist); returns that path.
    pub fn write_bootstrap_into(&self, dir: &Path) -> PathBuf {
        let json = meshtrust::app::init_state(&self.config()).unwrap();
        let path = dir.join("peers").join(format!("{}.json", self.td()));
        std::fs::write(&path, json).unwrap();
        path
    }

    /// A second handle on this mesh's bundle endpoint socket, taken before [`Mesh::start`]: once
    /// the daemon has stopped, [`Mesh::reuse_port`] gives the same bound port to the next start,
    /// with no window in which another test could take it. (While only the handle is open,
    /// connections to the port wait in its backlog instead of being refused.)
    pub fn keep_port(&self) -> std::net::TcpListener {
        dup_listener(
            self.listener
                .as_ref()
                .expect("called before the first start"),
        )
    }

    /// Binds the next start to the port kept by [`Mesh::keep_port`].
    pub fn reuse_port(&mut self, kept: &std::net::TcpListener) {
        let clone = kept.try_clone().unwrap();
        clone.set_nonblocking(true).unwrap();
        self.listener = Some(TcpListener::from_std(clone).unwrap());
    }

    pub async fn start(&mut self) -> Daemon {
        self.start_with_clock(Arc::new(SystemClock)).await
    }

    /// [`Mesh::start`] on `clock` (which must stay close to real time: peers verify this
    /// daemon's certificates against the real clock).
    pub async fn start_with_clock(&mut self, clock: Arc<dyn Clock>) -> Daemon {
        let opts = DaemonOptions {
            bundle_listener: self.listener.take(),
            ..Default::default()
        };
        Daemon::start_with(self.config(), clock, opts)
            .await
            .unwrap()
    }
}

/// The wait of tests written before the harness had one: [`super::eventually_within`].
#[allow(unused_imports)]
pub use super::eventually_within as eventually;

/// A duplicate (dup(2)) of a tokio listener's socket, as a std listener.
fn dup_listener(listener: &TcpListener) -> std::net::TcpListener {
    use std::os::fd::AsFd as _;
    let fd = listener.as_fd().try_clone_to_owned().unwrap();
    std::net::TcpListener::from(fd)
}
