//! Builds the XDP object (migr-ebpf) for bpfel-unknown-none with BTF and
//! places it in OUT_DIR, where `migr_user::datapath` embeds it. This is the one
//! build definition; `cargo xtask build-ebpf` goes through it too.
use anyhow::Context as _;

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
    .context("building the XDP object failed; `cargo xtask setup` installs what it needs")
}
