//! The shipped `zen-server.service` and `zen-server.socket`, unchanged, under systemd booted as
//! PID 1 in `systemd-nspawn` (a Debian root made by `debootstrap`, cached between runs), driven
//! with `systemctl` and `journalctl` through `nsenter`, as an operator drives them: start,
//! status, reload, the watchdog, stop, a settings error, socket activation, the sandbox.
//!
//! The container has a network of its own (`--private-network`): its clients run in a thread
//! of the test that has entered that network namespace. The container is powered off at the
//! end, its root removed, and the test checks that the host is as it found it. It needs root,
//! `systemd-container` at the host's systemd version, and deb.debian.org.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    helpers::{DEADLINE, SERVER_BIN, TempDir, ask_like_the_book, connect, read_to_close},
    standins::{self, HostState},
};

const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_zen-client");

/// Where the socket unit listens, in the container's network.
const ADDR: &str = "127.0.0.1:1060";

/// The container's PID 1, as the host numbers it, once `systemd-nspawn` (process `nspawn`) has
/// started it: the child that is PID 1 of a PID namespace of its own. nspawn's first child is a
/// helper that starts that one and exits a few milliseconds later; `nsenter` into it would fail.
fn container_init(nspawn: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children")).ok()?;
    children.split_whitespace().filter_map(|pid| pid.parse().ok()).find(|pid: &u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let ids: Vec<&str> = status
            .lines()
            .find_map(|line| line.strip_prefix("NSpid:"))
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        ids.len() > 1 && ids.last() == Some(&"1")
    })
}

/// A Debian system booted with systemd as PID 1, powered off when dropped.
struct Machine {
    nspawn: Child,
    pid1: u32,
    root: PathBuf,
    _dir: TempDir,
}

