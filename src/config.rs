//! [`Settings`]: the daemon's configuration, one struct per TOML section, loaded in layers.
//!
//! Layers, later wins: the built-in `config/zen-server.toml` (compiled in), the operator's file,
//! `ZEN_<SECTION>__<KEY>` environment variables, then command-line [`Overrides`]. Loading is a
//! pure function of [`Sources`], so tests inject the environment and reloading can build a
//! whole new `Settings` and swap it in. Unknown keys, wrong types and values that break the
//! protocol's rules are all [`ConfigError`]s naming the key or file.

use std::{collections::HashMap, ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};

use crate::{
    oracle::{AnswerTable, OracleConfig, TableError},
    protocol::Question,
    server::listener::{ConnectionOptions, Keepalive},
    session::SessionConfig,
};

/// The documented defaults, also the lowest configuration layer.
pub const BUILTIN_TOML: &str = include_str!("../config/zen-server.toml");

/// Environment variables with this prefix are settings (`ZEN_SERVER__WORKERS`).
pub const ENV_PREFIX: &str = "ZEN";

/// The environment variable naming the configuration file; not itself a setting.
pub const CONFIG_FILE_VAR: &str = "ZEN_CONFIG";

/// Upper bound on `server.workers`, well above any core count, to catch typos.
pub const MAX_WORKERS: usize = 1024;

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or parsed, a key is unknown or a value has the wrong type.
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    /// A value parsed but is not acceptable.
    #[error("invalid {key}: {reason}")]
    Invalid {
        /// The dotted key, e.g. `log.level`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The answer table breaks the protocol's rules.
    #[error("invalid oracle.answers: {0}")]
    Answers(#[from] TableError),
    /// An environment variable meant as a setting is not valid UTF-8.
    #[error("environment variable {0} is not valid UTF-8")]
    NotUnicode(String),
}

/// Every setting of the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Listening and worker threads.
    pub server: ServerSettings,
    /// What one client may cost the server.
    pub limits: LimitSettings,
    /// Logging.
    pub log: LogSettings,
    /// The answers.
    pub oracle: OracleSettings,
}

/// The `[server]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// Session threads; 0 means one per CPU.
    pub workers: usize,
    /// Queue length of each listening socket.
    pub backlog: u32,
    /// Time clients get to receive their answers once shutdown starts.
    pub shutdown_timeout_secs: u64,
}

impl ServerSettings {
    /// The number of session threads to run: `workers`, or one per CPU when it is 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// `shutdown_timeout_secs` as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

/// The `[limits]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Longest question accepted, `?` included.
    pub max_question_bytes: usize,
    /// A connection completing no question for this long is closed.
    pub idle_timeout_secs: u64,
    /// Connections served at once.
    pub max_connections: u32,
    /// Unsent answer bytes above which a client's questions are no longer read.
    pub max_pending_bytes: usize,
    /// A client reading nothing for this long while answers wait is disconnected.
    pub write_timeout_secs: u64,
    /// Seconds of silence before the first keepalive probe; 0 turns keepalive off.
    pub keepalive_idle_secs: u64,
    /// Seconds between keepalive probes.
    pub keepalive_interval_secs: u64,
    /// Unanswered probes before the connection is dropped.
    pub keepalive_retries: u32,
}

impl LimitSettings {
    /// The limits one session enforces.
    pub fn session(&self) -> SessionConfig {
        SessionConfig {
            max_question_bytes: self.max_question_bytes,
            max_pending_bytes: self.max_pending_bytes,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            write_timeout: Duration::from_secs(self.write_timeout_secs),
        }
    }

    /// The options accepted connections get.
    pub fn connection_options(&self) -> ConnectionOptions {
        let keepalive = (self.keepalive_idle_secs > 0).then(|| Keepalive {
            idle: Duration::from_secs(self.keepalive_idle_secs),
            interval: Duration::from_secs(self.keepalive_interval_secs),
            retries: self.keepalive_retries,
        });
        ConnectionOptions { keepalive }
    }
}

/// The `[log]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// A level or tracing-subscriber `EnvFilter` directives.
    pub level: String,
    /// How each event is written.
    pub format: LogFormat,
    /// Where events are written.
    pub output: LogOutput,
}

