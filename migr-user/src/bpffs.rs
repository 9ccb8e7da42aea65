//! The bpf filesystem the agent pins its maps and links on.

use std::path::Path;

use anyhow::{Result, bail};

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and buffer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure `pin_dir` can be created on bpffs: mounts bpffs on
/// /sys/fs/bpf if the pin directory is under it and it is not mounted.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(root) && !is_bpffs(root) {
        std::fs::create_dir_all(root)?;
        let src = std::ffi::CString::new("bpf")?;
        let target = std::ffi::CString::new("/sys/fs/bpf")?;
        // SAFETY: mount(2) with valid C strings.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "mounting bpffs on /sys/fs/bpf: {}",
                std::io::Error::last_os_error()
            );
        }
        tracing::info!("mounted bpffs on /sys/fs/bpf");
    }
    let mut probe = pin_dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if !is_bpffs(&probe) {
        bail!(
            "the pin directory {} is not on a bpf filesystem (mount -t bpf bpf DIR)",
            pin_dir.display()
        );
    }
    Ok(())
}
