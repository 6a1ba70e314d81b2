//! What a connection goes through on its worker's thread before its session starts: on a PROXY
//! listener, the header naming the client; then the client's share of connections
//! (`limits.max_connections_per_client`); then, on a TLS listener, the handshake.
//!
//! A plain connection whose client has room starts its session at once, without a task. The
//! others run [`open`] as a task of the worker: the header and the handshake each have their
//! own timeout, so a client that stalls in either is closed then. A client over its share is
//! told `Error: too many connections from your address.` and closed; on a TLS listener it is
//! told so over TLS, since nothing else reaches a TLS client readably, if it completes its
//! handshake within [`REFUSAL_TIMEOUT`], and closed without a word otherwise; its connection
//! slot is given back at once (see [`crate::admission`]). A failed handshake is logged with the
//! client's address and the reason, at most once a second per worker thread
//! ([`HANDSHAKE_FAILURE_LOG_INTERVAL`]), the next line counting those not logged.

use std::{
    cell::Cell,
    io::{self, Cursor},
    net::SocketAddr,
    pin::Pin,
    rc::Rc,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};

use crate::{
    admission::{OverShare, Permit},
    metrics::{CloseReason, TlsConnection},
    protocol::Answer,
    proxy::{Proxied, ProxyPolicy},
    session::{SessionDeps, SessionInfo, ZenSession},
    telemetry::one_line,
    tls,
};

/// How long a TLS client over its share gets to complete its handshake, and then to take its
/// refusal (at most [`crate::admission::REFUSALS_TOLD_AT_ONCE`] such refusals per client at
/// once).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a connection still opening (in its PROXY header or TLS handshake) when the server
/// starts draining may still take: a real client or load balancer needs milliseconds.
const OPENING_WHEN_DRAINING: Duration = Duration::from_secs(1);

/// The most encrypted bytes a TLS connection holds for a client that does not read, beyond what
/// the session holds (`limits.max_pending_bytes`): about one TLS record.
const TLS_SEND_BUFFER_BYTES: usize = 16 * 1024 + 256;

/// How often at most one worker thread logs a failed TLS handshake: a plain client on a TLS
/// listener, or a certificate the client does not trust, is worth a line in the default log,
/// but a flood of them (a scanner, a misconfigured load balancer) must not flood the log.
const HANDSHAKE_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(1);

thread_local! {
    /// This worker thread's failed handshakes, logged or counted.
    static HANDSHAKE_FAILURES: Throttle = const { Throttle::new(HANDSHAKE_FAILURE_LOG_INTERVAL) };
}

/// Lets one event through per interval, and counts those it holds back.
struct Throttle {
    interval: Duration,
    last: Cell<Option<Instant>>,
    held_back: Cell<u64>,
}

impl Throttle {
    const fn new(interval: Duration) -> Self {
        Self { interval, last: Cell::new(None), held_back: Cell::new(0) }
    }

    /// Whether an event at `now` goes through, and if so how many were held back since the
    /// last one that did.
    fn admit(&self, now: Instant) -> Option<u64> {
        match self.last.get() {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.held_back.set(self.held_back.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.held_back.replace(0))
            }
        }
    }
}

/// Logs a failed handshake from `peer` at `info`, with how many this thread held back since
/// its last such line (`suppressed`); at `debug` only if that line is less than
/// [`HANDSHAKE_FAILURE_LOG_INTERVAL`] old.
fn log_handshake_failure(peer: SocketAddr, error: &tls::HandshakeError) {
    // The reason is written out only for a line that is logged: a flood costs a count each.
    let reason = || one_line(&error.to_string());
    match HANDSHAKE_FAILURES.with(|throttle| throttle.admit(Instant::now())) {
        Some(suppressed) => tracing::info!(%peer, reason = %reason(), suppressed, "TLS handshake failed"),
        None => tracing::debug!(%peer, reason = %reason(), "TLS handshake failed"),
    }
}

/// What a connection begins with, as its listener says.
#[derive(Clone, Default)]
pub struct Opening {
    /// A PROXY header, accepted as this policy says.
    pub proxy: Option<Arc<ProxyPolicy>>,
    /// A TLS handshake, after the header if there is one.
    pub tls: bool,
}

