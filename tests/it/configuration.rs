//! Settings layers, `check-config`, and start-up failures as an operator sees them.

use std::{collections::BTreeSet, net::TcpListener};

use clap::CommandFactory;
use zen_server::cli::ServerCli;

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
    assert!(stdout.starts_with("# effective zen-server settings (entries in oracle.answers: 1)"), "{stdout}");
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

/// A settings file that is not there: a command line the server accepts then exits 78 naming
/// it, before it binds or takes anything, and one it refuses exits 2.
const MISSING_FILE: &str = "/nonexistent/zen-server-usage.toml";

/// The words that give `arg` on a command line, with a value of its kind.
fn words_of(arg: &clap::Arg) -> Vec<String> {
    let value = match arg.get_action().takes_values() {
        true => arg.get_value_names().and_then(|names| names.first()).map(|name| fill(name.as_str())),
        false => None,
    };
    match (arg.get_long(), value) {
        (None, Some(value)) => vec![value],
        (Some(long), Some(value)) => vec![format!("--{long}"), value],
        (Some(long), None) => vec![format!("--{long}")],
        (None, None) => panic!("{}: neither a flag nor a value", arg.get_id()),
    }
}

/// A value for the placeholder `name` of a usage line.
fn fill(name: &str) -> String {
    match name {
        "HOST" => "127.0.0.1",
        "PORT" => "2060",
        "ADDR" => "127.0.0.1:2060",
        "FD" => "0",
        "SECS" => "8",
        "FILE" => MISSING_FILE,
        word => word,
    }
    .to_owned()
}

/// How the error names `arg`: clap shows HOST as `[HOST]` and -p as `--port <PORT>`.
fn named(arg: &clap::Arg) -> String {
    arg.get_long().map_or_else(|| arg.get_id().as_str().to_uppercase(), |long| format!("--{long}"))
}

/// Every command line made of two arguments clap is told conflict (the global ones also after
/// `check-config`, and on both sides of it), and of each serving argument `check-config`
/// does not take, given before it; each with the names its error must give.
fn conflicting_command_lines() -> Vec<(Vec<String>, [String; 2])> {
    let mut command = ServerCli::command();
    command.build();
    let check_config = command.find_subcommand("check-config").expect("the check-config command");
    let takes: BTreeSet<&str> = check_config.get_arguments().map(|arg| arg.get_id().as_str()).collect();
    let own = |arg: &&clap::Arg| !["help", "version"].contains(&arg.get_id().as_str());
    let mut pairs = BTreeSet::new();
    for arg in command.get_arguments().filter(own) {
        for other in command.get_arg_conflicts_with(arg) {
            let mut pair = [arg.get_id().as_str(), other.get_id().as_str()];
            pair.sort_unstable();
            pairs.insert(pair);
        }
    }
    let arg = |id: &str| command.get_arguments().find(|arg| arg.get_id() == id).unwrap();
    let mut lines = Vec::new();
    for [a, b] in pairs {
        let (a, b) = (arg(a), arg(b));
        let names = [named(a), named(b)];
        lines.push(([words_of(a), words_of(b)].concat(), names.clone()));
        if takes.contains(a.get_id().as_str()) && takes.contains(b.get_id().as_str()) {
            let command = vec!["check-config".to_owned()];
            lines.push(([command.clone(), words_of(a), words_of(b)].concat(), names.clone()));
            lines.push(([words_of(a), command.clone(), words_of(b)].concat(), names.clone()));
            lines.push(([words_of(b), command, words_of(a)].concat(), names.clone()));
        }
    }
    for serving in command.get_arguments().filter(own).filter(|arg| !takes.contains(arg.get_id().as_str())) {
        lines.push((
            [words_of(serving), vec!["check-config".to_owned()]].concat(),
            [named(serving), "check-config".into()],
        ));
    }
    lines
}

