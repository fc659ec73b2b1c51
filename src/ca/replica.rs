//! The CA of one replica among several sharing a store (`[store] kind = "postgres"`).
//!
//! Each replica rotates its own authorities (keys in its own `data_dir`) with the same plan as
//! a single daemon ([`super::rotation`]); the published bundle is the union of every replica's
//! authorities, ordered by issue time, so any replica computes the same document. A tick reads
//! the shared state, applies its own due steps and writes its authorities with the new bundle
//! in one transaction based on the sequence it read: another replica's concurrent write makes
//! it read again and retry ([`StoreError::Conflict`]). The sequence rises once per content
//! change, and every replica serves the document stored for that sequence, byte for byte.
//!
//! An authority starts signing only after the transaction that published it committed, and a
//! prepared one activates only after `L/3` in the shared bundle, so no replica signs with a
//! CA missing from it. The authorities of a replica dead for good (heartbeat older than
//! [`REPLICA_STALE_AFTER`]) are removed by the others once every SVID it may have signed has
//! expired: `min(NotAfter, last heartbeat + longest SVID TTL + grace)`.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use super::rotation::RETIRE_GRACE;
use super::{AuthoritySlot, Ca, CaError, CaPolicy, Inner, to_record, with_sequence};
use crate::bundle::{JwtAuthority, TrustBundle, jwks};
use crate::clock::to_unix_millis;
use crate::spiffe_id::TrustDomain;
use crate::store::shared::REPLICA_STALE_AFTER;
use crate::store::{ReplicaAuthority, ReplicaUpdate, SharedBundle, StoreError};

/// How many times a tick reads again after losing a race to another replica.
const MAX_ATTEMPTS: usize = 8;

/// Another replica's authority, as this one publishes it.
#[derive(Debug, Clone)]
struct Foreign {
    issued_ms: i64,
    cert: CertificateDer<'static>,
    jwt: Vec<JwtAuthority>,
}

impl Foreign {
    fn of(td: &TrustDomain, a: &ReplicaAuthority) -> Self {
        let jwt = if a.jwks.is_empty() {
            Vec::new()
        } else {
            match jwks::parse(td, &a.jwks) {
                Ok(p) => p.bundle.jwt_authorities,
                Err(e) => {
                    tracing::warn!(replica = %a.replica, generation = a.generation, error = %e, "another replica's jwt key is unreadable; its ca is published without it");
                    Vec::new()
                }
            }
        };
        Self {
            issued_ms: to_unix_millis(a.issued_at),
            cert: CertificateDer::from(a.ca_cert.clone()),
            jwt,
        }
    }
}

/// The bundle (without sequence) of the union and the digest of its document. Ordered by
/// (issue time in milliseconds, certificate), which every replica computes alike.
fn union_content(
    td: &TrustDomain,
    own: &[AuthoritySlot],
    others: &[Foreign],
    policy: &CaPolicy,
) -> Result<(TrustBundle, Vec<u8>), CaError> {
    let mut all: Vec<Foreign> = own
        .iter()
        .map(|s| Foreign {
            issued_ms: to_unix_millis(s.authority.issued_at),
            cert: s.authority.cert.clone(),
            jwt: vec![own_jwt(s)],
        })
        .chain(others.iter().cloned())
        .collect();
    all.sort_by(|a, b| (a.issued_ms, a.cert.as_ref()).cmp(&(b.issued_ms, b.cert.as_ref())));
    let bundle = TrustBundle {
        trust_domain: td.clone(),
        x509_authorities: all.iter().map(|a| a.cert.clone()).collect(),
        jwt_authorities: all.iter().flat_map(|a| a.jwt.iter().cloned()).collect(),
        sequence: None,
        refresh_hint: Some(policy.refresh_hint),
    };
    let content = jwks::to_json(&bundle)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &content)
        .as_ref()
        .to_vec();
    Ok((bundle, digest))
}

fn own_jwt(s: &AuthoritySlot) -> JwtAuthority {
    JwtAuthority {
        kid: s.authority.jwt.kid.clone(),
        key: s.authority.jwt.public_key(),
    }
}

/// One own authority alone as a bundle document: what the others publish of it.
fn own_jwks(td: &TrustDomain, s: &AuthoritySlot) -> Result<Vec<u8>, CaError> {
    Ok(jwks::to_json(&TrustBundle {
        trust_domain: td.clone(),
        x509_authorities: vec![s.authority.cert.clone()],
        jwt_authorities: vec![own_jwt(s)],
        sequence: None,
        refresh_hint: None,
    })?)
}

/// Other replicas' authorities to remove at `now`: expired ones, and those of replicas dead
/// for good once every SVID they may have signed has expired.
fn dead_prunes(
    now: SystemTime,
    shared: &SharedBundle,
    me: &str,
    svid_ttl: std::time::Duration,
) -> Vec<(String, u64)> {
    shared
        .authorities
        .iter()
        .filter(|a| a.replica != me)
        .filter(|a| {
            if a.not_after <= now {
                return true;
            }
            let Some(r) = shared.replicas.iter().find(|r| r.id == a.replica) else {
                // Never registered (or a single daemon's row not adopted): only its expiry.
                return false;
            };
            if r.last_seen + REPLICA_STALE_AFTER > now {
                return false;
            }
            let mut until = a.not_after.min(r.last_seen + svid_ttl + RETIRE_GRACE);
            if let Some(p) = a.prune_after {
                until = until.min(p);
            }
            until <= now
        })
        .map(|a| (a.replica.clone(), a.generation))
        .collect()
}

