//! Where the agent pins its maps, and whether maps pinned by another build
//! can be re-used (see `migr_common::layout`). The maps live in
//! `<pin dir>/maps-v<N>`; the XDP and TC links and the `FULL_PATH` program
//! array stay in the pin directory itself (they hold programs, which every
//! build replaces).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use migr_common::{layout::MAP_LAYOUT_VERSION, maps::map_names};

/// The directory of this build's pinned maps.
pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(dir_name(MAP_LAYOUT_VERSION))
}

fn dir_name(version: u32) -> String {
    format!("maps-v{version}")
}

/// What a pin directory's entry says about the maps pinned there.
#[derive(Debug, PartialEq, Eq)]
pub enum Pinned {
    /// Maps of another layout version, in their directory.
    Version(u32),
    /// A map pinned by a build from before layouts were versioned.
    Unversioned,
}

/// Reads an entry of the pin directory: `non_empty` says whether a
/// directory entry holds anything. This build's own maps, links, empty
/// directories and unknown names say nothing.
pub fn classify(name: &str, non_empty: bool) -> Option<Pinned> {
    if let Some(v) = name.strip_prefix("maps-v") {
        let v: u32 = v.parse().ok()?;
        return (v != MAP_LAYOUT_VERSION && non_empty).then_some(Pinned::Version(v));
    }
    map_names::PINNED
        .contains(&name)
        .then_some(Pinned::Unversioned)
}

/// Why maps found in `pin_dir` cannot be used, with what to do about it.
pub fn refusal(pin_dir: &Path, found: &Pinned) -> String {
    let (what, where_) = match found {
        Pinned::Version(v) => (
            format!("a migr agent of map layout {v}"),
            pin_dir.join(dir_name(*v)).display().to_string(),
        ),
        Pinned::Unversioned => (
            "a migr agent from before map layouts were versioned".to_string(),
            pin_dir.display().to_string(),
        ),
    };
    format!(
        "the maps pinned in {where_} were made by {what}; this agent (migr {}) uses map layout \
         {MAP_LAYOUT_VERSION} and cannot read them. They may hold parked frames and learned flows. \
         To switch versions: let the running agent finish every migration (`migrctl service list` \
         shows none parking or replaying), stop it, run `migr-agent cleanup --pin-dir {}` (this \
         detaches the datapath and forgets the registered services: traffic passes untouched until \
         this agent runs and the services are added again), then start this agent. To keep the \
         pinned state, run the version that made it instead.",
        env!("CARGO_PKG_VERSION"),
        pin_dir.display(),
    )
}

/// Refuses a pin directory holding maps of another layout.
pub fn check(pin_dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", pin_dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", pin_dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let non_empty = entry.file_type().is_ok_and(|t| t.is_dir())
            && std::fs::read_dir(entry.path()).is_ok_and(|mut d| d.next().is_some());
        if let Some(found) = classify(&name, non_empty) {
            bail!("{}", refusal(pin_dir, &found));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_maps_of_another_layout_are_refused() {
        let ours = dir_name(MAP_LAYOUT_VERSION);
        assert_eq!(classify(&ours, true), None);
        let other = MAP_LAYOUT_VERSION + 1;
        assert_eq!(
            classify(&dir_name(other), true),
            Some(Pinned::Version(other))
        );
        assert_eq!(classify(&dir_name(other), false), None, "an empty leftover");
        assert_eq!(classify("SERVICES", false), Some(Pinned::Unversioned));
        assert_eq!(classify("link-eth0", false), None);
        assert_eq!(classify("maps-vx", true), None);
    }

    #[test]
    fn the_refusal_names_both_layouts_and_the_way_out() {
        let text = refusal(Path::new("/sys/fs/bpf/migr"), &Pinned::Version(7));
        assert!(text.contains("/sys/fs/bpf/migr/maps-v7"), "{text}");
        assert!(text.contains("map layout 7"), "{text}");
        assert!(
            text.contains(&format!("uses map layout {MAP_LAYOUT_VERSION}")),
            "{text}"
        );
        assert!(
            text.contains("migr-agent cleanup --pin-dir /sys/fs/bpf/migr"),
            "{text}"
        );
        let legacy = refusal(Path::new("/p"), &Pinned::Unversioned);
        assert!(
            legacy.contains("before map layouts were versioned"),
            "{legacy}"
        );
    }
}
