//! The TCP sysctls that explain queue overflows. They are per network
//! namespace: /proc/sys/net resolves against the reading thread's
//! namespace, so these are read on a thread inside it.

use std::collections::BTreeMap;

/// The sysctls a diagnosis may cite, by their `sysctl` names.
pub const NAMES: [&str; 4] =
    ["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_syncookies", "net.ipv4.tcp_synack_retries"];

/// Values of [`NAMES`] in the calling thread's namespace; unreadable ones are left out.
pub fn read() -> BTreeMap<String, i64> {
    NAMES
        .iter()
        .filter_map(|name| {
            let path = format!("/proc/sys/{}", name.replace('.', "/"));
            let value = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
            Some(((*name).to_owned(), value))
        })
        .collect()
}
