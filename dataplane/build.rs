//! Builds `dataplane-ebpf` for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker (see install/bootstrap.sh); the object lands in OUT_DIR.
fn main() {
    println!("cargo:rerun-if-changed=../dataplane-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "moat-dataplane-ebpf",
            root_dir: "../dataplane-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .expect("building the eBPF programs failed: run install/bootstrap.sh (nightly, rust-src, bpf-linker)");
}
