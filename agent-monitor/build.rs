//! Builds `agent-monitor-ebpf` for the bpf target with aya-build; the object is embedded with
//! `include_bytes_aligned!` in `src/bpf/loader.rs`. Set `AYA_BUILD_SKIP=1` for host-only checks
//! (and the fuzz targets): aya-build then builds nothing, and where no object was built before
//! an empty one is embedded (the loader refuses to load it, saying why).
use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let skip = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let object =
            std::path::Path::new(&std::env::var_os("OUT_DIR").context("OUT_DIR not set")?).join("agent-monitor");
        if !object.exists() {
            std::fs::write(&object, b"").with_context(|| format!("writing {}", object.display()))?;
        }
    }
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "agent-monitor-ebpf")
        .ok_or_else(|| anyhow!("agent-monitor-ebpf package not found"))?;
    let root_dir = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [Package { name: ebpf.name.as_str(), root_dir: root_dir.as_str(), ..Default::default() }],
        Toolchain::default(),
    )
}
