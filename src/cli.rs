//! The command line of `zen-server` (clap), and its translation into settings overrides.
//!
//! `zen-server [HOST] [-p PORT]` mirrors the book's servers: HOST `''` means every IPv4
//! interface and the port defaults to 1060. `--listen ADDR` (repeatable) is the precise form.
//! `--inetd` and `--listen-fd 0 --exit-when-idle SECS` are the book's two inetd variants.

use std::{
    net::{Ipv4Addr, SocketAddr, ToSocketAddrs},
    path::PathBuf,
};

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, error::ErrorKind};

use crate::{
    config::Overrides,
    protocol::DEFAULT_PORT,
    server::listener::{LISTEN_EXAMPLE, parse_socket_addr},
};

/// The ways to run `zen-server`, one a line, as `--help` and every command-line error show them.
///
/// clap's own usage line is built from the arguments a mistake involved, which makes commands
/// it would itself refuse (`zen-server --inetd [HOST]`); these are each accepted as written.
const SERVER_USAGE: &str = "\
zen-server [HOST] [-p PORT] [--exit-when-idle SECS] [--config FILE]
       zen-server --listen ADDR [--listen ADDR]... [--exit-when-idle SECS] [--config FILE]
       zen-server --listen-fd FD [--exit-when-idle SECS] [--config FILE]
       zen-server --inetd [--config FILE]
       zen-server check-config [-p PORT] [--config FILE]
       zen-server check-config [--listen ADDR]... [--config FILE]";

/// The ways to run `zen-server check-config`, for its own mistakes.
const CHECK_CONFIG_USAGE: &str = "\
zen-server check-config [-p PORT] [--config FILE]
       zen-server check-config [--listen ADDR]... [--config FILE]";

/// What `zen-server --help` says after the flags.
const SERVER_HELP: &str = "\
Examples:
  zen-server                            serve on server.listen (built in: 127.0.0.1:1060)
  zen-server '' -p 1060                 every IPv4 interface, port 1060, as the book's servers
  zen-server --listen 0.0.0.0:1060 --listen '[::]:1060'
  zen-server --config /etc/zen-server/zen-server.toml
  zen-server check-config --config zen-server.toml    print the effective settings, or what is wrong

Settings, later wins: built-in defaults, the file (--config or ZEN_CONFIG), ZEN_<SECTION>__<KEY>
variables (ZEN_SERVER__WORKERS=4, ZEN_LOG__LEVEL=debug, ZEN_SERVER__LISTEN=127.0.0.1:1060,[::1]:1060),
then these flags. `zen-server check-config` prints every setting.

Threads: server.workers = 0, the default, runs a session thread per CPU this process may use
(affinity and CPU quota) but one, and at least one; the `listening` line says how many. Keep it
where zen-server shares its cores: a session stays on its thread, and with every core busy its
client would wait for the scheduler's next slice (p99 about 3 ms with one per CPU, against 1.2
to 1.7 ms with the default, measured on 2 cores). On a machine given to zen-server alone, one per CPU answers more. Figures:
docs/performance.md.

Signals: SIGTERM or SIGINT drains (every question received is answered, clients are told
\"Error: server shutting down.\") and exits 0; a second one exits at once (143, 130). SIGHUP
reloads the settings.

Exit codes: 0 stopped as asked; 1 anything else; 2 bad command line; 69 unavailable, a later try
may work (address in use, HOST not resolved); 70 a worker thread stalled (restart it); 78 a
setting is wrong (do not restart).";

/// `zen-server`: serves the Zen of Python over TCP.
#[derive(Debug, Parser)]
#[command(name = "zen-server", version, about, after_help = SERVER_HELP, override_usage = SERVER_USAGE)]
// Parse it with `ServerCli::parse_args`, which also refuses the combinations clap's derived
// parsers let through (a doc comment here would be printed by --help).
pub struct ServerCli {
    /// What to do; without a command, serve.
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
    /// Interface to listen on, as in the book's servers: an IP address or host name (no port:
    /// that is -p), or '' for every IPv4 interface. Replaces server.listen (built in:
    /// 127.0.0.1:1060); the port is -p or 1060.
    #[arg(value_name = "HOST", value_parser = parse_host, conflicts_with = "listen")]
    pub host: Option<String>,
    /// Port to listen on (replaces the port of every address of server.listen, or HOST's).
    #[arg(short = 'p', long = "port", value_name = "PORT", global = true, conflicts_with = "listen")]
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
    /// Exit SECS seconds after the last connection closed (or after starting, if none came).
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, value_parser = parse_idle_secs)]
    pub exit_when_idle: Option<u64>,
}

