//! Struct member offsets from the running kernel's BTF.

use std::path::Path;

use btf_rs::{Btf, Type};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading BTF from {0}: {1}")]
    Load(String, String),
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("BTF: struct {0} has no member {1}")]
    NoMember(String, String),
    #[error("BTF: {0}.{1} is a bitfield or not byte-aligned")]
    Bitfield(String, String),
    #[error("BTF: {0} offset {1} does not fit the layout")]
    TooFar(String, u32),
    #[error("BTF: {0}")]
    Other(String),
}

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load(path: &Path) -> Result<KernelBtf, BtfError> {
        let btf = Btf::from_file(path).map_err(|e| BtfError::Load(path.display().to_string(), e.to_string()))?;
        Ok(KernelBtf { btf })
    }

    fn find_struct(&self, name: &str) -> Result<btf_rs::Struct, BtfError> {
        let types = self.btf.resolve_types_by_name(name).map_err(|_| BtfError::NoStruct(name.to_owned()))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
    }

    /// Strips typedefs and qualifiers to reach a struct or union.
    fn resolve_aggregate(&self, mut ty: Type) -> Option<btf_rs::Struct> {
        for _ in 0..16 {
            match ty {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(_) | Type::Volatile(_) | Type::Const(_) | Type::Restrict(_) | Type::TypeTag(_) => {
                    let bt = ty.as_btf_type()?;
                    ty = self.btf.resolve_chained_type(bt).ok()?;
                }
                _ => return None,
            }
        }
        None
    }

    /// Finds `member` in `s`, descending into anonymous structs and unions.
    /// Returns the bit offset from the start of `s` and the member's type.
    fn find_member(&self, s: &btf_rs::Struct, member: &str) -> Option<(u32, btf_rs::Member)> {
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if name == member {
                return Some((m.bit_offset(), m.clone()));
            }
            if name.is_empty() {
                let inner = self.btf.resolve_chained_type(m).ok().and_then(|t| self.resolve_aggregate(t));
                if let Some(inner) = inner {
                    if let Some((off, found)) = self.find_member(&inner, member) {
                        return Some((m.bit_offset() + off, found));
                    }
                }
            }
        }
        None
    }

    /// Byte offset of a member path such as `["__sk_common", "skc_net"]`
    /// from the start of `struct root`.
    pub fn offset(&self, root: &str, path: &[&str]) -> Result<u16, BtfError> {
        let mut current = self.find_struct(root)?;
        let mut bits = 0u32;
        let mut owner = root.to_owned();
        for (i, member) in path.iter().enumerate() {
            let (off, m) = self
                .find_member(&current, member)
                .ok_or_else(|| BtfError::NoMember(owner.clone(), (*member).to_owned()))?;
            if m.bitfield_size().is_some_and(|s| s != 0) {
                return Err(BtfError::Bitfield(owner, (*member).to_owned()));
            }
            bits += off;
            if i + 1 < path.len() {
                let ty = self.btf.resolve_chained_type(&m).map_err(|e| BtfError::Other(e.to_string()))?;
                current = self
                    .resolve_aggregate(ty)
                    .ok_or_else(|| BtfError::Other(format!("{owner}.{member} is not a struct")))?;
                owner = format!("{owner}.{member}");
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Bitfield(root.to_owned(), path.join(".")));
        }
        let bytes = bits / 8;
        u16::try_from(bytes)
            .ok()
            .filter(|b| *b != observer_common::config::UNSET)
            .ok_or_else(|| BtfError::TooFar(format!("{root}.{}", path.join(".")), bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BTF is part of the running kernel, so these read the real thing; a
    /// kernel without BTF skips them (doctor reports it).
    fn kernel() -> Option<KernelBtf> {
        KernelBtf::load(Path::new(crate::config::KernelPaths::BTF)).ok()
    }

    #[test]
    fn resolves_nested_and_anonymous_members() {
        let Some(btf) = kernel() else { return };
        // skc_net sits inside the anonymous members of sock_common.
        let a = btf.offset("sock", &["__sk_common", "skc_net"]).unwrap();
        let b = btf.offset("sock_common", &["skc_net"]).unwrap();
        assert_eq!(a, b, "sock starts with __sk_common");
        assert!(btf.offset("sk_buff", &["head"]).unwrap() > 0);
        assert!(btf.offset("net", &["ns", "inum"]).is_ok());
    }

    #[test]
    fn missing_things_are_errors() {
        let Some(btf) = kernel() else { return };
        assert!(matches!(btf.offset("no_such_struct_xyz", &["a"]), Err(BtfError::NoStruct(_))));
        assert!(matches!(btf.offset("sock", &["no_such_member"]), Err(BtfError::NoMember(..))));
    }
}
