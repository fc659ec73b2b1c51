//! The demo's sidecar command lines. `meshtrust demo` runs exactly these (parsed by the same
//! command-line parser), and the containers of `docker-compose.yml` run them too, with their own
//! addresses; a test holds the two together.

/// mesh-a's frontend: the only identity echo lets in.
pub const FRONTEND: &str = "spiffe://mesh-a.test/ns/default/sa/frontend";
/// mesh-a's batch job: a valid mesh-a identity that is not on echo's allow list.
pub const BATCH: &str = "spiffe://mesh-a.test/ns/default/sa/batch";
/// mesh-b's echo service.
pub const ECHO: &str = "spiffe://mesh-b.test/ns/default/sa/echo";

/// The inbound sidecar in front of mesh-b's echo service.
pub fn echo_inbound(listen: &str, forward: &str) -> String {
    format!("sidecar inbound --listen {listen} --forward {forward} --allow {FRONTEND}")
}

/// The frontend's outbound sidecar towards echo.
pub fn frontend_outbound(listen: &str, connect: &str) -> String {
    format!("sidecar outbound --listen {listen} --connect {connect} --expect {ECHO}")
}

/// The batch job's outbound sidecar towards echo: it presents the batch identity.
pub fn batch_outbound(listen: &str, connect: &str) -> String {
    format!(
        "sidecar --spiffe-id {BATCH} outbound --listen {listen} --connect {connect} --expect {ECHO}"
    )
}
