//! The nftables rule that drops or rejects a port, read from the live
//! ruleset of a namespace (`nft -j list ruleset` for the structure,
//! `nft -a list ruleset` for the rule as the admin wrote it), each run with
//! a deadline (`command`).
//! iptables-nft rules are nftables rules and show up the same way.
//!
//! The `nft` JSON schema is parsed with serde_json directly: matching needs
//! only match expressions on the destination port and source address and
//! the verdict, and a typed schema crate would not evaluate them either.

use std::{collections::HashMap, net::IpAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A rule (or a chain policy) that explains a drop or a reject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallRule {
    pub family: String,
    pub table: String,
    pub chain: String,
    /// The chain's hook (`input`, `prerouting`, ...), empty for a regular chain.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hook: String,
    /// Rule handle; absent when the chain's policy is what drops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
    /// The rule as `nft list ruleset` prints it, or `policy drop`.
    pub rule: String,
    /// `drop` or `reject`.
    pub verdict: String,
}

/// A parsed ruleset.
#[derive(Debug, Default)]
pub struct Ruleset {
    rules: Vec<Rule>,
    policies: Vec<FirewallRule>,
}

#[derive(Debug)]
struct Rule {
    at: FirewallRule,
    /// The destination ports the rule names; `None`: it has no port condition.
    dport: Option<Vec<Value>>,
    dport_negated: bool,
    saddr: Option<Vec<Value>>,
}

/// Reads the live ruleset of the namespace of `netns` (a namespace file;
/// `None`: the caller's own) with the `nft` binary; each of its two runs
/// gets `timeout`.
pub async fn load(nft: &str, netns: Option<&Path>, timeout: Duration) -> Result<Ruleset, String> {
    let (json, text) = tokio::join!(
        super::command::output(nft, &["-j", "list", "ruleset"], netns, timeout),
        super::command::output(nft, &["-a", "list", "ruleset"], netns, timeout),
    );
    Ruleset::parse(&json?, &text?)
}

/// `load` for the CLI (`observer why`), which has no runtime of its own; in
/// the calling thread's namespace when `netns` is `None`.
pub fn load_blocking(nft: &str, netns: Option<&Path>, timeout: Duration) -> Result<Ruleset, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime for {nft}: {e}"))?;
    rt.block_on(load(nft, netns, timeout))
}

impl Ruleset {
    pub fn parse(json: &str, text: &str) -> Result<Ruleset, String> {
        let doc: Value = serde_json::from_str(json).map_err(|e| format!("nft JSON: {e}"))?;
        let items = doc["nftables"].as_array().cloned().unwrap_or_default();
        let texts = rule_texts(text);
        let mut sets: HashMap<(String, String, String), Vec<Value>> = HashMap::new();
        let mut hooks: HashMap<(String, String, String), String> = HashMap::new();
        let mut out = Ruleset::default();
        for item in &items {
            if let Some(s) = item.get("set") {
                let elems = s["elem"].as_array().cloned().unwrap_or_default();
                sets.insert((str_of(&s["family"]), str_of(&s["table"]), str_of(&s["name"])), elems);
            }
            if let Some(c) = item.get("chain") {
                let key = (str_of(&c["family"]), str_of(&c["table"]), str_of(&c["name"]));
                let hook = str_of(&c["hook"]);
                if str_of(&c["policy"]) == "drop" {
                    out.policies.push(FirewallRule {
                        family: key.0.clone(),
                        table: key.1.clone(),
                        chain: key.2.clone(),
                        hook: hook.clone(),
                        handle: None,
                        rule: "policy drop".to_owned(),
                        verdict: "drop".to_owned(),
                    });
                }
                hooks.insert(key, hook);
            }
        }
        for item in &items {
            let Some(r) = item.get("rule") else { continue };
            let (family, table, chain) = (str_of(&r["family"]), str_of(&r["table"]), str_of(&r["chain"]));
            let exprs = r["expr"].as_array().cloned().unwrap_or_default();
            let verdict = exprs
                .iter()
                .find_map(|e| ["drop", "reject"].into_iter().find(|v| e.get(*v).is_some()).map(str::to_owned));
            let Some(verdict) = verdict else { continue };
            let handle = r["handle"].as_u64();
            let mut rule = Rule {
                at: FirewallRule {
                    hook: hooks.get(&(family.clone(), table.clone(), chain.clone())).cloned().unwrap_or_default(),
                    rule: handle
                        .and_then(|h| texts.get(&(table.clone(), chain.clone(), h)).cloned())
                        .unwrap_or_default(),
                    family: family.clone(),
                    table: table.clone(),
                    chain,
                    handle,
                    verdict,
                },
                dport: None,
                dport_negated: false,
                saddr: None,
            };
            for m in exprs.iter().filter_map(|e| e.get("match")) {
                let field = str_of(&m["left"]["payload"]["field"]);
                let right = expand(&m["right"], &sets, &family, &table);
                match field.as_str() {
                    "dport" => {
                        rule.dport_negated = str_of(&m["op"]) == "!=";
                        rule.dport = Some(right);
                    }
                    "saddr" => rule.saddr = Some(right),
                    _ => {}
                }
            }
            out.rules.push(rule);
        }
        Ok(out)
    }

