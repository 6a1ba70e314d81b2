//! Listening sockets: [`bind`] makes them, [`AcceptStream`] accepts from them.
//!
//! Binding is separate from serving so that the binary, tests (port 0) and sockets inherited
//! from a service manager ([`inherit`](crate::inherit)) all hand ready listeners to the
//! [`Server`](crate::server::Server). Accepting never gives up: when the process or system is
//! out of file descriptors or memory, the stream reports the error once and pauses before
//! trying again, doubling the pause up to [`MAX_ACCEPT_PAUSE`], instead of spinning on an
//! error that repeats until some connection closes.
//!
//! Only the listening socket is registered with the accepting thread's reactor: each connection
//! is accepted non-blocking as a plain socket ([`accept`]), and registered once, by the worker
//! whose thread serves it. (tokio's `TcpListener` accepts tokio streams, registered here, which
//! would then be taken off again to be handed over: three registrations where one does.)

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, OwnedFd},
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use futures_core::Stream;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::{
    io::Interest,
    net::TcpStream,
    time::{Sleep, sleep},
};

/// First pause after an accept failed for lack of resources.
pub const MIN_ACCEPT_PAUSE: Duration = Duration::from_millis(10);

/// Longest pause between accept attempts while resources stay exhausted.
pub const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// A listening socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    /// The address that was asked for.
    pub addr: SocketAddr,
    /// What the system said.
    #[source]
    pub source: io::Error,
}

/// Binds a non-blocking listening socket with address reuse, IPv6 addresses IPv6-only (so
/// `0.0.0.0` and `[::]` can both be listened on), and a queue of `backlog` connections; with
/// `reuse_port`, `SO_REUSEPORT` too, so that another process can listen on the same address
/// while this one runs.
///
/// # Errors
///
/// [`ListenError`] naming `addr` if any step fails (address in use, not available, ...).
pub fn bind(addr: SocketAddr, backlog: u32, reuse_port: bool) -> Result<std::net::TcpListener, ListenError> {
    let attempt = || -> io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        Ok(socket.into())
    };
    attempt().map_err(|source| ListenError { addr, source })
}

/// TCP keepalive probing, so that sessions of vanished peers end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub retries: u32,
}

/// Socket options every accepted connection gets: no Nagle delay (an answer must not wait for
/// the previous one's acknowledgement), and keepalive if configured. They are set on the
/// listening socket, from which Linux copies them to every connection it accepts: one system
/// call per listener instead of five per connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// Keepalive probing, if any.
    pub keepalive: Option<Keepalive>,
}

impl ConnectionOptions {
    /// Sets the options on a listening socket, for the connections it accepts from now on.
    ///
    /// # Errors
    ///
    /// If the system refuses an option.
    pub fn apply(&self, listener: &impl AsFd) -> io::Result<()> {
        let socket = SockRef::from(listener);
        socket.set_tcp_nodelay(true)?;
        match self.keepalive {
            Some(keepalive) => socket.set_tcp_keepalive(
                &TcpKeepalive::new()
                    .with_time(keepalive.idle)
                    .with_interval(keepalive.interval)
                    .with_retries(keepalive.retries),
            ),
            None => socket.set_keepalive(false),
        }
    }
}

/// What a listener's connections begin with before the first question.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerKind {
    /// A PROXY header (`proxy.listen`, `tls.proxy_listen`).
    pub proxy: bool,
    /// A TLS handshake, after the header if there is one (`tls.listen`, `tls.proxy_listen`).
    pub tls: bool,
}

/// One accepted connection.
#[derive(Debug)]
pub struct Accepted {
    /// The connection: non-blocking, registered with no reactor yet.
    pub stream: std::net::TcpStream,
    /// The client's address (a load balancer's, behind a PROXY listener).
    pub peer: SocketAddr,
    /// What the connection begins with.
    pub kind: ListenerKind,
}

/// Why one accept attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Out of file descriptors or memory: accepting pauses for `pause`.
    #[error("out of resources, pausing accept for {pause:?}: {source}")]
    Exhausted {
        /// The system's error.
        source: io::Error,
        /// How long accepting pauses.
        pause: Duration,
    },
    /// Something went wrong with one connection only (e.g. reset before it was accepted).
    #[error("{0}")]
    Connection(io::Error),
}

/// Accepts one connection waiting on `listener`, non-blocking and close-on-exec in one system
/// call, registered with no reactor.
///
/// # Errors
///
/// What `accept4` says; `WouldBlock` when none waits.
pub fn accept(listener: &std::net::TcpListener) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    accept_on(listener)
}