/// Where log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogOutput {
    /// Standard error, the default.
    Stderr,
    /// Standard output (what container engines collect).
    Stdout,
}

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The `[oracle]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OracleSettings {
    /// Blocking work per computed answer, in milliseconds.
    pub simulated_cost_ms: u64,
    /// Threads computing costly answers.
    pub workers: usize,
    /// A question that makes the oracle panic (fault injection); empty for none.
    pub panic_question: String,
    /// The question-and-answer table, in order.
    pub answers: Vec<AnswerEntry>,
}

impl OracleSettings {
    /// How the oracle answers: its cost, workers and fault injection.
    pub fn oracle_config(&self) -> OracleConfig {
        OracleConfig {
            simulated_cost: Duration::from_millis(self.simulated_cost_ms),
            workers: self.workers,
            panic_question: (!self.panic_question.is_empty()).then(|| Question::new(self.panic_question.clone())),
        }
    }

    /// The answers as a validated table.
    ///
    /// # Errors
    ///
    /// [`TableError`] naming the first entry that breaks the protocol's rules.
    pub fn table(&self) -> Result<AnswerTable, TableError> {
        AnswerTable::new(self.answers.iter().map(|e| (e.question.clone(), e.answer.clone())))
    }
}

/// One entry of `oracle.answers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerEntry {
    /// The question, ending with `?`.
    pub question: String,
    /// Its answer, ending with `.`.
    pub answer: String,
}

/// Settings given on the command line; they win over every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replaces `server.listen`.
    pub listen: Option<Vec<SocketAddr>>,
    /// Replaces the port of every listening address.
    pub port: Option<u16>,
}

/// Everything settings are loaded from, apart from the built-in defaults.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The operator's TOML file, if any; it must exist.
    pub file: Option<PathBuf>,
    /// `ZEN_*` environment variables, [`CONFIG_FILE_VAR`] excluded.
    pub env: HashMap<String, String>,
    /// Command-line settings.
    pub overrides: Overrides,
}

impl Sources {
    /// Sources from this process's environment, plus the given file and overrides.
    ///
    /// # Errors
    ///
    /// [`ConfigError::NotUnicode`] if a `ZEN_*` variable is not valid UTF-8.
    pub fn from_process(file: Option<PathBuf>, overrides: Overrides) -> Result<Self, ConfigError> {
        Ok(Self { file, env: zen_vars(std::env::vars_os())?, overrides })
    }
}

fn zen_vars(vars: impl Iterator<Item = (OsString, OsString)>) -> Result<HashMap<String, String>, ConfigError> {
    let prefix = format!("{ENV_PREFIX}_");
    let mut zen = HashMap::new();
    for (name, value) in vars {
        let Some(name) = name.to_str().filter(|n| n.starts_with(&prefix) && *n != CONFIG_FILE_VAR) else {
            continue;
        };
        let value = value.into_string().map_err(|_| ConfigError::NotUnicode(name.to_owned()))?;
        zen.insert(name.to_owned(), value);
    }
    Ok(zen)
}

impl Settings {
    /// The built-in defaults alone.
    ///
    /// # Errors
    ///
    /// Only if the built-in file is broken, which the test suite rules out.
    pub fn builtin() -> Result<Self, ConfigError> {
        Self::load(&Sources::default())
    }

