//! `zen-client`: ask a Zen server questions, or probe it for health.
//!
//! Exit codes: 0 on success, 1 when the server fails to answer (or answers wrongly, for
//! `probe`), 2 for a bad command line.

use std::process::ExitCode;

use clap::Parser;
use zen_server::{
    Question,
    cli::{ClientCli, ClientCommand},
    client,
};

fn main() -> ExitCode {
    let cli = ClientCli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("zen-client: cannot start runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            ClientCommand::Ask { addr, timeout, questions } => {
                let questions: Vec<Question> = questions.into_iter().map(Question::new).collect();
                let answers = client::ask(addr.as_str(), &questions, timeout).await?;
                for (question, answer) in questions.iter().zip(&answers) {
                    println!("{question} {answer}");
                }
                Ok(())
            }
            ClientCommand::Probe { addr, timeout } => client::probe(addr.as_str(), timeout).await,
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
