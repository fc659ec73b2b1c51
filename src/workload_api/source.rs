//! The Workload API's one seam to whoever provides identities: its own snapshot types, fed by
//! the server (its CA signs on demand, its fetchers pin peers) or by a node agent (SVIDs the
//! server signed from the agent's CSRs, bundles pushed by the server).
//!
//! - [`OwnSnapshot`]: our trust domain's bundle and the [`Issuer`] that serves SVIDs.
//! - [`PeerBundles`]: pinned peer bundles by trust domain.
//! - [`Feed`]: a watch of one of them. A plain `watch::Receiver` is a feed; [`Feed::map`] turns
//!   a writer's own watch (the CA's snapshots) into one without a forwarding task, so a reader
//!   never sees an older value than the writer published.
//!
//! The flow stays one-way: writers (CA, fetchers, agent sync) publish, this module reads.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use super::identity::{CachedSvid, SvidCache};
use super::state::WorkloadApiError;
use crate::bundle::TrustBundle;
use crate::spiffe_id::SpiffeId;
use crate::spiffe_id::TrustDomain;

/// Peer bundles by trust domain (the same shape the federation store publishes).
pub type PeerBundles = BTreeMap<TrustDomain, Arc<TrustBundle>>;

/// Who serves SVIDs of our trust domain.
pub trait Issuer: fmt::Debug + Send + Sync {
    /// The X509-SVID for `id`: from `cache` while it is fresh, else a new one.
    ///
    /// # Errors
    /// Unavailable-class errors ([`WorkloadApiError::Ca`], [`WorkloadApiError::Unavailable`])
    /// when no SVID can be served now.
    fn x509_svid(
        &self,
        id: &SpiffeId,
        cache: &SvidCache,
        now: SystemTime,
    ) -> Result<CachedSvid, WorkloadApiError>;

    /// A JWT-SVID for `id` and `audience`. A future, because a node agent asks a server for it
    /// (JWT keys stay on the servers); the server's CA answers at once.
    ///
    /// # Errors
    /// As [`Issuer::x509_svid`].
    fn jwt_svid(&self, id: &SpiffeId, audience: &[String], now: SystemTime) -> JwtSvidFuture;
}

/// What [`Issuer::jwt_svid`] returns: the compact JWS, or why not.
pub type JwtSvidFuture = Pin<Box<dyn Future<Output = Result<String, WorkloadApiError>> + Send>>;

/// Our trust domain as the Workload API serves it.
#[derive(Debug, Clone)]
pub struct OwnSnapshot {
    /// Our bundle (X.509 and JWT authorities).
    pub bundle: Arc<TrustBundle>,
    /// Serves the SVIDs.
    pub issuer: Arc<dyn Issuer>,
}

/// A watch of `T`: the current value and a wait for the next change.
pub struct Feed<T> {
    inner: Box<dyn FeedInner<T>>,
}

impl<T> fmt::Debug for Feed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Feed")
    }
}

impl<T: 'static> Clone for Feed<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone_box(),
        }
    }
}

type Changed<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

trait FeedInner<T>: Send + Sync {
    fn current(&mut self) -> T;
    fn changed(&mut self) -> Changed<'_>;
    fn clone_box(&self) -> Box<dyn FeedInner<T>>;
}

struct Mapped<S, T> {
    rx: watch::Receiver<S>,
    map: fn(&S) -> T,
}

impl<S, T> FeedInner<T> for Mapped<S, T>
where
    S: Send + Sync + 'static,
    T: 'static,
{
    fn current(&mut self) -> T {
        (self.map)(&self.rx.borrow_and_update())
    }

    fn changed(&mut self) -> Changed<'_> {
        Box::pin(async move { self.rx.changed().await.is_ok() })
    }

    fn clone_box(&self) -> Box<dyn FeedInner<T>> {
        Box::new(Self {
            rx: self.rx.clone(),
            map: self.map,
        })
    }
}

impl<T: Clone + Send + Sync + 'static> From<watch::Receiver<T>> for Feed<T> {
    fn from(rx: watch::Receiver<T>) -> Self {
        Self::map(rx, T::clone)
    }
}

impl<T: 'static> Feed<T> {
    /// A feed reading `rx` through `map` (called on every read: keep it to a few `Arc` clones).
    pub fn map<S: Send + Sync + 'static>(rx: watch::Receiver<S>, map: fn(&S) -> T) -> Self {
        Self {
            inner: Box::new(Mapped { rx, map }),
        }
    }

    /// The current value, marked as seen.
    pub fn current(&mut self) -> T {
        self.inner.current()
    }

    /// Resolves on the next change; never when the writer is gone (no more changes can come).
    pub async fn changed(&mut self) {
        if !self.inner.changed().await {
            std::future::pending::<()>().await;
        }
    }
}

/// A fixed value (tests, or an issuer that never changes).
pub fn fixed<T: Clone + Send + Sync + 'static>(value: T) -> Feed<T> {
    let (_, rx) = watch::channel(value);
    rx.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_mapped_feed_reads_the_writers_latest_value_and_wakes_on_change() {
        let (tx, rx) = watch::channel(1_u32);
        let mut feed: Feed<u64> = Feed::map(rx, |v| u64::from(*v) * 10);
        assert_eq!(feed.current(), 10);
        tx.send_replace(2);
        // No forwarding task between writer and reader: the new value is there at once.
        let mut other = feed.clone();
        tokio::time::timeout(std::time::Duration::from_secs(5), feed.changed())
            .await
            .expect("a change wakes the feed");
        assert_eq!(feed.current(), 20);
        assert_eq!(other.current(), 20);
        drop(tx);
        let ended = tokio::time::timeout(std::time::Duration::from_millis(50), feed.changed());
        assert!(
            ended.await.is_err(),
            "a feed whose writer is gone never wakes"
        );
    }
}
