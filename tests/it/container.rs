//! The shipped `Dockerfile`, built and run with podman as a user would build it. Nothing can be
//! pulled here, so the test first makes local stand-ins under the names the `Dockerfile` uses:
//! for the build stage's Rust image, Debian from `debootstrap` with this host's Rust toolchain;
//! for the distroless runtime, the host's C libraries and a `nonroot` user. Then it builds the
//! `Dockerfile` unchanged (compiling the crate inside the build stage), checks that a second build
//! takes the dependencies from their cached layer, and checks what a user of the image relies on.
//! All of it in a podman store of the test's own, removed afterwards: the test never sees or
//! touches anyone else's images or containers. It needs root, and deb.debian.org and crates.io.
//! Also zen-server as PID 1 of a PID namespace, with `unshare`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use crate::helpers::{
    DEADLINE, Launch, SERVER_BIN, TempConfig, TempDir, ZenServer, ask_like_the_book, connect, free_port, scrape,
};

const IMAGE: &str = "localhost/zen-server:test";

/// This test process's podman store (images, containers, their state), under the temporary
/// directory; [`Images`] removes it.
fn store() -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| std::env::temp_dir().join(format!("zen-it-podman-{}", std::process::id())))
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .arg("--root")
        .arg(store().join("storage"))
        .arg("--runroot")
        .arg(store().join("run"))
        .args(args)
        .output()
        .unwrap()
}

fn succeeded(output: &Output) -> bool {
    output.status.success()
}

