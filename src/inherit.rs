//! Sockets the daemon is handed instead of binding its own: listening sockets from systemd's
//! socket activation (`LISTEN_FDS`), a listening socket on a given descriptor (inetd's `wait`
//! mode, `--listen-fd`), or one accepted connection on standard input (inetd's `nowait` mode,
//! `--inetd`).
//!
//! Each is checked for what it must be, so that the wrong kind of socket is a clear error
//! rather than a hang, and made non-blocking before the runtime sees it (tokio requires it, and
//! a blocking socket would stall a whole worker thread). Taking ownership of an inherited file
//! descriptor is the crate's one use of `unsafe`.

use std::{
    io,
    net::{TcpListener, TcpStream},
    os::fd::{FromRawFd, OwnedFd, RawFd},
};

use socket2::{Socket, Type};

/// An inherited socket is missing or not what it must be.
#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    /// The descriptor is not open.
    #[error("{origin}: descriptor {fd} is not open")]
    NotOpen {
        /// Where the descriptor was named.
        origin: &'static str,
        /// The descriptor.
        fd: RawFd,
    },
    /// The descriptor is open but not the socket it must be.
    #[error("{origin}: descriptor {fd} is {found}, not {expected}{hint}")]
    WrongKind {
        /// Where the descriptor was named.
        origin: &'static str,
        /// The descriptor.
        fd: RawFd,
        /// What it is.
        found: &'static str,
        /// What it must be.
        expected: &'static str,
        /// Which mode would fit what was found, if any.
        hint: &'static str,
    },
    /// A descriptor was named on the command line while the service manager passed listening
    /// sockets as well.
    #[error("{origin}: the service manager passed listening sockets too (LISTEN_FDS); use one or the other")]
    AlsoActivated {
        /// The flag naming a descriptor.
        origin: &'static str,
    },
    /// The system refused an operation on the socket.
    #[error("{origin}: descriptor {fd}: {source}")]
    Io {
        /// Where the descriptor was named.
        origin: &'static str,
        /// The descriptor.
        fd: RawFd,
        /// What the system said.
        source: io::Error,
    },
}

/// The listening sockets passed by systemd's socket activation (`LISTEN_FDS`, `LISTEN_PID`),
/// in order; empty when none were passed. Removes the `LISTEN_*` variables, so call it before
/// any thread starts.
///
/// # Errors
///
/// [`InheritError`] if a passed descriptor is not a listening TCP socket.
pub fn activated_listeners() -> Result<Vec<TcpListener>, InheritError> {
    let mut passed = listenfd::ListenFd::from_env();
    let origin = "LISTEN_FDS";
    (0..passed.len())
        .map(|index| {
            let fd = 3 + index as RawFd;
            let fd = passed
                .take_raw_fd(index)
                .map_err(|source| InheritError::Io { origin, fd, source })?
                .ok_or(InheritError::NotOpen { origin, fd })?;
            listener(take(fd, origin)?, origin, fd)
        })
        .collect()
}

/// The listening socket on descriptor `fd` (`--listen-fd`).
///
/// # Errors
///
/// [`InheritError`] if `fd` is not open or not a listening TCP socket.
pub fn listener_on(fd: RawFd) -> Result<TcpListener, InheritError> {
    let origin = "--listen-fd";
    listener(take(fd, origin)?, origin, fd)
}

/// What to do when `--inetd` is given a UNIX socket: socat's `EXEC` passes one (a socketpair
/// it relays through) unless told `nofork`, which hands over the client's TCP socket itself.
const UNIX_SOCKET_UNDER_INETD: &str = r#" (socat passes one unless EXEC has nofork: socat TCP-LISTEN:PORT,reuseaddr,fork EXEC:"zen-server --inetd",nofork)"#;

/// The accepted TCP connection on standard input (`--inetd`).
///
/// # Errors
///
/// [`InheritError`] if standard input is not a connected TCP socket.
pub fn connection_on_stdin() -> Result<TcpStream, InheritError> {
    let (origin, fd) = ("--inetd", 0);
    let socket = tcp_socket(take(fd, origin)?, origin, fd, "an accepted TCP connection", UNIX_SOCKET_UNDER_INETD)?;
    if socket.is_listener().map_err(|source| InheritError::Io { origin, fd, source })? {
        return Err(InheritError::WrongKind {
            origin,
            fd,
            found: "a listening socket",
            expected: "an accepted TCP connection",
            hint: " (inetd's wait mode: use --listen-fd 0)",
        });
    }
    // A client gone before the server started leaves a socket with no peer.
    socket.peer_addr().map_err(|source| InheritError::Io { origin, fd, source })?;
    socket.set_nonblocking(true).map_err(|source| InheritError::Io { origin, fd, source })?;
    Ok(socket.into())
}

