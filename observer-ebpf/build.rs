use which::which;

/// Rebuild the programs when bpf-linker changes: it does the final codegen,
/// and cargo would not notice a new linker on its own.
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
