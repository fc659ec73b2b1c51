//! Where the Workload API is: `--workload-socket`, else `SPIFFE_ENDPOINT_SOCKET` (Workload
//! Endpoint §4, SPIFFE.md 1.6.5 and §3.5).
//!
//! Only `unix:` endpoints are supported: the sidecar runs beside the daemon and meshtrust serves
//! the Workload API on a Unix socket only, so a `tcp://` address is refused with a message that
//! says so rather than half-supported. The parser follows the spec, not go-spiffe's leniency:
//! an authority (`unix://host/path`), a relative path (`unix:sock`), a query, a fragment or an
//! empty path are errors (SPIFFE.md §7 pitfall 10).

use std::path::PathBuf;

/// The environment variable SPIFFE clients fall back to (Workload Endpoint §4).
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Why a Workload API address is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Neither the flag (named here) nor the environment variable is set.
    #[error("no workload api address: pass {0} or set SPIFFE_ENDPOINT_SOCKET")]
    NotConfigured(&'static str),
    /// The environment variable's value is unusable: names the variable and its value.
    #[error("SPIFFE_ENDPOINT_SOCKET={value:?}: {reason}")]
    Env {
        /// The variable's value.
        value: String,
        /// What is wrong with it.
        reason: Box<EndpointError>,
    },
    /// The address is an empty string.
    #[error("the workload api address is empty")]
    Empty,
    /// `tcp://` is a valid endpoint scheme, but meshtrust serves the Workload API on a Unix socket.
    #[error("tcp endpoints are not supported by the sidecar: use unix:///absolute/path")]
    TcpUnsupported,
    /// A scheme other than `unix` (or `tcp`).
    #[error("unsupported scheme {0:?}: the workload api address must be unix:///absolute/path")]
    UnsupportedScheme(String),
    /// Not a URI at all (no scheme).
    #[error("not a unix: URI; expected unix:///absolute/path")]
    NotAUri,
    /// `unix://host/...`: the spec forbids an authority.
    #[error("a unix: endpoint must not have an authority (got {0:?}); write unix:///path")]
    Authority(String),
    /// `unix:` with no path, or a path that names no socket (`/`).
    #[error("a unix: endpoint needs the socket's absolute path")]
    NoPath,
    /// `unix:relative/path`.
    #[error("a unix: endpoint path must be absolute")]
    RelativePath,
    /// `?...` present.
    #[error("a unix: endpoint must not have a query")]
    Query,
    /// `#...` present.
    #[error("a unix: endpoint must not have a fragment")]
    Fragment,
    /// A `%` not followed by two hex digits, or one that decodes to NUL or to non-UTF-8.
    #[error("bad percent-encoding in the socket path")]
    BadPercentEncoding,
}

/// Parses a `unix:` endpoint URI strictly (Workload Endpoint §4): scheme `unix`
/// (case-insensitive, RFC 3986 §3.1), no authority, an absolute path, nothing else. Both
/// `unix:///run/x.sock` and `unix:/run/x.sock` name `/run/x.sock`; the path is percent-decoded.
///
/// # Errors
/// The [`EndpointError`] naming the rule the address breaks.
pub fn parse_unix_uri(uri: &str) -> Result<PathBuf, EndpointError> {
    if uri.is_empty() {
        return Err(EndpointError::Empty);
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err(EndpointError::NotAUri);
    };
    if scheme.is_empty() || scheme.contains('/') {
        return Err(EndpointError::NotAUri);
    }
    if scheme.eq_ignore_ascii_case("tcp") {
        return Err(EndpointError::TcpUnsupported);
    }
    if !scheme.eq_ignore_ascii_case("unix") {
        return Err(EndpointError::UnsupportedScheme(scheme.to_owned()));
    }
    if rest.contains('#') {
        return Err(EndpointError::Fragment);
    }
    if rest.contains('?') {
        return Err(EndpointError::Query);
    }
    let path = match rest.strip_prefix("//") {
        Some(after) => {
            let end = after.find('/').unwrap_or(after.len());
            if end > 0 {
                return Err(EndpointError::Authority(after[..end].to_owned()));
            }
            &after[end..]
        }
        None => rest,
    };
    if path.is_empty() {
        return Err(EndpointError::NoPath);
    }
    if !path.starts_with('/') {
        return Err(EndpointError::RelativePath);
    }
    let decoded = percent_decode(path)?;
    if decoded.trim_end_matches('/').is_empty() {
        return Err(EndpointError::NoPath);
    }
    Ok(PathBuf::from(decoded))
}

fn percent_decode(s: &str) -> Result<String, EndpointError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(EndpointError::BadPercentEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| EndpointError::BadPercentEncoding)?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| EndpointError::BadPercentEncoding)?;
            if b == 0 {
                return Err(EndpointError::BadPercentEncoding);
            }
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| EndpointError::BadPercentEncoding)
}

