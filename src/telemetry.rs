//! Logging: a `tracing` subscriber writing text or JSON lines, filtered by `log.level`, whose
//! filter a reload can replace ([`LogControl`]), to standard error or output, or to the system
//! log ([`Destination`]).
//!
//! Every event and every error is one line: text quoted from outside (a settings key, a path,
//! a parser's message) goes through [`one_line`].
//!
//! Building the subscriber is separate from installing it, so tests can build one over any
//! writer. Installing it also routes the `log` crate's records (actix logs through `log`)
//! into `tracing`; replacing the filter moves the `log` crate's level along with it. The
//! daemon's own subscriber writes through a [`LogQueue`]: no thread that serves clients ever
//! waits for the log's reader.

use std::{
    io::{self, IsTerminal, Write},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use crate::log_queue::{LineSink, LogFlush, LogQueue};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::{
    EnvFilter, Registry,
    fmt::{self, MakeWriter},
    layer::SubscriberExt,
    reload,
    util::SubscriberInitExt,
};

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `log.level` is not a valid filter.
    #[error("invalid log.level {level:?}: {source}")]
    Filter {
        /// The directives given.
        level: String,
        /// What the parser said.
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was already installed.
    #[error("logging is already set up: {0}")]
    AlreadySet(#[from] tracing_subscriber::util::TryInitError),
    /// The subscriber whose filter was to be replaced is gone.
    #[error("cannot change the log level: {0}")]
    Reload(#[from] reload::Error),
    /// The thread writing the log could not start.
    #[error("cannot start the thread writing the log: {0}")]
    Writer(io::Error),
}

/// Where the system log listens for messages, on Linux.
pub const SYSTEM_LOG_SOCKET: &str = "/dev/log";

/// The longest message sent to the system log, in bytes: rsyslog's default limit; a longer
/// event is cut there.
const MAX_SYSLOG_MESSAGE: usize = 8192;

/// Where log events are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Standard error or standard output, as `log.output` says.
    Output(LogOutput),
    /// The system log, at this socket.
    Syslog(PathBuf),
    /// Nowhere at all.
    Nowhere,
}

impl Destination {
    /// Where logs go when standard error is a client's connection (inetd's nowait mode puts
    /// the connection on descriptors 0, 1 and 2): the system log if it listens at
    /// [`SYSTEM_LOG_SOCKET`], nowhere otherwise; never the client.
    pub fn away_from_the_client() -> Self {
        let socket = Path::new(SYSTEM_LOG_SOCKET);
        if socket.exists() { Self::Syslog(socket.to_owned()) } else { Self::Nowhere }
    }
}

/// The system log: each event one datagram, as `logger` sends them (`<PRI>TAG[PID]: MESSAGE`),
/// with the daemon facility and a severity from the event's level.
#[derive(Debug)]
pub struct Syslog {
    socket: UnixDatagram,
    tag: String,
}

impl Syslog {
    /// Connects to the system log listening at `path`.
    ///
    /// # Errors
    ///
    /// If nothing listens there.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        Ok(Self { socket, tag: format!("zen-server[{}]", std::process::id()) })
    }

    /// Sends `message` at `level`; a message the system log does not take is lost (there is
    /// nowhere else to say so).
    pub fn send(&self, level: Level, message: &[u8]) {
        // Facility 3 (daemon); severities err, warning, info, debug.
        let severity = match level {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        let message = message.strip_suffix(b"\n").unwrap_or(message);
        let message = &message[..message.len().min(MAX_SYSLOG_MESSAGE)];
        let mut datagram = format!("<{}>{}: ", 3 * 8 + severity, self.tag).into_bytes();
        datagram.extend_from_slice(message);
        let _ = self.socket.send(&datagram);
    }
}

/// One event on its way to the system log: sent whole when the formatter is done with it.
pub struct SyslogEvent<'a> {
    syslog: &'a Syslog,
    level: Level,
    text: Vec<u8>,
}

impl Write for SyslogEvent<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogEvent<'_> {
    fn drop(&mut self) {
        if !self.text.is_empty() {
            self.syslog.send(self.level, &self.text);
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogEvent<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SyslogEvent { syslog: self, level: Level::INFO, text: Vec::new() }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        SyslogEvent { syslog: self, level: *meta.level(), text: Vec::new() }
    }
}

/// The daemon's log destinations.
pub enum LogSink {
    /// Standard error.
    Stderr,
    /// Standard output.
    Stdout,
    /// The system log, one datagram per line.
    Syslog(Syslog),
}

impl LineSink for LogSink {
    fn write_line(&mut self, level: Level, line: &[u8]) -> io::Result<()> {
        match self {
            LogSink::Stderr => io::stderr().lock().write_all(line),
            LogSink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(line)?;
                out.flush()
            }
            LogSink::Syslog(syslog) => {
                syslog.send(level, line);
                Ok(())
            }
        }
    }
}

