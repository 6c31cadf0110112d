//! `cargo xtask setup`: the build's system dependencies, installed only
//! when missing. docs/toolchain.md (section 1) says why each piece is needed.

use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use crate::status;

/// Debian packages the build, the tests and the benchmarks need.
const PACKAGES: &[(&str, &str)] = &[
    ("rustc-web", "rustc 1.96 that compiles the eBPF crate"),
    ("libstd-rust-web-dev-bpf", "prebuilt core for bpfel-unknown-none (no -Z build-std)"),
    ("llvm-22-dev", "LLVM that bpf-linker is built against"),
    ("libpolly-22-dev", "linked by llvm-sys when building bpf-linker"),
    ("libzstd-dev", "linked by llvm-sys when building bpf-linker"),
    ("zlib1g-dev", "linked by llvm-sys when building bpf-linker"),
    ("nftables", "firewall scenarios in tests and the lab"),
    ("iproute2", "network namespaces in tests and the lab"),
    ("procps", "sysctl in tests"),
    ("util-linux", "setpriv for the privilege tests"),
    ("bpftrace", "the peer the benchmark compares the observer with (cargo xtask bench)"),
    ("nginx", "the healthy web server of the benchmark (started by the bench, never as a service)"),
    ("wrk", "the load generator of the benchmark's healthy web workload"),
    ("iperf3", "the benchmark's small-message transfer workload"),
    ("rsyslog", "a real syslog receiver for the syslog output tests"),
    ("python3-aiosmtpd", "a real SMTP server (STARTTLS, AUTH) for the e-mail alert tests, run by /usr/bin/python3"),
    ("systemd", "systemd-analyze verifies the service unit in the tests"),
    (
        "chromium",
        "the report test renders `observer report`'s page in a real browser (headless) and checks its screenshot; \
         large (about 300 MB with its libraries), test-only",
    ),
    (
        "fonts-dejavu-core",
        "a font for the headless browser to draw the report's text with (chromium does not pull one)",
    ),
];

/// Name under which rustc-web is registered with rustup (observer/build.rs).
const BPF_TOOLCHAIN: &str = "bpf-web";
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    step(1, "Debian packages", packages)?;
    step(2, "BPF compiler toolchain link", toolchain)?;
    step(3, "bpf-linker", bpf_linker)?;
    step(4, "cargo-nextest", nextest)?;
    eprintln!("setup: done");
    Ok(())
}

fn step(n: usize, what: &str, f: fn() -> anyhow::Result<String>) -> anyhow::Result<()> {
    eprintln!("setup: [{n}/4] {what}: checking");
    let found = f().with_context(|| format!("setup step {what}"))?;
    eprintln!("setup: [{n}/4] {what}: {found}");
    Ok(())
}

pub fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn packages() -> anyhow::Result<String> {
    let missing: Vec<&str> = PACKAGES.iter().map(|(p, _)| *p).filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(format!("all {} present", PACKAGES.len()));
    }
    for (p, why) in PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        eprintln!("setup:       missing {p} ({why})");
    }
    status(Command::new("apt-get").args(["update", "-q"]))?;
    status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )?;
    Ok(format!("installed {}", missing.join(" ")))
}

fn toolchain() -> anyhow::Result<String> {
    let list = Command::new("rustup").args(["toolchain", "list"]).output().context("running rustup")?;
    let list = String::from_utf8_lossy(&list.stdout);
    if list.lines().any(|l| l.split_whitespace().next() == Some(BPF_TOOLCHAIN)) {
        return Ok(format!("{BPF_TOOLCHAIN} -> /usr present"));
    }
    status(Command::new("rustup").args(["toolchain", "link", BPF_TOOLCHAIN, "/usr"]))?;
    Ok(format!("linked {BPF_TOOLCHAIN} -> /usr"))
}

fn bpf_linker() -> anyhow::Result<String> {
    let out = Command::new("bpf-linker").arg("--version").stderr(Stdio::null()).output();
    if let Ok(out) = &out {
        let v = String::from_utf8_lossy(&out.stdout);
        if v.contains(BPF_LINKER_VERSION) {
            return Ok(format!("{} present", v.trim()));
        }
    }
    eprintln!("setup:       building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)");
    status(
        Command::new("cargo")
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args(["install", "bpf-linker", "--locked", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )?;
    Ok(format!("installed bpf-linker {BPF_LINKER_VERSION}"))
}

fn nextest() -> anyhow::Result<String> {
    let ok = Command::new("cargo")
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return Ok("present".into());
    }
    status(Command::new("cargo").args(["install", "cargo-nextest", "--locked"]))?;
    if !Command::new("cargo").args(["nextest", "--version"]).status()?.success() {
        bail!("cargo-nextest still not runnable after install");
    }
    Ok("installed".into())
}