impl Ca {
    /// A tick of a replica: see the module documentation. `force` writes this replica's
    /// authorities even when nothing is due (at start: registers them).
    pub(super) fn tick_replica(&self, me: &str, force: bool) -> Result<bool, CaError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut base = inner.slots.clone();
        let held = self.fold_holds(&mut base);
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            let shared = self.storage.load_shared()?;
            let now = self.clock.now();
            let mut slots = base.clone();
            let stepped = self.plan(&mut slots, now)?;
            let prune = dead_prunes(now, &shared, me, self.policy.longest_svid_ttl());
            let others: Vec<Foreign> = shared
                .authorities
                .iter()
                .filter(|a| {
                    a.replica != me
                        && !prune
                            .iter()
                            .any(|(r, g)| *r == a.replica && *g == a.generation)
                })
                .map(|a| Foreign::of(&self.trust_domain, a))
                .collect();
            let (bundle, digest) =
                union_content(&self.trust_domain, &slots, &others, &self.policy)?;
            let same = digest == shared.digest && !shared.json.is_empty();
            let (sequence, json) = if same {
                (shared.sequence, shared.json.clone())
            } else {
                let next = shared.sequence + 1;
                (next, jwks::to_json(&with_sequence(&bundle, next))?)
            };
            if force || held || stepped || !same || !prune.is_empty() {
                let update = ReplicaUpdate {
                    record: to_record(&slots, sequence, digest.clone(), json.clone()),
                    jwks: slots
                        .iter()
                        .map(|s| own_jwks(&self.trust_domain, s))
                        .collect::<Result<_, _>>()?,
                    base_sequence: shared.sequence,
                    prune: prune.clone(),
                };
                match self.storage.publish(&update) {
                    Ok(()) => {}
                    Err(e @ StoreError::Conflict { .. }) => {
                        tracing::debug!(replica = %me, error = %e, "another replica wrote first; reading again");
                        last = Some(e);
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
                for (replica, generation) in &prune {
                    tracing::info!(replica = %replica, generation, "authority of a replica gone for good left the bundle (its svids have expired)");
                }
                if !same {
                    tracing::info!(trust_domain = %self.trust_domain, replica = %me, sequence, authorities = bundle.x509_authorities.len(), "shared bundle changed");
                }
            } else if sequence == inner.sequence {
                return Ok(false);
            }
            self.install(
                &mut inner,
                Inner {
                    slots,
                    sequence,
                    digest,
                },
                (with_sequence(&bundle, sequence), json),
            )?;
            return Ok(true);
        }
        Err(last
            .unwrap_or_else(|| StoreError::Unavailable("no attempt made".into()))
            .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuthorityState, ReplicaInfo};
    use std::time::Duration;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    fn row(replica: &str, not_after: u64, prune_after: Option<u64>) -> ReplicaAuthority {
        ReplicaAuthority {
            replica: replica.into(),
            generation: 1,
            state: AuthorityState::Active,
            issued_at: at(0),
            not_after: at(not_after),
            prune_after: prune_after.map(at),
            ca_cert: vec![1],
            jwks: Vec::new(),
        }
    }

    fn replica(id: &str, last_seen: u64) -> ReplicaInfo {
        ReplicaInfo {
            id: id.into(),
            address: String::new(),
            started_at: at(0),
            last_seen: at(last_seen),
        }
    }

    #[test]
    fn a_dead_replicas_ca_leaves_only_after_the_svids_it_may_have_signed_expired() {
        let ttl = Duration::from_secs(60);
        let shared = SharedBundle {
            authorities: vec![row("dead", 10_000, None)],
            replicas: vec![replica("dead", 100)],
            ..SharedBundle::default()
        };
        // Stale, but an SVID signed at its last heartbeat is still valid.
        assert!(dead_prunes(at(120), &shared, "me", ttl).is_empty());
        let gone = 100 + 60 + RETIRE_GRACE.as_secs();
        assert!(dead_prunes(at(gone - 1), &shared, "me", ttl).is_empty());
        assert_eq!(
            dead_prunes(at(gone), &shared, "me", ttl),
            vec![("dead".to_owned(), 1)]
        );
    }

    #[test]
    fn a_live_replicas_ca_is_never_pruned_by_another_before_it_expires() {
        let ttl = Duration::from_secs(60);
        let shared = SharedBundle {
            authorities: vec![row("alive", 1000, None), row("me", 5, None)],
            replicas: vec![replica("alive", 999)],
            ..SharedBundle::default()
        };
        assert!(dead_prunes(at(999), &shared, "me", ttl).is_empty());
        assert_eq!(
            dead_prunes(at(1000), &shared, "me", ttl),
            vec![("alive".to_owned(), 1)]
        );
    }

    #[test]
    fn an_unregistered_replicas_ca_waits_for_its_expiry() {
        let shared = SharedBundle {
            authorities: vec![row("", 500, Some(10))],
            ..SharedBundle::default()
        };
        assert!(dead_prunes(at(499), &shared, "me", Duration::from_secs(1)).is_empty());
    }
}
