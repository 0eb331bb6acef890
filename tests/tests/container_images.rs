//! Static checks only (the Dockerfiles are read, no image is built): the three images'
//! Dockerfiles keep their promises: multi-stage, built `--locked` from
//! the workspace's one Cargo.lock (with protoc for etcd-client), a distroless runtime
//! with no shell, a numeric non-root user (so the kubelet can verify `runAsNonRoot`), and
//! the binary where the shard pods' preStop hook and the chart expect it.
//!
//! No container engine runs on the CI machines, so the images themselves are not built
//! here; these checks catch the mistakes that would only show at `docker build` or at
//! pod start.

use anyhow::{Context, Result, ensure};

/// Each image, its package and binary, and the features its build turns on: the shard and
/// the gateway need `etcd` to join a cluster (the operator always has it); the gateway's
/// image leaves out local mode, and with it the media stack.
const IMAGES: [(&str, &str, &str, &str); 3] = [
    (
        "sfu/Dockerfile",
        "tutti-sfu",
        "tutti-sfu",
        " --features etcd",
    ),
    (
        "operator/Dockerfile",
        "tutti-operator",
        "tutti-operator",
        "",
    ),
    (
        "signaling/Dockerfile",
        "tutti-signaling",
        "tutti-gateway",
        " --no-default-features --features etcd",
    ),
];

fn read(path: &str) -> Result<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    std::fs::read_to_string(format!("{root}/{path}")).with_context(|| format!("reading {path}"))
}

#[test]
fn statically_each_dockerfile_is_multi_stage_locked_and_non_root() -> Result<()> {
    for (path, package, binary, features) in IMAGES {
        let text = read(path)?;
        let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
        ensure!(
            stages.len() == 2,
            "{path}: a build stage and a runtime stage"
        );
        ensure!(stages[0].contains(" AS build"), "{path}: {}", stages[0]);
        ensure!(
            stages[1].contains("gcr.io/distroless/cc-debian12:nonroot"),
            "{path}: runtime {}",
            stages[1]
        );
        ensure!(
            text.contains("protobuf-compiler"),
            "{path}: protoc for etcd-client"
        );
        let build = format!("cargo build --release --locked -p {package}{features} --bin {binary}");
        ensure!(text.contains(&build), "{path}: {build}");
        let user = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("USER "))
            .context("a USER line")?;
        let uid: u32 = user
            .split(':')
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("{path}: USER {user} must be numeric"))?;
        ensure!(uid != 0, "{path}: runs as root");
        ensure!(
            !text.contains("fault-injection"),
            "{path}: test-only faults stay out of images"
        );
        let entry = format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]");
        ensure!(text.contains(&entry), "{path}: {entry}");
    }
    Ok(())
}

#[test]
fn statically_the_media_shard_image_adds_ffmpeg_to_the_same_binary() -> Result<()> {
    let plain = read("sfu/Dockerfile")?;
    let media = read("sfu/Dockerfile.media")?;
    let stages: Vec<&str> = media.lines().filter(|l| l.starts_with("FROM ")).collect();
    ensure!(
        stages.len() == 2 && stages[0].contains(" AS build"),
        "{stages:?}"
    );
    ensure!(stages[1] == "FROM debian:bookworm-slim", "{}", stages[1]);
    ensure!(media.contains("apt-get install -y --no-install-recommends ffmpeg"));
    // The same build as the plain image's, and the same user and entry point.
    let build = "cargo build --release --locked -p tutti-sfu --features etcd --bin tutti-sfu";
    ensure!(plain.contains(build) && media.contains(build));
    for line in [
        "USER 65532:65532",
        "ENTRYPOINT [\"/usr/local/bin/tutti-sfu\"]",
    ] {
        ensure!(plain.contains(line) && media.contains(line), "{line}");
    }
    Ok(())
}

#[test]
fn statically_the_shard_pods_prestop_hook_names_the_imaged_binary() -> Result<()> {
    let pods = read("operator/src/shard_pods.rs")?;
    ensure!(pods.contains(r#""/usr/local/bin/tutti-sfu", "drain", "--wait""#));
    let context = read(".dockerignore")?;
    ensure!(
        context.lines().any(|l| l == "target/"),
        "the build context leaves target/ out"
    );
    Ok(())
}