/// Replaces the log filter of a running subscriber.
#[derive(Debug, Clone)]
pub struct LogControl(reload::Handle<EnvFilter, Registry>);

impl LogControl {
    /// Filters events by `level` (a level or `EnvFilter` directives) from now on.
    ///
    /// # Errors
    ///
    /// [`TelemetryError`] if `level` does not parse or the subscriber is gone.
    pub fn set_level(&self, level: &str) -> Result<(), TelemetryError> {
        Ok(self.0.reload(parse_filter(level)?)?)
    }
}

fn parse_filter(level: &str) -> Result<EnvFilter, TelemetryError> {
    EnvFilter::try_new(level).map_err(|source| TelemetryError::Filter { level: level.to_owned(), source })
}

/// How text lines look.
#[derive(Debug, Clone, Copy)]
pub struct TextStyle {
    /// Colours, for a terminal.
    pub ansi: bool,
    /// A timestamp first (the system log adds its own).
    pub timestamps: bool,
}

/// `text` with its control characters (line breaks among them) escaped, `\n` for a new line:
/// quoted in a message, it cannot break the message's line.
pub fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// A subscriber filtering by `level` and writing `format` to `writer`, and the control of its
/// filter.
///
/// # Errors
///
/// [`TelemetryError::Filter`] if `level` does not parse.
pub fn subscriber<W>(
    level: &str,
    format: LogFormat,
    writer: W,
    style: TextStyle,
) -> Result<(Box<dyn Subscriber + Send + Sync>, LogControl), TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // The filter itself is what reloads, not a filtered layer (reloading one of those panics,
    // tracing issue 1629).
    let (filter, control) = reload::Layer::new(parse_filter(level)?);
    let registry = tracing_subscriber::registry().with(filter);
    let text = fmt::layer().with_writer(writer).with_ansi(style.ansi);
    let subscriber: Box<dyn Subscriber + Send + Sync> = match format {
        LogFormat::Text if style.timestamps => Box::new(registry.with(text)),
        LogFormat::Text => Box::new(registry.with(text.without_time())),
        // The span list follows only the entered span, not an explicit `parent:`; the current
        // span honours both, and sessions log with `parent:`.
        LogFormat::Json => Box::new(registry.with(text.json().flatten_event(true).with_span_list(false))),
    };
    Ok((subscriber, LogControl(control)))
}

/// Installs the subscriber filtering by `level` and writing `format` to `destination`,
/// process-wide, through a [`LogQueue`], and reports panics as one `error` event each instead
/// of the default multi-line message. Keep the [`LogFlush`] until the daemon exits: dropping it
/// waits (briefly) for the lines queued to be written.
///
/// # Errors
///
/// [`TelemetryError`] if `level` does not parse, the log's writer cannot start, or logging was
/// already set up.
pub fn init(
    level: &str,
    format: LogFormat,
    destination: &Destination,
) -> Result<(LogControl, Option<LogFlush>), TelemetryError> {
    let terminal = |ansi| TextStyle { ansi, timestamps: true };
    let queued = |sink| LogQueue::start(sink).map_err(TelemetryError::Writer);
    let ((subscriber, control), flush) = match destination {
        Destination::Output(LogOutput::Stderr) => {
            let (queue, flush) = queued(LogSink::Stderr)?;
            (subscriber(level, format, queue, terminal(std::io::stderr().is_terminal()))?, Some(flush))
        }
        Destination::Output(LogOutput::Stdout) => {
            let (queue, flush) = queued(LogSink::Stdout)?;
            (subscriber(level, format, queue, terminal(std::io::stdout().is_terminal()))?, Some(flush))
        }
        Destination::Syslog(path) => match Syslog::connect(path) {
            Ok(syslog) => {
                let (queue, flush) = queued(LogSink::Syslog(syslog))?;
                (subscriber(level, format, queue, TextStyle { ansi: false, timestamps: false })?, Some(flush))
            }
            Err(_) => (subscriber(level, format, std::io::sink, terminal(false))?, None),
        },
        Destination::Nowhere => (subscriber(level, format, std::io::sink, terminal(false))?, None),
    };
    subscriber.try_init()?;
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info.location().map(ToString::to_string).unwrap_or_default();
        tracing::error!(panic_message = message, location, "panic");
    }));
    Ok((control, flush))
}

