//! The command line of `zen-server` (clap), and its translation into settings overrides.
//!
//! `zen-server [HOST] [-p PORT]` mirrors the book's servers: HOST `''` means every IPv4
//! interface and the port defaults to 1060. `--listen ADDR` (repeatable) is the precise form.
//! `--inetd` and `--listen-fd 0 --exit-when-idle SECS` are the book's two inetd variants.

use std::{
    net::{Ipv4Addr, SocketAddr, ToSocketAddrs},
    path::PathBuf,
};

use clap::{Parser, Subcommand};

use crate::{config::Overrides, protocol::DEFAULT_PORT};

/// `zen-server`: serves the Zen of Python over TCP.
#[derive(Debug, Parser)]
#[command(name = "zen-server", version, about)]
pub struct ServerCli {
    /// What to do; without a command, serve.
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
    /// Interface to listen on, as in the book's servers: an IP address or host name, or ''
    /// for every IPv4 interface. Replaces server.listen; the port is -p or 1060.
    #[arg(value_name = "HOST")]
    pub host: Option<String>,
    /// Port to listen on (replaces the port of every listening address).
    #[arg(short = 'p', long = "port", value_name = "PORT", global = true)]
    pub port: Option<u16>,
    /// Settings file (TOML), layered over the built-in defaults.
    #[arg(long, value_name = "FILE", env = "ZEN_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:1060 or [::]:1060; repeat for several. Replaces
    /// server.listen.
    #[allow(rustdoc::broken_intra_doc_links)] // `[::]` is an address, not a link
    #[arg(long = "listen", value_name = "ADDR", global = true)]
    pub listen: Vec<String>,
    /// Serve the one connection on standard input, then exit (inetd's nowait mode). Logs go to
    /// standard error: standard output is the connection.
    #[arg(long, conflicts_with_all = ["host", "listen", "port", "listen_fd", "exit_when_idle"])]
    pub inetd: bool,
    /// Serve on the listening socket open on this file descriptor instead of binding
    /// (inetd's wait mode passes it as 0).
    #[arg(long, value_name = "FD", conflicts_with_all = ["host", "listen", "port"])]
    pub listen_fd: Option<i32>,
    /// Exit once no connection has been open or has arrived for SECS seconds.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub exit_when_idle: Option<u64>,
}

/// Subcommands of `zen-server`.
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Check the layered settings and print the effective configuration as TOML.
    CheckConfig,
}

/// The command line could not be turned into settings.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// HOST did not resolve to any address.
    #[error("cannot resolve HOST {host:?}: {reason}")]
    Resolve {
        /// The host given.
        host: String,
        /// Why it failed.
        reason: String,
    },
    /// HOST and --listen were both given.
    #[error("give either HOST or --listen, not both")]
    HostAndListen,
    /// A --listen value is not an IP address and port.
    #[error("invalid --listen {0:?}: expected an IP address and port such as 127.0.0.1:1060 or [::1]:1060")]
    BadListen(String),
}

impl ServerCli {
    /// The settings this command line overrides.
    ///
    /// # Errors
    ///
    /// [`CliError`] if HOST does not resolve or is combined with `--listen`, or a `--listen`
    /// value is not an address.
    pub fn overrides(&self) -> Result<Overrides, CliError> {
        match &self.host {
            Some(_) if !self.listen.is_empty() => Err(CliError::HostAndListen),
            Some(host) => {
                let addrs = resolve_host(host, self.port.unwrap_or(DEFAULT_PORT))?;
                Ok(Overrides { listen: Some(addrs), port: None })
            }
            None if self.listen.is_empty() => Ok(Overrides { listen: None, port: self.port }),
            None => {
                let addrs = self.listen.iter().map(|text| text.parse().map_err(|_| CliError::BadListen(text.clone())));
                Ok(Overrides { listen: Some(addrs.collect::<Result<_, _>>()?), port: self.port })
            }
        }
    }
}

/// The addresses of `host` at `port`; `''` is every IPv4 interface, as in the book.
fn resolve_host(host: &str, port: u16) -> Result<Vec<SocketAddr>, CliError> {
    if host.is_empty() {
        return Ok(vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))]);
    }
    let failure = |reason: String| CliError::Resolve { host: host.to_owned(), reason };
    let mut addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().map_err(|e| failure(e.to_string()))?.collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(failure("no addresses".into()));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(args: &[&str]) -> ServerCli {
        ServerCli::try_parse_from(std::iter::once("zen-server").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn empty_host_means_every_ipv4_interface_on_1060() {
        let overrides = server(&[""]).overrides().unwrap();
        assert_eq!(overrides.listen, Some(vec!["0.0.0.0:1060".parse().unwrap()]));
    }

    #[test]
    fn host_and_port_as_in_the_book() {
        let overrides = server(&["127.0.0.1", "-p", "2060"]).overrides().unwrap();
        assert_eq!(overrides.listen, Some(vec!["127.0.0.1:2060".parse().unwrap()]));
        assert_eq!(overrides.port, None);
    }

    #[test]
    fn a_port_alone_changes_the_port_of_the_configured_addresses() {
        let overrides = server(&["-p", "2060"]).overrides().unwrap();
        assert_eq!((overrides.listen, overrides.port), (None, Some(2060)));
    }

    #[test]
    fn listen_may_be_repeated_for_ipv4_and_ipv6() {
        let overrides = server(&["--listen", "127.0.0.1:0", "--listen", "[::1]:0"]).overrides().unwrap();
        assert_eq!(overrides.listen.unwrap().len(), 2);
    }

    #[test]
    fn an_unparsable_listen_address_is_named() {
        let error = server(&["--listen", "localhost:1060"]).overrides().unwrap_err();
        assert!(error.to_string().contains("\"localhost:1060\""), "{error}");
    }

    #[test]
    fn host_and_listen_together_are_refused() {
        let error = server(&["127.0.0.1", "--listen", "127.0.0.1:0"]).overrides().unwrap_err();
        assert!(matches!(error, CliError::HostAndListen));
    }

    #[test]
    fn check_config_is_a_command_not_a_host() {
        let cli = server(&["check-config", "--config", "x.toml", "-p", "7"]);
        assert!(matches!(cli.command, Some(ServerCommand::CheckConfig)));
        assert_eq!(cli.host, None);
        assert_eq!(cli.port, Some(7));
    }

    #[test]
    fn an_unresolvable_host_is_named() {
        let error = resolve_host("no-such-host.invalid", 1060).unwrap_err();
        assert!(error.to_string().contains("no-such-host.invalid"), "{error}");
    }
}
