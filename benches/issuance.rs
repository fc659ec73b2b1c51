//! Figure 1: X509-SVID issuance per second on one core, against raw `ring` ECDSA P-256.
//!
//! Ours: `CaSnapshot::issue_x509_svid` (fresh P-256 key, certificate built and signed by the CA,
//! DER) + `PrivateKey::to_pem` + the certificate as PEM: everything a workload's SVID costs
//! before it goes on the wire. Raw: what no CA can skip: `EcdsaKeyPair::generate_pkcs8` +
//! `from_pkcs8` + one signature over a TBS-sized message. Both run on this one thread (run.sh
//! pins the process with `taskset -c 0`), alternately, in rounds; each figure is the median
//! round. Target: ours >= 0.7 x raw.

#![allow(clippy::unwrap_used)] // bench code: a panic is the failure report

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtrust::bundle::pem::certs_to_pem;
use meshtrust::ca::{Ca, CaPolicy, CaSnapshot, KeyType};
use meshtrust::clock::{Clock, SystemClock};
use meshtrust::spiffe_id::{SpiffeId, TrustDomain};
use meshtrust::store::sqlite::SqliteStorage;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};

fn ours(snapshot: &CaSnapshot, id: &SpiffeId, clock: &SystemClock) -> usize {
    let svid = snapshot.issue_x509_svid(id, clock.now()).unwrap();
    let key_pem = svid.private_key.to_pem();
    let cert_pem = certs_to_pem(&svid.cert_chain);
    black_box(key_pem.len() + cert_pem.len())
}

fn raw(rng: &SystemRandom, ca: &EcdsaKeyPair, tbs: &[u8]) -> usize {
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref(), rng).unwrap();
    let sig = ca.sign(rng, tbs).unwrap();
    black_box(&pair);
    doc.as_ref().len() + sig.as_ref().len()
}

/// Runs `f` for about `span`; operations per second.
fn rate(span: Duration, mut f: impl FnMut() -> usize) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    // Check the clock every 16 calls: one call is tens of microseconds, the clock read ~20 ns.
    loop {
        for _ in 0..16 {
            black_box(f());
        }
        n += 16;
        let elapsed = start.elapsed();
        if elapsed >= span {
            return n as f64 / elapsed.as_secs_f64();
        }
    }
}

fn main() {
    let smoke = common::smoke();
    let dir = tempfile::tempdir().unwrap();
    let clock = SystemClock;
    let storage = Arc::new(SqliteStorage::open(dir.path()).unwrap());
    let policy = CaPolicy {
        key_type: KeyType::EcP256,
        ca_ttl: Duration::from_secs(24 * 3600),
        x509_svid_ttl: Duration::from_secs(3600),
        jwt_svid_ttl: Duration::from_secs(300),
        refresh_hint: Duration::from_secs(300),
    };
    let ca = Ca::open(
        TrustDomain::new("bench.test").unwrap(),
        policy,
        Arc::new(clock),
        storage,
    )
    .unwrap();
    let snapshot = ca.snapshot();
    let id = SpiffeId::new("spiffe://bench.test/ns/default/sa/workload").unwrap();

    let rng = SystemRandom::new();
    let ca_doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let ca_pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, ca_doc.as_ref(), &rng).unwrap();
    // An X509-SVID's TBSCertificate is about 400 bytes; the hash is a small part of the cost.
    let tbs = vec![0x5au8; 400];

    let (rounds, span, warm) = if smoke {
        (1, Duration::from_millis(50), Duration::from_millis(20))
    } else {
        (9, Duration::from_secs(1), Duration::from_secs(1))
    };
    // Warm-up: caches, the page cache of the allocator, CPU frequency.
    rate(warm, || ours(&snapshot, &id, &clock));
    rate(warm, || raw(&rng, &ca_pair, &tbs));

    let mut ours_rates = Vec::new();
    let mut raw_rates = Vec::new();
    for round in 0..rounds {
        // Alternate which goes first, so a drift in machine speed hits both alike.
        if round % 2 == 0 {
            ours_rates.push(rate(span, || ours(&snapshot, &id, &clock)));
            raw_rates.push(rate(span, || raw(&rng, &ca_pair, &tbs)));
        } else {
            raw_rates.push(rate(span, || raw(&rng, &ca_pair, &tbs)));
            ours_rates.push(rate(span, || ours(&snapshot, &id, &clock)));
        }
    }
    let (o, r) = (common::median(&ours_rates), common::median(&raw_rates));
    let ratio = o / r;
    common::row(
        "1. SVID issuance (keygen+sign+DER+PEM), 1 core",
        &format!("{o:.0} SVIDs/s"),
        &format!("{r:.0}/s raw ring keygen+load+sign"),
        Some(ratio),
        ">= 0.70x raw",
        common::Met::from(ratio >= 0.7),
    );
    common::note(&format!(
        "issuance: {rounds} alternating rounds of {span:?}; ours per round {:?}, raw {:?} (per s)",
        ours_rates.iter().map(|v| v.round()).collect::<Vec<_>>(),
        raw_rates.iter().map(|v| v.round()).collect::<Vec<_>>()
    ));
}
