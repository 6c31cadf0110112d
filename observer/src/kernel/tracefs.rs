//! tracefs: mount it when absent, and parse tracepoint format files.
//!
//! A format file gives each field's offset and size, and its `print fmt`
//! carries the kernel's own name tables for enums (`__print_symbolic`), which
//! is where reason names and numbers come from on this kernel.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::config::KernelPaths;

#[derive(Debug, Error)]
pub enum TracefsError {
    #[error("tracepoint {0} not found under {1}")]
    Missing(String, PathBuf),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("tracepoint {tracepoint}: field `{field}` is missing")]
    Field { tracepoint: String, field: String },
    #[error("tracepoint {tracepoint}: field `{field}` has size {got}, expected {expected}")]
    FieldSize { tracepoint: String, field: String, got: usize, expected: usize },
    #[error("tracepoint {tracepoint}: offset of `{field}` ({offset}) does not fit the layout")]
    Offset { tracepoint: String, field: String, offset: usize },
    #[error("mounting tracefs at {0}: {1}")]
    Mount(PathBuf, String),
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub decl: String,
    pub offset: usize,
    pub size: usize,
}

/// A parsed format file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub fields: HashMap<String, Field>,
    /// The `__print_symbolic` tables in order of appearance: value -> name.
    pub symbols: Vec<Vec<(u64, String)>>,
}

impl Format {
    pub fn parse(text: &str) -> Format {
        let mut format = Format::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix("name:") {
                format.name = name.trim().to_owned();
            } else if let Some(rest) = line.strip_prefix("field:") {
                if let Some((name, field)) = parse_field(rest) {
                    format.fields.insert(name, field);
                }
            } else if let Some(fmt) = line.strip_prefix("print fmt:") {
                format.symbols = parse_symbol_tables(fmt);
            }
        }
        format
    }

    /// The offset of `field` as a u16, checking its size when given.
    pub fn offset(&self, field: &str, size: Option<usize>) -> Result<u16, TracefsError> {
        let f = self
            .fields
            .get(field)
            .ok_or_else(|| TracefsError::Field { tracepoint: self.name.clone(), field: field.to_owned() })?;
        if let Some(expected) = size {
            if f.size != expected {
                return Err(TracefsError::FieldSize {
                    tracepoint: self.name.clone(),
                    field: field.to_owned(),
                    got: f.size,
                    expected,
                });
            }
        }
        u16::try_from(f.offset).ok().filter(|o| *o != observer_common::config::UNSET).ok_or_else(|| {
            TracefsError::Offset { tracepoint: self.name.clone(), field: field.to_owned(), offset: f.offset }
        })
    }

    /// The symbol table that contains `probe` as a name (e.g. "NO_SOCKET").
    pub fn table_with(&self, probe: &str) -> Option<HashMap<u64, String>> {
        self.symbols.iter().find(|t| t.iter().any(|(_, n)| n == probe)).map(|t| t.iter().cloned().collect())
    }
}

/// `const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;`
fn parse_field(rest: &str) -> Option<(String, Field)> {
    let mut parts = rest.split(';').map(str::trim);
    let decl = parts.next()?.to_owned();
    let mut offset = None;
    let mut size = None;
    for p in parts {
        if let Some(v) = p.strip_prefix("offset:") {
            offset = v.parse().ok();
        } else if let Some(v) = p.strip_prefix("size:") {
            size = v.parse().ok();
        }
    }
    // The name is the last identifier of the declaration, before any `[N]`.
    let name_part = decl.split('[').next()?.trim_end();
    let name = name_part.rsplit(|c: char| c.is_whitespace() || c == '*').next()?.to_owned();
    Some((name, Field { decl, offset: offset?, size: size? }))
}

/// Finds every `__print_symbolic(..., { 1, "A" }, { 2, "B" })` table. Numeric
/// keys only: tables keyed by kernel macro names (TCP_ESTABLISHED) are
/// returned with the names resolved from `known` when possible.
fn parse_symbol_tables(fmt: &str) -> Vec<Vec<(u64, String)>> {
    let mut tables = Vec::new();
    let mut rest = fmt;
    while let Some(start) = rest.find("__print_symbolic(") {
        rest = &rest[start + "__print_symbolic(".len()..];
        let mut depth = 1usize;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let body = &rest[..end];
        let mut table = Vec::new();
        for entry in body.split('{').skip(1) {
            let entry = entry.split('}').next().unwrap_or_default();
            let Some((key, name)) = entry.split_once(',') else { continue };
            let name = name.trim().trim_matches('"').to_owned();
            let key = key.trim();
            let value = if let Some(hex) = key.strip_prefix("0x") {
                u64::from_str_radix(hex, 16).ok()
            } else {
                key.parse::<u64>().ok().or_else(|| tcp_state_value(key))
            };
            if let Some(v) = value {
                table.push((v, name));
            }
        }
        if !table.is_empty() {
            tables.push(table);
        }
        rest = &rest[end..];
    }
    tables
}

