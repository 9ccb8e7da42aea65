//! The store's file operations that tests make fail (a full filesystem),
//! and small helpers.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::FileExt as _,
    path::Path,
};

use anyhow::{Context as _, Result};

pub(super) fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

pub(super) fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The store's writes go through here so that the tests can make them fail
/// as on a full filesystem; outside the tests it only writes.
#[derive(Default)]
pub(super) struct WriteLimit {
    /// Bytes that may still be written.
    #[cfg(test)]
    pub(super) bytes: Option<u64>,
    #[cfg(test)]
    pub(super) cut_fails: bool,
}

impl WriteLimit {
    /// Writes `buf` at `at`; past the limit, writes what fits and fails
    /// with ENOSPC.
    pub(super) fn write_all_at(&mut self, file: &File, buf: &[u8], at: u64) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(left) = self.bytes.as_mut() {
            if buf.len() as u64 > *left {
                let fit = *left as usize;
                file.write_all_at(&buf[..fit], at)?;
                *left = 0;
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            *left -= buf.len() as u64;
        }
        file.write_all_at(buf, at)
    }

    pub(super) fn set_len(&mut self, file: &File, len: u64) -> std::io::Result<()> {
        #[cfg(test)]
        if self.cut_fails {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        file.set_len(len)
    }
}
