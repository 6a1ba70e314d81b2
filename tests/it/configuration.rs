//! Settings layers, `check-config`, and start-up failures as an operator sees them.

use std::net::TcpListener;

use crate::helpers::{Launch, TempConfig, ZenServer, ask_like_the_book, connect, run_server};

const EX_CONFIG: i32 = 78;
const EX_UNAVAILABLE: i32 = 69;

/// A file that would make the server unusable if later layers did not override it.
const LAYERED_FILE: &str = r#"
[server]
listen = ["192.0.2.1:1060"]
workers = 1
backlog = 33
[log]
level = "warn"
[oracle]
answers = [{ question = "Why?", answer = "Because." }]
"#;

#[test]
fn file_then_environment_then_flags_each_win_over_the_layer_before() {
    let file = TempConfig::new(LAYERED_FILE);
    let (status, stdout, stderr) = run_server(
        &["check-config", "--config", file.path(), "--listen", "127.0.0.1:7000"],
        &[("ZEN_LOG__LEVEL", "info"), ("ZEN_SERVER__WORKERS", "3")],
    );
    assert!(status.success(), "{stderr}");
    let settings: toml::Table = toml::from_str(&stdout).unwrap_or_else(|error| panic!("{error}:\n{stdout}"));
    let value = |section: &str, key: &str| settings[section][key].clone();
    assert_eq!(value("server", "backlog"), toml::Value::Integer(33), "from the file:\n{stdout}");
    assert_eq!(value("server", "workers"), toml::Value::Integer(3), "from the environment:\n{stdout}");
    assert_eq!(value("log", "level"), toml::Value::from("info"), "from the environment:\n{stdout}");
    assert_eq!(value("server", "listen"), toml::Value::from(vec!["127.0.0.1:7000"]), "from the flags:\n{stdout}");
    let answers = value("oracle", "answers");
    let questions: Vec<&str> =
        answers.as_array().unwrap().iter().map(|entry| entry["question"].as_str().unwrap()).collect();
    assert_eq!(questions, ["Why?"], "from the file:\n{stdout}");
    assert!(!stdout.contains("Beautiful"), "the file's answers replace the built-in ones:\n{stdout}");
}

#[test]
fn a_running_server_uses_every_layer() {
    let file = TempConfig::new(LAYERED_FILE);
    // The file's log level (warn) would hide the `listening` event the harness waits for.
    let server = ZenServer::launch(
        Launch::args(&["--config", file.path(), "--listen", "127.0.0.1:0"]).env("ZEN_LOG__LEVEL", "info"),
    );
    let mut stream = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut stream, b"Why?"), b"Because.");
    assert_eq!(ask_like_the_book(&mut stream, b"Beautiful is better than?"), b"Error: unknown aphorism.");
    assert!(server.wait_for_log(&["listening", "workers=1"], crate::helpers::DEADLINE).is_some());
}

#[test]
fn the_config_file_can_come_from_zen_config() {
    let file = TempConfig::new("[server]\nbacklog = 77\n");
    let (status, stdout, stderr) = run_server(&["check-config"], &[("ZEN_CONFIG", file.path())]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("backlog = 77"), "{stdout}");
}

#[test]
fn check_config_with_defaults_prints_the_documented_defaults() {
    let (status, stdout, _) = run_server(&["check-config"], &[]);
    assert!(status.success());
    let printed: toml::Table = stdout.parse().unwrap_or_else(|error| panic!("{error}:\n{stdout}"));
    let file = std::fs::read_to_string("config/zen-server.toml").unwrap();
    let documented: toml::Table = file.parse().unwrap();
    for (section, values) in &documented {
        assert_eq!(printed.get(section), Some(values), "[{section}] printed otherwise than documented:\n{stdout}");
    }
    let sections = |table: &toml::Table| table.keys().cloned().collect::<std::collections::BTreeSet<_>>();
    assert_eq!(sections(&printed), sections(&documented), "the sections");
}