/// Every command a usage line describes: each optional part (`[-p PORT]`, `[--listen
/// ADDR]...`) left out or given once, each placeholder filled; clap's catch-alls (`[OPTIONS]`,
/// `[COMMAND]`) stand for nothing in particular and are left out.
fn commands_of_usage(line: &str) -> Vec<Vec<String>> {
    let mut rest = line.trim().strip_prefix("zen-server").unwrap_or_else(|| panic!("not a usage line: {line:?}"));
    let mut parts: Vec<(bool, Vec<String>)> = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let (optional, part, after) = match rest.strip_prefix('[') {
            Some(inside) => {
                let (part, after) = inside.split_once(']').unwrap_or_else(|| panic!("unclosed [ in {line:?}"));
                (true, part, after.trim_start_matches("..."))
            }
            None => {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                (false, rest[..end].trim_end_matches("..."), &rest[end..])
            }
        };
        rest = after;
        if !(optional && ["OPTIONS", "COMMAND"].contains(&part)) {
            let words = part.split_whitespace().map(|word| fill(word.trim_start_matches('<').trim_end_matches('>')));
            parts.push((optional, words.collect()));
        }
    }
    let mut commands = vec![Vec::new()];
    for (optional, words) in parts {
        let given = commands.iter().map(|command| [command.clone(), words.clone()].concat());
        commands = match optional {
            true => commands.clone().into_iter().chain(given).collect(),
            false => given.collect(),
        };
    }
    commands
}

#[test]
fn every_conflict_exits_2_with_one_error_line_naming_both_and_usage_lines_each_of_which_is_accepted() {
    let lines = conflicting_command_lines();
    assert!(lines.len() >= 15, "only {} conflicting command lines: {lines:?}", lines.len());
    let mut usage_lines = BTreeSet::new();
    for (args, names) in &lines {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Were it accepted, the missing file would stop it before it serves.
        let (status, _, stderr) = run_server(&args, &[("ZEN_CONFIG", MISSING_FILE)]);
        assert_eq!(status.code(), Some(2), "{args:?} is a command-line mistake:\n{stderr}");
        let (usage, others): (Vec<&str>, Vec<&str>) = stderr
            .lines()
            .filter(|line| !line.trim().is_empty() && *line != "For more information, try '--help'.")
            .partition(|line| line.starts_with("Usage: ") || line.starts_with("       zen-server"));
        let [error] = others[..] else { panic!("{args:?}: one error line expected:\n{stderr}") };
        assert!(error.starts_with("error: "), "{args:?}:\n{stderr}");
        for name in names {
            assert!(error.contains(name.as_str()), "{args:?}: {name} missing from {error:?}");
        }
        assert!(!usage.is_empty(), "{args:?}: no usage line:\n{stderr}");
        usage_lines.extend(usage.iter().map(|line| line.trim_start_matches("Usage: ").trim().to_owned()));
    }
    let documented = std::fs::read_to_string("docs/deployment.md").unwrap();
    for usage in &usage_lines {
        assert!(documented.lines().any(|line| line == usage), "`{usage}` is not in docs/deployment.md's command lines");
        for command in commands_of_usage(usage) {
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            let (status, _, stderr) = run_server(&args, &[("ZEN_CONFIG", MISSING_FILE)]);
            assert!(
                status.code() == Some(EX_CONFIG) && stderr.contains(MISSING_FILE),
                "the usage line `{usage}` shows `zen-server {}`, which is refused ({status}):\n{stderr}",
                args.join(" ")
            );
        }
    }
}

#[test]
fn the_default_workers_are_one_per_usable_cpu_but_one_and_an_explicit_count_is_kept() {
    let listening = |launch: Launch| {
        let server = ZenServer::launch(launch);
        server.wait_for_log(&["listening"], crate::helpers::DEADLINE).expect("a listening line")
    };
    let cpus = std::thread::available_parallelism().unwrap().get();
    let line = listening(Launch::args(&["--listen", "127.0.0.1:0"]));
    assert!(line.contains(&format!(" workers={} cpus={cpus} ", cpus.saturating_sub(1).max(1))), "{line}");
    // The affinity mask counts: one CPU, one worker.
    let pinned = || Launch::args(&["--listen", "127.0.0.1:0"]).wrapper(&["taskset", "-c", "0"]);
    let line = listening(pinned());
    assert!(line.contains(" workers=1 cpus=1 "), "{line}");
    // An operator's count is never changed.
    let line = listening(pinned().env("ZEN_SERVER__WORKERS", "3"));
    assert!(line.contains(" workers=3 cpus=1 "), "{line}");
}
