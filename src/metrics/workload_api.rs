//! Workload API metrics: calls by method and outcome, time to the first answer per method, open
//! streams, open connections, refused connections by reason.
//!
//! Labels are bounded: `method` is one of the five gRPC methods, the five JSON routes or
//! `unknown`; `outcome` is a gRPC status code name (the JSON view's HTTP statuses are mapped
//! to the same names); `reason` is a `&'static str` from the code. No caller identity is a label.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;

use super::gauge::{Gauge, Open};
use super::histogram::Histogram;
use super::text::{family, sample};
use crate::workload_api::{RefusalReason, Refusals};

/// A Workload API method: a gRPC method or a route of the JSON view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `FetchX509SVID` (server stream).
    FetchX509Svid,
    /// `FetchX509Bundles` (server stream).
    FetchX509Bundles,
    /// `FetchJWTSVID` (unary).
    FetchJwtSvid,
    /// `FetchJWTBundles` (server stream).
    FetchJwtBundles,
    /// `ValidateJWTSVID` (unary).
    ValidateJwtSvid,
    /// JSON view `GET /v1/x509-svid`.
    JsonX509Svid,
    /// JSON view `GET /v1/x509-bundles`.
    JsonX509Bundles,
    /// JSON view `GET /v1/jwt-svid`.
    JsonJwtSvid,
    /// JSON view `GET /v1/jwt-bundles`.
    JsonJwtBundles,
    /// JSON view `GET /` (the list of routes).
    JsonRoutes,
    /// Any other gRPC path or HTTP route.
    Unknown,
}

impl Method {
    const ALL: [Self; 11] = [
        Self::FetchX509Svid,
        Self::FetchX509Bundles,
        Self::FetchJwtSvid,
        Self::FetchJwtBundles,
        Self::ValidateJwtSvid,
        Self::JsonX509Svid,
        Self::JsonX509Bundles,
        Self::JsonJwtSvid,
        Self::JsonJwtBundles,
        Self::JsonRoutes,
        Self::Unknown,
    ];

