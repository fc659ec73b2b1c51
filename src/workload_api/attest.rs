//! Who is calling the Workload API: kernel-reported peer credentials of the Unix socket plus the
//! caller's executable from procfs (Workload Endpoint §5: out-of-band attestation; SPIFFE.md §3.4).
//!
//! The workload does nothing to prove who it is. `SO_PEERCRED` (read through tokio's
//! [`UnixStream::peer_cred`], so no `unsafe`) gives the uid/gid/pid the kernel recorded when the
//! peer connected; the executable comes from `/proc/<pid>/exe`. Matching the result against
//! registration selectors happens elsewhere.
//!
//! # Pid reuse
//! A pid is only a name: the caller may exit and the kernel may hand its pid to a new process
//! while we look at `/proc/<pid>`. [`attest_pid_uid_gid`] therefore reads the process start time
//! (which differs between two processes that share a pid) before and after reading the exe link,
//! and checks in between that the process at that pid still runs as the peer's uid. Any change,
//! or a vanished process, is an [`AttestError`] (callers answer `Unavailable`, so the client retries).
//! What this cannot see is a pid reused *before* the first read, by a process of the same uid:
//! closing that gap needs `SO_PEERPIDFD` (Linux 6.5), which is out of reach without `unsafe` or a
//! syscall crate.
//!
//! # Per request
//! The server attests once per request or stream open, not once per connection
//! ([`ConnectedPeer`]): the start time read at accept is the reference every later attestation
//! must match, so a connection whose process exited (a zombie counts as gone) or whose pid now
//! names another process is refused, and a process that exec'd another binary is matched as
//! that binary.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use tokio::net::UnixStream;

/// `ESRCH`: what reads under `/proc/<pid>` fail with once the process has been reaped mid-read.
/// (Spelled out because `libc` is not a dependency; the value is the same on every Linux arch.)
const ESRCH: i32 = 3;

/// The kernel's view of the process at the other end of a Workload API connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerInfo {
    /// Effective uid of the peer when it connected (`SO_PEERCRED`).
    pub uid: u32,
    /// Effective gid of the peer when it connected (`SO_PEERCRED`).
    pub gid: u32,
    /// Peer pid as seen from our pid namespace; `None` when the kernel could not tell us (the
    /// peer lives in a pid namespace we cannot see, so it reports pid 0).
    pub pid: Option<i32>,
    /// The peer's executable (`/proc/<pid>/exe`), exactly as the kernel reports it (a replaced
    /// binary carries a ` (deleted)` suffix). `None` when it cannot be read: no pid, a zombie, or
    /// missing ptrace rights over another user's process (the daemon normally runs as root and
    /// can read it). Selectors on the path must then simply not match; uid/gid still attest.
    pub exe: Option<PathBuf>,
}

/// Why a caller could not be attested. The Workload API answers `Unavailable` for all of them:
/// they are about the caller vanishing or changing under us, which a retry resolves.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// `getsockopt(SO_PEERCRED)` failed (not a connected Unix socket, or the peer is gone).
    #[error("cannot read the peer credentials of the socket")]
    PeerCred(#[source] io::Error),
    /// The peer process exited before (or while) we looked at it.
    #[error("caller process {pid} is gone")]
    ProcessGone {
        /// The pid from the peer credentials.
        pid: i32,
    },
    /// A procfs read failed for another reason than the process being gone.
    #[error("cannot read {path}")]
    Proc {
        /// The procfs path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `/proc/<pid>/stat` (or `status`) did not have the expected layout.
    #[error("cannot parse {path}")]
    Malformed {
        /// The procfs path with the unexpected content.
        path: PathBuf,
    },
    /// The start time changed between two reads: the pid now names another process.
    #[error("caller process {pid} changed while being attested (start time {before} -> {after})")]
    ProcessChanged {
        /// The pid from the peer credentials.
        pid: i32,
        /// Start time (clock ticks since boot) at the first read.
        before: u64,
        /// Start time at the second read.
        after: u64,
    },
    /// The process at that pid runs as another uid than the socket peer did.
    #[error("caller process {pid} runs as uid {found}, but the socket peer is uid {expected}")]
    UidMismatch {
        /// The pid from the peer credentials.
        pid: i32,
        /// The uid from the peer credentials.
        expected: u32,
        /// The uid procfs shows for the process now.
        found: u32,
    },
}

/// The peer of an accepted connection as the kernel recorded it at `connect()`, plus the start
/// time of its process then: what every request on the connection is attested against.
///
/// `SO_PEERCRED` is fixed at connect time, but the process behind the pid is not: it may exec
/// another binary, exit and have its pid reused, or hand the socket to another process. So each
/// request (each stream open) attests anew with [`ConnectedPeer::attest`], as SPIRE's peer
/// tracker does: the exe is read again (an exec'd binary is what gets matched), and the start
/// time must still be the one recorded at accept (a pid now naming another process, or a
/// process that is gone, fails). What no procfs read can see is a socket handed to another
/// process while the connecting one stays alive (SPIRE has the same limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedPeer {
    /// Effective uid at connect time (`SO_PEERCRED`): what the per-uid connection cap counts.
    pub uid: u32,
    /// Effective gid at connect time.
    pub gid: u32,
    /// The pid at connect time (`None` outside our pid namespace).
    pub pid: Option<i32>,
    /// The start time of `pid` read at accept; `None` when it could not be read (the process
    /// was already gone), and then every request fails attestation.
    start_time: Option<u64>,
}

