//! The shipped `Dockerfile` and `compose.yaml` under a real Docker engine, Debian's `docker.io`
//! (Docker 20.10, with BuildKit through its own CLI) and `docker-compose`.
//!
//! Each test runs a `dockerd` of its own: its own data, state, socket and pidfile, and no
//! changes to the host's firewall, IP forwarding or bridges (`--iptables=false
//! --ip-forward=false --bridge=none`, so containers use the host's network); it is stopped by
//! its PID at the end, what it mounted is unmounted and its directory removed, and the test
//! checks that the host is as it found it. Nothing is ever pulled: stand-ins for the base images
//! are imported under the names the `Dockerfile` uses (see [`crate::standins`]), and every run
//! says `--pull never`. The tests need root, deb.debian.org and crates.io.

use std::{
    io::Write,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    helpers::{DEADLINE, TempDir, ask_like_the_book, connect, free_port, read_to_close, scrape},
    standins::{self, HostState},
    tls::Pki,
};

/// Debian's own CLI, which can use BuildKit (a newer one on the path may lack buildx).
const DOCKER: &str = "/usr/bin/docker";

/// How long the engine gets to come up, and builds to finish.
const SLOW: Duration = Duration::from_secs(60);

/// A private `dockerd`, stopped and cleaned up when dropped.
struct Dockerd {
    child: Child,
    dir: PathBuf,
}