/// Subcommands of `zen-server`.
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Check the layered settings and print the effective configuration as TOML.
    #[command(override_usage = CHECK_CONFIG_USAGE)]
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
    /// A --listen value is not an IP address and port.
    #[error("invalid --listen {0:?}: {1}")]
    BadListen(String, String),
}

impl ServerCli {
    /// Parses `args` (the program's name first), with the matches that tell where each value
    /// came from.
    ///
    /// # Errors
    ///
    /// A [`clap::Error`] (exit code 2) for a command line that is not one of the ways `--help`
    /// shows, including combinations clap cannot see because they are split around the command
    /// (`-p 2060 check-config --listen ADDR`, `--inetd check-config`).
    pub fn parse_args<I, T>(args: I) -> Result<(Self, ArgMatches), clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = Self::command();
        let matches = command.try_get_matches_from_mut(args)?;
        let cli = Self::from_arg_matches(&matches).map_err(|error| error.format(&mut command))?;
        match cli.conflict() {
            Some(message) => Err(command.error(ErrorKind::ArgumentConflict, message)),
            None => Ok((cli, matches)),
        }
    }

    /// What is wrong with a combination of arguments given on both sides of the command, where
    /// clap checks each side alone; worded as clap words its own.
    fn conflict(&self) -> Option<String> {
        if let Some(ServerCommand::CheckConfig) = self.command {
            let leave_out = "leave it out";
            let serving = [
                (self.host.is_some(), "[HOST]", "give the addresses to check with --listen ADDR"),
                (self.inetd, "--inetd", leave_out),
                (self.listen_fd.is_some(), "--listen-fd <FD>", leave_out),
                (self.exit_when_idle.is_some(), "--exit-when-idle <SECS>", leave_out),
            ];
            if let Some((_, argument, remedy)) = serving.into_iter().find(|(given, ..)| *given) {
                return Some(format!(
                    "the argument '{argument}' cannot be used with 'check-config', which only checks the settings: {remedy}"
                ));
            }
        }
        match (self.host.is_some(), self.port.is_some(), self.listen.is_empty()) {
            (true, _, false) => Some("the argument '[HOST]' cannot be used with '--listen <ADDR>'".into()),
            (_, true, false) => Some("the argument '--port <PORT>' cannot be used with '--listen <ADDR>'".into()),
            _ => None,
        }
    }

    /// The settings this command line overrides.
    ///
    /// # Errors
    ///
    /// [`CliError`] if HOST does not resolve, or a `--listen` value is not an address (HOST or
    /// `-p` with `--listen` is refused before, by [`ServerCli::parse_args`]).
    pub fn overrides(&self) -> Result<Overrides, CliError> {
        match &self.host {
            Some(host) => {
                let addrs = resolve_host(host, self.port.unwrap_or(DEFAULT_PORT))?;
                Ok(Overrides { listen: Some(addrs), port: None })
            }
            None if self.listen.is_empty() => Ok(Overrides { listen: None, port: self.port }),
            None => {
                let addrs = self.listen.iter().map(|text| {
                    parse_socket_addr(text, LISTEN_EXAMPLE).map_err(|why| CliError::BadListen(text.clone(), why))
                });
                Ok(Overrides { listen: Some(addrs.collect::<Result<_, _>>()?), port: None })
            }
        }
    }
}

