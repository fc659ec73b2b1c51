//! `--write DIR` for each answer: PEM certificates and keys, tokens, JWKS documents, each file
//! replaced atomically ([`files::write_atomic`]).
//!
//! - x509: `svid.pem` (chain), `svid_key.pem` (PKCS#8, 0600), `bundle.pem` (own trust
//!   domain), `federated/<td>.pem`; an SVID after the first: `svid.N.pem`, `svid_key.N.pem`.
//! - jwt: `jwt_svid.token` (0600); after the first: `jwt_svid.N.token`.
//! - bundles: `<td>.pem`; jwt-bundles: `<td>.jwks.json` (`<td>` without `spiffe://`).

use std::path::Path;

use super::files::{self, PUBLIC, SECRET, WriteError};
use super::show::split_der;
use crate::bundle::pem::certs_to_pem;
use crate::svid::PrivateKey;
use crate::workload_api::proto::{
    JwtBundlesResponse, JwtsvidResponse, X509BundlesResponse, X509svidResponse,
};

/// A bundle map key (`spiffe://td`) as a file name; a key that could name another folder is
/// not written (the daemon's keys are trust domain names, which never hold `/`).
fn td_name(key: &str) -> Option<&str> {
    let td = key.strip_prefix("spiffe://").unwrap_or(key);
    (!td.is_empty() && !td.contains('/') && !td.starts_with('.')).then_some(td)
}

fn numbered(base: &str, ext: &str, index: usize) -> String {
    if index == 0 {
        format!("{base}.{ext}")
    } else {
        format!("{base}.{index}.{ext}")
    }
}

/// Writes the SVIDs, their keys and the bundles.
///
/// # Errors
/// The first file that could not be written.
pub fn x509(dir: &Path, msg: &X509svidResponse) -> Result<(), WriteError> {
    for (i, svid) in msg.svids.iter().enumerate() {
        let chain = certs_to_pem(&split_der(&svid.x509_svid));
        files::write_atomic(dir, &numbered("svid", "pem", i), chain.as_bytes(), PUBLIC)?;
        let key = PrivateKey::from_pkcs8_der(svid.x509_svid_key.clone()).to_pem();
        files::write_atomic(dir, &numbered("svid_key", "pem", i), key.as_bytes(), SECRET)?;
        if i == 0 {
            let own = certs_to_pem(&split_der(&svid.bundle));
            files::write_atomic(dir, "bundle.pem", own.as_bytes(), PUBLIC)?;
        }
    }
    for (key, der) in &msg.federated_bundles {
        if let Some(td) = td_name(key) {
            let pem = certs_to_pem(&split_der(der));
            files::write_atomic(dir, &format!("federated/{td}.pem"), pem.as_bytes(), PUBLIC)?;
        }
    }
    Ok(())
}

/// Writes the tokens.
///
/// # Errors
/// The first file that could not be written.
pub fn jwt(dir: &Path, msg: &JwtsvidResponse) -> Result<(), WriteError> {
    for (i, svid) in msg.svids.iter().enumerate() {
        let name = numbered("jwt_svid", "token", i);
        files::write_atomic(dir, &name, svid.svid.as_bytes(), SECRET)?;
    }
    Ok(())
}

/// Writes one PEM file per trust domain.
///
/// # Errors
/// The first file that could not be written.
pub fn x509_bundles(dir: &Path, msg: &X509BundlesResponse) -> Result<(), WriteError> {
    for (key, der) in &msg.bundles {
        if let Some(td) = td_name(key) {
            let pem = certs_to_pem(&split_der(der));
            files::write_atomic(dir, &format!("{td}.pem"), pem.as_bytes(), PUBLIC)?;
        }
    }
    Ok(())
}

/// Writes one JWKS per trust domain.
///
/// # Errors
/// The first file that could not be written.
pub fn jwt_bundles(dir: &Path, msg: &JwtBundlesResponse) -> Result<(), WriteError> {
    for (key, jwks) in &msg.bundles {
        if let Some(td) = td_name(key) {
            files::write_atomic(dir, &format!("{td}.jwks.json"), jwks, PUBLIC)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::td_name;

    #[test]
    fn bundle_keys_never_name_another_folder() {
        assert_eq!(td_name("spiffe://mesh-b.test"), Some("mesh-b.test"));
        assert_eq!(td_name("spiffe://../x"), None);
        assert_eq!(td_name("spiffe://a/b"), None);
        assert_eq!(td_name("spiffe://"), None);
        assert_eq!(td_name("spiffe://.hidden"), None);
    }
}
