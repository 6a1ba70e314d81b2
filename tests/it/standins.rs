//! What the tests of the real engines share: Debian root file systems from `debootstrap`,
//! cached between runs; the stand-ins for the images the `Dockerfile` starts from, since nothing
//! can be pulled from a registry here; the `Dockerfile`'s build context, copied; and the state
//! of the host that an engine must leave as it found it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::helpers::SERVER_BIN;

/// Runs `program` with `args`, which must succeed; returns its standard output.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A Debian `release` (minbase, with the packages `include` names) made by `debootstrap` once
/// and kept under cargo's temporary directory for the tests (`name` tells the variants apart);
/// made under another name and renamed, so a run cut short leaves nothing half made.
pub fn debian(name: &str, release: &str, include: &str) -> PathBuf {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stand-ins");
    let root = cache.join(name);
    if root.join("etc/debian_version").exists() {
        return root;
    }
    let making = cache.join(format!("{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&making);
    std::fs::create_dir_all(&cache).unwrap();
    let include = format!("--include={include}");
    let making_str = making.to_str().unwrap();
    run("debootstrap", &["--variant=minbase", &include, release, making_str, "http://deb.debian.org/debian"]);
    if std::fs::rename(&making, &root).is_err() {
        // Another test process made it meanwhile.
        let _ = std::fs::remove_dir_all(&making);
    }
    root
}

/// The images the `Dockerfile` starts from, as written there: the build stage's, then the
/// runtime's.
pub fn dockerfile_bases() -> (String, String) {
    let dockerfile = std::fs::read_to_string("Dockerfile").unwrap();
    let bases: Vec<String> = dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("FROM "))
        .filter_map(|rest| rest.split_whitespace().next().map(str::to_owned))
        .collect();
    assert_eq!(bases.len(), 2, "a build stage and a runtime stage: {bases:?}");
    (bases[0].clone(), bases[1].clone())
}

/// A stand-in for the official Rust image `tag`: Debian (the release the tag names) with a C
/// compiler, and this host's Rust toolchain where that image has its own; made in `work`.
/// Returns the root and the image's settings (Dockerfile instructions) for an import.
pub fn rust_base(tag: &str, work: &Path) -> (PathBuf, Vec<&'static str>) {
    let release = tag.rsplit('-').next().unwrap();
    let debian = debian(&format!("{release}-build"), release, "gcc,libc6-dev,ca-certificates");
    let root = work.join("rust");
    run("cp", &["-a", debian.to_str().unwrap(), root.to_str().unwrap()]);
    // This host's trusted certificates: its way to crates.io may inspect TLS.
    std::fs::copy("/etc/ssl/certs/ca-certificates.crt", root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    let sysroot = run("rustc", &["--print", "sysroot"]);
    let sysroot = Path::new(sysroot.trim()).to_owned();
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
    let settings = vec![
        "ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV CARGO_HOME=/usr/local/cargo",
    ];
    (root, settings)
}

/// A stand-in for distroless, made in `work`: the C libraries zen-server links to, and the
/// `nonroot` user.
pub fn runtime_base(work: &Path) -> PathBuf {
    let root = work.join("runtime");
    let libraries = run("ldd", &[SERVER_BIN]);
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
    root
}

/// `root` as a tar archive beside it, for an engine to import.
pub fn archive(root: &Path) -> PathBuf {
    let archive = root.with_extension("tar");
    run("tar", &["-C", root.to_str().unwrap(), "-cf", archive.to_str().unwrap(), "."]);
    archive
}

/// A copy in `dir` of what the `Dockerfile` is built from: the files `.dockerignore` lets in.
pub fn build_context(dir: &Path) -> PathBuf {
    let context = dir.join("context");
    std::fs::create_dir_all(&context).unwrap();
    let ignore = std::fs::read_to_string(".dockerignore").unwrap();
    let mut entries: Vec<String> = ignore
        .lines()
        .filter_map(|line| line.strip_prefix('!'))
        .map(|entry| entry.trim_end_matches('/').to_owned())
        .collect();
    entries.extend(["Dockerfile".to_owned(), ".dockerignore".to_owned()]);
    for entry in entries {
        let target = context.join(&entry);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        run("cp", &["-a", &entry, target.to_str().unwrap()]);
    }
    context
}

/// What an engine might change on the host and must not: the firewall, IP forwarding, the
/// network interfaces, and the mounts.
#[derive(Debug, PartialEq, Eq)]
pub struct HostState {
    firewall: String,
    ip_forward: String,
    interfaces: Vec<String>,
    mounts: usize,
}

impl HostState {
    pub fn now() -> Self {
        let firewall = run("iptables", &["-S"]);
        let ip_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
        let links = run("ip", &["-o", "link"]);
        let interfaces = links.lines().filter_map(|line| line.split(": ").nth(1).map(str::to_owned)).collect();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap().lines().count();
        Self { firewall, ip_forward, interfaces, mounts }
    }
}

/// Unmounts whatever is still mounted under `dir` (deepest first), as a daemon stopped from
/// outside may leave it.
pub fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let prefix = dir.to_str().unwrap();
    let mut points: Vec<&str> =
        mounts.lines().filter_map(|line| line.split_whitespace().nth(1)).filter(|p| p.starts_with(prefix)).collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        let _ = Command::new("umount").arg("-l").arg(point).status();
    }
}
