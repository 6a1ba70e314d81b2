//! `zen-server`: the "Zen of Python" question-and-answer service of chapter 7 of
//! *Foundations of Python Network Programming*, as an actix actor system.
//!
//! A client sends questions ending with `?`; the server answers each with a line of the Zen
//! of Python ending with `.`, in order, over one TCP connection. A [`Server`](server::Server)
//! actor accepts connections and starts one [`ZenSession`](session::ZenSession) actor per
//! client on one of its worker threads; each session asks the [`Oracle`](oracle::Oracle) actor
//! of its thread for answers, and the oracles share one answer table.
//!
//! # Layout
//!
//! - [`protocol`]: `Question`, `Answer`, their batches, the protocol's constants and errors.
//! - [`codec`]: `ZenCodec`, framing questions (with a byte cap) and encoding answers.
//! - [`oracle`]: `AnswerTable` (validated) and the `Oracle` actors, one per worker thread.
//! - [`session`]: the `ZenSession` actor, one per client.
//! - [`backpressure`]: pausing a session's reading while its answers wait to be sent.
//! - [`server`]: the `Server` actor: accepts, places sessions on workers, counts, drains.
//! - [`listener`]: binding listening sockets; accepting with back-off on exhaustion.
//! - [`local_sessions`]: each worker thread's sessions: drained together, timeouts swept.
//! - [`shutdown`]: signals to drain, and the drain broadcast to sessions.
//! - [`config`]: `Settings`, layered from built-in TOML, a file, `ZEN_*` env and flags.
//! - [`cli`]: the command line of `zen-server`.
//! - [`telemetry`]: the tracing subscriber (text or JSON).
//! - [`app`]: wiring settings and listeners into a running system.
//! - [`client`]: a small client for `zen-client` and tests.
//!
//! The load generator behind `zen-client bench`, `zen-client`'s command line and its `/proc`
//! readings are not part of the library: they live with the binary, in `src/bin/zen-client/`.

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod app;
pub mod backpressure;
pub mod cli;
pub mod client;
pub mod codec;
pub mod config;
pub mod listener;
pub mod local_sessions;
pub mod oracle;
pub mod protocol;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod telemetry;

pub use protocol::{Answer, Question};
