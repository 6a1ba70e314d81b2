//! `zen-server`: parse the command line, load settings, set up logging, serve.
//!
//! Exit codes: 0 after a clean shutdown, 78 (EX_CONFIG) for bad settings, 69
//! (EX_UNAVAILABLE) when an address cannot be listened on, 1 for anything else; 130 or 143
//! when a second SIGINT or SIGTERM cut a drain short.

use std::process::ExitCode;

use clap::Parser;
use zen_server::{
    app::{self, RunError},
    cli::{ServerCli, ServerCommand},
    config::{Settings, Sources},
    telemetry,
};

const EX_CONFIG: u8 = 78;
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let cli = ServerCli::parse();
    let settings = match load_settings(&cli) {
        Ok(settings) => settings,
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
    if let Err(error) = telemetry::init(&settings.log) {
        return fail(EX_CONFIG, &error.into());
    }
    match app::run(&settings) {
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

fn load_settings(cli: &ServerCli) -> anyhow::Result<Settings> {
    let sources = Sources::from_process(cli.config.clone(), cli.overrides()?)?;
    Ok(Settings::load(&sources)?)
}

/// Reports `error` on one line of standard error and returns `code`.
///
/// Every error's own message already says everything (key, file, address, cause), so only
/// the outermost one is printed, never the chain of causes it repeats.
fn fail(code: u8, error: &anyhow::Error) -> ExitCode {
    let message = error.to_string();
    let one_line: Vec<&str> = message.lines().map(str::trim).filter(|line| !is_source_excerpt(line)).collect();
    eprintln!("zen-server: {}", one_line.join(" "));
    ExitCode::from(code)
}

/// TOML syntax errors quote the offending line with a gutter (`1 | ...`, `  |   ^`); the line
/// and column are already in the message.
fn is_source_excerpt(line: &str) -> bool {
    line.is_empty() || line.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start().starts_with('|')
}
