//! Fuzzing migr's parsers (`cargo xtask fuzz`, see `xtask/src/fuzz.rs`).
//!
//! - [`reference`]: slow reference parsers, written independently of migr-common;
//! - [`project`]: migr-common's results in the reference's types;
//! - [`targets`]: what each fuzz target checks (no panic, equality with the
//!   reference, encode/decode round trips), as plain functions;
//! - `fuzz_targets/*.rs`: the libFuzzer entry points, one line each;
//! - `corpus/<target>/`: the committed seed corpus, made by
//!   `cargo run --manifest-path tests/fuzz/Cargo.toml --example gen_corpus`.

pub mod project;
pub mod reference;
pub mod targets;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every committed seed passes its target's checks.
    #[test]
    fn seed_corpus_passes() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for target in crate::targets::TARGETS {
            let dir = root.join(target);
            let mut seeds = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                crate::targets::run(target, &data);
                seeds += 1;
            }
            assert!(seeds > 0, "no seeds in {dir:?}");
        }
    }
}
