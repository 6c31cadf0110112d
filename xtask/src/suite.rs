//! `cargo xtask test`: the whole suite on the host's kernel, then the
//! real-kernel tests on Debian's kernels in VMs, and one summary.
//!
//! Both sides run cargo-nextest with a profile of `.config/nextest.toml`:
//! `host` (the whole suite) and `vm` (the binaries that load the programs
//! into the kernel and check what they see: capture, refused, aggregation,
//! degraded, lab; one test at a time, each stopped after 5 minutes). The
//! counts and the names of failed tests come from nextest's JUnit report,
//! the skipped count from its summary line.
//!
//! In a VM, nextest reuses the host's build: the list of test binaries
//! (`cargo nextest list --list-type binaries-only`) and `cargo metadata` are
//! written on the host, and the guest's nextest runs the binaries in place
//! from the read-only root file system. The guest never compiles. It writes
//! only the JUnit report (target/nextest, shared read-write) and its kernel
//! log (target/kernels/logs).
//!
//! The last line printed is `N passed, N failed[, N skipped]` over every
//! kernel: CI reads it. A kernel that cannot be fetched or booted, a VM that
//! dies or times out, a host suite that does not build: each is a failure
//! with its reason, and the others still run.

use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    kernels::{self, Series},
    vm::{self, Ending, Guest},
};

/// A kernel `cargo xtask test --kernel` runs the tests on: `host` (the
/// machine's own, the whole suite), a VM kernel by its series (`5.10`,
/// `6.1`, `6.12`), or `all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelChoice {
    Host,
    Vm(Series),
    All,
}

/// What `cargo xtask test` runs without `--kernel`, and so what CI runs.
/// One VM kernel takes 6.5 to 10.5 minutes; CI's limit is 90 minutes in all.
pub const DEFAULT_KERNELS: &[KernelChoice] =
    &[KernelChoice::Host, KernelChoice::Vm(Series::V5_10), KernelChoice::Vm(Series::V6_1)];

impl std::fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelChoice::Host => f.write_str("host"),
            KernelChoice::Vm(s) => f.write_str(s.name()),
            KernelChoice::All => f.write_str("all"),
        }
    }
}

impl std::str::FromStr for KernelChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(KernelChoice::Host),
            "all" => Ok(KernelChoice::All),
            _ => Series::ALL.into_iter().find(|k| k.name() == s).map(KernelChoice::Vm).ok_or_else(|| {
                let names: Vec<&str> = Series::ALL.iter().map(|k| k.name()).collect();
                format!("unknown kernel {s:?}: host, {}, or all", names.join(", "))
            }),
        }
    }
}

impl KernelChoice {
    fn series(self) -> Vec<Series> {
        match self {
            KernelChoice::Host => Vec::new(),
            KernelChoice::Vm(s) => vec![s],
            KernelChoice::All => Series::ALL.to_vec(),
        }
    }
}

/// A guest still running after this is killed; its kernel counts as failed.
/// Each test has its own limit (5 min, in the `vm` profile) well below it.
const VM_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The results of one kernel.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: usize,
    /// Names of the failed tests, or why the kernel could not be tested.
    pub failed: Vec<String>,
    pub skipped: usize,
}

