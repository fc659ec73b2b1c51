//! Who gets which identity: registration entries matched against an attested caller, and the
//! X509-SVIDs those identities are served, minted once and shared by every caller and stream.
//!
//! An entry matches when **all** its selectors match the [`CallerInfo`] (CONTRACT.md "entry").
//! The caller's identities come in config order, the first being the default one (Workload API
//! §8, SPIFFE.md 1.7.13). A SPIFFE ID that several matching entries name is served once (the
//! first entry wins), so `svids` never carries duplicates.
//!
//! [`SvidCache`] keeps one X509-SVID per SPIFFE ID. It is reused until half its lifetime has
//! passed or the CA's active authority changes, so a request never costs a signature and 10,000
//! streams of one workload share one certificate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::ca::{Authority, CaError, CaSnapshot};
use crate::config::{EntryConfig, Selector};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::X509Svid;

use super::attest::CallerInfo;

/// Whether `selector` holds for `caller`. `unix:path` compares the kernel's exe path byte for
/// byte (a replaced binary reads `<path> (deleted)` and so no longer matches).
pub fn selector_matches(selector: &Selector, caller: &CallerInfo) -> bool {
    match selector {
        Selector::Uid(uid) => caller.uid == *uid,
        Selector::Gid(gid) => caller.gid == *gid,
        Selector::Path(path) => caller.exe.as_deref() == Some(path.as_path()),
    }
}

/// Whether every selector of `entry` holds for `caller` (an entry without selectors matches
/// nobody; config validation never produces one).
pub fn entry_matches(entry: &EntryConfig, caller: &CallerInfo) -> bool {
    !entry.selectors.is_empty() && entry.selectors.iter().all(|s| selector_matches(s, caller))
}

/// The entries `caller` is entitled to, in config order, one per SPIFFE ID. Empty means "no
/// identity issued" (PermissionDenied, Workload Endpoint §6).
pub fn identities<'a>(entries: &'a [EntryConfig], caller: &CallerInfo) -> Vec<&'a EntryConfig> {
    let mut out: Vec<&EntryConfig> = Vec::new();
    for entry in entries.iter().filter(|e| entry_matches(e, caller)) {
        if !out.iter().any(|seen| seen.spiffe_id == entry.spiffe_id) {
            out.push(entry);
        }
    }
    out
}

/// Whether any of `identities` federates with `td`: the caller then receives `td`'s bundle.
pub fn entitled_to(identities: &[&EntryConfig], td: &TrustDomain) -> bool {
    identities.iter().any(|e| e.federates_with.includes(td))
}

/// Hints as served: an entry's hint, or `""` when it has none or an earlier identity in the same
/// response already uses it (hints MUST be unique in a response, Workload API §5.2.1).
pub fn unique_hints(identities: &[&EntryConfig]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(identities.len());
    for entry in identities {
        let hint = entry.hint.clone().unwrap_or_default();
        if hint.is_empty() || out.contains(&hint) {
            out.push(String::new());
        } else {
            out.push(hint);
        }
    }
    out
}

/// An X509-SVID as served, with the moment it should be replaced.
#[derive(Debug, Clone)]
pub struct CachedSvid {
    /// The SVID; the same `Arc` for everyone until it is renewed.
    pub svid: Arc<X509Svid>,
    /// Half-way through its lifetime: from then on the cache mints a new one.
    pub renew_at: SystemTime,
}

#[derive(Debug)]
struct Entry {
    cached: CachedSvid,
    /// The authority that signed it. Held (not compared by address alone) so that an authority
    /// freed and another allocated at the same address cannot pass for it.
    authority: Arc<Authority>,
}

/// One X509-SVID per SPIFFE ID, minted on demand and shared until renewal.
#[derive(Debug, Default)]
pub struct SvidCache {
    /// A std mutex: minting is short CPU work with no `.await`, and holding the lock while
    /// minting makes concurrent callers of one ID (a herd of streams waking at renewal time)
    /// wait for the one new SVID instead of each minting their own.
    inner: Mutex<HashMap<SpiffeId, Entry>>,
}

impl SvidCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The SVID for `id`: the cached one while it is before its renewal time and was signed by
    /// `ca`'s active authority, else a new one (which replaces it).
    ///
    /// # Errors
    /// [`CaError`] when there is no active authority or minting fails.
    pub fn get(
        &self,
        id: &SpiffeId,
        ca: &CaSnapshot,
        now: SystemTime,
    ) -> Result<CachedSvid, CaError> {
        let active = ca.active().ok_or(CaError::Expired)?;
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get(id)
            && Arc::ptr_eq(&entry.authority, active)
            && now < entry.cached.renew_at
        {
            return Ok(entry.cached.clone());
        }
        let svid = ca.issue_x509_svid(id, now)?;
        let cached = CachedSvid {
            renew_at: renewal_time(now, svid.not_after),
            svid: Arc::new(svid),
        };
        tracing::debug!(spiffe_id = %id, not_after = %crate::clock::rfc3339(cached.svid.not_after), "x509-svid minted");
        map.insert(
            id.clone(),
            Entry {
                cached: cached.clone(),
                authority: active.clone(),
            },
        );
        Ok(cached)
    }
}

