//! Builds the XDP object (migr-ebpf) for bpfel-unknown-none with BTF and
//! places it in OUT_DIR, where `migr_user::datapath` embeds it. This is the one
//! build definition; `cargo xtask build-ebpf` goes through it too.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../migr-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "migr-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the XDP object failed; `cargo xtask setup` installs what it needs")?;
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        return Ok(());
    }
    let object = std::path::Path::new(&std::env::var("OUT_DIR")?).join("migr");
    let mut elf =
        std::fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    migr_btf_fixup::fix_union_offsets_in_elf(&mut elf)
        .map_err(|e| anyhow!("repairing the BTF of {}: {e}", object.display()))?;
    std::fs::write(&object, elf)?;
    Ok(())
}
