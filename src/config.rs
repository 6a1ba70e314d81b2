//! [`Settings`]: the daemon's configuration, loaded in layers and validated by its types.
//!
//! Layers, later wins: the built-in `config/zen-server.toml` (compiled in), the operator's file,
//! `ZEN_<SECTION>__<KEY>` environment variables, then command-line [`Overrides`]. Loading is a
//! pure function of [`Sources`], so tests inject the environment and a reload builds a whole new
//! `Settings` the same way.
//!
//! Every rule lives in the type that holds the value ([`Whole`] numbers within bounds,
//! [`Listen`] addresses that do not overlap, [`LogLevel`], [`FaultQuestion`], [`AnswerTable`],
//! ...), and serde builds them. What config-rs does not keep for such an error, the layer the
//! value came from and the value as written, is looked up by its key in the layers. Before that,
//! each layer's keys are checked against the built-in file, which lists every key there is, and
//! its values' kinds against the built-in ones (config-rs would take `2.5` or `true` for a whole
//! number). Every error names the layer (the file's path, the environment variable, or the
//! command line), the key and the value; of several mistakes, the first is reported, in the order
//! of the layers and of the file's lines. Nothing is rounded, coerced or ignored.
//!
//! [`RestartSettings`] are what a running daemon cannot change and [`LiveSettings`] what a
//! reload applies: a reload keeps the running [`RestartSettings`] and names those it set aside.

use std::{
    collections::HashMap,
    ffi::OsString,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};

use config::{Config, FileFormat, Map, Source, Value, ValueKind};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    limits::SessionConfig,
    oracle::{AnswerTable, OracleConfig},
    proxy::ProxyPolicy,
    server::{
        ApplyLimits,
        listener::{ConnectionOptions, Keepalive, ListenAddr, ListenerKind, check_overlaps},
    },
    tls::{Identity, TlsError, TlsFile},
};
pub use crate::{
    metrics::MetricsListen,
    oracle::{lookup::FaultQuestion, table::AnswerEntry},
    proxy::Trusted,
    server::listener::Listen,
    telemetry::{LogFormat, LogLevel, LogOutput, one_line},
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

/// One year, in milliseconds.
const YEAR_MS: i64 = YEAR_SECS * 1000;

/// Linux's bound on the keepalive idle time and interval, in seconds (`TCP_KEEPIDLE`,
/// `TCP_KEEPINTVL`).
const KEEPALIVE_SECS_MAX: i64 = 32_767;

const U32_MAX: i64 = u32::MAX as i64;

/// Where a value kept from the running settings on a reload comes from, in messages.
const RUNNING_ORIGIN: &str = "the running settings (a restart is needed to change it)";

/// Where the built-in layer's values come from, in messages.
const BUILTIN_ORIGIN: &str = "built-in defaults";

/// Where command-line values come from, in messages.
const COMMAND_LINE_ORIGIN: &str = "the command line";

/// Why settings could not be loaded. Every message names the layer the mistake is in, on one
/// line: the names and keys it quotes from a file or the environment are escaped.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The settings file cannot be used at all.
    #[error("{named_by} {}: {reason}", one_line(.path))]
    File {
        /// `--config` or `ZEN_CONFIG`: how the file was named.
        named_by: &'static str,
        /// The path given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A layer has a key the settings do not have.
    #[error("unknown key {} in {origin}{hint}", one_line(.key))]
    UnknownKey {
        /// The layer.
        origin: String,
        /// The dotted key.
        key: String,
        /// The keys that exist there, if any.
        hint: String,
    },
    /// A `ZEN_*` environment variable is not a setting.
    #[error("unknown environment variable {}: {}", one_line(.name), one_line(.reason))]
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
    /// A layer could not be read as settings.
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    /// An environment variable meant as a setting is not valid UTF-8.
    #[error("environment variable {0} is not valid UTF-8")]
    NotUnicode(String),
    /// [`CONFIG_FILE_VAR`] is set, to nothing.
    #[error("{CONFIG_FILE_VAR} is set but empty: set it to the path of a settings file, or unset it")]
    EmptyConfigVar,
}

impl ConfigError {
    /// [`ConfigError::EmptyConfigVar`] if the environment has [`CONFIG_FILE_VAR`] set to
    /// nothing (which the command line parser would report as a flag without its value).
    ///
    /// # Errors
    ///
    /// As said.
    pub fn check_config_var() -> Result<(), ConfigError> {
        match std::env::var_os(CONFIG_FILE_VAR) {
            Some(path) if path.is_empty() => Err(ConfigError::EmptyConfigVar),
            _ => Ok(()),
        }
    }
}

/// A whole number from `MIN` to `MAX`: a count, a size, a duration in the unit its key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Whole<const MIN: i64, const MAX: i64>(u64);

impl<const MIN: i64, const MAX: i64> Whole<MIN, MAX> {
    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The number, as a count in memory.
    pub fn count(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    /// The number, as seconds.
    pub fn secs(self) -> Duration {
        Duration::from_secs(self.0)
    }

    /// The number, as milliseconds.
    pub fn millis(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl<const MIN: i64, const MAX: i64> TryFrom<i64> for Whole<MIN, MAX> {
    type Error = String;

    fn try_from(number: i64) -> Result<Self, String> {
        match u64::try_from(number) {
            _ if number < MIN => Err(format!("must be at least {MIN}")),
            _ if number > MAX => Err(format!("must be at most {MAX}")),
            Ok(number) => Ok(Self(number)),
            Err(_) => Err(format!("must be at least {MIN}")),
        }
    }
}

impl<const MIN: i64, const MAX: i64> From<Whole<MIN, MAX>> for i64 {
    fn from(number: Whole<MIN, MAX>) -> i64 {
        i64::try_from(number.0).unwrap_or(i64::MAX)
    }
}

/// Every setting of the daemon: those only a restart changes, and those a reload applies; and
/// the TLS identity their files hold, read and checked once, if a listener speaks TLS.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What only a restart changes.
    pub restart: RestartSettings,
    /// What a reload applies.
    pub live: LiveSettings,
    /// The certificate and key of `tls.cert_file` and `tls.key_file`, when TLS is used.
    pub tls: Option<Arc<Identity>>,
}

/// The settings a running daemon cannot change: a reload keeps their running values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartSettings {
    /// Listening and threads.
    pub server: ServerRestart,
    /// How and where logs are written.
    pub log: LogRestart,
    /// How the oracle computes answers, and its fault injection.
    pub oracle: OracleRestart,
    /// Listeners behind a load balancer that speaks the PROXY protocol.
    pub proxy: ProxyRestart,
    /// Listeners that speak TLS.
    pub tls: TlsRestart,
    /// The Prometheus endpoint.
    pub metrics: MetricsRestart,
}

/// The `[server]` settings only a restart changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRestart {
    /// Addresses to listen on.
    pub listen: Listen,
    /// Session threads; 0 means one per CPU.
    pub workers: Whole<0, MAX_WORKERS>,
    /// Queue length of each listening socket.
    pub backlog: Whole<0, U32_MAX>,
    /// Listen with `SO_REUSEPORT`, so that a new server can bind the same addresses while this
    /// one runs (an upgrade without refusing anyone).
    pub reuse_port: bool,
}

/// The `[log]` settings only a restart changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRestart {
    /// How each event is written.
    pub format: LogFormat,
    /// Where events are written.
    pub output: LogOutput,
}

