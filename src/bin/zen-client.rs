//! `zen-client`: ask a Zen server questions, or probe it for health.
//!
//! Exit codes: 0 on success, 1 when the server fails to answer (or answers wrongly, for
//! `probe`, or any answer of a `bench` was wrong or missing), 2 for a bad command line.

use std::process::ExitCode;

use clap::Parser;
use zen_server::{
    Question,
    bench::{self, BenchConfig},
    cli::{ClientCli, ClientCommand},
    client,
};

fn main() -> ExitCode {
    let cli = ClientCli::parse();
    // The benchmark spreads its connections over every CPU it may use.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = match &cli.command {
        ClientCommand::Bench { .. } if cpus > 1 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("zen-client: cannot start runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), Box<dyn std::error::Error>> = runtime.block_on(async {
        match cli.command {
            ClientCommand::Ask { addr, timeout, questions } => {
                let questions: Vec<Question> = questions.into_iter().map(Question::new).collect();
                let answers = client::ask(addr.as_str(), &questions, timeout).await?;
                for (question, answer) in questions.iter().zip(&answers) {
                    println!("{question} {answer}");
                }
                Ok(())
            }
            ClientCommand::Probe { addr, timeout } => client::probe(addr.as_str(), timeout).await.map_err(Into::into),
            ClientCommand::Bench { addr, mode, conns, depth, duration, warmup, rate, hold, server_pid, json } => {
                let config = BenchConfig {
                    addr,
                    mode: mode.into(),
                    conns,
                    depth,
                    duration,
                    warmup,
                    rate,
                    hold,
                    server_pid,
                    progress: true,
                };
                let report = bench::run(&config).await?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    print!("{}", report.to_text());
                }
                if report.errors > 0 {
                    return Err(format!("{} errors", report.errors).into());
                }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("zen-client: {error}");
            ExitCode::FAILURE
        }
    }
}
