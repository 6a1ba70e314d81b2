//! `zen-client`: ask a Zen server questions, probe it for health, or load it ([`bench`](mod@bench)).
//!
//! This file only parses the command line ([`cli`]), builds a runtime, runs the command and
//! turns its outcome into an exit code: 0 on success, 1 when the server fails to answer (or
//! answers wrongly, for `probe`, or any answer of a `bench` was wrong or missing), 2 for a bad
//! command line. Errors are one line on standard error, naming the address when the server
//! cannot be reached.

mod bench;
mod cli;
mod procfs;

use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::CommandFactory;
use zen_server::{
    Question,
    client::{self, Probe, Target, TlsClient, Trust},
    config::{ConfigError, ConfigFile, Overrides, Settings, Sources},
};

use crate::{
    bench::BenchConfig,
    cli::{ClientCli, ClientCommand, TlsArgs},
};

fn main() -> ExitCode {
    if let Err(error) = ConfigError::check_config_var() {
        eprintln!("zen-client: {error}");
        return ExitCode::from(2);
    }
    // Exits 2 on a bad command line, 0 after --help.
    let cli = ClientCli::parse_or_exit();
    if let ClientCommand::Bench { conns, rate: Some(rate), .. } = &cli.command
        && let Err(error) = bench::pacing_interval(*conns, *rate)
    {
        ClientCli::command().error(clap::error::ErrorKind::ValueValidation, error).exit();
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Each error's own message says everything, causes included.
            eprintln!("zen-client: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: ClientCommand) -> anyhow::Result<()> {
    // The benchmark spreads its connections over every CPU it may use.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = match command {
        ClientCommand::Bench { .. } if cpus > 1 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    let runtime = runtime.map_err(|error| anyhow!("cannot start runtime: {error}"))?;
    runtime.block_on(dispatch(command))
}

/// The target `addr` with the command line's PROXY header and TLS flags.
fn target(addr: String, proxy_header: bool, tls: &TlsArgs) -> anyhow::Result<Target> {
    let tls = match tls.tls {
        true => Some(TlsClient::new(&tls.options(Trust::System), &addr)?),
        false => None,
    };
    Ok(Target { addr, proxy_header, tls })
}

/// The target and question of a probe that follows the server's own settings.
fn target_from_settings(
    config: Option<std::path::PathBuf>,
    proxy_header: bool,
    tls: &TlsArgs,
) -> anyhow::Result<(Target, Probe)> {
    let file = config.map(|path| ConfigFile { path, named_by: "--config or ZEN_CONFIG" });
    let settings = Settings::load_without_tls_files(&Sources::from_process(file, Overrides::default())?)
        .map_err(|error| anyhow!("the server's settings: {error}"))?;
    let (addr, probe) = Probe::for_settings(&settings, proxy_header, tls.tls);
    let Some((addr, kind)) = addr else {
        let keys = match (proxy_header, tls.tls) {
            (true, true) => "tls.proxy_listen",
            (true, false) => "proxy.listen or tls.proxy_listen",
            (false, true) => "tls.listen",
            (false, false) => "server.listen or tls.listen",
        };
        bail!("the server's settings list no address in {keys}");
    };
    let addr = addr.to_string();
    let tls = match kind.tls {
        false => None,
        true => {
            let server = &settings.tls;
            if !server.client_ca_file.0.is_empty() && tls.cert.is_none() {
                bail!(
                    "the server asks TLS clients for a certificate (tls.client_ca_file {:?}): give --cert and --key",
                    server.client_ca_file.0
                );
            }
            let options = tls.options(Trust::Certificate(server.cert_file.0.clone().into()));
            Some(TlsClient::new(&options, &addr)?)
        }
    };
    Ok((Target { addr, proxy_header, tls }, probe))
}

async fn dispatch(command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Ask { addr, proxy_header, tls, timeout, questions } => {
            let questions: Vec<Question> = questions.into_iter().flatten().collect();
            let answers = client::ask(&target(addr, proxy_header, &tls)?, &questions, timeout).await?;
            for (question, answer) in questions.iter().zip(&answers) {
                println!("{question} {answer}");
            }
        }
        ClientCommand::Probe { addr: Some(addr), timeout, proxy_header, tls, .. } => {
            client::probe(&target(addr, proxy_header, &tls)?, &Probe::book(), timeout).await?;
        }
        ClientCommand::Probe { addr: None, config, timeout, proxy_header, tls } => {
            let (target, probe) = target_from_settings(config, proxy_header, &tls)?;
            client::probe(&target, &probe, timeout).await?;
        }
        ClientCommand::Bench {
            addr,
            mode,
            protocol,
            conns,
            depth,
            duration,
            warmup,
            rate,
            hold,
            server_pid,
            json,
            tls,
        } => {
            // A host name is looked up here, once, and a failure to connect or to complete a TLS
            // handshake said as `ask` says it, before any load. The load then goes to the
            // address reached, spread over loopback source addresses if it is one.
            let target = target(addr, false, &tls)?;
            let addr = client::reach(&target, bench::EXCHANGE_TIMEOUT).await?;
            let config = BenchConfig {
                addr,
                tls: target.tls,
                protocol,
                mode,
                conns,
                depth,
                duration,
                warmup,
                rate,
                hold,
                server_pids: server_pid,
                progress: true,
            };
            let report = bench::run(&config).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            if report.errors > 0 {
                bail!("{} errors", report.errors);
            }
        }
    }
    Ok(())
}