impl Dockerd {
    fn start() -> Self {
        // Short: the daemon's sockets live under it, and a socket's path has at most 108 bytes.
        let dir = PathBuf::from(format!("/tmp/zen-it-dockerd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .args(["--data-root", &path("data"), "--exec-root", &path("exec"), "--pidfile", &path("pid")])
            .args(["-H", &format!("unix://{}", path("docker.sock"))])
            .args(["--iptables=false", "--ip-forward=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let dockerd = Self { child, dir };
        let end = Instant::now() + SLOW;
        while !dockerd.docker(&["version"], &[]).status.success() {
            assert!(Instant::now() < end, "dockerd did not come up:\n{}", dockerd.log());
            thread::sleep(Duration::from_millis(100));
        }
        dockerd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// Runs the Docker CLI against this daemon, in the current directory, with `env` too.
    fn docker(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(DOCKER, args, env, None)
    }

    fn command(&self, program: &str, args: &[&str], env: &[(&str, &str)], dir: Option<&Path>) -> Output {
        let mut command = Command::new(program);
        command.args(args).envs(env.iter().copied());
        command.env("DOCKER_HOST", format!("unix://{}", self.dir.join("docker.sock").display()));
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        command.output().unwrap()
    }

    /// Runs the Docker CLI, which must succeed; returns its standard output, trimmed.
    fn must(&self, args: &[&str]) -> String {
        let output = self.docker(args, &[]);
        assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Imports the stand-ins for the `Dockerfile`'s base images, made in `work`.
    fn import_base_images(&self, work: &Path) {
        let (build, runtime) = standins::dockerfile_bases();
        let (root, settings) = standins::rust_base(&build, work);
        let mut args = vec!["import"];
        for setting in &settings {
            args.extend(["--change", setting]);
        }
        let archive = standins::archive(&root);
        args.extend([archive.to_str().unwrap(), build.as_str()]);
        self.must(&args);
        let archive = standins::archive(&standins::runtime_base(work));
        self.must(&["import", archive.to_str().unwrap(), &runtime]);
    }

    /// Builds `context` as `tag` reporting `commit`, with BuildKit or the classic builder;
    /// returns the build's output.
    fn build(&self, context: &Path, tag: &str, commit: &str, buildkit: bool) -> String {
        let commit = format!("BUILD_COMMIT={commit}");
        let mut args = vec!["build", "--network", "host", "--build-arg", &commit, "-t", tag];
        if buildkit {
            args.extend(["--progress", "plain"]);
        }
        args.push(context.to_str().unwrap());
        let output = self.docker(&args, &[("DOCKER_BUILDKIT", if buildkit { "1" } else { "0" })]);
        let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "docker build:\n{log}");
        log
    }

    fn inspect(&self, container: &str, format: &str) -> String {
        self.must(&["inspect", "--format", format, container])
    }

    fn logs(&self, container: &str) -> String {
        let output = self.docker(&["logs", container], &[]);
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    }

    /// Waits until the container's health check says `status`.
    fn wait_health(&self, container: &str, status: &str) -> bool {
        let end = Instant::now() + SLOW;
        while Instant::now() < end {
            if self.inspect(container, "{{.State.Health.Status}}") == status {
                return true;
            }
            thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let containers = self.docker(&["ps", "-aq"], &[]);
        for id in String::from_utf8_lossy(&containers.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id], &[]);
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + SLOW;
        while Instant::now() < end && self.child.try_wait().ok().flatten().is_none() {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        standins::unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `addr` answers `question` with `answer`.
fn answering(addr: SocketAddr, question: &[u8], answer: &[u8]) -> bool {
    let end = Instant::now() + SLOW;
    while Instant::now() < end {
        if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            if ask_like_the_book(&mut stream, question) == answer {
                return true;
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Whether the step of a build's `log` whose instruction contains `instruction` was taken from
/// the cache (BuildKit's plain output: the step's number, then `CACHED` under that number).
fn step_was_cached(log: &str, instruction: &str) -> bool {
    let step = log
        .lines()
        .find(|line| line.contains(instruction) && line.starts_with('#'))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("no step running {instruction:?} in:\n{log}"));
    log.lines().any(|line| line == format!("{step} CACHED"))
}

/// The address a container serving on the host's network listens on, and the variable that
/// moves it there.
fn listen_here() -> (SocketAddr, String) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    (addr, format!("ZEN_SERVER__LISTEN={addr}"))
}

#[test]
#[ignore = "needs root, docker.io, debootstrap, openssl, deb.debian.org and crates.io: apt-get install docker.io debootstrap openssl"]
fn the_dockerfile_builds_with_both_builders_and_its_container_is_healthy_drains_restarts_and_refuses_bad_settings() {
    let host = HostState::now();
    {
        let dockerd = Dockerd::start();
        let work = TempDir::new("docker");
        dockerd.import_base_images(work.path());
        let context = standins::build_context(work.path());
        let commit = format!("docker-{}", std::process::id());

        // The classic builder and BuildKit both build it; after a change to the sources,
        // BuildKit takes the dependencies from their layer and compiles only the crate.
        dockerd.build(&context, "zen-server:classic", "classic", false);
        assert!(dockerd.must(&["image", "inspect", "zen-server:classic"]).contains("zen-client"));
        dockerd.build(&context, "zen-server:test", &commit, true);
        let lib = context.join("src/lib.rs");
        std::fs::write(&lib, std::fs::read_to_string(&lib).unwrap() + "\n// changed\n").unwrap();
        let again = dockerd.build(&context, "zen-server:changed", "changed", true);
        assert!(step_was_cached(&again, "rm -rf src tests"), "dependencies built again:\n{again}");
        assert!(!step_was_cached(&again, "find src -name"), "the crate was not built again:\n{again}");
        assert!(again.contains("Compiling zen-server"), "the crate was not built again:\n{again}");

        // Its own settings, with the port moved by a variable (the host's network: no 1060 for
        // every test), metrics on to read the commit the build was given, and the image's health
        // check run every second (`--health-*` change its timing, not its command).
        let (addr, listen) = listen_here();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics_listen = format!("ZEN_METRICS__LISTEN={metrics}");
        let container = dockerd.must(&[
            "run",
            "-d",
            "--pull",
            "never",
            "--network",
            "host",
            "-e",
            &listen,
            "-e",
            &metrics_listen,
            "--health-interval",
            "1s",
            "--health-retries",
            "2",
            "--health-start-period",
            "0s",
            "zen-server:test",
        ]);
        assert!(answering(addr, b"Beautiful is better than?", b"Ugly."), "logs:\n{}", dockerd.logs(&container));
        let end = Instant::now() + SLOW;
        while std::net::TcpStream::connect(metrics).is_err() {
            assert!(Instant::now() < end, "no metrics at {metrics}; logs:\n{}", dockerd.logs(&container));
            thread::sleep(Duration::from_millis(50));
        }
        let build_info = format!("commit=\"{commit}\"");
        assert!(scrape(metrics).lines().any(|line| line.starts_with("zen_build_info") && line.contains(&build_info)));
        let pid = dockerd.inspect(&container, "{{.State.Pid}}");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().next().unwrap();
        assert_eq!(uid, "65532", "runs as the image's non-root user");
        assert!(dockerd.logs(&container).contains("listening"), "logs on standard output");

        // The health check: healthy, unhealthy while the server is stopped, healthy again.
        assert!(dockerd.wait_health(&container, "healthy"), "logs:\n{}", dockerd.logs(&container));
        dockerd.must(&["kill", "--signal", "STOP", &container]);
        assert!(dockerd.wait_health(&container, "unhealthy"), "healthy while the server was stopped");
        dockerd.must(&["kill", "--signal", "CONT", &container]);
        assert!(dockerd.wait_health(&container, "healthy"));

        // docker stop: SIGTERM, a drain, exit 0, within 2 s; the connected client is told, and
        // closes at the end of it as clients do.
        let mut client = connect(addr);
        assert_eq!(ask_like_the_book(&mut client, b"Simple is better than?"), b"Complex.");
        let told = thread::spawn(move || read_to_close(&mut client));
        let asked = Instant::now();
        dockerd.must(&["stop", &container]);
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(2), "docker stop took {took:?}");
        assert_eq!(dockerd.inspect(&container, "{{.State.ExitCode}}"), "0", "logs:\n{}", dockerd.logs(&container));
        assert_eq!(told.join().unwrap(), b"Error: server shutting down.");

        // A mounted settings file replaces the image's.
        let port = free_port();
        let settings = work.path().join("settings.toml");
        std::fs::write(
            &settings,
            format!("[server]\nlisten = [\"127.0.0.1:{port}\"]\n[oracle]\nanswers = [{{ question = \"Flat is better than?\", answer = \"Nested.\" }}]\n"),
        )
        .unwrap();
        let mount = format!("{}:/etc/zen-server/zen-server.toml:ro", settings.display());
        let mounted =
            dockerd.must(&["run", "-d", "--pull", "never", "--network", "host", "-v", &mount, "zen-server:test"]);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(answering(addr, b"Flat is better than?", b"Nested."), "logs:\n{}", dockerd.logs(&mounted));

        // TLS only: the health check follows the settings to the TLS listener. The key must be
        // readable by the image's user.
        let pki = Pki::new();
        let (_, key) = pki.issue("server", 20, false);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let tls_settings = work.path().join("tls.toml");
        std::fs::write(
            &tls_settings,
            format!("[server]\nlisten = []\n[tls]\nlisten = [\"127.0.0.1:{}\"]\ncert_file = \"/etc/zen-server/tls/server.pem\"\nkey_file = \"/etc/zen-server/tls/server.key\"\n", free_port()),
        )
        .unwrap();
        let (settings_mount, certificates) = (
            format!("{}:/etc/zen-server/zen-server.toml:ro", tls_settings.display()),
            format!("{}:/etc/zen-server/tls:ro", pki.dir().display()),
        );
        let tls_only = dockerd.must(&[
            "run",
            "-d",
            "--pull",
            "never",
            "--network",
            "host",
            "-v",
            &settings_mount,
            "-v",
            &certificates,
            "zen-server:test",
        ]);
        assert!(dockerd.wait_health(&tls_only, "healthy"), "logs:\n{}", dockerd.logs(&tls_only));

        // A broken one: exit 78, and its one line in docker logs. Docker's on-failure restarts
        // a 78 like any failure (it cannot be told otherwise): up to the count given, then the
        // container stays exited.
        std::fs::write(&settings, "[limits]\nmax_connections = 0\n").unwrap();
        let broken = dockerd.must(&[
            "run",
            "-d",
            "--pull",
            "never",
            "--network",
            "host",
            "--restart",
            "on-failure:3",
            "-v",
            &mount,
            "zen-server:test",
        ]);
        let end = Instant::now() + SLOW;
        while dockerd.inspect(&broken, "{{.State.Status}} {{.RestartCount}}") != "exited 3" {
            assert!(Instant::now() < end, "still restarting: {}", dockerd.inspect(&broken, "{{json .State}}"));
            thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(dockerd.inspect(&broken, "{{.State.ExitCode}}"), "78");
        let logs = dockerd.logs(&broken);
        let line =
            "zen-server: invalid limits.max_connections = 0 in /etc/zen-server/zen-server.toml: must be at least 1";
        assert_eq!(logs.lines().collect::<Vec<_>>(), [line; 4], "one line per try:\n{logs}");

        // A server killed from the host is restarted, and answers again.
        let (addr, listen) = listen_here();
        let restarted = dockerd.must(&[
            "run",
            "-d",
            "--pull",
            "never",
            "--network",
            "host",
            "--restart",
            "on-failure",
            "-e",
            &listen,
            "zen-server:test",
        ]);
        assert!(answering(addr, b"Simple is better than?", b"Complex."));
        let pid: i32 = dockerd.inspect(&restarted, "{{.State.Pid}}").parse().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        let end = Instant::now() + SLOW;
        while dockerd.inspect(&restarted, "{{.RestartCount}}") != "1" {
            assert!(Instant::now() < end, "not restarted after SIGKILL");
            thread::sleep(Duration::from_millis(100));
        }
        assert!(answering(addr, b"Simple is better than?", b"Complex."), "logs:\n{}", dockerd.logs(&restarted));
        assert_ne!(dockerd.inspect(&restarted, "{{.State.Pid}}"), pid.to_string());

        // A worker thread wedged for server.worker_stall_timeout_secs: exit 70, restarted by
        // the policy, answering again.
        let (addr, listen) = listen_here();
        let stalls = dockerd.must(&[
            "run",
            "-d",
            "--pull",
            "never",
            "--network",
            "host",
            "--restart",
            "on-failure",
            "-e",
            &listen,
            "-e",
            "ZEN_SERVER__WORKERS=2",
            "-e",
            "ZEN_SERVER__WORKER_STALL_TIMEOUT_SECS=2",
            "-e",
            "ZEN_ORACLE__HANG_QUESTION=Hang?",
            "zen-server:test",
        ]);
        assert!(answering(addr, b"Simple is better than?", b"Complex."), "logs:\n{}", dockerd.logs(&stalls));
        let mut wedging = connect(addr);
        wedging.write_all(b"Hang?").unwrap();
        let end = Instant::now() + SLOW;
        while dockerd.inspect(&stalls, "{{.RestartCount}}") != "1" {
            assert!(Instant::now() < end, "not restarted after a stall; logs:\n{}", dockerd.logs(&stalls));
            thread::sleep(Duration::from_millis(100));
        }
        assert!(
            dockerd.logs(&stalls).contains("a worker thread has not answered for server.worker_stall_timeout_secs"),
            "logs:\n{}",
            dockerd.logs(&stalls)
        );
        assert!(answering(addr, b"Simple is better than?", b"Complex."), "logs:\n{}", dockerd.logs(&stalls));

        // The default workers follow the container's CPU limit: a quota counts rounded down (as
        // Rust's available_parallelism counts it), a cpuset by its CPUs; one worker per CPU but
        // one, at least one.
        for (flag, value) in [("--cpus", "1.5"), ("--cpus", "1"), ("--cpuset-cpus", "0")] {
            let (_, listen) = listen_here();
            let limited = dockerd.must(&[
                "run",
                "-d",
                "--pull",
                "never",
                "--network",
                "host",
                flag,
                value,
                "-e",
                &listen,
                "zen-server:test",
            ]);
            let end = Instant::now() + SLOW;
            while !dockerd.logs(&limited).contains("listening") {
                assert!(Instant::now() < end, "not listening; logs:\n{}", dockerd.logs(&limited));
                thread::sleep(Duration::from_millis(50));
            }
            let expected = "workers=1 cpus=1 ";
            assert!(
                dockerd.logs(&limited).contains(expected),
                "{flag} {value}: {expected}\n{}",
                dockerd.logs(&limited)
            );
            dockerd.must(&["rm", "-f", &limited]);
        }
    }
    assert_eq!(HostState::now(), host, "the host changed");
}

/// `compose.yaml` with only the network changed: the host's (this daemon has no bridge to
/// publish ports through), and `settings` as its settings file; in `dir`.
fn compose_project(dir: &Path, settings: &str) {
    let shipped = std::fs::read_to_string("compose.yaml").unwrap();
    let ports = "    ports:\n      - \"1060:1060\"\n";
    assert!(shipped.contains(ports), "compose.yaml publishes 1060:\n{shipped}");
    std::fs::write(dir.join("compose.yaml"), shipped.replace(ports, "    network_mode: host\n")).unwrap();
    std::fs::create_dir_all(dir.join("deploy/docker")).unwrap();
    std::fs::write(dir.join("deploy/docker/zen-server.toml"), settings).unwrap();
}

#[test]
#[ignore = "needs root, docker.io, docker-compose, debootstrap, deb.debian.org and crates.io: apt-get install docker.io docker-compose debootstrap"]
fn compose_brings_the_service_up_healthy_and_down_with_a_drain() {
    // The stop grace leaves a drain its whole time.
    let compose = std::fs::read_to_string("compose.yaml").unwrap();
    let grace: u64 = compose
        .lines()
        .find_map(|line| line.trim().strip_prefix("stop_grace_period: "))
        .and_then(|grace| grace.trim_end_matches('s').parse().ok())
        .expect("a stop_grace_period in seconds");
    let image_settings = std::fs::read_to_string("deploy/docker/zen-server.toml").unwrap();
    let settings = zen_server::config::Settings::builtin().unwrap();
    assert!(!image_settings.contains("shutdown_timeout_secs"), "the image keeps the built-in drain timeout");
    let drain = settings.server.shutdown_timeout_secs.get();
    assert!(grace > drain, "stop_grace_period ({grace} s) must exceed the drain's {drain} s");

    let host = HostState::now();
    {
        let dockerd = Dockerd::start();
        let work = TempDir::new("compose");
        dockerd.import_base_images(work.path());
        let context = standins::build_context(work.path());
        let image = compose.lines().find_map(|line| line.trim().strip_prefix("image: ")).expect("an image: line");
        dockerd.build(&context, image, "compose", true);
        let (addr, _) = listen_here();
        let project = work.path().join("project");
        std::fs::create_dir_all(&project).unwrap();
        compose_project(&project, &format!("[server]\nlisten = [\"{addr}\"]\n[log]\noutput = \"stdout\"\n"));
        let compose = |args: &[&str]| {
            let mut all = vec!["-p", "zentest"];
            all.extend(args);
            let output = dockerd.command("docker-compose", &all, &[], Some(&project));
            assert!(output.status.success(), "docker-compose {args:?}: {}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8_lossy(&output.stdout).into_owned()
        };
        compose(&["up", "-d", "--no-build"]);
        let container = compose(&["ps", "-q"]).trim().to_owned();
        assert!(dockerd.wait_health(&container, "healthy"), "logs:\n{}", dockerd.logs(&container));
        assert!(answering(addr, b"Explicit is better than?", b"Implicit."));
        assert!(dockerd.logs(&container).contains("listening"), "logs:\n{}", dockerd.logs(&container));

        let mut client = connect(addr);
        assert_eq!(ask_like_the_book(&mut client, b"Simple is better than?"), b"Complex.");
        let told = thread::spawn(move || read_to_close(&mut client));
        compose(&["stop"]);
        assert_eq!(dockerd.inspect(&container, "{{.State.ExitCode}}"), "0", "logs:\n{}", dockerd.logs(&container));
        assert!(dockerd.logs(&container).contains("drained unfinished=0"), "logs:\n{}", dockerd.logs(&container));
        assert_eq!(told.join().unwrap(), b"Error: server shutting down.");
        compose(&["down"]);
        assert_eq!(dockerd.must(&["ps", "-aq"]), "", "compose down left containers");
    }
    assert_eq!(HostState::now(), host, "the host changed");
}
