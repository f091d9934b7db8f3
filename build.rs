//! Build script: with the `dpdk` feature, generates DPDK bindings (see `src/dpdk`).
fn main() {}
