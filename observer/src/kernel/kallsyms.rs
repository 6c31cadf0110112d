//! Where kernel functions' text lies, from /proc/kallsyms.
//!
//! Why: before drop reasons (5.17), kfree_skb tells only *where* a packet
//! was freed (`location`, a return address into the caller). Knowing the
//! text range of tcp_v4_rcv or nf_hook_slow turns that address back into
//! the cause the newer kernels name (NO_SOCKET, NETFILTER_DROP). A range
//! ends where the next symbol begins: kallsyms lists every function, so
//! nothing else lies between.
//!
//! Addresses are hidden (all zero) to readers without CAP_SYSLOG under the
//! default kptr_restrict; that is an error here, not an empty range.

use std::{collections::HashMap, path::Path};

use observer_common::config::TextRange;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KallsymsError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0} hides kernel addresses (kptr_restrict; the daemon needs CAP_SYSLOG)")]
    Hidden(String),
    #[error("kernel function {0} is not in {1}")]
    Missing(String, String),
}

/// Text ranges of some kernel functions.
pub struct Functions {
    ranges: HashMap<String, TextRange>,
    source: String,
}

impl Functions {
    /// Reads the ranges of `names` (the first symbol of each name: a static
    /// function can appear more than once; the ones we look up do not).
    pub fn read(path: &Path, names: &[&str]) -> Result<Functions, KallsymsError> {
        let text = std::fs::read_to_string(path).map_err(|e| KallsymsError::Read(path.display().to_string(), e))?;
        Self::parse(&text, names, &path.display().to_string())
    }

    pub fn parse(text: &str, names: &[&str], source: &str) -> Result<Functions, KallsymsError> {
        let symbols = || {
            text.lines().filter_map(|line| {
                let mut parts = line.split_whitespace();
                let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
                let _kind = parts.next()?;
                Some((addr, parts.next()?))
            })
        };
        let mut starts: HashMap<&str, u64> = HashMap::new();
        let mut any_address = false;
        for (addr, name) in symbols() {
            any_address |= addr != 0;
            if names.contains(&name) {
                starts.entry(name).or_insert(addr);
            }
        }
        if !any_address {
            return Err(KallsymsError::Hidden(source.to_owned()));
        }
        // Each range ends at the lowest symbol address above its start.
        let mut ends: HashMap<&str, u64> = starts.keys().map(|n| (*n, u64::MAX)).collect();
        for (addr, _) in symbols() {
            for (name, start) in &starts {
                if addr > *start {
                    if let Some(end) = ends.get_mut(name) {
                        *end = (*end).min(addr);
                    }
                }
            }
        }
        let ranges = starts
            .iter()
            .map(|(name, start)| {
                let end = ends.get(name).copied().unwrap_or(*start);
                ((*name).to_owned(), TextRange { start: *start, end })
            })
            .collect();
        Ok(Functions { ranges, source: source.to_owned() })
    }

    pub fn range(&self, name: &str) -> Result<TextRange, KallsymsError> {
        self.ranges.get(name).copied().ok_or_else(|| KallsymsError::Missing(name.to_owned(), self.source.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff8c1aec00 T nf_hook_slow
ffffffff8c1aed10 T nf_hook_slow_list
ffffffff8c1e9a60 T tcp_v4_rcv
ffffffff8c1ea900 t tcp_v4_fill_cb
ffffffff8c28e000 T tcp_v6_rcv\t[ipv6]
ffffffff8c28f000 t tcp_v6_early_demux\t[ipv6]
";

    #[test]
    fn a_range_ends_at_the_next_symbol() {
        let f = Functions::parse(SAMPLE, &["nf_hook_slow", "tcp_v4_rcv", "tcp_v6_rcv"], "test").unwrap();
        assert_eq!(f.range("nf_hook_slow").unwrap(), TextRange { start: 0xffffffff8c1aec00, end: 0xffffffff8c1aed10 });
        assert_eq!(f.range("tcp_v4_rcv").unwrap(), TextRange { start: 0xffffffff8c1e9a60, end: 0xffffffff8c1ea900 });
        assert_eq!(f.range("tcp_v6_rcv").unwrap().end, 0xffffffff8c28f000);
        assert!(f.range("tcp_v4_rcv").unwrap().contains(0xffffffff8c1e9b00));
        assert!(!f.range("tcp_v4_rcv").unwrap().contains(0xffffffff8c1ea900));
    }

    #[test]
    fn hidden_addresses_and_missing_functions_are_errors() {
        // What a reader without CAP_SYSLOG sees: every address zero.
        let hidden: String = SAMPLE.lines().map(|l| format!("0000000000000000{}\n", &l[16..])).collect();
        assert!(matches!(Functions::parse(&hidden, &["tcp_v4_rcv"], "t"), Err(KallsymsError::Hidden(_))));
        let f = Functions::parse(SAMPLE, &["tcp_v4_rcv"], "t").unwrap();
        assert!(matches!(f.range("nf_hook_slow"), Err(KallsymsError::Missing(..))));
    }
}
