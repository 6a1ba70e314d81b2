//! The command line of `zen-client` (clap): its subcommands and their arguments.
//!
//! Only the parsing lives here; `main` runs what was asked and [`bench`](crate::bench) generates
//! the load.

use std::{path::PathBuf, time::Duration};

use clap::{
    Args, CommandFactory, Parser, Subcommand,
    error::{ContextKind, ContextValue, ErrorKind},
};
use zen_server::{
    Question,
    cli::edit_distance,
    client::{self, TlsOptions, Trust},
};

use crate::bench::{A_WEEK, BenchMode, BenchProtocol};

/// What `zen-client --help` says after the commands.
const CLIENT_HELP: &str = "\
Examples:
  zen-client ask \"Beautiful is better than?\" \"Why?\"      print each question with its answer
  zen-client ask --addr 10.0.0.5:1060 \"Simple is better than?\"
  zen-client probe && echo healthy                       the address and question from the
                                                         server's settings (ZEN_CONFIG, ZEN_*)
  zen-client bench --conns 50 --rate 50000 --server-pid \"$(pidof zen-server)\"
  zen-client ask --tls --ca ca.pem --addr zen.example.net:1061 \"Flat is better than?\"
  zen-client probe --tls          over TLS when the settings list only TLS listeners, trusting
                                  the certificate in the server's tls.cert_file

Exit codes: 0 success; 1 the server did not answer, or not as expected (probe), or some answer
of a bench was wrong or missing; 2 bad command line.";

/// `zen-client`: asks a Zen server questions, checks its health, or measures it.
#[derive(Debug, Parser)]
#[command(
    name = "zen-client",
    version,
    about = "Asks a Zen server questions, checks its health, or measures it",
    after_help = CLIENT_HELP
)]
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
        #[arg(long, default_value = "127.0.0.1:1060", value_parser = parse_host_port)]
        addr: String,
        /// Start with a PROXY header (`PROXY UNKNOWN`), for a listener in proxy.listen (with
        /// --tls: in tls.proxy_listen, the header first, then TLS).
        #[arg(long)]
        proxy_header: bool,
        #[command(flatten)]
        tls: TlsArgs,
        /// Seconds to wait for every answer.
        #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
        timeout: Duration,
        /// Questions, each ending with '?' (an argument may hold several, "A?B?").
        #[arg(required = true, value_name = "QUESTION", value_parser = parse_questions)]
        questions: Vec<Vec<Question>>,
    },
    /// Generate load, check every answer, and report throughput, latency and CPU use.
    Bench {
        /// Server address, HOST:PORT. A host name is looked up once, before the load starts:
        /// the load goes to the first of its addresses that accepts a connection.
        #[arg(long, default_value = "127.0.0.1:1060", value_parser = parse_host_port)]
        addr: String,
        /// The kind of load.
        #[arg(long, value_enum, default_value_t = BenchMode::Pipelined)]
        mode: BenchMode,
        /// What to ask and expect: the Zen protocol, or `PING` to a Redis server, every answer
        /// `+PONG` (to measure Redis with the same load).
        #[arg(long, value_enum, default_value_t = BenchProtocol::Zen)]
        protocol: BenchProtocol,
        /// Connections (pipelined, idle) or concurrent loops (churn).
        #[arg(long, default_value = "50", value_parser = parse_count)]
        conns: usize,
        /// Questions in flight per connection (pipelined, without --rate); questions asked one
        /// after another on each connection before it closes (churn).
        #[arg(long, default_value = "1", value_parser = parse_count)]
        depth: usize,
        /// Seconds measured.
        #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
        duration: Duration,
        /// Seconds of load before measuring starts.
        #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_seconds_or_zero)]
        warmup: Duration,
        /// Questions per second in all, sent at fixed times whatever the server does; latency
        /// then counts from when each question should have been sent (pipelined).
        #[arg(long, value_name = "PER_SEC", value_parser = parse_rate)]
        rate: Option<f64>,
        /// Seconds to hold the connections open (idle).
        #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
        hold: Duration,
        /// The server's process ID, to report the CPU time it used while measured and per
        /// answer (every mode) and its memory per held connection (idle). Given more than once
        /// (a server and a proxy in front of it), their figures are added together.
        #[arg(long, value_name = "PID")]
        server_pid: Vec<u32>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Exit 0 only if the server gives a known question its right answer in time. Without
    /// --addr, the address and the question come from the server's own settings (built-in,
    /// --config or ZEN_CONFIG, ZEN_* variables): its first listening address and the first
    /// entry of its answer table, over TLS by itself when the settings list only TLS
    /// listeners, trusting the server's own certificate (tls.cert_file); with --addr, the
    /// book's first question is asked.
    Probe {
        /// Server address, HOST:PORT.
        #[arg(long, value_parser = parse_host_port)]
        addr: Option<String>,
        /// The server's settings file, to find its address and a question it knows.
        #[arg(long, value_name = "FILE", env = "ZEN_CONFIG", conflicts_with = "addr")]
        config: Option<PathBuf>,
        /// Start with a PROXY header (`PROXY UNKNOWN`), for a listener in proxy.listen (with
        /// --tls: in tls.proxy_listen, the header first, then TLS; without --addr: the first
        /// such listener in the settings).
        #[arg(long)]
        proxy_header: bool,
        #[command(flatten)]
        tls: TlsArgs,
        /// Seconds to wait for the answer.
        #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_seconds)]
        timeout: Duration,
    },
}

