//! What the datapath needs from the running kernel, and a clear message when it is missing.
//!
//! [`explain`] is meant for the error path of loading the XDP object: it probes the kernel
//! (program and map types, helpers, XDP frags, BTF) and reads the verifier's log for refusals
//! that older kernels are known for, and puts a one-line verdict in front of the error:
//! "migr needs Linux ≥ 5.18 for bpf_xdp_load_bytes (this kernel is 5.15.0-91-generic)".
//! The verifier's own output stays in the error chain below it.

use std::{fmt, io};

use aya::{
    maps::MapType,
    programs::{ProgramError, ProgramType},
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

/// How a feature is checked.
#[derive(Clone, Copy, Debug)]
enum Probe {
    Program(ProgramType),
    Map(MapType),
    /// A helper, called from an XDP program.
    Helper(BpfHelper),
    /// An XDP program loaded with `BPF_F_XDP_HAS_FRAGS` (the `xdp.frags` section).
    XdpFrags,
    /// `/sys/kernel/btf/vmlinux`.
    KernelBtf,
    /// No probe: the kernel version decides.
    Version,
}

/// One thing the datapath needs from the kernel.
#[derive(Clone, Copy, Debug)]
pub struct Feature {
    /// What it is, as an operator would search for it.
    pub name: &'static str,
    /// The first Linux release that has it (major, minor).
    pub since: (u32, u32),
    /// What migr uses it for.
    pub used_for: &'static str,
    probe: Probe,
}

/// What the datapath's object uses (migr-ebpf): program type, maps, helpers, section flags.
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "XDP programs",
        since: (4, 8),
        used_for: "the datapath itself",
        probe: Probe::Program(ProgramType::Xdp),
    },
    Feature {
        name: "BTF of the running kernel (/sys/kernel/btf/vmlinux)",
        since: (5, 4),
        used_for: "loading the object's BTF (global functions, bpf_loop callbacks)",
        probe: Probe::KernelBtf,
    },
    Feature {
        name: "per-CPU array maps",
        since: (4, 6),
        used_for: "counters",
        probe: Probe::Map(MapType::PerCpuArray),
    },
    Feature {
        name: "LRU hash maps",
        since: (4, 10),
        used_for: "FLOWS, the learned 5-tuples",
        probe: Probe::Map(MapType::LruHash),
    },
    Feature {
        name: "DEVMAP maps",
        since: (4, 14),
        used_for: "FORWARD_DEVICES, XDP_REDIRECT for FORWARD",
        probe: Probe::Map(MapType::DevMap),
    },
    Feature {
        name: "BPF ring buffer maps",
        since: (5, 8),
        used_for: "PARKED frames and EVENTS",
        probe: Probe::Map(MapType::RingBuf),
    },
    Feature {
        name: "bpf_ringbuf_reserve",
        since: (5, 8),
        used_for: "PARK",
        probe: Probe::Helper(BpfHelper::BPF_FUNC_ringbuf_reserve),
    },
    Feature {
        name: "BPF global functions with pointer arguments",
        since: (5, 12),
        used_for: "the parse and lookup stages, verified once each",
        probe: Probe::Version,
    },
    Feature {
        name: "bpf_loop",
        since: (5, 17),
        used_for: "walking TCP options and IPv6 extension headers",
        probe: Probe::Helper(BpfHelper::BPF_FUNC_loop),
    },
    Feature {
        name: "bpf_xdp_load_bytes",
        since: (5, 18),
        used_for: "copying whole (also multi-buffer) frames into the PARKED ring",
        probe: Probe::Helper(BpfHelper::BPF_FUNC_xdp_load_bytes),
    },
    Feature {
        name: "bpf_xdp_get_buff_len",
        since: (5, 18),
        used_for: "the length of multi-buffer frames",
        probe: Probe::Helper(BpfHelper::BPF_FUNC_xdp_get_buff_len),
    },
    Feature {
        name: "bpf_xdp_store_bytes",
        since: (5, 18),
        used_for: "writing replayed frames back into a live frame",
        probe: Probe::Helper(BpfHelper::BPF_FUNC_xdp_store_bytes),
    },
    Feature {
        name: "BPF_PROG_TEST_RUN with live XDP frames",
        since: (5, 18),
        used_for: "replaying parked frames",
        probe: Probe::Version,
    },
    Feature {
        name: "XDP multi-buffer programs (xdp.frags)",
        since: (5, 18),
        used_for: "jumbo frames",
        probe: Probe::XdpFrags,
    },
];

