//! `zen-server`: the "Zen of Python" question-and-answer service of chapter 7 of
//! *Foundations of Python Network Programming*, as an actix actor system.
//!
//! A client sends questions ending with `?`; the server answers each with a line of the Zen
//! of Python ending with `.`, in order, over one TCP connection. A [`Server`](server::Server)
//! actor accepts connections on the main thread, the control plane, which runs no session, and
//! hands each to the [`Worker`](server::worker::Worker) of one of the worker threads, which
//! starts a [`ZenSession`](session::ZenSession) actor for it; each session asks the oracle's
//! replica on its thread ([`OracleReplica`](oracle::OracleReplica), reading the one table the
//! [`Oracle`](oracle::Oracle) owns) for answers, and writes them back in order. The arrows
//! point one way: `app` -> `server` -> `session` -> `oracle` -> `protocol`; nothing imports a
//! module that imports it back.
//!
//! # Layout
//!
//! - [`protocol`]: `Question`, `Answer`, their batches, the protocol's constants and errors.
//! - [`codec`]: `ZenCodec`, framing questions (with a byte cap) and encoding answers.
//! - [`oracle`]: the one `Oracle` owning the answer table, and the replica on each worker thread
//!   that its sessions ask; the validated `AnswerTable`, lookups with panic containment, the
//!   costly-answer pool.
//! - [`inbox`]: a mailbox for messages between actors of one thread (questions to the oracle's
//!   replica, answers back), cheaper than actix's, which serves any thread.
//! - [`limits`]: the limits every session reads, from the snapshot a reload swaps.
//! - [`session`]: the `ZenSession` actor, one per client: its flow control, its answer sink,
//!   and the registry of one worker's sessions (drain, exact timeouts).
//! - [`admission`]: the connection limit; sessions hold permits, a drain waits for them.
//! - [`health`]: whether every worker thread answers, and the health question a probe asks.
//! - [`server`]: the `Server` actor (accepts, admits, drains), its listeners, and the
//!   `Worker` actor on each thread that starts sessions.
//! - [`threads`]: the worker threads (the main thread is the control plane).
//! - [`control`]: the daemon's life: reload, shutdown, readiness and the watchdog for systemd.
//! - [`signals`]: SIGTERM/SIGINT (drain) and SIGHUP (reload) to `control`; a second SIGTERM or
//!   SIGINT exits at once.
//! - [`metrics`]: Prometheus counters and the endpoint serving them; per-thread tallies.
//! - [`notify`]: systemd's notify protocol (`READY=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=`).
//! - [`inherit`]: sockets handed over by systemd or inetd instead of bound.
//! - [`proxy`]: the PROXY protocol header on the listeners behind a load balancer.
//! - [`tls`]: TLS on the listeners that speak it: the server's identity, the handshake.
//! - [`config`]: `Settings`, layered from built-in TOML, a file, `ZEN_*` env and flags.
//! - [`cli`]: the command line of `zen-server`.
//! - [`telemetry`]: the tracing subscriber (text or JSON; to standard error or output, or the
//!   system log).
//! - [`log_queue`]: log lines written by a thread of their own, through a bounded queue that
//!   drops (and counts) what does not fit rather than make a serving thread wait.
//! - [`app`]: starting every actor from settings; running until drained.
//! - [`client`]: a small client for `zen-client` and tests.
//!
//! The load generator behind `zen-client bench`, `zen-client`'s command line and its `/proc`
//! readings are not part of the library: they live with the binary, in `src/bin/zen-client/`.

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod admission;
pub mod app;
pub mod cli;
pub mod client;
pub mod codec;
pub mod config;
pub mod control;
pub mod health;
pub mod inbox;
pub mod inherit;
pub mod limits;
pub mod log_queue;
pub mod metrics;
pub mod notify;
pub mod oracle;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod session;
pub mod signals;
pub mod telemetry;
pub mod threads;
pub mod tls;

pub use protocol::{Answer, Question};
