//! `cargo xtask install`: the daemon as a systemd service. Idempotent:
//! an existing config is kept, the group is created only when missing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::status;

const UNIT: &str = include_str!("../../dist/observer.service");
const LOGROTATE: &str = include_str!("../../dist/observer.logrotate");

pub fn run(root: &Path) -> anyhow::Result<()> {
    crate::setup::run()?;
    status(Command::new("cargo").args(["build", "--release", "-p", "observer"]))?;
    let system = root == Path::new("/");
    let at = |p: &str| -> PathBuf { root.join(p.trim_start_matches('/')) };

    let bin = at("/usr/local/bin/observer");
    copy(Path::new("target/release/observer"), &bin, 0o755)?;

    if system && !group_exists("observer") {
        status(Command::new("groupadd").args(["--system", "observer"]))?;
        eprintln!("install: created group observer (add users who may run `observer summary` to it)");
    }

    let config = at("/etc/observer/observer.toml");
    if config.exists() {
        eprintln!("install: {} exists, kept", config.display());
    } else {
        let out = Command::new(&bin).arg("config").output().context("running observer config")?;
        let text = String::from_utf8(out.stdout)?.replace("group = \"\"", "group = \"observer\"");
        write(&config, &text, 0o640)?;
    }

    let unit = at("/etc/systemd/system/observer.service");
    write(&unit, UNIT, 0o644)?;
    write(&at("/etc/logrotate.d/observer"), LOGROTATE, 0o644)?;
    if system && Path::new("/run/systemd/system").exists() {
        status(Command::new("systemctl").arg("daemon-reload"))?;
        eprintln!("install: done; start it with `systemctl enable --now observer`");
    } else {
        eprintln!("install: done (systemd is not running here: enable the unit on the target host)");
    }
    Ok(())
}

fn group_exists(name: &str) -> bool {
    Command::new("getent").args(["group", name]).output().map(|o| o.status.success()).unwrap_or(false)
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_bytes(to, &bytes, mode)
}

fn write(to: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    write_bytes(to, text.as_bytes(), mode)
}

fn write_bytes(to: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Write beside and rename: a running binary or a unit being read is never half-written.
    let tmp = to.with_extension("xtask-new");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, to).with_context(|| format!("installing {}", to.display()))?;
    eprintln!("install: {}", to.display());
    Ok(())
}
