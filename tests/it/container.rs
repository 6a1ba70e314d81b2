//! The shipped `Dockerfile`, built and run with podman: nothing can be pulled here, so the test
//! builds local stand-ins for the image's base (the host's C libraries and a `nonroot` user, as
//! distroless has) and for the build stage (the test's own binaries, through the `BIN_STAGE`
//! build argument), then checks what a user of the image relies on. Also zen-server as PID 1
//! of a PID namespace, with `unshare`.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use crate::helpers::{
    DEADLINE, Launch, SERVER_BIN, TempConfig, TempDir, ZenServer, ask_like_the_book, connect, free_port,
};

const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_zen-client");

/// The runtime base the `Dockerfile` names.
const BASE: &str = "gcr.io/distroless/cc-debian12:nonroot";
/// The stand-in for the build stage, holding the test's binaries.
const PREBUILT: &str = "localhost/zen-server-prebuilt:test";
const IMAGE: &str = "localhost/zen-server:test";

fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(args).output().unwrap()
}

fn succeeded(output: &Output) -> bool {
    output.status.success()
}

fn must(args: &[&str]) -> String {
    let output = podman(args);
    assert!(succeeded(&output), "podman {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Builds `dir` (holding `files`) as image `tag`, from scratch.
fn build_from_scratch(tag: &str, dir: &Path, files: &[(&str, &Path)]) {
    for (inside, outside) in files {
        let target = dir.join("root").join(inside.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(outside, &target).unwrap();
    }
    std::fs::write(dir.join("Containerfile"), "FROM scratch\nCOPY root/ /\n").unwrap();
    must(&[
        "build",
        "--format",
        "docker",
        "-q",
        "-t",
        tag,
        "-f",
        dir.join("Containerfile").to_str().unwrap(),
        dir.to_str().unwrap(),
    ]);
}

/// The images the test made, removed afterwards; the base only if the test made it.
struct Images {
    made_base: bool,
}

impl Images {
    fn build() -> Self {
        let work = TempDir::new("images");
        let made_base = !succeeded(&podman(&["image", "exists", BASE]));
        if made_base {
            let base = work.path().join("base");
            let libraries = Command::new("ldd").arg(SERVER_BIN).output().unwrap();
            let libraries = String::from_utf8_lossy(&libraries.stdout).into_owned();
            let paths: Vec<&str> = libraries.split_whitespace().filter(|word| word.starts_with('/')).collect();
            let mut files: Vec<(&str, &Path)> = paths.iter().map(|path| (*path, Path::new(*path))).collect();
            std::fs::create_dir_all(base.join("etc")).unwrap();
            let passwd = work.path().join("passwd");
            std::fs::write(
                &passwd,
                "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
            )
            .unwrap();
            files.push(("/etc/passwd", &passwd));
            build_from_scratch(BASE, &base, &files);
        }
        let prebuilt = work.path().join("prebuilt");
        build_from_scratch(
            PREBUILT,
            &prebuilt,
            &[
                ("/src/target/dist/zen-server", Path::new(SERVER_BIN)),
                ("/src/target/dist/zen-client", Path::new(CLIENT_BIN)),
            ],
        );
        must(&["build", "--format", "docker", "-q", "--build-arg", &format!("BIN_STAGE={PREBUILT}"), "-t", IMAGE, "."]);
        Self { made_base }
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        let _ = podman(&["rmi", "-f", IMAGE, PREBUILT]);
        if self.made_base {
            let _ = podman(&["rmi", "-f", BASE]);
        }
    }
}

/// A container of the test's, removed afterwards.
struct Container(String);

impl Container {
    fn run(extra: &[&str]) -> Self {
        let name = format!("zen-it-{}-{}", std::process::id(), free_port());
        let mut args = vec!["--runtime", "runc", "run", "-d", "--name", &name, "--network", "host"];
        args.extend(["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]);
        args.extend(extra);
        args.push(IMAGE);
        must(&args);
        Self(name)
    }

    fn healthy(&self) -> bool {
        succeeded(&podman(&["healthcheck", "run", &self.0]))
    }

    fn inspect(&self, format: &str) -> String {
        must(&["inspect", "--format", format, &self.0])
    }

    fn logs(&self) -> String {
        let output = podman(&["logs", &self.0]);
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.0]);
    }
}

/// Waits until `addr` answers the question.
fn answering(addr: SocketAddr, question: &[u8], answer: &[u8]) -> bool {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        if let Ok(stream) = std::net::TcpStream::connect(addr) {
            let mut stream = stream;
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            if ask_like_the_book(&mut stream, question) == answer {
                return true;
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
#[ignore = "needs podman and runc: apt-get install podman runc"]
fn the_image_answers_as_non_root_passes_its_health_check_takes_a_mounted_file_and_stops_with_exit_0() {
    let _images = Images::build();
    assert!(
        must(&["image", "inspect", "--format", "{{.Config.Healthcheck.Test}}", IMAGE]).contains("zen-client probe")
    );

    // Its own settings, with the port moved by a variable (host networking: no port 1060).
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listen = format!("ZEN_SERVER__LISTEN=127.0.0.1:{port}");
    let container = Container::run(&["-e", &listen]);
    assert!(answering(addr, b"Beautiful is better than?", b"Ugly."), "logs:\n{}", container.logs());
    let pid = container.inspect("{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid =
        status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().next().unwrap().to_owned();
    assert_eq!(uid, "65532", "runs as the image's non-root user");
    assert!(container.logs().contains("listening"), "logs on standard output:\n{}", container.logs());

    // The health check follows the port, and fails while the server does not answer.
    assert!(container.healthy(), "logs:\n{}", container.logs());
    must(&["kill", "--signal", "STOP", &container.0]);
    assert!(!container.healthy(), "healthy while the server was stopped");
    must(&["kill", "--signal", "CONT", &container.0]);
    assert!(container.healthy());

    // podman stop: SIGTERM, a drain, exit 0, quickly.
    let mut client = connect(addr);
    assert_eq!(ask_like_the_book(&mut client, b"Simple is better than?"), b"Complex.");
    let asked_to_stop = Instant::now();
    must(&["stop", "-t", "10", &container.0]);
    let took = asked_to_stop.elapsed();
    assert!(took < Duration::from_secs(2), "stop took {took:?}");
    assert_eq!(container.inspect("{{.State.ExitCode}}"), "0", "logs:\n{}", container.logs());
    assert_eq!(crate::helpers::read_to_close(&mut client), b"Error: server shutting down.");

    // A mounted settings file replaces the image's: its port and its answers, and the health
    // check follows both.
    let port = free_port();
    let file = TempConfig::new(&format!(
        "[server]\nlisten = [\"0.0.0.0:{port}\"]\n[oracle]\nanswers = [{{ question = \"Flat is better than?\", answer = \"Nested.\" }}]\n"
    ));
    let mount = format!("{}:/etc/zen-server/zen-server.toml:ro", file.path());
    let mounted = Container::run(&["-v", &mount]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(answering(addr, b"Flat is better than?", b"Nested."), "logs:\n{}", mounted.logs());
    assert!(mounted.healthy(), "logs:\n{}", mounted.logs());
}

/// The process IDs of `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

#[test]
#[ignore = "needs root for a PID namespace: run as root (CI does)"]
fn as_pid_1_of_its_own_pid_namespace_sigterm_drains_and_exits_0() {
    let mut unshare =
        ZenServer::launch(Launch::args(&["--listen", "127.0.0.1:0"]).wrapper(&["unshare", "--pid", "--fork"]));
    let end = Instant::now() + DEADLINE;
    let server = loop {
        if let Some(&child) = children(unshare.pid()).first() {
            break child;
        }
        assert!(Instant::now() < end, "no server process under unshare");
        thread::sleep(Duration::from_millis(20));
    };
    let status = std::fs::read_to_string(format!("/proc/{server}/status")).unwrap();
    let namespaced =
        status.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap().split_whitespace().last().unwrap().to_owned();
    assert_eq!(namespaced, "1", "the server is PID 1 in its namespace");
    let mut client = connect(unshare.addr());
    assert_eq!(ask_like_the_book(&mut client, b"Beautiful is better than?"), b"Ugly.");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(crate::helpers::read_to_close(&mut client), b"Error: server shutting down.");
    let status = unshare.wait_exit(DEADLINE).unwrap_or_else(|| panic!("still running; log:\n{}", unshare.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", unshare.log());
}