impl ConnectedPeer {
    /// Reads the peer credentials of `stream` (a syscall, no procfs). Call
    /// [`ConnectedPeer::record_start_time`] next, as soon as possible after accept.
    ///
    /// # Errors
    /// [`AttestError::PeerCred`] if the credentials cannot be read.
    pub fn of(stream: &UnixStream) -> Result<Self, AttestError> {
        let cred = stream.peer_cred().map_err(AttestError::PeerCred)?;
        Ok(Self {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid().filter(|&p| p > 0),
            start_time: None,
        })
    }

    /// Records the start time of the peer's process (the pid-reuse guard of later requests).
    ///
    /// # Errors
    /// What reading `/proc/<pid>/stat` fails with (the process is gone, most likely).
    pub fn record_start_time(&mut self) -> Result<(), AttestError> {
        if let Some(pid) = self.pid {
            self.start_time = Some(start_time(pid, &proc_dir(pid))?);
        }
        Ok(())
    }

    /// Attests the caller now (one request or stream open): the connect-time uid/gid, and the
    /// exe of the connect-time process if that process still runs as that uid.
    ///
    /// # Errors
    /// [`AttestError::ProcessGone`] / [`AttestError::ProcessChanged`] when the process that
    /// connected is gone or its pid now names another process (its start time differs from
    /// the one recorded at accept), [`AttestError::UidMismatch`] when it changed uid (a setuid
    /// exec), or a procfs failure.
    pub fn attest(&self) -> Result<CallerInfo, AttestError> {
        let Some(pid) = self.pid else {
            return attest_pid_uid_gid(self.uid, self.gid, None);
        };
        let Some(recorded) = self.start_time else {
            return Err(AttestError::ProcessGone { pid });
        };
        attest_process(self.uid, self.gid, pid, &proc_dir(pid), Some(recorded))
    }
}

fn proc_dir(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

/// Attests the peer of an accepted Workload API connection.
///
/// Reads `SO_PEERCRED` and then procfs (see [`attest_pid_uid_gid`]). The procfs reads are a few
/// small in-memory files, cheap enough to run on the async runtime.
///
/// # Errors
/// [`AttestError::PeerCred`] if the credentials cannot be read, else whatever
/// [`attest_pid_uid_gid`] reports.
pub fn attest(stream: &UnixStream) -> Result<CallerInfo, AttestError> {
    let cred = stream.peer_cred().map_err(AttestError::PeerCred)?;
    attest_pid_uid_gid(cred.uid(), cred.gid(), cred.pid())
}

/// Completes peer credentials with the caller's executable, guarding against pid reuse.
///
/// `pid` `None` or `0` (the peer is outside our pid namespace) yields uid/gid only. Otherwise,
/// in order: read the start time, check the process's uid equals `uid`, read the exe link, read
/// the start time again and require it unchanged. An unreadable exe link gives `exe: None`.
///
/// # Errors
/// [`AttestError::ProcessGone`] if the process is gone, [`AttestError::ProcessChanged`] or
/// [`AttestError::UidMismatch`] if the pid no longer names the peer, [`AttestError::Proc`] /
/// [`AttestError::Malformed`] if procfs cannot be read or parsed.
pub fn attest_pid_uid_gid(uid: u32, gid: u32, pid: Option<i32>) -> Result<CallerInfo, AttestError> {
    let Some(pid) = pid.filter(|&p| p > 0) else {
        return Ok(CallerInfo {
            uid,
            gid,
            pid: None,
            exe: None,
        });
    };
    attest_process(uid, gid, pid, &proc_dir(pid), None)
}

/// The body of [`attest_pid_uid_gid`] for a pid: `expected` is the start time the process must
/// have (recorded at accept), or `None` to take the first read as the reference.
fn attest_process(
    uid: u32,
    gid: u32,
    pid: i32,
    dir: &Path,
    expected: Option<u64>,
) -> Result<CallerInfo, AttestError> {
    let before = start_time(pid, dir)?;
    if let Some(expected) = expected {
        ensure_same_process(pid, expected, before)?;
    }
    let found = process_uid(pid, dir, uid)?;
    if found != uid {
        return Err(AttestError::UidMismatch {
            pid,
            expected: uid,
            found,
        });
    }
    // Any failure here (EACCES without ptrace rights, ENOENT for a zombie or an exited process)
    // just means "no exe"; an exited process is caught by the second start-time read.
    let exe = fs::read_link(dir.join("exe")).ok();
    let after = start_time(pid, dir)?;
    ensure_same_process(pid, before, after)?;

    Ok(CallerInfo {
        uid,
        gid,
        pid: Some(pid),
        exe,
    })
}

/// Fails unless two start-time reads of `pid` agree (pulled out so it is testable without races).
fn ensure_same_process(pid: i32, before: u64, after: u64) -> Result<(), AttestError> {
    if before == after {
        Ok(())
    } else {
        Err(AttestError::ProcessChanged { pid, before, after })
    }
}

/// Reads a procfs file of `pid`, mapping "process gone" errors to [`AttestError::ProcessGone`].
fn read_proc(pid: i32, path: PathBuf) -> Result<String, AttestError> {
    fs::read_to_string(&path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(ESRCH) {
            AttestError::ProcessGone { pid }
        } else {
            AttestError::Proc { path, source }
        }
    })
}

