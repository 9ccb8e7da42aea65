//! What the host needs to run the VM tests: QEMU, a static busybox, apt and dpkg.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};

pub(super) struct Tools {
    pub(super) qemu: PathBuf,
    pub(super) busybox: PathBuf,
}

/// Fails naming exactly what is missing: the VM step must never pass by doing nothing.
pub(super) fn preflight() -> Result<Tools> {
    let qemu = match std::env::var_os(QEMU_ENV) {
        Some(path) => Some(PathBuf::from(path)).filter(|p| p.is_file()),
        None => which("qemu-system-x86_64"),
    };
    let busybox = Path::new("/bin/busybox");
    let busybox_static = fs::read(busybox).is_ok_and(|elf| is_static_elf(&elf));
    let missing = missing_tools(qemu.is_some(), busybox_static, |tool| which(tool).is_some());
    if !missing.is_empty() {
        bail!("{}", missing_message(&missing));
    }
    Ok(Tools {
        qemu: qemu.unwrap_or_default(),
        busybox: busybox.to_path_buf(),
    })
}

/// Overrides the QEMU binary (default: `qemu-system-x86_64` on PATH).
const QEMU_ENV: &str = "MIGR_VM_QEMU";

fn missing_tools(qemu: bool, busybox_static: bool, found: impl Fn(&str) -> bool) -> Vec<String> {
    let mut missing = Vec::new();
    if !qemu {
        missing.push(match std::env::var(QEMU_ENV) {
            Ok(path) => format!("the QEMU binary {path} ({QEMU_ENV})"),
            Err(_) => "`qemu-system-x86_64` (Debian package qemu-system-x86, from \
                       bookworm-backports)"
                .to_string(),
        });
    }
    if !busybox_static {
        missing.push("a static busybox at /bin/busybox (Debian package busybox-static)".into());
    }
    for (tool, package) in [
        ("apt-get", "apt"),
        ("apt-cache", "apt"),
        ("dpkg-deb", "dpkg"),
    ] {
        if !found(tool) {
            missing.push(format!("`{tool}` (Debian package {package})"));
        }
    }
    missing
}

fn missing_message(missing: &[String]) -> String {
    format!(
        "the VM tests cannot start a VM on this machine: missing {}. Run `cargo xtask setup` \
         (as root, on Debian bookworm) to install them",
        missing.join("; ")
    )
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// An ELF executable without a PT_INTERP program header.
fn is_static_elf(elf: &[u8]) -> bool {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap_or_default()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        // Offsets come from the file: one past the end (or past usize) is no PT_INTERP.
        let p_type = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .and_then(|at| elf.get(at..at.checked_add(4)?));
        // PT_INTERP = 3.
        p_type != Some(&3u32.to_le_bytes()[..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_qemu_is_named() {
        let missing = missing_tools(false, true, |_| true);
        assert_eq!(missing.len(), 1, "{missing:?}");
        let message = missing_message(&missing);
        assert!(message.contains("qemu-system-x86_64"), "{message}");
        assert!(message.contains("qemu-system-x86"), "{message}");
        assert!(missing_tools(true, true, |_| true).is_empty());
        let missing = missing_tools(true, false, |t| t != "dpkg-deb");
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(missing[0].contains("busybox-static") && missing[1].contains("dpkg-deb"));
    }

    #[test]
    fn static_elves() {
        let busybox = fs::read("/bin/busybox").unwrap_or_default();
        if !busybox.is_empty() {
            assert!(is_static_elf(&busybox), "Debian's busybox-static is static");
        }
        let dynamic = fs::read("/bin/ls").unwrap();
        assert!(!is_static_elf(&dynamic));
        // Program headers at the end of the address space: no overflow, and no PT_INTERP.
        let mut bogus = dynamic[..64].to_vec();
        bogus[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(is_static_elf(&bogus));
    }
}
