//! The metrics listener of the real binary: its address (from the daemon's log), a scrape parsed
//! and checked for the exposition format's grouping, and waits on a metric's value.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::daemon::{GUARD, Proc};

/// The metrics listener's address (`host:port`), from the daemon's `metrics listening` line.
pub async fn listen_addr(daemon: &Proc) -> String {
    daemon.logged_addr("metrics listening").await
}

/// One metric family as scraped: its type, help and samples (`name{labels}` → value).
#[derive(Debug, Default)]
pub struct Family {
    pub kind: String,
    pub help: String,
    pub samples: BTreeMap<String, f64>,
}

/// Parses the exposition text, checking its grouping: every family has `# HELP` then `# TYPE`,
/// appears once, and its samples (for histograms `_bucket`, `_sum`, `_count`) follow them
/// before any other family begins.
pub fn parse(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(
                !families.contains_key(name),
                "family {name} appears twice:\n{text}"
            );
            assert!(!help.trim().is_empty(), "{name} has an empty HELP");
            families.insert(
                name.to_owned(),
                Family {
                    help: help.to_owned(),
                    ..Family::default()
                },
            );
            current = Some(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(
                Some(name),
                current.as_deref(),
                "TYPE of {name} does not follow its HELP"
            );
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "{name}: type {kind}"
            );
            families.get_mut(name).unwrap().kind = kind.to_owned();
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "line {line:?}");
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("value of {line:?}"));
            let name = series.split('{').next().unwrap();
            let family_name = current.as_deref().expect("a sample before any family");
            let family = families.get_mut(family_name).unwrap();
            let ok = match family.kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name == format!("{family_name}{s}")),
                "" => false,
                _ => name == family_name,
            };
            assert!(
                ok,
                "sample {name} is not in the family {family_name} it follows"
            );
            if let Some(labels) = series.strip_prefix(name) {
                assert!(
                    labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                    "labels of {line:?}"
                );
            }
            assert!(
                family.samples.insert(series.to_owned(), value).is_none(),
                "duplicate series {series}"
            );
        }
    }
    for (name, f) in &families {
        assert!(!f.kind.is_empty(), "{name} has no TYPE");
    }
    families
}

/// A scrape: the families, with getters that name what is missing.
pub struct Scrape {
    pub text: String,
    pub families: BTreeMap<String, Family>,
}

impl Scrape {
    pub fn family(&self, name: &str, kind: &str) -> &Family {
        let f = self
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in:\n{}", self.text));
        assert_eq!(f.kind, kind, "type of {name}");
        assert!(!f.help.is_empty(), "help of {name}");
        f
    }

    /// The value of `series` (`name` or `name{labels}` exactly as rendered) in family `name`.
    pub fn value(&self, family: &str, kind: &str, series: &str) -> f64 {
        *self
            .family(family, kind)
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no sample {series} in:\n{}", self.text))
    }

    /// 0 when the series is absent.
    pub fn value_or_0(&self, family: &str, series: &str) -> f64 {
        self.families
            .get(family)
            .and_then(|f| f.samples.get(series))
            .copied()
            .unwrap_or(0.0)
    }
}

/// `GET path` over plain HTTP/1.1 at `addr` (reads under the hang guard): the status (0 if
/// none) and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(GUARD)).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `GET /metrics` at `addr`, which must answer 200, parsed.
pub fn scrape(addr: &str) -> Scrape {
    let (status, text) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    Scrape {
        families: parse(&text),
        text,
    }
}

/// Scrapes until `done` holds (a hang guard, not a timing assertion); returns that scrape.
pub async fn scrape_until(addr: &str, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + GUARD;
    loop {
        let s = scrape(addr);
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "hang guard: {what}; last scrape:\n{}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the counter `series` (`name{labels}` exactly as rendered) at `addr`, 0 if absent.
pub fn counter(addr: &str, family: &str, series: &str) -> u64 {
    let value = scrape(addr).value_or_0(family, series);
    assert!(value >= 0.0 && value.fract() == 0.0, "{series} = {value}");
    value as u64
}
