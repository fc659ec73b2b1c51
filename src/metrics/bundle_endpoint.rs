//! Bundle endpoint metrics: requests by HTTP status code, TLS handshake failures by reason, open
//! connections. Lock-free: the endpoint is the hot path peers poll.

use std::sync::atomic::{AtomicU64, Ordering};

use http::StatusCode;

use super::gauge::{Gauge, Open};
use super::text::{family, sample};

/// Why a TLS handshake on the bundle endpoint failed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not completed within the handshake timeout.
    Timeout,
    /// The client closed or reset the connection during the handshake.
    Closed,
    /// Not TLS, or malformed or unexpected TLS messages (a plain HTTP request lands here).
    Protocol,
    /// No protocol version, cipher suite, group or ALPN protocol in common.
    Incompatible,
    /// The client sent a TLS alert (often: it does not trust our certificate).
    AlertReceived,
    /// Anything else (an I/O error, a local failure).
    Other,
}

impl HandshakeFailure {
    const ALL: [Self; 6] = [
        Self::Timeout,
        Self::Closed,
        Self::Protocol,
        Self::Incompatible,
        Self::AlertReceived,
        Self::Other,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Protocol => "protocol_error",
            Self::Incompatible => "incompatible",
            Self::AlertReceived => "alert_received",
            Self::Other => "other",
        }
    }

    /// The reason for an error from `tokio_rustls`'s accept (a `rustls::Error` inside an
    /// `io::Error`, or an I/O error of the socket).
    pub fn of_error(e: &std::io::Error) -> Self {
        use rustls::Error as E;
        use std::io::ErrorKind as K;
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) {
            return match tls {
                E::InvalidMessage(_)
                | E::InappropriateMessage { .. }
                | E::InappropriateHandshakeMessage { .. }
                | E::PeerMisbehaved(_)
                | E::PeerSentOversizedRecord
                | E::DecryptError => Self::Protocol,
                E::PeerIncompatible(_) | E::NoApplicationProtocol => Self::Incompatible,
                E::AlertReceived(_) => Self::AlertReceived,
                _ => Self::Other,
            };
        }
        match e.kind() {
            K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                Self::Closed
            }
            _ => Self::Other,
        }
    }
}

/// Status codes 100..=599, one counter each (4 KiB, no lock on the hot path).
const CODES: usize = 500;

/// The bundle endpoint's counters. Writers are its connections; `/metrics` only reads.
#[derive(Debug)]
pub struct BundleEndpointMetrics {
    requests: [AtomicU64; CODES],
    handshake_failures: [AtomicU64; HandshakeFailure::ALL.len()],
    connections: Gauge,
}

impl Default for BundleEndpointMetrics {
    fn default() -> Self {
        Self {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            handshake_failures: std::array::from_fn(|_| AtomicU64::new(0)),
            connections: Gauge::default(),
        }
    }
}

impl BundleEndpointMetrics {
    /// One response with `status`.
    pub fn responded(&self, status: StatusCode) {
        if let Some(n) = self
            .requests
            .get(usize::from(status.as_u16()).wrapping_sub(100))
        {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One failed TLS handshake.
    pub fn handshake_failed(&self, why: HandshakeFailure) {
        self.handshake_failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// One more open connection (from accept, handshake included) until the guard drops.
    pub fn connection_opened(&self) -> Open {
        self.connections.open()
    }

    pub(super) fn render(&self, out: &mut String) {
        family(
            out,
            "meshtrust_bundle_endpoint_requests_total",
            "counter",
            "Bundle endpoint responses by HTTP status code.",
        );
        for (i, n) in self.requests.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            let code = i + 100;
            if n > 0 || code == 200 {
                sample(
                    out,
                    "meshtrust_bundle_endpoint_requests_total",
                    &[("code", &code.to_string())],
                    n,
                );
            }
        }
        family(
            out,
            "meshtrust_bundle_endpoint_tls_handshake_failures_total",
            "counter",
            "Failed TLS handshakes on the bundle endpoint, by reason.",
        );
        for why in HandshakeFailure::ALL {
            sample(
                out,
                "meshtrust_bundle_endpoint_tls_handshake_failures_total",
                &[("reason", why.label())],
                self.handshake_failures[why as usize].load(Ordering::Relaxed),
            );
        }
        family(
            out,
            "meshtrust_bundle_endpoint_open_connections",
            "gauge",
            "Open bundle endpoint connections (TLS handshakes included).",
        );
        sample(
            out,
            "meshtrust_bundle_endpoint_open_connections",
            &[],
            self.connections.get(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_errors_are_classified() {
        let wrapped = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert_eq!(
            HandshakeFailure::of_error(&wrapped(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))),
            HandshakeFailure::Protocol
        );
        assert_eq!(
            HandshakeFailure::of_error(&wrapped(rustls::Error::AlertReceived(
                rustls::AlertDescription::BadCertificate
            ))),
            HandshakeFailure::AlertReceived
        );
        assert_eq!(
            HandshakeFailure::of_error(&std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "tls handshake eof"
            )),
            HandshakeFailure::Closed
        );
    }

    #[test]
    fn status_codes_outside_the_range_are_ignored_not_a_panic() {
        let m = BundleEndpointMetrics::default();
        m.responded(StatusCode::NOT_FOUND);
        m.responded(StatusCode::from_u16(999).unwrap());
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("meshtrust_bundle_endpoint_requests_total{code=\"404\"} 1\n"));
        assert!(out.contains("meshtrust_bundle_endpoint_requests_total{code=\"200\"} 0\n"));
        assert!(!out.contains("code=\"999\""));
    }
}
