//! What the running kernel provides: tracefs layouts, BTF offsets, enum
//! tables. Everything the programs need is discovered here, never assumed.

pub mod btf;
pub mod layout;
pub mod tracefs;
