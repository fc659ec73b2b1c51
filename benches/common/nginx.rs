//! Debian's nginx as the baseline web server: the same certificate, the same bytes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::fixtures::WebCert;

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_listening(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A foreground nginx master with its workers.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    /// From spawn to the port accepting connections.
    pub ready_after: Duration,
}

impl Nginx {
    /// Starts nginx serving `body` as `GET /` (application/json) over TLS 1.3 on `port`.
    /// `user root`: the temp dir is 0700. keepalive_requests is raised from nginx's default
    /// (1000), which would otherwise add a handshake every 1000 requests to nginx's figures.
    pub fn start(dir: &Path, port: u16, cert: &WebCert, body: &[u8]) -> Self {
        let www = dir.join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("bundle.json"), body).unwrap();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "user root;\nworker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\n\
                 error_log {d}/nginx-error.log warn;\nevents {{ worker_connections 4096; }}\n\
                 http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
                 server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {c};\n\
                 ssl_certificate_key {k};\n    ssl_protocols TLSv1.3;\n    root {w};\n\
                 location = / {{ default_type application/json; try_files /bundle.json =404; }}\n\
                 }}\n}}\n",
                d = dir.display(),
                c = cert.cert_pem.display(),
                k = cert.key_pem.display(),
                w = www.display(),
            ),
        )
        .unwrap();
        let started = Instant::now();
        let child = Command::new("nginx")
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(port, Duration::from_secs(10));
        Self {
            child,
            ready_after: started.elapsed(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The master and its workers.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        pids.extend(super::children(self.child.id()));
        pids
    }

    /// CPU ticks of the master and its workers.
    pub fn cpu_ticks(&self) -> u64 {
        let pid = self.child.id();
        super::cpu_ticks(pid)
            + super::children(pid)
                .into_iter()
                .map(super::cpu_ticks)
                .sum::<u64>()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful; the workers exit with the master.
        super::send_signal(self.child.id(), "QUIT");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