fn accept_on(listener: &impl AsFd) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    let (socket, peer) = SockRef::from(listener).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    let peer = peer.as_socket().ok_or_else(|| io::Error::other("accepted a connection that is not TCP/IP"))?;
    Ok((socket.into(), peer))
}

/// The connections arriving on one listener, as a stream that never ends.
#[derive(Debug)]
pub struct AcceptStream {
    /// The listening socket, registered with this thread's reactor for its readiness alone: a
    /// listening socket is readable while connections wait, and a tokio `TcpStream` over it
    /// gives that readiness (tokio's `TcpListener` gives none, and its `AsyncFd` asks for
    /// `unsafe`). It is never read or written; connections are taken with [`accept`].
    listener: TcpStream,
    local_addr: SocketAddr,
    kind: ListenerKind,
    pause: Option<Pin<Box<Sleep>>>,
    next_pause: Duration,
}

impl AcceptStream {
    /// Wraps a bound, non-blocking listener whose connections get `options`; must be called
    /// inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// If the options cannot be set, the listener's address cannot be read, or it cannot be
    /// registered with the runtime.
    pub fn new(listener: std::net::TcpListener, options: ConnectionOptions) -> io::Result<Self> {
        options.apply(&listener)?;
        let local_addr = listener.local_addr()?;
        let listener = TcpStream::from_std(std::net::TcpStream::from(OwnedFd::from(listener)))?;
        Ok(Self { listener, local_addr, kind: ListenerKind::default(), pause: None, next_pause: MIN_ACCEPT_PAUSE })
    }

    /// Marks the listener as one whose connections begin as `kind` says.
    #[must_use]
    pub fn with_kind(mut self, kind: ListenerKind) -> Self {
        self.kind = kind;
        self
    }

    /// What connections here begin with.
    pub fn kind(&self) -> ListenerKind {
        self.kind
    }

    /// The address the listener is bound to (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Another handle on the same listening socket, to change its options later.
    ///
    /// # Errors
    ///
    /// If the process is out of file descriptors.
    pub fn socket(&self) -> io::Result<std::net::TcpListener> {
        Ok(OwnedFd::from(SockRef::from(&self.listener).try_clone()?).into())
    }
}

/// Errors that repeat until some resource is freed, as opposed to ones about one connection.
fn is_resource_exhaustion(error: &io::Error) -> bool {
    const EXHAUSTED: [i32; 4] = [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM];
    error.raw_os_error().is_some_and(|code| EXHAUSTED.contains(&code))
}

impl Stream for AcceptStream {
    type Item = Result<Accepted, AcceptError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(pause) = self.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
            self.pause = None;
        }
        let result = loop {
            if let Err(error) = ready!(self.listener.poll_read_ready(cx)) {
                break Err(error);
            }
            // `WouldBlock` clears the readiness, and the loop waits for the next.
            match self.listener.try_io(Interest::READABLE, || accept_on(&self.listener)) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                result => break result,
            }
        };
        Poll::Ready(Some(match result {
            Ok((stream, peer)) => {
                self.next_pause = MIN_ACCEPT_PAUSE;
                Ok(Accepted { stream, peer, kind: self.kind })
            }
            Err(source) if is_resource_exhaustion(&source) => {
                let pause = self.next_pause;
                self.next_pause = (pause * 2).min(MAX_ACCEPT_PAUSE);
                self.pause = Some(Box::pin(sleep(pause)));
                Err(AcceptError::Exhausted { source, pause })
            }
            Err(source) => Err(AcceptError::Connection(source)),
        }))
    }
}

/// An IP address and port to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ListenAddr(pub SocketAddr);

impl TryFrom<String> for ListenAddr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        parse_socket_addr(&text, LISTEN_EXAMPLE).map(Self)
    }
}

/// How addresses to listen on are written, for messages.
pub const LISTEN_EXAMPLE: &str = "such as 127.0.0.1:1060 or [::1]:1060";

/// `text` as an IP address and port; an error says what is wrong, with `example`s of the right
/// form.
///
/// # Errors
///
/// A port past 65535, or text that is no address and port.
pub fn parse_socket_addr(text: &str, example: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        let parts = text.rsplit_once(':').map(|(ip, port)| (ip.trim_start_matches('[').trim_end_matches(']'), port));
        let ip = parts.and_then(|(ip, _)| ip.parse::<std::net::IpAddr>().ok());
        let port =
            parts.map(|(_, port)| port).filter(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
        match (ip, port) {
            (Some(_), Some(port)) if port.parse::<u16>().is_err() => {
                format!("port {port} is out of range: a port is from 0 to 65535")
            }
            (Some(std::net::IpAddr::V6(ip)), Some(port)) if !text.starts_with('[') => {
                format!("an IPv6 address takes brackets: [{ip}]:{port}")
            }
            _ => format!("expected an IP address and port, {example}"),
        }
    })
}

