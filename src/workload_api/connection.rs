//! One connection's bookkeeping: its slot in the connection table (the total and per-uid caps),
//! what is open on it (for the idle timeout), whether it must close (a refused caller), and the
//! loop that drives hyper's connection until it ends, idles out or is told to close.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::limits::{CLOSE_GRACE, Limits, soft_nofile};
use super::refusal::{RefusalReason, Refusals};

/// How often the caps are recomputed from the fd limit, which may change while the daemon runs
/// (`prlimit` by an operator, or the daemon raising its own soft limit).
const FD_LIMIT_RECHECK: Duration = Duration::from_secs(1);

/// Open connections, in total and per uid.
#[derive(Debug)]
pub(crate) struct ConnectionTable {
    /// The configured limits; the caps enforced are these clamped by the fd limit.
    configured: Limits,
    /// Where the fd limit comes from (`None`: unknown, no clamp).
    fd_limit: fn() -> Option<u64>,
    open: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
    /// The caps in force (total, per uid) and when they were computed.
    caps: (usize, usize),
    checked_at: Option<Instant>,
}

impl ConnectionTable {
    /// A table enforcing `limits` clamped by the process's soft `RLIMIT_NOFILE`.
    pub(crate) fn new(limits: &Limits) -> Arc<Self> {
        Self::with_fd_limit(limits, soft_nofile)
    }

    fn with_fd_limit(limits: &Limits, fd_limit: fn() -> Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            configured: limits.clone(),
            fd_limit,
            open: Mutex::new(Counts::default()),
        })
    }

    /// A slot for a new connection of `uid`, or why there is none. The per-uid cap is checked
    /// first: a uid at its cap is refused as such even when the table is also full.
    pub(crate) fn admit(self: &Arc<Self>, uid: u32) -> Result<Slot, RefusalReason> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if open
            .checked_at
            .is_none_or(|at| now.saturating_duration_since(at) >= FD_LIMIT_RECHECK)
        {
            let effective = self.configured.effective((self.fd_limit)());
            let caps = (effective.max_connections, effective.max_connections_per_uid);
            if caps != open.caps {
                tracing::info!(
                    max_connections = caps.0,
                    max_connections_per_uid = caps.1,
                    "workload api connection limits"
                );
                open.caps = caps;
            }
            open.checked_at = Some(now);
        }
        let (max_total, max_per_uid) = open.caps;
        let of_uid = open.per_uid.get(&uid).copied().unwrap_or(0);
        if of_uid >= max_per_uid {
            return Err(RefusalReason::TooManyConnectionsForUid);
        }
        if open.total >= max_total {
            return Err(RefusalReason::TooManyConnections);
        }
        open.total += 1;
        *open.per_uid.entry(uid).or_insert(0) += 1;
        Ok(Slot {
            table: self.clone(),
            uid,
        })
    }

    #[cfg(test)]
    fn open(&self, uid: u32) -> (usize, usize) {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        (open.total, open.per_uid.get(&uid).copied().unwrap_or(0))
    }
}

/// A connection's place in the [`ConnectionTable`], given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    table: Arc<ConnectionTable>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                open.per_uid.remove(&self.uid);
            }
        }
    }
}

/// What is open on one connection, and whether it must close.
#[derive(Debug)]
pub(crate) struct Activity {
    open: watch::Sender<usize>,
    close: CancellationToken,
    refusals: Arc<Refusals>,
    uid: u32,
}

impl Activity {
    pub(crate) fn new(refusals: Arc<Refusals>, uid: u32) -> Arc<Self> {
        Arc::new(Self {
            open: watch::Sender::new(0),
            close: CancellationToken::new(),
            refusals,
            uid,
        })
    }

    /// A request or stream starts; it counts as open until the guard (kept by its response
    /// body) is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> OpenGuard {
        self.open.send_modify(|n| *n += 1);
        OpenGuard(self.clone())
    }

    /// Whether the connection was told to close.
    pub(crate) fn closing(&self) -> bool {
        self.close.is_cancelled()
    }

    /// The caller was refused on this connection: record why and close the connection once
    /// the refusal is answered.
    pub(crate) fn refuse(&self, reason: RefusalReason) {
        if !self.close.is_cancelled() {
            self.refusals.record(reason, Some(self.uid));
            self.close.cancel();
        }
    }

    /// [`Activity::refuse`] for an attested caller: the log line names its pid, uid, gid and
    /// executable (rate-limited per caller).
    pub(crate) fn refuse_caller(
        &self,
        reason: RefusalReason,
        caller: Option<&super::attest::CallerInfo>,
    ) {
        match caller {
            Some(caller) if !self.close.is_cancelled() => {
                self.refusals.record_caller(reason, caller);
                self.close.cancel();
            }
            _ => self.refuse(reason),
        }
    }
}