/// A refusal of the verifier that older kernels are known for, recognised in its log.
struct Limitation {
    /// A piece of the verifier's message.
    pattern: &'static str,
    /// What the kernel does not accept.
    name: &'static str,
    /// The oldest release migr has seen accept it (tested: 6.1 refuses, 6.12 accepts). The
    /// datapath avoids the one below (keys are copied to the stack); it is kept so that a
    /// regression gets a clear message, not only the verifier's.
    since: (u32, u32),
}

const LIMITATIONS: &[Limitation] = &[Limitation {
    pattern: "type=mem expected=fp, pkt, pkt_meta, map_key, map_value",
    name: "map lookups keyed by memory behind a global function's pointer argument",
    since: (6, 12),
}];

/// Whether the running kernel has a feature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presence {
    Present,
    Missing,
    /// The probe itself failed (e.g. no CAP_BPF); the text says why.
    Unknown(String),
}

/// The running kernel, and which of [`FEATURES`] it has.
#[derive(Clone, Debug)]
pub struct KernelFeatures {
    /// `uname -r`.
    pub release: String,
    /// (major, minor) parsed from the release.
    pub version: Option<(u32, u32)>,
    pub features: Vec<(Feature, Presence)>,
}

impl KernelFeatures {
    /// Probes the running kernel (needs CAP_BPF for the program and helper probes).
    pub fn probe() -> Self {
        let release = kernel_release();
        let version = parse_version(&release);
        let features = FEATURES
            .iter()
            .map(|f| (*f, presence(f, version)))
            .collect();
        Self {
            release,
            version,
            features,
        }
    }

    /// The features this kernel lacks.
    pub fn missing(&self) -> impl Iterator<Item = &Feature> {
        self.features
            .iter()
            .filter(|(_, p)| *p == Presence::Missing)
            .map(|(f, _)| f)
    }

    /// "migr needs Linux ≥ 5.18 for bpf_xdp_load_bytes (copying ...; this kernel is
    /// 5.15.0-91-generic)" for one missing feature; for several, the newest minimum first and
    /// then each feature with its own: "migr needs Linux ≥ 5.18; this kernel,
    /// 5.10.0-32-amd64, lacks: bpf_loop (Linux ≥ 5.17, for walking ...); ...". None if
    /// nothing is missing.
    pub fn verdict(&self) -> Option<String> {
        let missing: Vec<&Feature> = self.missing().collect();
        match missing[..] {
            [] => None,
            [f] => Some(needs(f.since, f.name, f.used_for, &self.release)),
            _ => {
                let newest = missing.iter().map(|f| f.since).max().unwrap_or_default();
                let each: Vec<String> = missing
                    .iter()
                    .map(|f| {
                        format!(
                            "{} (Linux ≥ {}.{}, for {})",
                            f.name, f.since.0, f.since.1, f.used_for
                        )
                    })
                    .collect();
                Some(format!(
                    "migr needs Linux ≥ {}.{}; this kernel, {}, lacks: {}",
                    newest.0,
                    newest.1,
                    self.release,
                    each.join("; ")
                ))
            }
        }
    }
}

impl fmt::Display for KernelFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Linux {}:", self.release)?;
        for (feature, presence) in &self.features {
            let state = match presence {
                Presence::Present => "yes".to_string(),
                Presence::Missing => "MISSING".to_string(),
                Presence::Unknown(why) => format!("unknown ({why})"),
            };
            writeln!(
                f,
                "  {:<55} Linux ≥ {}.{:<3} {state}",
                feature.name, feature.since.0, feature.since.1
            )?;
        }
        Ok(())
    }
}

fn needs(since: (u32, u32), name: &str, used_for: &str, release: &str) -> String {
    format!(
        "migr needs Linux ≥ {}.{} for {name} ({used_for}; this kernel is {release})",
        since.0, since.1
    )
}