    /// The `method` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::FetchX509Svid => "FetchX509SVID",
            Self::FetchX509Bundles => "FetchX509Bundles",
            Self::FetchJwtSvid => "FetchJWTSVID",
            Self::FetchJwtBundles => "FetchJWTBundles",
            Self::ValidateJwtSvid => "ValidateJWTSVID",
            Self::JsonX509Svid => "/v1/x509-svid",
            Self::JsonX509Bundles => "/v1/x509-bundles",
            Self::JsonJwtSvid => "/v1/jwt-svid",
            Self::JsonJwtBundles => "/v1/jwt-bundles",
            Self::JsonRoutes => "/",
            Self::Unknown => "unknown",
        }
    }

    /// The method of a gRPC request path (`/SpiffeWorkloadAPI/<Method>`).
    pub fn of_grpc_path(path: &str) -> Self {
        match path.strip_prefix("/SpiffeWorkloadAPI/") {
            Some("FetchX509SVID") => Self::FetchX509Svid,
            Some("FetchX509Bundles") => Self::FetchX509Bundles,
            Some("FetchJWTSVID") => Self::FetchJwtSvid,
            Some("FetchJWTBundles") => Self::FetchJwtBundles,
            Some("ValidateJWTSVID") => Self::ValidateJwtSvid,
            _ => Self::Unknown,
        }
    }

    /// The route of a JSON view request path.
    pub fn of_json_path(path: &str) -> Self {
        match path {
            "/v1/x509-svid" => Self::JsonX509Svid,
            "/v1/x509-bundles" => Self::JsonX509Bundles,
            "/v1/jwt-svid" => Self::JsonJwtSvid,
            "/v1/jwt-bundles" => Self::JsonJwtBundles,
            "/" => Self::JsonRoutes,
            _ => Self::Unknown,
        }
    }

    fn is_grpc(self) -> bool {
        !matches!(
            self,
            Self::JsonX509Svid
                | Self::JsonX509Bundles
                | Self::JsonJwtSvid
                | Self::JsonJwtBundles
                | Self::JsonRoutes
                | Self::Unknown
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// gRPC status code names, indexed by code (`grpc-status`).
const OUTCOMES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// How a call was answered: a gRPC status code (the `outcome` label is its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome(u8);

impl Outcome {
    /// Answered.
    pub const OK: Self = Self(0);
    /// The client went away before an answer.
    pub const CANCELLED: Self = Self(1);
    /// No status where one was due.
    pub const UNKNOWN: Self = Self(2);

    /// From a `grpc-status` value; anything unparsable or out of range is `unknown`.
    pub fn of_grpc_status(value: &[u8]) -> Self {
        std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
            .map_or(Self::UNKNOWN, Self::of_code)
    }

    /// From a gRPC status code; out of range is `unknown`.
    pub fn of_code(code: i32) -> Self {
        u8::try_from(code)
            .ok()
            .filter(|code| usize::from(*code) < OUTCOMES.len())
            .map_or(Self::UNKNOWN, Self)
    }

    /// From the JSON view's HTTP status (its errors are the gRPC service's, see `json.rs`).
    pub fn of_http_status(status: StatusCode) -> Self {
        Self(match status.as_u16() {
            200..=299 => 0,
            400 => 3,
            403 => 7,
            404 => 5,
            405 => 12,
            500 => 13,
            503 => 14,
            _ => 2,
        })
    }

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        OUTCOMES[usize::from(self.0)]
    }
}

/// The Workload API's counters. Writers are the server's connections and calls; `/metrics`
/// only reads.
#[derive(Debug)]
pub struct WorkloadApiMetrics {
    requests: [[AtomicU64; OUTCOMES.len()]; Method::ALL.len()],
    latency: [Histogram; Method::ALL.len()],
    streams: [Gauge; Method::ALL.len()],
    connections: Gauge,
    /// The server's refusal counts by reason (it writes them; every reason is rendered, at 0
    /// from the start so that rates work at once).
    refusals: Arc<Refusals>,
}

impl Default for WorkloadApiMetrics {
    fn default() -> Self {
        Self {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency: std::array::from_fn(|_| Histogram::default()),
            streams: std::array::from_fn(|_| Gauge::default()),
            connections: Gauge::default(),
            refusals: Arc::default(),
        }
    }
}

impl WorkloadApiMetrics {
    /// One answered call: its outcome and the time from the request to its first answer (the
    /// response of a unary call, the first message or the error of a stream).
    pub fn answered(&self, method: Method, outcome: Outcome, elapsed: Duration) {
        self.requests[method.index()][usize::from(outcome.0)].fetch_add(1, Ordering::Relaxed);
        self.latency[method.index()].observe(elapsed);
    }

    /// One more open gRPC stream (HTTP/2 stream, unary calls included) until the guard drops.
    pub fn stream_opened(&self, method: Method) -> Open {
        self.streams[method.index()].open()
    }

    /// One more open connection until the guard drops.
    pub fn connection_opened(&self) -> Open {
        self.connections.open()
    }

    /// Where the server counts the connections it refuses or closes, by reason.
    pub fn refusals(&self) -> &Arc<Refusals> {
        &self.refusals
    }

    /// Calls of `method` answered with `outcome` so far.
    pub fn requests(&self, method: Method, outcome: Outcome) -> u64 {
        self.requests[method.index()][usize::from(outcome.0)].load(Ordering::Relaxed)
    }

    pub(crate) fn render(&self, out: &mut String) {
        family(
            out,
            "meshtrust_workload_api_requests_total",
            "counter",
            "Workload API calls by method (gRPC method or JSON route) and outcome (gRPC status name).",
        );
        for method in Method::ALL {
            for (code, outcome) in OUTCOMES.iter().enumerate() {
                let n = self.requests[method.index()][code].load(Ordering::Relaxed);
                // The `ok` series of every known method exists from the start.
                if n > 0 || (code == 0 && method != Method::Unknown) {
                    sample(
                        out,
                        "meshtrust_workload_api_requests_total",
                        &[("method", method.label()), ("outcome", outcome)],
                        n,
                    );
                }
            }
        }
        family(
            out,
            "meshtrust_workload_api_request_duration_seconds",
            "histogram",
            "Time from a Workload API call to its first answer (a stream's first message), by method.",
        );
        for method in Method::ALL {
            let h = &self.latency[method.index()];
            if h.count() > 0 {
                h.render(
                    out,
                    "meshtrust_workload_api_request_duration_seconds",
                    &[("method", method.label())],
                );
            }
        }
        family(
            out,
            "meshtrust_workload_api_open_streams",
            "gauge",
            "Open gRPC calls (HTTP/2 streams) by method.",
        );
        for method in Method::ALL.into_iter().filter(|m| m.is_grpc()) {
            sample(
                out,
                "meshtrust_workload_api_open_streams",
                &[("method", method.label())],
                self.streams[method.index()].get(),
            );
        }
        family(
            out,
            "meshtrust_workload_api_open_connections",
            "gauge",
            "Open connections on the Workload API socket.",
        );
        sample(
            out,
            "meshtrust_workload_api_open_connections",
            &[],
            self.connections.get(),
        );
        family(
            out,
            "meshtrust_workload_api_refused_connections_total",
            "counter",
            "Workload API connections closed before being served, by reason.",
        );
        for reason in RefusalReason::ALL {
            sample(
                out,
                "meshtrust_workload_api_refused_connections_total",
                &[("reason", reason.as_str())],
                self.refusals.count(reason),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            Method::of_grpc_path("/SpiffeWorkloadAPI/FetchJWTSVID"),
            Method::FetchJwtSvid
        );
        assert_eq!(Method::of_grpc_path("/x/FetchJWTSVID"), Method::Unknown);
        assert_eq!(Method::of_json_path("/v1/../etc"), Method::Unknown);
        assert_eq!(Method::of_json_path("/v1/jwt-svid"), Method::JsonJwtSvid);
        assert_eq!(
            Method::of_json_path("/v1/jwt-bundles").label(),
            "/v1/jwt-bundles"
        );
        assert_eq!(Method::of_json_path("/"), Method::JsonRoutes);
        assert!(Method::ALL.iter().all(|m| Method::ALL[m.index()] == *m));
        assert_eq!(Outcome::of_grpc_status(b"7").label(), "permission_denied");
        assert_eq!(Outcome::of_grpc_status(b"17"), Outcome::UNKNOWN);
        assert_eq!(Outcome::of_grpc_status(b"x"), Outcome::UNKNOWN);
        assert_eq!(
            Outcome::of_http_status(StatusCode::BAD_REQUEST).label(),
            "invalid_argument"
        );
    }

    #[test]
    fn refusals_count_per_reason() {
        let m = WorkloadApiMetrics::default();
        m.refusals()
            .record(RefusalReason::TooManyConnections, Some(1000));
        m.refusals()
            .record(RefusalReason::TooManyConnections, Some(1000));
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains(
            "meshtrust_workload_api_refused_connections_total{reason=\"header_timeout\"} 0\n"
        ));
        assert!(out.contains(
            "meshtrust_workload_api_refused_connections_total{reason=\"too_many_connections\"} 2\n"
        ));
    }
}