/// Starts the session of a plain connection whose client has room, and returns `None`; or
/// returns what is left to do, for [`open`].
pub fn start_plain(
    stream: TcpStream,
    info: SessionInfo,
    mut permit: Permit,
    opening: &Opening,
    deps: &Rc<SessionDeps>,
) -> Option<(TcpStream, SessionInfo, Permit)> {
    if opening.proxy.is_some() || opening.tls {
        return Some((stream, info, permit));
    }
    match permit.claim_share(info.peer.ip()) {
        Ok(()) => {
            ZenSession::start_tcp(stream, info, deps.clone(), permit);
        }
        Err(over) => refuse_plain(&stream, &info, &over, deps),
    }
    None
}

/// [`open`], given at most [`OPENING_WHEN_DRAINING`] more once the server drains: a client
/// silent in its PROXY header or TLS handshake would otherwise hold the drain up to that
/// step's own timeout. A connection cut short is closed, counted as closed by the shutdown
/// (`open` counts a connection only as it returns, so none is counted twice).
pub async fn open_until_drained(
    stream: TcpStream,
    info: SessionInfo,
    permit: Permit,
    opening: Opening,
    acceptor: Option<tls::Acceptor>,
    deps: Rc<SessionDeps>,
) {
    let mut opened = std::pin::pin!(open(stream, info, permit, opening, acceptor, deps.clone()));
    tokio::select! {
        () = &mut opened => return,
        () = deps.registry.drained() => {}
    }
    if tokio::time::timeout(OPENING_WHEN_DRAINING, opened).await.is_err() {
        deps.tally.closed(CloseReason::Shutdown);
    }
}

/// Reads the PROXY header, claims the client's share, completes the TLS handshake, as
/// `opening` says, and starts the session; or closes the connection, counted and logged.
async fn open(
    mut stream: TcpStream,
    info: SessionInfo,
    mut permit: Permit,
    opening: Opening,
    acceptor: Option<tls::Acceptor>,
    deps: Rc<SessionDeps>,
) {
    let (info, rest) = match &opening.proxy {
        None => (info, Bytes::new()),
        Some(policy) => match policy.read_header(&mut stream, info.peer).await {
            Ok(Proxied { client: None, header_bytes, .. }) if deps.registry.is_draining() && !opening.tls => {
                // A load balancer's health check: tell it this server is going away.
                tracing::debug!(peer = %info.peer, "failing a health check while draining");
                deps.tally.received(header_bytes);
                if stream.write_all(Answer::SHUTTING_DOWN.as_bytes()).await.is_ok() {
                    deps.tally.sent(Answer::SHUTTING_DOWN.as_bytes().len());
                }
                deps.tally.closed(CloseReason::Shutdown);
                return;
            }
            Ok(Proxied { client, header_bytes, rest }) => {
                deps.tally.received(header_bytes);
                tracing::debug!(proxy = %info.peer, client = ?client, "PROXY header read");
                (SessionInfo { peer: client.unwrap_or(info.peer), ..info }, rest)
            }
            Err(error) => {
                tracing::info!(peer = %info.peer, %error, "closing a connection without a valid PROXY header");
                deps.tally.closed(CloseReason::Proxy);
                close_sending(&stream);
                return;
            }
        },
    };
    let over_share = permit.claim_share(info.peer.ip()).err();
    if !opening.tls {
        match over_share {
            Some(over) => refuse_plain(&stream, &info, &over, &deps),
            None => {
                let (read, write) = stream.into_split();
                ZenSession::start(Cursor::new(rest).chain(read), write, info, deps, permit);
            }
        }
        return;
    }
    let Some(acceptor) = acceptor else {
        // Settings with a TLS listener always have an identity; this is only a safety net.
        tracing::error!(peer = %info.peer, "a TLS listener without a certificate; closing the connection");
        deps.tally.closed(CloseReason::TlsHandshake);
        return;
    };
    // A client over its share is refused now, its slot given back; if it completes its
    // handshake promptly, and is not already being told as often as a client may be, it is
    // told so over TLS.
    let (permit, telling, at_most) = match &over_share {
        None => (Some(permit), None, Duration::MAX),
        Some(over) => {
            log_refusal(&info, over);
            let Some(telling) = permit.into_refusal(over) else {
                deps.tally.closed(CloseReason::PerClientLimit);
                close_sending(&stream);
                return;
            };
            (None, Some(telling), REFUSAL_TIMEOUT)
        }
    };
    let io = Prefixed { rest: Cursor::new(rest), inner: stream, _counted: deps.metrics.tls_connection() };
    let handshake = acceptor.accept(io, at_most).await;
    deps.metrics.handshake(handshake.as_ref().map(drop));
    let mut stream = match handshake {
        Ok(stream) => stream,
        Err(error) => {
            log_handshake_failure(info.peer, &error);
            let reason = if permit.is_some() { CloseReason::TlsHandshake } else { CloseReason::PerClientLimit };
            deps.tally.closed(reason);
            return;
        }
    };
    stream.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER_BYTES));
    if let Some(permit) = permit {
        let (read, write) = tokio::io::split(stream);
        ZenSession::start(EndWithoutCloseNotify(read), write, info, deps, permit);
        return;
    }
    let refusal = Answer::TOO_MANY_FROM_CLIENT;
    let told = async {
        stream.write_all(refusal.as_bytes()).await?;
        stream.shutdown().await
    };
    if let Ok(Ok(())) = tokio::time::timeout(REFUSAL_TIMEOUT, told).await {
        deps.tally.sent(refusal.as_bytes().len());
    }
    deps.tally.closed(CloseReason::PerClientLimit);
    drop(telling);
}

