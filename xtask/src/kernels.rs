//! Debian's kernel images for the VM tests, fetched and unpacked once, and
//! the tools that boot them (qemu, virtme-ng), installed when missing.
//!
//! Why Debian's own packages: they are the kernels our users run (Debian
//! 11's 5.10, Debian 12's 6.1, 6.12 from Debian 12's backports line, built
//! like Debian 13's), with the BTF, tracepoints and modules those users
//! get. 6.1 and 6.12 come from the machine's own Debian 12 suites. 5.10
//! comes from Debian 11 (`bullseye`) through a private apt configuration
//! under target/kernels/: the machine's sources and package lists stay as
//! they are, and the mirror is the one the machine already uses (read from
//! its sources, never written into this repository).
//!
//! The packages are unpacked side by side in target/kernels/root/
//! (boot/vmlinuz-<version>, lib/modules/<version>). virtme-ng finds the
//! modules next to the image it boots and links them in the guest at
//! /lib/modules/<version> (veth, nf_tables, 9p are modules in Debian's
//! kernels), so the host's /lib/modules is left alone; `depmod -b` indexes
//! them where they are. Everything is idempotent: a second run finds the
//! image (target/kernels/<series>.release names it) and the index
//! (modules.dep), and fetches and copies nothing.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

/// Runs `cmd` with its stdout on our stderr: `cargo xtask vm` prints only
/// the guest command's output on stdout.
fn status(cmd: &mut Command) -> anyhow::Result<()> {
    crate::status(cmd.stdout(std::io::stderr()))
}

/// The kernels the VM tests boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Series {
    /// Debian 11 (bullseye).
    #[value(name = "5.10")]
    V5_10,
    /// Debian 12 (bookworm).
    #[value(name = "6.1")]
    V6_1,
    /// Debian 12's newer kernel line, as in Debian 13.
    #[value(name = "6.12")]
    V6_12,
}

impl Series {
    pub const ALL: [Series; 3] = [Series::V5_10, Series::V6_1, Series::V6_12];

    pub fn name(self) -> &'static str {
        match self {
            Series::V5_10 => "5.10",
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        }
    }

    /// A regular expression for `apt-cache search --names-only`.
    fn package_pattern(self) -> &'static str {
        match self {
            Series::V5_10 => r"^linux-image-5\.10\.0-[0-9]+-amd64-unsigned$",
            Series::V6_1 => r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
            Series::V6_12 => r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$",
        }
    }

    /// Whether the package comes from Debian 11 rather than the machine's suites.
    fn is_bullseye(self) -> bool {
        self == Series::V5_10
    }
}

/// An unpacked kernel image, ready to boot.
pub struct Image {
    /// `uname -r` of the kernel, e.g. 5.10.0-46-amd64.
    pub release: String,
    pub vmlinuz: PathBuf,
}

/// Packages the VMs need on the host.
const VM_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "the emulator the kernels boot in (TCG: KVM does not work here)"),
    ("busybox-static", "virtme-ng's guest init tools"),
    ("kmod", "depmod for the images' modules"),
];
/// virtme-ng from PyPI, pinned: its console and options are what vm.rs uses.
const VIRTME_NG_VERSION: &str = "1.42";

/// The `vng` to run, and the PATH that finds its own helpers (`vng` runs
/// `virtme-run` through the shell).
pub struct Vng {
    pub path: PathBuf,
    path_env: std::ffi::OsString,
}

impl Vng {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.env("PATH", &self.path_env);
        cmd
    }
}