/// TCP states appear in print fmts as macro names, not numbers. Their values
/// are part of the kernel ABI (include/net/tcp_states.h, also exposed through
/// sock_diag), unlike the reason enums, which change between releases.
fn tcp_state_value(name: &str) -> Option<u64> {
    const STATES: [&str; 13] = [
        "",
        "TCP_ESTABLISHED",
        "TCP_SYN_SENT",
        "TCP_SYN_RECV",
        "TCP_FIN_WAIT1",
        "TCP_FIN_WAIT2",
        "TCP_TIME_WAIT",
        "TCP_CLOSE",
        "TCP_CLOSE_WAIT",
        "TCP_LAST_ACK",
        "TCP_LISTEN",
        "TCP_CLOSING",
        "TCP_NEW_SYN_RECV",
    ];
    STATES.iter().position(|s| !s.is_empty() && *s == name).map(|p| p as u64)
}

/// Access to a tracefs tree.
#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    pub fn new(root: impl Into<PathBuf>) -> Tracefs {
        Tracefs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Mounts tracefs at the default place when it is not mounted yet. Only
    /// the real root is mounted; a custom root (tests) is taken as given.
    pub fn ensure_mounted(&self) -> Result<bool, TracefsError> {
        if self.root != Path::new(KernelPaths::TRACEFS) || self.root.join("events").is_dir() {
            return Ok(false);
        }
        nix::mount::mount(
            Some("tracefs"),
            &self.root,
            Some("tracefs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| TracefsError::Mount(self.root.clone(), e.desc().to_owned()))?;
        Ok(true)
    }

    pub fn format(&self, category: &str, name: &str) -> Result<Format, TracefsError> {
        let path = self.root.join("events").join(category).join(name).join("format");
        if !path.exists() {
            return Err(TracefsError::Missing(format!("{category}:{name}"), self.root.clone()));
        }
        let text = fs::read_to_string(&path).map_err(|source| TracefsError::Read { path, source })?;
        Ok(Format::parse(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_RESET: &str = r#"name: tcp_send_reset
ID: 2280
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:const void * skbaddr;	offset:8;	size:8;	signed:0;
	field:const void * skaddr;	offset:16;	size:8;	signed:0;
	field:int state;	offset:24;	size:4;	signed:1;
	field:enum sk_rst_reason reason;	offset:28;	size:4;	signed:0;
	field:__u8 saddr[28];	offset:32;	size:28;	signed:0;
	field:__u8 daddr[28];	offset:60;	size:28;	signed:0;

print fmt: "skbaddr=%p state=%s reason=%s", REC->skbaddr, REC->state ? __print_symbolic(REC->state, { TCP_ESTABLISHED, "TCP_ESTABLISHED" }, { TCP_LISTEN, "TCP_LISTEN" }) : "UNKNOWN", __print_symbolic(REC->reason, { 0, "NOT_SPECIFIED" }, { 1, "NO_SOCKET" }, { 0x1a, "HEX" })
"#;

    #[test]
    fn parses_fields_and_sizes() {
        let f = Format::parse(SEND_RESET);
        assert_eq!(f.name, "tcp_send_reset");
        assert_eq!(f.offset("skaddr", Some(8)).unwrap(), 16);
        assert_eq!(f.offset("saddr", Some(28)).unwrap(), 32);
        assert_eq!(f.offset("daddr", None).unwrap(), 60);
        assert!(matches!(f.offset("state", Some(8)), Err(TracefsError::FieldSize { got: 4, .. })));
        assert!(matches!(f.offset("nope", None), Err(TracefsError::Field { .. })));
    }

    #[test]
    fn parses_symbol_tables_numeric_hex_and_state_names() {
        let f = Format::parse(SEND_RESET);
        let reasons = f.table_with("NO_SOCKET").unwrap();
        assert_eq!(reasons[&1], "NO_SOCKET");
        assert_eq!(reasons[&0x1a], "HEX");
        let states = f.table_with("TCP_LISTEN").unwrap();
        assert_eq!(states[&10], "TCP_LISTEN");
        assert_eq!(states[&1], "TCP_ESTABLISHED");
    }

    #[test]
    fn garbage_gives_empty_format_not_panic() {
        let f = Format::parse("field:\nfield:int;offset:x;\nprint fmt: __print_symbolic(");
        assert!(f.fields.is_empty());
        assert!(f.table_with("X").is_none());
    }

    #[test]
    fn reads_this_kernels_format_when_present() {
        let t = Tracefs::new(KernelPaths::TRACEFS);
        if let Ok(f) = t.format("tcp", "tcp_send_reset") {
            assert!(f.offset("skbaddr", Some(8)).is_ok());
            assert!(f.table_with("NO_SOCKET").is_some());
        }
    }
}
