//! Loading, attaching and reading the XDP datapath.

use std::fmt;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{TestRun as _, TestRunOptions, Xdp, XdpMode},
};
use migr_common::maps::ProtoClass;

/// The XDP object, built by this crate's build script from `migr-ebpf`.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/migr"));

/// The main classifier program.
pub const MAIN_PROGRAM: &str = "migr";
/// A program that only passes (for veth peers and as a benchmark baseline).
pub const PASS_PROGRAM: &str = "migr_pass";

/// XDP return codes (linux/bpf.h `enum xdp_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAction {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    Unknown(u32),
}

impl From<u32> for XdpAction {
    fn from(v: u32) -> Self {
        match v {
            0 => Self::Aborted,
            1 => Self::Drop,
            2 => Self::Pass,
            3 => Self::Tx,
            4 => Self::Redirect,
            other => Self::Unknown(other),
        }
    }
}

/// How to attach to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to skb mode if the driver refuses.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic skb mode only.
    Skb,
}

impl std::str::FromStr for AttachMode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" | "driver" => Ok(Self::Native),
            "skb" | "generic" => Ok(Self::Skb),
            other => bail!("unknown attach mode {other:?}: expected auto, native or skb"),
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Skb => "skb",
        })
    }
}

/// Result of one BPF_PROG_TEST_RUN.
#[derive(Debug)]
pub struct TestRunOutcome {
    pub action: XdpAction,
    /// The frame as the program left it.
    pub frame_out: Vec<u8>,
    pub duration: std::time::Duration,
}

/// The loaded XDP object.
pub struct Datapath {
    ebpf: Ebpf,
}

impl Datapath {
    /// Loads the object and every program in it into the kernel (not attached).
    pub fn load() -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(XDP_OBJECT)
            .context("loading the migr XDP object into the kernel (needs root or CAP_BPF)")?;
        for name in [MAIN_PROGRAM, PASS_PROGRAM] {
            program_mut(&mut ebpf, name)?
                .load()
                .with_context(|| format!("the verifier refused program {name}"))?;
        }
        Ok(Self { ebpf })
    }

    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        program_mut(&mut self.ebpf, name)
    }

    /// Attaches `program` to `iface` (in the calling thread's network namespace).
    /// Returns the mode that took.
    pub fn attach(&mut self, program: &str, iface: &str, mode: AttachMode) -> Result<XdpMode> {
        let prog = self.program(program)?;
        let try_attach = |prog: &mut Xdp, m: XdpMode| {
            prog.attach(iface, m)
                .with_context(|| format!("attaching {program} to {iface} in {m:?} mode"))
        };
        match mode {
            AttachMode::Native => try_attach(prog, XdpMode::Driver).map(|_| XdpMode::Driver),
            AttachMode::Skb => try_attach(prog, XdpMode::Skb).map(|_| XdpMode::Skb),
            AttachMode::Auto => match try_attach(prog, XdpMode::Driver) {
                Ok(_) => Ok(XdpMode::Driver),
                Err(native_err) => {
                    tracing::warn!(%iface, error = %format!("{native_err:#}"), "native XDP refused, falling back to skb mode");
                    try_attach(prog, XdpMode::Skb).map(|_| XdpMode::Skb)
                }
            },
        }
    }

    /// Packets seen per protocol class, summed over CPUs.
    pub fn proto_counters(&self) -> Result<[u64; ProtoClass::COUNT as usize]> {
        let map = self
            .ebpf
            .map("PROTO_COUNTERS")
            .ok_or_else(|| anyhow!("map PROTO_COUNTERS missing from the object"))?;
        let counters = PerCpuArray::<_, u64>::try_from(map)?;
        let mut out = [0u64; ProtoClass::COUNT as usize];
        for class in ProtoClass::ALL {
            let per_cpu = counters.get(&(class as u32), 0)?;
            out[class as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Runs `frame` once through `program` with BPF_PROG_TEST_RUN.
    pub fn test_run(&mut self, program: &str, frame: &[u8]) -> Result<TestRunOutcome> {
        // Room for programs that grow the frame (none do today, but a short
        // buffer would make the kernel fail the run with ENOSPC).
        let mut out = vec![0u8; frame.len() + 256];
        let result = self
            .program(program)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutcome {
            action: XdpAction::from(result.return_value),
            frame_out: out,
            duration: result.duration,
        })
    }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not an XDP program"))
}