/// Installs qemu, busybox and kmod when missing, and finds virtme-ng
/// VIRTME_NG_VERSION: on PATH, in Python's script directory, or in a
/// virtual environment under target/kernels/ (installed there when none is
/// found, which leaves the system's Python alone).
pub fn ensure_vm_tools(workspace: &Path) -> anyhow::Result<Vng> {
    let missing: Vec<&str> = VM_PACKAGES.iter().map(|(p, _)| *p).filter(|p| !crate::setup::installed(p)).collect();
    if !missing.is_empty() {
        for (p, why) in VM_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
            eprintln!("kernels: installing {p} ({why})");
        }
        apt_install(&missing)?;
    }
    let venv = cache_dir(workspace).join("virtme-ng");
    if let Some(vng) = find_vng(&venv) {
        return Ok(vng);
    }
    eprintln!(
        "kernels: installing virtme-ng {VIRTME_NG_VERSION} in {} (boots a kernel on the host's root file system)",
        venv.display()
    );
    let python = venv.join("bin/python3");
    if !python.exists() {
        let create = || {
            Command::new("python3").arg("-m").arg("venv").arg("--clear").arg(&venv).stdout(std::io::stderr()).status()
        };
        if !create().is_ok_and(|s| s.success()) {
            // Debian's python3 keeps venv and ensurepip in a package of their own.
            apt_install(&["python3-venv"])?;
            status(Command::new("python3").arg("-m").arg("venv").arg("--clear").arg(&venv))
                .context("creating the virtual environment for virtme-ng")?;
        }
    }
    status(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .arg(format!("virtme-ng=={VIRTME_NG_VERSION}")),
    )
    .context("installing virtme-ng with pip")?;
    find_vng(&venv)
        .with_context(|| format!("vng {VIRTME_NG_VERSION} is not runnable after installing it in {}", venv.display()))
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    status(Command::new("apt-get").args(["update", "-q"]))?;
    status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages),
    )
}

/// A `vng` of the pinned version: the virtual environment's, the one on
/// PATH, or the one in Python's script directory (pip's, not always on PATH).
fn find_vng(venv: &Path) -> Option<Vng> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = vec![venv.join("bin")];
    dirs.extend(std::env::split_paths(&path));
    let scripts =
        Command::new("python3").args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"]).output();
    if let Ok(out) = scripts {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    dirs.into_iter().map(|d| d.join("vng")).find(|p| is_pinned_vng(p)).and_then(|p| {
        let dir = p.parent()?.to_path_buf();
        let path_env = std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(&path))).ok()?;
        Some(Vng { path: p, path_env })
    })
}

fn is_pinned_vng(p: &Path) -> bool {
    // pyenv's shims exist for every version's scripts and fail for the others: run it.
    p.is_file()
        && Command::new(p).arg("--version").stderr(Stdio::null()).output().is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).split_whitespace().any(|w| w == VIRTME_NG_VERSION)
        })
}

fn cache_dir(workspace: &Path) -> PathBuf {
    workspace.join("target/kernels")
}

/// The image for `series`: from the cache when it was unpacked before, else
/// downloaded and unpacked now.
pub fn image(workspace: &Path, series: Series) -> anyhow::Result<Image> {
    let cache = cache_dir(workspace);
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let marker = cache.join(format!("{}.release", series.name()));
    let release = match std::fs::read_to_string(&marker) {
        Ok(r) if is_unpacked(&cache, r.trim()) => r.trim().to_owned(),
        _ => {
            let release = fetch(&cache, series)?;
            std::fs::write(&marker, &release).with_context(|| format!("writing {}", marker.display()))?;
            release
        }
    };
    index_modules(&cache, &release)?;
    Ok(Image { vmlinuz: cache.join("root/boot").join(format!("vmlinuz-{release}")), release })
}

fn is_unpacked(cache: &Path, release: &str) -> bool {
    let root = cache.join("root");
    root.join("boot").join(format!("vmlinuz-{release}")).is_file() && root.join("lib/modules").join(release).is_dir()
}