fn assert_config_error(args: &[&str], env: &[(&str, &str)], names: &[&str]) {
    let (status, _, stderr) = run_server(args, env);
    assert_eq!(status.code(), Some(EX_CONFIG), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line expected:\n{stderr}");
    for name in names {
        assert!(stderr.contains(name), "{name} missing from: {stderr}");
    }
}

#[test]
fn an_unknown_key_exits_78_naming_it() {
    let file = TempConfig::new("[server]\nworker = 2\n");
    assert_config_error(&["--config", file.path()], &[], &["worker", "server"]);
}

#[test]
fn a_wrong_type_exits_78_naming_the_key_and_file() {
    let file = TempConfig::new("[server]\nworkers = \"many\"\n");
    let file_name = file.0.file_name().unwrap().to_str().unwrap().to_owned();
    assert_config_error(&["--config", file.path()], &[], &["server.workers", &file_name]);
}

#[test]
fn a_toml_syntax_error_exits_78_on_one_line_with_its_position() {
    let file = TempConfig::new("[server\nworkers = 1\n");
    assert_config_error(&["check-config", "--config", file.path()], &[], &["line 1"]);
}

#[test]
fn a_bad_environment_value_exits_78_naming_the_key() {
    assert_config_error(&[], &[("ZEN_SERVER__WORKERS", "lots")], &["server.workers", "environment"]);
}

#[test]
fn an_unparsable_address_exits_78_naming_it() {
    assert_config_error(&[], &[("ZEN_SERVER__LISTEN", "127.0.0.1:1060,nowhere")], &["server.listen[1]"]);
    assert_config_error(&["--listen", "127.0.0.1"], &[], &["--listen", "127.0.0.1"]);
}

#[test]
fn an_answer_table_breaking_the_rules_exits_78_naming_the_entry() {
    let file = TempConfig::new("[oracle]\nanswers = [{ question = \"Why?\", answer = \"Be. Cause.\" }]\n");
    assert_config_error(&["--config", file.path()], &[], &["oracle.answers", "entry 0", "Be. Cause."]);
}

#[test]
fn a_missing_config_file_exits_78_naming_it() {
    assert_config_error(&["--config", "/nonexistent/zen.toml"], &[], &["/nonexistent/zen.toml"]);
}

#[test]
fn a_port_in_use_exits_69_with_one_line_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, _, stderr) = run_server(&["--listen", &addr], &[]);
    assert_eq!(status.code(), Some(EX_UNAVAILABLE), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_host_that_does_not_resolve_exits_69_with_one_line_naming_it() {
    // A name lookup that fails may succeed later (the resolver was not up yet at boot): a
    // supervisor is to try again, which 78 would forbid.
    let (status, _, stderr) = run_server(&["no-such-host.invalid", "-p", "0"], &[]);
    assert_eq!(status.code(), Some(EX_UNAVAILABLE), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot resolve HOST \"no-such-host.invalid\""), "{stderr}");
}

#[test]
fn the_books_host_and_port_arguments_work() {
    let server = ZenServer::launch(Launch::args(&["127.0.0.1", "-p", "0"]));
    assert!(server.addr().ip().is_loopback());
    let mut stream = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut stream, b"Simple is better than?"), b"Complex.");

    let everywhere = ZenServer::launch(Launch::args(&["", "-p", "0"]));
    assert!(everywhere.addr().ip().is_unspecified());
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], everywhere.addr().port()));
    assert_eq!(ask_like_the_book(&mut connect(local), b"Simple is better than?"), b"Complex.");
}

#[test]
fn ipv4_and_ipv6_listeners_both_answer() {
    let server = ZenServer::launch(Launch::args(&["--listen", "127.0.0.1:0", "--listen", "[::1]:0"]).listeners(2));
    assert!(server.addrs.iter().any(|a| a.is_ipv4()) && server.addrs.iter().any(|a| a.is_ipv6()));
    for &addr in &server.addrs {
        assert_eq!(ask_like_the_book(&mut connect(addr), b"Explicit is better than?"), b"Implicit.");
    }
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    let server = ZenServer::launch(Launch::args(&["--listen", "127.0.0.1:0"]).env("ZEN_LOG__FORMAT", "json"));
    drop(connect(server.addr()));
    let line = server.wait_for_log(&["\"message\":\"connection closed\""], crate::helpers::DEADLINE);
    let line = line.unwrap_or_else(|| panic!("log:\n{}", server.log()));
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains("\"answers\":0") && line.contains("\"peer\":\"127.0.0.1:"), "{line}");
    assert!(server.log().lines().all(|l| l.starts_with('{')), "{}", server.log());
}

#[test]
fn a_port_with_listen_host_with_listen_a_host_with_a_port_or_a_misspelt_command_exits_2() {
    for (args, says) in [
        (&["-p", "30100", "--listen", "127.0.0.1:30101"][..], "--listen"),
        (&["127.0.0.1", "--listen", "127.0.0.1:30101"], "--listen"),
        (&["127.0.0.1:30100"], "HOST takes no port"),
        (&["check"], "is not a command (the commands are: check-config)"),
    ] {
        let (status, _, stderr) = run_server(args, &[]);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {says} missing from {stderr}");
    }
}

#[test]
fn a_port_that_makes_two_configured_addresses_equal_is_blamed_on_the_port() {
    let file = TempConfig::new("[server]\nlisten = [\"127.0.0.1:30101\", \"127.0.0.1:30102\"]\n");
    assert_config_error(
        &["check-config", "--config", file.path(), "-p", "30100"],
        &[],
        &["-p 30100 gave the same port to the addresses of server.listen in", file.path(), "127.0.0.1:30101"],
    );
}

