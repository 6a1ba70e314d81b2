//! Prometheus metrics: what the daemon counts ([`Metrics`]), and the HTTP endpoint that serves
//! them at `metrics.listen` (off unless set), from `metrics-exporter-prometheus`.
//!
//! Counting costs the question's path next to nothing: each worker thread and each oracle replica
//! keeps its counts in plain cells of its own ([`Tally`]) and adds them to the shared counters
//! every [`FLUSH_INTERVAL`]; only the answer latency goes straight to its histogram, once per
//! batch of questions, into the exporter's queue, which it sorts into buckets every 100 ms (at
//! its default of 5 s the queue grew to tens of megabytes under heavy pipelining). Rare events
//! (a connection accepted, a reload) go straight to their counters. Without `metrics.listen`
//! nothing is measured: no clock is read for latency and no flush runs.
//!
//! The handles are passed to the actors that count, never looked up in a global registry.

use std::{cell::Cell, io, net::SocketAddr, sync::Arc, time::Duration};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusRecorder};
use serde::{Deserialize, Serialize};

use crate::{
    server::listener::parse_socket_addr,
    tls::{HANDSHAKE_RESULTS, HandshakeError},
};

/// How often per-thread counts are added to the shared counters.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How often the exporter moves queued latency samples into the histogram's buckets, which
/// bounds the memory they take to what that many milliseconds of batches record.
const UPKEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Upper bounds of the answer latency histogram's buckets, in seconds: 50 µs to 1 s.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

const LATENCY: &str = "zen_answer_latency_seconds";

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed after whole questions.
    Eof,
    /// The client closed in the middle of a question.
    Partial,
    /// No question for `idle_timeout_secs`.
    IdleTimeout,
    /// A question longer than `max_question_bytes`.
    TooLong,
    /// Refused at the connection limit.
    Busy,
    /// The client read nothing for `write_timeout_secs`.
    WriteTimeout,
    /// Reading or writing failed (a reset, a vanished peer).
    Error,
    /// The server shut down.
    Shutdown,
    /// A PROXY protocol header was missing, malformed, late, or from an untrusted source.
    Proxy,
    /// A TLS handshake did not complete.
    TlsHandshake,
    /// Refused: the client already held `limits.max_connections_per_client`.
    PerClientLimit,
    /// The oracle owed answers for `write_timeout_secs` and gave none.
    Unanswered,
}

impl CloseReason {
    /// Every reason, in the order of the label values.
    pub const ALL: [CloseReason; 12] = [
        Self::Eof,
        Self::Partial,
        Self::IdleTimeout,
        Self::TooLong,
        Self::Busy,
        Self::WriteTimeout,
        Self::Error,
        Self::Shutdown,
        Self::Proxy,
        Self::TlsHandshake,
        Self::PerClientLimit,
        Self::Unanswered,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Eof => "eof",
            Self::Partial => "partial",
            Self::IdleTimeout => "idle_timeout",
            Self::TooLong => "too_long",
            Self::Busy => "busy",
            Self::WriteTimeout => "write_timeout",
            Self::Error => "error",
            Self::Shutdown => "shutdown",
            Self::Proxy => "proxy",
            Self::TlsHandshake => "tls_handshake",
            Self::PerClientLimit => "per_client_limit",
            Self::Unanswered => "unanswered",
        }
    }
}

/// What a question got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its answer from the table.
    Known,
    /// `Error: unknown aphorism.`
    Unknown,
    /// `Error: question too long.`
    TooLong,
    /// `Error: internal error.` (the lookup panicked, or the oracle was gone).
    InternalError,
}

impl Outcome {
    /// Every outcome, in the order of the label values.
    pub const ALL: [Outcome; 4] = [Self::Known, Self::Unknown, Self::TooLong, Self::InternalError];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Known => "known",
            Self::Unknown => "unknown",
            Self::TooLong => "too_long",
            Self::InternalError => "internal_error",
        }
    }
}

/// The metrics endpoint could not be started.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The exporter refused to start (for example, the address is in use).
    #[error("cannot serve metrics.listen {addr}: {source}")]
    Exporter {
        /// `metrics.listen`.
        addr: SocketAddr,
        /// What the exporter said.
        source: BuildError,
    },
    /// The exporter's thread or runtime could not be started.
    #[error("cannot serve metrics.listen {addr}: {source}")]
    Thread {
        /// `metrics.listen`.
        addr: SocketAddr,
        /// What the system said.
        source: io::Error,
    },
}

