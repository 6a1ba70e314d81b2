//! `zen-server`: take inherited sockets, parse the command line, load settings, set up logging,
//! serve.
//!
//! Exit codes say what the cause was, so that a supervisor knows whether to try again: 0 after
//! a shutdown (also when the shutdown timeout cut clients off: a warning says how many); 2 for
//! a command line that does not parse; 78 (EX_CONFIG) when a setting is wrong, and only then
//! (a value, a flag, an inherited socket of the wrong kind: trying again fails the same way);
//! 69 (EX_UNAVAILABLE) when something a later try may find different is unavailable (an
//! address in use or not on this host, a HOST that does not resolve, an inherited socket the
//! system refused to work with); 70 (EX_SOFTWARE) when a worker thread stopped answering for
//! `server.worker_stall_timeout_secs` (the daemon drained what it could: restart it); 130 or
//! 143 when a second SIGINT or SIGTERM cut a drain short; 1 for anything else.

use std::{process::ExitCode, time::Duration};

use clap::parser::ValueSource;
use tracing::Level;
use zen_server::{
    app::{self, Listener, Options, RunError, Sockets},
    cli::{CliError, ServerCli, ServerCommand},
    config::{CONFIG_FILE_VAR, ConfigError, ConfigFile, LogOutput, Settings, Sources},
    control::ReloadSources,
    inherit::{self, InheritError},
    metrics::{Metrics, MetricsError},
    telemetry::{self, Destination, Syslog, TelemetryError},
    tls::EXPIRY_WARNING,
};

const EX_CONFIG: u8 = 78;
const EX_UNAVAILABLE: u8 = 69;
const EX_SOFTWARE: u8 = 70;

/// A setting is wrong in a way the typed errors cannot say: `--inetd` with logs on standard
/// output, which is the client's connection in that mode.
#[derive(Debug, thiserror::Error)]
#[error("--inetd: log.output is \"stdout\", which is the client's connection in this mode; use \"stderr\"")]
struct LogsOnTheConnection;

fn main() -> ExitCode {
    // Sockets passed by a service manager, taken before any other thread starts (this also
    // removes the LISTEN_* variables, so that no child process sees them).
    let activated = inherit::activated_listeners();
    if let Err(error) = ConfigError::check_config_var() {
        return fail(&error.into(), &Destination::Output(LogOutput::Stderr));
    }
    let (cli, matches) = ServerCli::parse_args(std::env::args_os()).unwrap_or_else(|error| error.exit());
    // inetd's nowait mode may have put the connection on standard error too: then nothing,
    // not even an error at start-up, may be written there.
    let errors = match cli.inetd && inherit::stderr_is_the_connection() {
        true => Destination::away_from_the_client(),
        false => Destination::Output(LogOutput::Stderr),
    };
    match run(&cli, &matches, activated, &errors) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error, &errors),
    }
}

fn run(
    cli: &ServerCli,
    matches: &clap::ArgMatches,
    activated: Result<Vec<std::net::TcpListener>, InheritError>,
    errors: &Destination,
) -> anyhow::Result<()> {
    let named_by = match matches.value_source("config") {
        Some(ValueSource::EnvVariable) => CONFIG_FILE_VAR,
        _ => "--config",
    };
    let file = cli.config.clone().map(|path| ConfigFile { path, named_by });
    let sources = Sources::from_process(file, cli.overrides()?)?;
    let settings = Settings::load(&sources)?;
    if let Some(ServerCommand::CheckConfig) = cli.command {
        if let Some(identity) = settings.identity.as_ref().filter(|identity| identity.expires_within(EXPIRY_WARNING)) {
            let (file, expires) = (&settings.tls.cert_file.0, &identity.expires);
            eprintln!(
                "zen-server: warning: tls.cert_file {file:?}: the certificate expires on {expires}, within 14 days"
            );
        }
        for warning in &settings.warnings {
            eprintln!("zen-server: warning: {warning}");
        }
        let answers = settings.oracle.answers.len();
        print!("# effective zen-server settings (entries in oracle.answers: {answers})\n{}", settings.to_toml()?);
        return Ok(());
    }
    let sockets = sockets(cli, activated, &settings)?;
    let destination = match errors {
        Destination::Output(_) => Destination::Output(settings.log.output),
        away => away.clone(),
    };
    let (log, _flush_at_exit) = telemetry::init(settings.log.level.as_str(), settings.log.format, &destination)?;
    if matches!(&sockets, Some(Sockets::Listeners(_))) {
        tracing::info!("serving on inherited sockets; server.listen is not used");
    }
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let metrics = match settings.metrics.listen.0 {
        Some(addr) => {
            let metrics = Metrics::serve(addr)?;
            tracing::info!(%addr, "serving metrics at http://{addr}/metrics");
            metrics
        }
        None => Metrics::default(),
    };
    let options = Options {
        exit_when_idle: cli.exit_when_idle.map(Duration::from_secs),
        reload: Some(ReloadSources { sources, log: Some(log) }),
        metrics,
    };
    Ok(app::run(&settings, sockets, options)?)
}