#[test]
fn metrics_on_a_listening_address_is_a_settings_error_naming_both_keys() {
    let file = TempConfig::new("[server]\nlisten = [\"127.0.0.1:30103\"]\n[metrics]\nlisten = \"127.0.0.1:30103\"\n");
    assert_config_error(
        &["check-config", "--config", file.path()],
        &[],
        &["metrics.listen", "server.listen", file.path()],
    );
}

#[test]
fn an_empty_config_variable_is_named() {
    let (status, _, stderr) = run_server(&["check-config"], &[("ZEN_CONFIG", "")]);
    assert_eq!(status.code(), Some(EX_CONFIG), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "zen-server: ZEN_CONFIG is set but empty: set it to the path of a settings file, or unset it"
    );
}

#[test]
fn of_several_mistakes_the_first_in_the_documented_order_is_reported() {
    let file = TempConfig::new("[server]\nworkers = 2.5\nbacklog = -1\n[limits]\nmax_connections = 0\n");
    assert_config_error(&["check-config", "--config", file.path()], &[], &["server.workers = 2.5"]);
    let file = TempConfig::new("[limits]\nmax_connections = 0\n[server]\nbacklog = -1\n");
    assert_config_error(&["check-config", "--config", file.path()], &[], &["server.backlog = -1"]);
    // Whatever the layer: the environment's mistake comes first here.
    let env = [("ZEN_SERVER__WORKERS", "x")];
    assert_config_error(
        &["check-config", "--config", file.path()],
        &env,
        &["server.workers = \"x\"", "ZEN_SERVER__WORKERS"],
    );
}

#[test]
fn a_number_too_large_and_bytes_that_are_not_utf_8_name_their_line() {
    let file = TempConfig::new("[server]\nworkers = 99999999999999999999\n");
    assert_config_error(&["check-config", "--config", file.path()], &[], &[file.path(), "line 2", "workers ="]);
    let file = TempConfig::new("");
    std::fs::write(&file.0, b"[server]\nworkers = 2\n# caf\xe9\n").unwrap();
    assert_config_error(&["check-config", "--config", file.path()], &[], &[file.path(), "line 3", "UTF-8"]);
}

#[test]
fn an_answer_breaking_the_rules_is_named_with_its_question() {
    let file = TempConfig::new(
        "[oracle]\nanswers = [{ question = \"A?\", answer = \"B.\" }, { question = \"Why?\", answer = \"Be. Cause.\" }]\n",
    );
    assert_config_error(&["check-config", "--config", file.path()], &[], &["question \"Why?\"", "Be. Cause."]);
}

#[test]
fn check_config_prints_the_warnings_the_server_would_log_and_still_exits_0() {
    let file = TempConfig::new("[oracle]\nanswers = [{ question = \"Why?\", answer = \"Because.\" }]\n");
    let env = [("ZEN_TLS__CERT_FILE", "/etc/zen/cert.pem"), ("ZEN_PORT", "tcp://10.0.0.1:1060")];
    let (status, stdout, stderr) = run_server(&["check-config", "--config", file.path()], &env);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stdout.starts_with("# effective zen-server settings (oracle.answers has 1 entries)"), "{stdout}");
    let warnings: Vec<&str> = stderr.lines().collect();
    assert_eq!(warnings.len(), 3, "{stderr}");
    assert!(warnings.iter().all(|line| line.starts_with("zen-server: warning: ")), "{stderr}");
    assert!(warnings[0].contains("links to a service") && warnings[0].ends_with("ZEN_PORT"), "{stderr}");
    assert!(warnings[1].contains(&format!("oracle.answers in {} replaces the whole built-in table (", file.path())));
    assert!(warnings[1].contains("entries) with its 1"), "{stderr}");
    assert!(warnings[2].starts_with(
        "zen-server: warning: tls.cert_file is set in environment variable ZEN_TLS__CERT_FILE but no TLS listener is"
    ));
    // The server logs the same, once each, at warn.
    let server = ZenServer::launch(
        env.iter().fold(Launch::args(&["--config", file.path(), "--listen", "127.0.0.1:0"]), |l, (k, v)| l.env(k, v)),
    );
    for warning in &warnings {
        let text = warning.trim_start_matches("zen-server: warning: ");
        assert_eq!(
            server.log().lines().filter(|line| line.contains("WARN") && line.contains(text)).count(),
            1,
            "{text}:\n{}",
            server.log()
        );
    }
}

#[test]
fn a_port_out_of_range_in_the_file_says_so_as_the_command_line_does() {
    let file = TempConfig::new("[server]\nlisten = [\"127.0.0.1:99999\"]\n");
    assert_config_error(
        &["check-config", "--config", file.path()],
        &[],
        &["server.listen[0] = \"127.0.0.1:99999\"", file.path(), "port 99999 is out of range"],
    );
    assert_config_error(
        &["check-config", "--listen", "127.0.0.1:99999"],
        &[],
        &["--listen", "port 99999 is out of range"],
    );
}
