//! [`Settings`]: the daemon's configuration, one struct per TOML section, loaded in layers.
//!
//! Layers, later wins: the built-in `config/zen-server.toml` (compiled in), the operator's file,
//! `ZEN_<SECTION>__<KEY>` environment variables, then command-line [`Overrides`]. Loading is a
//! pure function of [`Sources`], so tests inject the environment and a reload builds a whole new
//! `Settings` the same way.
//!
//! The built-in file lists every key there is, so every other layer is checked against it
//! before anything is merged: a key it does not have, a value of another kind (`2.5` or `true`
//! where a whole number belongs), or a value the key does not accept is a [`ConfigError`] naming
//! the layer (the file's path, the environment variable, or the command line), the key and the
//! value. Nothing is rounded, coerced or ignored.

use std::{collections::HashMap, ffi::OsString, fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use config::{Config, File, FileFormat, Map, Source, Value, ValueKind};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    oracle::{AnswerTable, OracleConfig, TableError},
    protocol::{QUESTION_END, Question, is_leading_whitespace},
    proxy::ProxyPolicy,
    server::{
        ApplyLimits,
        listener::{ConnectionOptions, Keepalive},
    },
    session::SessionConfig,
};

/// The documented defaults, also the lowest configuration layer.
pub const BUILTIN_TOML: &str = include_str!("../config/zen-server.toml");

/// Environment variables with this prefix and an underscore are settings
/// (`ZEN_SERVER__WORKERS`).
pub const ENV_PREFIX: &str = "ZEN";

/// The environment variable naming the configuration file; not itself a setting.
pub const CONFIG_FILE_VAR: &str = "ZEN_CONFIG";

/// Upper bound on `server.workers` and `oracle.workers`, well above any core count, to catch
/// typos.
pub const MAX_WORKERS: i64 = 1024;

/// Upper bound on every duration setting: one year, in seconds. Longer is surely a mistake (the
/// timer queues behind the timeouts reach about two years at most).
pub const YEAR_SECS: i64 = 365 * 24 * 60 * 60;

/// Where a value kept from the running settings on a reload comes from, in messages.
const RUNNING_ORIGIN: &str = "the running settings (a restart is needed to change it)";

/// Where the built-in layer's values come from, in messages.
const BUILTIN_ORIGIN: &str = "built-in defaults";

/// Where command-line values come from, in messages.
const COMMAND_LINE_ORIGIN: &str = "the command line";

/// Why settings could not be loaded. Every message names the layer the mistake is in.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The settings file cannot be used at all.
    #[error("{named_by} {path}: {reason}")]
    File {
        /// `--config` or `ZEN_CONFIG`: how the file was named.
        named_by: &'static str,
        /// The path given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A layer has a key the settings do not have.
    #[error("unknown key {key} in {origin}{hint}")]
    UnknownKey {
        /// The layer.
        origin: String,
        /// The dotted key.
        key: String,
        /// The keys that exist there, if any.
        hint: String,
    },
    /// A `ZEN_*` environment variable is not a setting.
    #[error("unknown environment variable {name}: {reason}")]
    UnknownVariable {
        /// The variable.
        name: String,
        /// Why it is not a setting.
        reason: String,
    },
    /// A value is of the wrong kind or not accepted by its key.
    #[error("invalid {key} = {value} in {origin}: {reason}")]
    Invalid {
        /// The layer the value comes from.
        origin: String,
        /// The dotted key.
        key: String,
        /// The value, as written.
        value: String,
        /// What is expected instead.
        reason: String,
    },
    /// A layer could not be read or parsed (TOML syntax, permissions, a number out of range).
    #[error("{0}")]
    Load(#[from] config::ConfigError),
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
    /// Listeners behind a load balancer that speaks the PROXY protocol.
    pub proxy: ProxySettings,
    /// The Prometheus endpoint.
    pub metrics: MetricsSettings,
}

/// The `[proxy]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// Addresses where every connection starts with a PROXY header.
    pub listen: Vec<SocketAddr>,
    /// Source ranges allowed to send one.
    pub trusted: Vec<IpNet>,
    /// How long a connection may take to send its header, in milliseconds.
    pub header_timeout_ms: u64,
}

impl ProxySettings {
    /// Who may send a header and how long it may take.
    pub fn policy(&self) -> ProxyPolicy {
        ProxyPolicy { trusted: self.trusted.clone(), header_timeout: Duration::from_millis(self.header_timeout_ms) }
    }
}

/// The `[metrics]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Where to serve Prometheus metrics over HTTP (`IP:PORT`); empty for nowhere.
    pub listen: String,
}

impl MetricsSettings {
    /// The address to serve metrics on, if any.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
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
    /// Once shutdown starts, how long a client must have asked nothing before it is closed.
    pub drain_grace_ms: u64,
    /// Once shutdown starts, how long to keep accepting while failing health checks.
    pub lame_duck_ms: u64,
    /// Listen with `SO_REUSEPORT`, so that a new server can bind the same addresses while this
    /// one runs (an upgrade without refusing anyone).
    pub reuse_port: bool,
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

    /// `lame_duck_ms` as a duration.
    pub fn lame_duck(&self) -> Duration {
        Duration::from_millis(self.lame_duck_ms)
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

/// How log events are written; read in any case (`JSON` is `json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where log events are written; read in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogOutput {
    /// Standard error, the default.
    Stderr,
    /// Standard output (what container engines collect).
    Stdout,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected \"text\" or \"json\"".into()),
        }
    }
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl FromStr for LogOutput {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "stderr" => Ok(Self::Stderr),
            "stdout" => Ok(Self::Stdout),
            _ => Err("expected \"stderr\" or \"stdout\"".into()),
        }
    }
}

