//! What the running kernel provides: tracefs layouts, BTF offsets, enum
//! tables. Everything the programs need is discovered here, never assumed.

pub mod btf;
pub mod hook;
pub mod kallsyms;
pub mod layout;
pub mod sources;
pub mod tracefs;

/// The cgroup v2 root: unified at /sys/fs/cgroup, or the hybrid layout's
/// /sys/fs/cgroup/unified.
pub fn cgroup_root() -> std::path::PathBuf {
    for candidate in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if std::path::Path::new(candidate).join("cgroup.controllers").exists() {
            return candidate.into();
        }
    }
    "/sys/fs/cgroup/unified".into()
}
