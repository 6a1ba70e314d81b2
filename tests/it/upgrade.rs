//! An upgrade that refuses no one: with `server.reuse_port`, a new server binds the same port
//! while the old one runs; the old one, sent SIGTERM, takes what waits in its queue, closes its
//! listener and drains. A churn of book-like clients (connect, three questions, close) runs
//! across the swap and must see no error.
//!
//! What this needs from the kernel: `SO_REUSEPORT` (Linux 3.9+), and for the last
//! microseconds between the old listener's final accept and its close, when the kernel may
//! still queue a connection there, `net.ipv4.tcp_migrate_req = 1` (Linux 5.14+), which moves
//! such connections to the new listener instead of resetting them. The test runs in a network
//! namespace of its own, so it can set that sysctl without touching the machine's.

use std::process::Command;

use nix::sys::signal::Signal;

use crate::helpers::{DEADLINE, Launch, ZenServer};

const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_zen-client");

/// A network namespace of the test's own, with loopback up; deleted on drop.
struct Namespace(String);

impl Namespace {
    fn new() -> Self {
        let name = format!("zen-it-{}", std::process::id());
        assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success());
        let namespace = Self(name);
        namespace.run(&["ip", "link", "set", "lo", "up"]);
        namespace
    }

    /// `ip netns exec NAME`, to put in front of a command.
    fn wrapper(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.0]
    }

    fn run(&self, command: &[&str]) -> String {
        let output = Command::new("ip").args(["netns", "exec", &self.0]).args(command).output().unwrap();
        assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Swaps two servers on one port under a churn of clients; returns the load's report.
fn swap_under_churn(namespace: &Namespace) -> serde_json::Value {
    let server = |level: &str| {
        Launch::args(&["--listen", "127.0.0.1:1060"])
            .env("ZEN_SERVER__REUSE_PORT", "true")
            .env("ZEN_LOG__LEVEL", level)
            .wrapper(&namespace.wrapper())
    };
    let mut old = ZenServer::launch(server("info"));
    let wrapper = namespace.wrapper();
    let load = Command::new(wrapper[0])
        .args(&wrapper[1..])
        .arg(CLIENT_BIN)
        .args(["bench", "--addr", "127.0.0.1:1060", "--mode", "churn", "--conns", "8", "--depth", "3"])
        .args(["--duration", "3", "--warmup", "0", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The load runs against the old server before the new one starts.
    assert!(old.wait_for_log(&["connection accepted"], DEADLINE).is_some(), "log:\n{}", old.log());
    let new = ZenServer::launch(server("info,zen_server::session=warn"));
    old.signal(Signal::SIGTERM);
    assert_eq!(old.wait_exit(DEADLINE).and_then(|s| s.code()), Some(0), "log:\n{}", old.log());
    let output = load.wait_with_output().unwrap();
    drop(new);
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&output.stdout)))
}

#[test]
#[ignore = "needs root and iproute2 for a network namespace: run as root (CI does)"]
fn a_new_server_takes_over_the_port_while_the_old_one_drains_and_no_client_sees_an_error() {
    let namespace = Namespace::new();
    namespace.run(&["sysctl", "-qw", "net.ipv4.tcp_migrate_req=1"]);
    let report = swap_under_churn(&namespace);
    eprintln!(
        "swap with tcp_migrate_req = 1: {} conversations of 3 questions, {} errors",
        report["connections"], report["errors"]
    );
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["connections"].as_u64().unwrap() > 100, "{report}");
    assert_eq!(report["answers"].as_u64(), report["connections"].as_u64().map(|c| 3 * c), "{report}");
}
