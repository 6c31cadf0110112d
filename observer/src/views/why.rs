//! `observer why PORT`: everything the host knows about one port, now and
//! recently, on one screen: the listeners and their queues, the firewall
//! rules that drop or reject it, the sysctls that cap its queues, the
//! failures in the history, and the diagnoses with their advice.

use std::{
    collections::{BTreeMap, HashSet},
    io::Write,
    time::{Duration, SystemTime},
};

use crate::{
    diagnose::explain::endpoint,
    enrich::{firewall, listeners, owners, sysctl},
    history::Reader,
    netns::{self, Directory},
};

pub struct WhyArgs {
    pub port: u16,
    pub since: Duration,
    /// The namespace to look into; the caller's own when `None`.
    pub netns: Option<u32>,
    pub nft: String,
    /// Deadline of each nft run.
    pub nft_timeout: Duration,
}

/// The live part, read inside the namespace.
struct Live {
    listeners: Result<Vec<listeners::Listener>, String>,
    sysctls: BTreeMap<String, i64>,
    rules: Result<Vec<firewall::FirewallRule>, String>,
}

fn live(args: &WhyArgs) -> Result<Live, String> {
    let port = args.port;
    let nft = args.nft.clone();
    let nft_timeout = args.nft_timeout;
    let read = move || Live {
        listeners: listeners::dump().map_err(|e| e.to_string()),
        sysctls: sysctl::read(),
        rules: firewall::load_blocking(&nft, None, nft_timeout).map(|rs| {
            ["drop", "reject"]
                .iter()
                .filter_map(|v| rs.matching(port, None, v))
                .filter(|r| r.handle.is_some())
                .collect()
        }),
    };
    match args.netns {
        None => Ok(read()),
        Some(ns) => netns::run_in(&mut Directory::default(), ns, read).map_err(|e| e.to_string()),
    }
}

pub fn show(args: &WhyArgs, reader: Result<Reader, String>, out: &mut impl Write) -> anyhow::Result<()> {
    let port = args.port;
    let now = SystemTime::now();
    let ns_txt = args.netns.map(|n| format!("netns {n}")).unwrap_or_else(|| "this namespace".to_owned());
    writeln!(out, "Port {port}: now ({ns_txt}) and in the last {}\n", humantime::format_duration(args.since))?;
    match live(args) {
        Err(e) => writeln!(out, "Live state: unavailable ({e})")?,
        Ok(l) => {
            writeln!(out, "Listeners:")?;
            match l.listeners {
                Err(e) => writeln!(out, "  unavailable: {e}")?,
                Ok(all) => {
                    let mine: Vec<_> = all.iter().filter(|x| x.port == port).collect();
                    let owners = owners::find(&mine.iter().map(|x| x.inode as u64).collect::<HashSet<_>>());
                    if mine.is_empty() {
                        writeln!(out, "  nothing listens on port {port}")?;
                    }
                    for x in mine {
                        let who = owners
                            .get(&(x.inode as u64))
                            .map(|o| format!("{} (pid {})", o.name, o.pid))
                            .unwrap_or_else(|| "owner unknown (needs root to see other users' processes)".into());
                        let v6 = if x.v6only { " v6only" } else { "" };
                        writeln!(
                            out,
                            "  {:<24} backlog {:<5} queue {:<5}{v6} {who}",
                            endpoint(x.address, port),
                            x.backlog,
                            x.queue
                        )?;
                    }
                }
            }
            let limits: Vec<String> = l.sysctls.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            writeln!(out, "Limits:  {}", limits.join(", "))?;
            writeln!(out, "Firewall (nftables):")?;
            match l.rules {
                Err(e) => writeln!(out, "  unavailable: {e}")?,
                Ok(rules) if rules.is_empty() => writeln!(out, "  no rule drops or rejects port {port}")?,
                Ok(rules) => {
                    for r in rules {
                        writeln!(
                            out,
                            "  {} {} chain {}: {} (handle {})",
                            r.family,
                            r.table,
                            r.chain,
                            r.rule,
                            r.handle.unwrap_or_default()
                        )?;
                    }
                }
            }
        }
    }
    writeln!(out)?;
    let reader = match reader {
        Ok(r) => r,
        Err(e) => {
            writeln!(out, "History: unavailable ({e})")?;
            return Ok(());
        }
    };
    let since = now - args.since;
    writeln!(out, "Failures (from the history):")?;
    let actions = reader.actions_for_port(port, since)?;
    if actions.is_empty() {
        writeln!(out, "  none")?;
    }
    let mut by_ns: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (ns, action, n) in actions {
        by_ns.entry(ns).or_default().push(format!("{action} {n}"));
    }
    for (ns, list) in by_ns {
        writeln!(out, "  netns {ns}: {}", list.join(", "))?;
    }
    writeln!(out, "Diagnoses:")?;
    let diagnoses = reader.diagnoses(since, Some(port))?;
    if diagnoses.is_empty() {
        writeln!(out, "  none")?;
    }
    for r in diagnoses {
        let d = &r.diagnosis;
        let status = d.status.as_str();
        writeln!(
            out,
            "  [{status}] {} (id {}, last {})",
            d.kind,
            d.id,
            humantime::format_rfc3339_seconds(d.last_seen)
        )?;
        writeln!(out, "    {}", d.summary)?;
        for a in &d.advice {
            writeln!(out, "    - {a}")?;
        }
    }
    Ok(())
}