/// Tells a plain client over its share so in one non-blocking write (the socket is new, so its
/// send buffer has room), and closes, as a client over the connection limit is.
fn refuse_plain(stream: &TcpStream, info: &SessionInfo, over: &OverShare, deps: &SessionDeps) {
    log_refusal(info, over);
    // Straight to the socket: the runtime has not yet seen it writable, so its `try_write`
    // would not even try.
    if let Ok(sent) =
        socket2::SockRef::from(stream).send_with_flags(Answer::TOO_MANY_FROM_CLIENT.as_bytes(), libc::MSG_NOSIGNAL)
    {
        deps.tally.sent(sent);
    }
    close_sending(stream);
    deps.tally.closed(CloseReason::PerClientLimit);
}

/// Ends the sending side, so that the client reads the end of the connection before it is
/// closed with bytes it sent still unread (which makes the kernel send a reset).
fn close_sending(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
}

fn log_refusal(info: &SessionInfo, over: &OverShare) {
    if over.first {
        tracing::warn!(client = %over.client, limit = over.limit, "a client holds its share of connections; refusing it more");
    } else {
        tracing::debug!(peer = %info.peer, "client over its share refused");
    }
}

/// A TLS stream's reading side on which a client that closes its connection without a TLS
/// `close_notify` has simply closed it, as most clients do. Questions end with `?`, so a
/// connection cut short cannot pass for a shorter conversation: a question cut in half is
/// still reported as one.
struct EndWithoutCloseNotify<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for EndWithoutCloseNotify<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

/// A connection whose first bytes were read with its PROXY header: those, then the rest; counted
/// as a TLS connection while it lives, and its sending side ended when it is dropped (after a
/// failed handshake too).
struct Prefixed {
    rest: Cursor<Bytes>,
    inner: TcpStream,
    _counted: TlsConnection,
}

impl Prefixed {
    /// Whether bytes read with the header are still to be read.
    fn has_rest(&self) -> bool {
        (self.rest.position() as usize) < self.rest.get_ref().len()
    }
}

impl Drop for Prefixed {
    fn drop(&mut self) {
        close_sending(&self.inner);
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.has_rest() {
            return Pin::new(&mut self.rest).poll_read(cx, buf);
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tls::Readable for Prefixed {
    async fn readable(&self) -> io::Result<()> {
        if self.has_rest() {
            return Ok(());
        }
        self.inner.readable().await
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_event_through_per_interval_and_counts_the_others() {
        let throttle = Throttle::new(Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(throttle.admit(start), Some(0));
        for millis in [1, 500, 999] {
            assert_eq!(throttle.admit(start + Duration::from_millis(millis)), None, "{millis} ms later");
        }
        assert_eq!(throttle.admit(start + Duration::from_secs(1)), Some(3));
        assert_eq!(throttle.admit(start + Duration::from_millis(1500)), None);
        assert_eq!(throttle.admit(start + Duration::from_secs(60)), Some(1));
        assert_eq!(throttle.admit(start + Duration::from_secs(120)), Some(0));
    }
}