/// Start time of `pid` in clock ticks since boot (`/proc/<pid>/stat` field 22). A zombie (it
/// exited; its parent has not reaped it yet) is [`AttestError::ProcessGone`]: whoever holds its
/// socket now is not that process.
fn start_time(pid: i32, dir: &Path) -> Result<u64, AttestError> {
    let path = dir.join("stat");
    let stat = read_proc(pid, path.clone())?;
    if matches!(parse_state(&stat), Some("Z" | "X")) {
        return Err(AttestError::ProcessGone { pid });
    }
    parse_start_time(&stat).ok_or(AttestError::Malformed { path })
}

/// Field 3 (`state`) of a `/proc/<pid>/stat` line.
fn parse_state(stat: &str) -> Option<&str> {
    stat.rsplit_once(')')?.1.split_whitespace().next()
}

/// Extracts field 22 (`starttime`) from a `/proc/<pid>/stat` line.
///
/// Field 2 is `(comm)`, and comm is chosen by the process: it may hold spaces and parentheses,
/// e.g. `(a) b (c)`. The kernel never escapes it, so fields are counted from the *last* `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (state), so field 22 is the 20th entry.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The uid procfs shows for `pid`, comparable with the peer credential's (effective) uid.
///
/// The owner of `/proc/<pid>` is the process's effective uid, except that the kernel shows
/// root for processes that are not dumpable (those that changed uid in-process to drop
/// privileges, or called `prctl(PR_SET_DUMPABLE, 0)`). Only in that case (owner root, peer not
/// root) do we fall back to the effective uid from `/proc/<pid>/status`, which is always exact.
fn process_uid(pid: i32, dir: &Path, peer_uid: u32) -> Result<u32, AttestError> {
    let owner = fs::metadata(dir)
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => AttestError::ProcessGone { pid },
            _ => AttestError::Proc {
                path: dir.to_path_buf(),
                source,
            },
        })?
        .uid();
    if owner != 0 || peer_uid == 0 {
        return Ok(owner);
    }
    let path = dir.join("status");
    let status = read_proc(pid, path.clone())?;
    parse_status_euid(&status).ok_or(AttestError::Malformed { path })
}

