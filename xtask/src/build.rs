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
    // Offsets come from the file: a corrupt one must be an error, not an overflow.
    let bytes = |o: usize, n: usize| -> Result<&[u8]> {
        o.checked_add(n)
            .and_then(|end| elf.get(o..end))
            .context("ELF truncated")
    };
    let u16_at = |o| -> Result<u16> { Ok(u16::from_le_bytes(bytes(o, 2)?.try_into()?)) };
    let u32_at = |o| -> Result<u32> { Ok(u32::from_le_bytes(bytes(o, 4)?.try_into()?)) };
    let u64_at = |o| -> Result<u64> { Ok(u64::from_le_bytes(bytes(o, 8)?.try_into()?)) };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        bail!("not a little-endian ELF64 object");
    }
    let shoff = usize::try_from(u64_at(0x28)?)?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    let header = |index: usize, field: usize| -> Result<usize> {
        index
            .checked_mul(shentsize)
            .and_then(|o| o.checked_add(shoff))
            .and_then(|o| o.checked_add(field))
            .context("ELF section header out of range")
    };
    let strtab_off = usize::try_from(u64_at(header(shstrndx, 0x18)?)?)?;
    let mut names = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let name_off = u32_at(header(i, 0)?)? as usize;
        let rest = strtab_off
            .checked_add(name_off)
            .and_then(|start| elf.get(start..))
            .context("ELF name out of range")?;
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .context("unterminated ELF name")?;
        names.push(String::from_utf8_lossy(&rest[..end]).into_owned());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::elf_section_names;

    #[test]
    fn corrupt_elves_are_errors() {
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        // Section headers at the very end of the address space.
        elf[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&1u16.to_le_bytes());
        let err = elf_section_names(&elf).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        assert!(elf_section_names(&elf[..20]).is_err());
        assert!(elf_section_names(b"not an ELF").is_err());
    }
}