/// For the error path of loading the datapath: puts what the kernel lacks in front of `err`.
///
/// The outermost message names the missing feature and the minimum kernel; when every probed
/// feature is present it names a known verifier limitation recognised in the log, or else says
/// that the features are there and quotes where the verifier stopped. The original error (with
/// the verifier's whole output) stays in the chain.
pub fn explain(err: anyhow::Error) -> anyhow::Error {
    let features = KernelFeatures::probe();
    let log = verifier_log(&err);
    if let Some(verdict) = features.verdict() {
        return err.context(verdict);
    }
    let stopped = log.as_deref().and_then(verifier_stop);
    let at = stopped
        .as_deref()
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    if let Some(limit) = log
        .as_deref()
        .and_then(|log| LIMITATIONS.iter().find(|l| log.contains(l.pattern)))
    {
        let used_for = format!("the verifier of this kernel refuses it{at}");
        return err.context(needs(limit.since, limit.name, &used_for, &features.release));
    }
    if log.is_some() {
        let unknown: Vec<&str> = features
            .features
            .iter()
            .filter(|(_, p)| matches!(p, Presence::Unknown(_)))
            .map(|(f, _)| f.name)
            .collect();
        let checked = if unknown.is_empty() {
            "every kernel feature migr needs is present".to_string()
        } else {
            format!(
                "no kernel feature migr needs is missing, but these could not be probed: {}",
                unknown.join(", ")
            )
        };
        return err.context(format!(
            "the verifier of Linux {} refused the datapath although {checked}{at}",
            features.release
        ));
    }
    err
}

/// The verifier's output from a load error anywhere in the chain.
pub fn verifier_log(err: &anyhow::Error) -> Option<String> {
    err.chain()
        .find_map(|cause| match cause.downcast_ref::<ProgramError>() {
            Some(ProgramError::LoadError { verifier_log, .. }) => Some(verifier_log.to_string()),
            _ => None,
        })
}

/// Where the verifier stopped, in one line: the function it was validating, the last
/// instruction it printed, and its message, e.g. "in migr_lookup() at insn 1421
/// (call bpf_map_lookup_elem#1): R2 type=mem expected=fp, ...".
fn verifier_stop(log: &str) -> Option<String> {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let is_stats = |l: &&str| {
        l.starts_with("verification time")
            || l.starts_with("stack depth")
            || l.starts_with("processed ")
    };
    let message_at = lines.iter().rposition(|l| !is_stats(l))?;
    let message = lines[message_at];
    let insn = lines[..message_at].iter().rev().find_map(|l| {
        let (index, rest) = l.split_once(": (")?;
        index.parse::<u32>().ok()?;
        let instruction = rest.split_once(") ")?.1;
        let instruction = instruction.split(" ;").next().unwrap_or(instruction).trim();
        Some(format!("insn {index} ({instruction})"))
    });
    let function = lines[..message_at].iter().rev().find_map(|l| {
        let name = l.strip_prefix("Validating ")?;
        Some(name.split(" func#").next().unwrap_or(name).to_string())
    });
    let mut out = String::new();
    if let Some(function) = function {
        out.push_str(&format!("in {function} "));
    }
    if let Some(insn) = insn {
        out.push_str(&format!("at {insn}"));
    }
    if out.is_empty() {
        return Some(message.to_string());
    }
    Some(format!("{}: {message}", out.trim_end()))
}

fn presence(feature: &Feature, version: Option<(u32, u32)>) -> Presence {
    let probed = match feature.probe {
        Probe::Program(kind) => is_program_supported(kind).map_err(|e| e.to_string()),
        Probe::Map(kind) => is_map_supported(kind).map_err(|e| e.to_string()),
        Probe::Helper(helper) => {
            is_helper_supported(ProgramType::Xdp, helper).map_err(|e| e.to_string())
        }
        Probe::XdpFrags => xdp_frags_supported().map_err(|e| e.to_string()),
        Probe::KernelBtf => Ok(std::path::Path::new("/sys/kernel/btf/vmlinux").exists()),
        Probe::Version => match version {
            Some(v) => Ok(v >= feature.since),
            None => Err("the kernel release does not parse as a version".to_string()),
        },
    };
    match probed {
        Ok(true) => Presence::Present,
        Ok(false) => Presence::Missing,
        Err(why) => Presence::Unknown(why),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "of unknown release".to_string())
}

