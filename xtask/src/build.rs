//! `cargo xtask build-ebpf`: builds the XDP object through migr-user's build
//! script (the project's one eBPF build definition) and checks it carries BTF.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use crate::{artifacts, run};

/// Builds migr-user (whose build.rs compiles migr-ebpf) and returns the object's path.
pub fn build_ebpf() -> Result<PathBuf> {
    let build = artifacts::build(&["build", "--package", "migr-user"]).context(
        "building the eBPF object (run `cargo xtask setup` if bpf-linker or rust-src is missing)",
    )?;
    let manifest = run::workspace_root().join("migr-user/Cargo.toml");
    let object = build.out_dir(&manifest)?.join("migr");
    let sections = elf_section_names(
        &std::fs::read(&object).with_context(|| format!("reading {}", object.display()))?,
    )?;
    for needed in [".BTF", ".BTF.ext"] {
        if !sections.iter().any(|s| s == needed) {
            bail!("{} has no {needed} section", object.display());
        }
    }
    eprintln!("eBPF object has sections .BTF and .BTF.ext");
    Ok(object)
}

/// Section names of a little-endian ELF64 file.
fn elf_section_names(elf: &[u8]) -> Result<Vec<String>> {
    let u16_at = |o: usize| -> Result<u16> {
        Ok(u16::from_le_bytes(
            elf.get(o..o + 2).context("ELF truncated")?.try_into()?,
        ))
    };
    let u32_at = |o: usize| -> Result<u32> {
        Ok(u32::from_le_bytes(
            elf.get(o..o + 4).context("ELF truncated")?.try_into()?,
        ))
    };
    let u64_at = |o: usize| -> Result<u64> {
        Ok(u64::from_le_bytes(
            elf.get(o..o + 8).context("ELF truncated")?.try_into()?,
        ))
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        bail!("not a little-endian ELF64 object");
    }
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let shstrndx = u16_at(0x3e)? as usize;
    let strtab_off = u64_at(shoff + shstrndx * shentsize + 0x18)? as usize;
    let mut names = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let name_off = u32_at(shoff + i * shentsize)? as usize;
        let start = strtab_off + name_off;
        let rest = elf.get(start..).context("ELF name out of range")?;
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .context("unterminated ELF name")?;
        names.push(String::from_utf8_lossy(&rest[..end]).into_owned());
    }
    Ok(names)
}