/// `log.level`: levels and `target=level` directives. A bare word that is not a level would be
/// taken as a target, at which nothing logs: that is refused, not obeyed silently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LogLevel(String);

impl LogLevel {
    /// The directives, as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LogLevel {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
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
        tracing_subscriber::EnvFilter::try_new(&text).map_err(|error| format!("{error}; {expected}"))?;
        Ok(Self(text))
    }
}

impl From<LogLevel> for String {
    fn from(level: LogLevel) -> String {
        level.0
    }
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

/// Where log events are written; read in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogOutput {
    /// Standard error, the default.
    Stderr,
    /// Standard output (what container engines collect).
    Stdout,
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

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_text_stays_on_one_line_and_otherwise_unchanged() {
        assert_eq!(super::one_line("a\nb\r\tc \"d\" é"), "a\\nb\\r\\tc \"d\" é");
    }

    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log_with(format: LogFormat, level: &str) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let style = TextStyle { ansi: false, timestamps: true };
        let (subscriber, _) = subscriber(level, format, move || writer.clone(), style).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("session", id = 7, peer = "127.0.0.1:5000");
            tracing::info!(parent: &span, answers = 3, "connection closed");
            tracing::debug!("hidden at info");
        });
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_format_writes_one_object_per_event_with_fields_and_span() {
        let output = log_with(LogFormat::Json, "info");
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(lines.len(), 1, "{output}");
        let line = lines[0];
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        for part in
            ["\"message\":\"connection closed\"", "\"answers\":3", "\"level\":\"INFO\"", "\"peer\":\"127.0.0.1:5000\""]
        {
            assert!(line.contains(part), "{part} missing from {line}");
        }
    }

    #[test]
    fn text_format_writes_the_message_fields_and_span() {
        let output = log_with(LogFormat::Text, "info");
        assert_eq!(output.lines().count(), 1, "{output}");
        assert!(output.contains("session{id=7 peer=\"127.0.0.1:5000\"}"), "{output}");
        assert!(output.contains("connection closed answers=3"), "{output}");
    }

    #[test]
    fn a_new_level_takes_effect_at_once() {
        let captured = Captured::default();
        let writer = captured.clone();
        let style = TextStyle { ansi: false, timestamps: true };
        let (subscriber, control) = subscriber("warn", LogFormat::Text, move || writer.clone(), style).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before");
            control.set_level("info").unwrap();
            tracing::info!("after");
            assert!(control.set_level("info,=x").is_err());
        });
        let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(!output.contains("before") && output.contains("after"), "{output}");
    }

    #[test]
    fn the_level_filters_events() {
        assert!(log_with(LogFormat::Text, "debug").contains("hidden at info"));
        assert!(log_with(LogFormat::Text, "warn").is_empty());
    }

    #[test]
    fn events_go_to_the_system_log_one_datagram_each_with_their_severity() {
        let dir = std::env::temp_dir().join(format!("zen-syslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let _ = std::fs::remove_file(&path);
        let system_log = UnixDatagram::bind(&path).unwrap();
        let syslog = Syslog::connect(&path).unwrap();
        let style = TextStyle { ansi: false, timestamps: false };
        let (subscriber, _) = subscriber("info", LogFormat::Text, syslog, style).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(peer = "127.0.0.1:5000", "serving the connection on standard input");
            tracing::error!("oracle.hang_question was asked");
        });
        let mut buffer = [0; 1024];
        let mut next = || {
            let n = system_log.recv(&mut buffer).unwrap();
            String::from_utf8_lossy(&buffer[..n]).into_owned()
        };
        let tag = format!("zen-server[{}]: ", std::process::id());
        let first = next();
        assert!(first.starts_with(&format!("<30>{tag} INFO ")), "{first:?}");
        assert!(first.ends_with("serving the connection on standard input peer=\"127.0.0.1:5000\""), "{first:?}");
        let second = next();
        assert!(second.starts_with(&format!("<27>{tag}ERROR ")), "{second:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
