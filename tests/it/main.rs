//! Integration tests: the real `zen-server` binary on ephemeral ports, driven over raw sockets,
//! and the deployment files under the real tools (those a fresh machine lacks are `#[ignore]`d
//! with the package to install; `.ci/run` installs them and runs them).

mod bench;
mod client;
mod configuration;
mod container;
mod docker;
mod fairness;
mod faults;
mod haproxy;
mod helpers;
mod hostile;
mod inetd;
mod k8s;
mod lifecycle;
mod metrics;
mod operator;
mod prometheus;
mod protocol;
mod proxy;
mod reload;
mod stalls;
mod standins;
mod supervisor;
mod systemd;
mod systemd_pid1;
mod tls;
mod upgrade;