/// Picks the socket: the flag when given, else the environment value (Workload Endpoint §4:
/// clients MUST fall back to `SPIFFE_ENDPOINT_SOCKET`).
///
/// The environment value must be a strict `unix:` URI. The flag may also be a plain filesystem
/// path (anything without a `scheme:` prefix), as operators type it and as the daemon's config
/// names the socket; a relative path is taken relative to the working directory.
///
/// # Errors
/// [`EndpointError::NotConfigured`] when neither is set, the flag's parse error, or
/// [`EndpointError::Env`] naming the variable and its value.
pub fn resolve(flag: Option<&str>, env: Option<&str>) -> Result<PathBuf, EndpointError> {
    resolve_named("--workload-socket", flag, env)
}

/// [`resolve`] for a command whose flag is called `flag_name` (named when neither is set).
///
/// # Errors
/// As [`resolve`].
pub fn resolve_named(
    flag_name: &'static str,
    flag: Option<&str>,
    env: Option<&str>,
) -> Result<PathBuf, EndpointError> {
    match (flag, env) {
        (Some(flag), _) => {
            if flag.is_empty() {
                Err(EndpointError::Empty)
            } else if looks_like_uri(flag) {
                parse_unix_uri(flag)
            } else {
                Ok(PathBuf::from(flag))
            }
        }
        (None, Some(env)) => parse_unix_uri(env).map_err(|reason| EndpointError::Env {
            value: env.to_owned(),
            reason: Box::new(reason),
        }),
        (None, None) => Err(EndpointError::NotConfigured(flag_name)),
    }
}

/// `scheme:` prefix per RFC 3986 §3.1 (a letter, then letters, digits, `+`, `-`, `.`).
fn looks_like_uri(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(uri: &str) -> String {
        parse_unix_uri(uri)
            .unwrap_or_else(|e| panic!("{uri}: {e}"))
            .display()
            .to_string()
    }

    #[test]
    fn accepts_absolute_unix_paths_without_authority() {
        // Workload Endpoint 1.6.5: unix:///path/sock, nothing else.
        assert_eq!(
            ok("unix:///run/meshtrust/workload.sock"),
            "/run/meshtrust/workload.sock"
        );
        assert_eq!(ok("unix:/run/x.sock"), "/run/x.sock");
        assert_eq!(ok("UNIX:///run/x.sock"), "/run/x.sock");
        assert_eq!(ok("unix:///tmp/a%20b.sock"), "/tmp/a b.sock");
    }

    #[test]
    fn rejects_what_the_spec_forbids() {
        // SPIFFE.md 1.6.5 and §3.5 (stricter than go-spiffe on the authority, §7 pitfall 10).
        let cases = [
            ("", EndpointError::Empty),
            (
                "unix://host/run/x.sock",
                EndpointError::Authority("host".into()),
            ),
            ("unix://run/x.sock", EndpointError::Authority("run".into())),
            ("unix:run/x.sock", EndpointError::RelativePath),
            ("unix:", EndpointError::NoPath),
            ("unix://", EndpointError::NoPath),
            ("unix:///", EndpointError::NoPath),
            ("unix:///run/x.sock?mode=1", EndpointError::Query),
            ("unix:///run/x.sock#frag", EndpointError::Fragment),
            (
                "unix://user@/x.sock",
                EndpointError::Authority("user@".into()),
            ),
            ("unix:///run/%zz.sock", EndpointError::BadPercentEncoding),
            ("unix:///run/%00.sock", EndpointError::BadPercentEncoding),
            ("tcp://127.0.0.1:8000", EndpointError::TcpUnsupported),
            (
                "http://localhost/x",
                EndpointError::UnsupportedScheme("http".into()),
            ),
            ("/run/x.sock", EndpointError::NotAUri),
        ];
        for (uri, want) in cases {
            assert_eq!(parse_unix_uri(uri), Err(want), "{uri}");
        }
    }

    #[test]
    fn the_flag_wins_and_the_environment_is_the_fallback() {
        // Workload Endpoint 1.6.5: clients fall back to SPIFFE_ENDPOINT_SOCKET.
        assert_eq!(
            resolve(Some("/a.sock"), Some("unix:///b.sock")),
            Ok(PathBuf::from("/a.sock"))
        );
        assert_eq!(
            resolve(Some("unix:///a.sock"), None),
            Ok(PathBuf::from("/a.sock"))
        );
        assert_eq!(
            resolve(Some("rel/a.sock"), None),
            Ok(PathBuf::from("rel/a.sock"))
        );
        assert_eq!(
            resolve(None, Some("unix:///b.sock")),
            Ok(PathBuf::from("/b.sock"))
        );
        // The environment value is a URI, never a bare path; the error names the variable and
        // its value.
        let e = resolve(None, Some("/b.sock")).unwrap_err();
        assert_eq!(
            e,
            EndpointError::Env {
                value: "/b.sock".into(),
                reason: Box::new(EndpointError::NotAUri)
            }
        );
        assert_eq!(
            e.to_string(),
            "SPIFFE_ENDPOINT_SOCKET=\"/b.sock\": not a unix: URI; expected unix:///absolute/path"
        );
        assert_eq!(
            resolve(Some("unix://h/a.sock"), None),
            Err(EndpointError::Authority("h".into()))
        );
        assert_eq!(
            resolve(None, None),
            Err(EndpointError::NotConfigured("--workload-socket"))
        );
    }
}
