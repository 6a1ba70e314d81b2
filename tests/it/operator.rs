//! The operator's contract, through the real binaries: every mistake in a settings layer is one
//! line naming the layer, the key and the value, with exit 78; command-line mistakes exit 2;
//! what each exit code means holds; and the health probe follows the server's own settings.

use std::{
    os::unix::fs::FileTypeExt,
    process::{Command, Output},
};

use nix::sys::signal::Signal;

use crate::helpers::{DEADLINE, Launch, TempConfig, TempDir, ZenServer, ask_like_the_book, connect, run_server};

const EX_CONFIG: i32 = 78;
const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_zen-client");

/// Runs the server, which must refuse with exit 78 and exactly `expected` on standard error.
fn refused_with(args: &[&str], env: &[(&str, &str)], expected: &str) {
    let (status, _, stderr) = run_server(args, env);
    assert_eq!(status.code(), Some(EX_CONFIG), "{stderr}");
    assert_eq!(stderr.trim_end(), format!("zen-server: {expected}"));
}

/// Runs the server, which must refuse with exit 78 and one line containing every one of
/// `parts`.
fn refused_naming(args: &[&str], env: &[(&str, &str)], parts: &[&str]) -> String {
    let (status, _, stderr) = run_server(args, env);
    assert_eq!(status.code(), Some(EX_CONFIG), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line expected:\n{stderr}");
    for part in parts {
        assert!(stderr.contains(part), "{part} missing from: {stderr}");
    }
    stderr
}

#[test]
fn a_fraction_for_a_whole_number_is_refused_in_a_file_and_in_a_variable() {
    let file = TempConfig::new("[server]\nworkers = 2.5\n");
    refused_with(
        &["--config", file.path()],
        &[],
        &format!("invalid server.workers = 2.5 in {}: expected a whole number", file.path()),
    );
    refused_with(
        &[],
        &[("ZEN_SERVER__SHUTDOWN_TIMEOUT_SECS", "1.5")],
        "invalid server.shutdown_timeout_secs = \"1.5\" in environment variable ZEN_SERVER__SHUTDOWN_TIMEOUT_SECS: expected a whole number",
    );
}

#[test]
fn a_log_level_that_would_silence_everything_is_refused() {
    for level in ["verbose", "inof"] {
        refused_naming(
            &[],
            &[("ZEN_LOG__LEVEL", level)],
            &["log.level", &format!("{level:?}"), "ZEN_LOG__LEVEL", "expected a level"],
        );
    }
}

#[test]
fn a_log_format_is_read_in_any_case_and_a_wrong_one_lists_the_right_ones() {
    let file = TempConfig::new("[log]\nformat = \"xml\"\n");
    let stderr = refused_naming(
        &["--config", file.path()],
        &[],
        &["log.format", "\"xml\"", file.path(), "\"text\" or \"json\""],
    );
    assert!(!stderr.contains("enum") && !stderr.contains("variant"), "{stderr}");
    let server = ZenServer::launch(Launch::with_env(&[("ZEN_LOG__FORMAT", "JSON")]));
    assert!(server.log().lines().all(|line| line.starts_with('{')), "log:\n{}", server.log());
}

#[test]
fn a_bad_listen_entry_names_the_layer_the_key_and_the_value_and_spaces_after_commas_are_fine() {
    let file = TempConfig::new("[server]\nlisten = [\"127.0.0.1:1060\", \"nowhere:1060\"]\n");
    refused_naming(&["--config", file.path()], &[], &["server.listen[1]", "\"nowhere:1060\"", file.path()]);
    refused_naming(
        &[],
        &[("ZEN_SERVER__LISTEN", "127.0.0.1:0,nowhere")],
        &["server.listen[1]", "\"nowhere\"", "ZEN_SERVER__LISTEN"],
    );
    let server = ZenServer::launch(Launch::args(&[]).env("ZEN_SERVER__LISTEN", "127.0.0.1:0, [::1]:0").listeners(2));
    assert_eq!(server.addrs.len(), 2);
}

#[test]
fn an_unknown_key_or_variable_is_named_with_where_it_is() {
    let file = TempConfig::new("[server]\nworkerz = 2\n");
    refused_naming(&["--config", file.path()], &[], &["unknown key server.workerz", file.path(), "workers"]);
    // What zen-client's help once offered: it is not a setting, and the error says what is.
    refused_naming(
        &[],
        &[("ZEN_ADDR", "127.0.0.1:1060")],
        &["unknown environment variable ZEN_ADDR", "ZEN_<SECTION>__<KEY>"],
    );
}

#[test]
fn a_config_path_that_is_no_settings_file_says_what_it_is() {
    let dir = TempDir::new("config-dir");
    let dir_path = dir.path().to_str().unwrap();
    refused_with(&["--config", dir_path], &[], &format!("--config {dir_path}: is a directory, not a settings file"));
    refused_naming(&["--config", "/dev/null"], &[], &["--config /dev/null: is not a regular file"]);
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    refused_naming(&[], &[("ZEN_CONFIG", fifo.to_str().unwrap())], &["ZEN_CONFIG ", "is not a regular file"]);
}

#[test]
fn an_empty_table_a_repeated_address_and_an_unaskable_fault_question_are_settings_errors() {
    let file = TempConfig::new("[oracle]\nanswers = []\n");
    refused_naming(&["--config", file.path()], &[], &["oracle.answers", "empty"]);
    refused_naming(
        &["--listen", "127.0.0.1:7061", "--listen", "127.0.0.1:7061"],
        &[],
        &["the command line", "listed twice"],
    );
    refused_naming(&[], &[("ZEN_SERVER__LISTEN", "0.0.0.0:7061,127.0.0.1:7061")], &["ZEN_SERVER__LISTEN", "overlap"]);
    refused_naming(
        &[],
        &[("ZEN_ORACLE__PANIC_QUESTION", "Poison")],
        &["oracle.panic_question", "\"Poison\"", "never trigger"],
    );
}

#[test]
fn command_line_mistakes_exit_2_and_say_what_is_wrong() {
    let (status, _, stderr) = run_server(&["-p", "99999"], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("99999"), "{stderr}");
    let (status, _, stderr) = run_server(&["-p", "1101", "a", "b"], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unexpected argument 'b'"), "{stderr}");
    let (status, _, stderr) = run_server(&["--inetd", "--listen", "127.0.0.1:0"], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
}

#[test]
fn a_drain_that_gives_up_still_exits_0_and_warns_how_many_were_cut_off() {
    let answer = "z".repeat(100_000);
    let file = TempConfig::new(&format!(
        "[server]\nshutdown_timeout_secs = 1\n[oracle]\nanswers = [{{ question = \"Big?\", answer = \"{answer}.\" }}]\n"
    ));
    let mut server = ZenServer::launch(Launch::args(&["--config", file.path(), "--listen", "127.0.0.1:0"]));
    let mut stuck = connect(server.addr());
    std::io::Write::write_all(&mut stuck, &b"Big?".repeat(200)).unwrap();
    // The client reads nothing: 20 MB of answers cannot all leave before the timeout.
    server.wait_until_answers_wait();
    server.signal(Signal::SIGTERM);
    assert_eq!(server.wait_exit(DEADLINE).and_then(|s| s.code()), Some(0), "log:\n{}", server.log());
    let warning = server.log().lines().find(|l| l.contains("shutdown timeout passed")).map(str::to_owned);
    let warning = warning.unwrap_or_else(|| panic!("no warning; log:\n{}", server.log()));
    assert!(warning.contains("WARN") && warning.contains("unfinished=1"), "{warning}");
}

fn zen_client(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(CLIENT_BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ZEN_") {
            command.env_remove(name);
        }
    }
    command.args(args).envs(env.iter().copied()).output().unwrap()
}

#[test]
fn ask_refuses_a_question_without_its_mark_at_once_and_prints_every_answer() {
    let server = ZenServer::start();
    let addr = server.addr().to_string();
    let started = std::time::Instant::now();
    let output = zen_client(&["ask", "--addr", &addr, "Beautiful is better than"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "waited for a timeout");
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not end with '?'"));
    let output = zen_client(&["ask", "--addr", &addr, "Beautiful is better than?Explicit is better than?"], &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "Beautiful is better than? Ugly.\nExplicit is better than? Implicit.\n"
    );
}

#[test]
fn probe_follows_the_servers_settings_file_its_port_and_its_answers() {
    let (server, file, port) = crate::helpers::launch_on_free_port(|port| {
        let file = TempConfig::new(&format!(
            "[server]\nlisten = [\"0.0.0.0:{port}\"]\n[oracle]\nanswers = [{{ question = \"Flat is better than?\", answer = \"Nested.\" }}]\n"
        ));
        (Launch::args(&[]).env("ZEN_CONFIG", file.path()), file)
    });
    let mut client = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut client, b"Flat is better than?"), b"Nested.");
    let output = zen_client(&["probe"], &[("ZEN_CONFIG", file.path())]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    // The book's question is not in this table: a probe by address alone fails, and says why.
    let output = zen_client(&["probe", "--addr", &format!("127.0.0.1:{port}")], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("expected \"Ugly.\""));
    drop(server);
    let output = zen_client(&["probe"], &[("ZEN_CONFIG", file.path())]);
    assert_eq!(output.status.code(), Some(1), "probed a stopped server successfully");
}

#[test]
fn cargo_run_without_bin_runs_zen_server() {
    // Otherwise cargo asks which binary, listing the yardsticks that need a feature.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let output = Command::new(cargo)
        .args(["metadata", "--no-deps", "--offline", "--format-version", "1", "--manifest-path", manifest])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let package = &metadata["packages"][0];
    assert_eq!(package["name"], "zen-server");
    assert_eq!(package["default_run"], "zen-server", "Cargo.toml's default-run");
}
