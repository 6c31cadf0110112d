use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// The eBPF programs are built with the Debian `rustc-web` compiler, whose
/// prebuilt `core` for bpfel-unknown-none makes `-Z build-std` unnecessary.
/// `cargo xtask setup` links it into rustup under this name.
const BPF_TOOLCHAIN: &str = "bpf-web";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=OBSERVER_BPF_TOOLCHAIN");
    let toolchain = std::env::var("OBSERVER_BPF_TOOLCHAIN").unwrap_or_else(|_| BPF_TOOLCHAIN.to_owned());
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "observer-ebpf")
        .ok_or_else(|| anyhow!("observer-ebpf package not found"))?;
    let root_dir = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("observer-ebpf manifest has no parent"))?;
    aya_build::build_ebpf(
        [Package { name: ebpf.name.as_str(), root_dir: root_dir.as_str(), ..Default::default() }],
        Toolchain::Custom(&toolchain),
    )
    .context("building the eBPF programs (run `cargo xtask setup` if the toolchain is missing)")
}
