#![no_std]
//! Lets `migr-user`'s build script depend on this crate so that cargo
//! rebuilds the XDP object when its sources change. The programs are in `main.rs`.
