//! Integration tests: the real `zen-server` binary on ephemeral ports, driven over raw sockets.

mod bench;
mod client;
mod configuration;
mod faults;
mod helpers;
mod hostile;
mod lifecycle;
mod protocol;
