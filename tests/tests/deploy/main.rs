//! Deploying migr (issue 21): the agent's config file through the real
//! binary, and the Debian package installed into a scratch root, its
//! systemd unit's command line started in a network namespace.
//!
//! Each test makes its own namespace with a veth pair, its own scratch
//! directory and pin directories, and removes them (processes by PID) on
//! success and on failure.

mod config;
mod package;
mod scratch;
mod unit_file;