/// The private apt options for Debian 11, set up under the cache.
fn bullseye_apt(cache: &Path) -> anyhow::Result<Vec<String>> {
    let dir = cache.join("apt-bullseye");
    std::fs::create_dir_all(dir.join("lists/partial")).context("creating the private apt lists")?;
    std::fs::create_dir_all(dir.join("cache/archives/partial")).context("creating the private apt cache")?;
    let mirror = machine_mirror()?;
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let sources = format!(
        "deb [signed-by={keyring}] {mirror} bullseye main\ndeb [signed-by={keyring}] {mirror}-security bullseye-security main\n"
    );
    std::fs::write(dir.join("sources.list"), sources).context("writing the private sources.list")?;
    Ok(vec![
        "-o".into(),
        format!("Dir::Etc::SourceList={}", dir.join("sources.list").display()),
        "-o".into(),
        "Dir::Etc::SourceParts=/dev/null".into(),
        "-o".into(),
        format!("Dir::State::Lists={}", dir.join("lists").display()),
        "-o".into(),
        format!("Dir::Cache={}", dir.join("cache").display()),
    ])
}

/// The Debian mirror the machine's own apt configuration uses.
fn machine_mirror() -> anyhow::Result<String> {
    let deb822 = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let from_deb822 = deb822
        .lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .map(str::trim)
        .find(|u| !u.contains("security"))
        .map(str::to_owned);
    let classic = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    let from_classic = classic
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("deb ") && !l.contains("security"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("http")))
        .map(str::to_owned)
        .next();
    from_deb822
        .or(from_classic)
        .map(|u| u.trim_end_matches('/').to_owned())
        .context("no Debian mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list")
}

/// Compares Debian-ish version strings by their runs of digits.
fn version_key(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).filter_map(|p| p.parse().ok()).collect()
}

/// Downloads and unpacks the newest image of `series`; returns its release.
fn fetch(cache: &Path, series: Series) -> anyhow::Result<String> {
    let apt_opts = if series.is_bullseye() { bullseye_apt(cache)? } else { vec![] };
    let search = |update: bool| -> anyhow::Result<Vec<String>> {
        if update {
            status(Command::new("apt-get").args(&apt_opts).args(["update", "-q"]))?;
        }
        let out = Command::new("apt-cache")
            .args(&apt_opts)
            .args(["search", "--names-only", series.package_pattern()])
            .output()
            .context("running apt-cache search")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect())
    };
    let mut found = search(false)?;
    if found.is_empty() {
        found = search(true)?;
    }
    let package = found
        .into_iter()
        .max_by_key(|p| version_key(p))
        .with_context(|| format!("no package matches {} in the apt lists", series.package_pattern()))?;
    let release = package
        .strip_prefix("linux-image-")
        .and_then(|p| p.strip_suffix("-unsigned"))
        .with_context(|| format!("unexpected package name {package}"))?
        .to_owned();
    eprintln!("kernels: fetching {package} for {}", series.name());
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).context("creating the package directory")?;
    status(Command::new("apt-get").current_dir(&debs).args(&apt_opts).args([
        "download",
        "-q",
        "-o",
        "APT::Sandbox::User=root",
        &package,
    ]))?;
    let deb = std::fs::read_dir(&debs)
        .context("listing downloaded packages")?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_"))))
        .with_context(|| format!("{package} was not downloaded"))?;
    status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(cache.join("root")))?;
    // The unpacked tree holds the modules now; the .deb is not needed again.
    let _ = std::fs::remove_file(&deb);
    Ok(release)
}

/// Indexes the image's modules where they were unpacked (depmod writes
/// modules.dep last, so its presence means done).
fn index_modules(cache: &Path, release: &str) -> anyhow::Result<()> {
    let root = cache.join("root");
    let dir = root.join("lib/modules").join(release);
    if dir.join("modules.dep").exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        bail!("{} is missing: remove {} to fetch the image again", dir.display(), root.display());
    }
    status(Command::new("depmod").arg("-b").arg(&root).arg(release))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_package_wins_by_number_not_by_text() {
        let pkgs = ["linux-image-6.12.9+deb12-amd64-unsigned", "linux-image-6.12.117+deb12-amd64-unsigned"];
        let newest = pkgs.iter().max_by_key(|p| version_key(p)).unwrap();
        assert_eq!(*newest, "linux-image-6.12.117+deb12-amd64-unsigned");
    }
}