/// Checks HOST before it is looked up: an address with a port, or a word that is a command
/// misspelt, is a command-line mistake.
fn parse_host(host: &str) -> Result<String, String> {
    if host.parse::<SocketAddr>().is_ok()
        || host.rsplit_once(':').is_some_and(|(name, port)| !name.contains(':') && port.parse::<u16>().is_ok())
    {
        return Err(format!("HOST takes no port: give it with -p (zen-server HOST -p PORT), or use --listen {host}"));
    }
    let commands: Vec<String> =
        ServerCli::command().get_subcommands().map(|command| command.get_name().to_owned()).collect();
    if host.len() >= 3 && commands.iter().any(|command| command.starts_with(host) || edit_distance(host, command) <= 3)
    {
        return Err(format!(
            "{host:?} is not a command (the commands are: {}); a HOST is an IP address or a host name",
            commands.join(", ")
        ));
    }
    Ok(host.to_owned())
}

/// How many single-character edits turn `a` into `b`: the measure by which a misspelt command
/// is recognised, here and by `zen-client`.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, a) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, &b) in b.iter().enumerate() {
            let substituted = previous + usize::from(a != b);
            previous = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// `--exit-when-idle`: a whole number of seconds, at least 1.
fn parse_idle_secs(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(secs) if secs >= 1 => Ok(secs),
        _ => Err(format!("{text:?} is not a whole number of seconds of at least 1")),
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
        ServerCli::parse_args(std::iter::once("zen-server").chain(args.iter().copied())).unwrap().0
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

    /// The message of the command-line error `args` make, which must be one (exit 2).
    fn refused(args: &[&str]) -> String {
        let error = ServerCli::parse_args(std::iter::once("zen-server").chain(args.iter().copied())).unwrap_err();
        assert_eq!(error.exit_code(), 2, "{error}");
        error.to_string()
    }

    #[test]
    fn host_or_a_port_with_listen_is_a_command_line_mistake() {
        let error = refused(&["127.0.0.1", "--listen", "127.0.0.1:0"]);
        assert!(error.contains("--listen") && error.contains("HOST"), "{error}");
        let error = refused(&["-p", "30100", "--listen", "127.0.0.1:30101"]);
        assert!(error.contains("--port") && error.contains("--listen"), "{error}");
    }

    #[test]
    fn a_host_with_a_port_or_a_misspelt_command_is_a_command_line_mistake() {
        let error = refused(&["127.0.0.1:30100"]);
        assert!(error.contains("HOST takes no port") && error.contains("-p"), "{error}");
        let error = refused(&["localhost:30100"]);
        assert!(error.contains("HOST takes no port"), "{error}");
        for word in ["check", "check_config", "chek-config"] {
            let error = refused(&[word]);
            assert!(error.contains("is not a command") && error.contains("check-config"), "{error}");
        }
        for host in ["localhost", "::1", "example.com", "db"] {
            assert_eq!(server(&[host]).host.as_deref(), Some(host));
        }
    }

    #[test]
    fn exit_when_idle_takes_whole_seconds_and_says_so_in_plain_words() {
        for secs in ["-1", "0", "1.5"] {
            let error = refused(&["--exit-when-idle", secs]);
            assert!(error.contains("is not a whole number of seconds of at least 1"), "{error}");
            assert!(!error.contains("-- -1") && !error.contains("18446744073709551615"), "{error}");
        }
        assert_eq!(server(&["--exit-when-idle", "8"]).exit_when_idle, Some(8));
    }

    #[test]
    fn check_config_is_a_command_not_a_host() {
        let cli = server(&["check-config", "--config", "x.toml", "-p", "7"]);
        assert!(matches!(cli.command, Some(ServerCommand::CheckConfig)));
        assert_eq!(cli.host, None);
        assert_eq!(cli.port, Some(7));
        let cli = server(&["-p", "7", "check-config"]);
        assert!(matches!(cli.command, Some(ServerCommand::CheckConfig)));
        assert_eq!(cli.port, Some(7), "a global argument may come before the command");
    }

    #[test]
    fn an_unresolvable_host_is_named() {
        let error = resolve_host("no-such-host.invalid", 1060).unwrap_err();
        assert!(error.to_string().contains("no-such-host.invalid"), "{error}");
    }
}