impl Machine {
    /// Boots a copy of a Debian root holding the binaries, the shipped units and `settings`.
    fn boot(settings: &str) -> Self {
        let dir = TempDir::new("nspawn");
        let debian = standins::debian("bookworm-systemd", "bookworm", "systemd,systemd-sysv,dbus,procps");
        let root = dir.path().join("root");
        standins::run("cp", &["-a", debian.to_str().unwrap(), root.to_str().unwrap()]);
        for (binary, name) in [(SERVER_BIN, "zen-server"), (CLIENT_BIN, "zen-client")] {
            std::fs::copy(binary, root.join("usr/local/bin").join(name)).unwrap();
        }
        for unit in ["zen-server.service", "zen-server.socket"] {
            std::fs::copy(Path::new("deploy/systemd").join(unit), root.join("etc/systemd/system").join(unit)).unwrap();
        }
        // The one change: the watchdog's period, for a quicker test.
        let drop_in = root.join("etc/systemd/system/zen-server.service.d");
        std::fs::create_dir_all(&drop_in).unwrap();
        std::fs::write(drop_in.join("watchdog.conf"), "[Service]\nWatchdogSec=2s\n").unwrap();
        std::fs::create_dir_all(root.join("etc/zen-server")).unwrap();
        let log = std::fs::File::create(dir.path().join("nspawn.log")).unwrap();
        let name = format!("zen-it-{}", std::process::id());
        let nspawn = Command::new("systemd-nspawn")
            .args(["--register=no", "--keep-unit", "--private-network", "--console=passive", "-b"])
            .args(["-M", &name, "-D", root.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let end = Instant::now() + DEADLINE;
        let pid1 = loop {
            if let Some(pid) = container_init(nspawn.id()) {
                break pid;
            }
            assert!(Instant::now() < end, "systemd did not start");
            thread::sleep(Duration::from_millis(20));
        };
        let machine = Self { nspawn, pid1, root, _dir: dir };
        machine.write_settings(settings);
        // Beyond systemd's default start timeout (90 s): a unit that waits out its timeout
        // leaves the system "degraded", not unbooted.
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            let state = machine.systemctl(&["is-system-running"]);
            if ["running", "degraded"].contains(&state.trim()) {
                break;
            }
            assert!(
                Instant::now() < end,
                "the system did not finish booting ({}; PID 1 is {} on the host, {}); its jobs:\n{}",
                state.trim(),
                machine.pid1,
                if Path::new(&format!("/proc/{}", machine.pid1)).exists() { "running" } else { "gone" },
                machine.systemctl(&["list-jobs", "--no-pager"])
            );
            thread::sleep(Duration::from_millis(100));
        }
        machine
    }

    fn write_settings(&self, settings: &str) {
        std::fs::write(self.root.join("etc/zen-server/zen-server.toml"), settings).unwrap();
    }

    /// Runs `program` in every namespace of the machine; its standard output, and whether it
    /// succeeded.
    fn inside(&self, program: &str, args: &[&str]) -> (bool, String) {
        let output =
            Command::new("nsenter").args(["-t", &self.pid1.to_string(), "-a", program]).args(args).output().unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn systemctl(&self, args: &[&str]) -> String {
        self.inside("systemctl", args).1
    }

    /// `systemctl` that must succeed.
    fn must(&self, args: &[&str]) {
        let (ok, _) = self.inside("systemctl", args);
        assert!(ok, "systemctl {args:?} failed; journal:\n{}", self.journal());
    }

    /// A property of the service, as `systemctl show` gives it.
    fn property(&self, name: &str) -> String {
        self.systemctl(&["show", "zen-server", "-p", name, "--value"]).trim().to_owned()
    }

    fn journal(&self) -> String {
        self.inside("journalctl", &["-u", "zen-server", "--no-pager", "-o", "cat"]).1
    }

    /// Runs `client` with a connection to the machine's `ADDR`, from a thread in its network.
    fn client<T: Send + 'static>(
        &self,
        client: impl FnOnce(std::net::TcpStream) -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let netns = std::fs::File::open(format!("/proc/{}/ns/net", self.pid1)).unwrap();
        thread::spawn(move || {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            client(connect(ADDR.parse::<SocketAddr>().unwrap()))
        })
    }

    /// The answer to `question`, asked as the book's client asks.
    fn ask(&self, question: &'static [u8]) -> Vec<u8> {
        self.client(move |mut stream| ask_like_the_book(&mut stream, question)).join().unwrap()
    }

    /// Waits until `property` of the service has `value`.
    fn wait_for(&self, property: &str, value: &str) -> bool {
        self.wait_until(property, |found| found == value)
    }

    /// Waits until `property` of the service is as `wanted` says.
    fn wait_until(&self, property: &str, wanted: impl Fn(&str) -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if wanted(&self.property(property)) {
                return true;
            }
            thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.inside("systemctl", &["poweroff"]);
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end && self.nspawn.try_wait().ok().flatten().is_none() {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        standins::unmount_under(&self.root);
    }
}

fn table(beautiful: &str) -> String {
    format!(
        "[server]\nworkers = 2\n[oracle]\nanswers = [{{ question = \"Beautiful is better than?\", answer = \"{beautiful}\" }}]\n"
    )
}

/// The hard limit on open files this test runs under, which the container's cannot exceed.
fn host_open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(4).and_then(|hard| hard.parse().ok()).unwrap_or(u64::MAX)
}

#[test]
#[ignore = "needs root, systemd-nspawn, debootstrap and deb.debian.org: apt-get install systemd-container=$(dpkg-query -W -f '${Version}' systemd) debootstrap"]
fn the_shipped_units_under_systemd_start_reload_restart_on_the_watchdog_stop_refuse_bad_settings_and_activate() {
    let host = HostState::now();
    {
        let machine = Machine::boot(&table("Ugly."));

        // Start: systemctl returns once the server is ready (Type=notify), and it answers at once.
        machine.must(&["start", "zen-server"]);
        assert_eq!(machine.ask(b"Beautiful is better than?"), b"Ugly.");
        let status = machine.property("StatusText");
        assert!(status.starts_with("serving on 0.0.0.0:1060, [::]:1060 with 2 worker threads"), "{status}");
        let main_pid = machine.property("MainPID");

        // The sandbox: a dynamic user, the hardening in force, open files capped by the host.
        let (_, status) = machine.inside("cat", &[&format!("/proc/{main_pid}/status")]);
        let uid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((61184..=65519).contains(&uid), "uid {uid} is not one of systemd's dynamic users");
        for (property, value) in
            [("DynamicUser", "yes"), ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateDevices", "yes")]
        {
            assert_eq!(machine.property(property), value, "{property}");
        }
        let (_, limits) = machine.inside("cat", &[&format!("/proc/{main_pid}/limits")]);
        let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_owned();
        let expected = host_open_files_limit().min(65_536);
        assert!(open_files.split_whitespace().nth(3) == Some(&expected.to_string()), "{open_files}");
        let (_, security) = machine.inside("systemd-analyze", &["security", "zen-server", "--no-pager"]);
        let exposure = security.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_default().to_owned();
        eprintln!("systemd-analyze security zen-server: {exposure}");
        assert!(exposure.contains(" OK") || exposure.contains(" MEDIUM"), "{exposure}");

        // Reload with a new table: the new answer, the same process, the status says it took.
        // systemd 252's `systemctl reload` returns once `kill -HUP` has, not once the server
        // reports the reload done (253's Type=notify-reload waits): so, as an operator would,
        // the test waits for the status to say so.
        machine.write_settings(&table("Pretty."));
        machine.must(&["reload", "zen-server"]);
        let reloaded = machine.wait_until("StatusText", |status| status.ends_with("settings reloaded"));
        assert!(reloaded, "{}", machine.property("StatusText"));
        assert_eq!(machine.ask(b"Beautiful is better than?"), b"Pretty.");
        assert_eq!(machine.property("MainPID"), main_pid);
        // With a broken file: the old answer, a failed reload in the status and the log.
        machine.write_settings("[limits]\nmax_connections = 0\n");
        machine.must(&["reload", "zen-server"]);
        let refused = machine.wait_until("StatusText", |status| status.starts_with("reload failed"));
        assert!(refused, "{}", machine.property("StatusText"));
        assert_eq!(machine.ask(b"Beautiful is better than?"), b"Pretty.");
        assert!(machine.journal().contains("reload failed; serving on with the settings in use"));

        // Every worker wedged: the watchdog is no longer fed, systemd restarts the service.
        machine.write_settings("[server]\nworkers = 2\n[oracle]\nhang_question = \"Hang?\"\n");
        machine.must(&["restart", "zen-server"]);
        let wedged_pid = machine.property("MainPID");
        let hung: Vec<_> = (0..2)
            .map(|_| {
                machine.client(|mut stream| {
                    std::io::Write::write_all(&mut stream, b"Hang?").unwrap();
                    read_to_close(&mut stream)
                })
            })
            .collect();
        assert!(machine.wait_for("NRestarts", "1"), "not restarted; journal:\n{}", machine.journal());
        assert_ne!(machine.property("MainPID"), wedged_pid);
        assert_eq!(machine.ask(b"Beautiful is better than?"), b"Ugly.");
        drop(hung);

        // Stop: drained, with success.
        machine.must(&["stop", "zen-server"]);
        assert_eq!(machine.property("Result"), "success");
        assert!(machine.journal().contains("drained unfinished=0"), "journal:\n{}", machine.journal());

        // A settings error: failed with 78, and not restarted.
        machine.write_settings("[limits]\nmax_connections = 0\n");
        let (started, _) = machine.inside("systemctl", &["start", "zen-server"]);
        assert!(!started);
        assert_eq!(machine.property("ExecMainStatus"), "78");
        thread::sleep(Duration::from_secs(3)); // three RestartSec periods: no restart may come
        assert_eq!((machine.property("ActiveState").as_str(), machine.property("NRestarts").as_str()), ("failed", "0"));
        assert!(machine.journal().contains("invalid limits.max_connections = 0"));

        // Socket activation: the first connection starts the service; after a stop, the next
        // one starts it again.
        machine.write_settings(&table("Ugly."));
        machine.must(&["reset-failed", "zen-server"]);
        machine.must(&["start", "zen-server.socket"]);
        assert_eq!(machine.property("ActiveState"), "inactive");
        assert_eq!(machine.ask(b"Beautiful is better than?"), b"Ugly.");
        assert_eq!(machine.property("ActiveState"), "active");
        assert!(machine.journal().contains("serving on inherited sockets"));
        machine.must(&["stop", "zen-server"]);
        assert_eq!(machine.ask(b"Beautiful is better than?"), b"Ugly.");
        assert_eq!(machine.property("ActiveState"), "active");
    }
    assert_eq!(HostState::now(), host, "the host changed");
}
