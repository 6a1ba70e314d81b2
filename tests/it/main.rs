//! Integration tests: the real `zen-server` binary on ephemeral ports, driven over raw sockets.

mod configuration;
mod helpers;
mod lifecycle;
mod protocol;
