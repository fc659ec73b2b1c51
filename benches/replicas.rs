//! Replicas of one mesh on PostgreSQL (issue 14): three real `meshtrust serve` processes of the
//! release build on one database (the cluster named by `MESHTRUST_TEST_PG_URL_FILE`, which
//! benches/run.sh starts), bundle endpoints on 127.0.0.1, one network namespace.
//!
//! - Bundle change -> every replica's endpoint serves it: the change is a fourth replica joining
//!   (its new CA enters the shared bundle, one sequence bump in the database). This bench polls
//!   the database's `own_bundle` row and the three endpoints (keep-alive HTTPS, ~1 ms a round);
//!   the time from the new sequence first seen in the database until all three serve it.
//! - Fetch lease takeover: the three replicas federate with one peer (a local HTTPS server),
//!   fetched by the lease holder only; `kill -9` of the holder until another one logs
//!   `fetch lease taken`. Lease TTL 3 s (`federation_min_refresh_interval = "1s"`, three
//!   times it); target TTL + 1 s. The killed replica restarts and the next round kills the new
//!   holder.
//!
//! Without PostgreSQL configured the bench is skipped with a note (as the tests are).

#![allow(clippy::unwrap_used)] // bench code: a panic is the failure report

mod common;
#[path = "../tests/pg_support/mod.rs"]
mod pg_support;
#[path = "../tests/common/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fixtures::{WebCert, peer_bundle_json, web_cert};
use common::{Met, ms, note, percentile, row};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use support::config::DaemonConfig;
use support::daemon::{Proc, READY};

const TD: &str = "ha.test";
const PEER: &str = "peer.test";
const GUARD: Duration = Duration::from_secs(60);
/// `lease_ttl` of `federation_min_refresh_interval = "1s"`.
const LEASE_TTL: Duration = Duration::from_secs(3);

/// The bench reads what the endpoint serves; who serves it is not the question here.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A keep-alive HTTPS connection to one bundle endpoint, reopened when it fails.
struct Endpoint {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    conn: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
}

impl Endpoint {
    fn new(addr: SocketAddr) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
            .with_no_client_auth();
        Self {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            conn: None,
        }
    }

    /// The `spiffe_sequence` the endpoint serves now, if it answers.
    async fn sequence(&mut self) -> Option<u64> {
        if self.conn.is_none() {
            let tcp = tokio::net::TcpStream::connect(self.addr).await.ok()?;
            let name = ServerName::IpAddress(self.addr.ip().into());
            let tls = self.tls.connect(name, tcp).await.ok()?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .ok()?;
            tokio::spawn(conn);
            self.conn = Some(send);
        }
        let send = self.conn.as_mut().unwrap();
        let req = hyper::Request::get("/")
            .header("host", "localhost")
            .body(Empty::new())
            .unwrap();
        let Ok(resp) = send.send_request(req).await else {
            self.conn = None;
            return None;
        };
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        v["spiffe_sequence"].as_u64()
    }
}

/// One replica: its folder (kept while it lives), config, process and endpoint.
struct Replica {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    proc: Option<Proc>,
    endpoint: Option<SocketAddr>,
}

impl Replica {
    fn new(url: &str, peer: SocketAddr, cert: &WebCert) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = DaemonConfig::new(TD)
            .bundle_endpoint_any_port("refresh_hint = \"5m\"\n")
            .section(&format!("[store]\nkind = \"postgres\"\nurl = \"{url}\"\n"))
            .section(&format!(
                "[[federation]]\ntrust_domain = \"{PEER}\"\n\
                 bundle_endpoint_url = \"https://{peer}/peer/0\"\nprofile = \"https_web\"\n\
                 ca_file = \"{}\"\n",
                cert.ca_pem.display()
            ))
            .write(dir.path());
        Self {
            _dir: dir,
            config,
            proc: None,
            endpoint: None,
        }
    }

    /// Spawns it and waits until it is ready; its lease events go to `leases` as `(index, at)`.
    async fn start(&mut self, index: usize, leases: &Arc<Mutex<Vec<(usize, Instant)>>>) {
        let seen = leases.clone();
        let p = Proc::spawn_watching(
            &["serve", "--config", self.config.to_str().unwrap()],
            |_| {},
            move |line| {
                if line.contains("fetch lease taken") {
                    seen.lock().unwrap().push((index, Instant::now()));
                }
            },
        );
        p.wait_for_log(READY).await;
        self.endpoint = Some(
            p.logged_addr("bundle endpoint listening")
                .await
                .parse()
                .unwrap(),
        );
        self.proc = Some(p);
    }
}

/// The sequence of the shared bundle in the database.
async fn db_sequence(client: &tokio_postgres::Client) -> u64 {
    let row = client
        .query_one("SELECT sequence FROM own_bundle", &[])
        .await
        .unwrap();
    u64::try_from(row.get::<_, i64>(0)).unwrap()
}

fn main() {
    support::init();
    let Some(db) = pg_support::test_db("bench_replicas") else {
        return;
    };
    let smoke = common::smoke();
    let (joins, takeovers) = if smoke { (1, 1) } else { (5, 5) };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(&db.url, joins, takeovers));
}

