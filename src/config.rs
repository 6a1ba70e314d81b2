//! [`Settings`]: the daemon's configuration, one struct per section of `config/zen-server.toml`,
//! loaded in layers by config-rs and checked by serde.
//!
//! Layers, later wins: the built-in `config/zen-server.toml` (compiled in), the operator's file,
//! `ZEN_<SECTION>__<KEY>` environment variables, then command-line [`Overrides`]. Loading is a
//! pure function of [`Sources`], so tests inject the environment and a reload builds a whole new
//! `Settings` the same way.
//!
//! Every rule lives in the type that holds the value ([`Whole`] numbers within bounds, [`Listen`]
//! addresses that do not overlap, [`LogLevel`], [`FaultQuestion`], [`AnswerTable`], ...); every
//! section denies keys it does not have. Nothing is coerced: a number is whole or refused, a
//! flag is `true` or `false`. An error names the key serde was reading, and config-rs, which
//! keeps each value's origin, names the layer that set it: the file's path, the environment
//! variable, the command line, or the built-in defaults. Every message is one line.
//!
//! A reload keeps the running values of the [`RESTART_ONLY`] keys, and names those it set aside.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ffi::OsString,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use config::{Config, FileFormat, Map, Source, Value, ValueKind};
use serde::{Deserialize, Deserializer, Serialize, de};

pub use crate::{
    metrics::MetricsListen,
    oracle::{lookup::FaultQuestion, table::AnswerEntry},
    proxy::Trusted,
    server::listener::Listen,
    telemetry::{LogFormat, LogLevel, LogOutput, one_line},
};
use crate::{
    oracle::table::AnswerTable,
    server::listener::{ListenerKind, check_overlaps},
    threads,
    tls::{Identity, TlsError, TlsFile},
};

/// The documented defaults, also the lowest configuration layer.
pub const BUILTIN_TOML: &str = include_str!("../config/zen-server.toml");

/// Environment variables with this prefix and an underscore are settings
/// (`ZEN_SERVER__WORKERS`).
pub const ENV_PREFIX: &str = "ZEN";

/// The environment variable naming the configuration file; not itself a setting.
pub const CONFIG_FILE_VAR: &str = "ZEN_CONFIG";

/// The keys a running daemon cannot change: a reload keeps their running values (and says so).
pub const RESTART_ONLY: [&str; 14] = [
    "server.listen",
    "server.workers",
    "server.backlog",
    "server.reuse_port",
    "log.format",
    "log.output",
    "oracle.simulated_cost_ms",
    "oracle.workers",
    "oracle.panic_question",
    "oracle.hang_question",
    "proxy.listen",
    "tls.listen",
    "tls.proxy_listen",
    "metrics.listen",
];

/// Upper bound on `server.workers` and `oracle.workers`, well above any core count.
pub const MAX_WORKERS: i64 = 1024;

/// Upper bound on every duration: one year, in seconds (the timer queues reach about two).
pub const YEAR_SECS: i64 = 365 * 24 * 60 * 60;

/// One year, in milliseconds.
const YEAR_MS: i64 = YEAR_SECS * 1000;

/// Linux's bound on the keepalive idle time and interval, in seconds.
const KEEPALIVE_SECS_MAX: i64 = 32_767;

const U32_MAX: i64 = u32::MAX as i64;

/// Where values a reload keeps from the running settings come from, in messages.
const RUNNING_ORIGIN: &str = "the running settings (a restart is needed to change it)";

/// Where the built-in layer's values come from, in messages.
const BUILTIN_ORIGIN: &str = "built-in defaults";

/// Where command-line values come from, in messages.
const COMMAND_LINE_ORIGIN: &str = "the command line";

/// Why settings could not be loaded; every message is one line naming the layer.
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
        /// What keys there are instead.
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
    /// The layers could not be read as settings.
    #[error("{}", one_line(&.0.to_string()))]
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
/// A fraction, a flag or text is refused, never rounded or read (config-rs would).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "i64")]
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

    fn new(number: i128) -> Result<Self, String> {
        if number > i128::from(MAX) {
            return Err(format!("must be at most {MAX}"));
        }
        match u64::try_from(number) {
            Ok(whole) if number >= i128::from(MIN) => Ok(Self(whole)),
            _ => Err(format!("must be at least {MIN}")),
        }
    }
}

impl<'de, const MIN: i64, const MAX: i64> Deserialize<'de> for Whole<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Number<const MIN: i64, const MAX: i64>;
        impl<const MIN: i64, const MAX: i64> de::Visitor<'_> for Number<MIN, MAX> {
            type Value = Whole<MIN, MAX>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_i64<E: de::Error>(self, number: i64) -> Result<Self::Value, E> {
                Whole::new(number.into()).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, number: u64) -> Result<Self::Value, E> {
                Whole::new(number.into()).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Number)
    }
}

impl<const MIN: i64, const MAX: i64> From<Whole<MIN, MAX>> for i64 {
    fn from(number: Whole<MIN, MAX>) -> i64 {
        i64::try_from(number.0).unwrap_or(i64::MAX)
    }
}

