//! Rebuild when the bpf-linker binary changes (it is an undeclared build tool of this crate).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    // aya-build passes `--cfg bpf_target_arch="..."` (the architecture whose registers a
    // uprobe reads, such as Go's register ABI in `go_tls_write`).
    println!(
        "cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"x86_64\", \"aarch64\", \"arm\", \"riscv64\", \"powerpc64\", \"s390x\", \"mips\", \"loongarch64\"))"
    );
}