/// The `[oracle]` settings only a restart changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OracleRestart {
    /// Blocking work per computed answer, in milliseconds.
    pub simulated_cost_ms: Whole<0, YEAR_MS>,
    /// Threads computing costly answers.
    pub workers: Whole<1, MAX_WORKERS>,
    /// A question that makes the oracle panic (fault injection).
    pub panic_question: FaultQuestion,
    /// A question that blocks the thread answering it for good (fault injection).
    pub hang_question: FaultQuestion,
}

/// The `[proxy]` settings only a restart changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyRestart {
    /// Addresses where every connection starts with a PROXY header.
    pub listen: Listen,
}

/// The `[tls]` settings only a restart changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsRestart {
    /// Addresses where every connection speaks TLS.
    pub listen: Listen,
    /// Addresses where every connection begins with a PROXY header, then speaks TLS.
    pub proxy_listen: Listen,
}

impl TlsRestart {
    /// Whether any listener speaks TLS.
    pub fn is_used(&self) -> bool {
        !self.listen.addrs().is_empty() || !self.proxy_listen.addrs().is_empty()
    }
}

/// The `[metrics]` settings (only a restart changes them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRestart {
    /// Where to serve Prometheus metrics over HTTP; nowhere if empty.
    pub listen: MetricsListen,
}

/// The settings a reload applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveSettings {
    /// Shutting down.
    pub server: ServerLive,
    /// What one client may cost the server.
    pub limits: LimitSettings,
    /// What is logged.
    pub log: LogLive,
    /// The answers.
    pub oracle: OracleLive,
    /// Who may send PROXY headers.
    pub proxy: ProxyLive,
    /// The TLS listeners' identity.
    pub tls: TlsLive,
}

/// The `[server]` settings a reload applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerLive {
    /// Time clients get to receive their answers once shutdown starts.
    pub shutdown_timeout_secs: Whole<0, YEAR_SECS>,
    /// Once shutdown starts, how long a client must have asked nothing before it is closed.
    pub drain_grace_ms: Whole<0, YEAR_MS>,
    /// Once shutdown starts, how long to keep accepting while failing health checks.
    pub lame_duck_ms: Whole<0, YEAR_MS>,
    /// How long a worker thread may leave liveness checks unanswered before the daemon exits.
    pub worker_stall_timeout_secs: Whole<1, YEAR_SECS>,
}

/// The `[limits]` section (a reload applies it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitSettings {
    /// Longest question accepted, `?` included.
    pub max_question_bytes: Whole<1, { i64::MAX }>,
    /// A connection completing no question for this long is closed.
    pub idle_timeout_secs: Whole<1, YEAR_SECS>,
    /// Connections served at once.
    pub max_connections: Whole<1, U32_MAX>,
    /// Connections one client (an IPv4 address, an IPv6 /64) may hold at once; 0 for no limit.
    pub max_connections_per_client: Whole<0, U32_MAX>,
    /// Bytes owed to a client above which its questions are no longer asked or read.
    pub max_pending_bytes: Whole<1, { i64::MAX }>,
    /// A client reading nothing for this long while answers wait is disconnected.
    pub write_timeout_secs: Whole<1, YEAR_SECS>,
    /// Seconds of silence before the first keepalive probe; 0 turns keepalive off.
    pub keepalive_idle_secs: Whole<0, KEEPALIVE_SECS_MAX>,
    /// Seconds between keepalive probes.
    pub keepalive_interval_secs: Whole<1, KEEPALIVE_SECS_MAX>,
    /// Unanswered probes before the connection is dropped (Linux's `TCP_KEEPCNT` bound).
    pub keepalive_retries: Whole<1, 127>,
}

/// The `[log]` settings a reload applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLive {
    /// A level or tracing-subscriber `EnvFilter` directives.
    pub level: LogLevel,
}

/// The `[oracle]` settings a reload applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OracleLive {
    /// The question-and-answer table, shared: a reload compares it and hands it to the oracle
    /// without copying it.
    pub answers: Arc<AnswerTable>,
}