    /// The rule most likely to have dropped (or rejected) a SYN from
    /// `client` to `port`: one with that verdict that names the port
    /// beats one with no port condition; then ruleset order. A dropping
    /// chain policy is the last resort for drops.
    pub fn matching(&self, port: u16, client: Option<IpAddr>, verdict: &str) -> Option<FirewallRule> {
        let candidates = self.rules.iter().filter(|r| r.at.verdict == verdict).filter(|r| {
            let port_ok = match &r.dport {
                None => true,
                Some(vals) => vals.iter().any(|v| port_in(v, port)) != r.dport_negated,
            };
            let addr_ok = match (&r.saddr, client) {
                (Some(vals), Some(ip)) => vals.iter().any(|v| addr_in(v, ip) != Some(false)),
                _ => true,
            };
            port_ok && addr_ok
        });
        let best = candidates.min_by_key(|r| r.dport.is_none());
        best.map(|r| r.at.clone()).or_else(|| {
            (verdict == "drop").then(|| self.policies.iter().find(|p| p.hook == "input")).flatten().cloned()
        })
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// A match's right-hand side as a list of values, named sets resolved.
fn expand(v: &Value, sets: &HashMap<(String, String, String), Vec<Value>>, family: &str, table: &str) -> Vec<Value> {
    if let Some(name) = v.as_str().and_then(|s| s.strip_prefix('@')) {
        return sets.get(&(family.to_owned(), table.to_owned(), name.to_owned())).cloned().unwrap_or_default();
    }
    if let Some(items) = v.get("set").and_then(Value::as_array) {
        return items.clone();
    }
    vec![v.clone()]
}

fn port_in(v: &Value, port: u16) -> bool {
    if let Some(n) = v.as_u64() {
        return n == port as u64;
    }
    if let Some([lo, hi]) = v.get("range").and_then(Value::as_array).map(Vec::as_slice) {
        return (lo.as_u64().unwrap_or(u64::MAX)..=hi.as_u64().unwrap_or(0)).contains(&(port as u64));
    }
    // Set elements may carry counters or timeouts: {"elem": {"val": 22, ...}}.
    v.get("elem").map(|e| port_in(&e["val"], port)).unwrap_or(false)
}

/// `None`: a condition this reader does not evaluate (counts as a match).
fn addr_in(v: &Value, ip: IpAddr) -> Option<bool> {
    if let Some(s) = v.as_str() {
        return s.parse::<IpAddr>().ok().map(|a| a == ip);
    }
    if let Some(p) = v.get("prefix") {
        let addr: IpAddr = p["addr"].as_str()?.parse().ok()?;
        let len = p["len"].as_u64()? as u32;
        return Some(in_prefix(addr, len, ip));
    }
    None
}

fn in_prefix(net: IpAddr, len: u32, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len.min(32)) };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len.min(128)) };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// `nft -a list ruleset` text by (table, chain, handle).
fn rule_texts(text: &str) -> HashMap<(String, String, u64), String> {
    let mut out = HashMap::new();
    let (mut table, mut chain) = (String::new(), String::new());
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["table", _family, name, ..] => table = (*name).to_owned(),
            ["chain", name, ..] => chain = (*name).to_owned(),
            _ => {
                if let Some((rule, handle)) = line.rsplit_once(" # handle ") {
                    if let Ok(h) = handle.trim().parse() {
                        out.insert((table.clone(), chain.clone(), h), rule.trim().to_owned());
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
 {"table":{"family":"inet","name":"filter","handle":1}},
 {"set":{"family":"inet","name":"blocked","table":"filter","type":"inet_service","handle":2,"elem":[2222,3333]}},
 {"chain":{"family":"inet","table":"filter","name":"input","handle":1,"type":"filter","hook":"input","prio":0,"policy":"drop"}},
 {"rule":{"family":"inet","table":"filter","chain":"input","handle":3,"expr":[
   {"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":22}},
   {"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"10.0.0.0","len":8}}}},
   {"counter":{"packets":0,"bytes":0}},{"drop":null}]}},
 {"rule":{"family":"inet","table":"filter","chain":"input","handle":5,"expr":[
   {"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":{"set":[80,443]}}},
   {"reject":{"type":"tcp reset"}}]}},
 {"rule":{"family":"inet","table":"filter","chain":"input","handle":6,"expr":[
   {"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":{"range":[1000,2000]}}},
   {"reject":{"type":"icmp","expr":"host-unreachable"}}]}},
 {"rule":{"family":"inet","table":"filter","chain":"input","handle":7,"expr":[
   {"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":"@blocked"}},{"drop":null}]}}
]}"#;

    const TEXT: &str = "table inet filter { # handle 1
	set blocked { # handle 2
		type inet_service
		elements = { 2222, 3333 }
	}

	chain input { # handle 1
		type filter hook input priority filter; policy drop;
		tcp dport 22 ip saddr 10.0.0.0/8 counter packets 0 bytes 0 drop # handle 3
		tcp dport { 80, 443 } reject with tcp reset # handle 5
		tcp dport 1000-2000 reject with icmp host-unreachable # handle 6
		tcp dport @blocked drop # handle 7
	}
}";

    fn rs() -> Ruleset {
        Ruleset::parse(JSON, TEXT).unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn finds_the_rule_by_port_set_range_and_named_set() {
        let r = rs().matching(443, ip("192.0.2.1"), "reject").unwrap();
        assert_eq!((r.handle, r.rule.as_str()), (Some(5), "tcp dport { 80, 443 } reject with tcp reset"));
        assert_eq!((r.table.as_str(), r.chain.as_str(), r.hook.as_str()), ("filter", "input", "input"));
        assert_eq!(rs().matching(1500, None, "reject").unwrap().handle, Some(6));
        assert_eq!(rs().matching(3333, None, "drop").unwrap().handle, Some(7));
    }

    #[test]
    fn source_prefix_is_evaluated_and_policy_is_the_fallback() {
        assert_eq!(rs().matching(22, ip("10.1.2.3"), "drop").unwrap().handle, Some(3));
        let p = rs().matching(22, ip("192.0.2.1"), "drop").unwrap();
        assert_eq!((p.handle, p.rule.as_str()), (None, "policy drop"));
        assert!(rs().matching(9999, None, "reject").is_none());
    }
}
