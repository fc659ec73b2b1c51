//! Generated prost messages and tonic client/server for the SPIFFE Workload API
//! (`proto/workload.proto`, SPIFFE.md §3.3).
//!
//! The code is checked in (`gen/workload.rs`) rather than built by a build script, so building
//! meshtrust needs neither `protoc` nor codegen crates; `tests/proto_bootstrap.rs` fails when the
//! file no longer matches the proto (regenerate with
//! `MESHTRUST_REGEN_PROTO=1 cargo test --test proto_bootstrap`).
//!
//! The proto has no package, so everything sits at this module's root and the gRPC paths are
//! `/SpiffeWorkloadAPI/<Method>`. prost renames messages to Rust case: `X509SVIDResponse` is
//! [`X509svidResponse`], `JWTSVID` is [`Jwtsvid`], `ValidateJWTSVIDRequest` is
//! [`ValidateJwtsvidRequest`], and so on. The server trait is
//! [`spiffe_workload_api_server::SpiffeWorkloadApi`], the client
//! [`spiffe_workload_api_client::SpiffeWorkloadApiClient`].
//!
//! No lint allowance is needed here: with the crate's lints, `cargo clippy --all-targets -- -D
//! warnings` is clean on the generated code (every type derives `Debug`, nothing unwraps), and the
//! client/server modules carry tonic's own narrow `#![allow]`s. Add a targeted `#[expect]` on the
//! `include!` only if a future generator version trips a lint.

include!("gen/workload.rs");

/// Redacted: the key never appears in `Debug` output (the generator skips these three).
impl std::fmt::Debug for X509svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509svid")
            .field("spiffe_id", &self.spiffe_id)
            .field(
                "x509_svid",
                &format_args!("<{} bytes>", self.x509_svid.len()),
            )
            .field("x509_svid_key", &"<redacted>")
            .field("bundle", &format_args!("<{} bytes>", self.bundle.len()))
            .field("hint", &self.hint)
            .finish()
    }
}

/// Redacted: a JWT-SVID is a bearer token.
impl std::fmt::Debug for Jwtsvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwtsvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("svid", &"<redacted>")
            .field("hint", &self.hint)
            .finish()
    }
}

/// Redacted: the token to validate is a bearer token.
impl std::fmt::Debug for ValidateJwtsvidRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidateJwtsvidRequest")
            .field("audience", &self.audience)
            .field("svid", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_tokens_never_show_in_debug_output() {
        let svid = X509svid {
            spiffe_id: "spiffe://td/w".into(),
            x509_svid_key: b"SECRET-KEY-BYTES".to_vec(),
            ..Default::default()
        };
        let jwt = Jwtsvid {
            spiffe_id: "spiffe://td/w".into(),
            svid: "SECRET.TOKEN.X".into(),
            hint: String::new(),
        };
        let req = ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: "SECRET.TOKEN.Y".into(),
        };
        let text = format!(
            "{:?} {:?} {:?}",
            X509svidResponse {
                svids: vec![svid],
                ..Default::default()
            },
            JwtsvidResponse { svids: vec![jwt] },
            req
        );
        assert!(!text.contains("SECRET"), "{text}");
        // The key bytes as a Debug list would show as numbers: 83 = 'S'.
        assert!(!text.contains("83, 69"), "{text}");
        assert!(text.contains("spiffe://td/w"), "{text}");
    }
}
