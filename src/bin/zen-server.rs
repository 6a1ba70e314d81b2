//! `zen-server`: take inherited sockets, parse the command line, load settings, set up logging,
//! serve.
//!
//! Exit codes: 0 after a shutdown (also when the shutdown timeout cut clients off: a warning
//! says how many); 2 for a command line that does not parse; 69 (EX_UNAVAILABLE) when an
//! address cannot be listened on; 78 (EX_CONFIG) for bad settings or an inherited socket of
//! the wrong kind; 130 or 143 when a second SIGINT or SIGTERM cut a drain short; 1 for
//! anything else.

use std::{process::ExitCode, time::Duration};

use anyhow::bail;
use clap::{CommandFactory, FromArgMatches, parser::ValueSource};
use zen_server::{
    app::{self, Listener, Options, RunError, Sockets},
    cli::{ServerCli, ServerCommand},
    config::{CONFIG_FILE_VAR, ConfigFile, LogOutput, Settings, Sources},
    control::ReloadSources,
    inherit::{self, InheritError},
    metrics::Metrics,
    telemetry,
};

const EX_CONFIG: u8 = 78;
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    // Sockets passed by a service manager, taken before any other thread starts (this also
    // removes the LISTEN_* variables, so that no child process sees them).
    let activated = inherit::activated_listeners();
    let matches = ServerCli::command().get_matches();
    let cli = ServerCli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let named_by = match matches.value_source("config") {
        Some(ValueSource::EnvVariable) => CONFIG_FILE_VAR,
        _ => "--config",
    };
    let (settings, sources) = match load_settings(&cli, named_by) {
        Ok(loaded) => loaded,
        Err(error) => return fail(EX_CONFIG, &error),
    };
    if let Some(ServerCommand::CheckConfig) = cli.command {
        return match settings.to_toml() {
            Ok(text) => {
                print!("# effective zen-server settings\n{text}");
                ExitCode::SUCCESS
            }
            Err(error) => fail(1, &error.into()),
        };
    }
    let sockets = match sockets(&cli, activated, &settings) {
        Ok(sockets) => sockets,
        Err(error) => return fail(EX_CONFIG, &error),
    };
    let log = match telemetry::init(&settings.log) {
        Ok(log) => log,
        Err(error) => return fail(EX_CONFIG, &error.into()),
    };
    if matches!(&sockets, Some(Sockets::Listeners(_))) {
        tracing::info!("serving on inherited sockets; server.listen is not used");
    }
    let metrics = match settings.metrics.addr().map(Metrics::serve).transpose() {
        Ok(metrics) => metrics.unwrap_or_default(),
        Err(error) => return fail(EX_UNAVAILABLE, &error.into()),
    };
    let options = Options {
        exit_when_idle: cli.exit_when_idle.map(Duration::from_secs),
        reload: Some(ReloadSources { sources, log: Some(log) }),
        metrics,
    };
    match app::run(&settings, sockets, options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = match error {
                RunError::Listen(_) => EX_UNAVAILABLE,
                RunError::Answers(_) => EX_CONFIG,
                RunError::Runtime { .. } => 1,
            };
            fail(code, &error.into())
        }
    }
}

/// The settings, and the layers they came from (kept for reloads).
fn load_settings(cli: &ServerCli, named_by: &'static str) -> anyhow::Result<(Settings, Sources)> {
    let file = cli.config.clone().map(|path| ConfigFile { path, named_by });
    let sources = Sources::from_process(file, cli.overrides()?)?;
    Ok((Settings::load(&sources)?, sources))
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
        bail!("{flag}: the service manager passed listening sockets too (LISTEN_FDS); use one or the other");
    }
    if cli.inetd {
        if settings.log.output == LogOutput::Stdout {
            bail!("--inetd: log.output is \"stdout\", which is the client's connection in this mode; use \"stderr\"");
        }
        return Ok(Some(Sockets::Connection(inherit::connection_on_stdin()?)));
    }
    if let Some(fd) = cli.listen_fd {
        return Ok(Some(Sockets::Listeners(vec![Listener::inherited(inherit::listener_on(fd)?, settings)])));
    }
    let activated: Vec<Listener> = activated.into_iter().map(|socket| Listener::inherited(socket, settings)).collect();
    Ok((!activated.is_empty()).then_some(Sockets::Listeners(activated)))
}

/// Reports `error` on one line of standard error and returns `code`.
///
/// Every error's own message already says everything (layer, key, value, cause), so only the
/// outermost one is printed, never the chain of causes it repeats.
fn fail(code: u8, error: &anyhow::Error) -> ExitCode {
    eprintln!("zen-server: {error}");
    ExitCode::from(code)
}
