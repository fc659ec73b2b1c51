//! Generated prost messages and tonic client/server of the meshtrust agent API
//! (`proto/agent.proto`, package `meshtrust.agent.v1`): the server side is this module's parent,
//! the agent process uses the client.
//!
//! The code is checked in (`gen/agent.rs`), like the Workload API's, so building needs no
//! `protoc`; `tests/proto_bootstrap.rs` fails when it no longer matches the proto (regenerate
//! with `MESHTRUST_REGEN_PROTO=1 cargo test --test proto_bootstrap`). The server trait is
//! [`agent_api_server::AgentApi`], the client [`agent_api_client::AgentApiClient`].

include!("gen/agent.rs");

/// Redacted: a join token is a bearer secret until used.
impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Redacted: a JWT-SVID is a bearer credential.
impl std::fmt::Debug for MintedJwtSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedJwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("token", &format_args!("<{} bytes>", self.token.len()))
            .field("error", &self.error)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_join_token_or_a_jwt() {
        let token = JoinToken {
            token: "s3cret-token".into(),
        };
        assert!(!format!("{token:?}").contains("s3cret"));
        let jwt = MintedJwtSvid {
            spiffe_id: "spiffe://td/w".into(),
            token: "eyJhbGciOi.payload.sig".into(),
            error: String::new(),
        };
        let shown = format!("{jwt:?}");
        assert!(!shown.contains("eyJ"), "{shown}");
        assert!(shown.contains("spiffe://td/w"));
    }
}
