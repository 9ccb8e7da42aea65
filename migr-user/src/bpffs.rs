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

/// Whether this process runs in a mount namespace of its own: not PID 1's,
/// or, where PID 1's cannot be read (inside some sandboxes), not its
/// parent's (`ip netns exec` and `unshare -m` make one for the command they
/// run). `None`: it cannot tell.
fn in_private_mount_namespace() -> Option<bool> {
    let own = std::fs::read_link("/proc/self/ns/mnt").ok()?;
    if let Ok(init) = std::fs::read_link("/proc/1/ns/mnt") {
        return Some(own != init);
    }
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let theirs = std::fs::read_link(format!("/proc/{parent}/ns/mnt")).ok()?;
    Some(own != theirs)
}

/// Makes sure `pin_dir` can be created on bpffs: mounts bpffs on
/// /sys/fs/bpf if the pin directory is under it and it is not mounted.
///
/// A bpffs the agent mounts in a mount namespace of its own (`ip netns exec`
/// gives one, with a fresh /sys) dies with the agent, and with it the pinned
/// program and every parked frame: that is refused, because the agent's
/// promise is that packets stay parked while no agent runs.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(root) && !is_bpffs(root) {
        match in_private_mount_namespace() {
            Some(true) => bail!(
                "/sys/fs/bpf has no bpf filesystem in this process's mount namespace, which is not the host's \
                 (started under `ip netns exec`?); one mounted here would vanish with the agent, taking the \
                 pinned datapath and the parked frames with it. Enter only the network namespace \
                 (`nsenter --net=/run/netns/NAME migr-agent run ...` keeps the host's mounts), or mount \
                 bpffs in this namespace so that it outlives the agent"
            ),
            None => tracing::warn!(
                "cannot tell whether this mount namespace is the host's; a bpffs mounted here may vanish with the agent"
            ),
            Some(false) => {}
        }
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
