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
/// One VM kernel takes about 16 minutes; CI's limit is 90 minutes in all.
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

/// What the guests reuse from the host's build.
struct Reuse {
    binaries: PathBuf,
    cargo_metadata: PathBuf,
    nextest: PathBuf,
}

/// VM tools, and the host's build described for nextest in the guests.
fn prepare_vms(workspace: &Path) -> anyhow::Result<(kernels::Vng, Reuse)> {
    let vng = kernels::ensure_vm_tools(workspace)?;
    let dir = workspace.join("target/kernels/nextest");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let reuse = Reuse {
        binaries: dir.join("binaries.json"),
        cargo_metadata: dir.join("cargo-metadata.json"),
        nextest: which("cargo-nextest").context("cargo-nextest is not on PATH (cargo xtask setup installs it)")?,
    };
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
    let out = Command::new("cargo")
        .current_dir(workspace)
        .args(["metadata", "--format-version", "1"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed ({})", out.status);
    }
    std::fs::write(&reuse.cargo_metadata, &out.stdout)
        .with_context(|| format!("writing {}", reuse.cargo_metadata.display()))?;
    Ok((vng, reuse))
}

/// The `vm` profile's tests in a VM on `image`; the guest's output streams
/// to stderr, prefixed with the kernel.
fn vm_suite(
    workspace: &Path,
    vng: &kernels::Vng,
    image: &kernels::Image,
    reuse: &Reuse,
    args: &[String],
    series: Series,
) -> anyhow::Result<Tally> {
    let logs = logs_dir(workspace);
    let store = workspace.join("target/nextest");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
    let junit = junit_path(workspace, "vm");
    remove_stale(&junit)?;
    let dmesg = logs.join(format!("{}.dmesg", image.release));
    // The lab runs outside nextest, straight from its test binary: under
    // nextest in these VMs it took more than three times as long (300 s
    // and more on 5.10 against 90 s; measured, cause not found), and it is
    // the one test whose timing (diagnosis within 5 s) is checked.
    let lab = if args.is_empty() { lab_binary(&reuse.binaries)? } else { None };
    let (lab_log, lab_rc) =
        (logs.join(format!("{}.lab.log", image.release)), logs.join(format!("{}.lab.rc", image.release)));
    remove_stale(&lab_rc)?;
    let lab_step = match &lab {
        Some(bin) => format!(
            "(cd observer && {bin} --exact {test} --test-threads=1) > {log} 2>&1\n\
             echo $? > {rc}\n",
            bin = vm::shell_words(&[bin.display().to_string()]),
            test = LAB_TEST,
            log = vm::shell_words(&[lab_log.display().to_string()]),
            rc = vm::shell_words(&[lab_rc.display().to_string()]),
        ),
        None => String::new(),
    };
    let script = format!(
        "cd {ws} || exit 2\n\
         # Writable in the guest: /tmp (the tests' files), /run (network namespaces).\n\
         # OBSERVER_LAB_JOBS: two lab scenarios at once on emulated CPUs.\n\
         export TMPDIR=/tmp OBSERVER_LAB_JOBS=2 NO_COLOR=1 TERM=dumb\n\
         {nextest} nextest run --profile vm --no-fail-fast --color never --hide-progress-bar --no-input-handler \
         --binaries-metadata {bin} --cargo-metadata {meta} {args}\n\
         rc=$?\n\
         {lab_step}\
         dmesg > {dmesg} 2>&1\n\
         exit $rc\n",
        ws = vm::shell_words(&[workspace.display().to_string()]),
        nextest = vm::shell_words(&[reuse.nextest.display().to_string()]),
        bin = vm::shell_words(&[reuse.binaries.display().to_string()]),
        meta = vm::shell_words(&[reuse.cargo_metadata.display().to_string()]),
        args = vm::shell_words(args),
        dmesg = vm::shell_words(&[dmesg.display().to_string()]),
    );
    let console_log = logs.join(format!("{}.log", image.release));
    let guest = Guest {
        vng,
        image,
        rwdirs: vec![store, logs.clone()],
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
    let report = logs.join(format!("{}.junit.xml", image.release));
    let mut tally = match std::fs::read_to_string(&junit) {
        Ok(xml) => {
            let _ = std::fs::write(&report, &xml);
            parse_junit(&xml)
        }
        // No report: what the console showed of the tests that finished.
        Err(_) => partial_from_console(&output),
    };
    tally.skipped = output.iter().find_map(|l| skipped_in_summary(l)).unwrap_or(0);
    if lab.is_some() {
        let name = format!("observer::lab {LAB_TEST}");
        match std::fs::read_to_string(&lab_rc).map(|rc| rc.trim().to_owned()) {
            Ok(rc) if rc == "0" => {
                tally.passed += 1;
                eprintln!("{prefix}        PASS (outside nextest) {name}");
            }
            Ok(rc) => tally.failed.push(format!("{name} (exit code {rc}; output in {})", lab_log.display())),
            Err(_) => tally.failed.push(format!("{name} (did not finish)")),
        }
    }
    match ending {
        Ending::Exited(0) => {}
        // nextest's exit code when tests failed: they are named already.
        Ending::Exited(_) if !tally.failed.is_empty() => {}
        other => tally.failed.push(format!("{other} (nextest did not finish its run)")),
    }
    Ok(tally)
}

/// The lab's test (observer/tests/lab.rs), run outside nextest in the VMs.
const LAB_TEST: &str = "every_lab_scenario_is_diagnosed_right_and_in_time";

/// The lab test binary, from nextest's list of the host's build.
fn lab_binary(binaries_json: &Path) -> anyhow::Result<Option<PathBuf>> {
    let text =
        std::fs::read_to_string(binaries_json).with_context(|| format!("reading {}", binaries_json.display()))?;
    let list: serde_json::Value = serde_json::from_str(&text).context("nextest's binaries list is not JSON")?;
    Ok(list["rust-binaries"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .find(|b| b["binary-id"] == "observer::lab")
        .and_then(|b| b["binary-path"].as_str())
        .map(PathBuf::from))
}

fn remove_stale(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing the old report {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
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

/// Without a JUnit report (the VM died or timed out), the tests nextest
/// reported as finished on the console before its summary:
/// `        PASS [  12.900s] (6/7) observer::refused the_log_is_complete`.
fn partial_from_console(lines: &[String]) -> Tally {
    let mut tally = Tally::default();
    for line in lines {
        let l = line.trim_start();
        if l.starts_with("Summary [") {
            break;
        }
        let Some((status, rest)) = l.split_once(" [") else { continue };
        let Some((_, test)) = rest.split_once("] ") else { continue };
        let test = match test.split_once(") ") {
            Some((counter, t)) if counter.starts_with('(') => t,
            _ => test,
        };
        match status {
            "PASS" => tally.passed += 1,
            "FAIL" | "TIMEOUT" | "ABORT" | "LEAK-FAIL" => tally.failed.push(format!("{test} ({status})")),
            s if s.starts_with("SIG") => tally.failed.push(format!("{test} ({status})")),
            _ => {}
        }
    }
    tally
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
    fn the_console_gives_what_finished_before_a_vm_died() {
        let lines = [
            "        PASS [  12.900s] (1/7) observer::refused the_log",
            "        FAIL [   0.082s] (2/7) observer::capture firewall_drop",
            "     TIMEOUT [ 300.003s] (3/7) observer::lab every_lab_scenario",
            "     Summary [ 117.688s] 7 tests run: 1 passed, 2 failed",
            "        FAIL [   0.082s] (2/7) observer::capture firewall_drop",
        ]
        .map(String::from);
        let t = partial_from_console(&lines);
        assert_eq!(t.passed, 1);
        assert_eq!(t.failed, ["observer::capture firewall_drop (FAIL)", "observer::lab every_lab_scenario (TIMEOUT)"]);
    }
}