fn must(args: &[&str]) -> String {
    let output = podman(args);
    assert!(succeeded(&output), "podman {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Runs `program` with `args`, which must succeed.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(succeeded(&output), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// The images the `Dockerfile` starts from, as podman names them: the build stage's, then the
/// runtime's.
fn base_images() -> (String, String) {
    let dockerfile = std::fs::read_to_string("Dockerfile").unwrap();
    let bases: Vec<String> = dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("FROM "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|name| match name.split_once('/') {
            Some((registry, _)) if registry.contains('.') => name.to_owned(),
            Some(_) => format!("docker.io/{name}"),
            None => format!("docker.io/library/{name}"),
        })
        .collect();
    assert_eq!(bases.len(), 2, "a build stage and a runtime stage: {bases:?}");
    (bases[0].clone(), bases[1].clone())
}

/// Imports the directory `root` as image `tag`, with `changes` (Dockerfile instructions).
fn import(root: &Path, tag: &str, changes: &[&str]) {
    let archive = root.with_extension("tar");
    run("tar", &["-C", root.to_str().unwrap(), "-cf", archive.to_str().unwrap(), "."]);
    let mut args = vec!["import"];
    for change in changes {
        args.extend(["--change", change]);
    }
    args.extend([archive.to_str().unwrap(), tag]);
    must(&args);
}

/// A stand-in for the official Rust image: Debian (the release the tag names) with a C compiler,
/// and this host's Rust toolchain where that image has its own.
fn make_rust_base(tag: &str, work: &Path) {
    let release = tag.rsplit('-').next().unwrap();
    let root = work.join("rust");
    let root_str = root.to_str().unwrap();
    run(
        "debootstrap",
        &[
            "--variant=minbase",
            "--include=gcc,libc6-dev,ca-certificates",
            release,
            root_str,
            "http://deb.debian.org/debian",
        ],
    );
    // This host's trusted certificates: its way to crates.io may inspect TLS.
    std::fs::copy("/etc/ssl/certs/ca-certificates.crt", root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    let sysroot = Command::new("rustc").args(["--print", "sysroot"]).output().unwrap();
    let sysroot = Path::new(String::from_utf8_lossy(&sysroot.stdout).trim()).to_owned();
    assert!(
        sysroot.join("lib/rustlib").is_dir() && sysroot != Path::new("/usr"),
        "not a rustup toolchain: {sysroot:?}"
    );
    let toolchain = root.join("usr/local/rust");
    std::fs::create_dir_all(&toolchain).unwrap();
    for part in ["bin", "lib", "libexec"] {
        if sysroot.join(part).exists() {
            run("cp", &["-a", sysroot.join(part).to_str().unwrap(), toolchain.to_str().unwrap()]);
        }
    }
    let _ = std::fs::remove_dir_all(toolchain.join("lib/rustlib/src"));
    import(
        &root,
        tag,
        &[
            "ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV CARGO_HOME=/usr/local/cargo",
        ],
    );
}

/// A stand-in for distroless: the C libraries zen-server links to, and the `nonroot` user.
fn make_runtime_base(tag: &str, work: &Path) {
    let root = work.join("runtime");
    let libraries = Command::new("ldd").arg(SERVER_BIN).output().unwrap();
    let libraries = String::from_utf8_lossy(&libraries.stdout).into_owned();
    for library in libraries.split_whitespace().filter(|word| word.starts_with('/')) {
        let target = root.join(library.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(library, &target).unwrap();
    }
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )
    .unwrap();
    import(&root, tag, &[]);
}

/// Builds the shipped `Dockerfile` as `tag`, reporting `commit`; returns podman's output.
fn build_image(tag: &str, commit: &str) -> String {
    let commit = format!("BUILD_COMMIT={commit}");
    let output = podman(&[
        "--runtime",
        "runc",
        "build",
        "--network",
        "host",
        "--format",
        "docker",
        "--build-arg",
        &commit,
        "-t",
        tag,
        ".",
    ]);
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(succeeded(&output), "podman build:\n{log}");
    log
}

/// Whether the step of `log` whose instruction contains `instruction` was taken from the cache.
fn step_was_cached(log: &str, instruction: &str) -> bool {
    let mut lines = log.lines().skip_while(|line| !(line.contains("STEP") && line.contains(instruction)));
    assert!(lines.next().is_some(), "no step running {instruction:?} in:\n{log}");
    lines
        .find(|line| line.starts_with("-->") || line.contains("STEP"))
        .is_some_and(|line| line.starts_with("--> Using cache"))
}

/// The stand-in bases and the image built on them, in the test's own store, which is removed
/// afterwards.
struct Images;

impl Images {
    fn build(commit: &str) -> Self {
        let images = Self;
        let work = TempDir::new("images");
        let (rust, runtime) = base_images();
        make_rust_base(&rust, work.path());
        make_runtime_base(&runtime, work.path());
        build_image(IMAGE, commit);
        images
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        let _ = podman(&["rmi", "--all", "--force"]);
        let _ = std::fs::remove_dir_all(store());
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
#[ignore = "needs root, podman, runc, debootstrap, deb.debian.org and crates.io: apt-get install podman runc debootstrap"]
fn the_image_builds_with_cached_dependencies_answers_as_non_root_passes_its_health_check_and_stops_with_exit_0() {
    let commit = format!("test-{}", std::process::id());
    let _images = Images::build(&commit);
    assert!(
        must(&["image", "inspect", "--format", "{{.Config.Healthcheck.Test}}", IMAGE]).contains("zen-client probe")
    );

    // Built again for another commit: the dependencies come from their layer, the crate does not.
    let again = build_image("localhost/zen-server:test-again", &format!("{commit}-again"));
    assert!(step_was_cached(&again, "rm -rf src tests"), "dependencies built again:\n{again}");
    assert!(!step_was_cached(&again, "find src -name"), "the crate was not built for the new commit:\n{again}");
    assert!(again.contains("Compiling zen-server"), "the crate was not built for the new commit:\n{again}");

    // Its own settings, with the port moved by a variable (host networking: no port 1060), and
    // metrics on, to read the commit the build was given.
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listen = format!("ZEN_SERVER__LISTEN=127.0.0.1:{port}");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics_listen = format!("ZEN_METRICS__LISTEN={metrics}");
    let container = Container::run(&["-e", &listen, "-e", &metrics_listen]);
    assert!(answering(addr, b"Beautiful is better than?", b"Ugly."), "logs:\n{}", container.logs());
    let end = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(metrics).is_err() {
        assert!(Instant::now() < end, "no metrics at {metrics}; logs:\n{}", container.logs());
        thread::sleep(Duration::from_millis(50));
    }
    let build_info = format!("commit=\"{commit}\"");
    assert!(scrape(metrics).lines().any(|line| line.starts_with("zen_build_info") && line.contains(&build_info)));
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

    // podman stop: SIGTERM, a drain, exit 0, quickly. The client reads what it is told and
    // closes at the end of it, as clients do (one that stays would be waited for, up to the
    // linger after the server's last answer).
    let mut client = connect(addr);
    assert_eq!(ask_like_the_book(&mut client, b"Simple is better than?"), b"Complex.");
    let told = std::thread::spawn(move || crate::helpers::read_to_close(&mut client));
    let asked_to_stop = Instant::now();
    must(&["stop", "-t", "10", &container.0]);
    let took = asked_to_stop.elapsed();
    assert!(took < Duration::from_secs(2), "stop took {took:?}");
    assert_eq!(container.inspect("{{.State.ExitCode}}"), "0", "logs:\n{}", container.logs());
    assert_eq!(told.join().unwrap(), b"Error: server shutting down.");

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
