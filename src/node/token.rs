//! One-time join tokens: `meshtrust token create --node NAME` mints one; an agent presents it
//! once. Only the SHA-256 of a token is kept, so a leak of the table names no usable token;
//! consuming removes it under the lock before anything else (two attestations racing with one
//! token: exactly one wins), and an expired token is burned too. Expired, never-used tokens are
//! pruned whenever a token is created or consumed.
//!
//! The token is 32 random bytes, base64url: the agent's ID comes from the node name, never from
//! the secret (SPIRE puts the token into the agent's ID).
//!
//! With a [`Storage`] ([`JoinTokens::with_store`], what the daemon uses) the hashes live in the
//! store, so every replica sharing it accepts a token any of them minted, and consuming is
//! one `DELETE ... RETURNING` there (one winner across replicas too); without one, in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom as _, SystemRandom};
use zeroize::Zeroizing;

use super::{NodeError, validate_node_name};
use crate::store::{JoinTokenRecord, Storage};

/// The longest time to live of a token.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 86_400);
/// `--ttl` when none is given.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);

/// A minted token, shown once.
#[derive(Clone)]
pub struct NewToken {
    /// The secret (base64url of 32 random bytes); wiped when dropped.
    pub token: Zeroizing<String>,
    /// The node it attests.
    pub node: String,
    /// When it stops being accepted.
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("token", &"<redacted>")
            .field("node", &self.node)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[derive(Debug)]
struct Pending {
    node: String,
    expires_at: SystemTime,
}

/// The unused tokens, by SHA-256.
#[derive(Debug, Default)]
pub struct JoinTokens {
    pending: Mutex<HashMap<[u8; 32], Pending>>,
    store: Option<Arc<dyn Storage>>,
}

fn hash(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

impl JoinTokens {
    /// An empty table, in memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens kept (hashed) in `store`.
    pub fn with_store(store: Arc<dyn Storage>) -> Self {
        Self {
            pending: Mutex::default(),
            store: Some(store),
        }
    }

    /// Mints a token for `node`, valid for `ttl` from `now`.
    ///
    /// # Errors
    /// [`NodeError::BadName`], [`NodeError::BadTtl`], or [`NodeError::Signing`] when the system
    /// has no randomness.
    pub fn create(
        &self,
        node: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<NewToken, NodeError> {
        validate_node_name(node)?;
        if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
            return Err(NodeError::BadTtl);
        }
        let mut raw = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(raw.as_mut())
            .map_err(|_| NodeError::Signing("no randomness for a join token".to_owned()))?;
        let token = Zeroizing::new(URL_SAFE_NO_PAD.encode(raw.as_ref()));
        let expires_at = now + ttl;
        if let Some(store) = &self.store {
            let record = JoinTokenRecord {
                hash: hash(&token),
                node: node.to_owned(),
                expires_at,
            };
            store
                .save_join_token(&record, now)
                .map_err(|e| NodeError::Store(e.to_string()))?;
            return Ok(NewToken {
                token,
                node: node.to_owned(),
                expires_at,
            });
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, p| p.expires_at > now);
        pending.insert(
            hash(&token),
            Pending {
                node: node.to_owned(),
                expires_at,
            },
        );
        Ok(NewToken {
            token,
            node: node.to_owned(),
            expires_at,
        })
    }

    /// Consumes `token`: the node it names, once. The token is gone afterwards whatever the
    /// outcome (an expired token is burned, not left for another try).
    ///
    /// # Errors
    /// [`NodeError::UnknownToken`] (never issued or already used), [`NodeError::ExpiredToken`].
    pub fn consume(&self, token: &str, now: SystemTime) -> Result<String, NodeError> {
        let key = hash(token);
        if let Some(store) = &self.store {
            let found = store
                .take_join_token(&key)
                .map_err(|e| NodeError::Store(e.to_string()))?
                .ok_or(NodeError::UnknownToken)?;
            if found.expires_at <= now {
                return Err(NodeError::ExpiredToken);
            }
            return Ok(found.node);
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let found = pending.remove(&key);
        pending.retain(|_, p| p.expires_at > now);
        drop(pending);
        let found = found.ok_or(NodeError::UnknownToken)?;
        if found.expires_at <= now {
            return Err(NodeError::ExpiredToken);
        }
        Ok(found.node)
    }

    /// How many unused, unexpired tokens are held in memory (none with a store).
    pub fn pending(&self, now: SystemTime) -> usize {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.values().filter(|p| p.expires_at > now).count()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    #[test]
    fn a_token_attests_its_node_once() {
        let tokens = JoinTokens::new();
        let new = tokens.create("web-1", DEFAULT_TTL, t0()).unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(new.token.as_bytes()).unwrap().len(),
            32
        );
        assert!(!format!("{new:?}").contains(new.token.as_str()), "redacted");
        assert_eq!(tokens.consume(&new.token, t0()).unwrap(), "web-1");
        assert_eq!(
            tokens.consume(&new.token, t0()),
            Err(NodeError::UnknownToken),
            "reuse"
        );
    }

    #[test]
    fn unknown_and_expired_tokens_are_refused_and_expired_ones_burned() {
        let tokens = JoinTokens::new();
        assert_eq!(tokens.consume("nope", t0()), Err(NodeError::UnknownToken));
        let new = tokens
            .create("web-1", Duration::from_secs(60), t0())
            .unwrap();
        let later = t0() + Duration::from_secs(60);
        assert_eq!(
            tokens.consume(&new.token, later),
            Err(NodeError::ExpiredToken)
        );
        assert_eq!(
            tokens.consume(&new.token, t0()),
            Err(NodeError::UnknownToken),
            "burned"
        );
    }

    #[test]
    fn only_the_hash_is_held() {
        let tokens = JoinTokens::new();
        let new = tokens.create("web-1", DEFAULT_TTL, t0()).unwrap();
        let raw = URL_SAFE_NO_PAD.decode(new.token.as_bytes()).unwrap();
        let table = tokens.pending.lock().unwrap();
        let keys: Vec<&[u8; 32]> = table.keys().collect();
        assert_eq!(keys, [&hash(&new.token)]);
        assert_ne!(keys[0].as_slice(), raw.as_slice(), "not the secret itself");
    }

    #[test]
    fn bad_names_and_ttls_are_refused() {
        let tokens = JoinTokens::new();
        assert!(matches!(
            tokens.create("a/b", DEFAULT_TTL, t0()),
            Err(NodeError::BadName(_))
        ));
        assert_eq!(
            tokens.create("a", Duration::ZERO, t0()).unwrap_err(),
            NodeError::BadTtl
        );
        assert_eq!(
            tokens
                .create("a", MAX_TTL + Duration::from_secs(1), t0())
                .unwrap_err(),
            NodeError::BadTtl
        );
    }

    #[test]
    fn stored_tokens_are_shared_by_every_table_on_the_store_and_used_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Storage> =
            Arc::new(crate::store::sqlite::SqliteStorage::open(dir.path()).unwrap());
        let minting = JoinTokens::with_store(store.clone());
        let other = JoinTokens::with_store(store);
        let new = minting.create("web-1", DEFAULT_TTL, t0()).unwrap();
        let short = minting
            .create("web-2", Duration::from_secs(1), t0())
            .unwrap();
        assert_eq!(other.consume(&new.token, t0()).unwrap(), "web-1");
        assert_eq!(
            minting.consume(&new.token, t0()),
            Err(NodeError::UnknownToken)
        );
        let later = t0() + Duration::from_secs(1);
        assert_eq!(
            other.consume(&short.token, later),
            Err(NodeError::ExpiredToken)
        );
        assert_eq!(
            other.consume(&short.token, t0()),
            Err(NodeError::UnknownToken)
        );
        let db = std::fs::read(dir.path().join(crate::store::sqlite::DB_FILE)).unwrap();
        let wal = std::fs::read(dir.path().join("meshtrust.db-wal")).unwrap_or_default();
        for bytes in [&db, &wal] {
            assert!(
                !bytes
                    .windows(new.token.len())
                    .any(|w| w == new.token.as_bytes()),
                "the token itself is never stored"
            );
        }
    }

    #[test]
    fn racing_consumers_of_one_token_have_exactly_one_winner() {
        let tokens = Arc::new(JoinTokens::new());
        let new = tokens.create("web-1", DEFAULT_TTL, t0()).unwrap();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (tokens, token) = (tokens.clone(), new.token.clone());
                std::thread::spawn(move || tokens.consume(&token, t0()).is_ok())
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|won| *won)
            .count();
        assert_eq!(wins, 1, "one token, one attestation");
    }
}
