//! [`LogQueue`]: log lines go to a thread of their own through a bounded queue, so that no thread
//! that serves clients ever waits for whatever reads the log.
//!
//! Standard error may be a pipe that its reader empties late or never (a container engine's log
//! driver, a supervisor, a terminal scrolled back, journald under a storm), and a datagram to the
//! system log blocks while its queue is full. Each log event is formatted where it happens, then
//! handed to the queue without waiting: if [`LOG_QUEUE_LINES`] lines already wait, it is dropped
//! and counted ([`dropped_lines`], the metric `zen_log_lines_dropped_total`). The writer thread
//! writes lines in order; once it has caught up after some were dropped, it logs one warning
//! saying how many. Redis and HAProxy log off their serving threads for the same reason.
//!
//! [`LogFlush`] waits, when the daemon exits, for the lines already queued to be written, for
//! at most [`FLUSH_TIMEOUT`]: a log nobody reads cannot keep the daemon from exiting. An exit
//! that skips it ([`std::process::exit`]) calls [`flush_before_exit`] first.

use std::{
    io::{self, Write},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, Instant},
};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Lines waiting to be written at most; more are dropped. A line is about 150 bytes, so a full
/// queue holds about 150 KiB: the lines of some 500 connections at the default level, beyond
/// what the pipe or socket to the log's reader holds.
pub const LOG_QUEUE_LINES: usize = 1024;

/// How long the daemon waits at exit for queued lines to be written.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Lines dropped since the start, because the queue was full.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The daemon's queue, once started: for [`flush_before_exit`].
static STARTED: OnceLock<LogQueue> = OnceLock::new();

/// Waits, for at most [`FLUSH_TIMEOUT`], for the lines queued so far to be written: before an
/// exit that drops no [`LogFlush`].
pub fn flush_before_exit() {
    if let Some(queue) = STARTED.get() {
        queue.flush();
    }
}

/// Log lines dropped since the daemon started, because the log's reader was behind.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Where the writer thread writes a line, of an event at `level`.
pub trait LineSink: Send + 'static {
    /// Writes `line`, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// If the line cannot be written.
    fn write_line(&mut self, level: Level, line: &[u8]) -> io::Result<()>;
}

/// What goes through the queue.
enum Entry {
    Line(Level, Vec<u8>),
    /// Answered once every line queued before it is written.
    Flush(SyncSender<()>),
}

/// The sending end: a `MakeWriter` for the log's formatting layer; cloning it is cheap.
#[derive(Clone)]
pub struct LogQueue {
    sender: SyncSender<Entry>,
    /// Lines queued and not yet written.
    waiting: Arc<AtomicUsize>,
}

/// Waits for the queued lines to be written when dropped.
pub struct LogFlush {
    queue: LogQueue,
}

impl LogQueue {
    /// Starts the thread writing to `sink`, and returns the queue in front of it and the guard
    /// that flushes it.
    ///
    /// # Errors
    ///
    /// If the thread cannot be started.
    pub fn start(sink: impl LineSink) -> io::Result<(LogQueue, LogFlush)> {
        let (queue, flush) = Self::with_capacity(sink, LOG_QUEUE_LINES)?;
        let _ = STARTED.set(queue.clone());
        Ok((queue, flush))
    }

    fn with_capacity(mut sink: impl LineSink, lines: usize) -> io::Result<(LogQueue, LogFlush)> {
        let (sender, receiver) = sync_channel(lines);
        let queue = LogQueue { sender, waiting: Arc::default() };
        let waiting = queue.waiting.clone();
        std::thread::Builder::new()
            .name("zen-log".into())
            .spawn(move || write_lines(&receiver, &mut sink, &waiting))?;
        Ok((queue.clone(), LogFlush { queue }))
    }

    /// Queues `line` without waiting; counts it as dropped if the queue is full.
    fn push(&self, level: Level, line: Vec<u8>) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.sender.try_send(Entry::Line(level, line))
        {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes lines as they come, in order; after lines were dropped, says how many once the queue
/// is empty again.
fn write_lines(receiver: &Receiver<Entry>, sink: &mut impl LineSink, waiting: &AtomicUsize) {
    let mut reported = 0;
    while let Ok(entry) = receiver.recv() {
        match entry {
            Entry::Line(level, line) => {
                // Nowhere to say that the log itself cannot be written.
                let _ = sink.write_line(level, &line);
                if waiting.fetch_sub(1, Ordering::Relaxed) == 1 {
                    let dropped = dropped_lines();
                    if dropped > reported {
                        tracing::warn!(
                            dropped = dropped - reported,
                            since_start = dropped,
                            "log lines were dropped: whatever reads the log fell behind"
                        );
                        reported = dropped;
                    }
                }
            }
            Entry::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

impl Drop for LogFlush {
    fn drop(&mut self) {
        self.queue.flush();
    }
}

impl LogQueue {
    /// Waits, for at most [`FLUSH_TIMEOUT`], for every line queued so far to be written.
    fn flush(&self) {
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        let (done, flushed) = sync_channel(1);
        let mut flush = Entry::Flush(done);
        loop {
            match self.sender.try_send(flush) {
                Ok(()) => break,
                Err(TrySendError::Full(entry)) if Instant::now() < deadline => {
                    flush = entry;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
        let _ = flushed.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

/// One event's text, queued whole when the formatting layer is done with it.
pub struct QueuedLine<'a> {
    queue: &'a LogQueue,
    level: Level,
    line: Vec<u8>,
}

impl Write for QueuedLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for QueuedLine<'_> {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.queue.push(self.level, std::mem::take(&mut self.line));
        }
    }
}

impl<'a> MakeWriter<'a> for LogQueue {
    type Writer = QueuedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        QueuedLine { queue: self, level: Level::INFO, line: Vec::new() }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        QueuedLine { queue: self, level: *meta.level(), line: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, mpsc};

    use super::*;

    /// Writes nothing until the test lets it, then records lines in order.
    struct Held {
        go: mpsc::Receiver<()>,
        written: Arc<Mutex<Vec<String>>>,
    }

    impl LineSink for Held {
        fn write_line(&mut self, _: Level, line: &[u8]) -> io::Result<()> {
            let _ = self.go.recv();
            self.written.lock().unwrap().push(String::from_utf8_lossy(line).into_owned());
            Ok(())
        }
    }

    fn log(queue: &LogQueue, text: &str) {
        let mut line = queue.make_writer();
        line.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_full_queue_drops_and_counts_lines_instead_of_waiting_and_the_rest_are_written_in_order() {
        let (go, held) = mpsc::channel();
        let written = Arc::default();
        let (queue, flush) = LogQueue::with_capacity(Held { go: held, written: Arc::clone(&written) }, 4).unwrap();
        let dropped_before = dropped_lines();
        let started = Instant::now();
        // Four lines fill the queue (five if the writer has taken the first and waits to write
        // it); the others find it full.
        for number in 0..10 {
            log(&queue, &format!("{number}"));
        }
        assert!(started.elapsed() < Duration::from_secs(1), "logging waited for the writer");
        let dropped = dropped_lines() - dropped_before;
        for _ in 0..10 {
            let _ = go.send(());
        }
        drop(flush);
        let written = written.lock().unwrap().clone();
        assert!((4..=5).contains(&written.len()), "{written:?}");
        assert_eq!(written.len() as u64 + dropped, 10, "every line written or counted as dropped");
        let expected: Vec<String> = (0..written.len()).map(|number| number.to_string()).collect();
        assert_eq!(written, expected, "written in order, the first lines kept");
    }
}
