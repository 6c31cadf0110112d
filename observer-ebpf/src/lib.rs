#![no_std]
// This library target exists so that `observer` can name the eBPF crate as a
// build-dependency: cargo then rebuilds the daemon whenever the programs change.
