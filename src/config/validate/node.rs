//! `[agent_api]` and `[node_attestation]`: where node agents connect and how they attest.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Cx, Result, same_port};
use crate::config::raw::{RawAgentApi, RawNodeAttestation};
use crate::config::{AgentApiConfig, NodeAttestationConfig};

impl Cx<'_> {
    /// `[agent_api]`; `taken` are the other listeners (key, address).
    pub(super) fn agent_api(
        &self,
        raw: RawAgentApi,
        taken: &[(&str, SocketAddr)],
    ) -> Result<AgentApiConfig> {
        let key = "agent_api.listen";
        let listen = self.socket_addr(key, self.required(key, raw.listen)?)?;
        if let Some((other, _)) = taken.iter().find(|(_, addr)| same_port(listen, *addr)) {
            return Err(self.invalid(key, format!("conflicts with {other}")));
        }
        let max_connections = match raw.max_connections {
            None => 10_000,
            Some(n @ 1..=1_000_000) => usize::try_from(n).unwrap_or(usize::MAX),
            Some(_) => {
                return Err(
                    self.invalid("agent_api.max_connections", "must be between 1 and 1000000")
                );
            }
        };
        Ok(AgentApiConfig {
            listen,
            max_connections,
            handshake_timeout: self.duration(
                "agent_api.handshake_timeout",
                raw.handshake_timeout,
                Duration::from_secs(10),
            )?,
            idle_timeout: self.duration(
                "agent_api.idle_timeout",
                raw.idle_timeout,
                Duration::from_secs(60),
            )?,
        })
    }

    /// `[node_attestation]`: join tokens on unless `join_token = false`; x509pop roots must exist.
    pub(super) fn node_attestation(
        &self,
        raw: RawNodeAttestation,
    ) -> Result<NodeAttestationConfig> {
        let x509pop_ca_file = raw
            .x509pop_ca_file
            .map(|f| self.existing_file("node_attestation.x509pop_ca_file", f))
            .transpose()?;
        Ok(NodeAttestationConfig {
            join_token: raw.join_token.unwrap_or(true),
            x509pop_ca_file,
        })
    }
}
