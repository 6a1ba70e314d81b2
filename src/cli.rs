//! Command lines of both binaries (clap), and their translation into settings overrides.
//!
//! `zen-server [HOST] [-p PORT]` mirrors the book's servers: HOST `''` means every IPv4
//! interface and the port defaults to 1060. `--listen ADDR` (repeatable) is the precise form.

use std::{
    net::{Ipv4Addr, SocketAddr, ToSocketAddrs},
    path::PathBuf,
    time::Duration,
};

use clap::{Parser, Subcommand};

use crate::{bench::BenchMode, config::Overrides, protocol::DEFAULT_PORT};

/// `zen-server`: serves the Zen of Python over TCP.
#[derive(Debug, Parser)]
#[command(name = "zen-server", version, about, args_conflicts_with_subcommands = true)]
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

/// `zen-client`: asks a Zen server questions.
#[derive(Debug, Parser)]
#[command(name = "zen-client", version, about)]
pub struct ClientCli {
    /// What to do.
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// Subcommands of `zen-client`.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Send the questions pipelined on one connection and print each with its answer.
    Ask {
        /// Server address, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:1060", env = "ZEN_ADDR")]
        addr: String,
        /// Seconds to wait for every answer.
        #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
        timeout: Duration,
        /// Questions, each ending with '?'.
        #[arg(required = true, value_name = "QUESTION")]
        questions: Vec<String>,
    },
    /// Generate load, check every answer, and report throughput and latency.
    Bench {
        /// Server address, IP:PORT.
        #[arg(long, default_value = "127.0.0.1:1060", env = "ZEN_ADDR")]
        addr: SocketAddr,
        /// pipelined: connections with questions in flight; churn: connect, ask once, close,
        /// repeat; idle: open connections, ask once on each, hold them.
        #[arg(long, value_enum, default_value = "pipelined")]
        mode: BenchModeArg,
        /// Connections (pipelined, idle) or concurrent loops (churn).
        #[arg(long, default_value = "50")]
        conns: usize,
        /// Questions in flight per connection (pipelined, without --rate).
        #[arg(long, default_value = "1")]
        depth: usize,
        /// Seconds measured.
        #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
        duration: Duration,
        /// Seconds of load before measuring starts.
        #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_seconds_or_zero)]
        warmup: Duration,
        /// Questions per second in all, sent at fixed times whatever the server does; latency
        /// then counts from when each question should have been sent (pipelined).
        #[arg(long, value_name = "PER_SEC")]
        rate: Option<f64>,
        /// Seconds to hold the connections open (idle).
        #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
        hold: Duration,
        /// The server's process ID, to report its memory per held connection (idle).
        #[arg(long, value_name = "PID")]
        server_pid: Option<u32>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 only if the server gives a known question its right answer in time.
    Probe {
        /// Server address, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:1060", env = "ZEN_ADDR")]
        addr: String,
        /// Seconds to wait for the answer.
        #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_seconds)]
        timeout: Duration,
    },
}

/// `zen-client bench --mode`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BenchModeArg {
    /// Long-lived connections with questions in flight.
    Pipelined,
    /// Connect, ask one question, close, repeat.
    Churn,
    /// Open connections, ask once, hold them.
    Idle,
}

impl From<BenchModeArg> for BenchMode {
    fn from(mode: BenchModeArg) -> Self {
        match mode {
            BenchModeArg::Pipelined => BenchMode::Pipelined,
            BenchModeArg::Churn => BenchMode::Churn,
            BenchModeArg::Idle => BenchMode::Idle,
        }
    }
}

/// Parses a positive number of seconds, fractions allowed.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    match parse_seconds_or_zero(text)? {
        duration if duration.is_zero() => Err(format!("{text:?} is not a positive number of seconds")),
        duration => Ok(duration),
    }
}

/// Parses a number of seconds, zero and fractions allowed.
fn parse_seconds_or_zero(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is not a number of seconds"))
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

    #[test]
    fn seconds_must_be_positive_numbers() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
        assert_eq!(parse_seconds_or_zero("0"), Ok(Duration::ZERO));
    }
}