/// The daemon's shared metrics; cloning shares them. [`Metrics::disabled`] counts nothing.
#[derive(Clone, Default)]
pub struct Metrics {
    handles: Option<Arc<Handles>>,
}

struct Handles {
    accepted: Counter,
    active: Gauge,
    closed: [Counter; CloseReason::ALL.len()],
    answered: [Counter; Outcome::ALL.len()],
    received_bytes: Counter,
    sent_bytes: Counter,
    latency: Histogram,
    oracle_panics: Counter,
    reloads_ok: Counter,
    reloads_failed: Counter,
    handshakes: [Counter; HANDSHAKE_RESULTS.len()],
    tls_active: Gauge,
    certificate_expiry: Gauge,
    log_lines_dropped: Counter,
    workers_stalled: Gauge,
}

impl Metrics {
    /// Metrics that count nothing (no `metrics.listen`).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Whether anything is counted.
    pub fn is_enabled(&self) -> bool {
        self.handles.is_some()
    }

    /// Serves the metrics at `http://addr/metrics` (any path, in fact) from a thread of its own.
    ///
    /// # Errors
    ///
    /// [`MetricsError`] naming `addr` if it cannot be listened on.
    pub fn serve(addr: SocketAddr) -> Result<Self, MetricsError> {
        let builder = PrometheusBuilder::new()
            .with_http_listener(addr)
            .upkeep_timeout(UPKEEP_INTERVAL)
            .set_buckets_for_metric(Matcher::Full(LATENCY.into()), &LATENCY_BUCKETS)
            .map_err(|source| MetricsError::Exporter { addr, source })?;
        let (started, recorder) = std::sync::mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| MetricsError::Thread { addr, source })?;
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match builder.build() {
                        Ok((recorder, exporter)) => {
                            let _ = started.send(Ok(recorder));
                            if let Err(error) = exporter.await {
                                tracing::error!(?error, "the metrics endpoint stopped");
                            }
                        }
                        Err(error) => {
                            let _ = started.send(Err(error));
                        }
                    }
                });
            })
            .map_err(|source| MetricsError::Thread { addr, source })?;
        let recorder =
            recorder.recv().map_err(|_| MetricsError::Thread { addr, source: io::ErrorKind::Other.into() })?;
        Ok(Self::registered_in(&recorder.map_err(|source| MetricsError::Exporter { addr, source })?))
    }

    fn registered_in(recorder: &PrometheusRecorder) -> Self {
        let metadata = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
        let described = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            recorder.describe_counter(KeyName::from(name), unit, SharedString::from(help));
        };
        let counter = |name: &'static str, labels: Vec<Label>| {
            recorder.register_counter(&Key::from_parts(name, labels), &metadata)
        };
        let gauge =
            |name: &'static str, labels: Vec<Label>| recorder.register_gauge(&Key::from_parts(name, labels), &metadata);
        described(
            "zen_connections_accepted_total",
            None,
            "Connections accepted, including those then refused as busy.",
        );
        described("zen_connections_active", None, "Connections being served now.");
        described("zen_connections_closed_total", None, "Connections ended, by reason.");
        described("zen_questions_answered_total", None, "Questions answered, by outcome.");
        described("zen_received_bytes_total", Some(Unit::Bytes), "Bytes read from clients.");
        described("zen_sent_bytes_total", Some(Unit::Bytes), "Bytes of answers written to clients.");
        described(
            LATENCY,
            Some(Unit::Seconds),
            "From reading a batch of questions to handing its answers to the socket; one sample per batch read together.",
        );
        described(
            "zen_oracle_panics_total",
            None,
            "Oracle lookups that panicked (contained: answered with an internal error).",
        );
        described("zen_reloads_total", None, "Reloads of the settings, by result.");
        described("zen_build_info", None, "The running build: version and commit.");
        described(
            "zen_workers_stalled",
            None,
            "Worker threads that have not answered a liveness check for a second or more; connections are routed around them.",
        );
        described(
            "zen_log_lines_dropped_total",
            None,
            "Log lines dropped because whatever reads the log fell behind (the queue to the log's writer was full).",
        );
        described("zen_tls_handshakes_total", None, "TLS handshakes, by result.");
        described("zen_tls_connections_active", None, "Connections open over TLS now, handshakes under way included.");
        described(
            "zen_tls_certificate_expiry_timestamp_seconds",
            Some(Unit::Seconds),
            "When the certificate served now expires, in seconds since the Unix epoch; 0 without TLS.",
        );
        let label = |name: &'static str, value: &'static str| vec![Label::new(name, value)];
        let handles = Handles {
            accepted: counter("zen_connections_accepted_total", vec![]),
            active: gauge("zen_connections_active", vec![]),
            closed: CloseReason::ALL
                .map(|reason| counter("zen_connections_closed_total", label("reason", reason.name()))),
            answered: Outcome::ALL
                .map(|outcome| counter("zen_questions_answered_total", label("outcome", outcome.name()))),
            received_bytes: counter("zen_received_bytes_total", vec![]),
            sent_bytes: counter("zen_sent_bytes_total", vec![]),
            latency: recorder.register_histogram(&Key::from_name(LATENCY), &metadata),
            oracle_panics: counter("zen_oracle_panics_total", vec![]),
            reloads_ok: counter("zen_reloads_total", label("result", "ok")),
            reloads_failed: counter("zen_reloads_total", label("result", "failed")),
            handshakes: HANDSHAKE_RESULTS.map(|result| counter("zen_tls_handshakes_total", label("result", result))),
            tls_active: gauge("zen_tls_connections_active", vec![]),
            certificate_expiry: gauge("zen_tls_certificate_expiry_timestamp_seconds", vec![]),
            log_lines_dropped: counter("zen_log_lines_dropped_total", vec![]),
            workers_stalled: gauge("zen_workers_stalled", vec![]),
        };
        let build = vec![Label::new("version", env!("CARGO_PKG_VERSION")), Label::new("commit", env!("BUILD_COMMIT"))];
        gauge("zen_build_info", build).set(1.0);
        // Every series exists from the start, at zero, so rates and absences are well defined.
        for counter in handles.closed.iter().chain(&handles.answered).chain(&handles.handshakes) {
            counter.increment(0);
        }
        for counter in [
            &handles.accepted,
            &handles.received_bytes,
            &handles.sent_bytes,
            &handles.oracle_panics,
            &handles.reloads_ok,
            &handles.reloads_failed,
            &handles.log_lines_dropped,
        ] {
            counter.increment(0);
        }
        handles.active.set(0.0);
        handles.workers_stalled.set(0.0);
        Self { handles: Some(Arc::new(handles)) }
    }

    /// One connection accepted.
    pub fn accepted(&self) {
        if let Some(handles) = &self.handles {
            handles.accepted.increment(1);
        }
    }

    /// A connection refused at the limit, told so in `sent` bytes.
    pub fn refused_busy(&self, sent: usize) {
        if let Some(handles) = &self.handles {
            handles.closed[CloseReason::Busy as usize].increment(1);
            handles.sent_bytes.increment(sent as u64);
        }
    }

    /// A connection that ended before a session could start for it (its hand-over to a worker
    /// thread failed), counted at once rather than in a thread's tally.
    pub fn closed_unserved(&self, reason: CloseReason) {
        if let Some(handles) = &self.handles {
            handles.closed[reason as usize].increment(1);
        }
    }

    /// Connections being served now.
    pub fn set_active(&self, active: usize) {
        if let Some(handles) = &self.handles {
            handles.active.set(active as f64);
        }
    }

    /// Worker threads stalled now.
    pub fn set_workers_stalled(&self, workers: usize) {
        if let Some(handles) = &self.handles {
            handles.workers_stalled.set(workers as f64);
        }
    }

    /// Log lines dropped since the start.
    pub fn set_log_lines_dropped(&self, dropped: u64) {
        if let Some(handles) = &self.handles {
            handles.log_lines_dropped.absolute(dropped);
        }
    }

    /// Oracle lookups that panicked since the start.
    pub fn set_oracle_panics(&self, panics: u64) {
        if let Some(handles) = &self.handles {
            handles.oracle_panics.absolute(panics);
        }
    }

    /// A reload, taken or not.
    pub fn reloaded(&self, ok: bool) {
        if let Some(handles) = &self.handles {
            if ok { &handles.reloads_ok } else { &handles.reloads_failed }.increment(1);
        }
    }

    /// A TLS handshake completed, or did not for the error's reason.
    pub fn handshake(&self, result: Result<(), &HandshakeError>) {
        if let Some(handles) = &self.handles {
            handles.handshakes[result.map_or_else(HandshakeError::index, |()| 0)].increment(1);
        }
    }

    /// Counts one more connection served over TLS until the guard is dropped.
    pub fn tls_connection(&self) -> TlsConnection {
        if let Some(handles) = &self.handles {
            handles.tls_active.increment(1.0);
        }
        TlsConnection { metrics: self.clone() }
    }

    /// The certificate served from now on expires at `not_after` (seconds since the epoch).
    pub fn set_certificate_expiry(&self, not_after: i64) {
        if let Some(handles) = &self.handles {
            handles.certificate_expiry.set(not_after as f64);
        }
    }

    /// How long a batch of questions took, from being read to its answers being sent.
    pub fn record_latency(&self, latency: Duration) {
        if let Some(handles) = &self.handles {
            handles.latency.record(latency.as_secs_f64());
        }
    }

    /// Adds `tally`'s counts to the shared counters and zeroes them.
    pub fn add(&self, tally: &Tally) {
        let Some(handles) = &self.handles else { return };
        for (counter, cell) in handles.closed.iter().zip(&tally.closed) {
            counter.increment(cell.take());
        }
        for (counter, cell) in handles.answered.iter().zip(&tally.answered) {
            counter.increment(cell.take());
        }
        handles.received_bytes.increment(tally.received_bytes.take());
        handles.sent_bytes.increment(tally.sent_bytes.take());
    }
}