/// How to speak TLS, for every command.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// Speak TLS. Without --ca, the server's certificate must chain to the system's CAs.
    #[arg(long)]
    pub tls: bool,
    /// The CA certificates (PEM) the server's certificate must chain to.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM, with the rest of its chain), for a server that asks for one
    /// (tls.client_ca_file).
    #[arg(long, value_name = "FILE", requires_all = ["tls", "key"])]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry (by default, the host of --addr).
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub server_name: Option<String>,
}

impl ClientCli {
    /// Parses the process's arguments, as clap's `parse` does (exiting 2 on a mistake, 0 after
    /// --help), but suggesting the commands a misspelt one may be: clap's own similarity finds
    /// none for a short word with two letters swapped (`aks`).
    pub fn parse_or_exit() -> Self {
        Self::try_parse().unwrap_or_else(|error| with_similar_commands(error).exit())
    }
}

/// `error`, if it is an unknown command with no suggestion, with the commands within two
/// edits of it (or that it begins) as suggestions.
fn with_similar_commands(mut error: clap::Error) -> clap::Error {
    if error.kind() != ErrorKind::InvalidSubcommand || error.get(ContextKind::SuggestedSubcommand).is_some() {
        return error;
    }
    let Some(ContextValue::String(word)) = error.get(ContextKind::InvalidSubcommand) else {
        return error;
    };
    let word = word.clone();
    let similar: Vec<String> = ClientCli::command()
        .get_subcommands()
        .map(|command| command.get_name().to_owned())
        .filter(|name| edit_distance(&word, name) <= 2 || (word.len() >= 2 && name.starts_with(&word)))
        .collect();
    if !similar.is_empty() {
        error.insert(ContextKind::SuggestedSubcommand, ContextValue::Strings(similar));
    }
    error
}

impl TlsArgs {
    /// The TLS options these flags give, if --tls; `trust` when no --ca is given.
    pub fn options(&self, trust: Trust) -> TlsOptions {
        TlsOptions {
            trust: self.ca.clone().map_or(trust, Trust::Ca),
            identity: self.cert.clone().zip(self.key.clone()),
            server_name: self.server_name.clone(),
        }
    }
}

/// Parses one argument of questions: each must end with '?'.
fn parse_questions(text: &str) -> Result<Vec<Question>, String> {
    match client::questions_in(text) {
        Ok(questions) if questions.is_empty() => Err("no question in it".into()),
        Ok(questions) => Ok(questions),
        Err(error) => Err(error.to_string()),
    }
}

/// Parses a positive number of seconds, fractions allowed.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    match parse_seconds_or_zero(text)? {
        duration if duration.is_zero() => Err(format!("{text:?} is not a positive number of seconds")),
        duration => Ok(duration),
    }
}

/// Parses a number of seconds, zero and fractions allowed, up to a week.
fn parse_seconds_or_zero(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if seconds > A_WEEK.as_secs_f64() {
        return Err(format!("{text:?} is more than a week ({} seconds)", A_WEEK.as_secs()));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is not a number of seconds"))
}

/// Parses a server's address: a host (an IP address, a host name, an IPv6 address in
/// brackets) and a port.
fn parse_host_port(text: &str) -> Result<String, String> {
    let has_port = text.rsplit_once(':').is_some_and(|(host, port)| {
        let bracketed = host.starts_with('[') && host.ends_with(']');
        !host.is_empty() && (bracketed || !host.contains(':')) && port.parse::<u16>().is_ok()
    });
    match has_port {
        true => Ok(text.to_owned()),
        false => Err(format!("{text:?} has no port: expected HOST:PORT, such as 127.0.0.1:1060 or [::1]:1060")),
    }
}

/// Parses a count of at least 1.
fn parse_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(count) if count >= 1 => Ok(count),
        _ => Err(format!("{text:?} is not a whole number of at least 1")),
    }
}

