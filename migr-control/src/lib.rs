//! The two pure parts of migr's agent that other programs need as they are:
//!
//! - [`api`]: the control protocol between `migrctl` (or any client) and
//!   `migr-agent`, one JSON object per line;
//! - [`phase`]: the per-service migration phase machine, driven by commands
//!   and the time passed in.
//!
//! No I/O and no clock here, so the fuzz targets and unit tests build them
//! without the agent's kernel and runtime dependencies.

pub mod api;
pub mod phase;