/// One connection served over TLS, counted in `zen_tls_connections_active` while it lives.
pub struct TlsConnection {
    metrics: Metrics,
}

impl Drop for TlsConnection {
    fn drop(&mut self) {
        if let Some(handles) = &self.metrics.handles {
            handles.tls_active.decrement(1.0);
        }
    }
}

/// Counts of one thread not yet added to [`Metrics`]: plain cells, no atomics.
#[derive(Debug, Default)]
pub struct Tally {
    closed: [Cell<u64>; CloseReason::ALL.len()],
    answered: [Cell<u64>; Outcome::ALL.len()],
    received_bytes: Cell<u64>,
    sent_bytes: Cell<u64>,
}

impl Tally {
    /// A connection ended for `reason`.
    pub fn closed(&self, reason: CloseReason) {
        add(&self.closed[reason as usize], 1);
    }

    /// `count` questions got `outcome`.
    pub fn answered(&self, outcome: Outcome, count: u64) {
        add(&self.answered[outcome as usize], count);
    }

    /// `bytes` read from a client.
    pub fn received(&self, bytes: usize) {
        add(&self.received_bytes, bytes as u64);
    }

    /// `bytes` written to a client.
    pub fn sent(&self, bytes: usize) {
        add(&self.sent_bytes, bytes as u64);
    }