    /// Loads and validates the settings from every layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file, key or entry at fault.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let mut builder = Config::builder().add_source(File::from_str(BUILTIN_TOML, FileFormat::Toml));
        if let Some(path) = &sources.file {
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml).required(true));
        }
        let env = Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("server.listen")
            .source(Some(sources.env.clone().into_iter().collect()));
        let mut settings: Settings = builder.add_source(env).build()?.try_deserialize()?;
        settings.apply(&sources.overrides);
        settings.validate()?;
        Ok(settings)
    }

    fn apply(&mut self, overrides: &Overrides) {
        if let Some(listen) = &overrides.listen {
            self.server.listen.clone_from(listen);
        }
        if let Some(port) = overrides.port {
            self.server.listen.iter_mut().for_each(|addr| addr.set_port(port));
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.server.listen.is_empty() {
            return Err(invalid("server.listen", "at least one address is needed"));
        }
        if self.server.workers > MAX_WORKERS {
            return Err(invalid("server.workers", format!("{} is more than {MAX_WORKERS}", self.server.workers)));
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", format!("{:?}: {error}", self.log.level)));
        }
        let limits = &self.limits;
        for (key, value) in [
            ("limits.max_question_bytes", limits.max_question_bytes as u64),
            ("limits.idle_timeout_secs", limits.idle_timeout_secs),
            ("limits.max_connections", u64::from(limits.max_connections)),
            ("limits.max_pending_bytes", limits.max_pending_bytes as u64),
            ("limits.write_timeout_secs", limits.write_timeout_secs),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if limits.keepalive_idle_secs > 0 && (limits.keepalive_interval_secs == 0 || limits.keepalive_retries == 0) {
            return Err(invalid(
                "limits.keepalive_interval_secs",
                "keepalive needs an interval and retries of at least 1",
            ));
        }
        if self.oracle.simulated_cost_ms > 0 && !(1..=MAX_WORKERS).contains(&self.oracle.workers) {
            return Err(invalid("oracle.workers", format!("must be from 1 to {MAX_WORKERS}")));
        }
        let table = self.oracle.table()?;
        if table.longest_question() > limits.max_question_bytes {
            return Err(invalid(
                "limits.max_question_bytes",
                format!(
                    "{} is shorter than the longest question in oracle.answers ({} bytes)",
                    limits.max_question_bytes,
                    table.longest_question()
                ),
            ));
        }
        Ok(())
    }

    /// The settings as TOML, as `check-config` prints them.
    ///
    /// # Errors
    ///
    /// Only if serialization fails, which the test suite rules out.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        net::{IpAddr, Ipv4Addr},
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;
    use crate::protocol::Answer;

    /// A TOML file in the temporary directory, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let name = format!("zen-config-{}-{}.toml", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
            let path = std::env::temp_dir().join(name);
            std::fs::File::create(&path).unwrap().write_all(contents.as_bytes()).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn load_error(sources: &Sources) -> String {
        Settings::load(sources).unwrap_err().to_string()
    }

    #[test]
    fn builtin_defaults_listen_on_loopback_1060_and_know_the_book_answers() {
        let settings = Settings::builtin().unwrap();
        assert_eq!(settings.server.listen, ["127.0.0.1:1060".parse::<SocketAddr>().unwrap()]);
        assert_eq!(settings.log.format, LogFormat::Text);
        let table = settings.oracle.table().unwrap();
        assert_eq!(table.answer(b"Beautiful is better than?").as_bytes(), b"Ugly.");
        assert_eq!(table.answer(b"Explicit is better than?").as_bytes(), b"Implicit.");
        assert_eq!(table.answer(b"Simple is better than?").as_bytes(), b"Complex.");
        assert!(table.len() > 3);
    }

    #[test]
    fn later_layers_win_file_then_env_then_command_line() {
        let file = TempFile::new(
            "[server]\nworkers = 2\nbacklog = 7\nlisten = [\"127.0.0.1:2000\"]\n[log]\nlevel = \"debug\"\n",
        );
        let sources = Sources {
            file: Some(file.0.clone()),
            env: env(&[("ZEN_SERVER__WORKERS", "3"), ("ZEN_SERVER__LISTEN", "127.0.0.2:3000,[::1]:3001")]),
            overrides: Overrides { listen: None, port: Some(4000) },
        };
        let settings = Settings::load(&sources).unwrap();
        assert_eq!(settings.server.backlog, 7, "file beats built-in");
        assert_eq!(settings.log.level, "debug", "file beats built-in");
        assert_eq!(settings.server.workers, 3, "env beats file");
        let listen: Vec<String> = settings.server.listen.iter().map(|a| a.to_string()).collect();
        assert_eq!(listen, ["127.0.0.2:4000", "[::1]:4000"], "env list, then the -p port");
    }

    #[test]
    fn a_listen_override_replaces_every_configured_address() {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let sources = Sources {
            env: env(&[("ZEN_SERVER__LISTEN", "127.0.0.2:3000")]),
            overrides: Overrides { listen: Some(vec![addr]), port: None },
            ..Sources::default()
        };
        assert_eq!(Settings::load(&sources).unwrap().server.listen, [addr]);
    }

    #[test]
    fn a_file_answer_list_replaces_the_builtin_one() {
        let file = TempFile::new("[oracle]\nanswers = [{ question = \"Why?\", answer = \"Because.\" }]\n");
        let settings = Settings::load(&Sources { file: Some(file.0.clone()), ..Sources::default() }).unwrap();
        let table = settings.oracle.table().unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(table.answer(b"Beautiful is better than?"), Answer::UNKNOWN_APHORISM);
    }

    #[test]
    fn an_unknown_key_in_the_file_is_named() {
        let file = TempFile::new("[server]\nworker = 2\n");
        let error = load_error(&Sources { file: Some(file.0.clone()), ..Sources::default() });
        assert!(error.contains("unknown field `worker`") && error.contains("`server`"), "{error}");
    }

    #[test]
    fn an_unknown_environment_setting_is_named() {
        let error = load_error(&Sources { env: env(&[("ZEN_LIMITS__MAX_CONECTIONS", "5")]), ..Sources::default() });
        assert!(error.contains("max_conections") && error.contains("limits"), "{error}");
    }

    #[test]
    fn a_wrong_type_names_the_key_and_the_file() {
        let file = TempFile::new("[server]\nworkers = \"many\"\n");
        let error = load_error(&Sources { file: Some(file.0.clone()), ..Sources::default() });
        let name = file.0.file_name().unwrap().to_str().unwrap();
        assert!(error.contains("server.workers") && error.contains(name), "{error}");
    }

    #[test]
    fn an_unparsable_address_names_its_position() {
        let error =
            load_error(&Sources { env: env(&[("ZEN_SERVER__LISTEN", "127.0.0.1:1,localhost")]), ..Sources::default() });
        assert!(error.contains("server.listen[1]"), "{error}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let path = std::env::temp_dir().join("zen-config-that-does-not-exist.toml");
        let error = load_error(&Sources { file: Some(path), ..Sources::default() });
        assert!(error.contains("zen-config-that-does-not-exist"), "{error}");
    }

    #[test]
    fn an_answer_breaking_the_rules_is_named() {
        let file = TempFile::new(
            "[oracle]\nanswers = [{ question = \"A?\", answer = \"B.\" }, { question = \"Why?\", answer = \"Be. Cause.\" }]\n",
        );
        let error = load_error(&Sources { file: Some(file.0.clone()), ..Sources::default() });
        assert!(
            error.contains("oracle.answers") && error.contains("entry 1") && error.contains("Be. Cause."),
            "{error}"
        );
    }

    #[test]
    fn a_bad_log_level_is_named() {
        let error = load_error(&Sources { env: env(&[("ZEN_LOG__LEVEL", "zen_server=loud")]), ..Sources::default() });
        assert!(error.starts_with("invalid log.level"), "{error}");
    }

    #[test]
    fn a_zero_limit_is_refused_by_name() {
        let error = load_error(&Sources { env: env(&[("ZEN_LIMITS__IDLE_TIMEOUT_SECS", "0")]), ..Sources::default() });
        assert!(error.starts_with("invalid limits.idle_timeout_secs"), "{error}");
    }

    #[test]
    fn a_question_limit_shorter_than_a_known_question_is_refused() {
        let error =
            load_error(&Sources { env: env(&[("ZEN_LIMITS__MAX_QUESTION_BYTES", "20")]), ..Sources::default() });
        assert!(error.starts_with("invalid limits.max_question_bytes"), "{error}");
    }

    #[test]
    fn limits_come_from_the_environment_too() {
        let sources = Sources { env: env(&[("ZEN_LIMITS__MAX_CONNECTIONS", "5")]), ..Sources::default() };
        assert_eq!(Settings::load(&sources).unwrap().limits.max_connections, 5);
    }

    #[test]
    fn keepalive_zero_turns_it_off() {
        let sources = Sources { env: env(&[("ZEN_LIMITS__KEEPALIVE_IDLE_SECS", "0")]), ..Sources::default() };
        assert!(Settings::load(&sources).unwrap().limits.connection_options().keepalive.is_none());
        assert!(Settings::builtin().unwrap().limits.connection_options().keepalive.is_some());
    }

    #[test]
    fn an_empty_listen_list_is_refused() {
        let file = TempFile::new("[server]\nlisten = []\n");
        let error = load_error(&Sources { file: Some(file.0.clone()), ..Sources::default() });
        assert!(error.starts_with("invalid server.listen"), "{error}");
    }

    #[test]
    fn only_zen_variables_except_the_file_variable_are_settings() {
        let vars = [("ZEN_CONFIG", "x.toml"), ("PATH", "/bin"), ("ZEN_LOG__LEVEL", "debug"), ("ZENITH", "1")]
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        assert_eq!(zen_vars(vars.into_iter()).unwrap(), env(&[("ZEN_LOG__LEVEL", "debug")]));
    }

    #[test]
    fn printed_settings_load_back_to_the_same_settings() {
        let settings = Settings::builtin().unwrap();
        let file = TempFile::new(&settings.to_toml().unwrap());
        let reloaded = Settings::load(&Sources { file: Some(file.0.clone()), ..Sources::default() }).unwrap();
        assert_eq!(reloaded.to_toml().unwrap(), settings.to_toml().unwrap());
    }
}
