//! Records the commit being built, for `zen_build_info`: `BUILD_COMMIT` from the environment
//! (a container build has no `.git`: `--build-arg BUILD_COMMIT=...`), else `git rev-parse`, else
//! `unknown`. Not a `ZEN_` name: cargo also sets it when it runs the binaries (`cargo run`,
//! `cargo test`), and zen-server refuses `ZEN_` variables that are not settings.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=BUILD_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs");
    let commit = std::env::var("BUILD_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        let output = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        let commit = String::from_utf8(output.stdout).ok()?.trim().to_owned();
        (output.status.success() && !commit.is_empty()).then_some(commit)
    });
    println!("cargo:rustc-env=BUILD_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}