/// Runs the suite on `choice` (empty: DEFAULT_KERNELS) with extra nextest
/// arguments; prints the summary. Returns whether everything passed.
pub fn run(workspace: &Path, choice: &[KernelChoice], args: &[String]) -> bool {
    let choice = if choice.is_empty() { DEFAULT_KERNELS } else { choice };
    let host = choice.iter().any(|k| matches!(k, KernelChoice::Host | KernelChoice::All));
    let mut series: Vec<Series> = choice.iter().flat_map(|k| k.series()).collect();
    series.sort();
    series.dedup();

    let mut lines = Vec::new();
    let mut total = Tally::default();
    let mut add = |label: String, started: Instant, result: anyhow::Result<Tally>, log: Option<&Path>| {
        let tally =
            result.unwrap_or_else(|e| Tally { failed: vec![format!("could not run: {e:#}")], ..Tally::default() });
        lines.push(format!(
            "kernel {label}: {} passed, {} failed, {} skipped in {} s",
            tally.passed,
            tally.failed.len(),
            tally.skipped,
            started.elapsed().as_secs()
        ));
        lines.extend(tally.failed.iter().map(|f| format!("    FAILED {f}")));
        if let (false, Some(log)) = (tally.failed.is_empty(), log) {
            lines.push(format!("    log: {}", log.display()));
        }
        total.passed += tally.passed;
        total.skipped += tally.skipped;
        total.failed.extend(tally.failed);
    };

    if host {
        let started = Instant::now();
        add(format!("{} (host)", host_release()), started, host_suite(workspace, args), None);
    }
    if !series.is_empty() {
        let started = Instant::now();
        match prepare_vms(workspace) {
            Ok((vng, reuse)) => {
                for s in series {
                    let started = Instant::now();
                    let (label, result, log) = match kernels::image(workspace, s) {
                        Ok(image) => {
                            let log = logs_dir(workspace).join(format!("{}.log", image.release));
                            let label = format!("{} ({})", image.release, s.name());
                            (label, vm_suite(workspace, &vng, &image, &reuse, args, s), Some(log))
                        }
                        Err(e) => (format!("{} (not fetched)", s.name()), Err(e), None),
                    };
                    add(label, started, result, log.as_deref());
                }
            }
            Err(e) => {
                for s in series {
                    add(s.name().to_owned(), started, Err(anyhow::anyhow!("{e:#}")), None);
                }
            }
        }
    }
    for l in &lines {
        println!("{l}");
    }
    let skipped = if total.skipped > 0 { format!(", {} skipped", total.skipped) } else { String::new() };
    println!("{} passed, {} failed{skipped}", total.passed, total.failed.len());
    total.failed.is_empty()
}

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}

fn logs_dir(workspace: &Path) -> PathBuf {
    workspace.join("target/kernels/logs")
}

/// Where nextest writes a profile's JUnit report (`[profile.P.junit]`).
fn junit_path(workspace: &Path, profile: &str) -> PathBuf {
    workspace.join("target/nextest").join(profile).join("junit.xml")
}

/// The whole suite with cargo nextest on this machine's kernel, in two
/// runs: everything side by side (profile `host`), then the burst tests
/// alone (profile `burst`), because the flood one of them makes reaches
/// every daemon on the host, and would spend the other tests' sampling
/// budgets. Their output passes through.
fn host_suite(workspace: &Path, args: &[String]) -> anyhow::Result<Tally> {
    let mut tally = nextest_profile(workspace, "host", args)?;
    let burst = nextest_profile(workspace, "burst", args)?;
    // Each run counts the other's tests as skipped (its default-filter).
    let (ran, ran_burst) = (tally.passed + tally.failed.len(), burst.passed + burst.failed.len());
    tally.skipped = tally.skipped.saturating_sub(ran_burst) + burst.skipped.saturating_sub(ran);
    tally.passed += burst.passed;
    tally.failed.extend(burst.failed);
    Ok(tally)
}

fn nextest_profile(workspace: &Path, profile: &str, args: &[String]) -> anyhow::Result<Tally> {
    let junit = junit_path(workspace, profile);
    remove_stale(&junit)?;
    let mut child = Command::new("cargo")
        .current_dir(workspace)
        .args(["nextest", "run", "--profile", profile, "--no-fail-fast", "--cargo-quiet"])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting cargo nextest")?;
    let mut summary = None;
    if let Some(err) = child.stderr.take() {
        for line in std::io::BufReader::new(err).lines() {
            let line = line.context("reading nextest's output")?;
            eprintln!("{line}");
            summary = summary.or_else(|| skipped_in_summary(&line));
        }
    }
    let status = child.wait().context("waiting for cargo nextest")?;
    let mut tally = match std::fs::read_to_string(&junit) {
        Ok(xml) => parse_junit(&xml),
        Err(_) => {
            bail!("cargo nextest ended ({status}) without a report: the build or the test listing failed (above)")
        }
    };
    tally.skipped = summary.unwrap_or(0);
    if !status.success() && tally.failed.is_empty() {
        tally.failed.push(format!("cargo nextest failed ({status}) with no failed test (above)"));
    }
    Ok(tally)
}