/// `true` or `false`; nothing else (config-rs would read `1` or `"yes"` as true).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Truth;
        impl de::Visitor<'_> for Truth {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: de::Error>(self, flag: bool) -> Result<Flag, E> {
                Ok(Flag(flag))
            }
        }
        deserializer.deserialize_any(Truth)
    }
}

/// A file's path, written as a string (a number is no path); empty for none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct FilePath(pub String);

impl<'de> Deserialize<'de> for FilePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl de::Visitor<'_> for Text {
            type Value = FilePath;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, in quotes")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<FilePath, E> {
                Ok(FilePath(text.to_owned()))
            }
        }
        deserializer.deserialize_any(Text)
    }
}

/// Every setting, one struct per section of `config/zen-server.toml` (each field a section);
/// and the TLS identity their files hold, read and checked once, if a listener speaks TLS.
#[allow(missing_docs)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub limits: LimitSettings,
    pub log: LogSettings,
    pub oracle: OracleSettings,
    pub proxy: ProxySettings,
    pub tls: TlsSettings,
    pub metrics: MetricsSettings,
    /// The certificate and key of `tls.cert_file` and `tls.key_file`, when TLS is used.
    #[serde(skip)]
    pub identity: Option<Arc<Identity>>,
    /// What the server says at start (and `check-config` on standard error): not mistakes,
    /// but what an operator may not expect.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// `[server]`: each field is the key of that name, documented in `config/zen-server.toml`.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: Listen,
    pub workers: Whole<0, MAX_WORKERS>,
    pub backlog: Whole<0, U32_MAX>,
    pub reuse_port: Flag,
    pub shutdown_timeout_secs: Whole<0, YEAR_SECS>,
    pub drain_grace_ms: Whole<0, YEAR_MS>,
    pub lame_duck_ms: Whole<0, YEAR_MS>,
    pub worker_stall_timeout_secs: Whole<1, YEAR_SECS>,
}

/// `[limits]`: each field is the key of that name, documented in `config/zen-server.toml`.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub max_question_bytes: Whole<1, { i64::MAX }>,
    pub idle_timeout_secs: Whole<1, YEAR_SECS>,
    pub max_connections: Whole<1, U32_MAX>,
    pub max_connections_per_client: Whole<0, U32_MAX>,
    pub max_pending_bytes: Whole<1, { i64::MAX }>,
    pub write_timeout_secs: Whole<1, YEAR_SECS>,
    pub keepalive_idle_secs: Whole<0, KEEPALIVE_SECS_MAX>,
    pub keepalive_interval_secs: Whole<1, KEEPALIVE_SECS_MAX>,
    pub keepalive_retries: Whole<1, 127>,
}

/// `[log]`: each field is the key of that name, documented in `config/zen-server.toml`.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub output: LogOutput,
    pub level: LogLevel,
}

/// `[oracle]`: each field is the key of that name, documented in `config/zen-server.toml`.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OracleSettings {
    pub simulated_cost_ms: Whole<0, YEAR_MS>,
    pub workers: Whole<1, MAX_WORKERS>,
    pub panic_question: FaultQuestion,
    pub hang_question: FaultQuestion,
    pub answers: Arc<AnswerTable>,
}

/// `[proxy]`: each field is the key of that name, documented in `config/zen-server.toml`.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    pub listen: Listen,
    pub trusted: Trusted,
    pub header_timeout_ms: Whole<1, YEAR_MS>,
}

/// `[tls]`: each field is the key of that name, documented in `config/zen-server.toml`.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub listen: Listen,
    pub proxy_listen: Listen,
    pub cert_file: FilePath,
    pub key_file: FilePath,
    pub client_ca_file: FilePath,
    pub handshake_timeout_ms: Whole<1, YEAR_MS>,
}

impl TlsSettings {
    /// Whether any listener speaks TLS.
    pub fn is_used(&self) -> bool {
        !self.listen.addrs().is_empty() || !self.proxy_listen.addrs().is_empty()
    }
}

/// `[metrics]`: each field is the key of that name, documented in `config/zen-server.toml`.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    pub listen: MetricsListen,
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
    /// or `zen-server`: named in a warning, otherwise left aside.
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

