//! PEM certificate files: bootstrap bundles an operator points a federation relationship at
//! (`pem::parse_bootstrap`, which also takes bundle JSON) and PEM CA files (`parse_certs_pem`).
//!
//! Invariants: every certificate returned is one whole DER X.509 certificate; written back as
//! PEM (`certs_to_pem`) the certificates re-parse to themselves; concatenated DER has their total
//! length; a bootstrap bundle is never empty, carries the configured trust domain, and its PEM
//! form is exactly `parse_certs_pem` of the input (after an optional BOM).

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshtrust::bundle::pem;
use meshtrust::spiffe_id::TrustDomain;
use x509_parser::prelude::{FromDer as _, X509Certificate};

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::new("mesh-b.test").expect("valid trust domain");

    let certs = pem::parse_certs_pem(data);
    if let Ok(certs) = &certs {
        assert!(!certs.is_empty(), "Ok means at least one certificate");
        for cert in certs {
            let (rest, _) = X509Certificate::from_der(cert.as_ref()).expect("whole certificate");
            assert!(rest.is_empty(), "no trailing bytes");
        }
        let text = pem::certs_to_pem(certs);
        assert_eq!(
            pem::parse_certs_pem(text.as_bytes()).as_ref(),
            Ok(certs),
            "PEM round trip"
        );
        assert_eq!(pem::certs_to_pem(certs), text, "deterministic");
        let total: usize = certs.iter().map(|c| c.as_ref().len()).sum();
        assert_eq!(pem::certs_to_der_concat(certs).len(), total);
    }

    let body = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let is_json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    match pem::parse_bootstrap(&td, data) {
        Ok(bundle) => {
            assert_eq!(bundle.trust_domain, td);
            assert!(
                !bundle.x509_authorities.is_empty(),
                "a bootstrap bundle anchors something"
            );
            if !is_json {
                assert_eq!(
                    Ok(&bundle.x509_authorities),
                    pem::parse_certs_pem(body).as_ref()
                );
                assert!(bundle.jwt_authorities.is_empty());
                assert_eq!(bundle.sequence, None);
                assert_eq!(bundle.refresh_hint, None);
            }
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if !is_json {
                assert!(pem::parse_certs_pem(body).is_err(), "bootstrap refused {e}");
            }
        }
    }
});
