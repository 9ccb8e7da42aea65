//! The agent's saved state: two slot files written in turn.
//!
//! Every phase transition saves the state before it is answered (a restarted
//! agent must not re-install an older phase over the datapath's newer one),
//! so a save sits on CRIU's critical path. Replacing a file by rename costs
//! about 0.5 ms on ext4, which flushes the new file's data on a replacing
//! rename (`auto_da_alloc`); overwriting a file in place costs a write. So
//! a save overwrites the older of `state.0` and `state.1` in place, behind a
//! header (magic, sequence number, length, hash), and loading takes the
//! valid slot with the highest sequence number: a save that a crash cut
//! short leaves the other slot whole. No fsync: the state directory is
//! meant for tmpfs (/run), which a power loss empties anyway.

use std::{
    fs::{File, OpenOptions},
    io::Read as _,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

const MAGIC: &[u8; 8] = b"migrst01";
const HEADER: usize = 8 + 8 + 8 + 8;
/// The file the agent wrote before the slots (read once, then removed).
const LEGACY: &str = "state.json";

/// The slot files of a state directory.
pub fn slot_paths(dir: &Path) -> [PathBuf; 2] {
    [dir.join("state.0"), dir.join("state.1")]
}

/// Every file that holds saved state in `dir` (for `migr-agent cleanup`).
pub fn all_paths(dir: &Path) -> [PathBuf; 3] {
    let [a, b] = slot_paths(dir);
    [a, b, dir.join(LEGACY)]
}

pub struct StateFile {
    slots: [PathBuf; 2],
    /// The slots, opened on their first save and kept open (an open costs
    /// as much as the write).
    open: [Option<File>; 2],
    legacy: PathBuf,
    /// The sequence number of the last save (or of what was loaded).
    seq: u64,
}

impl StateFile {
    pub fn new(dir: &Path) -> Self {
        Self {
            slots: slot_paths(dir),
            open: [None, None],
            legacy: dir.join(LEGACY),
            seq: 0,
        }
    }

    /// The newest complete state, if any was saved.
    pub fn load(&mut self) -> Result<Option<Vec<u8>>> {
        let mut best: Option<(u64, Vec<u8>)> = None;
        let mut found = 0;
        for path in &self.slots {
            let bytes = match std::fs::read(path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            found += 1;
            match decode(&bytes) {
                Some((seq, body)) if best.as_ref().is_none_or(|(s, _)| seq > *s) => {
                    best = Some((seq, body.to_vec()));
                }
                Some(_) => {}
                None => tracing::warn!(path = %path.display(),
                    "a state slot is incomplete (a save was cut short); using the other"),
            }
        }
        if let Some((seq, body)) = best {
            self.seq = seq;
            return Ok(Some(body));
        }
        if found > 0 {
            // Saved state exists but none of it is whole: starting as if
            // nothing had been saved would lose it without a word.
            bail!("no state slot is whole (both saves were cut short, or the files were damaged)");
        }
        let mut text = Vec::new();
        match File::open(&self.legacy) {
            Ok(mut f) => {
                f.read_to_end(&mut text)
                    .with_context(|| format!("reading {}", self.legacy.display()))?;
                Ok(Some(text))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.legacy.display())),
        }
    }

    /// Saves `body` into the older slot.
    pub fn save(&mut self, body: &[u8]) -> Result<()> {
        let seq = self.seq + 1;
        let slot = (seq % 2) as usize;
        let path = &self.slots[slot];
        let file = match &mut self.open[slot] {
            Some(f) => f,
            empty => empty.insert(
                OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?,
            ),
        };
        let bytes = encode(seq, body);
        file.write_all_at(&bytes, 0)
            .with_context(|| format!("writing {}", path.display()))?;
        self.seq = seq;
        if seq == 1 {
            // Written in the new form once: the old file would only mislead.
            let _ = std::fs::remove_file(&self.legacy);
        }
        Ok(())
    }
}

fn encode(seq: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&fnv1a(seq, body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The sequence number and body of a slot, if it is complete. Bytes past
/// the body are a longer, older save's tail.
fn decode(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return None;
    }
    let (seq, len, hash) = (word(8), word(16), word(24));
    let body = bytes.get(HEADER..HEADER.checked_add(usize::try_from(len).ok()?)?)?;
    (fnv1a(seq, body) == hash).then_some((seq, body))
}

/// FNV-1a over the sequence number and the body: enough to tell a torn
/// write, which is all it guards against.
fn fnv1a(seq: u64, body: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seq.to_le_bytes().iter().chain(body) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("migr-statefile-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_newest_save_wins_and_slots_alternate() {
        let dir = scratch("alternate");
        let mut f = StateFile::new(&dir);
        assert_eq!(f.load().unwrap(), None);
        f.save(b"first, and longer than what follows").unwrap();
        f.save(b"second").unwrap();
        f.save(b"third").unwrap();
        assert!(slot_paths(&dir).iter().all(|p| p.exists()));
        let mut again = StateFile::new(&dir);
        assert_eq!(again.load().unwrap().as_deref(), Some(&b"third"[..]));
        again.save(b"fourth").unwrap();
        assert_eq!(
            StateFile::new(&dir).load().unwrap().as_deref(),
            Some(&b"fourth"[..]),
            "a restarted agent's saves continue the sequence"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_save_falls_back_to_the_other_slot() {
        let dir = scratch("torn");
        let mut f = StateFile::new(&dir);
        f.save(b"complete state").unwrap();
        f.save(b"the save that is cut short").unwrap();
        let newest = &slot_paths(&dir)[0];
        let bytes = std::fs::read(newest).unwrap();
        for cut in [0, 5, HEADER, bytes.len() - 1] {
            std::fs::write(newest, &bytes[..cut]).unwrap();
            assert_eq!(
                StateFile::new(&dir).load().unwrap().as_deref(),
                Some(&b"complete state"[..]),
                "cut at {cut}"
            );
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(newest, &flipped).unwrap();
        assert_eq!(
            StateFile::new(&dir).load().unwrap().as_deref(),
            Some(&b"complete state"[..])
        );
        // Both damaged: an error, not a start as if nothing had been saved.
        std::fs::write(&slot_paths(&dir)[1], &flipped).unwrap();
        let e = StateFile::new(&dir).load().unwrap_err();
        assert!(format!("{e:#}").contains("no state slot is whole"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_legacy_file_is_read_until_the_first_save() {
        let dir = scratch("legacy");
        std::fs::write(dir.join(LEGACY), b"{\"version\":1}").unwrap();
        let mut f = StateFile::new(&dir);
        assert_eq!(f.load().unwrap().as_deref(), Some(&b"{\"version\":1}"[..]));
        f.save(b"new").unwrap();
        assert!(!dir.join(LEGACY).exists());
        assert_eq!(
            StateFile::new(&dir).load().unwrap().as_deref(),
            Some(&b"new"[..])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