/// The `ZEN_*` variables meant as settings, and those that are Kubernetes' service links.
fn zen_vars(
    vars: impl Iterator<Item = (OsString, OsString)>,
) -> Result<(HashMap<String, String>, Vec<String>), ConfigError> {
    let prefix = format!("{ENV_PREFIX}_");
    let (mut settings, mut links) = (HashMap::new(), Vec::new());
    for (name, value) in vars {
        let Some(name) = name.to_str().filter(|n| n.starts_with(&prefix) && *n != CONFIG_FILE_VAR) else { continue };
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
/// (`ZEN_PORT`, `ZEN_SERVER_SERVICE_HOST`, `ZEN_SERVER_PORT_1060_TCP_ADDR`, ...).
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

/// One layer of values, each knowing where it comes from (config-rs keeps that through the
/// merge).
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

/// The layers merged, each value with its origin: what errors are blamed on.
struct Merged(Map<String, Value>);

impl Merged {
    /// Dotted `key`'s value (`section.name`, `section.name[2]`, `section.name[2].field`).
    fn get(&self, key: &str) -> Option<&Value> {
        let mut parts = key.split('.');
        let mut value = self.0.get(parts.next()?)?;
        for part in parts {
            let (name, indices) = part.split_once('[').unwrap_or((part, ""));
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

    /// The layer that set `key`.
    fn origin(&self, key: &str) -> String {
        self.get(key).and_then(Value::origin).unwrap_or(BUILTIN_ORIGIN).to_owned()
    }

    fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        let value = self.get(key).map(|value| Shown(value).to_string()).unwrap_or_default();
        ConfigError::Invalid { origin: self.origin(key), key: key.into(), value, reason: reason.into() }
    }

    /// A config-rs error about a key, named with its layer and value.
    fn explain(&self, error: config::ConfigError) -> ConfigError {
        let (key, reason) = match error {
            config::ConfigError::At { key: Some(key), error, .. } => (key, error.to_string()),
            config::ConfigError::Type { key: Some(key), expected, .. } => (key, format!("expected {expected}")),
            config::ConfigError::Message(reason) => (String::new(), reason),
            error => return ConfigError::Load(error),
        };
        // serde's words for a key a section does not have.
        if let Some(field) = reason.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next()) {
            // The field's name as written, which may hold dots or brackets of its own.
            let value = match self.get(&key).map(|section| &section.kind) {
                Some(ValueKind::Table(fields)) => fields.get(field),
                _ => None,
            };
            let origin = value.and_then(Value::origin).unwrap_or(BUILTIN_ORIGIN).to_owned();
            let expected =
                reason.split_once(", expected ").map_or(String::new(), |(_, known)| format!(" (expected {known})"));
            let key = if key.is_empty() { field.to_owned() } else { format!("{key}.{field}") };
            return ConfigError::UnknownKey { origin, key, hint: expected };
        }
        let reason =
            reason.split_once(", expected ").map_or(reason.clone(), |(_, expected)| format!("expected {expected}"));
        self.invalid(&key, one_line(&reason))
    }
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

    /// As [`load`](Self::load), without reading the files of the TLS identity: for a client
    /// that follows a server's settings, which must not need the server's private key.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load), the TLS files apart.
    pub fn load_without_tls_files(sources: &Sources) -> Result<Self, ConfigError> {
        Self::load_over(sources, None, false).map(|(settings, _)| settings)
    }

    /// What a reload of a daemon running with `running` puts in effect: the settings from every
    /// layer, the [`RESTART_ONLY`] keys kept from `running`, validated as a whole; and the keys
    /// whose new values were set aside until a restart.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the layer, key and value at fault ("the running settings" for a
    /// value kept from `running` where the layers now give another).
    pub fn reload(sources: &Sources, running: &Settings) -> Result<(Self, Vec<String>), ConfigError> {
        Self::load_over(sources, Some(running), true)
    }

    fn load_over(
        sources: &Sources,
        running: Option<&Settings>,
        read_tls_files: bool,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let builtin = config::File::from_str(BUILTIN_TOML, FileFormat::Toml).collect()?;
        let mut layers = vec![Layer(builtin)];
        layers.extend(sources.file.as_ref().map(file_layer).transpose()?);
        layers.push(env_layer(&sources.env, &layers[0].0)?);
        let (mut settings, mut merged) = Self::merge(&layers)?;
        let configured = settings.server.listen.addrs().to_vec();
        if let Some(layer) = command_line_layer(&sources.overrides, &configured) {
            let configured_in = merged.origin("server.listen");
            layers.push(layer);
            (settings, merged) = Self::merge(&layers).map_err(|mut error| {
                if let (ConfigError::Invalid { reason, .. }, None, Some(port)) =
                    (&mut error, &sources.overrides.listen, sources.overrides.port)
                {
                    let configured: Vec<String> = configured.iter().map(ToString::to_string).collect();
                    reason.push_str(&format!(
                        ": -p {port} gave the same port to the addresses of server.listen in {configured_in} ({})",
                        configured.join(", ")
                    ));
                }
                error
            })?;
        }
        let mut set_aside = Vec::new();
        if let Some(running) = running {
            let (new, kept) = (flatten(&settings), flatten(running));
            set_aside = RESTART_ONLY
                .iter()
                .filter(|key| new.get(**key) != kept.get(**key))
                .map(|key| key.to_string())
                .collect();
            set_aside.sort();
            // When no restart-only key changed, the layers already give the running values (and
            // a merge of a large table again would double the reload's work).
            if !set_aside.is_empty() {
                layers.push(running_layer(&kept));
                (settings, merged) = Self::merge(&layers)?;
            }
        }
        settings.check_together(&merged, &sources.overrides)?;
        if read_tls_files {
            settings.identity = settings.load_identity(&merged)?.map(Arc::new);
        }
        settings.warnings = settings.find_warnings(&merged, sources);
        Ok((settings, set_aside))
    }

    /// The layers merged by config-rs, read by serde.
    fn merge(layers: &[Layer]) -> Result<(Self, Merged), ConfigError> {
        // config-rs reads a top-level key as a path (`n[9999999]` would make it build an array
        // that long): an unknown section is refused before it gets there.
        for Layer(values) in &layers[1..] {
            if let Some((section, value)) = values.iter().find(|(section, _)| !layers[0].0.contains_key(*section)) {
                let hint = " (the sections are: server, limits, log, oracle, proxy, tls, metrics)".to_owned();
                let origin = value.origin().unwrap_or(BUILTIN_ORIGIN).to_owned();
                return Err(ConfigError::UnknownKey { origin, key: section.clone(), hint });
            }
        }
        let config =
            layers.iter().fold(Config::builder(), |builder, layer| builder.add_source(layer.clone())).build()?;
        let merged = Merged(config.collect()?);
        let settings = config.try_deserialize().map_err(|error| merged.explain(error))?;
        Ok((settings, merged))
    }

    /// The rules that tie several settings together, blamed on the layer that set the value
    /// named.
    fn check_together(&self, merged: &Merged, overrides: &Overrides) -> Result<(), ConfigError> {
        let max_question = self.limits.max_question_bytes.count();
        let (lame_duck, shutdown) = (self.server.lame_duck_ms.millis(), self.server.shutdown_timeout_secs.secs());
        if !lame_duck.is_zero() && lame_duck >= shutdown {
            let reason = format!("must be shorter than server.shutdown_timeout_secs ({} s)", shutdown.as_secs());
            return Err(merged.invalid("server.lame_duck_ms", reason));
        }
        let longest = self.oracle.answers.longest_question();
        if longest > max_question {
            let reason = format!("is shorter than the longest question in oracle.answers ({longest} bytes)");
            return Err(merged.invalid("limits.max_question_bytes", reason));
        }
        for (key, question) in [
            ("oracle.panic_question", &self.oracle.panic_question),
            ("oracle.hang_question", &self.oracle.hang_question),
        ] {
            if question.len() > max_question {
                let reason = format!(
                    "is longer than limits.max_question_bytes ({max_question} bytes), so no client could ask it"
                );
                return Err(merged.invalid(key, reason));
            }
        }
        let lists = [
            ("server.listen", self.server.listen.addrs()),
            ("proxy.listen", self.proxy.listen.addrs()),
            ("tls.listen", self.tls.listen.addrs()),
            ("tls.proxy_listen", self.tls.proxy_listen.addrs()),
        ];
        if lists.iter().all(|(_, addrs)| addrs.is_empty()) {
            let reason = "at least one address is needed (here, or in proxy.listen, tls.listen or tls.proxy_listen)";
            return Err(merged.invalid("server.listen", reason));
        }
        let metrics = ("metrics.listen", self.metrics.listen.0.as_slice());
        let from_command_line = overrides.listen.is_some() || overrides.port.is_some();
        for (index, &(key, addrs)) in lists.iter().chain([&metrics]).enumerate().skip(1) {
            for &(earlier, earlier_addrs) in &lists[..index.min(lists.len())] {
                let Err(reason) = check_overlaps(&[earlier_addrs, addrs].concat()) else { continue };
                let mut error = merged.invalid(key, format!("{reason} (with {earlier})"));
                if let (ConfigError::Invalid { origin, reason: why, .. }, "server.listen", true) =
                    (&mut error, earlier, from_command_line)
                {
                    *origin = format!("{origin} and {COMMAND_LINE_ORIGIN}");
                    *why = format!("{reason} (with the addresses given on the command line)");
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// The identity of the TLS listeners, read from its files, if there are such listeners; a
    /// file missing is blamed on the layer that set the listener.
    fn load_identity(&self, merged: &Merged) -> Result<Option<Identity>, ConfigError> {
        if !self.tls.is_used() {
            return Ok(None);
        }
        let listener = if self.tls.listen.addrs().is_empty() { "tls.proxy_listen" } else { "tls.listen" };
        let tls = &self.tls;
        for (key, path) in [("tls.cert_file", &tls.cert_file), ("tls.key_file", &tls.key_file)] {
            if path.0.is_empty() {
                return Err(merged.invalid(listener, format!("a TLS listener needs {key}, which is not set")));
            }
        }
        let client_ca = (!tls.client_ca_file.0.is_empty()).then(|| Path::new(&tls.client_ca_file.0));
        let identity = Identity::load(Path::new(&tls.cert_file.0), Path::new(&tls.key_file.0), client_ca);
        identity.map(Some).map_err(|TlsError { file, reason, .. }| {
            let key = match file {
                TlsFile::Certificate => "tls.cert_file",
                TlsFile::Key => "tls.key_file",
                TlsFile::ClientCa => "tls.client_ca_file",
            };
            merged.invalid(key, one_line(&reason))
        })
    }

    /// What an operator may not expect of these settings, each said on one line.
    fn find_warnings(&self, merged: &Merged, sources: &Sources) -> Vec<String> {
        let mut warnings = Vec::new();
        if !sources.service_links.is_empty() {
            warnings.push(format!("ignoring environment variables that are not settings but Kubernetes' links to a service named zen or zen-server (enableServiceLinks: false in the pod's spec leaves them out): {}", one_line(&sources.service_links.join(", "))));
        }
        let origin = merged.origin("oracle.answers");
        if origin != BUILTIN_ORIGIN {
            let builtin = Settings::builtin_table_len();
            let entries = self.oracle.answers.len();
            warnings.push(format!("oracle.answers in {origin} replaces the whole built-in table ({builtin} entries) with its {entries}: list every question the server is to know"));
        }
        let tls = &self.tls;
        if !tls.is_used() {
            let files = [
                ("tls.cert_file", &tls.cert_file),
                ("tls.key_file", &tls.key_file),
                ("tls.client_ca_file", &tls.client_ca_file),
            ];
            for (key, _) in files.into_iter().filter(|(_, path)| !path.0.is_empty()) {
                warnings.push(format!(
                    "{key} is set in {} but no TLS listener is (tls.listen, tls.proxy_listen): it is not used",
                    merged.origin(key)
                ));
            }
        }
        warnings
    }

    /// How many entries the built-in table has.
    fn builtin_table_len() -> usize {
        let table: Result<toml::Table, _> = BUILTIN_TOML.parse();
        table.ok().and_then(|t| t.get("oracle")?.get("answers")?.as_array().map(Vec::len)).unwrap_or(0)
    }

    /// Every address to listen on, with what its connections begin with: `server.listen`,
    /// `proxy.listen`, `tls.listen`, `tls.proxy_listen`, in that order.
    pub fn listen_addrs(&self) -> Vec<(SocketAddr, ListenerKind)> {
        let kind = |proxy, tls| ListenerKind { proxy, tls };
        [
            (self.server.listen.addrs(), kind(false, false)),
            (self.proxy.listen.addrs(), kind(true, false)),
            (self.tls.listen.addrs(), kind(false, true)),
            (self.tls.proxy_listen.addrs(), kind(true, true)),
        ]
        .into_iter()
        .flat_map(|(addrs, kind)| addrs.iter().map(move |&addr| (addr, kind)))
        .collect()
    }

    /// What connections to `addr`, a socket bound elsewhere, begin with, by the list it is in.
    pub fn listener_kind(&self, addr: SocketAddr) -> ListenerKind {
        let tls = &self.tls;
        let proxy = self.proxy.listen.addrs().contains(&addr) || tls.proxy_listen.addrs().contains(&addr);
        let tls = tls.listen.addrs().contains(&addr) || tls.proxy_listen.addrs().contains(&addr);
        ListenerKind { proxy, tls }
    }

    /// The number of session threads to run: `server.workers`, or, when it is 0, one per CPU
    /// this process may use but one, and at least one. The CPU left is for what else runs: the
    /// thread that accepts, the kernel's network work, and whatever shares the machine; a
    /// session is bound to its thread, and on a machine whose every core is taken its clients
    /// would otherwise wait for the scheduler's next slice (`docs/performance.md` has the
    /// figures).
    pub fn worker_count(&self) -> usize {
        match self.server.workers.count() {
            0 => threads::usable_cpus().saturating_sub(1).max(1),
            n => n,
        }
    }

    /// The dotted keys whose values differ between `self` and `other`, sorted (a list, such as
    /// `oracle.answers`, is one key).
    pub fn changed_keys(&self, other: &Settings) -> Vec<String> {
        let (mine, theirs) = (flatten(self), flatten(other));
        let mut keys: BTreeSet<String> =
            mine.keys().chain(theirs.keys()).filter(|key| mine.get(*key) != theirs.get(*key)).cloned().collect();
        if self.oracle.answers != other.oracle.answers {
            keys.insert("oracle.answers".to_owned());
        }
        keys.into_iter().collect()
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

/// Every leaf of `settings` by its dotted key (a list is a leaf); `oracle.answers`, the one value
/// that may be large, stands there empty (compared as a table where it matters).
fn flatten(settings: &Settings) -> BTreeMap<String, toml::Value> {
    fn leaves(value: toml::Value, key: String, into: &mut BTreeMap<String, toml::Value>) {
        match value {
            toml::Value::Table(table) => {
                for (name, value) in table {
                    leaves(value, if key.is_empty() { name } else { format!("{key}.{name}") }, into);
                }
            }
            value => drop(into.insert(key, value)),
        }
    }
    let mut all = BTreeMap::new();
    let settings =
        Settings { oracle: OracleSettings { answers: Arc::default(), ..settings.oracle.clone() }, ..settings.clone() };
    // Plain data in TOML's types: `printed_settings_load_back...` proves it serializes.
    let value = toml::Value::try_from(settings).expect("settings serialize to TOML");
    leaves(value, String::new(), &mut all);
    all
}

/// The values of every [`RESTART_ONLY`] key in `running` (the running settings, flattened), as a
/// layer.
fn running_layer(running: &BTreeMap<String, toml::Value>) -> Layer {
    let mut layer = toml::Table::new();
    for key in RESTART_ONLY {
        let (section, name) = key.split_once('.').unwrap_or((key, ""));
        if let (Some(value), toml::Value::Table(table)) =
            (running.get(key), layer.entry(section).or_insert_with(|| toml::Table::new().into()))
        {
            table.insert(name.into(), value.clone());
        }
    }
    Layer(layer.into_iter().map(|(key, value)| (key, from_toml(value, RUNNING_ORIGIN))).collect())
}

/// `server.listen` from the command line: its addresses, or `configured` on its port.
fn command_line_layer(overrides: &Overrides, configured: &[SocketAddr]) -> Option<Layer> {
    let listen: Vec<SocketAddr> = match (&overrides.listen, overrides.port) {
        (Some(addrs), _) => addrs.clone(),
        (None, Some(port)) => configured.iter().map(|addr| SocketAddr::new(addr.ip(), port)).collect(),
        (None, None) => return None,
    };
    let origin = COMMAND_LINE_ORIGIN.to_owned();
    let items = listen.iter().map(|addr| Value::new(Some(&origin), ValueKind::String(addr.to_string())));
    let server = Map::from_iter([("listen".to_owned(), Value::new(Some(&origin), ValueKind::Array(items.collect())))]);
    Some(Layer(Map::from_iter([("server".to_owned(), Value::new(Some(&origin), ValueKind::Table(server)))])))
}

/// Reads and parses the operator's file; every value knows it comes from there.
fn file_layer(file: &ConfigFile) -> Result<Layer, ConfigError> {
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
        let line = 1 + error.as_bytes()[..error.utf8_error().valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        fail(format!("line {line} is not valid UTF-8 (a settings file is UTF-8 text)"))
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|error| fail(parse_error(&error, &text)))?;
    let origin = one_line(&file.path.display().to_string());
    Ok(Layer(table.into_iter().map(|(key, value)| (key, from_toml(value, &origin))).collect()))
}

/// A TOML parse error of `text` on one line: the line's number, the line, and what is wrong.
fn parse_error(error: &toml::de::Error, text: &str) -> String {
    let message = one_line(&error.message().trim_end_matches('\n').replace('\n', "; "));
    let Some(span) = error.span() else { return message };
    let line = 1 + text.bytes().take(span.start).filter(|&byte| byte == b'\n').count();
    let written = text.lines().nth(line - 1).unwrap_or_default().trim();
    if written.starts_with('[') && !written.starts_with("[[") && message.contains("duplicate key") {
        return format!(
            "line {line}, `{}`: the section is already there above: keep one {}",
            one_line(written),
            one_line(written)
        );
    }
    format!("line {line}, `{}`: {message}", one_line(written))
}

/// A TOML value as a config-rs value from `origin`.
fn from_toml(value: toml::Value, origin: &str) -> Value {
    let origin = origin.to_owned();
    let kind = match value {
        toml::Value::String(text) => ValueKind::String(text),
        toml::Value::Integer(number) => ValueKind::I64(number),
        toml::Value::Float(number) => ValueKind::Float(number),
        toml::Value::Boolean(flag) => ValueKind::Boolean(flag),
        toml::Value::Datetime(time) => ValueKind::String(time.to_string()),
        toml::Value::Array(items) => ValueKind::Array(items.into_iter().map(|item| from_toml(item, &origin)).collect()),
        toml::Value::Table(table) => {
            ValueKind::Table(table.into_iter().map(|(key, value)| (key, from_toml(value, &origin))).collect())
        }
    };
    Value::new(Some(&origin), kind)
}

/// `ZEN_<SECTION>__<KEY>` variables as a layer, each value knowing its variable, its text read
/// as the kind of the key's built-in value: a whole number, `true` or `false`, a list split at
/// commas; text that is none of these where one is expected stays text, for the key's type to
/// refuse by name.
fn env_layer(vars: &HashMap<String, String>, builtin: &Map<String, Value>) -> Result<Layer, ConfigError> {
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut layer = Map::new();
    for name in names {
        let unknown = |reason: String| ConfigError::UnknownVariable { name: name.clone(), reason };
        let Some((section, key)) =
            name.strip_prefix(ENV_PREFIX).and_then(|n| n.strip_prefix('_')).and_then(|n| n.split_once("__"))
        else {
            return Err(unknown(format!(
                "{ENV_PREFIX}_* variables are settings, named {ENV_PREFIX}_<SECTION>__<KEY> (such as ZEN_SERVER__WORKERS), apart from {CONFIG_FILE_VAR}"
            )));
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let dotted = format!("{section}.{key}");
        if dotted == "oracle.answers" {
            return Err(unknown("oracle.answers can only be set in a settings file".into()));
        }
        let origin = format!("environment variable {}", one_line(name));
        let text = &vars[name];
        let model = match builtin.get(&section).map(|value| &value.kind) {
            Some(ValueKind::Table(keys)) => keys.get(&key).map(|value| &value.kind),
            _ => None,
        };
        let as_text = || ValueKind::String(text.clone());
        let kind = match model {
            // An empty variable is an empty list.
            Some(ValueKind::Array(_)) => ValueKind::Array(
                text.split(',')
                    .filter(|_| !text.trim().is_empty())
                    .map(|item| Value::new(Some(&origin), ValueKind::String(item.trim().into())))
                    .collect(),
            ),
            Some(ValueKind::I64(_)) => text
                .parse()
                .map(ValueKind::I64)
                .or_else(|_| text.parse().map(ValueKind::U64))
                .unwrap_or_else(|_| as_text()),
            Some(ValueKind::Boolean(_)) => text.parse().map(ValueKind::Boolean).unwrap_or_else(|_| as_text()),
            _ => as_text(),
        };
        let section = layer.entry(section).or_insert_with(|| Value::new(Some(&origin), ValueKind::Table(Map::new())));
        if let ValueKind::Table(table) = &mut section.kind {
            table.insert(key, Value::new(Some(&origin), kind));
        }
    }
    Ok(Layer(layer))
}

/// A value as an operator would write it; a long list is cut short.
struct Shown<'a>(&'a Value);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN_ITEMS: usize = 4;
        match &self.0.kind {
            ValueKind::String(text) => write!(f, "{}", one_line(&format!("{text:?}"))),
            ValueKind::Array(items) => {
                let shown: Vec<String> = items.iter().take(SHOWN_ITEMS).map(|item| Shown(item).to_string()).collect();
                let more =
                    if items.len() > SHOWN_ITEMS { format!(", ... {} in all", items.len()) } else { String::new() };
                write!(f, "[{}{more}]", shown.join(", "))
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
        assert_eq!(settings.identity.as_ref().map(|identity| identity.subject.as_str()), Some("CN=server"));
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
        assert_eq!(
            error,
            "invalid tls.listen = [\"127.0.0.1:1061\"] in environment variable ZEN_TLS__LISTEN: a TLS listener needs tls.key_file, which is not set"
        );
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
        assert!(Settings::load(&env_sources(&[("ZEN_TLS__CERT_FILE", "/nowhere")])).unwrap().identity.is_none());
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
        assert_eq!(settings.server.listen.addrs(), ["127.0.0.1:1060".parse::<SocketAddr>().unwrap()]);
        assert_eq!(settings.log.format, LogFormat::Text);
        let table = &settings.oracle.answers;
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
        assert_eq!(settings.server.backlog.get(), 7, "file beats built-in");
        assert_eq!(settings.log.level.as_str(), "debug", "file beats built-in");
        assert_eq!(settings.server.workers.get(), 3, "env beats file");
        let listen: Vec<String> = settings.server.listen.addrs().iter().map(|a| a.to_string()).collect();
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
        assert_eq!(Settings::load(&sources).unwrap().server.listen.addrs(), [addr]);
    }

    #[test]
    fn a_file_answer_list_replaces_the_builtin_one() {
        let file = TempFile::new("[oracle]\nanswers = [{ question = \"Why?\", answer = \"Because.\" }]\n");
        let settings = Settings::load(&Sources { file: Some(file.config()), ..Sources::default() }).unwrap();
        let table = &settings.oracle.answers;
        assert_eq!(table.len(), 1);
        assert_eq!(table.answer(b"Beautiful is better than?"), Answer::UNKNOWN_APHORISM);
    }

    #[test]
    fn an_unknown_key_with_dots_in_its_quoted_name_is_blamed_on_its_file() {
        let (error, file) = file_error("[server]\n\"a.b\" = 1\n");
        assert!(
            error.starts_with(&format!("unknown key server.a.b in {} (expected one of", file.0.display())),
            "{error}"
        );
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
        assert_eq!(Settings::load(&sources).unwrap().limits.max_connections.get(), 5);
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
    fn printed_settings_load_back_to_the_same_settings_warning_only_of_the_table() {
        let settings = Settings::builtin().unwrap();
        let file = TempFile::new(&settings.to_toml().unwrap());
        let reloaded = Settings::load(&Sources { file: Some(file.config()), ..Sources::default() }).unwrap();
        assert_eq!(reloaded.to_toml().unwrap(), settings.to_toml().unwrap());
        // Its empty TLS files are no files: the one warning is the table's.
        assert_eq!(reloaded.warnings.len(), 1, "{:?}", reloaded.warnings);
        assert!(reloaded.warnings[0].starts_with("oracle.answers in "), "{:?}", reloaded.warnings);
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
    fn text_where_a_number_or_a_flag_belongs_is_refused_in_a_file_and_read_in_a_variable() {
        let (error, file) = file_error("[server]\nworkers = \"4\"\n");
        let path = file.0.display();
        assert_eq!(error, format!("invalid server.workers = \"4\" in {path}: expected a whole number"));
        let (error, _file) = file_error("[server]\nreuse_port = \"true\"\n");
        assert!(
            error.starts_with("invalid server.reuse_port = \"true\" in ") && error.ends_with("expected true or false")
        );
        let (error, _file) = file_error("[server]\nreuse_port = 1\n");
        assert!(error.starts_with("invalid server.reuse_port = 1 in ") && error.ends_with("expected true or false"));
        let sources = env_sources(&[("ZEN_SERVER__WORKERS", "4"), ("ZEN_SERVER__REUSE_PORT", "true")]);
        let settings = Settings::load(&sources).unwrap();
        assert_eq!((settings.server.workers.get(), settings.server.reuse_port), (4, Flag(true)));
        let error = env_error(&[("ZEN_SERVER__REUSE_PORT", "yes")]);
        assert!(
            error.starts_with("invalid server.reuse_port = \"yes\" in environment variable ZEN_SERVER__REUSE_PORT")
        );
        assert!(error.ends_with("expected true or false"), "{error}");
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
        let settings = Settings::load(&sources).unwrap();
        let listen = settings.server.listen.addrs();
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

    #[test]
    fn the_builtin_file_and_the_structs_have_the_same_keys_both_ways() {
        let table: toml::Table = BUILTIN_TOML.parse().unwrap();
        let mut in_file: Vec<String> = table
            .iter()
            .flat_map(|(section, keys)| keys.as_table().unwrap().keys().map(move |key| format!("{section}.{key}")))
            .collect();
        in_file.sort();
        let in_structs: Vec<String> = flatten(&Settings::builtin().unwrap()).into_keys().collect();
        assert_eq!(in_file, in_structs);
        // A key the file has and no struct reads is refused, as is a struct field the file lacks.
        let extra = BUILTIN_TOML.replacen("[server]\n", "[server]\nthreads = 2\n", 1);
        assert_ne!(extra, BUILTIN_TOML);
        let error = config::File::from_str(&extra, FileFormat::Toml)
            .collect()
            .map(|values| Settings::merge(&[Layer(values)]).map(|_| ()).unwrap_err().to_string());
        assert!(error.unwrap().starts_with("unknown key server.threads in built-in defaults"));
        let missing = BUILTIN_TOML.replace("backlog = ", "# backlog = ");
        let values = config::File::from_str(&missing, FileFormat::Toml).collect().unwrap();
        let error = Settings::merge(&[Layer(values)]).map(|_| ()).unwrap_err().to_string();
        assert!(error.contains("backlog"), "{error}");
    }

    #[test]
    fn every_restart_only_key_is_a_setting() {
        let keys = flatten(&Settings::builtin().unwrap());
        for key in RESTART_ONLY {
            assert!(keys.contains_key(key), "{key}");
        }
    }

    #[test]
    fn changed_keys_pair_values_by_key_whatever_order_they_are_written_in() {
        let running = Settings::builtin().unwrap();
        let reordered = TempFile::new(
            "[limits]\nwrite_timeout_secs = 30\nidle_timeout_secs = 300\n[server]\nlame_duck_ms = 0\nbacklog = 1024\n",
        );
        let sources = Sources { file: Some(reordered.config()), ..Sources::default() };
        assert_eq!(running.changed_keys(&Settings::load(&sources).unwrap()), Vec::<String>::new());
        // Two values swapped: both keys named, and only they.
        let swapped = TempFile::new("[limits]\nwrite_timeout_secs = 300\nidle_timeout_secs = 30\n");
        let sources = Sources { file: Some(swapped.config()), ..Sources::default() };
        let changed = running.changed_keys(&Settings::load(&sources).unwrap());
        assert_eq!(changed, ["limits.idle_timeout_secs", "limits.write_timeout_secs"]);
    }

    #[test]
    fn a_file_table_replacing_the_builtin_one_is_a_warning_with_both_counts() {
        let file = TempFile::new("[oracle]\nanswers = [{ question = \"Why?\", answer = \"Because.\" }]\n");
        let settings = Settings::load(&Sources { file: Some(file.config()), ..Sources::default() }).unwrap();
        let builtin = Settings::builtin().unwrap();
        assert!(builtin.warnings.is_empty(), "{:?}", builtin.warnings);
        let path = file.0.display();
        let expected = format!(
            "oracle.answers in {path} replaces the whole built-in table ({} entries) with its 1: list every question the server is to know",
            builtin.oracle.answers.len()
        );
        assert_eq!(settings.warnings, [expected]);
    }

    #[test]
    fn a_tls_listener_without_its_files_is_blamed_on_the_layer_that_set_the_listener() {
        let (error, file) = file_error("[tls]\nlisten = [\"127.0.0.1:1061\"]\n");
        let path = file.0.display();
        assert_eq!(
            error,
            format!(
                "invalid tls.listen = [\"127.0.0.1:1061\"] in {path}: a TLS listener needs tls.cert_file, which is not set"
            )
        );
    }

    #[test]
    fn tls_files_without_a_tls_listener_and_service_links_are_warnings() {
        let sources = Sources {
            env: env(&[("ZEN_TLS__CERT_FILE", "/etc/zen/cert.pem")]),
            service_links: vec!["ZEN_PORT".into()],
            ..Sources::default()
        };
        let warnings = Settings::load(&sources).unwrap().warnings;
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("ignoring environment variables") && warnings[0].ends_with(": ZEN_PORT"));
        assert_eq!(
            warnings[1],
            "tls.cert_file is set in environment variable ZEN_TLS__CERT_FILE but no TLS listener is (tls.listen, tls.proxy_listen): it is not used"
        );
    }

    #[test]
    fn a_port_out_of_range_and_a_section_written_twice_are_named_as_such() {
        let (error, file) = file_error("[server]\nlisten = [\"127.0.0.1:99999\"]\n");
        let path = file.0.display();
        assert_eq!(
            error,
            format!(
                "invalid server.listen[0] = \"127.0.0.1:99999\" in {path}: port 99999 is out of range: a port is from 0 to 65535"
            )
        );
        let (error, file) = file_error("[server]\nworkers = 2\n[limits]\nmax_connections = 5\n[server]\nbacklog = 5\n");
        let path = file.0.display();
        assert_eq!(
            error,
            format!("--config {path}: line 5, `[server]`: the section is already there above: keep one [server]")
        );
    }
}
