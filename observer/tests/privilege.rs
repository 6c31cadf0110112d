//! Without the capabilities it needs, `observer run` stops at once with one
//! line that names the missing capability.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

use std::process::Command;

fn run_as(prefix: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(prefix[0])
        .args(&prefix[1..])
        .arg(env!("CARGO_BIN_EXE_observer"))
        .args(["run", "--json-log"])
        .arg(dir.path().join("x.ndjson"))
        .output()
        .expect("spawn");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    lines[0]
}

#[test]
fn non_root_user_is_told_which_capability_is_missing() {
    let (code, stderr) = run_as(&["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]);
    assert_eq!(code, Some(77), "{stderr}");
    let line = one_line(&stderr);
    assert!(line.starts_with("observer: missing capability CAP_BPF"), "{line}");
}

#[test]
fn root_without_cap_bpf_is_told_so() {
    // CAP_SYS_ADMIN would cover BPF, so drop both from the bounding set.
    let (code, stderr) = run_as(&["setpriv", "--bounding-set=-bpf,-sys_admin", "--inh-caps=-bpf,-sys_admin", "--"]);
    assert_eq!(code, Some(77), "{stderr}");
    let line = one_line(&stderr);
    assert!(line.contains("CAP_BPF"), "{line}");
}

#[test]
fn root_without_cap_perfmon_is_told_so() {
    let (code, stderr) =
        run_as(&["setpriv", "--bounding-set=-perfmon,-sys_admin", "--inh-caps=-perfmon,-sys_admin", "--"]);
    assert_eq!(code, Some(77), "{stderr}");
    assert!(one_line(&stderr).contains("CAP_PERFMON"), "{stderr}");
}
