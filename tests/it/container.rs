//! The Kubernetes manifests played by podman (`podman kube play`, podman 4.3), on an image
//! built from the shipped `Dockerfile` with podman; and zen-server as PID 1 of a PID namespace,
//! as in a container.
//!
//! Everything podman keeps (images, containers, pods) is in a store of the test's own, removed
//! afterwards; the pod uses slirp4netns, user-mode networking that touches neither the host's
//! firewall nor its bridges, and the test checks that the host is as it found it. Nothing is
//! pulled: the image is built on stand-in bases (see [`crate::standins`]). It needs root, and
//! deb.debian.org and crates.io.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use crate::{
    helpers::{DEADLINE, Launch, TempDir, ZenServer, ask_like_the_book, connect, read_to_close},
    standins::{self, HostState},
};

/// A podman of the test's own: its store and state under `dir`, and containers limited to
/// open files and processes this machine allows (runc cannot raise them).
struct Podman {
    dir: TempDir,
}

impl Podman {
    fn new() -> Self {
        let podman = Self { dir: TempDir::new("podman") };
        std::fs::write(
            podman.dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n",
        )
        .unwrap();
        podman
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .arg("--root")
            .arg(self.dir.path().join("storage"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(args)
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .output()
            .unwrap()
    }

    fn must(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(output.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Builds the shipped `Dockerfile` as `tag`, on stand-ins for its base images.
    fn build_image(&self, tag: &str) {
        let work = self.dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let (build, runtime) = standins::dockerfile_bases();
        let (root, settings) = standins::rust_base(&build, &work);
        let mut args = vec!["import"];
        for setting in &settings {
            args.extend(["--change", setting]);
        }
        let archive = standins::archive(&root);
        let build = qualified(&build);
        args.extend([archive.to_str().unwrap(), build.as_str()]);
        self.must(&args);
        let archive = standins::archive(&standins::runtime_base(&work));
        self.must(&["import", archive.to_str().unwrap(), &qualified(&runtime)]);
        let context = standins::build_context(&work);
        // `--format docker`: podman's default format drops HEALTHCHECK.
        let context = context.to_str().unwrap();
        self.must(&["--runtime", "runc", "build", "--network", "host", "--format", "docker", "-t", tag, context]);
    }

    fn logs(&self, container: &str) -> String {
        let output = self.run(&["logs", container]);
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["pod", "rm", "--all", "--force", "--time", "0"]);
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.run(&["rmi", "--all", "--force"]);
        standins::unmount_under(self.dir.path());
    }
}

/// An image name as podman spells it in full (`rust:1` is `docker.io/library/rust:1`).
fn qualified(name: &str) -> String {
    match name.split_once('/') {
        Some((registry, _)) if registry.contains('.') => name.to_owned(),
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    }
}

/// The shipped Deployment with only its image and replica count changed: one pod, since each
/// binds the host's ports here; in `dir`.
fn deployment(dir: &Path, image: &str) -> PathBuf {
    let shipped = std::fs::read_to_string("deploy/k8s/deployment.yaml").unwrap();
    for line in ["  replicas: 3\n", "          image: zen-server:latest\n"] {
        assert!(shipped.contains(line), "{line:?} is not in deployment.yaml");
    }
    let played = shipped
        .replace("  replicas: 3\n", "  replicas: 1\n")
        .replace("          image: zen-server:latest\n", &format!("          image: {image}\n"));
    let path = dir.join("deployment.yaml");
    std::fs::write(&path, played).unwrap();
    path
}

/// Waits until `addr` answers `question` with `answer`.
fn answering(addr: SocketAddr, question: &[u8], answer: &[u8]) -> bool {
    let end = Instant::now() + DEADLINE;
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

#[test]
#[ignore = "needs root, podman, runc, catatonit, slirp4netns, debootstrap, deb.debian.org and crates.io: apt-get install podman runc catatonit slirp4netns debootstrap"]
fn the_deployment_and_its_configmap_play_under_podman_answer_with_the_configmaps_settings_and_drain() {
    // The pod publishes the ConfigMap's ports on the host, as a node would.
    let configmap = std::fs::read_to_string("deploy/k8s/configmap.yaml").unwrap();
    for (key, port) in [("listen = [\"0.0.0.0:1060\"]", 1060), ("listen = \"0.0.0.0:9106\"", 9106)] {
        assert!(configmap.contains(key), "{key} is not in configmap.yaml");
        assert!(TcpListener::bind(("0.0.0.0", port)).is_ok(), "port {port} is taken on this host");
    }
    let host = HostState::now();
    {
        let podman = Podman::new();
        let image = "localhost/zen-server:test";
        podman.build_image(image);
        let deployment = deployment(podman.dir.path(), image);
        let deployment = deployment.to_str().unwrap();
        podman.must(&[
            "kube",
            "play",
            "--network",
            "slirp4netns",
            "--configmap",
            "deploy/k8s/configmap.yaml",
            deployment,
        ]);
        let container = podman.must(&["ps", "--filter", "name=zen-server-pod-0-zen-server", "--format", "{{.Names}}"]);
        assert_eq!(container, "zen-server-pod-0-zen-server");
        let addr: SocketAddr = "127.0.0.1:1060".parse().unwrap();
        assert!(answering(addr, b"Beautiful is better than?", b"Ugly."), "logs:\n{}", podman.logs(&container));

        // The ConfigMap's settings are in force: JSON lines on standard output, two workers.
        let logs = podman.logs(&container);
        assert!(logs.lines().all(|line| line.starts_with('{')), "logs:\n{logs}");
        assert!(logs.contains("\"workers\":2"), "logs:\n{logs}");
        // The probes' command (zen-client probe, following the same mounted settings) passes in
        // the pod. (podman 4.3 turns an exec probe into a health check run by /bin/sh, which
        // the distroless image does not have; Kubernetes runs it without a shell.)
        let probe = podman.must(&["inspect", "--format", "{{json .Config.Healthcheck.Test}}", &container]);
        assert!(probe.contains("\"/usr/local/bin/zen-client\",\"probe\""), "{probe}");
        podman.must(&["exec", &container, "/usr/local/bin/zen-client", "probe"]);
        // The pod's security settings: the image's non-root user, a read-only root.
        let pid = podman.must(&["inspect", "--format", "{{.State.Pid}}", &container]);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().next().unwrap();
        assert_eq!(uid, "65532");
        assert_eq!(podman.must(&["inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", &container]), "true");

        // Stopping the pod: SIGTERM, a drain, exit 0; a client connected in the pod is told.
        // (One connected through the published port is not: slirp4netns's port forwarder closes
        // its side as the pod stops. And podman 4.3's `kube down` does not wait for a drain: it
        // kills the pod's containers at once, exit 137; so the pod is stopped first, then
        // brought down.)
        let (connected, client) = std::sync::mpsc::channel();
        let netns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        let told = thread::spawn(move || {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut client = connect(addr);
            let answer = ask_like_the_book(&mut client, b"Simple is better than?");
            connected.send(answer).unwrap();
            read_to_close(&mut client)
        });
        assert_eq!(client.recv().unwrap(), b"Complex.");
        podman.must(&["pod", "stop", "zen-server-pod-0"]);
        assert_eq!(told.join().unwrap(), b"Error: server shutting down.");
        assert_eq!(podman.must(&["inspect", "--format", "{{.State.ExitCode}}", &container]), "0");
        assert!(podman.logs(&container).contains("\"message\":\"drained\",\"unfinished\":0"));
        podman.must(&["kube", "down", deployment]);
        assert_eq!(podman.must(&["ps", "-aq"]), "", "kube down left containers");
    }
    assert_eq!(HostState::now(), host, "the host changed");
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