/// Extracts the effective uid (second number of the `Uid:` line) from `/proc/<pid>/status`.
fn parse_status_euid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_dir_meta() -> fs::Metadata {
        fs::metadata("/proc/self").unwrap()
    }

    fn this_exe() -> PathBuf {
        std::env::current_exe().unwrap().canonicalize().unwrap()
    }

    fn this_pid() -> i32 {
        i32::try_from(std::process::id()).unwrap()
    }

    fn assert_is_this_process(info: &CallerInfo) {
        let meta = self_dir_meta();
        assert_eq!(info.uid, meta.uid());
        assert_eq!(info.gid, meta.gid());
        assert_eq!(info.pid, Some(this_pid()));
        let exe = info.exe.as_ref().expect("own exe is readable");
        assert_eq!(exe.canonicalize().unwrap(), this_exe());
    }

    #[tokio::test]
    async fn socket_pair_peer_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_is_this_process(&attest(&a).unwrap());
    }

    #[tokio::test]
    async fn accepted_connection_peer_is_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attest.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let _client = UnixStream::connect(&path).await.unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        assert_is_this_process(&attest(&server_side).unwrap());
    }

    #[test]
    fn missing_pid_is_an_error() {
        // Pids are always below pid_max, so pid_max itself never exists.
        let pid_max: i32 = fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let err = attest_pid_uid_gid(0, 0, Some(pid_max)).unwrap_err();
        assert!(
            matches!(err, AttestError::ProcessGone { pid } if pid == pid_max),
            "{err:?}"
        );
    }

    #[test]
    fn uid_other_than_the_process_owner_is_an_error() {
        let uid = self_dir_meta().uid();
        let other = uid.wrapping_add(1);
        let err = attest_pid_uid_gid(other, 0, Some(this_pid())).unwrap_err();
        assert!(
            matches!(err, AttestError::UidMismatch { expected, found, .. } if expected == other && found == uid),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_or_foreign_namespace_pid_gives_uid_gid_only() {
        let expected = CallerInfo {
            uid: 7,
            gid: 8,
            pid: None,
            exe: None,
        };
        assert_eq!(attest_pid_uid_gid(7, 8, None).unwrap(), expected);
        assert_eq!(attest_pid_uid_gid(7, 8, Some(0)).unwrap(), expected);
    }

    #[test]
    fn start_time_change_is_an_error() {
        assert!(ensure_same_process(42, 1000, 1000).is_ok());
        let err = ensure_same_process(42, 1000, 1001).unwrap_err();
        assert!(
            matches!(
                err,
                AttestError::ProcessChanged {
                    pid: 42,
                    before: 1000,
                    after: 1001
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "caller process 42 changed while being attested (start time 1000 -> 1001)"
        );
    }

    #[test]
    fn start_time_is_parsed_after_the_last_parenthesis() {
        // Fields 3..=21 are 3..=21, field 22 is the start time, then a few more fields.
        let tail: Vec<String> = (3..=21).map(|n| n.to_string()).collect();
        let tail = format!("{} 987654 23 24 25", tail.join(" "));
        for comm in ["(sh)", "(a b)", "(x) 1 2 (y)", "())()", "(:) 5 6 7)", "( )"] {
            let line = format!("4242 {comm} {tail}\n");
            assert_eq!(parse_start_time(&line), Some(987654), "{line}");
        }
        assert_eq!(parse_start_time("4242 (sh) S 1 2"), None, "too short");
        assert_eq!(parse_start_time("4242 sh S 1 2"), None, "no comm");
    }

    #[test]
    fn a_zombie_is_gone() {
        assert_eq!(parse_state("42 (a) b) Z 1 2"), Some("Z"));
        assert_eq!(parse_state("42 (sh) S 1 2"), Some("S"));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let dir = PathBuf::from(format!("/proc/{pid}"));
        // Not reaped yet: a zombie until `wait`. Poll (hang guard) until it has exited.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let stat = fs::read_to_string(dir.join("stat")).unwrap();
            if parse_state(&stat) == Some("Z") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "hang guard: {stat}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let err = start_time(pid, &dir).unwrap_err();
        assert!(
            matches!(err, AttestError::ProcessGone { pid: p } if p == pid),
            "{err:?}"
        );
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn a_connected_peer_is_attested_per_request_against_its_start_time() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut peer = ConnectedPeer::of(&a).unwrap();
        let err = peer.attest().unwrap_err();
        assert!(
            matches!(err, AttestError::ProcessGone { .. }),
            "no start time recorded: {err:?}"
        );
        peer.record_start_time().unwrap();
        assert_is_this_process(&peer.attest().unwrap());
        // Another process at that pid (simulated: another start time) is refused.
        peer.start_time = peer.start_time.map(|t| t + 1);
        let err = peer.attest().unwrap_err();
        assert!(matches!(err, AttestError::ProcessChanged { .. }), "{err:?}");
    }

    #[test]
    fn own_stat_has_a_start_time_and_it_is_stable() {
        let dir = PathBuf::from(format!("/proc/{}", this_pid()));
        let first = start_time(this_pid(), &dir).unwrap();
        assert_eq!(start_time(this_pid(), &dir).unwrap(), first);
    }

    #[test]
    fn status_euid_is_the_second_uid() {
        let status = "Name:\tx\nUmask:\t0022\nUid:\t1000\t1001\t1002\t1003\nGid:\t5\t5\t5\t5\n";
        assert_eq!(parse_status_euid(status), Some(1001));
        assert_eq!(parse_status_euid("Name:\tx\n"), None);
        let own = fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(parse_status_euid(&own), Some(self_dir_meta().uid()));
    }
}
