//! Accepted connections that stall are closed: a peer that stops reading, and a peer that
//! starts a request and never finishes it.
//!
//! A stream (SSE, or a WebSocket after its upgrade, which keeps the same socket) to a client
//! that reads nothing fills the kernel's buffers, and then every write waits. The streams give
//! up on such a client themselves (their place under `max_connections` freed), but hyper
//! polls no response body while the socket is blocked and has no write timeout of its own:
//! the connection, its buffered frames and its socket stayed until the peer went away. Here
//! the socket's writes time out (`tokio-io-timeout`) after the patience given (two `[server]
//! ws_ping_interval`s), which ends the connection.
//!
//! The other way round, hyper (as `axum::serve` runs it: no timer) waits for a request's
//! headers for ever, so a peer sending half a request (or a byte now and then), or nothing at
//! all after connecting, held its connection and socket as long as it liked. Here a connection
//! that has sent nothing since it was accepted, or has sent bytes the server has not answered,
//! within [`answer_patience`] is closed: every request is answered within the API's 30 s
//! timeout once its headers are in, a stream writes at least every ping interval, and a
//! connection idle after an answer (keep-alive) is not timed, so long streams are not cut.
//! What this layer cannot see: a request pipelined behind another, already read into hyper's
//! buffer before the first one's answer went out, and left unfinished (hyper's own header
//! timeout, which needs a server built on hyper-util with a timer instead of `axum::serve`,
//! would catch that too).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_io_timeout::TimeoutStream;

use super::REQUEST_TIMEOUT;

/// How long a connection may go from sending bytes to getting some back: past the API's
/// request timeout (a request whose headers are in is answered by then), and past two ping
/// intervals (a stream writes a ping or a frame at least once an interval).
pub fn answer_patience(patience: Duration) -> Duration {
    (REQUEST_TIMEOUT + Duration::from_secs(10)).max(patience + Duration::from_secs(10))
}

/// A listener whose connections time out a write blocked for longer than `patience`, and a
/// peer's bytes left unanswered for [`answer_patience`]. Wrap it in axum's `tap_io` (with
/// [`no_delay`]): the peer's address as `ConnectInfo` comes from that outer layer.
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
pub fn no_delay(io: &mut Guarded<Pin<Box<TimeoutStream<TcpStream>>>>) {
    super::no_delay(io.io.as_mut().get_pin_mut().get_mut());
}

impl<L> Listener for StallGuard<L>
where
    L: Listener<Io = TcpStream>,
{
    type Io = Guarded<Pin<Box<TimeoutStream<TcpStream>>>>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        let mut io = TimeoutStream::new(io);
        io.set_write_timeout(Some(self.patience));
        (
            Guarded::new(Box::pin(io), answer_patience(self.patience)),
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that fails its reads once it has sent nothing since it was accepted, or its
/// bytes have gone unanswered (nothing written since they came), for `patience`.
pub struct Guarded<T> {
    io: T,
    patience: Duration,
    /// When the connection must have been answered; one timer a connection, reset as it is
    /// armed again.
    deadline: Pin<Box<Sleep>>,
    /// Whether `deadline` counts: from the accept and from the first bytes read after a write,
    /// until the next write.
    armed: bool,
    /// Nothing read yet: the deadline runs from the accept, and the first bytes start it again
    /// (a connection opened ahead of its request gets the whole patience for it).
    fresh: bool,
}

impl<T> Guarded<T> {
    pub fn new(io: T, patience: Duration) -> Self {
        Self {
            io,
            patience,
            deadline: Box::pin(tokio::time::sleep(patience)),
            armed: true,
            fresh: true,
        }
    }

    /// Bytes went out: whatever the peer sent is answered, and nothing is owed until it sends
    /// again.
    fn answered(&mut self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.armed = false;
            self.fresh = false;
        }
    }

    fn unanswered(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the peer sent no whole request in {} s",
                self.patience.as_secs()
            ),
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && (this.fresh || !this.armed) {
                    this.fresh = false;
                    // A patience past what `Instant` holds (a huge ping interval) times nothing.
                    match Instant::now().checked_add(this.patience) {
                        Some(at) => {
                            this.armed = true;
                            this.deadline.as_mut().reset(at);
                        }
                        None => this.armed = false,
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // Registered with the timer too: the wait for the rest of a request ends when
                // the deadline passes, not only when more bytes come.
                if this.armed && this.deadline.as_mut().poll(cx).is_ready() {
                    Poll::Ready(Err(this.unanswered()))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, data);
        this.answered(&written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.answered(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A loopback pair: the guarded server side and the peer.
    async fn pair(patience: Duration) -> (Guarded<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap());
        let (peer, accepted) = tokio::join!(peer, listener.accept());
        (Guarded::new(accepted.unwrap().0, patience), peer.unwrap())
    }

    /// The server's next read fails as timed out, well before 10 s.
    async fn read_times_out(server: &mut Guarded<TcpStream>) {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), server.read(&mut buf))
            .await
            .expect("the read ends at the deadline");
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn half_a_request_left_unanswered_fails_the_read() {
        let (mut server, mut peer) = pair(Duration::from_millis(300)).await;
        peer.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(server.read(&mut buf).await.unwrap() > 0);
        // The rest never comes: the next read ends at the deadline, not never.
        read_times_out(&mut server).await;
    }

    /// A connection opened ahead of its request (a client's pool) has the whole patience from
    /// its first bytes, not from the accept.
    #[tokio::test]
    async fn the_first_request_is_timed_from_its_first_bytes() {
        let (mut server, mut peer) = pair(Duration::from_millis(400)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        peer.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(server.read(&mut buf).await.unwrap() > 0);
        // The rest 300 ms later, while the server waits for it: past the accept's deadline,
        // inside the first bytes'.
        let (read, ()) = tokio::join!(server.read(&mut buf), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            peer.write_all(b"Host: x\r\n\r\n").await.unwrap();
        });
        assert!(read.unwrap() > 0);
    }

    #[tokio::test]
    async fn a_connection_that_never_sends_is_closed() {
        let (mut server, _peer) = pair(Duration::from_millis(300)).await;
        read_times_out(&mut server).await;
    }

    #[tokio::test]
    async fn an_answered_or_idle_connection_is_not_timed() {
        let (mut server, mut peer) = pair(Duration::from_millis(300)).await;
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            peer.write_all(b"ping").await.unwrap();
            assert!(server.read(&mut buf).await.unwrap() > 0);
            tokio::time::sleep(Duration::from_millis(100)).await;
            server.write_all(b"pong").await.unwrap();
            peer.read_exact(&mut buf[..4]).await.unwrap();
            // Answered, then idle past the patience: still open.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        peer.write_all(b"late").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 4);
    }
}