async fn run(url: &str, joins: usize, takeovers: usize) {
    let scratch = tempfile::tempdir().unwrap();
    let cert = web_cert(scratch.path());
    let bundles = Arc::new(RwLock::new(vec![Bytes::from(peer_bundle_json(
        PEER,
        1,
        Duration::from_secs(3600),
    ))]));
    let (peer, _) = common::peer_server::spawn_shared(&cert, bundles).await;
    let leases: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let mut replicas: Vec<Replica> = (0..3).map(|_| Replica::new(url, peer, &cert)).collect();
    // The first alone, so that it takes the peer's lease; then the two others.
    replicas[0].start(0, &leases).await;
    let deadline = Instant::now() + GUARD;
    while leases.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no replica took the fetch lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, r) in replicas.iter_mut().enumerate().skip(1) {
        r.start(i, &leases).await;
    }

    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut endpoints: Vec<Endpoint> = replicas
        .iter()
        .map(|r| Endpoint::new(r.endpoint.unwrap()))
        .collect();

    // Settled: the database and every endpoint on one sequence, twice 100 ms apart.
    let settle = async |client: &tokio_postgres::Client, endpoints: &mut [Endpoint]| -> u64 {
        let deadline = Instant::now() + GUARD;
        let mut last = None;
        loop {
            assert!(Instant::now() < deadline, "the replicas never settled");
            let s = db_sequence(client).await;
            let mut all = true;
            for e in endpoints.iter_mut() {
                all &= e.sequence().await == Some(s);
            }
            if all && last == Some(s) {
                return s;
            }
            last = all.then_some(s);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    // Bundle changes: a replica joins (its CA), then leaves (SIGTERM; its CA stays until pruned).
    let (mut from_db, mut from_first) = (Vec::new(), Vec::new());
    for _ in 0..joins {
        let before = settle(&client, &mut endpoints).await;
        let mut joiner = Replica::new(url, peer, &cert);
        let start = joiner.start(3, &leases);
        let watch = async {
            let deadline = Instant::now() + GUARD;
            let (mut seen_db, mut first, mut served) = (None, None, [false; 3]);
            let mut target = u64::MAX;
            loop {
                assert!(
                    Instant::now() < deadline,
                    "the change never reached every endpoint"
                );
                let s = db_sequence(&client).await;
                if s > before && seen_db.is_none() {
                    seen_db = Some(Instant::now());
                    target = s;
                }
                for (i, e) in endpoints.iter_mut().enumerate() {
                    if let Some(q) = e.sequence().await
                        && q > before
                    {
                        first.get_or_insert_with(Instant::now);
                        target = target.min(q);
                        served[i] |= q >= target;
                    }
                }
                if let Some(db_at) = seen_db
                    && served.iter().all(|s| *s)
                {
                    let now = Instant::now();
                    return (now - db_at, now - first.unwrap());
                }
            }
        };
        let ((db_to_all, first_to_all), ()) = tokio::join!(watch, start);
        from_db.push(db_to_all);
        from_first.push(first_to_all);
        joiner.proc.take().unwrap().stop();
    }
    from_db.sort();
    from_first.sort();
    row(
        &format!(
            "3 replicas on PostgreSQL: bundle change (a replica joins) -> all 3 endpoints serve it, max of {joins}"
        ),
        &format!(
            "{:.1} ms (median {:.1})",
            ms(*from_db.last().unwrap()),
            ms(percentile(&from_db, 50.0))
        ),
        "-",
        None,
        "< 1000 ms",
        Met::from(ms(*from_db.last().unwrap()) < 1000.0),
    );
    note(&format!(
        "replicas: three replicas and the bench on 127.0.0.1 (one network namespace), PostgreSQL on \
         loopback (the cluster run.sh starts); bundle change = a 4th replica's CA committed; per \
         change ms, new sequence first seen in the database -> all three endpoints: {:?}; first \
         endpoint serving it -> all three: {:?}; polled about every 1-2 ms (database, then each endpoint)",
        from_db
            .iter()
            .map(|d| (ms(*d) * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        from_first
            .iter()
            .map(|d| (ms(*d) * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
    ));

    // Fetch lease takeover after kill -9 of the holder.
    let mut took = Vec::new();
    for _ in 0..takeovers {
        let holder = leases.lock().unwrap().last().unwrap().0;
        assert!(holder < 3, "a joiner holds the lease");
        let before = leases.lock().unwrap().len();
        let killed = Instant::now();
        replicas[holder].proc.take().unwrap().kill_9();
        let at = loop {
            assert!(killed.elapsed() < GUARD, "no replica took the lease");
            if let Some((i, at)) = leases.lock().unwrap().get(before).copied() {
                assert_ne!(i, holder);
                break at;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        took.push(at - killed);
        replicas[holder].start(holder, &leases).await;
    }
    took.sort();
    let worst = *took.last().unwrap();
    row(
        &format!(
            "fetch lease takeover after kill -9 of its holder (3 replicas, lease TTL {} s), max of {takeovers}",
            LEASE_TTL.as_secs()
        ),
        &format!(
            "{:.0} ms (median {:.0})",
            ms(worst),
            ms(percentile(&took, 50.0))
        ),
        "-",
        None,
        &format!(
            "< {} ms (TTL + 1 s)",
            (LEASE_TTL + Duration::from_secs(1)).as_millis()
        ),
        Met::from(worst < LEASE_TTL + Duration::from_secs(1)),
    );
    note(&format!(
        "replicas: lease takeover per round, ms: {:?} (the TTL since the holder's last renewal, \
         plus up to a third of it until another replica's next lease round)",
        took.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
    ));
}