/// The sockets handed to this process, if it is to serve those instead of binding
/// `server.listen`.
fn sockets(
    cli: &ServerCli,
    activated: Result<Vec<std::net::TcpListener>, InheritError>,
    settings: &Settings,
) -> anyhow::Result<Option<Sockets>> {
    let activated = activated?;
    let given = if cli.inetd { Some("--inetd") } else { cli.listen_fd.map(|_| "--listen-fd") };
    if let Some(flag) = given
        && !activated.is_empty()
    {
        return Err(InheritError::AlsoActivated { origin: flag }.into());
    }
    if cli.inetd {
        if settings.log.output == LogOutput::Stdout {
            return Err(LogsOnTheConnection.into());
        }
        return Ok(Some(Sockets::Connection(inherit::connection_on_stdin()?)));
    }
    if let Some(fd) = cli.listen_fd {
        return Ok(Some(Sockets::Listeners(vec![Listener::inherited(inherit::listener_on(fd)?, settings)])));
    }
    let activated: Vec<Listener> = activated.into_iter().map(|socket| Listener::inherited(socket, settings)).collect();
    Ok((!activated.is_empty()).then_some(Sockets::Listeners(activated)))
}

/// The exit code for `error`, by its cause: whether a setting is wrong, something a later try
/// may find different is unavailable, or neither.
fn exit_code(error: &anyhow::Error) -> u8 {
    if error.is::<ConfigError>() || error.is::<LogsOnTheConnection>() {
        return EX_CONFIG;
    }
    if let Some(error) = error.downcast_ref::<CliError>() {
        return match error {
            CliError::Resolve { .. } => EX_UNAVAILABLE,
            CliError::BadListen(..) => EX_CONFIG,
        };
    }
    if let Some(error) = error.downcast_ref::<InheritError>() {
        return match error {
            InheritError::Io { .. } => EX_UNAVAILABLE,
            InheritError::NotOpen { .. } | InheritError::WrongKind { .. } | InheritError::AlsoActivated { .. } => {
                EX_CONFIG
            }
        };
    }
    match (error.downcast_ref::<RunError>(), error.downcast_ref::<MetricsError>()) {
        (Some(RunError::Listen(_)), _) | (_, Some(MetricsError::Exporter { .. })) => EX_UNAVAILABLE,
        (Some(RunError::WorkerStalled), _) => EX_SOFTWARE,
        _ if matches!(error.downcast_ref::<TelemetryError>(), Some(TelemetryError::Filter { .. })) => EX_CONFIG,
        _ => 1,
    }
}

/// Reports `error` on one line where errors go, and returns its exit code.
///
/// Every error's own message already says everything (layer, key, value, cause), so only the
/// outermost one is reported, never the chain of causes it repeats.
fn fail(error: &anyhow::Error, errors: &Destination) -> ExitCode {
    let line = format!("zen-server: {error}");
    match errors {
        Destination::Output(_) => eprintln!("{line}"),
        Destination::Syslog(path) => {
            if let Ok(syslog) = Syslog::connect(path) {
                syslog.send(Level::ERROR, line.as_bytes());
            }
        }
        Destination::Nowhere => {}
    }
    ExitCode::from(exit_code(error))
}