/// What the guests reuse from the host's build: nextest's list of its
/// test binaries.
struct Reuse {
    binaries: PathBuf,
}

/// VM tools, and the host's build's test binaries.
fn prepare_vms(workspace: &Path) -> anyhow::Result<(kernels::Vng, Reuse)> {
    let vng = kernels::ensure_vm_tools(workspace)?;
    let dir = workspace.join("target/kernels/nextest");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let reuse = Reuse { binaries: dir.join("binaries.json") };
    eprintln!("kernels: building the test binaries for the VMs (nothing to do after the host suite)");
    // The same build as the host suite's `cargo nextest run`: no rebuild.
    let out = Command::new("cargo")
        .current_dir(workspace)
        .args(["nextest", "list", "--cargo-quiet", "--list-type", "binaries-only", "--message-format", "json"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo nextest list")?;
    if !out.status.success() {
        bail!("building the test binaries failed ({})", out.status);
    }
    std::fs::write(&reuse.binaries, &out.stdout).with_context(|| format!("writing {}", reuse.binaries.display()))?;
    Ok((vng, reuse))
}

/// The test binaries that run in the VMs: what loads the programs into the
/// kernel and checks what they see (every action, exact counts under
/// storms, degraded hooks, the lab).
const VM_BINARIES: &[&str] = &["capture", "refused", "aggregation", "degraded", "lab"];

/// One binary's limit in a VM; the whole VM has `VM_TIMEOUT`.
const BINARY_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The VM tests on `image`, each binary straight from the host's build,
/// one test at a time; the guest's output streams to stderr, prefixed with
/// the kernel.
///
/// Not through nextest: in these emulated VMs every test ran 2 to 3 times
/// slower under it than from its binary (the lab: 300 s and more on 5.10
/// against 90 s, with `ip netns` busy in the kernel; cause not found), and
/// CI's time is bounded. Extra arguments are libtest's (a name filter, say)
/// and go to every binary.
fn vm_suite(
    workspace: &Path,
    vng: &kernels::Vng,
    image: &kernels::Image,
    reuse: &Reuse,
    args: &[String],
    series: Series,
) -> anyhow::Result<Tally> {
    let logs = logs_dir(workspace);
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let dmesg = logs.join(format!("{}.dmesg", image.release));
    let binaries = test_binaries(&reuse.binaries)?;
    let mut steps = String::new();
    for name in VM_BINARIES {
        let bin = binaries
            .get(*name)
            .with_context(|| format!("the test binary observer::{name} is not in the host's build"))?;
        steps.push_str(&format!(
            "echo '{MARK_BIN} {name}'\n\
             timeout {secs} {bin} --test-threads=1 --color never {args} 2>&1\n\
             echo \"{MARK_RC} {name} $?\"\n",
            secs = BINARY_TIMEOUT.as_secs(),
            bin = vm::shell_words(&[bin.display().to_string()]),
            args = vm::shell_words(args),
        ));
    }
    let script = format!(
        "cd {ws}/observer || exit 2\n\
         # Writable in the guest: /tmp (the tests' files), /run (network namespaces).\n\
         # OBSERVER_LAB_JOBS: two lab scenarios at once on emulated CPUs.\n\
         export TMPDIR=/tmp OBSERVER_LAB_JOBS=2 NO_COLOR=1 TERM=dumb\n\
         {steps}\
         dmesg > {dmesg} 2>&1\n",
        ws = vm::shell_words(&[workspace.display().to_string()]),
        dmesg = vm::shell_words(&[dmesg.display().to_string()]),
    );
    let console_log = logs.join(format!("{}.log", image.release));
    let guest = Guest {
        vng,
        image,
        rwdirs: vec![logs.clone()],
        timeout: VM_TIMEOUT,
        console_log: console_log.clone(),
        scratch: workspace.join("target/kernels/tmp"),
    };
    eprintln!("kernels: testing {} ({}) in a VM; console in {}", image.release, series.name(), console_log.display());
    let prefix = format!("{:>5} | ", series.name());
    let mut output = Vec::new();
    let ending = guest.run(&script, |line| {
        eprintln!("{prefix}{line}");
        output.push(line.to_owned());
    })?;
    let mut tally = parse_libtest(&output, VM_BINARIES);
    match ending {
        Ending::Exited(0) => {}
        other => tally.failed.push(format!("{other}")),
    }
    Ok(tally)
}

const MARK_BIN: &str = "@@observer-tests";
const MARK_RC: &str = "@@observer-rc";

/// The test binaries of the host's build by name (`capture`), from
/// nextest's list (`binary-id` `observer::capture`).
fn test_binaries(binaries_json: &Path) -> anyhow::Result<std::collections::BTreeMap<String, PathBuf>> {
    let text =
        std::fs::read_to_string(binaries_json).with_context(|| format!("reading {}", binaries_json.display()))?;
    let list: serde_json::Value = serde_json::from_str(&text).context("nextest's binaries list is not JSON")?;
    Ok(list["rust-binaries"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|b| {
            let name = b["binary-id"].as_str()?.strip_prefix("observer::")?;
            Some((name.to_owned(), PathBuf::from(b["binary-path"].as_str()?)))
        })
        .collect())
}

/// What the binaries printed on the console: libtest's `test NAME ... ok`
/// (or `FAILED`, `ignored`) lines, each binary between our markers. A
/// binary that exited non-zero without naming a failed test (a timeout, a
/// crash) failed as a whole; one whose end marker never came did not finish.
fn parse_libtest(lines: &[String], binaries: &[&str]) -> Tally {
    let mut tally = Tally::default();
    let mut current: Option<String> = None;
    let mut named_failures = 0;
    let mut ended = Vec::new();
    for line in lines {
        let l = line.trim();
        if let Some(name) = l.strip_prefix(MARK_BIN) {
            current = Some(name.trim().to_owned());
            named_failures = 0;
            continue;
        }
        if let Some(rest) = l.strip_prefix(MARK_RC) {
            let mut f = rest.split_whitespace();
            let (name, rc) = (f.next().unwrap_or_default().to_owned(), f.next().unwrap_or_default());
            if rc != "0" && named_failures == 0 {
                let why = if rc == "124" { "timed out".to_owned() } else { format!("exit code {rc}") };
                tally.failed.push(format!("observer::{name} ({why})"));
            }
            ended.push(name);
            current = None;
            continue;
        }
        let Some(bin) = &current else { continue };
        let Some(rest) = l.strip_prefix("test ") else { continue };
        let Some((test, outcome)) = rest.rsplit_once(" ... ") else { continue };
        match outcome {
            "ok" => tally.passed += 1,
            "ignored" => tally.skipped += 1,
            "FAILED" => {
                named_failures += 1;
                tally.failed.push(format!("observer::{bin} {test}"));
            }
            _ => {}
        }
    }
    for b in binaries {
        if !ended.iter().any(|e| e == b) {
            tally.failed.push(format!("observer::{b} (did not finish)"));
        }
    }
    tally
}

fn remove_stale(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing the old report {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The skipped count from nextest's summary line
/// (`Summary [ 117.688s] 7 tests run: 7 passed, 2 skipped`).
fn skipped_in_summary(line: &str) -> Option<usize> {
    let rest = &line[line.find("Summary [")?..];
    let words: Vec<&str> = rest.split_whitespace().collect();
    words.windows(2).find(|w| w[1].trim_end_matches(',') == "skipped").and_then(|w| w[0].parse().ok())
}

/// Passed tests and the names of failed ones from nextest's JUnit report:
/// a `<testcase>` with a `<failure>` or `<error>` failed (a timeout is a
/// failure of type "test timeout"); one with only `<flakyFailure>`s passed
/// on a retry. Test names are Rust paths: only XML's five entities occur.
pub fn parse_junit(xml: &str) -> Tally {
    let mut tally = Tally::default();
    let mut rest = xml;
    while let Some(at) = rest.find("<testcase ") {
        rest = &rest[at..];
        let Some(tag_end) = rest.find('>') else { break };
        let tag = &rest[..tag_end];
        let name = attribute(tag, "name").unwrap_or_default();
        let class = attribute(tag, "classname").unwrap_or_default();
        let body = if tag.ends_with('/') {
            ""
        } else {
            let close = rest.find("</testcase>").unwrap_or(rest.len());
            &rest[tag_end..close]
        };
        if let Some(f) = ["<failure", "<error"].iter().find_map(|t| body.find(t).map(|i| &body[i..])) {
            let timeout =
                attribute(&f[..f.find('>').unwrap_or(f.len())], "type").is_some_and(|t| t.contains("timeout"));
            tally.failed.push(format!("{class} {name}{}", if timeout { " (timed out)" } else { "" }));
        } else {
            tally.passed += 1;
        }
        rest = &rest[tag_end..];
    }
    tally
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let value = &tag[start..start + tag[start..].find('"')?];
    Some(
        value
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_gives_passes_failures_and_timeouts() {
        let xml = r#"<testsuites tests="4"><testsuite name="observer::capture">
            <testcase name="a" classname="observer::capture" time="1"/>
            <testcase name="b" classname="observer::capture" time="1">
                <failure message="thread &apos;b&apos; panicked" type="test failure with exit code 101">x &lt;failure</failure>
                <system-out>test b ... FAILED</system-out>
            </testcase>
            <testcase name="c" classname="observer::capture"><failure type="test timeout"/></testcase>
            <testcase name="d" classname="observer::lab"><flakyFailure type="x"/></testcase>
        </testsuite></testsuites>"#;
        let t = parse_junit(xml);
        assert_eq!(t.passed, 2);
        assert_eq!(t.failed, ["observer::capture b", "observer::capture c (timed out)"]);
    }

    #[test]
    fn the_summary_line_gives_the_skipped_count() {
        assert_eq!(skipped_in_summary("     Summary [ 117.688s] 7 tests run: 7 passed, 2 skipped"), Some(2));
        let failed = "     Summary [   2.009s] 3 tests run: 1 passed, 1 failed, 1 timed out, 0 skipped";
        assert_eq!(skipped_in_summary(failed), Some(0));
        assert_eq!(skipped_in_summary("test result: ok. 1 passed"), None);
    }

    #[test]
    fn libtest_lines_give_passes_failures_and_binaries_that_did_not_end() {
        let lines = [
            "@@observer-tests capture",
            "running 3 tests",
            "test firewall_drop ... ok",
            "test reset_sent ... FAILED",
            "test slow_one has been running for over 60 seconds",
            "test skipped_one ... ignored",
            "@@observer-rc capture 101",
            "@@observer-tests refused",
            "test a ... ok",
            "@@observer-rc refused 124",
            "@@observer-tests lab",
            "test every_lab_scenario ... ok",
        ]
        .map(String::from);
        let t = parse_libtest(&lines, &["capture", "refused", "lab"]);
        assert_eq!((t.passed, t.skipped), (3, 1));
        assert_eq!(
            t.failed,
            ["observer::capture reset_sent", "observer::refused (timed out)", "observer::lab (did not finish)"]
        );
    }
}
