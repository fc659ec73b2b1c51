//! The CA as the Workload API's issuer: the server's adapter from its [`CaSnapshot`]s to the
//! Workload API's own [`OwnSnapshot`] (the active authority signs on demand; the bundle is ours).

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use super::{CaError, CaSnapshot};
use crate::metrics::issuance::SvidType;
use crate::spiffe_id::SpiffeId;
use crate::workload_api::identity::{CachedSvid, SvidCache};
use crate::workload_api::source::{Feed, Issuer, JwtSvidFuture, OwnSnapshot};
use crate::workload_api::{WorkloadApiError, jwt};

impl Issuer for CaSnapshot {
    fn x509_svid(
        &self,
        id: &SpiffeId,
        cache: &SvidCache,
        now: SystemTime,
    ) -> Result<CachedSvid, WorkloadApiError> {
        Ok(cache.get(id, self, now)?)
    }

    fn jwt_svid(&self, id: &SpiffeId, audience: &[String], now: SystemTime) -> JwtSvidFuture {
        Box::pin(std::future::ready(self.mint_jwt_svid(id, audience, now)))
    }
}

impl CaSnapshot {
    /// A JWT-SVID signed now by the active authority.
    ///
    /// # Errors
    /// [`WorkloadApiError`] when there is no active authority or minting fails.
    pub fn mint_jwt_svid(
        &self,
        id: &SpiffeId,
        audience: &[String],
        now: SystemTime,
    ) -> Result<String, WorkloadApiError> {
        let active = self.active().ok_or(CaError::Expired)?;
        // A token never outlives the authority whose key signs it.
        let exp = (now + self.jwt_svid_ttl).min(active.not_after);
        self.issuance
            .sign(SvidType::Jwt, || {
                jwt::mint(&active.jwt, id, audience, exp, now)
            })
            .map_err(|e| WorkloadApiError::Internal(format!("minting a jwt-svid: {e}")))
    }
}

/// The Workload API's view of one CA snapshot.
pub fn own_snapshot(snap: &Arc<CaSnapshot>) -> Arc<OwnSnapshot> {
    Arc::new(OwnSnapshot {
        bundle: snap.bundle.clone(),
        issuer: snap.clone(),
    })
}

impl From<watch::Receiver<Arc<CaSnapshot>>> for Feed<Arc<OwnSnapshot>> {
    fn from(rx: watch::Receiver<Arc<CaSnapshot>>) -> Self {
        Feed::map(rx, own_snapshot)
    }
}