impl TryFrom<String> for LogOutput {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
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
    /// A question that blocks the thread answering it for good (fault injection); empty for
    /// none.
    pub hang_question: String,
    /// The question-and-answer table, in order.
    pub answers: Vec<AnswerEntry>,
}

impl OracleSettings {
    /// How the oracle answers: its cost, workers and fault injection.
    pub fn oracle_config(&self) -> OracleConfig {
        let question = |text: &String| (!text.is_empty()).then(|| Question::new(text.clone()));
        OracleConfig {
            simulated_cost: Duration::from_millis(self.simulated_cost_ms),
            workers: self.workers,
            panic_question: question(&self.panic_question),
            hang_question: question(&self.hang_question),
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

/// The operator's settings file and how it was named.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// The path given.
    pub path: PathBuf,
    /// `--config` or [`CONFIG_FILE_VAR`], for messages.
    pub named_by: &'static str,
}

/// Everything settings are loaded from, apart from the built-in defaults.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The operator's TOML file, if any; it must exist.
    pub file: Option<ConfigFile>,
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
    pub fn from_process(file: Option<ConfigFile>, overrides: Overrides) -> Result<Self, ConfigError> {
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
    /// [`ConfigError`] naming the layer, key and value at fault.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        Self::load_over(sources, None).map(|(settings, _)| settings)
    }

    /// What a reload of a daemon running with `running` puts in effect: the settings from every
    /// layer, with those a running daemon cannot change kept from `running`, validated as a
    /// whole; and the keys whose new values were set aside until a restart.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the layer, key and value at fault ("the running settings" for a
    /// value kept from `running`).
    pub fn reload(sources: &Sources, running: &Settings) -> Result<(Self, Vec<String>), ConfigError> {
        Self::load_over(sources, Some(running))
    }

    fn load_over(sources: &Sources, running: Option<&Settings>) -> Result<(Self, Vec<String>), ConfigError> {
        let builtin = File::from_str(BUILTIN_TOML, FileFormat::Toml);
        let known = builtin.collect()?;
        let file =
            sources.file.as_ref().map(|file| Ok::<_, ConfigError>((file_layer(file, &known)?, file))).transpose()?;
        let env = env_layer(&sources.env, &known)?;
        let mut builder = Config::builder().add_source(builtin);
        if let Some((values, _)) = &file {
            builder = builder.add_source(Layer(values.clone()));
        }
        let config = builder.add_source(Layer(env.clone())).build()?;
        let mut settings: Settings = config.try_deserialize()?;
        settings.apply(&sources.overrides)?;
        let mut set_aside = Vec::new();
        if let Some(running) = running {
            let kept = settings.clone().keeping_restart_only_of(running);
            set_aside = kept.changed_keys(&settings);
            settings = kept;
        }
        // Which layer set a key: the last one that has it.
        let origin = |key: &str| -> String {
            if set_aside.iter().any(|aside| aside == key) {
                return RUNNING_ORIGIN.into();
            }
            if let Some(value) = env.get(key) {
                return value.origin().unwrap_or_default().to_owned();
            }
            match &file {
                Some((values, file)) if lookup(values, key).is_some() => file.path.display().to_string(),
                _ => BUILTIN_ORIGIN.into(),
            }
        };
        settings.check_together(origin, &sources.overrides)?;
        Ok((settings, set_aside))
    }

    fn apply(&mut self, overrides: &Overrides) -> Result<(), ConfigError> {
        if let Some(listen) = &overrides.listen {
            self.server.listen.clone_from(listen);
        }
        if let Some(port) = overrides.port {
            self.server.listen.iter_mut().for_each(|addr| addr.set_port(port));
        }
        if overrides.listen.is_some() || overrides.port.is_some() {
            let listen: Vec<String> = self.server.listen.iter().map(ToString::to_string).collect();
            check_listen(&listen).map_err(|reason| ConfigError::Invalid {
                origin: COMMAND_LINE_ORIGIN.into(),
                key: "server.listen".into(),
                value: format!("{listen:?}"),
                reason,
            })?;
        }
        Ok(())
    }

    /// The rules that tie several settings together, checked on the merged result and blamed
    /// on the layer that set the value named.
    fn check_together(&self, origin: impl Fn(&str) -> String, overrides: &Overrides) -> Result<(), ConfigError> {
        let invalid = |key: &str, value: String, reason: String| ConfigError::Invalid {
            origin: origin(key),
            key: key.into(),
            value,
            reason,
        };
        let limits = &self.limits;
        if self.server.lame_duck() >= self.server.shutdown_timeout() && !self.server.lame_duck().is_zero() {
            let reason =
                format!("must be shorter than server.shutdown_timeout_secs ({} s)", self.server.shutdown_timeout_secs);
            return Err(invalid("server.lame_duck_ms", self.server.lame_duck_ms.to_string(), reason));
        }
        let longest = self.oracle.answers.iter().map(|entry| entry.question.len()).max().unwrap_or(0);
        if longest > limits.max_question_bytes {
            let reason = format!("is shorter than the longest question in oracle.answers ({longest} bytes)");
            return Err(invalid("limits.max_question_bytes", limits.max_question_bytes.to_string(), reason));
        }
        if overrides.listen.is_none() && overrides.port.is_none() {
            let listen: Vec<String> = self.server.listen.iter().map(ToString::to_string).collect();
            check_listen(&listen).map_err(|reason| invalid("server.listen", format!("{listen:?}"), reason))?;
        }
        let both: Vec<String> = self.server.listen.iter().chain(&self.proxy.listen).map(ToString::to_string).collect();
        if let Err(reason) = check_listen(&both) {
            let value = format!("{:?}", self.proxy.listen.iter().map(ToString::to_string).collect::<Vec<_>>());
            let (origin, with) = if overrides.listen.is_some() || overrides.port.is_some() {
                (
                    format!("{} and {COMMAND_LINE_ORIGIN}", origin("proxy.listen")),
                    "the addresses given on the command line",
                )
            } else {
                (origin("proxy.listen"), "server.listen")
            };
            let reason = format!("{reason} (with {with})");
            return Err(ConfigError::Invalid { origin, key: "proxy.listen".into(), value, reason });
        }
        for (key, question) in [
            ("oracle.panic_question", &self.oracle.panic_question),
            ("oracle.hang_question", &self.oracle.hang_question),
        ] {
            if question.len() > limits.max_question_bytes {
                let reason = format!(
                    "is longer than limits.max_question_bytes ({} bytes), so no client could ask it",
                    limits.max_question_bytes
                );
                return Err(invalid(key, format!("{question:?}"), reason));
            }
        }
        Ok(())
    }

    /// What the server applies from these settings, at start and on each reload.
    pub fn server_limits(&self) -> ApplyLimits {
        ApplyLimits {
            proxy: self.proxy.policy(),
            max_connections: self.limits.max_connections,
            shutdown_timeout: self.server.shutdown_timeout(),
            lame_duck: self.server.lame_duck(),
            connection_options: self.limits.connection_options(),
            session: self.session(),
        }
    }

    /// The limits one session enforces.
    pub fn session(&self) -> SessionConfig {
        SessionConfig {
            max_question_bytes: self.limits.max_question_bytes,
            max_pending_bytes: self.limits.max_pending_bytes,
            idle_timeout: Duration::from_secs(self.limits.idle_timeout_secs),
            write_timeout: Duration::from_secs(self.limits.write_timeout_secs),
            drain_grace: Duration::from_millis(self.server.drain_grace_ms),
        }
    }

    /// The dotted keys whose values differ between `self` and `other` (a list, such as
    /// `oracle.answers`, counts as one key).
    pub fn changed_keys(&self, other: &Settings) -> Vec<String> {
        fn leaves(value: toml::Value, prefix: &str, into: &mut Vec<(String, toml::Value)>) {
            match value {
                toml::Value::Table(table) => {
                    for (name, value) in table {
                        let key = if prefix.is_empty() { name } else { format!("{prefix}.{name}") };
                        leaves(value, &key, into);
                    }
                }
                value => into.push((prefix.to_owned(), value)),
            }
        }
        let flatten = |settings: &Settings| {
            let mut all = Vec::new();
            if let Ok(value) = toml::Value::try_from(settings) {
                leaves(value, "", &mut all);
            }
            all
        };
        let (mine, theirs) = (flatten(self), flatten(other));
        mine.iter().zip(&theirs).filter(|((_, a), (_, b))| a != b).map(|((key, _), _)| key.clone()).collect()
    }

    /// `self`, with the settings a running daemon cannot change taken from `running`.
    fn keeping_restart_only_of(mut self, running: &Settings) -> Settings {
        self.server.listen.clone_from(&running.server.listen);
        self.server.workers = running.server.workers;
        self.server.backlog = running.server.backlog;
        self.server.reuse_port = running.server.reuse_port;
        self.log.format = running.log.format;
        self.log.output = running.log.output;
        self.oracle.simulated_cost_ms = running.oracle.simulated_cost_ms;
        self.oracle.workers = running.oracle.workers;
        self.oracle.panic_question.clone_from(&running.oracle.panic_question);
        self.oracle.hang_question.clone_from(&running.oracle.hang_question);
        self.metrics.listen.clone_from(&running.metrics.listen);
        self.proxy.listen.clone_from(&running.proxy.listen);
        self
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

/// A layer of values already read and checked.
#[derive(Debug, Clone)]
struct Layer(Map<String, Value>);

impl Source for Layer {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// Reads the operator's file and checks it against the built-in keys.
fn file_layer(file: &ConfigFile, known: &Map<String, Value>) -> Result<Map<String, Value>, ConfigError> {
    let fail = |reason: &str| ConfigError::File {
        named_by: file.named_by,
        path: file.path.display().to_string(),
        reason: reason.into(),
    };
    match std::fs::metadata(&file.path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(fail("no such file")),
        Err(error) => return Err(fail(&error.to_string())),
        Ok(metadata) if metadata.is_dir() => return Err(fail("is a directory, not a settings file")),
        Ok(metadata) if !metadata.is_file() => {
            return Err(fail("is not a regular file (a device, FIFO or socket holds no settings)"));
        }
        Ok(_) => {}
    }
    let text = std::fs::read_to_string(&file.path).map_err(|error| fail(&error.to_string()))?;
    let origin = file.path.display().to_string();
    let values =
        File::from_str(&text, FileFormat::Toml).collect().map_err(|error| fail(&one_line(&error.to_string())))?;
    let values = with_origin(values, &origin);
    check_table(&values, known, &origin, "")?;
    Ok(values)
}

/// A TOML syntax error's message on one line: the quoted source lines (`1 | ...`, `  |   ^`)
/// go, since the line and column are in the message already.
fn one_line(message: &str) -> String {
    let is_excerpt = |line: &str| {
        line.is_empty() || line.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start().starts_with('|')
    };
    message.lines().map(str::trim).filter(|line| !is_excerpt(line)).collect::<Vec<_>>().join(" ")
}

/// `values`, each saying it came from `origin` (for messages about merged settings).
fn with_origin(values: Map<String, Value>, origin: &String) -> Map<String, Value> {
    fn relabel(value: Value, origin: &String) -> Value {
        let kind = match value.kind {
            ValueKind::Table(table) => ValueKind::Table(with_origin(table, origin)),
            ValueKind::Array(items) => ValueKind::Array(items.into_iter().map(|item| relabel(item, origin)).collect()),
            kind => kind,
        };
        Value::new(Some(origin), kind)
    }
    values.into_iter().map(|(key, value)| (key, relabel(value, origin))).collect()
}

/// Turns `ZEN_<SECTION>__<KEY>` variables into values of the kinds the built-in keys have.
fn env_layer(vars: &HashMap<String, String>, known: &Map<String, Value>) -> Result<Map<String, Value>, ConfigError> {
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut layer = Map::new();
    for name in names {
        let text = &vars[name];
        let unknown = |reason: String| ConfigError::UnknownVariable { name: name.clone(), reason };
        let Some((section, key)) =
            name.strip_prefix(ENV_PREFIX).and_then(|n| n.strip_prefix('_')).and_then(|n| n.split_once("__"))
        else {
            return Err(unknown(format!(
                "{ENV_PREFIX}_* variables are settings, named {ENV_PREFIX}_<SECTION>__<KEY> (such as ZEN_SERVER__WORKERS), apart from {CONFIG_FILE_VAR}"
            )));
        };
        let key = format!("{}.{}", section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let model = lookup(known, &key).ok_or_else(|| unknown(format!("there is no setting {key}")))?;
        let origin = format!("environment variable {name}");
        let invalid = |reason: &str| ConfigError::Invalid {
            origin: origin.clone(),
            key: key.clone(),
            value: format!("{text:?}"),
            reason: reason.into(),
        };
        let kind = match &model.kind {
            ValueKind::I64(_) | ValueKind::U64(_) | ValueKind::I128(_) | ValueKind::U128(_) => {
                ValueKind::I64(text.trim().parse().map_err(|_| invalid("expected a whole number"))?)
            }
            ValueKind::Boolean(_) => {
                ValueKind::Boolean(text.trim().parse().map_err(|_| invalid("expected true or false"))?)
            }
            ValueKind::String(_) => ValueKind::String(text.clone()),
            ValueKind::Array(items) if items.iter().all(|item| matches!(item.kind, ValueKind::String(_))) => {
                let items =
                    text.split(',').map(|item| Value::new(Some(&origin), ValueKind::String(item.trim().into())));
                ValueKind::Array(items.collect())
            }
            _ => return Err(unknown(format!("{key} can only be set in a settings file"))),
        };
        let value = Value::new(Some(&origin), kind);
        check_value(&key, &value, model, &origin)?;
        layer.insert(key, value);
    }
    Ok(layer)
}

/// The built-in value of dotted `key`, if there is such a key.
fn lookup<'a>(known: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    let (section, name) = key.split_once('.')?;
    match &known.get(section)?.kind {
        ValueKind::Table(table) => table.get(name),
        _ => None,
    }
}

/// Checks every key of `values` against the built-in `known` ones, and every value against its
/// key.
fn check_table(
    values: &Map<String, Value>,
    known: &Map<String, Value>,
    origin: &str,
    prefix: &str,
) -> Result<(), ConfigError> {
    let mut names: Vec<&String> = values.keys().collect();
    names.sort();
    for name in names {
        let key = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        let Some(model) = known.get(name) else {
            let mut keys: Vec<&str> = known.keys().map(String::as_str).collect();
            keys.sort_unstable();
            let within = if prefix.is_empty() { "sections".to_owned() } else { format!("keys of {prefix}") };
            let hint = format!(" (the {within} are: {})", keys.join(", "));
            return Err(ConfigError::UnknownKey { origin: origin.into(), key, hint });
        };
        check_value(&key, &values[name], model, origin)?;
    }
    Ok(())
}

/// Checks that `value` has the kind of the built-in `model` and is accepted by `key`.
fn check_value(key: &str, value: &Value, model: &Value, origin: &str) -> Result<(), ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        origin: origin.into(),
        key: key.into(),
        value: Shown(value).to_string(),
        reason,
    };
    match (&model.kind, &value.kind) {
        (ValueKind::Table(known), ValueKind::Table(values)) => return check_table(values, known, origin, key),
        (ValueKind::Array(models), ValueKind::Array(items)) => {
            if let Some(model) = models.first() {
                for (index, item) in items.iter().enumerate() {
                    check_value(&format!("{key}[{index}]"), item, model, origin)?;
                }
            }
        }
        (ValueKind::I64(_) | ValueKind::U64(_) | ValueKind::I128(_) | ValueKind::U128(_), kind)
            if !matches!(kind, ValueKind::I64(_) | ValueKind::U64(_) | ValueKind::I128(_) | ValueKind::U128(_)) =>
        {
            return Err(invalid("expected a whole number".into()));
        }
        (ValueKind::String(_), kind) if !matches!(kind, ValueKind::String(_)) => {
            return Err(invalid("expected a string, in quotes".into()));
        }
        (ValueKind::Boolean(_), kind) if !matches!(kind, ValueKind::Boolean(_)) => {
            return Err(invalid("expected true or false".into()));
        }
        (ValueKind::Table(_), _) => return Err(invalid("expected a section of settings".into())),
        (ValueKind::Array(_), _) => return Err(invalid("expected a list in [brackets]".into())),
        _ => {}
    }
    check_rule(key, value).map_err(invalid)
}

/// The rule of each key that has one, on a value of the right kind.
fn check_rule(key: &str, value: &Value) -> Result<(), String> {
    let number = || value.clone().into_int().unwrap_or(-1);
    let text = || value.clone().into_string().unwrap_or_default();
    let strings = || -> Vec<String> {
        value.clone().into_array().unwrap_or_default().into_iter().filter_map(|v| v.into_string().ok()).collect()
    };
    let at_least = |min: i64| if number() < min { Err(format!("must be at least {min}")) } else { Ok(()) };
    let at_most = |max: i64| if number() > max { Err(format!("must be at most {max}")) } else { Ok(()) };
    match key {
        "server.workers" => match number() {
            n if n < 0 => Err("must be at least 0 (0 means one per CPU)".into()),
            n if n > MAX_WORKERS => Err(format!("is more than {MAX_WORKERS}")),
            _ => Ok(()),
        },
        "oracle.workers" => match number() {
            n if !(1..=MAX_WORKERS).contains(&n) => Err(format!("must be from 1 to {MAX_WORKERS}")),
            _ => Ok(()),
        },
        "limits.max_connections" => at_least(1).and_then(|()| at_most(u32::MAX.into())),
        "server.backlog" => at_least(0).and_then(|()| at_most(u32::MAX.into())),
        "limits.max_question_bytes" | "limits.max_pending_bytes" => at_least(1),
        "limits.idle_timeout_secs" | "limits.write_timeout_secs" => at_least(1).and_then(|()| at_most(YEAR_SECS)),
        "server.shutdown_timeout_secs" => at_least(0).and_then(|()| at_most(YEAR_SECS)),
        "server.drain_grace_ms" | "server.lame_duck_ms" | "oracle.simulated_cost_ms" => {
            at_least(0).and_then(|()| at_most(YEAR_SECS * 1000))
        }
        // Linux's own bounds (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT); idle 0 turns keepalive off.
        "limits.keepalive_idle_secs" => at_least(0).and_then(|()| at_most(32_767)),
        "limits.keepalive_interval_secs" => at_least(1).and_then(|()| at_most(32_767)),
        "limits.keepalive_retries" => at_least(1).and_then(|()| at_most(127)),
        "server.listen" => check_listen(&strings()),
        "proxy.trusted" if strings().is_empty() => {
            Err("at least one range is needed (proxy.listen without trusted senders would accept no one)".into())
        }
        _ if key.starts_with("proxy.trusted[") => text()
            .parse::<IpNet>()
            .map(drop)
            .map_err(|_| "expected an address range such as 10.0.0.0/8 or ::1/128".into()),
        "proxy.header_timeout_ms" => at_least(1).and_then(|()| at_most(YEAR_SECS * 1000)),
        "proxy.listen" => match strings() {
            entries if entries.is_empty() => Ok(()),
            entries => check_listen(&entries),
        },
        _ if key.starts_with("server.listen[") || key.starts_with("proxy.listen[") => text()
            .parse::<SocketAddr>()
            .map(drop)
            .map_err(|_| "expected an IP address and port, such as 127.0.0.1:1060 or [::1]:1060".into()),
        "log.level" => check_log_level(&text()),
        "log.format" => text().parse::<LogFormat>().map(drop),
        "log.output" => text().parse::<LogOutput>().map(drop),
        "oracle.panic_question" | "oracle.hang_question" => check_fault_question(&text()),
        "oracle.answers" => check_answers(value),
        "metrics.listen" => match text() {
            text if text.is_empty() || text.parse::<SocketAddr>().is_ok() => Ok(()),
            _ => Err("expected an IP address and port, such as 127.0.0.1:9106, or \"\" for no metrics".into()),
        },
        _ if matches!(value.kind, ValueKind::I64(_) | ValueKind::U64(_) | ValueKind::I128(_) | ValueKind::U128(_)) => {
            at_least(0)
        }
        _ => Ok(()),
    }
}

/// `server.listen`: IP addresses with ports, at least one, none listed twice or covered by a
/// wildcard address on the same port (port 0, "any free port", never clashes).
fn check_listen(entries: &[String]) -> Result<(), String> {
    if entries.is_empty() {
        return Err("at least one address is needed".into());
    }
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let addr: SocketAddr = entry.parse().map_err(|_| {
            format!("entry {index}, {entry:?}, is not an IP address and port, such as 127.0.0.1:1060 or [::1]:1060")
        })?;
        if let Some(other) = addrs.iter().find(|other| {
            addr.port() != 0
                && other.port() == addr.port()
                && other.is_ipv4() == addr.is_ipv4()
                && (**other == addr || other.ip().is_unspecified() || addr.ip().is_unspecified())
        }) {
            return Err(if *other == addr {
                format!("{addr} is listed twice")
            } else {
                format!("{other} and {addr} overlap: one is every address of its family on the same port")
            });
        }
        addrs.push(addr);
    }
    Ok(())
}

/// `log.level`: levels and `target=level` directives. A bare word that is not a level would be
/// taken as a target, at which nothing logs: that is refused, not obeyed silently.
fn check_log_level(text: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let expected = "expected a level (off, error, warn, info, debug, trace) or directives such as \"info,zen_server::session=debug\"";
    if text.trim().is_empty() {
        return Err(expected.into());
    }
    for directive in text.split(',').map(str::trim) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, level)| level);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!("{level:?} is not a level; {expected}"));
        }
    }
    tracing_subscriber::EnvFilter::try_new(text).map(drop).map_err(|error| format!("{error}; {expected}"))
}