impl From<ListenAddr> for String {
    fn from(addr: ListenAddr) -> String {
        addr.0.to_string()
    }
}

/// Addresses to listen on, none listed twice or covered by a wildcard address on the same port
/// (port 0, "any free port", never clashes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<ListenAddr>", into = "Vec<ListenAddr>")]
pub struct Listen(Vec<SocketAddr>);

impl Listen {
    /// The addresses, in order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.0
    }
}

impl TryFrom<Vec<ListenAddr>> for Listen {
    type Error = String;

    fn try_from(addrs: Vec<ListenAddr>) -> Result<Self, String> {
        let addrs: Vec<SocketAddr> = addrs.into_iter().map(|addr| addr.0).collect();
        check_overlaps(&addrs)?;
        Ok(Self(addrs))
    }
}

impl From<Listen> for Vec<ListenAddr> {
    fn from(listen: Listen) -> Self {
        listen.0.into_iter().map(ListenAddr).collect()
    }
}

/// Whether two of `addrs` are the same address, or one is every address of its family on the
/// other's port.
///
/// # Errors
///
/// A message naming the two addresses.
pub fn check_overlaps(addrs: &[SocketAddr]) -> Result<(), String> {
    for (index, addr) in addrs.iter().enumerate() {
        let overlapping = |other: &&SocketAddr| {
            addr.port() != 0
                && other.port() == addr.port()
                && other.is_ipv4() == addr.is_ipv4()
                && (*other == addr || other.ip().is_unspecified() || addr.ip().is_unspecified())
        };
        if let Some(other) = addrs[..index].iter().find(overlapping) {
            return Err(if other == addr {
                format!("{addr} is listed twice")
            } else {
                format!("{other} and {addr} overlap: one is every address of its family on the same port")
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_does_not_parse_is_told_what_is_wrong_with_it() {
        let parse = |text| parse_socket_addr(text, LISTEN_EXAMPLE).map_err(|why| why.to_string());
        assert_eq!(parse("[::1]:1060"), Ok("[::1]:1060".parse().unwrap()));
        assert_eq!(parse("127.0.0.1:99999"), Err("port 99999 is out of range: a port is from 0 to 65535".into()));
        assert_eq!(parse("[::1]:70000"), Err("port 70000 is out of range: a port is from 0 to 65535".into()));
        assert_eq!(parse("::1:1060"), Err("an IPv6 address takes brackets: [::1]:1060".into()));
        let expected = format!("expected an IP address and port, {LISTEN_EXAMPLE}");
        for text in ["[127.0.0.1]:1060", "localhost:1060", "127.0.0.1", "127.0.0.1:", "127.0.0.1:x"] {
            assert_eq!(parse(text), Err(expected.clone()), "{text}");
        }
    }

    #[test]
    fn binding_an_address_in_use_names_the_address() {
        let first = bind("127.0.0.1:0".parse().unwrap(), 16, false).unwrap();
        let addr = first.local_addr().unwrap();
        let error = bind(addr, 16, false).unwrap_err();
        assert_eq!(error.addr, addr);
        assert!(error.to_string().starts_with(&format!("cannot listen on {addr}: ")), "{error}");
    }

    #[actix::test]
    async fn accepted_connections_inherit_nodelay_and_keepalive_from_the_listener() {
        use futures_core::Stream;

        let keepalive = Keepalive { idle: Duration::from_secs(77), interval: Duration::from_secs(7), retries: 4 };
        let socket = bind("127.0.0.1:0".parse().unwrap(), 16, false).unwrap();
        let mut accept = AcceptStream::new(socket, ConnectionOptions { keepalive: Some(keepalive) }).unwrap();
        let _client = std::net::TcpStream::connect(accept.local_addr()).unwrap();
        let accepted = std::future::poll_fn(|cx| Pin::new(&mut accept).poll_next(cx)).await.unwrap().unwrap();
        assert!(accepted.stream.peer_addr().is_ok());
        let socket = SockRef::from(&accepted.stream);
        assert!(socket.nonblocking().unwrap(), "accepted blocking");
        assert!(socket.tcp_nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), keepalive.idle);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), keepalive.interval);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), keepalive.retries);
    }

    #[test]
    fn emfile_and_friends_count_as_exhaustion_but_a_reset_does_not() {
        assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_resource_exhaustion(&io::Error::from(io::ErrorKind::ConnectionAborted)));
    }
}
