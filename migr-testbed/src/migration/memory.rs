//! The CRIU techniques' steps around the final dump: pre-copy's pre-dump
//! iterations (each copied to the destination node while the service still
//! runs) and the lazy final dump of post-copy and hybrid, whose page server
//! stays at the source node and serves the memory over the links.
//!
//! Both mark the timeline in the source's phases file beside CRIU's actions
//! (`pre-copy-start N`, `pre-copy-end N`, `pre-copy-sent N`): CRIU runs no
//! action script during a pre-dump, so migr's hook, and with it the park,
//! starts only at the final dump's `pre-dump` action.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use migr_quic::service_gaps::Gap;

use super::{Technique, wait_until};
use crate::{
    Bins,
    criu::{self, dir_bytes, phase_time, read_phases},
    now_s,
    proc::{Proc, Spawn},
    topology::{DST_NODE_IP, SRC_NODE_IP, Topology},
    transfer,
};

/// The lazy final dump's page server port, at the source node's address.
const PAGE_SERVER_PORT: u16 = 27_000;

/// One pre-dump iteration.
#[derive(Clone, Debug)]
pub struct PreDumpRound {
    /// `criu pre-dump`'s run time (the service is frozen for part of it).
    pub dump_ms: f64,
    /// Its images over the links to the destination node.
    pub transfer_ms: f64,
    pub bytes: u64,
}

/// What the pre-dump iterations left for the final dump.
#[derive(Default)]
pub struct PreCopied {
    pub rounds: Vec<PreDumpRound>,
    /// The last iteration's directory, relative to the final dump's images
    /// (`--prev-images-dir`), at the source.
    pub parent: Option<String>,
    /// Its copy at the destination node, to link the final images to.
    parent_dst: Option<String>,
}

impl PreCopied {
    /// The final dump's options for an incremental dump on top of the last
    /// iteration (`--track-mem` too: without it CRIU silently dumps every page).
    pub fn dump_args(&self) -> Vec<String> {
        match &self.parent {
            Some(p) => vec!["--prev-images-dir".into(), p.clone(), "--track-mem".into()],
            None => Vec::new(),
        }
    }

    /// The server's pauses in answering (its `answer-gap` lines, over
    /// 20 ms) that overlap a pre-dump iteration, in ms: empty when it kept
    /// answering throughout. Each iteration's window runs from its start to
    /// its end stamp in `phases`.
    pub fn answer_gaps_ms(&self, server_log: &Path, phases: &[(String, f64)]) -> Vec<f64> {
        let text = std::fs::read_to_string(server_log).unwrap_or_default();
        let windows: Vec<(f64, f64)> = (1..=self.rounds.len())
            .filter_map(|n| {
                let start = phase_time(phases, &format!("pre-copy-start-{n}"))?;
                Some((start, phase_time(phases, &format!("pre-copy-end-{n}"))?))
            })
            .collect();
        text.lines()
            .filter_map(Gap::parse)
            .filter(|g| windows.iter().any(|(a, b)| g.from_s <= *b && g.to_s >= *a))
            .map(|g| g.ms())
            .collect()
    }

    /// Links the copied final images to the copied last iteration, as CRIU
    /// linked them at the source (the transfer carries regular files only).
    pub fn link_parent(&self, images_dst: &Path) -> Result<()> {
        if let Some(parent) = &self.parent_dst {
            let link = images_dst.join("parent");
            std::os::unix::fs::symlink(parent, &link)
                .with_context(|| format!("linking {} to {parent}", link.display()))?;
        }
        Ok(())
    }
}

/// Appends `what T` to the phases file (`T`: now, wall-clock seconds).
fn stamp(phases: &Path, what: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(phases)
        .with_context(|| format!("opening {}", phases.display()))?;
    writeln!(f, "{what} {:.9}", now_s())?;
    Ok(())
}

/// Runs the technique's pre-dump iterations on the service `pid` (in the
/// source container's namespace), each copied to the destination node.
/// `work`: the run's directory (iteration `n` goes to `pre-src-n` and
/// `pre-dst-n`, siblings of the final images).
pub fn pre_copy(
    bins: &Bins,
    technique: Technique,
    pid: i32,
    topo: &Topology,
    work: &Path,
    phases: &Path,
) -> Result<PreCopied> {
    let mut out = PreCopied::default();
    for n in 1..=technique.pre_dumps() {
        let (src, dst) = (format!("pre-src-{n}"), format!("pre-dst-{n}"));
        let images = work.join(&src);
        stamp(phases, &format!("pre-copy-start-{n}"))?;
        let parent = out.parent.as_ref().map(|p| format!("../{p}"));
        let step = criu::pre_dump(
            bins,
            pid,
            &topo.src_ct,
            &images,
            parent.as_deref(),
            &work.join(format!("pre-dump-{n}.log")),
        )?;
        stamp(phases, &format!("pre-copy-end-{n}"))?;
        let t = Instant::now();
        transfer::copy_over_network(&topo.src, &topo.dst, DST_NODE_IP, &images, &work.join(&dst))
            .with_context(|| format!("moving pre-dump {n} to the destination node"))?;
        let transfer_ms = t.elapsed().as_secs_f64() * 1e3;
        stamp(phases, &format!("pre-copy-sent-{n}"))?;
        if let Some(p) = &out.parent_dst {
            std::os::unix::fs::symlink(format!("../{p}"), work.join(&dst).join("parent"))?;
        }
        out.rounds.push(PreDumpRound {
            dump_ms: step.seconds * 1e3,
            transfer_ms,
            bytes: dir_bytes(&images),
        });
        out.parent = Some(src);
        out.parent_dst = Some(dst);
    }
    // Relative to the final images, which are siblings of the iterations.
    out.parent = out.parent.map(|p| format!("../{p}"));
    out.parent_dst = out.parent_dst.map(|p| format!("../{p}"));
    Ok(out)
}

