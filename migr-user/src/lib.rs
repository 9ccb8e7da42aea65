//! migr's user space: the datapath loader and, on top of it, the agent and CLI.
pub mod agent;
pub mod announce;
pub mod container;
pub mod criu_config;
pub mod ctl;
pub mod datapath;
pub mod early_joins;
pub mod engine;
pub mod features;
pub mod forward_path;
pub mod metrics;
pub mod netdev;
pub mod parkring;
pub mod socket_room;
pub mod spool;
pub mod statefile;
pub mod tables;
