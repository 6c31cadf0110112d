//! The systemd unit in dist/ is valid for systemd and hardened: checked
//! with systemd-analyze against the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

use std::process::Command;

fn unit_for_this_build(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/observer.service")).unwrap();
    let path = dir.join("observer.service");
    std::fs::write(&path, text.replace("/usr/local/bin/observer", env!("CARGO_BIN_EXE_observer"))).unwrap();
    path
}

#[test]
fn the_unit_verifies_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path());
    let verify = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));

    let security = Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(&unit).output().unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let level = text
        .lines()
        .find_map(|l| l.split("exposure level for observer.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    // 10 is an unhardened service; a daemon that loads eBPF and enters
    // namespaces keeps CAP_SYS_ADMIN, so a perfect score is out of reach.
    assert!(level <= 4.5, "exposure {level}:\n{text}");
    for line in ["NoNewPrivileges=yes", "ProtectSystem=strict", "Restart=on-failure", "CapabilityBoundingSet="] {
        assert!(std::fs::read_to_string(&unit).unwrap().contains(line), "{line}");
    }
}
