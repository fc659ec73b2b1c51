//! Federation once per peer among replicas sharing a store: a fetch lease per peer in the
//! database ([`crate::store::Storage::fetch_lease`]). The keeper task takes or renews every
//! peer's lease each third of its TTL; a peer's fetcher fetches on schedule only while this
//! replica holds its lease, and the others read its pins from the store when notified
//! ([`PeerStore::reload`]). A dead holder's lease lapses after its TTL and the next round of
//! another replica's keeper takes it, which then fetches at once. An operator's explicit
//! refresh fetches on the replica asked; the store's rollback guard keeps pins in order.
//!
//! A replica trusts its lease until a local deadline (`ttl` after the renewal was sent), so a
//! lease it could not renew (database unreachable) stops its scheduled fetches in time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::RefreshHandles;
use super::pinned::PeerStore;
use crate::spiffe_id::TrustDomain;
use crate::store::SharedBundle;

/// The shortest and longest lease TTL.
const TTL_BOUNDS: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(300));

/// The lease TTL for a refresh floor: three times it, bounded.
pub fn lease_ttl(min_refresh_interval: Duration) -> Duration {
    (min_refresh_interval * 3).clamp(TTL_BOUNDS.0, TTL_BOUNDS.1)
}

#[derive(Debug, Clone)]
struct Known {
    holder: String,
    /// For a lease of ours: until when this replica may fetch on it.
    ours_until: Option<Instant>,
}

/// What this replica knows of the peers' fetch leases.
#[derive(Debug)]
pub struct FetchLeases {
    me: Option<String>,
    ttl: Mutex<Duration>,
    known: Mutex<BTreeMap<TrustDomain, Known>>,
    /// The replicas and their authorities as last read (for status).
    mesh: Mutex<Option<Arc<SharedBundle>>>,
}

impl FetchLeases {
    /// Leases of replica `me`; `None` for a daemon alone on its store (it fetches every peer).
    pub fn new(me: Option<String>) -> Self {
        Self {
            me,
            ttl: Mutex::new(lease_ttl(super::fetcher::MIN_INTERVAL)),
            known: Mutex::new(BTreeMap::new()),
            mesh: Mutex::new(None),
        }
    }

    /// This replica's id (replicas only).
    pub fn me(&self) -> Option<&str> {
        self.me.as_deref()
    }

    /// The replicas and their authorities as read at the last lease round (replicas only).
    pub fn mesh(&self) -> Option<Arc<SharedBundle>> {
        self.mesh.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn ttl(&self) -> Duration {
        *self.ttl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this daemon fetches `td` on schedule now.
    pub fn fetches_here(&self, td: &TrustDomain) -> bool {
        if self.me.is_none() {
            return true;
        }
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known
            .get(td)
            .and_then(|k| k.ours_until)
            .is_some_and(|until| Instant::now() < until)
    }

    /// How often a fetcher without the lease looks again.
    pub fn poll_every(&self) -> Duration {
        self.ttl() / 3
    }

    /// The replica holding `td`'s lease, as last seen (replicas only).
    pub fn holder(&self, td: &TrustDomain) -> Option<String> {
        self.me.as_ref()?;
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.get(td).map(|k| k.holder.clone())
    }

    fn record(&self, td: &TrustDomain, holder: String, ours_until: Option<Instant>) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.insert(td.clone(), Known { holder, ours_until });
    }
}

/// The keeper: renews or takes every configured peer's lease each `ttl / 3` (reading the
/// replicas' list for status at the same time), and reloads the pinned bundles whenever
/// another replica changed the store. Ends with `cancel`. Does
/// nothing on a store that is not shared.
pub async fn run(
    peers: Arc<PeerStore>,
    refresh: RefreshHandles,
    ttl: Duration,
    cancel: CancellationToken,
) {
    let leases = peers.leases();
    let Some(me) = leases.me.clone() else {
        return;
    };
    *leases.ttl.lock().unwrap_or_else(|e| e.into_inner()) = ttl;
    let mut changes = peers.storage().changes();
    let mut round = tokio::time::interval(ttl / 3);
    round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = round.tick() => lease_round(&peers, &refresh, &me, ttl).await,
            Some(()) = async {
                match changes.as_mut() {
                    Some(rx) => rx.changed().await.ok(),
                    None => std::future::pending().await,
                }
            } => {
                let p = peers.clone();
                match tokio::task::spawn_blocking(move || p.reload()).await {
                    Ok(Ok(true)) => tracing::debug!("pinned bundles reloaded from the store"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot reload the pinned bundles; retried at the next change"),
                    Err(e) => tracing::warn!(error = %e, "pin reload task failed"),
                }
            }
        }
    }
}

async fn lease_round(peers: &Arc<PeerStore>, refresh: &RefreshHandles, me: &str, ttl: Duration) {
    let p = peers.clone();
    if let Ok(Ok(shared)) = tokio::task::spawn_blocking(move || p.storage().load_shared()).await {
        *peers
            .leases()
            .mesh
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(shared));
    }
    for td in peers.peers() {
        let sent = Instant::now();
        let p = peers.clone();
        let t = td.clone();
        let outcome = tokio::task::spawn_blocking(move || p.storage().fetch_lease(&t, ttl)).await;
        match outcome {
            Ok(Ok(Some(lease))) => {
                let ours = lease.holder == me;
                let previous = peers.leases().holder(&td);
                peers
                    .leases()
                    .record(&td, lease.holder.clone(), ours.then(|| sent + ttl));
                if lease.acquired {
                    tracing::info!(peer = %td, replica = %me, previous = previous.as_deref().unwrap_or("none"), "fetch lease taken: this replica fetches the peer");
                    // Fetch now rather than at the next schedule.
                    let refresh = refresh.clone();
                    tokio::spawn(async move { refresh.refresh(&td).await });
                } else if previous.as_deref() != Some(lease.holder.as_str()) && !ours {
                    tracing::info!(peer = %td, holder = %lease.holder, "fetch lease held by another replica");
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::debug!(peer = %td, error = %e, "cannot take or renew the fetch lease; retrying");
            }
            Err(e) => tracing::warn!(error = %e, "lease task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ttl_is_three_refresh_floors_within_bounds() {
        assert_eq!(lease_ttl(Duration::from_secs(1)), Duration::from_secs(3));
        assert_eq!(lease_ttl(Duration::from_secs(30)), Duration::from_secs(90));
        assert_eq!(
            lease_ttl(Duration::from_secs(3600)),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn a_daemon_alone_fetches_every_peer_and_a_replica_only_on_its_unexpired_lease() {
        let td = TrustDomain::new("peer.test").unwrap_or_else(|e| panic!("{e}"));
        assert!(FetchLeases::new(None).fetches_here(&td));
        let l = FetchLeases::new(Some("r-1".into()));
        assert!(!l.fetches_here(&td), "no lease yet");
        l.record(
            &td,
            "r-1".into(),
            Some(Instant::now() + Duration::from_secs(60)),
        );
        assert!(l.fetches_here(&td));
        assert_eq!(l.holder(&td).as_deref(), Some("r-1"));
        l.record(&td, "r-1".into(), Some(Instant::now()));
        assert!(!l.fetches_here(&td), "lapsed locally");
        l.record(&td, "r-2".into(), None);
        assert!(!l.fetches_here(&td));
    }
}
