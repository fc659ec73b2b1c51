//! The daemon's TCP listeners (bundle endpoint, agent API, metrics), bound with a backlog of
//! [`BACKLOG`] rather than the 128 of a plain bind: at a connection cap new peers and agents wait
//! in the kernel's queue; past it their SYNs are dropped, and each retry doubles their wait.
//!
//! Binding is separate from serving so the daemon reports a taken port at start, and tests learn
//! the port of `127.0.0.1:0`.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Listen backlog: room for a burst of new connections (the kernel caps it at `somaxconn`).
pub const BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` with `SO_REUSEADDR` and a backlog of [`BACKLOG`] (capped by
/// `net.core.somaxconn`). Called within a Tokio runtime (the listener registers with it).
///
/// # Errors
/// The socket error (the address is taken, not ours, or not valid here).
pub fn tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}
