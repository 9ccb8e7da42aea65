//! Repairs the BTF that bpf-linker emits for Rust enums with data.
//!
//! bpf-linker describes such an enum as a union of its variants and places
//! the discriminant member at its real, non-zero offset inside the union. The
//! kernel refuses union members at non-zero offsets ("Invalid member
//! bits_offset"), and without loadable BTF it gets no func_info either, so
//! `bpf_loop` callbacks and global functions are refused. Union members all
//! start at offset 0 by definition, so this sets every union member's offset
//! to 0, in place. Only debug descriptions change; no code or map layout does.
//!
//! A crate of its own so that migr-user's `build.rs` (which patches the
//! object it embeds) uses it as a build dependency, with its unit tests here.

/// Patches the `.BTF` section of an ELF64 little-endian object in place.
/// Returns how many union members were moved.
pub fn fix_union_offsets_in_elf(elf: &mut [u8]) -> Result<usize, String> {
    let (off, len) = elf_section(elf, ".BTF")?.ok_or(".BTF section missing")?;
    let btf = elf
        .get_mut(off..off + len)
        .ok_or(".BTF section out of range")?;
    fix_union_offsets(btf)
}

fn read_u16(b: &[u8], o: usize) -> Result<u16, String> {
    b.get(o..o + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("truncated at {o}"))
}

fn read_u32(b: &[u8], o: usize) -> Result<u32, String> {
    b.get(o..o + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("truncated at {o}"))
}

fn read_u64(b: &[u8], o: usize) -> Result<u64, String> {
    Ok(u64::from(read_u32(b, o)?) | (u64::from(read_u32(b, o + 4)?) << 32))
}

/// Finds a section's file offset and size by name.
fn elf_section(elf: &[u8], name: &str) -> Result<Option<(usize, usize)>, String> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 object".into());
    }
    let shoff = read_u64(elf, 0x28)? as usize;
    let shentsize = read_u16(elf, 0x3a)? as usize;
    let shnum = read_u16(elf, 0x3c)? as usize;
    let shstrndx = read_u16(elf, 0x3e)? as usize;
    let strtab = read_u64(elf, shoff + shstrndx * shentsize + 0x18)? as usize;
    for i in 0..shnum {
        let sh = shoff + i * shentsize;
        let name_at = strtab + read_u32(elf, sh)? as usize;
        let found = elf
            .get(name_at..name_at + name.len() + 1)
            .is_some_and(|s| &s[..name.len()] == name.as_bytes() && s[name.len()] == 0);
        if found {
            return Ok(Some((
                read_u64(elf, sh + 0x18)? as usize,
                read_u64(elf, sh + 0x20)? as usize,
            )));
        }
    }
    Ok(None)
}

const BTF_KIND_INT: u32 = 1;
const BTF_KIND_ARRAY: u32 = 3;
const BTF_KIND_STRUCT: u32 = 4;
const BTF_KIND_UNION: u32 = 5;
const BTF_KIND_ENUM: u32 = 6;
const BTF_KIND_FUNC_PROTO: u32 = 13;
const BTF_KIND_VAR: u32 = 14;
const BTF_KIND_DATASEC: u32 = 15;
const BTF_KIND_DECL_TAG: u32 = 17;
const BTF_KIND_ENUM64: u32 = 19;

/// Patches a raw BTF blob (header + types + strings) in place.
pub fn fix_union_offsets(btf: &mut [u8]) -> Result<usize, String> {
    if read_u16(btf, 0)? != 0xeb9f {
        return Err("bad BTF magic".into());
    }
    let hdr_len = read_u32(btf, 4)? as usize;
    let type_off = read_u32(btf, 8)? as usize;
    let type_len = read_u32(btf, 12)? as usize;
    let start = hdr_len + type_off;
    let end = start + type_len;
    if end > btf.len() {
        return Err("BTF type section out of range".into());
    }
    let mut at = start;
    let mut moved = 0;
    while at < end {
        let info = read_u32(btf, at + 4)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        at += 12;
        match kind {
            BTF_KIND_INT | BTF_KIND_VAR | BTF_KIND_DECL_TAG => at += 4,
            BTF_KIND_ARRAY => at += 12,
            BTF_KIND_STRUCT | BTF_KIND_DATASEC => at += 12 * vlen,
            BTF_KIND_UNION => {
                for m in 0..vlen {
                    let offset_at = at + 12 * m + 8;
                    if read_u32(btf, offset_at)? != 0 {
                        btf[offset_at..offset_at + 4].copy_from_slice(&0u32.to_le_bytes());
                        moved += 1;
                    }
                }
                at += 12 * vlen;
            }
            BTF_KIND_ENUM | BTF_KIND_FUNC_PROTO => at += 8 * vlen,
            BTF_KIND_ENUM64 => at += 12 * vlen,
            // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG: no extra data.
            2 | 7..=12 | 16 | 18 => {}
            other => return Err(format!("unknown BTF kind {other}")),
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn btf_with_union(member_offsets: &[u32]) -> Vec<u8> {
        let mut types = Vec::new();
        // [1] INT u32
        types.extend_from_slice(&0u32.to_le_bytes());
        types.extend_from_slice(&(BTF_KIND_INT << 24).to_le_bytes());
        types.extend_from_slice(&4u32.to_le_bytes());
        types.extend_from_slice(&32u32.to_le_bytes());
        // [2] UNION with members at the given offsets
        types.extend_from_slice(&0u32.to_le_bytes());
        types.extend_from_slice(
            &((BTF_KIND_UNION << 24) | member_offsets.len() as u32).to_le_bytes(),
        );
        types.extend_from_slice(&8u32.to_le_bytes());
        for off in member_offsets {
            types.extend_from_slice(&0u32.to_le_bytes());
            types.extend_from_slice(&1u32.to_le_bytes());
            types.extend_from_slice(&off.to_le_bytes());
        }
        let mut btf = Vec::new();
        btf.extend_from_slice(&0xeb9fu16.to_le_bytes());
        btf.extend_from_slice(&[1, 0]);
        btf.extend_from_slice(&24u32.to_le_bytes());
        btf.extend_from_slice(&0u32.to_le_bytes());
        btf.extend_from_slice(&(types.len() as u32).to_le_bytes());
        btf.extend_from_slice(&(types.len() as u32).to_le_bytes());
        btf.extend_from_slice(&1u32.to_le_bytes());
        btf.extend_from_slice(&types);
        btf.push(0);
        btf
    }

    #[test]
    fn moves_only_nonzero_union_members() {
        let mut btf = btf_with_union(&[0, 128, 32]);
        assert_eq!(fix_union_offsets(&mut btf), Ok(2));
        assert_eq!(fix_union_offsets(&mut btf), Ok(0));
    }

    #[test]
    fn rejects_garbage() {
        assert!(fix_union_offsets(&mut [0u8; 8]).is_err());
        let mut btf = btf_with_union(&[0]);
        btf[4 + 24 + 12 + 7] = 0x1f; // an unknown kind in the second type
        assert!(fix_union_offsets(&mut btf).is_err());
    }
}
