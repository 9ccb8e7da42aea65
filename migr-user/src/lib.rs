//! migr's user space: the datapath loader and, on top of it, the agent and CLI.
pub mod btf_fixup;
pub mod datapath;
pub mod tables;
