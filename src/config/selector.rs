//! [`Selector`]: what a registration entry requires of a Workload API caller.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A fact about the calling process, read from the kernel (`SO_PEERCRED`, `/proc/<pid>/exe`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// `unix:uid:N`: the caller's user ID.
    Uid(u32),
    /// `unix:gid:N`: the caller's primary group ID.
    Gid(u32),
    /// `unix:path:/abs/exe`: the caller's executable, an absolute canonical path.
    Path(PathBuf),
}

impl FromStr for Selector {
    type Err = String;

    /// Parses `unix:uid:N`, `unix:gid:N` or `unix:path:/abs/exe`; the error says why not.
    fn from_str(s: &str) -> Result<Self, String> {
        let supported = "supported: unix:uid:N, unix:gid:N, unix:path:/abs/exe";
        let Some(rest) = s.strip_prefix("unix:") else {
            return Err(format!("unsupported selector type ({supported})"));
        };
        let (kind, value) = rest
            .split_once(':')
            .ok_or_else(|| format!("expected TYPE:KIND:VALUE ({supported})"))?;
        let id = || -> Result<u32, String> {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{kind} must be a decimal number"));
            }
            value.parse().map_err(|_| format!("{kind} is out of range"))
        };
        match kind {
            "uid" => Ok(Self::Uid(id()?)),
            "gid" => Ok(Self::Gid(id()?)),
            "path" => {
                // Compared byte for byte with the kernel's canonical /proc/<pid>/exe.
                let canonical = value.strip_prefix('/').is_some_and(|rest| {
                    rest.split('/')
                        .all(|segment| !matches!(segment, "" | "." | ".."))
                });
                if !canonical {
                    return Err("path must be an absolute, canonical path to an executable \
                                (no relative path, . or .. segment, // or trailing /)"
                        .to_owned());
                }
                Ok(Self::Path(PathBuf::from(value)))
            }
            _ => Err(format!("unsupported selector kind {kind:?} ({supported})")),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uid(uid) => write!(f, "unix:uid:{uid}"),
            Self::Gid(gid) => write!(f, "unix:gid:{gid}"),
            Self::Path(path) => write!(f, "unix:path:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_and_display_round_trip() {
        for text in [
            "unix:uid:0",
            "unix:gid:4294967295",
            "unix:path:/usr/bin/echo",
        ] {
            let selector: Selector = text.parse().expect(text);
            assert_eq!(selector.to_string(), text);
        }
        for (text, reason) in [
            ("unix:uid:", "decimal number"),
            ("unix:uid:-1", "decimal number"),
            ("unix:uid:+1", "decimal number"),
            ("unix:gid:4294967296", "out of range"),
            ("unix:path:/usr/../bin/sh", "canonical"),
            ("unix:path:/usr/./bin/sh", "canonical"),
            ("unix:path://usr/bin/sh", "canonical"),
            ("unix:path:/usr/bin/", "canonical"),
            ("unix:path:bin/sh", "absolute"),
            ("unix:path:", "absolute"),
            ("unix:pid:1", "unsupported selector kind"),
            ("unix:uid", "TYPE:KIND:VALUE"),
            ("docker:label:x", "unsupported selector type"),
        ] {
            let err = text.parse::<Selector>().expect_err(text);
            assert!(err.contains(reason), "{text}: {err}");
        }
    }
}
