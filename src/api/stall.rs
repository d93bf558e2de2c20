//! Accepted connections whose peer stops reading are closed: a write that stays blocked for
//! the patience given (two `[server] ws_ping_interval`s) fails the connection.
//!
//! A stream (SSE, or a WebSocket after its upgrade, which keeps the same socket) to a client
//! that reads nothing fills the kernel's buffers, and then every write waits. The streams give
//! up on such a client themselves (their place under `max_connections` freed), but hyper
//! polls no response body while the socket is blocked and has no write timeout of its own:
//! the connection, its buffered frames and its socket stayed until the peer went away. Here
//! the socket's writes time out (`tokio-io-timeout`), which ends the connection. Reads and an
//! idle connection (nothing to write) are not timed: keep-alive and long polls are not cut.

use std::io;
use std::pin::Pin;
use std::time::Duration;

use axum::serve::Listener;
use tokio::net::TcpStream;
use tokio_io_timeout::TimeoutStream;

/// A listener whose connections time out a write blocked for longer than `patience`. Wrap it
/// in axum's `tap_io` (with [`no_delay`]): the peer's address as `ConnectInfo` comes from
/// that outer layer.
pub struct StallGuard<L> {
    inner: L,
    patience: Duration,
}

impl<L> StallGuard<L> {
    pub fn new(inner: L, patience: Duration) -> Self {
        Self { inner, patience }
    }
}

/// [`super::no_delay`] for a guarded connection.
pub fn no_delay(io: &mut Pin<Box<TimeoutStream<TcpStream>>>) {
    super::no_delay(io.as_mut().get_pin_mut().get_mut());
}

impl<L> Listener for StallGuard<L>
where
    L: Listener<Io = TcpStream>,
{
    type Io = Pin<Box<TimeoutStream<TcpStream>>>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        let mut io = TimeoutStream::new(io);
        io.set_write_timeout(Some(self.patience));
        (Box::pin(io), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
