//! What the running kernel provides: tracefs layouts, BTF offsets, enum
//! tables. Everything the programs need is discovered here, never assumed.

pub mod btf;
pub mod kallsyms;
pub mod layout;
pub mod sources;
pub mod tracefs;