/// A fault-injection question: empty, or a question a client can ask.
fn check_fault_question(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let ends_with_its_only_mark =
        bytes.last() == Some(&QUESTION_END) && bytes.iter().filter(|&&b| b == QUESTION_END).count() == 1;
    if text.is_empty() || (ends_with_its_only_mark && !bytes.first().copied().is_some_and(is_leading_whitespace)) {
        Ok(())
    } else {
        Err("a question no client can ask (it must end with its only '?' and not start with whitespace), so it could never trigger; leave it empty for none".into())
    }
}

/// `oracle.answers`: a table that follows the protocol's rules, with at least one entry.
fn check_answers(value: &Value) -> Result<(), String> {
    let entries: Vec<(String, String)> = value
        .clone()
        .into_array()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|entry| {
            let entry = entry.into_table().ok()?;
            let field = |name: &str| entry.get(name).and_then(|v| v.clone().into_string().ok()).unwrap_or_default();
            Some((field("question"), field("answer")))
        })
        .collect();
    if entries.is_empty() {
        return Err("the table is empty: the server would know no answer at all; list at least one".into());
    }
    AnswerTable::new(entries).map(drop).map_err(|error| error.to_string())
}

/// A value as an operator would write it.
struct Shown<'a>(&'a Value);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.kind {
            ValueKind::String(text) => write!(f, "{text:?}"),
            ValueKind::Array(items) => {
                f.write_str("[")?;
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", Shown(item))?;
                }
                f.write_str("]")
            }
            ValueKind::Table(_) => f.write_str("{ ... }"),
            ValueKind::Nil => f.write_str("nothing"),
            _ => write!(f, "{}", self.0),
        }
    }
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

    impl TempFile {
        fn config(&self) -> ConfigFile {
            ConfigFile { path: self.0.clone(), named_by: "--config" }
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
            file: Some(file.config()),
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
        let settings = Settings::load(&Sources { file: Some(file.config()), ..Sources::default() }).unwrap();
        let table = settings.oracle.table().unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(table.answer(b"Beautiful is better than?"), Answer::UNKNOWN_APHORISM);
    }

    #[test]
    fn an_unknown_key_in_the_file_is_named() {
        let file = TempFile::new("[server]\nworker = 2\n");
        let error = load_error(&Sources { file: Some(file.config()), ..Sources::default() });
        assert!(error.starts_with("unknown key server.worker in "), "{error}");
        assert!(error.contains(file.0.to_str().unwrap()) && error.contains("workers"), "{error}");
    }

    #[test]
    fn an_unknown_environment_setting_is_named() {
        let error = load_error(&Sources { env: env(&[("ZEN_LIMITS__MAX_CONECTIONS", "5")]), ..Sources::default() });
        assert!(error.contains("max_conections") && error.contains("limits"), "{error}");
    }

    #[test]
    fn a_wrong_type_names_the_key_and_the_file() {
        let file = TempFile::new("[server]\nworkers = \"many\"\n");
        let error = load_error(&Sources { file: Some(file.config()), ..Sources::default() });
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
        let error =
            load_error(&Sources { file: Some(ConfigFile { path, named_by: "--config" }), ..Sources::default() });
        assert!(error.contains("zen-config-that-does-not-exist"), "{error}");
    }

    #[test]
    fn an_answer_breaking_the_rules_is_named() {
        let file = TempFile::new(
            "[oracle]\nanswers = [{ question = \"A?\", answer = \"B.\" }, { question = \"Why?\", answer = \"Be. Cause.\" }]\n",
        );
        let error = load_error(&Sources { file: Some(file.config()), ..Sources::default() });
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
        let error = load_error(&Sources { file: Some(file.config()), ..Sources::default() });
        assert!(error.starts_with("invalid server.listen"), "{error}");
    }

    #[test]
    fn only_zen_variables_except_the_file_variable_are_settings() {
        let vars = [("ZEN_CONFIG", "x.toml"), ("PATH", "/bin"), ("ZEN_LOG__LEVEL", "debug"), ("ZENITH", "1")]
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        assert_eq!(zen_vars(vars.into_iter()).unwrap(), env(&[("ZEN_LOG__LEVEL", "debug")]));
    }

    #[test]
    fn changed_keys_are_named_and_restart_only_ones_can_be_kept_from_the_running_settings() {
        let running = Settings::builtin().unwrap();
        let file = TempFile::new(
            "[server]\nworkers = 3\n[limits]\nmax_connections = 7\n[oracle]\nanswers = [{ question = \"A?\", answer = \"B.\" }]\n",
        );
        let sources = Sources { file: Some(file.config()), ..Sources::default() };
        let new = Settings::load(&sources).unwrap();
        assert_eq!(running.changed_keys(&new), ["limits.max_connections", "oracle.answers", "server.workers"]);
        let (applied, set_aside) = Settings::reload(&sources, &running).unwrap();
        assert_eq!(running.changed_keys(&applied), ["limits.max_connections", "oracle.answers"]);
        assert_eq!(set_aside, ["server.workers"]);
    }

    #[test]
    fn a_reload_is_validated_with_the_values_kept_from_the_running_settings() {
        let file = TempFile::new("[oracle]\npanic_question = \"Is this a rather long question?\"\n");
        let running = Settings::load(&Sources { file: Some(file.config()), ..Sources::default() }).unwrap();
        let changed = TempFile::new(
            "[limits]\nmax_question_bytes = 16\n[oracle]\nanswers = [{ question = \"A?\", answer = \"B.\" }]\n",
        );
        let sources = Sources { file: Some(changed.config()), ..Sources::default() };
        Settings::load(&sources).expect("valid on its own: no fault question");
        let error = Settings::reload(&sources, &running).unwrap_err().to_string();
        assert!(error.contains("oracle.panic_question") && error.contains("the running settings"), "{error}");
        assert!(error.contains("max_question_bytes (16 bytes)"), "{error}");
    }

    #[test]
    fn printed_settings_load_back_to_the_same_settings() {
        let settings = Settings::builtin().unwrap();
        let file = TempFile::new(&settings.to_toml().unwrap());
        let reloaded = Settings::load(&Sources { file: Some(file.config()), ..Sources::default() }).unwrap();
        assert_eq!(reloaded.to_toml().unwrap(), settings.to_toml().unwrap());
    }

    fn file_error(contents: &str) -> (String, TempFile) {
        let file = TempFile::new(contents);
        (load_error(&Sources { file: Some(file.config()), ..Sources::default() }), file)
    }

    fn env_error(vars: &[(&str, &str)]) -> String {
        load_error(&Sources { env: env(vars), ..Sources::default() })
    }

    #[test]
    fn a_fraction_or_a_boolean_where_a_whole_number_belongs_is_refused_not_rounded() {
        let (error, file) = file_error("[server]\nworkers = 2.5\n");
        let path = file.0.to_str().unwrap();
        assert_eq!(error, format!("invalid server.workers = 2.5 in {path}: expected a whole number"));
        let (error, _file) = file_error("[limits]\nmax_connections = true\n");
        assert!(error.starts_with("invalid limits.max_connections = true in "), "{error}");
        let error = env_error(&[("ZEN_SERVER__SHUTDOWN_TIMEOUT_SECS", "1.5")]);
        assert_eq!(
            error,
            "invalid server.shutdown_timeout_secs = \"1.5\" in environment variable ZEN_SERVER__SHUTDOWN_TIMEOUT_SECS: expected a whole number"
        );
    }

    #[test]
    fn a_log_level_that_is_no_level_is_refused_naming_the_value() {
        for level in ["verbose", "inof", "info,zen_server=loud"] {
            let error = env_error(&[("ZEN_LOG__LEVEL", level)]);
            assert!(
                error.starts_with(&format!("invalid log.level = {level:?} in environment variable ZEN_LOG__LEVEL: ")),
                "{error}"
            );
            assert!(error.contains("expected a level"), "{error}");
        }
        for level in ["debug", "WARN", "info,zen_server::session=debug", "off"] {
            assert!(
                Settings::load(&Sources { env: env(&[("ZEN_LOG__LEVEL", level)]), ..Sources::default() }).is_ok(),
                "{level}"
            );
        }
    }

    #[test]
    fn log_format_and_output_are_read_in_any_case_and_a_wrong_one_lists_the_right_ones() {
        let (error, _file) = file_error("[log]\nformat = \"xml\"\n");
        assert!(error.starts_with("invalid log.format = \"xml\" in "), "{error}");
        assert!(error.ends_with("expected \"text\" or \"json\""), "{error}");
        assert!(!error.contains("enum") && !error.contains("LogFormat"), "{error}");
        let sources =
            Sources { env: env(&[("ZEN_LOG__FORMAT", "JSON"), ("ZEN_LOG__OUTPUT", "StdOut")]), ..Sources::default() };
        let log = Settings::load(&sources).unwrap().log;
        assert_eq!((log.format, log.output), (LogFormat::Json, LogOutput::Stdout));
    }

    #[test]
    fn a_bad_listen_entry_names_the_file_the_key_and_the_value() {
        let (error, file) = file_error("[server]\nlisten = [\"127.0.0.1:1060\", \"nowhere\"]\n");
        let path = file.0.to_str().unwrap();
        assert!(error.starts_with(&format!("invalid server.listen[1] = \"nowhere\" in {path}: ")), "{error}");
    }

    #[test]
    fn spaces_around_commas_in_the_listen_variable_are_accepted() {
        let sources =
            Sources { env: env(&[("ZEN_SERVER__LISTEN", "127.0.0.1:7001, [::1]:7002")]), ..Sources::default() };
        let listen = Settings::load(&sources).unwrap().server.listen;
        assert_eq!(listen, ["127.0.0.1:7001".parse::<SocketAddr>().unwrap(), "[::1]:7002".parse().unwrap()]);
    }

    #[test]
    fn an_address_listed_twice_or_covered_by_a_wildcard_is_a_settings_error() {
        let error = env_error(&[("ZEN_SERVER__LISTEN", "127.0.0.1:7001,127.0.0.1:7001")]);
        assert!(
            error.starts_with("invalid server.listen = ") && error.contains("127.0.0.1:7001 is listed twice"),
            "{error}"
        );
        let error = env_error(&[("ZEN_SERVER__LISTEN", "0.0.0.0:7001,127.0.0.1:7001")]);
        assert!(error.contains("overlap"), "{error}");
        let sources = Sources { env: env(&[("ZEN_SERVER__LISTEN", "0.0.0.0:7001,[::]:7001")]), ..Sources::default() };
        assert!(Settings::load(&sources).is_ok(), "IPv4 and IPv6 wildcards do not overlap");
        let addr: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let sources =
            Sources { overrides: Overrides { listen: Some(vec![addr, addr]), port: None }, ..Sources::default() };
        let error = load_error(&sources);
        assert!(error.contains("in the command line") && error.contains("listed twice"), "{error}");
    }

    #[test]
    fn an_unknown_zen_variable_is_named_and_so_is_the_naming_rule() {
        let error = env_error(&[("ZEN_ADDR", "127.0.0.1:1060")]);
        assert!(error.starts_with("unknown environment variable ZEN_ADDR: "), "{error}");
        assert!(error.contains("ZEN_<SECTION>__<KEY>"), "{error}");
        let error = env_error(&[("ZEN_ORACLE__ANSWERS", "x")]);
        assert!(error.contains("only be set in a settings file"), "{error}");
    }

    #[test]
    fn a_config_path_that_is_no_settings_file_says_what_it_is() {
        let dir = ConfigFile { path: std::env::temp_dir(), named_by: "ZEN_CONFIG" };
        let error = load_error(&Sources { file: Some(dir), ..Sources::default() });
        assert!(error.starts_with("ZEN_CONFIG ") && error.ends_with("is a directory, not a settings file"), "{error}");
        let null = ConfigFile { path: "/dev/null".into(), named_by: "--config" };
        let error = load_error(&Sources { file: Some(null), ..Sources::default() });
        assert!(error.starts_with("--config /dev/null: is not a regular file"), "{error}");
    }

    #[test]
    fn an_empty_answer_table_is_refused() {
        let (error, _file) = file_error("[oracle]\nanswers = []\n");
        assert!(error.starts_with("invalid oracle.answers = [] in ") && error.contains("empty"), "{error}");
    }

    #[test]
    fn a_fault_question_no_client_can_ask_is_refused() {
        let error = env_error(&[("ZEN_ORACLE__PANIC_QUESTION", "Poison")]);
        assert!(error.starts_with("invalid oracle.panic_question = \"Poison\" in environment variable"), "{error}");
        assert!(
            Settings::load(&Sources { env: env(&[("ZEN_ORACLE__HANG_QUESTION", "Hang?")]), ..Sources::default() })
                .is_ok()
        );
    }

    #[test]
    fn a_fault_question_longer_than_any_client_may_send_is_refused() {
        let question = format!("{}?", "x".repeat(1024));
        let error = env_error(&[("ZEN_ORACLE__HANG_QUESTION", &question)]);
        assert!(error.starts_with(&format!("invalid oracle.hang_question = \"{question}\"")), "{error}");
        assert!(
            error.ends_with("longer than limits.max_question_bytes (1024 bytes), so no client could ask it"),
            "{error}"
        );
        let just_fits = format!("{}?", "x".repeat(1023));
        assert!(
            Settings::load(&Sources { env: env(&[("ZEN_ORACLE__PANIC_QUESTION", &just_fits)]), ..Sources::default() })
                .is_ok()
        );
    }

    #[test]
    fn durations_past_a_year_and_keepalive_values_linux_refuses_are_refused_by_name() {
        for (var, value, reason) in [
            ("ZEN_LIMITS__IDLE_TIMEOUT_SECS", "31536001", "must be at most 31536000"),
            ("ZEN_LIMITS__WRITE_TIMEOUT_SECS", "100000000", "must be at most 31536000"),
            ("ZEN_SERVER__SHUTDOWN_TIMEOUT_SECS", "9223372036854775807", "must be at most 31536000"),
            ("ZEN_SERVER__DRAIN_GRACE_MS", "31536000001", "must be at most 31536000000"),
            ("ZEN_PROXY__HEADER_TIMEOUT_MS", "31536000001", "must be at most 31536000000"),
            ("ZEN_LIMITS__KEEPALIVE_IDLE_SECS", "32768", "must be at most 32767"),
            ("ZEN_LIMITS__KEEPALIVE_INTERVAL_SECS", "0", "must be at least 1"),
            ("ZEN_LIMITS__KEEPALIVE_RETRIES", "128", "must be at most 127"),
        ] {
            let error = env_error(&[(var, value)]);
            let key = var.trim_start_matches("ZEN_").replace("__", ".").to_lowercase();
            assert!(error.starts_with(&format!("invalid {key} = {value} in environment variable {var}")), "{error}");
            assert!(error.ends_with(reason), "{error}");
        }
        let at_the_bounds = env(&[
            ("ZEN_LIMITS__IDLE_TIMEOUT_SECS", "31536000"),
            ("ZEN_LIMITS__KEEPALIVE_IDLE_SECS", "32767"),
            ("ZEN_LIMITS__KEEPALIVE_RETRIES", "127"),
        ]);
        assert!(Settings::load(&Sources { env: at_the_bounds, ..Sources::default() }).is_ok());
    }

    #[test]
    fn a_clash_of_proxy_listen_with_command_line_addresses_names_the_command_line() {
        let sources = Sources {
            env: env(&[("ZEN_PROXY__LISTEN", "127.0.0.1:2061")]),
            overrides: Overrides { listen: Some(vec!["127.0.0.1:2061".parse().unwrap()]), port: None },
            ..Sources::default()
        };
        let error = load_error(&sources);
        assert!(error.contains("environment variable ZEN_PROXY__LISTEN and the command line"), "{error}");
        assert!(error.ends_with("(with the addresses given on the command line)"), "{error}");
    }

    #[test]
    fn an_unknown_key_in_an_answer_entry_is_named_with_its_position() {
        let (error, _file) = file_error(
            "[oracle]\nanswers = [{ question = \"A?\", answer = \"B.\" }, { questoin = \"C?\", answer = \"D.\" }]\n",
        );
        assert!(error.starts_with("unknown key oracle.answers[1].questoin in "), "{error}");
    }
}
