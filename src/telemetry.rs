//! Logging: a `tracing` subscriber writing text or JSON lines, filtered by `log.level`, whose
//! filter a reload can replace ([`LogControl`]).
//!
//! Building the subscriber is separate from installing it, so tests can build one over any
//! writer. Installing it also routes the `log` crate's records (actix logs through `log`)
//! into `tracing`; replacing the filter moves the `log` crate's level along with it.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::{
    EnvFilter, Registry,
    fmt::{self, MakeWriter},
    layer::SubscriberExt,
    reload,
    util::SubscriberInitExt,
};

use crate::config::{LogFormat, LogOutput, LogSettings};

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

/// A subscriber for `settings` writing to `writer`, and the control of its filter.
///
/// # Errors
///
/// [`TelemetryError::Filter`] if `log.level` does not parse.
pub fn subscriber<W>(
    settings: &LogSettings,
    writer: W,
    ansi: bool,
) -> Result<(Box<dyn Subscriber + Send + Sync>, LogControl), TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // The filter itself is what reloads, not a filtered layer (reloading one of those panics,
    // tracing issue 1629).
    let (filter, control) = reload::Layer::new(parse_filter(&settings.level)?);
    let registry = tracing_subscriber::registry().with(filter);
    let subscriber: Box<dyn Subscriber + Send + Sync> = match settings.format {
        LogFormat::Text => Box::new(registry.with(fmt::layer().with_writer(writer).with_ansi(ansi))),
        // The span list follows only the entered span, not an explicit `parent:`; the current
        // span honours both, and sessions log with `parent:`.
        LogFormat::Json => {
            Box::new(registry.with(fmt::layer().json().flatten_event(true).with_span_list(false).with_writer(writer)))
        }
    };
    Ok((subscriber, LogControl(control)))
}

/// Installs the subscriber for `settings` on standard error or output, process-wide, and reports
/// panics as one `error` event each instead of the default multi-line message.
///
/// # Errors
///
/// [`TelemetryError`] if `log.level` does not parse or logging was already set up.
pub fn init(settings: &LogSettings) -> Result<LogControl, TelemetryError> {
    let (subscriber, control) = match settings.output {
        LogOutput::Stderr => subscriber(settings, std::io::stderr, std::io::stderr().is_terminal())?,
        LogOutput::Stdout => subscriber(settings, std::io::stdout, std::io::stdout().is_terminal())?,
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
        tracing::error!(message, location, "panic");
    }));
    Ok(control)
}

#[cfg(test)]
mod tests {
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
        let settings = LogSettings { level: level.into(), format, output: LogOutput::Stderr };
        let (subscriber, _) = subscriber(&settings, move || writer.clone(), false).unwrap();
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
        let settings = LogSettings { level: "warn".into(), format: LogFormat::Text, output: LogOutput::Stderr };
        let (subscriber, control) = subscriber(&settings, move || writer.clone(), false).unwrap();
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
}