/// Parses a rate: a positive, finite number of questions per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err(format!("{text:?} is not a positive number of questions per second")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(args: &[&str]) -> Result<ClientCli, clap::Error> {
        ClientCli::try_parse_from(std::iter::once("zen-client").chain(args.iter().copied()))
    }

    #[test]
    fn seconds_must_be_positive_numbers() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
        assert_eq!(parse_seconds_or_zero("0"), Ok(Duration::ZERO));
        assert!(parse_seconds_or_zero("1e19").is_err(), "more than a week");
        assert!(parse_seconds_or_zero("604800").is_ok(), "a week");
    }

    #[test]
    fn tls_files_and_names_need_tls_and_a_certificate_needs_its_key() {
        assert!(client(&["ask", "--ca", "ca.pem", "A?"]).is_err());
        assert!(client(&["ask", "--tls", "--cert", "c.pem", "A?"]).is_err());
        assert!(client(&["ask", "--tls", "--key", "c.key", "A?"]).is_err());
        assert!(client(&["probe", "--server-name", "zen"]).is_err());
        assert!(client(&["bench", "--tls", "--cert", "c.pem", "--key", "c.key", "--ca", "ca.pem"]).is_ok());
        assert!(client(&["probe", "--tls", "--server-name", "zen"]).is_ok());
    }

    #[test]
    fn counts_and_rates_must_be_positive() {
        assert!(client(&["bench", "--conns", "0"]).is_err());
        assert!(client(&["bench", "--depth", "0"]).is_err());
        assert!(client(&["bench", "--rate", "0"]).is_err());
        assert!(client(&["bench", "--rate", "inf"]).is_err());
        assert!(client(&["bench", "--rate", "-5"]).is_err());
        assert!(client(&["bench", "--conns", "2", "--depth", "3", "--rate", "0.5"]).is_ok());
    }

    #[test]
    fn bench_modes_are_named_in_lowercase_and_pipelined_is_the_default() {
        let Ok(ClientCli { command: ClientCommand::Bench { mode, .. } }) = client(&["bench"]) else {
            panic!("bench alone is a valid command line");
        };
        assert_eq!(mode, BenchMode::Pipelined);
        let Ok(ClientCli { command: ClientCommand::Bench { mode, server_pid, .. } }) =
            client(&["bench", "--mode", "churn", "--server-pid", "42"])
        else {
            panic!("--mode churn --server-pid 42 is a valid command line");
        };
        assert_eq!((mode, server_pid), (BenchMode::Churn, vec![42]));
        assert!(client(&["bench", "--mode", "Idle"]).is_err());
    }

    #[test]
    fn the_bench_protocol_is_zen_unless_redis_ping_is_asked_for() {
        let Ok(ClientCli { command: ClientCommand::Bench { protocol, .. } }) = client(&["bench"]) else {
            panic!("bench alone is a valid command line");
        };
        assert_eq!(protocol, BenchProtocol::Zen);
        let Ok(ClientCli { command: ClientCommand::Bench { protocol, .. } }) =
            client(&["bench", "--protocol", "redis-ping"])
        else {
            panic!("--protocol redis-ping is a valid command line");
        };
        assert_eq!(protocol, BenchProtocol::RedisPing);
        assert_eq!(protocol.name(), "redis-ping");
        assert!(client(&["bench", "--protocol", "redis"]).is_err());
    }

    #[test]
    fn a_question_without_its_question_mark_is_refused_and_one_argument_may_hold_several() {
        let error = client(&["ask", "Beautiful is better than"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(error.to_string().contains("does not end with '?'"), "{error}");
        let Ok(ClientCli { command: ClientCommand::Ask { questions, .. } }) = client(&["ask", "A?B?", "C?"]) else {
            panic!("valid questions");
        };
        assert_eq!(questions.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
    }

    #[test]
    fn an_address_without_a_port_is_a_command_line_mistake() {
        for addr in ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.1:", "127.0.0.1:99999"] {
            let error = client(&["probe", "--addr", addr]).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{addr}: {error}");
            assert!(error.to_string().contains("expected HOST:PORT"), "{error}");
            assert!(client(&["ask", "--addr", addr, "Why?"]).is_err(), "{addr}");
        }
        for addr in ["127.0.0.1:1060", "localhost:1060", "[::1]:1060"] {
            assert!(client(&["probe", "--addr", addr]).is_ok(), "{addr}");
        }
    }

    #[test]
    fn a_misspelt_command_is_offered_the_commands_within_two_edits_or_that_it_begins() {
        let suggested = |word: &str| {
            let error = with_similar_commands(client(&[word]).unwrap_err());
            match error.get(ContextKind::SuggestedSubcommand) {
                Some(ContextValue::Strings(names)) => names.clone(),
                _ => Vec::new(),
            }
        };
        assert_eq!(suggested("aks"), ["ask"]);
        assert_eq!(suggested("prob"), ["probe"]);
        assert_eq!(suggested("frobnicate"), Vec::<String>::new());
    }

    #[test]
    fn ask_needs_at_least_one_question() {
        let error = client(&["ask"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }
}