/// Half-way between issuance and NotAfter (go-spiffe/SPIRE renew at half life). Measured from
/// `issued` rather than the back-dated NotBefore, so the back-dating does not shorten it.
fn renewal_time(issued: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(issued).unwrap_or(Duration::ZERO);
    issued + life / 2
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::FederatesWith;

    fn caller(uid: u32, gid: u32, exe: Option<&str>) -> CallerInfo {
        CallerInfo {
            uid,
            gid,
            pid: Some(1),
            exe: exe.map(PathBuf::from),
        }
    }

    fn entry(id: &str, selectors: &[&str], hint: Option<&str>) -> EntryConfig {
        EntryConfig {
            spiffe_id: SpiffeId::new(id).unwrap(),
            selectors: selectors.iter().map(|s| s.parse().unwrap()).collect(),
            federates_with: FederatesWith::Only(vec![]),
            hint: hint.map(str::to_owned),
            node: None,
        }
    }

    #[test]
    fn an_entry_matches_only_when_all_its_selectors_match() {
        let e = entry(
            "spiffe://td/a",
            &["unix:uid:1000", "unix:gid:50", "unix:path:/usr/bin/app"],
            None,
        );
        assert!(entry_matches(&e, &caller(1000, 50, Some("/usr/bin/app"))));
        assert!(!entry_matches(&e, &caller(1001, 50, Some("/usr/bin/app"))));
        assert!(!entry_matches(&e, &caller(1000, 51, Some("/usr/bin/app"))));
        assert!(!entry_matches(
            &e,
            &caller(1000, 50, Some("/usr/bin/other"))
        ));
        assert!(!entry_matches(&e, &caller(1000, 50, None)), "unknown exe");
        let replaced = caller(1000, 50, Some("/usr/bin/app (deleted)"));
        assert!(!entry_matches(&e, &replaced));
        let no_selectors = entry("spiffe://td/b", &[], None);
        assert!(!entry_matches(&no_selectors, &caller(0, 0, None)));
    }

    #[test]
    fn identities_keep_config_order_and_drop_repeated_ids() {
        let entries = vec![
            entry("spiffe://td/other", &["unix:uid:7"], None),
            entry("spiffe://td/first", &["unix:uid:1000"], Some("one")),
            entry("spiffe://td/second", &["unix:gid:50"], Some("two")),
            entry("spiffe://td/first", &["unix:gid:50"], Some("three")),
        ];
        let got = identities(&entries, &caller(1000, 50, None));
        let ids: Vec<&str> = got.iter().map(|e| e.spiffe_id.as_str()).collect();
        assert_eq!(ids, ["spiffe://td/first", "spiffe://td/second"]);
        assert_eq!(got[0].hint.as_deref(), Some("one"));
        assert!(identities(&entries, &caller(1, 1, None)).is_empty());
    }

    #[test]
    fn repeated_or_missing_hints_are_served_empty() {
        // Workload API 1.7.7: a non-empty hint is unique within a response.
        let a = entry("spiffe://td/a", &["unix:uid:1"], Some("h"));
        let b = entry("spiffe://td/b", &["unix:uid:1"], Some("h"));
        let c = entry("spiffe://td/c", &["unix:uid:1"], None);
        let d = entry("spiffe://td/d", &["unix:uid:1"], Some("d"));
        assert_eq!(unique_hints(&[&a, &b, &c, &d]), ["h", "", "", "d"]);
    }

    #[test]
    fn renewal_is_half_way_from_issuance() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            renewal_time(t, t + Duration::from_secs(3600)),
            t + Duration::from_secs(1800)
        );
        assert_eq!(renewal_time(t, t - Duration::from_secs(1)), t);
    }

    #[test]
    fn the_cache_reuses_an_svid_until_half_life_or_a_new_active_authority() {
        use crate::ca::{Ca, CaPolicy, KeyType};
        use crate::clock::{Clock as _, ManualClock};
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(crate::store::sqlite::SqliteStorage::open(dir.path()).unwrap());
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let hour = Duration::from_secs(3600);
        let policy = CaPolicy {
            key_type: KeyType::EcP256,
            ca_ttl: 24 * hour,
            x509_svid_ttl: hour,
            jwt_svid_ttl: Duration::from_secs(300),
            refresh_hint: Duration::from_secs(300),
        };
        let td = TrustDomain::new("mesh-a.test").unwrap();
        let ca = Ca::open(td, policy, clock.clone(), storage).unwrap();
        let cache = SvidCache::new();
        let id = SpiffeId::new("spiffe://mesh-a.test/w").unwrap();
        let first = cache.get(&id, &ca.snapshot(), clock.now()).unwrap();
        clock.advance(Duration::from_secs(29 * 60));
        let again = cache.get(&id, &ca.snapshot(), clock.now()).unwrap();
        assert!(Arc::ptr_eq(&first.svid, &again.svid), "before half life");
        clock.advance(Duration::from_secs(60));
        let renewed = cache.get(&id, &ca.snapshot(), clock.now()).unwrap();
        assert!(!Arc::ptr_eq(&first.svid, &renewed.svid), "past half life");
        // Prepared at 12 h 30 m; it may sign from max(20 h, 12 h 30 m + 8 h) = 20 h 30 m.
        clock.advance(12 * hour);
        assert!(ca.tick().unwrap());
        clock.advance(7 * hour + Duration::from_secs(50 * 60));
        assert!(!ca.tick().unwrap(), "not active yet");
        let same = cache.get(&id, &ca.snapshot(), clock.now()).unwrap();
        clock.advance(Duration::from_secs(11 * 60));
        let still = cache.get(&id, &ca.snapshot(), clock.now()).unwrap();
        assert!(
            Arc::ptr_eq(&same.svid, &still.svid),
            "11 min old, same authority"
        );
        assert!(ca.tick().unwrap(), "the prepared authority activates");
        let rotated = cache.get(&id, &ca.snapshot(), clock.now()).unwrap();
        assert!(
            !Arc::ptr_eq(&same.svid, &rotated.svid),
            "new active authority"
        );
    }
}