    /// Connections ended for `reason` so far (for tests: what ended a connection, not only that it did).
    #[cfg(test)]
    pub(crate) fn closed_for(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize].get()
    }
}

fn add(cell: &Cell<u64>, count: u64) {
    cell.set(cell.get() + count);
}

/// `metrics.listen`: where to serve metrics, or `""` for nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MetricsListen(pub Option<SocketAddr>);

impl TryFrom<String> for MetricsListen {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "" => Ok(Self(None)),
            text => {
                parse_socket_addr(text, "such as 127.0.0.1:9106, or \"\" for no metrics").map(|addr| Self(Some(addr)))
            }
        }
    }
}

impl From<MetricsListen> for String {
    fn from(listen: MetricsListen) -> String {
        listen.0.map(|addr| addr.to_string()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_adds_to_the_counters_once_and_is_zero_afterwards() {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(LATENCY.into()), &LATENCY_BUCKETS)
            .unwrap()
            .build_recorder();
        let metrics = Metrics::registered_in(&recorder);
        let tally = Tally::default();
        tally.answered(Outcome::Known, 3);
        tally.answered(Outcome::Unknown, 1);
        tally.closed(CloseReason::Partial);
        tally.received(75);
        metrics.add(&tally);
        metrics.add(&tally);
        metrics.accepted();
        metrics.record_latency(Duration::from_micros(70));
        let text = recorder.handle().render();
        for line in [
            "zen_questions_answered_total{outcome=\"known\"} 3",
            "zen_questions_answered_total{outcome=\"unknown\"} 1",
            "zen_questions_answered_total{outcome=\"internal_error\"} 0",
            "zen_connections_closed_total{reason=\"partial\"} 1",
            "zen_received_bytes_total 75",
            "zen_connections_accepted_total 1",
            "zen_answer_latency_seconds_bucket{le=\"0.0001\"} 1",
            "zen_answer_latency_seconds_bucket{le=\"0.00005\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }
}