/// The `[proxy]` settings a reload applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyLive {
    /// Source ranges allowed to send a PROXY header.
    pub trusted: Trusted,
    /// How long a connection may take to send its header, in milliseconds.
    pub header_timeout_ms: Whole<1, YEAR_MS>,
}

/// The `[tls]` settings a reload applies: a reload reads the files again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsLive {
    /// The certificate and the rest of its chain (PEM).
    pub cert_file: String,
    /// The certificate's private key (PEM).
    pub key_file: String,
    /// The CA client certificates must chain to (PEM); empty for no client certificates.
    pub client_ca_file: String,
    /// How long a client may take to complete its handshake, in milliseconds.
    pub handshake_timeout_ms: Whole<1, YEAR_MS>,
}

/// The built-in layer, parsed once: it is the same on every load and reload.
fn builtin_layer() -> Result<Map<String, Value>, ConfigError> {
    static BUILTIN: OnceLock<Map<String, Value>> = OnceLock::new();
    if let Some(layer) = BUILTIN.get() {
        return Ok(layer.clone());
    }
    let layer = config::File::from_str(BUILTIN_TOML, FileFormat::Toml).collect()?;
    Ok(BUILTIN.get_or_init(|| layer).clone())
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
    /// `ZEN_*` variables that are no settings but Kubernetes' links to a service named `zen`
    /// or `zen-server`, left aside (to be warned about once logging is set up).
    pub service_links: Vec<String>,
}

impl Sources {
    /// Sources from this process's environment, plus the given file and overrides.
    ///
    /// # Errors
    ///
    /// [`ConfigError::NotUnicode`] if a `ZEN_*` variable is not valid UTF-8.
    pub fn from_process(file: Option<ConfigFile>, overrides: Overrides) -> Result<Self, ConfigError> {
        let (env, service_links) = zen_vars(std::env::vars_os())?;
        Ok(Self { file, env, overrides, service_links })
    }
}

/// The `ZEN_*` variables that are meant as settings, and those that are Kubernetes' service
/// links instead.
fn zen_vars(
    vars: impl Iterator<Item = (OsString, OsString)>,
) -> Result<(HashMap<String, String>, Vec<String>), ConfigError> {
    let prefix = format!("{ENV_PREFIX}_");
    let (mut settings, mut links) = (HashMap::new(), Vec::new());
    for (name, value) in vars {
        let Some(name) = name.to_str().filter(|n| n.starts_with(&prefix) && *n != CONFIG_FILE_VAR) else {
            continue;
        };
        if is_service_link(name) {
            links.push(name.to_owned());
            continue;
        }
        let value = value.into_string().map_err(|_| ConfigError::NotUnicode(name.to_owned()))?;
        settings.insert(name.to_owned(), value);
    }
    links.sort();
    Ok((settings, links))
}

/// Whether `name` has the shape of a variable Kubernetes sets for a service of the namespace
/// (`ZEN_PORT`, `ZEN_SERVER_SERVICE_HOST`, `ZEN_SERVER_PORT_1060_TCP_ADDR`, ...): no `__`, and
/// one of the endings those have.
fn is_service_link(name: &str) -> bool {
    let protocol_port = |rest: &str| {
        let mut parts = rest.split('_');
        let number = parts.next().is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let protocol = parts.next().is_some_and(|p| ["TCP", "UDP", "SCTP"].contains(&p));
        let field = parts.next().is_none_or(|f| ["ADDR", "PORT", "PROTO"].contains(&f));
        number && protocol && field && parts.next().is_none()
    };
    !name.contains("__")
        && (name.ends_with("_SERVICE_HOST")
            || name.ends_with("_SERVICE_PORT")
            || name.contains("_SERVICE_PORT_")
            || name.ends_with("_PORT")
            || name.split_once("_PORT_").is_some_and(|(_, rest)| protocol_port(rest)))
}

/// A settings layer's values, in the order they are written; each value knows where it comes
/// from (the file's path, the environment variable), but the built-in ones.
type Layer = Map<String, Value>;

/// Where the value of `key` in `layer` comes from, for messages.
fn origin(layer: &Layer, key: &str) -> String {
    lookup(layer, key).and_then(Value::origin).unwrap_or(BUILTIN_ORIGIN).to_owned()
}

/// The layers of one load, lowest first, and the keys the command line and the running settings
/// decided: what errors are blamed on.
struct Layers {
    layers: Vec<Layer>,
    /// Keys whose values the command line set.
    command_line: Vec<&'static str>,
    /// Keys whose values a reload kept from the running settings.
    running: Vec<String>,
}

impl Layers {
    /// The layer that set `key`: the last that has it.
    fn origin(&self, key: &str) -> String {
        if self.running.iter().any(|kept| key == kept || key.starts_with(&format!("{kept}["))) {
            return RUNNING_ORIGIN.into();
        }
        if self.command_line.iter().any(|set| key == *set || key.starts_with(&format!("{set}["))) {
            return COMMAND_LINE_ORIGIN.into();
        }
        self.layers.iter().rev().find(|layer| lookup(layer, key).is_some()).map_or_else(String::new, |l| origin(l, key))
    }

    /// `key`'s value as written in the layer that set it.
    fn shown(&self, key: &str) -> String {
        let value = self.layers.iter().rev().find_map(|layer| lookup(layer, key));
        value.map(|value| Shown(value).to_string()).unwrap_or_default()
    }

    fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin(key),
            key: key.into(),
            value: self.shown(key),
            reason: reason.into(),
        }
    }

    /// The mistake to report of `mistakes`: the first, by layer, then by its place in the
    /// layer (the file's order).
    fn first(&self, mistakes: Vec<ConfigError>) -> Option<ConfigError> {
        let rank = |error: &ConfigError| match error {
            ConfigError::Invalid { key, .. } | ConfigError::UnknownKey { key, .. } => self.rank(key),
            _ => (usize::MAX, 0, 0),
        };
        mistakes.into_iter().min_by_key(rank)
    }

    /// Where a mistake at `key` is: its layer, then its section's and its own place there.
    fn rank(&self, key: &str) -> (usize, usize, usize) {
        let (section, name) = key.split('[').next().unwrap_or(key).split_once('.').unwrap_or((key, ""));
        let position = |values: &Map<String, Value>| {
            let section_at = values.get_index_of(section)?;
            let at = match &values.get(section)?.kind {
                ValueKind::Table(table) => table.get_index_of(name).unwrap_or(0),
                _ => 0,
            };
            Some((section_at, at))
        };
        let found = self.layers.iter().enumerate().rev().find_map(|(index, layer)| Some((index, position(layer)?)));
        found.map_or((usize::MAX, 0, 0), |(index, (section_at, at))| (index, section_at, at))
    }

    /// A config-rs error about a key, named with its layer and value.
    fn explain(&self, error: config::ConfigError) -> ConfigError {
        match error {
            config::ConfigError::At { key: Some(key), error, .. } => self.invalid(&key, error.to_string()),
            config::ConfigError::Type { key: Some(key), expected, .. } => {
                self.invalid(&key, format!("expected {expected}"))
            }
            error => ConfigError::Load(error),
        }
    }
}