/// Whether standard error is the same socket as standard input: inetd's nowait mode (Debian's
/// `openbsd-inetd`, busybox's) puts the client's connection on descriptors 0, 1 and 2, so that
/// anything written to standard error goes to the client.
pub fn stderr_is_the_connection() -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let file = |fd: RawFd| std::fs::metadata(format!("/proc/self/fd/{fd}"));
    match (file(0), file(2)) {
        (Ok(input), Ok(error)) => {
            input.file_type().is_socket() && (input.dev(), input.ino()) == (error.dev(), error.ino())
        }
        _ => false,
    }
}

fn listener(owned: OwnedFd, origin: &'static str, fd: RawFd) -> Result<TcpListener, InheritError> {
    let socket = tcp_socket(owned, origin, fd, "a listening TCP socket", "")?;
    if !socket.is_listener().map_err(|source| InheritError::Io { origin, fd, source })? {
        return Err(InheritError::WrongKind {
            origin,
            fd,
            found: "a connection, not listening",
            expected: "a listening TCP socket",
            hint: " (inetd's nowait mode: use --inetd)",
        });
    }
    socket.set_nonblocking(true).map_err(|source| InheritError::Io { origin, fd, source })?;
    Ok(socket.into())
}

/// Checks that `owned` is a TCP socket of IPv4 or IPv6; `unix_hint` says what to do if it is a
/// UNIX socket.
fn tcp_socket(
    owned: OwnedFd,
    origin: &'static str,
    fd: RawFd,
    expected: &'static str,
    unix_hint: &'static str,
) -> Result<Socket, InheritError> {
    let socket = Socket::from(owned);
    let wrong = |found| InheritError::WrongKind { origin, fd, found, expected, hint: "" };
    match socket.r#type() {
        Ok(kind) if kind == Type::STREAM => {}
        Ok(_) => return Err(wrong("a socket of another type")),
        Err(error) if error.raw_os_error() == Some(libc::ENOTSOCK) => return Err(wrong("not a socket")),
        Err(source) => return Err(InheritError::Io { origin, fd, source }),
    }
    match socket.local_addr() {
        Ok(addr) if addr.as_socket().is_some() => Ok(socket),
        Ok(addr) if addr.is_unix() => {
            Err(InheritError::WrongKind { origin, fd, found: "a UNIX socket", expected, hint: unix_hint })
        }
        Ok(_) => Err(wrong("a socket of another family (not IPv4 or IPv6)")),
        Err(source) => Err(InheritError::Io { origin, fd, source }),
    }
}

/// Takes ownership of descriptor `fd`, inherited from the parent process, if it is open.
fn take(fd: RawFd, origin: &'static str) -> Result<OwnedFd, InheritError> {
    if std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_err() {
        return Err(InheritError::NotOpen { origin, fd });
    }
    // SAFETY: `fd` is open (checked just above) and was inherited from the parent process:
    // nothing else in this process opened it or wraps it (listenfd hands each of its
    // descriptors out once), so the `OwnedFd` is its only owner.
    #[allow(unsafe_code)]
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;

    use super::*;

    #[test]
    fn a_listening_socket_passes_and_a_connection_is_refused_as_the_wrong_kind() {
        let listening = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listening.local_addr().unwrap();
        let fd = listening.into_raw_fd();
        let taken = listener_on(fd).unwrap();
        assert_eq!(taken.local_addr().unwrap(), addr);

        let connection = TcpStream::connect(addr).unwrap().into_raw_fd();
        let error = listener_on(connection).unwrap_err().to_string();
        assert!(error.contains("is a connection, not listening") && error.contains("--inetd"), "{error}");
    }

    #[test]
    fn a_descriptor_that_is_no_socket_or_not_open_is_named() {
        let file = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        let error = listener_on(file).unwrap_err().to_string();
        assert_eq!(error, format!("--listen-fd: descriptor {file} is not a socket, not a listening TCP socket"));
        let error = listener_on(9999).unwrap_err().to_string();
        assert_eq!(error, "--listen-fd: descriptor 9999 is not open");
    }
}