/// Keeps a request or stream counted as open (see [`Activity::begin`]).
#[derive(Debug)]
pub(crate) struct OpenGuard(Arc<Activity>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A response body that keeps its request counted as open until it is dropped (a server stream
/// lives as long as its body).
#[derive(Debug)]
pub(crate) struct Guarded<B> {
    inner: B,
    _guard: OpenGuard,
}

impl<B> Guarded<B> {
    pub(crate) fn new(inner: B, guard: OpenGuard) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Guarded<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Drives a hyper connection until it ends, or until it is idle (nothing open) for
/// `limits.idle_timeout`, a refusal asks it to close, or the server stops: then it is shut
/// down gracefully (GOAWAY / no keep-alive) and given [`CLOSE_GRACE`] to finish before it is
/// dropped.
pub(crate) async fn drive<C, E>(
    mut conn: Pin<&mut C>,
    shutdown: impl FnOnce(Pin<&mut C>),
    activity: &Activity,
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut open = activity.open.subscribe();
    loop {
        let idle = *open.borrow_and_update() == 0;
        tokio::select! {
            result = conn.as_mut() => return result,
            // The sender lives in `activity`, which outlives this loop: never an error.
            _ = open.changed() => {}
            () = tokio::time::sleep(limits.idle_timeout), if idle => {
                activity.refusals.record(RefusalReason::Idle, Some(activity.uid));
                break;
            }
            () = activity.close.cancelled() => break,
            () = cancel.cancelled() => break,
        }
    }
    shutdown(conn.as_mut());
    match tokio::time::timeout(CLOSE_GRACE, conn).await {
        Ok(result) => result,
        Err(_) => {
            tracing::debug!(
                uid = activity.uid,
                "workload api connection dropped after the close grace"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_caps_each_uid_and_the_total() {
        let limits = Limits {
            max_connections: 4,
            max_connections_per_uid: 2,
            ..Limits::default()
        };
        let table = ConnectionTable::with_fd_limit(&limits, || None);
        let a1 = table.admit(1).unwrap();
        let _a2 = table.admit(1).unwrap();
        assert_eq!(
            table.admit(1).unwrap_err(),
            RefusalReason::TooManyConnectionsForUid
        );
        let _b = table.admit(2).unwrap();
        let _c = table.admit(3).unwrap();
        assert_eq!(
            table.admit(4).unwrap_err(),
            RefusalReason::TooManyConnections
        );
        assert_eq!(table.open(1), (4, 2));
        drop(a1);
        assert_eq!(table.open(1), (3, 1));
        let _d = table.admit(4).unwrap();
        assert_eq!(table.open(4), (4, 1));
    }

    #[test]
    fn the_caps_follow_the_fd_limit() {
        let limits = Limits {
            max_connections: 100,
            max_connections_per_uid: 100,
            ..Limits::default()
        };
        // 8 descriptors: 4 connections in total, 2 per uid.
        let table = ConnectionTable::with_fd_limit(&limits, || Some(8));
        let _held: Vec<Slot> = (0..2).map(|_| table.admit(1).unwrap()).collect();
        assert_eq!(
            table.admit(1).unwrap_err(),
            RefusalReason::TooManyConnectionsForUid
        );
        let _more: Vec<Slot> = (2..4).map(|uid| table.admit(uid).unwrap()).collect();
        assert_eq!(
            table.admit(9).unwrap_err(),
            RefusalReason::TooManyConnections
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_shut_down_and_an_active_one_is_not() {
        let limits = Limits::default();
        let activity = Activity::new(Arc::new(Refusals::new()), 7);
        let cancel = CancellationToken::new();
        let guard = activity.begin();
        // A connection that never ends by itself; "shut down" makes it end.
        let stop = CancellationToken::new();
        let conn = {
            let stop = stop.clone();
            async move {
                stop.cancelled().await;
                Ok::<(), ()>(())
            }
        };
        tokio::pin!(conn);
        let driven = drive(
            conn.as_mut(),
            |_| stop.cancel(),
            &activity,
            &limits,
            &cancel,
        );
        tokio::pin!(driven);
        // Open for ten idle timeouts: still running.
        let t = tokio::time::timeout(limits.idle_timeout * 10, driven.as_mut()).await;
        assert!(t.is_err(), "an open stream keeps the connection");
        drop(guard);
        tokio::time::timeout(limits.idle_timeout * 2, driven)
            .await
            .expect("idle: shut down")
            .unwrap();
        assert_eq!(activity.refusals.count(RefusalReason::Idle), 1);
    }
}