/// The built-in value of dotted `key` (`section.name`, `section.name[2]`,
/// `section.name[2].field`), if there is such a key.
fn lookup<'a>(values: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut value = values.get(parts.next()?)?;
    for part in parts {
        let (name, indices) = part.split_once('[').map_or((part, ""), |(name, rest)| (name, rest));
        value = match &value.kind {
            ValueKind::Table(table) => table.get(name)?,
            _ => return None,
        };
        for index in indices.split('[').filter(|i| !i.is_empty()) {
            let index: usize = index.trim_end_matches(']').parse().ok()?;
            value = match &value.kind {
                ValueKind::Array(items) => items.get(index)?,
                _ => return None,
            };
        }
    }
    Some(value)
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
        Self::load_over(sources, None, true).map(|(settings, _)| settings)
    }

    /// As [`load`](Self::load), but without reading the files of the TLS identity (`tls` is
    /// then `None`): for a client that follows a server's settings, which must not need the
    /// server's private key.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load), the TLS files apart.
    pub fn load_without_tls_files(sources: &Sources) -> Result<Self, ConfigError> {
        Self::load_over(sources, None, false).map(|(settings, _)| settings)
    }

    /// What a reload of a daemon running with `running` puts in effect: the settings from every
    /// layer, with the [`RestartSettings`] kept from `running`, validated as a whole; and the
    /// keys whose new values were set aside until a restart.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the layer, key and value at fault ("the running settings" for a
    /// value kept from `running`).
    pub fn reload(sources: &Sources, running: &Settings) -> Result<(Self, Vec<String>), ConfigError> {
        Self::load_over(sources, Some(running), true)
    }

    fn load_over(
        sources: &Sources,
        running: Option<&Settings>,
        read_tls_files: bool,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let builtin = builtin_layer()?;
        let file = sources.file.as_ref().map(file_layer).transpose()?;
        let env = env_layer(&sources.env, &builtin)?;
        let mut layers = Layers { layers: Vec::new(), command_line: Vec::new(), running: Vec::new() };
        // Every mistake found, the first reported: keys and kinds of each layer, then values.
        let mut mistakes = Vec::new();
        for layer in file.iter().chain([&env]) {
            check_keys(layer, &builtin, "", &mut mistakes);
        }
        layers.layers = [Some(builtin), file, Some(env)].into_iter().flatten().collect();
        // Only known sections reach config-rs: it reads a top-level key as a path, and one such
        // as `n[9999999]` would make it build an array of that length (the mistake is recorded).
        let mut builder = Config::builder();
        for layer in &layers.layers {
            let known = layer.iter().filter(|(section, _)| layers.layers[0].contains_key(*section));
            builder =
                builder.add_source(Values(known.map(|(section, values)| (section.clone(), values.clone())).collect()));
        }
        let merged = builder.build()?;
        let restart = deserialize::<RestartSettings>(&merged, &layers, &mut mistakes);
        let live = deserialize::<LiveSettings>(&merged, &layers, &mut mistakes);
        if let (true, Some(restart), Some(live)) = (mistakes.is_empty(), restart, live) {
            let mut settings = Settings { restart, live, tls: None };
            settings.apply(&sources.overrides, &mut layers)?;
            let mut set_aside = Vec::new();
            if let Some(running) = running {
                set_aside = changed_keys(&running.restart, &settings.restart);
                settings.restart = running.restart.clone();
                layers.running.clone_from(&set_aside);
            }
            settings.check_together(&layers, &sources.overrides)?;
            if read_tls_files {
                settings.tls = settings.load_identity(&layers)?.map(Arc::new);
            }
            return Ok((settings, set_aside));
        }
        Err(layers.first(mistakes).unwrap_or_else(|| {
            ConfigError::Load(config::ConfigError::Message("the settings could not be read".into()))
        }))
    }

    fn apply(&mut self, overrides: &Overrides, layers: &mut Layers) -> Result<(), ConfigError> {
        let configured: Vec<SocketAddr> = self.restart.server.listen.addrs().to_vec();
        let mut listen = overrides.listen.clone().unwrap_or_else(|| configured.clone());
        if let Some(port) = overrides.port {
            listen.iter_mut().for_each(|addr| addr.set_port(port));
        }
        if overrides.listen.is_none() && overrides.port.is_none() {
            return Ok(());
        }
        let configured_in = layers.origin("server.listen");
        layers.command_line.push("server.listen");
        let shown = format!("{:?}", listen.iter().map(ToString::to_string).collect::<Vec<_>>());
        let invalid = |reason: String| ConfigError::Invalid {
            origin: COMMAND_LINE_ORIGIN.into(),
            key: "server.listen".into(),
            value: shown.clone(),
            reason,
        };
        match (overrides.listen.is_some(), Listen::try_from(listen.into_iter().map(ListenAddr).collect::<Vec<_>>())) {
            (_, Ok(listen)) => self.restart.server.listen = listen,
            (true, Err(reason)) => return Err(invalid(reason)),
            (false, Err(reason)) => {
                let configured: Vec<String> = configured.iter().map(ToString::to_string).collect();
                let port = overrides.port.unwrap_or_default();
                return Err(invalid(format!(
                    "{reason}: -p {port} gave the same port to the addresses of server.listen in {configured_in} ({})",
                    configured.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The rules that tie several settings together, checked on the merged result and blamed
    /// on the layer that set the value named.
    fn check_together(&self, layers: &Layers, overrides: &Overrides) -> Result<(), ConfigError> {
        let (restart, live) = (&self.restart, &self.live);
        let max_question = live.limits.max_question_bytes.count();
        let (lame_duck, shutdown) = (live.server.lame_duck_ms.millis(), live.server.shutdown_timeout_secs.secs());
        if !lame_duck.is_zero() && lame_duck >= shutdown {
            let reason = format!(
                "must be shorter than server.shutdown_timeout_secs ({} s)",
                live.server.shutdown_timeout_secs.get()
            );
            return Err(layers.invalid("server.lame_duck_ms", reason));
        }
        let longest = live.oracle.answers.longest_question();
        if longest > max_question {
            let reason = format!("is shorter than the longest question in oracle.answers ({longest} bytes)");
            return Err(layers.invalid("limits.max_question_bytes", reason));
        }
        for (key, question) in [
            ("oracle.panic_question", &restart.oracle.panic_question),
            ("oracle.hang_question", &restart.oracle.hang_question),
        ] {
            if question.len() > max_question {
                let reason = format!(
                    "is longer than limits.max_question_bytes ({max_question} bytes), so no client could ask it"
                );
                return Err(layers.invalid(key, reason));
            }
        }
        // At least one listener, and no two on one address.
        let lists = [
            ("server.listen", restart.server.listen.addrs()),
            ("proxy.listen", restart.proxy.listen.addrs()),
            ("tls.listen", restart.tls.listen.addrs()),
            ("tls.proxy_listen", restart.tls.proxy_listen.addrs()),
        ];
        if lists.iter().all(|(_, addrs)| addrs.is_empty()) {
            let reason = "at least one address is needed (here, or in proxy.listen, tls.listen or tls.proxy_listen)";
            return Err(layers.invalid("server.listen", reason));
        }
        let metrics = ("metrics.listen", restart.metrics.listen.0.as_slice());
        let from_command_line = overrides.listen.is_some() || overrides.port.is_some();
        for (index, &(key, addrs)) in lists.iter().chain([&metrics]).enumerate().skip(1) {
            for &(earlier, earlier_addrs) in &lists[..index.min(lists.len())] {
                let Err(reason) = check_overlaps(&[earlier_addrs, addrs].concat()) else { continue };
                let (origin, with) = match (earlier, from_command_line) {
                    ("server.listen", true) => (
                        format!("{} and {COMMAND_LINE_ORIGIN}", layers.origin(key)),
                        "the addresses given on the command line",
                    ),
                    _ => (layers.origin(key), earlier),
                };
                let reason = format!("{reason} (with {with})");
                return Err(ConfigError::Invalid { origin, key: key.into(), value: layers.shown(key), reason });
            }
        }
        Ok(())
    }

    /// The identity of the TLS listeners, read from its files, if there are such listeners.
    fn load_identity(&self, layers: &Layers) -> Result<Option<Identity>, ConfigError> {
        if !self.restart.tls.is_used() {
            return Ok(None);
        }
        let tls = &self.live.tls;
        for (key, path) in [("tls.cert_file", &tls.cert_file), ("tls.key_file", &tls.key_file)] {
            if path.is_empty() {
                return Err(layers.invalid(key, "a TLS listener needs it (tls.listen, tls.proxy_listen)"));
            }
        }
        let client_ca = (!tls.client_ca_file.is_empty()).then(|| Path::new(&tls.client_ca_file));
        let identity = Identity::load(Path::new(&tls.cert_file), Path::new(&tls.key_file), client_ca);
        identity.map(Some).map_err(|TlsError { file, reason, .. }| {
            let key = match file {
                TlsFile::Certificate => "tls.cert_file",
                TlsFile::Key => "tls.key_file",
                TlsFile::ClientCa => "tls.client_ca_file",
            };
            layers.invalid(key, one_line(&reason))
        })
    }

    /// Every address to listen on, with what its connections begin with: `server.listen`,
    /// `proxy.listen`, `tls.listen`, `tls.proxy_listen`, in that order.
    pub fn listen_addrs(&self) -> Vec<(SocketAddr, ListenerKind)> {
        let restart = &self.restart;
        let kind = |proxy, tls| ListenerKind { proxy, tls };
        [
            (restart.server.listen.addrs(), kind(false, false)),
            (restart.proxy.listen.addrs(), kind(true, false)),
            (restart.tls.listen.addrs(), kind(false, true)),
            (restart.tls.proxy_listen.addrs(), kind(true, true)),
        ]
        .into_iter()
        .flat_map(|(addrs, kind)| addrs.iter().map(move |&addr| (addr, kind)))
        .collect()
    }

    /// What connections to `addr`, a socket bound elsewhere, begin with, by the list it is in.
    pub fn listener_kind(&self, addr: SocketAddr) -> ListenerKind {
        let tls = &self.restart.tls;
        let proxy = self.restart.proxy.listen.addrs().contains(&addr) || tls.proxy_listen.addrs().contains(&addr);
        let tls = tls.listen.addrs().contains(&addr) || tls.proxy_listen.addrs().contains(&addr);
        ListenerKind { proxy, tls }
    }

    /// What the server applies from these settings, at start and on each reload.
    pub fn server_limits(&self) -> ApplyLimits {
        let live = &self.live;
        ApplyLimits {
            proxy: ProxyPolicy {
                trusted: live.proxy.trusted.ranges().to_vec(),
                header_timeout: live.proxy.header_timeout_ms.millis(),
            },
            max_connections: u32::try_from(live.limits.max_connections.get()).unwrap_or(u32::MAX),
            max_connections_per_client: u32::try_from(live.limits.max_connections_per_client.get()).unwrap_or(u32::MAX),
            shutdown_timeout: live.server.shutdown_timeout_secs.secs(),
            lame_duck: live.server.lame_duck_ms.millis(),
            connection_options: live.limits.connection_options(),
            worker_stall_timeout: live.server.worker_stall_timeout_secs.secs(),
        }
    }

    /// The limits one session enforces.
    pub fn session(&self) -> SessionConfig {
        let limits = &self.live.limits;
        SessionConfig {
            max_question_bytes: limits.max_question_bytes.count(),
            max_pending_bytes: limits.max_pending_bytes.count(),
            idle_timeout: limits.idle_timeout_secs.secs(),
            write_timeout: limits.write_timeout_secs.secs(),
            drain_grace: self.live.server.drain_grace_ms.millis(),
        }
    }

    /// The number of session threads to run: `server.workers`, or one per CPU when it is 0.
    pub fn worker_count(&self) -> usize {
        match self.restart.server.workers.count() {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// How the oracle answers: its cost, workers and fault injection.
    pub fn oracle_config(&self) -> OracleConfig {
        let oracle = &self.restart.oracle;
        OracleConfig {
            simulated_cost: oracle.simulated_cost_ms.millis(),
            workers: oracle.workers.count(),
            panic_question: oracle.panic_question.question().cloned(),
            hang_question: oracle.hang_question.question().cloned(),
        }
    }

    /// The dotted keys whose values differ between `self` and `other` (a list, such as
    /// `oracle.answers`, counts as one key), in order.
    pub fn changed_keys(&self, other: &Settings) -> Vec<String> {
        let mut keys = changed_keys(&self.restart, &other.restart);
        keys.extend(changed_keys(&self.live, &other.live));
        keys.sort();
        keys
    }

    /// The settings as TOML, as `check-config` prints them.
    ///
    /// # Errors
    ///
    /// Only if serialization fails, which the test suite rules out.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let mut all = toml::Table::try_from(&self.restart)?;
        for (section, values) in toml::Table::try_from(&self.live)? {
            match (all.get_mut(&section), values) {
                (Some(toml::Value::Table(merged)), toml::Value::Table(values)) => merged.extend(values),
                (_, values) => drop(all.insert(section, values)),
            }
        }
        toml::to_string_pretty(&all)
    }
}

impl LimitSettings {
    /// The options accepted connections get.
    pub fn connection_options(&self) -> ConnectionOptions {
        let keepalive = (self.keepalive_idle_secs.get() > 0).then(|| Keepalive {
            idle: self.keepalive_idle_secs.secs(),
            interval: self.keepalive_interval_secs.secs(),
            retries: u32::try_from(self.keepalive_retries.get()).unwrap_or(u32::MAX),
        });
        ConnectionOptions { keepalive }
    }
}

/// Deserializes `merged` into `T`, or records the mistake.
fn deserialize<T: DeserializeOwned>(merged: &Config, layers: &Layers, mistakes: &mut Vec<ConfigError>) -> Option<T> {
    merged.clone().try_deserialize().map_err(|error| mistakes.push(layers.explain(error))).ok()
}

/// The dotted keys whose values differ between `a` and `b`, sorted.
fn changed_keys<T: Serialize>(a: &T, b: &T) -> Vec<String> {
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
    let flatten = |settings: &T| {
        let mut all = Vec::new();
        if let Ok(value) = toml::Value::try_from(settings) {
            leaves(value, "", &mut all);
        }
        all
    };
    let (mine, theirs) = (flatten(a), flatten(b));
    let mut keys: Vec<String> =
        mine.iter().zip(&theirs).filter(|((_, a), (_, b))| a != b).map(|((key, _), _)| key.clone()).collect();
    keys.sort();
    keys
}

/// A layer of values already read and checked.
#[derive(Debug, Clone)]
struct Values(Map<String, Value>);

impl Source for Values {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// Reads and parses the operator's file.
fn file_layer(file: &ConfigFile) -> Result<Map<String, Value>, ConfigError> {
    let fail =
        |reason: String| ConfigError::File { named_by: file.named_by, path: file.path.display().to_string(), reason };
    match std::fs::metadata(&file.path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(fail("no such file".into())),
        Err(error) => return Err(fail(error.to_string())),
        Ok(metadata) if metadata.is_dir() => return Err(fail("is a directory, not a settings file".into())),
        Ok(metadata) if !metadata.is_file() => {
            return Err(fail("is not a regular file (a device, FIFO or socket holds no settings)".into()));
        }
        Ok(_) => {}
    }
    let bytes = std::fs::read(&file.path).map_err(|error| fail(error.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|error| {
        let valid = &error.as_bytes()[..error.utf8_error().valid_up_to()];
        let line = 1 + valid.iter().filter(|&&b| b == b'\n').count();
        fail(format!("line {line} is not valid UTF-8 (a settings file is UTF-8 text)"))
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|error| fail(parse_error(&error, &text)))?;
    // Escaped, as every name a message quotes: a message is one line.
    let origin = one_line(&file.path.display().to_string());
    Ok(table.into_iter().map(|(key, value)| (key, from_toml(value, &origin))).collect())
}

/// A TOML parse error of `text` on one line: the line's number, the line, and what is wrong.
fn parse_error(error: &toml::de::Error, text: &str) -> String {
    let message = one_line(&error.message().trim_end_matches('\n').replace('\n', "; "));
    let Some(span) = error.span() else { return message };
    let line = 1 + text[..span.start.min(text.len())].matches('\n').count();
    let written = one_line(text.lines().nth(line - 1).unwrap_or_default().trim());
    format!("line {line}, `{written}`: {message}")
}

/// A TOML value as a config-rs value from `origin`.
fn from_toml(value: toml::Value, origin: &String) -> Value {
    let kind = match value {
        toml::Value::String(text) => ValueKind::String(text),
        toml::Value::Integer(number) => ValueKind::I64(number),
        toml::Value::Float(number) => ValueKind::Float(number),
        toml::Value::Boolean(flag) => ValueKind::Boolean(flag),
        toml::Value::Datetime(time) => ValueKind::String(time.to_string()),
        toml::Value::Array(items) => ValueKind::Array(items.into_iter().map(|item| from_toml(item, origin)).collect()),
        toml::Value::Table(table) => {
            ValueKind::Table(table.into_iter().map(|(key, value)| (key, from_toml(value, origin))).collect())
        }
    };
    Value::new(Some(origin), kind)
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
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let model = lookup(known, &format!("{section}.{key}"))
            .ok_or_else(|| unknown(format!("there is no setting {section}.{key}")))?;
        let origin = format!("environment variable {}", one_line(name));
        let invalid = |reason: &str| ConfigError::Invalid {
            origin: origin.clone(),
            key: format!("{section}.{key}"),
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
                // An empty variable is an empty list.
                let items = text
                    .split(',')
                    .filter(|_| !text.trim().is_empty())
                    .map(|item| Value::new(Some(&origin), ValueKind::String(item.trim().into())));
                ValueKind::Array(items.collect())
            }
            _ => return Err(unknown(format!("{section}.{key} can only be set in a settings file"))),
        };
        let section = layer.entry(section).or_insert_with(|| Value::new(None, ValueKind::Table(Map::new())));
        if let ValueKind::Table(table) = &mut section.kind {
            table.insert(key, Value::new(Some(&origin), kind));
        }
    }
    Ok(layer)
}

/// Records every key of `values` the built-in `known` ones do not have, and every value of
/// another kind than the built-in one.
fn check_keys(values: &Layer, known: &Layer, prefix: &str, mistakes: &mut Vec<ConfigError>) {
    for (name, value) in values {
        let key = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        let Some(model) = known.get(name) else {
            let mut keys: Vec<&str> = known.keys().map(String::as_str).collect();
            keys.sort_unstable();
            let within = if prefix.is_empty() { "sections".to_owned() } else { format!("keys of {prefix}") };
            let hint = format!(" (the {within} are: {})", keys.join(", "));
            mistakes.push(ConfigError::UnknownKey { origin: value.origin().unwrap_or_default().to_owned(), key, hint });
            continue;
        };
        check_kind(&key, value, model, mistakes);
    }
}

/// Records a `value` of another kind than the built-in `model`.
fn check_kind(key: &str, value: &Value, model: &Value, mistakes: &mut Vec<ConfigError>) {
    let whole = |kind: &ValueKind| {
        matches!(kind, ValueKind::I64(_) | ValueKind::U64(_) | ValueKind::I128(_) | ValueKind::U128(_))
    };
    let expected = match (&model.kind, &value.kind) {
        (ValueKind::Table(known), ValueKind::Table(values)) => return check_keys(values, known, key, mistakes),
        (ValueKind::Array(models), ValueKind::Array(items)) => {
            if let Some(model) = models.first() {
                for (index, item) in items.iter().enumerate() {
                    check_kind(&format!("{key}[{index}]"), item, model, mistakes);
                }
            }
            return;
        }
        (model, kind) if whole(model) && !whole(kind) => "expected a whole number",
        (ValueKind::String(_), kind) if !matches!(kind, ValueKind::String(_)) => "expected a string, in quotes",
        (ValueKind::Boolean(_), kind) if !matches!(kind, ValueKind::Boolean(_)) => "expected true or false",
        (ValueKind::Table(_), _) => "expected a section of settings",
        (ValueKind::Array(_), _) => "expected a list in [brackets]",
        _ => return,
    };
    let error = ConfigError::Invalid {
        origin: value.origin().unwrap_or_default().to_owned(),
        key: key.into(),
        value: Shown(value).to_string(),
        reason: expected.into(),
    };
    mistakes.push(error);
}

/// A value as an operator would write it; a long list is cut short.
struct Shown<'a>(&'a Value);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN_ITEMS: usize = 4;
        match &self.0.kind {
            ValueKind::String(text) => write!(f, "{text:?}"),
            ValueKind::Array(items) => {
                f.write_str("[")?;
                for (index, item) in items.iter().take(SHOWN_ITEMS).enumerate() {
                    if index > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", Shown(item))?;
                }
                if items.len() > SHOWN_ITEMS {
                    write!(f, ", ... {} in all", items.len())?;
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

    fn env_sources(vars: &[(&str, &str)]) -> Sources {
        Sources { env: env(vars), ..Sources::default() }
    }

    #[test]
    fn a_tls_only_server_loads_its_identity_and_a_server_with_no_listener_is_refused() {
        let pki = crate::tls::tests::Pki::new();
        let (cert, key) = pki.issue("server", 2100, false);
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let tls_only = [
            ("ZEN_SERVER__LISTEN", ""),
            ("ZEN_TLS__LISTEN", "127.0.0.1:1061"),
            ("ZEN_TLS__CERT_FILE", cert),
            ("ZEN_TLS__KEY_FILE", key),
        ];
        let settings = Settings::load(&env_sources(&tls_only)).unwrap();
        assert_eq!(settings.tls.as_ref().map(|identity| identity.subject.as_str()), Some("CN=server"));
        assert_eq!(
            settings.listen_addrs(),
            [("127.0.0.1:1061".parse().unwrap(), ListenerKind { proxy: false, tls: true })]
        );
        let error = load_error(&env_sources(&[("ZEN_SERVER__LISTEN", "")]));
        assert!(
            error.starts_with(
                "invalid server.listen = [] in environment variable ZEN_SERVER__LISTEN: at least one address is needed"
            ),
            "{error}"
        );
        let error = load_error(&env_sources(&[("ZEN_TLS__LISTEN", "127.0.0.1:1061"), ("ZEN_TLS__CERT_FILE", cert)]));
        assert!(error.starts_with("invalid tls.key_file = \"\" in "), "{error}");
        assert!(error.ends_with(": a TLS listener needs it (tls.listen, tls.proxy_listen)"), "{error}");
        let (_, other_key) = pki.issue("other", 2100, false);
        let mismatched = [
            ("ZEN_TLS__PROXY_LISTEN", "127.0.0.1:1061"),
            ("ZEN_TLS__CERT_FILE", cert),
            ("ZEN_TLS__KEY_FILE", other_key.to_str().unwrap()),
        ];
        let error = load_error(&env_sources(&mismatched));
        assert!(error.starts_with("invalid tls.key_file = "), "{error}");
        assert!(
            error.ends_with("in environment variable ZEN_TLS__KEY_FILE: is not the key of the certificate"),
            "{error}"
        );
        // Without a TLS listener, the files are not read.
        assert!(Settings::load(&env_sources(&[("ZEN_TLS__CERT_FILE", "/nowhere")])).unwrap().tls.is_none());
    }

    #[test]
    fn quoted_keys_names_and_lines_with_line_breaks_stay_on_one_line() {
        // Found by the fuzzer: a quoted key holding an escaped line break.
        let (error, _file) = file_error("[\"a\\nb\"]\nx = 1\n");
        assert!(error.starts_with("unknown key a\\nb in "), "{error}");
        let error = env_error(&[("ZEN_LOG__LEVEL\n", "info")]);
        assert!(!error.contains('\n') && error.contains("ZEN_LOG__LEVEL\\n"), "{error}");
        let (error, _file) = file_error("[server]\nworkers = \"\r\"\r\n!\n");
        assert!(!error.contains('\n') && !error.contains('\r'), "{error}");
    }

    #[test]
    fn two_kinds_of_listener_on_one_address_are_refused_naming_both() {
        let error =
            load_error(&env_sources(&[("ZEN_PROXY__LISTEN", "127.0.0.1:1070"), ("ZEN_TLS__LISTEN", "0.0.0.0:1070")]));
        assert!(
            error.starts_with("invalid tls.listen = [\"0.0.0.0:1070\"] in environment variable ZEN_TLS__LISTEN: "),
            "{error}"
        );
        assert!(error.ends_with("(with proxy.listen)"), "{error}");
    }

    #[test]
    fn builtin_defaults_listen_on_loopback_1060_and_know_the_book_answers() {
        let settings = Settings::builtin().unwrap();
        assert_eq!(settings.restart.server.listen.addrs(), ["127.0.0.1:1060".parse::<SocketAddr>().unwrap()]);
        assert_eq!(settings.restart.log.format, LogFormat::Text);
        let table = &settings.live.oracle.answers;
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
            ..Sources::default()
        };
        let settings = Settings::load(&sources).unwrap();
        assert_eq!(settings.restart.server.backlog.get(), 7, "file beats built-in");
        assert_eq!(settings.live.log.level.as_str(), "debug", "file beats built-in");
        assert_eq!(settings.restart.server.workers.get(), 3, "env beats file");
        let listen: Vec<String> = settings.restart.server.listen.addrs().iter().map(|a| a.to_string()).collect();
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
        assert_eq!(Settings::load(&sources).unwrap().restart.server.listen.addrs(), [addr]);
    }

    #[test]
    fn a_file_answer_list_replaces_the_builtin_one() {
        let file = TempFile::new("[oracle]\nanswers = [{ question = \"Why?\", answer = \"Because.\" }]\n");
        let settings = Settings::load(&Sources { file: Some(file.config()), ..Sources::default() }).unwrap();
        let table = &settings.live.oracle.answers;
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
    fn a_section_named_like_an_array_element_is_an_unknown_key_not_an_array() {
        // Found by the settings fuzz target: config-rs would read it as a path and allocate
        // a hundred billion elements (and abort this test).
        let file = TempFile::new("[\"n[ 99999999999]\"]\n");
        let error = load_error(&Sources { file: Some(file.config()), ..Sources::default() });
        assert!(error.starts_with("unknown key n[ 99999999999] in "), "{error}");
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
        assert_eq!(Settings::load(&sources).unwrap().live.limits.max_connections.get(), 5);
    }

    #[test]
    fn keepalive_zero_turns_it_off() {
        let sources = Sources { env: env(&[("ZEN_LIMITS__KEEPALIVE_IDLE_SECS", "0")]), ..Sources::default() };
        assert!(Settings::load(&sources).unwrap().live.limits.connection_options().keepalive.is_none());
        assert!(Settings::builtin().unwrap().live.limits.connection_options().keepalive.is_some());
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
        assert_eq!(zen_vars(vars.into_iter()).unwrap(), (env(&[("ZEN_LOG__LEVEL", "debug")]), Vec::new()));
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
        let log = Settings::load(&sources).unwrap().restart.log;
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
        let settings = Settings::load(&sources).unwrap();
        let listen = settings.restart.server.listen.addrs();
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