/// "6.1.0-56-amd64" -> (6, 1).
fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// `bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type` (the kernel accepts a prefix).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads `r0 = XDP_PASS; exit` with BPF_F_XDP_HAS_FRAGS: kernels before 5.18 refuse the flag.
fn xdp_frags_supported() -> io::Result<bool> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;
    // mov64 r0, 2 (XDP_PASS); exit.
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0x00, 0, 0, 2, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0x00, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_flags: BPF_F_XDP_HAS_FRAGS,
        ..Default::default()
    };
    // SAFETY: BPF_PROG_LOAD's attribute; the pointers in it (instructions,
    // license) outlive the call.
    match unsafe { crate::bpf_sys::bpf(BPF_PROG_LOAD, &attr) } {
        Ok(fd) => {
            // SAFETY: fd is the program's file descriptor, owned here.
            unsafe { libc::close(fd as libc::c_int) };
            Ok(true)
        }
        // An unknown flag (or, on very old kernels, an unknown attribute field).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::E2BIG)) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_debian_releases() {
        assert_eq!(parse_version("6.1.0-56-amd64"), Some((6, 1)));
        assert_eq!(parse_version("6.12.117+deb12-amd64"), Some((6, 12)));
        assert_eq!(parse_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_version("weird"), None);
    }

    #[test]
    fn the_verifier_stop_names_function_instruction_and_message() {
        let log = "Validating migr_lookup() func#5...\n\
                   1399: R1=ctx(off=0,imm=0) R2=mem_or_null(id=244,off=0,imm=0) R10=fp0\n\
                   1419: (18) r1 = 0xff1c4ce4c18af400    ; R1_w=map_ptr(off=0,ks=40,vs=4,imm=0)\n\
                   1421: (85) call bpf_map_lookup_elem#1\n\
                   R2 type=mem expected=fp, pkt, pkt_meta, map_key, map_value\n\
                   verification time 864685 usec\n\
                   stack depth 0+0+456+0+8+104+0+0+0\n\
                   processed 8122 insns (limit 1000000) max_states_per_insn 7 total_states 294\n";
        assert_eq!(
            verifier_stop(log).as_deref(),
            Some(
                "in migr_lookup() at insn 1421 (call bpf_map_lookup_elem#1): \
                 R2 type=mem expected=fp, pkt, pkt_meta, map_key, map_value"
            )
        );
        assert!(LIMITATIONS.iter().any(|l| log.contains(l.pattern)));
    }

    #[test]
    fn the_verdict_names_the_minimum_kernel_and_this_one() {
        let features = KernelFeatures {
            release: "5.15.0-91-generic".to_string(),
            version: Some((5, 15)),
            features: FEATURES
                .iter()
                .map(|f| {
                    let p = if f.since > (5, 15) {
                        Presence::Missing
                    } else {
                        Presence::Present
                    };
                    (*f, p)
                })
                .collect(),
        };
        let verdict = features.verdict().unwrap();
        assert!(
            verdict.starts_with("migr needs Linux ≥ 5.18; this kernel, 5.15.0-91-generic, lacks: "),
            "{verdict}"
        );
        assert!(
            verdict.contains("bpf_loop (Linux ≥ 5.17, for "),
            "{verdict}"
        );
        assert!(
            verdict.contains("bpf_xdp_load_bytes (Linux ≥ 5.18, for "),
            "{verdict}"
        );
        assert!(!verdict.contains("per-CPU array maps"), "{verdict}");
        // One missing feature: one clause with both kernels.
        let one = KernelFeatures {
            features: features
                .features
                .iter()
                .map(|(f, p)| {
                    let p = if f.name == "bpf_loop" {
                        p.clone()
                    } else {
                        Presence::Present
                    };
                    (*f, p)
                })
                .collect(),
            ..features.clone()
        };
        let verdict = one.verdict().unwrap();
        assert!(
            verdict.starts_with("migr needs Linux ≥ 5.17 for bpf_loop ("),
            "{verdict}"
        );
        assert!(
            verdict.ends_with("; this kernel is 5.15.0-91-generic)"),
            "{verdict}"
        );
    }
}