/// `criu lazy-pages` at the destination, for `criu restore --lazy-pages`
/// (returns once its socket is there). `source`: fetch the pages from the
/// [`LazyDump`]'s page server at the source node, from the destination
/// node's namespace; None: serve them from the copied images (post-copy-local).
pub fn lazy_pages_daemon(
    bins: &Bins,
    images_dst: &Path,
    work: &Path,
    source: Option<&Topology>,
) -> Result<Proc> {
    let mut cmd = Command::new(&bins.criu);
    cmd.arg("lazy-pages");
    if source.is_some() {
        cmd.args(["--page-server", "--address", SRC_NODE_IP])
            .args(["--port", &PAGE_SERVER_PORT.to_string()]);
    }
    cmd.arg("-D")
        .arg(images_dst)
        .args(["-v4", "-o"])
        .arg(work.join("lazy-pages.log"));
    let proc = Proc::spawn(
        "criu lazy-pages",
        &mut cmd,
        Spawn {
            netns: source.map(|topo| topo.dst.name()),
            stderr: Some(&work.join("lazy-pages.err")),
            ..Spawn::default()
        },
    )?;
    let socket = images_dst.join("lazy-pages.socket");
    wait_until(Duration::from_secs(10), "the lazy-pages daemon", || {
        Ok(socket.exists())
    })?;
    Ok(proc)
}

/// A `criu dump --lazy-pages` in the source node's namespace: it writes
/// everything but the lazy pages, runs post-dump, then (`status-ready`)
/// serves those pages at [`SRC_NODE_IP`] until the destination fetched
/// them all; the dumped tasks stay frozen until then.
pub struct LazyDump {
    proc: Proc,
    log: PathBuf,
}

impl LazyDump {
    /// Starts the dump; returns once it serves pages, with its seconds from
    /// start to `status-ready`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        bins: &Bins,
        pid: i32,
        topo: &Topology,
        images: &Path,
        hook: &Path,
        (log, phases): (&Path, &Path),
        extra: &[&str],
    ) -> Result<(Self, f64)> {
        let port = PAGE_SERVER_PORT.to_string();
        let mut lazy = vec!["--lazy-pages", "--address", SRC_NODE_IP, "--port", &port];
        lazy.extend(extra);
        let mut cmd = criu::dump_command(bins, pid, &topo.src_ct, images, hook, log, &lazy)?;
        let started = Instant::now();
        let mut proc = Proc::spawn(
            "criu dump --lazy-pages",
            &mut cmd,
            Spawn {
                netns: Some(topo.src.name()),
                stderr: Some(&images.with_extension("dump.err")),
                ..Spawn::default()
            },
        )?;
        wait_until(
            Duration::from_secs(60),
            "the lazy dump's page server",
            || {
                if let Some(status) = proc.try_exit() {
                    bail!(
                        "criu dump --lazy-pages exited ({status}) before it served pages; log {}:\n{}",
                        log.display(),
                        criu::log_errors(log)
                    );
                }
                Ok(phase_time(&read_phases(phases), "status-ready").is_some())
            },
        )?;
        let seconds = started.elapsed().as_secs_f64();
        Ok((
            Self {
                proc,
                log: log.to_path_buf(),
            },
            seconds,
        ))
    }

    /// Waits for the dump to finish (every page served; the source's tasks
    /// killed).
    pub fn finish(mut self, limit: Duration) -> Result<()> {
        let status = self.proc.wait_exit(limit)?;
        if !status.success() {
            bail!(
                "criu dump --lazy-pages failed ({status}); log {}:\n{}",
                self.log.display(),
                criu::log_errors(&self.log)
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_round() -> PreCopied {
        PreCopied {
            rounds: vec![PreDumpRound {
                dump_ms: 900.0,
                transfer_ms: 2000.0,
                bytes: 50 << 20,
            }],
            parent: Some("../pre-src-1".into()),
            parent_dst: Some("../pre-dst-1".into()),
        }
    }

    #[test]
    fn the_final_dump_tracks_memory_on_top_of_the_last_iteration() {
        assert_eq!(
            one_round().dump_args(),
            ["--prev-images-dir", "../pre-src-1", "--track-mem"]
        );
        assert!(PreCopied::default().dump_args().is_empty());
    }

    #[test]
    fn only_pauses_inside_a_pre_dump_count() {
        let dir = std::env::temp_dir().join(format!("migr-precopy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("server.log");
        // Before, across the start of, inside and after the pre-dump (10.0 to 11.0).
        std::fs::write(
            &log,
            "answer-gap 8.0 8.1\nanswer-gap 9.95 10.05\nlistening x\nanswer-gap 10.5 10.6\n\
             answer-gap 12.0 12.5\n",
        )
        .unwrap();
        let phases = vec![
            ("pre-copy-start-1".to_string(), 10.0),
            ("pre-copy-end-1".to_string(), 11.0),
            ("pre-dump".to_string(), 13.0),
        ];
        let gaps = one_round().answer_gaps_ms(&log, &phases);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(gaps.len(), 2, "{gaps:?}");
        assert!((gaps[0] - 100.0).abs() < 1e-6 && (gaps[1] - 100.0).abs() < 1e-6);
    }
}
